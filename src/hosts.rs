//! Which `Host` names this server answers to, on both ports: the defence against
//! DNS rebinding.
//!
//! # The attack
//!
//! A web page on `attacker.example` makes its visitor's browser talk to us. The
//! browser refuses to let a page read another origin, so the attacker points its
//! own name at our address a moment after the page has loaded (a DNS answer with a
//! very short lifetime, then our LAN address). From then on the page's requests to
//! `attacker.example:8001` reach us, and for the browser they are same-origin:
//! `Origin` and `Host` both say `attacker.example`, so a check that only compares
//! the two (the Origin rule in [`crate::handshake`]) passes. The visitor's browser,
//! inside the LAN, becomes the attacker's client.
//!
//! # The check
//!
//! The one thing the attacker cannot change is the name in `Host`: it is the name
//! the browser resolved. So a request is answered only when its `Host` is a name
//! this server knows to be its own: an IP address (a rebinding needs a name),
//! `localhost`, this machine's host name and `<host name>.local` (how a Raspberry
//! Pi is usually reached), or a name given with `--server-name` (repeatable; `*`
//! turns the check off, for a server behind a proxy that checks names itself).
//! Anything else is refused with `421 Misdirected Request`, whose text names the
//! flag that would accept it.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// The names accepted in `Host`, besides IP addresses.
#[derive(Debug, Clone)]
pub struct ServerNames {
    /// `--server-name *`: every name.
    any: bool,
    /// Lower case, without a trailing dot.
    names: Vec<String>,
}

impl ServerNames {
    /// `localhost`, this machine's host name, its `.local` form, and `extra`
    /// (the `--server-name` values).
    pub fn new(extra: &[String]) -> ServerNames {
        let node = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        ServerNames::with_host_name(&node, extra)
    }

    /// [`ServerNames::new`] for a given host name.
    pub fn with_host_name(host_name: &str, extra: &[String]) -> ServerNames {
        let mut names = vec!["localhost".to_string()];
        let host_name = normalise(host_name);
        if !host_name.is_empty() && host_name != "localhost" {
            // `pi.example.lan` is reached as `pi.example.lan`, `pi` or `pi.local`.
            let first_label = host_name
                .split('.')
                .next()
                .unwrap_or(&host_name)
                .to_string();
            names.push(host_name.clone());
            names.push(format!("{first_label}.local"));
            names.push(first_label);
        }
        names.extend(extra.iter().map(|n| normalise(n)).filter(|n| n != "*"));
        names.sort();
        names.dedup();
        ServerNames {
            any: extra.iter().any(|n| n.trim() == "*"),
            names,
        }
    }

    /// Whether a request whose `Host` header is `host` (with or without a port) is
    /// addressed to this server.
    pub fn accepts(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        match split_authority(host.trim()) {
            Some(Authority::Ip(_)) => true,
            Some(Authority::Name(name)) => self.names.iter().any(|n| *n == normalise(name)),
            None => false,
        }
    }

    /// The text of a refusal for `host`.
    ///
    /// The name is repeated only when it could be a host name someone means (at
    /// most [`QUOTED_NAME`] letters, digits, `-` and `.`): the text goes back to
    /// the client and into the log, and a 60 KB `Host` must not come back twice.
    pub fn refusal(host: &str) -> String {
        let name = match split_authority(host.trim()) {
            Some(Authority::Name(name)) => normalise(name),
            _ => host.trim().to_string(),
        };
        let plausible = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if name.len() > QUOTED_NAME || !name.chars().all(plausible) {
            return format!(
                "this server does not answer to the name in Host ({} bytes, not a host \
                 name it would quote); see --server-name",
                host.len()
            );
        }
        format!(
            "this server does not answer to the name {name:?}; if it is this server's name, \
             start it with --server-name {name}"
        )
    }
}

impl fmt::Display for ServerNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any {
            return f.write_str("any (--server-name *)");
        }
        write!(f, "IP addresses, {}", self.names.join(", "))
    }
}

/// The host part of a `Host` header.
#[derive(Debug, PartialEq, Eq)]
enum Authority<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// `name`, `name:8000`, `1.2.3.4:8000`, `[::1]:8001` → the host part. `None` for
/// anything that is not a host with an optional numeric port.
fn split_authority(authority: &str) -> Option<Authority<'_>> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = inside.parse().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        if let Some(port) = port {
            port.parse::<u16>().ok()?;
        }
        return Some(Authority::Ip(IpAddr::V6(ip)));
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if let Some(port) = port {
        port.parse::<u16>().ok()?;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Authority::Ip(ip));
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
    (!host.is_empty() && host.chars().all(valid)).then_some(Authority::Name(host))
}

/// The longest name a refusal repeats: longer than the host names people use,
/// short enough that the text stays well under 512 bytes.
const QUOTED_NAME: usize = 100;

fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(extra: &[&str]) -> ServerNames {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        ServerNames::with_host_name("raspberrypi", &extra)
    }

    #[test]
    fn addresses_localhost_and_the_host_name_are_accepted() {
        let n = names(&[]);
        for host in [
            "127.0.0.1:8000",
            "192.168.1.42",
            "[::1]:8001",
            "[fe80::1]",
            "localhost:8000",
            "LOCALHOST",
            "raspberrypi",
            "raspberrypi.local:8000",
            "RaspberryPi.Local.",
        ] {
            assert!(n.accepts(host), "{host}");
        }
    }

    #[test]
    fn other_names_are_refused_unless_given() {
        let n = names(&[]);
        for host in [
            "attacker.example",
            "attacker.example:8001",
            "raspberrypi.attacker.example",
            "localhost.attacker.example",
            "",
            "127.0.0.1:notaport",
            "[::1",
            "user@localhost",
            "local host",
        ] {
            assert!(!n.accepts(host), "{host}");
        }
        let n = names(&["chat.example.org"]);
        assert!(n.accepts("chat.example.org:8000"));
        assert!(n.accepts("Chat.Example.Org"));
        assert!(!n.accepts("example.org"));
        assert!(names(&["*"]).accepts("anything.example"));
    }

    #[test]
    fn a_dotted_host_name_is_reached_by_its_first_label_too() {
        let n = ServerNames::with_host_name("pi.home.lan", &[]);
        for host in ["pi.home.lan", "pi", "pi.local"] {
            assert!(n.accepts(host), "{host}");
        }
        assert!(!n.accepts("home.lan"));
    }

    #[test]
    fn the_refusal_names_the_flag() {
        let text = ServerNames::refusal("Evil.Example:8001");
        assert!(text.contains("--server-name evil.example"), "{text}");
        assert!(names(&[]).to_string().contains("raspberrypi.local"));
    }

    #[test]
    fn a_refusal_repeats_no_name_that_is_not_one() {
        for host in [
            "a".repeat(60_000),
            "evil\u{1b}[31m.example".into(),
            "ü.example".into(),
        ] {
            let text = ServerNames::refusal(&host);
            assert!(text.len() < 200, "{} bytes", text.len());
            assert!(text.contains("not a host name it would quote"), "{text}");
        }
    }
}
