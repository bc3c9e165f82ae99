//! A Socket.IO client's read loop (`/socket.io/`): the same thread, socket,
//! outbox and budgets as any client's, with Engine.IO's framing and heartbeat
//! between the WebSocket and the chat.
//!
//! Engine.IO's heartbeat is the server's to send: a ping (`2`) every
//! `pingInterval`, which the client must answer (`3`) within `pingTimeout`. The
//! read's timeout is this thread's clock here too: it wakes when the
//! [`Session`] says something is due, and the session is asked again after
//! every frame, so a client that talks all the time is pinged all the same.
//! A malformed packet closes the connection, as the spec says, with 1002 and what
//! was wrong.

use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

use super::{
    Client, Limits, Outbox, admitted, await_close, close_with, end_after_error, next_message,
    send_reply,
};
use crate::event::Endpoint;
use crate::logging::{Noisy, limited};
use crate::socketio::echo::{self, FIXTURE, FIXTURE_MAX_PAYLOAD};
use crate::socketio::session::{Due, Received, Session};
use crate::stats::Disconnect;

/// A client's Socket.IO session, its open packet sent (or `None` if sending it
/// failed: the read loop then ends at once). `maxPayload` is what the reader
/// takes: `--max-message` (the fixture's 1,000,000 if that is larger).
pub(super) fn open(client: &mut Client, max_message: usize) -> Option<Session> {
    let (timing, max_payload) = match client.endpoint {
        Endpoint::Echo => (FIXTURE, FIXTURE_MAX_PAYLOAD.min(max_message)),
        // The chat over Socket.IO is not served yet: the handshake refuses it.
        Endpoint::Chat => return None,
    };
    let session = Session::new(timing, max_payload, Instant::now());
    let open = format!("0{}", session.open_packet(&client.id.to_string()));
    client.ws.send(Message::text(open)).ok().map(|()| session)
}

/// The read loop. Returns why the client is gone.
pub(super) fn read_until_closed(
    client: &mut Client,
    session: Option<Session>,
    outbox: &Outbox,
    limits: &mut Limits,
    idle: Duration,
) -> Disconnect {
    let Some(mut session) = session else {
        return Disconnect::Failed;
    };
    let mut timeout = idle;
    loop {
        match next_message(client, limits, session.wake_at(), &mut timeout) {
            Ok(message) => {
                if let Some(gone) = read_one(client, &mut session, outbox, limits, message) {
                    return gone;
                }
            }
            Err(tungstenite::Error::Io(e)) if crate::is_timeout(&e) => {}
            Err(e) => return end_after_error(client, outbox, e),
        }
        let ending = match session.due(Instant::now()) {
            Due::Nothing => continue,
            Due::Ping => match send_reply(client, limits, Message::text("2")) {
                Ok(()) => continue,
                Err(e) => return end_after_error(client, outbox, e),
            },
            Due::PingTimeout => "ping timeout",
            Due::NoConnect => "no namespace joined in time",
        };
        limited!(Noisy::Left, "client {}: {ending}", client.id);
        close_with(client, outbox, CloseCode::Normal, ending);
        return Disconnect::Silent;
    }
}

/// Acts on one frame; `Some` with why the client is gone if it ended the
/// connection.
fn read_one(
    client: &mut Client,
    session: &mut Session,
    outbox: &Outbox,
    limits: &mut Limits,
    message: Message,
) -> Option<Disconnect> {
    match admitted(client, outbox, limits, &message) {
        Ok(true) => {}
        Ok(false) => return None,
        Err(closed) => return Some(closed),
    }
    let received = match message {
        Message::Text(text) => session.text(&text, Instant::now()),
        Message::Binary(bytes) => session.binary(bytes),
        Message::Close(_) => {
            // tungstenite answers it at the next read; nothing may follow.
            outbox.stop_broadcasts();
            return None;
        }
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
    };
    let packet = match received {
        Ok(Received::Nothing) => return None,
        Ok(Received::Packet(packet)) => packet,
        Ok(Received::Close) => {
            close_with(client, outbox, CloseCode::Normal, "");
            await_close(client);
            return Some(Disconnect::Closed);
        }
        Err(malformed) => {
            limited!(
                Noisy::BadFrames,
                "client {}: malformed Socket.IO packet: {malformed}",
                client.id
            );
            close_with(client, outbox, CloseCode::Protocol, malformed.0);
            await_close(client);
            return Some(Disconnect::ProtocolError);
        }
    };
    let sid = client.id.to_string();
    let (now, later) = match client.endpoint {
        Endpoint::Echo => echo::answer(session, packet, &sid),
        Endpoint::Chat => (Vec::new(), None),
    };
    let sent = now
        .into_iter()
        .try_for_each(|reply| send_reply(client, limits, reply));
    let sent = sent.and_then(|()| match later {
        Some(reply) => {
            // The fixture's pause (see `echo::AUTH_APART`), on an echo client's
            // own thread.
            std::thread::sleep(echo::AUTH_APART);
            send_reply(client, limits, reply)
        }
        None => Ok(()),
    });
    sent.err().map(|e| end_after_error(client, outbox, e))
}
