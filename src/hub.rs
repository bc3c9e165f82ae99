//! The hub: one thread that owns the list of connected clients and decides who gets
//! what, in which order.
//!
//! Readers tell the hub what happened ([`Event`]) over one bounded crossbeam
//! channel. Because a single thread takes events off that channel one after the
//! other, there is exactly one order of events, and every client is sent the
//! broadcasts in that order: the total order of the chat is the order of this
//! channel. Message ids come from the same place, so they increase along it.
//!
//! The hub works in batches. It blocks until an event arrives, then takes every
//! other event already waiting (up to [`MAX_BATCH_EVENTS`] or [`MAX_BATCH_BYTES`]),
//! encodes the resulting broadcast frames once into one buffer, and hands that
//! buffer to every client's [`Outbox`]. Under load a batch holds many messages, so
//! one `send(2)` per client delivers them all; a busy hub even waits up to
//! [`COALESCE`] for more company. When the chat is quiet a batch is one message and
//! nothing waits for more.
//!
//! The hub never blocks on a client: an outbox either takes the bytes at once or
//! queues them for the client's own writer thread. The hub does block on nothing
//! else either, except its channel: with nobody connected it sleeps in `select!`
//! without even a heartbeat timer.

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, never, select, tick};
use tungstenite::protocol::frame::coding::CloseCode;

use crossbeam_channel::Sender;

use crate::frame;
use crate::outbox::Outbox;
use crate::protocol::{self, ChatMessage, Outgoing, Presence, SUBPROTOCOL};
use crate::stats::Stats;

/// Most events folded into one batch. Bounds the batch buffer and the time before
/// the first client of a long burst hears anything.
pub const MAX_BATCH_EVENTS: usize = 1_024;

/// A batch stops taking more events once its frames reach this many bytes, so a
/// burst of large messages cannot build one huge buffer that every client's outbox
/// must take whole.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// The most bytes one batch can hold: it may pass [`MAX_BATCH_BYTES`] by its last
/// event, a chat message (with the presence run before it written first) or a
/// presence run written at the end. `--max-backlog` must leave room for this.
pub const LARGEST_BATCH: usize =
    MAX_BATCH_BYTES + protocol::MAX_MESSAGE_FRAME + 2 * protocol::MAX_PRESENCE_FRAME;

/// How long a busy hub waits for more events before sending a batch out.
///
/// Every batch costs one `send(2)` per client, whatever it holds, and that kernel
/// work is most of the server's CPU under load. When the previous batch held more
/// than one event, messages are arriving faster than batches go out, and waiting
/// this long for company turns several sends per client into one: on 2 cores,
/// 200 clients and 4 fast senders went from 1.2 M to 1.6 M deliveries/s with it.
/// When the chat is quiet (the previous batch was a single event) the hub does not
/// wait at all, so a lone message is never delayed.
pub const COALESCE: Duration = Duration::from_micros(500);

/// Capacity of the readers-to-hub channel. When the hub falls behind, readers wait
/// in `send` (so fast talkers slow down) instead of memory growing without bound.
pub const EVENT_QUEUE: usize = 4_096;

/// Which endpoint a client connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/`: the chat.
    Chat,
    /// `/echo`: echoes its own messages; gets only heartbeats and shutdown from the
    /// hub.
    Echo,
}

/// What a reader (or the shutdown sequence) tells the hub.
pub enum Event {
    /// A client finished its handshake.
    Join {
        id: u64,
        /// Where the hub writes to it.
        outbox: Arc<Outbox>,
        endpoint: Endpoint,
    },
    /// A chat client sent a valid message.
    Message {
        /// The sender's id: the relayed frame's `from`.
        from: u64,
        message: ChatMessage,
    },
    /// A client's reader has ended.
    Leave { id: u64 },
    /// The server is stopping: send every client close 1001.
    Shutdown,
    /// `/healthz` asks whether the hub is turning over: it answers on `answer`
    /// when it reaches this event, which it can only do by having taken every
    /// event before it.
    Probe { answer: Sender<()> },
}

