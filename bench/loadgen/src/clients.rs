//! One client: its connection, its join, and its reader thread, which checks
//! every delivery as it reads it.

use super::*;

/// What one client's reader saw.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) received: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    /// Highest seq seen per sender (-1: none).
    pub(crate) last_seq: Vec<i64>,
    /// (sender << 24 | seq) in arrival order, measured messages only.
    pub(crate) order: Vec<u32>,
    /// One-way latencies in µs, measured messages only.
    pub(crate) latencies: Vec<u32>,
    /// Largest `count` in a notification so far (of its own room, in `rooms`).
    pub(crate) max_count: u64,
    /// Messages of another room than the client's: each one a failure.
    pub(crate) foreign: u64,
}

/// What the clients speak: the protocol's JSON frames on `/`, or the same frames
/// as Socket.IO events on `/socket.io/` (Engine.IO's framing: `42["type",{…}]`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Json,
    SocketIo,
}

/// What one text frame from the server is, to a client.
pub(crate) enum Heard {
    /// A frame of the protocol, as JSON.
    Frame(serde_json::Value),
    /// Engine.IO's ping: the client must answer `3`.
    Ping,
    /// Anything else.
    Other,
}

impl Dialect {
    /// Where a client of this dialect connects.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Dialect::Json => "/",
            Dialect::SocketIo => "/socket.io/?EIO=4&transport=websocket",
        }
    }

    /// A client frame of `kind` with `fields` (a JSON object without `type`).
    pub(crate) fn frame(self, kind: &str, fields: &str) -> String {
        match self {
            Dialect::Json if fields == "{}" => format!(r#"{{"type":"{kind}"}}"#),
            Dialect::Json => format!(r#"{{"type":"{kind}",{}"#, &fields[1..]),
            Dialect::SocketIo => format!(r#"42["{kind}",{fields}]"#),
        }
    }

    /// Reads a text frame from the server.
    pub(crate) fn hear(self, text: &str) -> Heard {
        let value = match self {
            Dialect::Json => serde_json::from_str(text).ok(),
            Dialect::SocketIo if text == "2" => return Heard::Ping,
            Dialect::SocketIo => text
                .strip_prefix("42")
                .and_then(|event| serde_json::from_str::<serde_json::Value>(event).ok())
                .map(|mut event| event[1].take()),
        };
        value.map_or(Heard::Other, Heard::Frame)
    }
}

/// Shared between the scenario and every reader.
pub(crate) struct Shared {
    /// What the clients speak.
    pub(crate) dialect: Dialect,
    pub(crate) senders: usize,
    /// 0: everyone stays in the lobby. Else client `i` (sender `i` too, as senders
    /// are the first clients) is in room `i % rooms`.
    pub(crate) rooms: usize,
    /// Only messages with `measured_from[sender] <= seq < measured_to[sender]`
    /// count; each sender sets its own bounds as it passes them.
    pub(crate) measured_from: Vec<AtomicU64>,
    pub(crate) measured_to: Vec<AtomicU64>,
    /// Messages received in the measured window, by all clients.
    pub(crate) received: AtomicU64,
    /// Clients whose notifications have reached the expected count.
    pub(crate) settled: AtomicU64,
    pub(crate) expected_count: AtomicU64,
    /// Each sender's echo: wakes its writer in the closed loop.
    pub(crate) echoes: Vec<Sender<()>>,
    pub(crate) keep_latencies: AtomicBool,
}

impl Shared {
    /// The room client (or sender) `i` joins, if it leaves the lobby.
    pub(crate) fn room_of(&self, i: usize) -> Option<usize> {
        (self.rooms > 0).then(|| i % self.rooms)
    }
}

pub(crate) fn room_name(room: usize) -> String {
    format!("r{room}")
}

/// How long a client waits for the answer to its `join`.
pub(crate) const JOIN_PATIENCE: Duration = Duration::from_secs(10);

pub(crate) struct Client {
    pub(crate) socket: Wire,
    pub(crate) reader: JoinHandle<Seen>,
}

pub(crate) fn connect(
    server: SocketAddr,
    index: usize,
    shared: &Arc<Shared>,
    tls: Option<&Tls>,
) -> std::io::Result<Client> {
    let stream = Wire::connect(server, tls)?;
    let dialect = shared.dialect;
    let url = format!(
        "{}://localhost:{}{}",
        stream.scheme(),
        server.port(),
        dialect.path()
    );
    let (mut ws, _) = tungstenite::client(url, stream.try_clone()?)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if dialect == Dialect::SocketIo {
        // The open packet, then joining the main namespace: the chat's welcome
        // follows, read like any frame.
        ws.read()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        ws.send(Message::text("40"))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    let room = match shared.room_of(index) {
        Some(room) => Some(join(&mut ws, stream.tcp(), &room_name(room), dialect)?),
        None => None,
    };
    let shared = Arc::clone(shared);
    let reader = thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || read_all(ws, index, room, &shared))?;
    Ok(Client {
        socket: stream,
        reader,
    })
}

/// Moves a freshly connected client from the lobby to `room`: sends `join` and reads
/// (and drops: the lobby's frames) until its `joined`. Returns the room and the
/// `joined` count, which is where the reader's count starts.
pub(crate) fn join(
    ws: &mut WebSocket<Wire>,
    stream: &TcpStream,
    room: &str,
    dialect: Dialect,
) -> std::io::Result<(String, u64)> {
    let fail = |e: String| std::io::Error::other(format!("join {room}: {e}"));
    stream.set_read_timeout(Some(JOIN_PATIENCE))?;
    let fields = serde_json::json!({ "room": room }).to_string();
    ws.send(Message::text(dialect.frame("join", &fields)))
        .map_err(|e| fail(e.to_string()))?;
    let count = loop {
        let Message::Text(text) = ws.read().map_err(|e| fail(e.to_string()))? else {
            continue;
        };
        let Heard::Frame(value) = dialect.hear(&text) else {
            continue;
        };
        match value["type"].as_str() {
            Some("joined") if value["room"] == room => {
                break value["count"].as_u64().unwrap_or(0);
            }
            Some("error") => return Err(fail(value["msg"].to_string())),
            _ => {}
        }
    };
    stream.set_read_timeout(None)?;
    Ok((room.to_string(), count))
}

/// Reads one client's frames until its socket closes. `room`: the room it joined
/// and that `joined`'s count; `None` for a client in the lobby, whose frames are
/// then taken as they come, as from a server without rooms.
pub(crate) fn read_all(
    mut ws: WebSocket<Wire>,
    index: usize,
    room: Option<(String, u64)>,
    shared: &Shared,
) -> Seen {
    let mut seen = Seen {
        last_seq: vec![-1; shared.senders],
        ..Seen::default()
    };
    let mut settled = false;
    let mut count = |seen: &mut Seen, n: u64| {
        seen.max_count = seen.max_count.max(n);
        if !settled && seen.max_count >= shared.expected_count.load(Ordering::Relaxed) {
            settled = true;
            shared.settled.fetch_add(1, Ordering::Relaxed);
        }
    };
    let room = room.map(|(room, joined)| {
        count(&mut seen, joined);
        room
    });
    // Whether a frame is of this client's room (any frame, in the lobby).
    let mine = |value: &serde_json::Value| room.as_ref().is_none_or(|r| value["room"] == **r);
    while let Ok(message) = ws.read() {
        let Message::Text(text) = message else {
            continue;
        };
        let value = match shared.dialect.hear(&text) {
            Heard::Frame(value) => value,
            Heard::Ping => {
                // Written whole by one `write`, as the sender's frames are.
                let _ = ws.send(Message::text("3"));
                continue;
            }
            Heard::Other => continue,
        };
        match value["type"].as_str() {
            Some("notification") | Some("welcome") if mine(&value) => {
                count(&mut seen, value["count"].as_u64().unwrap_or(0));
            }
            // A joiner's replay of what was said before it came: not a delivery.
            Some("message") if value["history"] == true => {}
            Some("message") if !mine(&value) => seen.foreign += 1,
            Some("message") => record(
                &mut seen,
                value["msg"].as_str().unwrap_or(""),
                index,
                shared,
            ),
            _ => {}
        }
    }
    seen
}

pub(crate) fn record(seen: &mut Seen, msg: &str, me: usize, shared: &Shared) {
    let mut parts = msg.splitn(4, ':');
    let (Some(s), Some(q), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(sender), Ok(seq), Ok(sent_ns)) =
        (s.parse::<usize>(), q.parse::<i64>(), t.parse::<u64>())
    else {
        return;
    };
    if sender >= shared.senders {
        return;
    }
    if shared.room_of(sender) != shared.room_of(me) {
        seen.foreign += 1; // said in another room than this client's
        return;
    }
    if me == sender {
        let _ = shared.echoes[sender].try_send(());
    }
    let last = &mut seen.last_seq[sender];
    if seq == *last {
        seen.duplicates += 1;
        return;
    }
    if seq < *last {
        seen.out_of_order += 1;
        return;
    }
    *last = seq;
    let from = shared.measured_from[sender].load(Ordering::SeqCst);
    let to = shared.measured_to[sender].load(Ordering::SeqCst);
    if (seq as u64) < from || seq as u64 >= to {
        return;
    }
    seen.received += 1;
    shared.received.fetch_add(1, Ordering::Relaxed);
    seen.order
        .push(((sender as u32) << 24) | (seq as u32 & 0xFF_FFFF));
    if shared.keep_latencies.load(Ordering::Relaxed) {
        seen.latencies
            .push((since_start().saturating_sub(sent_ns) / 1000) as u32);
    }
}

/// A client's text frame, masked as RFC 6455 requires of clients.
pub(crate) fn client_frame(payload: &str) -> Vec<u8> {
    const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x9e];
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        mask: Some(MASK),
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(payload.len() + 14);
    header
        .format(payload.len() as u64, &mut out)
        .expect("a Vec takes it");
    out.extend(payload.bytes().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// Sender `sender`'s message `seq` of about `size` bytes, in `dialect`.
pub(crate) fn chat_message(sender: usize, seq: u64, size: usize, dialect: Dialect) -> String {
    let head = format!("{sender}:{seq}:{}:", since_start());
    let text = format!("{head}{}", "x".repeat(size.saturating_sub(head.len())));
    match dialect {
        // The tutorial's frame, which has no `type`.
        Dialect::Json => {
            serde_json::json!({ "name": format!("s{sender}"), "msg": text }).to_string()
        }
        Dialect::SocketIo => {
            let fields = serde_json::json!({ "name": format!("s{sender}"), "msg": text });
            dialect.frame("message", &fields.to_string())
        }
    }
}

// --- scenarios ---------------------------------------------------------------------
