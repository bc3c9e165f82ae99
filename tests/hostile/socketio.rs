//! The Socket.IO stories: connections that never join the chat, and a flood of
//! binary attachments. The malformed packets are in `tests/socketio/`.

use std::io::Write;
use std::time::Instant;

use tungstenite::Message;

use super::support::{
    Client, PATIENCE, Process, Running, connect_from, eventually, socket_closed_within,
};
use super::{ATTACKER, Peak, assert_within, back_to, baseline, honest_user_is_served};

const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// A Socket.IO connection from `from`, its open packet read (or its refusal's
/// status).
fn open_from(
    server: &Process,
    from: std::net::IpAddr,
    port: std::net::SocketAddr,
) -> Result<Client, u16> {
    let url = format!("ws://{port}{PATH}");
    let mut client =
        Client::handshake(connect_from(from, port), &url, &[]).map_err(|r| r.status)?;
    match client.recv() {
        Message::Text(open) if open.starts_with('0') => Ok(client),
        other => panic!(
            "an open packet from {server:?}, not {other:?}",
            server = server.ws
        ),
    }
}

#[test]
fn socket_io_connections_that_never_join_hold_only_their_address_s_places() {
    let server = Process::start(&["--max-clients", "40"]);
    let base = baseline(&server);
    let peak = Peak::watch(&server);
    // Through both ports: the page port hands its upgrades to the chat, places
    // and all.
    let mut theirs = Vec::new();
    let mut refused = Vec::new();
    for n in 0..60 {
        let port = if n % 2 == 0 { server.ws } else { server.http };
        match open_from(&server, ATTACKER, port) {
            Ok(client) => theirs.push(client),
            Err(status) => refused.push(status),
        }
    }
    assert_eq!(theirs.len(), 32, "the address's share of the chat");
    assert!(refused.iter().all(|&status| status == 503), "{refused:?}");
    honest_user_is_served(&server);
    assert_within(peak.stop(), base, 4 * 1024, 44, 48);
    // They are Socket.IO connections, none of them in the chat.
    assert_eq!(server.stats()["socket_io"], 32);
    drop(theirs);
    back_to(&server, base, 4 * 1024);
}

#[test]
fn a_flood_of_binary_attachments_is_cut_off_and_everyone_else_is_served() {
    let server = Process::start(&[]);
    let before = baseline(&server);
    let mut flooder = open_from(&server, ATTACKER, server.ws).expect("a place");
    flooder.send_text("40");
    // Packets with an attachment of 1 KiB, as fast as the socket takes them,
    // nothing read, from a thread of its own.
    let flood = std::thread::spawn(move || {
        let header = r#"451-["message",{"_placeholder":true,"num":0}]"#;
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < PATIENCE {
            let text = flooder.ws.send(Message::text(header));
            if text.is_err() || flooder.ws.send(Message::binary(vec![0u8; 1024])).is_err() {
                break;
            }
            sent += 1;
        }
        let _ = flooder.ws.get_mut().tcp_mut().flush();
        let closed = socket_closed_within(flooder.ws.get_mut().tcp_mut(), PATIENCE);
        (sent, closed)
    });
    eventually("the flood has begun", || server.stats()["socket_io"] == 1);
    honest_user_is_served(&server);
    let (sent, closed) = flood.join().unwrap();
    assert!(closed, "the flooder is cut off (after {sent} packets)");
    assert_eq!(server.disconnects("flooding"), 1);
    honest_user_is_served(&server);
    back_to(&server, before, 4 * 1024);
}
