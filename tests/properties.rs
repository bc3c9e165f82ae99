//! Properties checked over many generated inputs: the protocol parser and the
//! static path resolver, the two places where untrusted text meets our code.

use std::path::{Component, Path};

use proptest::prelude::*;
use threadchat::protocol::{self, MAX_MSG_CHARS, MAX_NAME_CHARS, Outgoing};
use threadchat::static_files;

/// Text made mostly of the characters that matter to a path resolver.
fn path_like() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("/".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("\\".to_string()),
            Just("%".to_string()),
            Just("%2e".to_string()),
            Just("%2E".to_string()),
            Just("%2f".to_string()),
            Just("%5c".to_string()),
            Just("%00".to_string()),
            Just("index.html".to_string()),
            "[a-zA-Z0-9_~:-]{1,4}",
            any::<char>().prop_map(String::from),
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        // Failures are reported with their minimal input; nothing is written.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_parser_never_panics(text in any::<String>()) {
        let _ = protocol::parse_chat(&text);
    }

    #[test]
    fn the_parser_never_panics_on_near_json(
        name in prop_oneof![any::<String>().prop_map(|s| serde_json::json!(s)), any::<i64>().prop_map(|n| serde_json::json!(n))],
        msg in any::<String>(),
        extra in any::<String>(),
    ) {
        let text = serde_json::json!({ "name": name, "msg": msg, "x": extra }).to_string();
        let _ = protocol::parse_chat(&text);
        let half = (0..=text.len() / 2).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        let _ = protocol::parse_chat(&text[..half]);
    }

    #[test]
    fn accepted_messages_go_out_exactly_as_sent(
        name in proptest::collection::vec(any::<char>(), 0..=MAX_NAME_CHARS).prop_map(String::from_iter),
        msg in proptest::collection::vec(any::<char>(), 1..=MAX_MSG_CHARS)
            .prop_map(String::from_iter)
            .prop_filter("not only whitespace", |m| !m.trim().is_empty()),
    ) {
        let sent = serde_json::json!({ "name": name, "msg": msg }).to_string();
        let parsed = protocol::parse_chat(&sent).expect("a valid message is accepted");
        prop_assert_eq!(&parsed.name, &name);
        prop_assert_eq!(&parsed.msg, &msg);
        let out = Outgoing::Message { id: 1, ts: 2, from: protocol::ClientId(3), name: &parsed.name, msg: &parsed.msg, room: None }.to_json();
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        prop_assert_eq!(back["name"].as_str(), Some(name.as_str()));
        prop_assert_eq!(back["msg"].as_str(), Some(msg.as_str()));
    }

    #[test]
    fn errors_never_quote_the_frame_and_stay_short(
        value in proptest::collection::vec(any::<char>(), 24..400).prop_map(String::from_iter),
        key in prop_oneof![
            Just("type"), Just("name"), Just("msg"), Just("room"), Just("since"),
            Just("to"), Just("id"), Just("except_sender"), Just("other"),
        ],
        kind in prop_oneof![Just("message"), Just("join"), Just("direct"), Just("kick")],
    ) {
        let quoted = serde_json::to_string(&value).unwrap();
        let frames = [
            format!(r#"{{"type":"{kind}","{key}":{quoted}}}"#),
            format!(r#"{{"{key}":[{quoted}],"type":"{kind}"}}"#),
            format!(r#"{{{quoted}:1,"type":"{kind}"}}"#),
            format!(r#"{{"{key}":{quoted}"#),
            quoted.clone(),
            value.clone(),
        ];
        for frame in &frames {
            for error in [protocol::parse(frame).err(), protocol::parse_chat(frame).err()]
                .into_iter()
                .flatten()
            {
                let text = Outgoing::Error { msg: error.to_string() }.to_json();
                prop_assert!(text.len() + 4 <= protocol::MAX_ERROR_FRAME, "{}", text);
                prop_assert!(!text.contains(&value) && !text.contains(&quoted[1..quoted.len() - 1]), "{}", text);
            }
        }
    }

    #[test]
    fn a_persons_plain_text_line_is_one_line_and_never_the_servers(
        name in proptest::collection::vec(any::<char>(), 0..=MAX_NAME_CHARS).prop_map(String::from_iter),
        msg in any::<String>(),
    ) {
        let line = threadchat::format::text::person_line(&name, "", &msg);
        prop_assert!(line.starts_with('['), "{:?}", line);
        prop_assert!(
            !line.chars().any(|c| (c.is_control() && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}')),
            "{:?}",
            line
        );
    }

    #[test]
    fn the_resolver_never_leaves_the_root(raw in path_like()) {
        if let Ok(relative) = static_files::relative_path(&format!("/{raw}")) {
            for part in relative.components() {
                prop_assert!(matches!(part, Component::Normal(_)), "{:?} in {:?}", part, relative);
                let text = part.as_os_str().to_string_lossy();
                prop_assert!(!text.starts_with('.'), "{:?}", relative);
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("www").canonicalize().unwrap();
        for candidate in [format!("/{raw}"), raw.clone()] {
            if let Ok(file) = static_files::resolve(&root, &candidate) {
                prop_assert!(file.starts_with(&root), "{} resolved to {}", candidate, file.display());
            }
        }
    }
}