/// The frames of the batch being built.
///
/// Joins and leaves that follow each other are announced together: a run of k
/// joins becomes one notification, "k users joined", with the count after the
/// run. When N clients connect at once, every one of them must hear about every
/// other: N²/2 frames one by one (2 million for 2,000 clients), but only about as
/// many as there are batches when runs are folded. The count stays exact; only the
/// steps in between are skipped.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// The run of joins or leaves not written yet.
    pending: Option<PresenceRun>,
}

/// Joins (or leaves) in a row, announced as one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PresenceRun {
    event: Presence,
    /// How many joined (or left) in this run.
    users: usize,
    /// Chat clients after the run.
    count: usize,
}

impl Batch {
    /// Records a join or leave; `count` is the number of chat clients after it.
    /// Returns where a client joining now starts reading: the run it belongs to is
    /// written there, and nothing before it (an earlier leave, say) is its news.
    fn presence(&mut self, event: Presence, count: usize) -> usize {
        match &mut self.pending {
            Some(run) if run.event == event => {
                run.users += 1;
                run.count = count;
            }
            _ => {
                self.write_presence();
                self.pending = Some(PresenceRun {
                    event,
                    users: 1,
                    count,
                });
            }
        }
        // Nothing else is appended while a run is pending, so the run will be
        // written exactly here.
        self.bytes.len()
    }

    /// Appends a chat message, after any presence run before it.
    fn message(&mut self, json: &str) {
        self.write_presence();
        frame::append_text(&mut self.bytes, json);
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.pending = None;
    }

    fn write_presence(&mut self) {
        if let Some(run) = self.pending.take() {
            frame::append_text(
                &mut self.bytes,
                &Outgoing::presence(run.event, run.users, run.count).to_json(),
            );
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.write_presence();
        self.bytes
    }
}

/// A client, as the hub's registry holds it.
struct Client {
    id: u64,
    outbox: Arc<Outbox>,
    /// Set when the client joined during the batch being built.
    joining: Option<Joining>,
}

/// A client that joined during the batch being built: it must get its welcome
/// before anything else, and nothing from before it joined.
struct Joining {
    welcome: Vec<u8>,
    /// Where in the batch its broadcasts start.
    start: usize,
}

/// The hub's state. Only the hub thread touches it, so it needs no lock.
struct Hub {
    /// Chat clients, in the order they joined: a batch goes out in that order, so
    /// the longest-connected clients hear it first. Leaving is a linear search, which
    /// at a few thousand clients costs less than the `send` calls of one batch.
    chat: Vec<Client>,
    /// Echo clients: heartbeats and shutdown only.
    echo: Vec<Client>,
    /// Id of the last relayed chat message.
    last_message_id: u64,
    ping_interval: Duration,
    stats: Arc<Stats>,
    /// Set once `Shutdown` arrives: a client that joins afterwards is closed at once.
    shutting_down: bool,
}

/// Starts the hub thread.
pub fn spawn(
    events: Receiver<Event>,
    ping_interval: Duration,
    stats: Arc<Stats>,
) -> io::Result<JoinHandle<()>> {
    let hub = Hub {
        chat: Vec::new(),
        echo: Vec::new(),
        last_message_id: 0,
        ping_interval,
        stats,
        shutting_down: false,
    };
    thread::Builder::new()
        .name("hub".into())
        .spawn(move || hub.run(&events))
}

impl Hub {
    fn run(mut self, events: &Receiver<Event>) {
        let heartbeat = tick(self.ping_interval);
        let nobody = never();
        // Events in the previous batch.
        let mut taken = 0;
        loop {
            // With nobody connected there is nothing to ping: not even the timer may
            // wake this thread.
            let timer = if self.chat.is_empty() && self.echo.is_empty() {
                &nobody
            } else {
                &heartbeat
            };
            let first = select! {
                recv(events) -> event => match event {
                    Ok(event) => event,
                    Err(_) => return, // every sender is gone: the server is exiting
                },
                recv(timer) -> _ => {
                    self.ping_everyone();
                    continue;
                }
            };
            let mut batch = Batch::default();
            let mut relayed = 0;
            relayed += self.apply(first, &mut batch);
            // Busy (the last batch had company): wait up to COALESCE for more, so one
            // send per client carries many messages. Quiet: take only what is waiting.
            let linger = if taken > 1 { COALESCE } else { Duration::ZERO };
            let deadline = Instant::now() + linger;
            taken = 1;
            while taken < MAX_BATCH_EVENTS && batch.len() < MAX_BATCH_BYTES {
                match events.recv_deadline(deadline) {
                    Ok(event) => {
                        relayed += self.apply(event, &mut batch);
                        taken += 1;
                    }
                    Err(_) => break,
                }
            }
            // Counted before the clients can see the batch, so /stats never lags
            // behind what a client has already received. A batch with nothing to
            // send (a health probe, a shutdown) is no batch.
            let batch = batch.finish();
            if !batch.is_empty() {
                self.stats.add_batch(relayed);
            }
            self.stats.set_clients(self.chat.len());
            self.flush(batch);
        }
    }

