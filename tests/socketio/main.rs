//! Socket.IO over the real server: Engine.IO's open packet and heartbeat,
//! namespaces, events, acks, binary attachments and the refusals, through the
//! conformance fixture (`--echo`, `fixture.rs`), and the chat for Socket.IO
//! clients beside JSON and plain-text ones (`chat.rs`). Written from the spec
//! (github.com/socketio/socket.io-protocol, engine.io-protocol); the official
//! JavaScript client is in the node tests (`tests/e2e/socketio.test.mjs`).

#[path = "../support/mod.rs"]
mod support;

mod chat;
mod fixture;

use serde_json::Value;
use support::*;
use tungstenite::Message;

pub const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// The fixture as the official suite expects it: its `maxPayload` needs
/// `--max-message` at least as large (and a backlog for two of those).
pub fn fixture() -> Server {
    Server::start(&[
        "--echo",
        "--max-message",
        "1000000",
        "--max-backlog",
        "4000000",
    ])
}

/// A socket opened on the chat port's `/socket.io/`, its open packet read.
pub fn open(server: &impl Running) -> (Client, Value) {
    open_at(&server.ws_url(PATH))
}

/// A socket opened at `url`, its open packet read.
pub fn open_at(url: &str) -> (Client, Value) {
    let mut client = Client::connect(url);
    let open = text(&mut client);
    let value = open
        .strip_prefix('0')
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_else(|| panic!("an open packet, not {open:?}"));
    (client, value)
}

/// The next text frame, as it came (pings included).
pub fn text(client: &mut Client) -> String {
    match client.recv() {
        Message::Text(text) => text.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The next packet that is not a ping; pings on the way are answered.
pub fn packet(client: &mut Client) -> String {
    loop {
        let text = text(client);
        if text != "2" {
            return text;
        }
        client.send_text("3");
    }
}

/// The Close frame's code and reason; pings on the way are answered, other
/// packets skipped.
pub fn close_of(client: &mut Client) -> (u16, String) {
    loop {
        match client.recv() {
            Message::Text(ping) if ping.as_str() == "2" => client.send_text("3"),
            Message::Text(_) => {}
            Message::Close(Some(frame)) => return (frame.code.into(), frame.reason.to_string()),
            Message::Close(None) => return (1005, String::new()),
            other => panic!("expected the server's Close, got {other:?}"),
        }
    }
}

/// The next event in the main namespace: its name and its one argument.
pub fn event(client: &mut Client) -> (String, Value) {
    let text = packet(client);
    let args: Vec<Value> = text
        .strip_prefix("42")
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_else(|| panic!("an event in the main namespace, not {text:?}"));
    match args.as_slice() {
        [Value::String(name), arg] => (name.clone(), arg.clone()),
        _ => panic!("an event with one argument, not {text:?}"),
    }
}

/// The next event named `name`, skipping others.
pub fn event_named(client: &mut Client, name: &str) -> Value {
    loop {
        let (got, arg) = event(client);
        if got == name {
            return arg;
        }
    }
}
