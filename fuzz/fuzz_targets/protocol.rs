//! The chat message parser on arbitrary bytes: it must never panic, whatever it
//! refuses gets a short error, and whatever it accepts must obey the limits and go
//! out again exactly as sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use threadchat::protocol::{
    ClientId, MAX_ERROR_FRAME, MAX_MSG_CHARS, MAX_NAME_CHARS, Outgoing, parse, parse_chat,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for error in [parse(text).err(), parse_chat(text).err()].into_iter().flatten() {
        let frame = Outgoing::Error { msg: error.to_string() }.to_json();
        // The payload and a header of at most 4 bytes (payloads under 64 KiB).
        assert!(frame.len() + 4 <= MAX_ERROR_FRAME, "{frame}");
    }
    let Ok(message) = parse_chat(text) else { return };
    assert!(message.name.chars().count() <= MAX_NAME_CHARS);
    assert!(message.msg.chars().count() <= MAX_MSG_CHARS);
    assert!(!message.msg.trim().is_empty());
    let out = Outgoing::Message { id: 1, ts: 1, from: ClientId(1), name: &message.name, msg: &message.msg, room: None }.to_json();
    let back: serde_json::Value = serde_json::from_str(&out).expect("we emit valid JSON");
    assert_eq!(back["name"].as_str(), Some(message.name.as_str()));
    assert_eq!(back["msg"].as_str(), Some(message.msg.as_str()));
});