    /// Applies one event to the registry and appends what everyone must hear about
    /// it to `batch`. Returns the number of chat messages relayed (0 or 1).
    fn apply(&mut self, event: Event, batch: &mut Batch) -> u64 {
        match event {
            Event::Join { outbox, .. } if self.shutting_down => {
                outbox.send_close(CloseCode::Away, "server shutting down");
            }
            Event::Join {
                id,
                outbox,
                endpoint: Endpoint::Echo,
            } => {
                self.echo.push(Client {
                    id,
                    outbox,
                    joining: None,
                });
            }
            Event::Join {
                id,
                outbox,
                endpoint: Endpoint::Chat,
            } => {
                let count = self.chat.len() + 1;
                let welcome = Outgoing::Welcome {
                    id,
                    count,
                    protocol: SUBPROTOCOL,
                };
                let start = batch.presence(Presence::Join, count);
                let client = Client {
                    id,
                    outbox,
                    joining: Some(Joining {
                        welcome: frame::text(&welcome.to_json()),
                        start,
                    }),
                };
                self.chat.push(client);
            }
            Event::Message { from, message } => {
                self.last_message_id += 1;
                log::debug!(
                    "message {} from client {from}: {}: {}",
                    self.last_message_id,
                    message.name,
                    message.msg
                );
                let out = Outgoing::Message {
                    id: self.last_message_id,
                    ts: unix_millis(),
                    from,
                    name: &message.name,
                    msg: &message.msg,
                };
                batch.message(&out.to_json());
                return 1;
            }
            Event::Leave { id } => {
                if let Some(at) = self.chat.iter().position(|m| m.id == id) {
                    self.chat.remove(at);
                    batch.presence(Presence::Leave, self.chat.len());
                }
                self.echo.retain(|m| m.id != id);
            }
            Event::Probe { answer } => {
                let _ = answer.try_send(());
            }
            Event::Shutdown => {
                self.shutting_down = true;
                for client in self.chat.iter().chain(&self.echo) {
                    client
                        .outbox
                        .send_close(CloseCode::Away, "server shutting down");
                }
                self.chat.clear();
                self.echo.clear();
                batch.clear();
            }
        }
        0
    }

    /// Hands the batch to every chat client. Encoded once, shared by all.
    fn flush(&mut self, batch: Vec<u8>) {
        let batch = Arc::new(batch);
        for client in &mut self.chat {
            // A failed send needs no action here: the outbox has already closed the
            // client, whose reader will report the Leave.
            match client.joining.take() {
                Some(Joining { welcome, start }) => {
                    let _ = client.outbox.send_shared(&Arc::new(welcome), 0);
                    if start < batch.len() {
                        let _ = client.outbox.send_shared(&batch, start);
                    }
                }
                None if !batch.is_empty() => {
                    let _ = client.outbox.send_shared(&batch, 0);
                }
                None => {}
            }
        }
    }

    fn ping_everyone(&self) {
        let mut ping = Vec::new();
        frame::append_ping(&mut ping);
        let ping = Arc::new(ping);
        for client in self.chat.iter().chain(&self.echo) {
            let _ = client.outbox.send_shared(&ping, 0);
        }
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON texts of the whole unmasked text frames at the start of `bytes`.
    fn texts(bytes: &[u8]) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 2 <= bytes.len() {
            assert_eq!(bytes[at], 0x81, "a final text frame");
            let (len, header) = match bytes[at + 1] {
                126 if at + 4 <= bytes.len() => (
                    u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                    4,
                ),
                126 => break,
                127 => panic!("no frame here is that long"),
                n => (n as usize, 2),
            };
            let Some(payload) = bytes.get(at + header..at + header + len) else {
                break;
            };
            out.push(serde_json::from_slice(payload).unwrap());
            at += header + len;
        }
        out
    }

    /// A client on a loopback connection: its outbox, and the other end to read.
    fn client(id: u64) -> (Arc<Outbox>, std::net::TcpStream) {
        use crate::places::{Caps, Kind, Places};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let theirs = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, peer) = listener.accept().unwrap();
        let places = Places::new(Caps {
            total: [0, 0, 1, 0],
            per_host: [0, 0, 0],
        });
        let place = places.take(Kind::Chat, peer.ip()).unwrap();
        let outbox = Outbox::new(id, Arc::new(ours), 1 << 20, Duration::from_secs(1), place);
        (outbox, theirs)
    }

    /// The next `n` frames the client at `stream` was sent, as JSON.
    fn received(stream: &mut std::net::TcpStream, n: usize) -> Vec<serde_json::Value> {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(10);
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut bytes = Vec::new();
        loop {
            let frames = texts(&bytes);
            if frames.len() >= n {
                return frames;
            }
            assert!(Instant::now() < deadline, "{n} frames within the deadline");
            let mut chunk = [0u8; 4096];
            if let Ok(read) = stream.read(&mut chunk) {
                bytes.extend_from_slice(&chunk[..read]);
            }
        }
    }

    fn hub() -> Hub {
        Hub {
            chat: Vec::new(),
            echo: Vec::new(),
            last_message_id: 0,
            ping_interval: Duration::from_secs(30),
            stats: Arc::new(Stats::new()),
            shutting_down: false,
        }
    }

    fn join(id: u64, outbox: &Arc<Outbox>) -> Event {
        Event::Join {
            id,
            outbox: Arc::clone(outbox),
            endpoint: Endpoint::Chat,
        }
    }

    #[test]
    fn a_client_joining_with_a_leave_in_its_batch_hears_only_what_follows_its_welcome() {
        let mut hub = hub();
        let (ann, _ann_reads) = client(1);
        let (bob, mut bob_reads) = client(2);
        let (cid, mut cid_reads) = client(3);
        let mut first = Batch::default();
        hub.apply(join(1, &ann), &mut first);
        hub.apply(join(2, &bob), &mut first);
        hub.flush(first.finish());
        // Ann leaves and Cid joins in the same batch.
        let mut second = Batch::default();
        hub.apply(Event::Leave { id: 1 }, &mut second);
        hub.apply(join(3, &cid), &mut second);
        hub.flush(second.finish());

        let heard = received(&mut cid_reads, 2);
        assert_eq!(heard.len(), 2, "Cid heard {heard:?}");
        assert_eq!(
            (heard[0]["type"].as_str(), heard[0]["count"].as_u64()),
            (Some("welcome"), Some(2))
        );
        assert_eq!(
            (heard[1]["event"].as_str(), heard[1]["count"].as_u64()),
            (Some("join"), Some(2))
        );
        // Bob, there before both, heard both, in order.
        let heard = received(&mut bob_reads, 4);
        let events: Vec<_> = heard[2..]
            .iter()
            .map(|f| f["event"].as_str().unwrap())
            .collect();
        assert_eq!(events, ["leave", "join"]);
    }

    #[test]
    fn messages_get_increasing_ids_and_reach_everyone_in_one_order() {
        let mut hub = hub();
        let (ann, mut ann_reads) = client(1);
        let (bob, mut bob_reads) = client(2);
        let mut batch = Batch::default();
        hub.apply(join(1, &ann), &mut batch);
        hub.apply(join(2, &bob), &mut batch);
        for (from, text) in [(1, "one"), (2, "two"), (1, "three")] {
            let message = ChatMessage {
                name: format!("n{from}"),
                msg: text.into(),
            };
            assert_eq!(hub.apply(Event::Message { from, message }, &mut batch), 1);
        }
        hub.flush(batch.finish());
        for reads in [&mut ann_reads, &mut bob_reads] {
            let heard = received(reads, 5);
            let messages: Vec<_> = heard
                .iter()
                .filter(|f| f["type"] == "message")
                .map(|f| {
                    (
                        f["id"].as_u64().unwrap(),
                        f["msg"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            assert_eq!(
                messages,
                [(1, "one".into()), (2, "two".into()), (3, "three".into())]
            );
        }
    }

    #[test]
    fn a_run_of_joins_is_one_notification_with_the_count_after_it() {
        let mut batch = Batch::default();
        for count in 4..=6 {
            batch.presence(Presence::Join, count);
        }
        let frames = texts(&batch.finish());
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0]["users"], 3);
        assert_eq!(frames[0]["count"], 6);
        assert_eq!(frames[0]["msg"], "3 users joined [online: 6]");
    }

    #[test]
    fn a_client_joining_after_a_leave_starts_after_it() {
        let mut batch = Batch::default();
        batch.message(r#"{"type":"message","msg":"before"}"#);
        batch.presence(Presence::Leave, 4);
        let start = batch.presence(Presence::Join, 5);
        let bytes = batch.finish();
        let all = texts(&bytes);
        assert_eq!(all.len(), 3);
        let heard = texts(&bytes[start..]);
        assert_eq!(heard.len(), 1, "the joiner heard {heard:?}");
        assert_eq!(heard[0]["event"], "join");
        assert_eq!(heard[0]["count"], 5);
    }

    #[test]
    fn joiners_in_one_run_share_its_start_and_a_message_splits_runs() {
        let mut batch = Batch::default();
        let first = batch.presence(Presence::Join, 1);
        let second = batch.presence(Presence::Join, 2);
        assert_eq!(first, second);
        batch.message(r#"{"type":"message","msg":"hi"}"#);
        let third = batch.presence(Presence::Join, 3);
        let bytes = batch.finish();
        let kinds: Vec<_> = texts(&bytes)
            .iter()
            .map(|f| f["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kinds, ["notification", "message", "notification"]);
        assert_eq!(texts(&bytes[third..]).len(), 1);
        assert_eq!(texts(&bytes[first..]).len(), 3);
    }

    #[test]
    fn a_full_batch_stays_within_its_bound() {
        let worst = protocol::largest_message_json();
        let mut batch = Batch::default();
        let mut count = 0;
        // As the hub fills one: an event is taken while the batch is under its size.
        while batch.len() < MAX_BATCH_BYTES {
            count += 1;
            batch.presence(Presence::Leave, usize::MAX - count);
            batch.message(&worst);
        }
        batch.presence(Presence::Join, usize::MAX);
        assert!(batch.finish().len() <= LARGEST_BATCH);
    }
}
