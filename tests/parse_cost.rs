//! What reading and parsing client frames costs in memory, measured by counting
//! every allocation in this test binary (a global allocator is per binary, hence a
//! file of its own, and one test in it, since the count is global).
//!
//! A reader handles one message at a time, so this is what a flooding client can
//! make the server hold per connection beyond its backlog: what the capacity plan
//! (`src/capacity.rs`) counts as seven times `--max-message`. Before, unknown values
//! were built into `serde_json::Value` trees: 64 KiB of `[0,0,…]` cost 1 MiB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Cursor, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

use threadchat::protocol;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// The system allocator, keeping count of the bytes live and their high mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::SeqCst);
}

// SAFETY: every call is passed on to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let block = unsafe { System.alloc(layout) };
        if !block.is_null() {
            grew(layout.size());
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        unsafe { System.dealloc(block, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(block, layout, new_size) };
        if !moved.is_null() {
            // Counted as a move, old and new both live for an instant: the most a
            // realloc can cost.
            grew(new_size);
            shrank(layout.size());
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes live at once while `work` ran, beyond those live before it.
fn peak_extra<T>(work: impl FnOnce() -> T) -> usize {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let result = work();
    let peak = PEAK.load(Ordering::SeqCst);
    drop(result);
    peak - before
}

/// The largest message a client may send by default (`--max-message`).
const MAX_MESSAGE: usize = 64 * 1024;

/// `head`, then `unit` as many times as fits in [`MAX_MESSAGE`] with `tail`.
fn frame_of(head: &str, unit: &str, tail: &str) -> String {
    let times = (MAX_MESSAGE - head.len() - tail.len()) / unit.len();
    format!("{head}{}{tail}", unit.repeat(times))
}

/// One test, so that nothing else in this binary allocates while it measures: the
/// counters are the whole binary's, and the test harness allocates as a test ends.
#[test]
fn what_parsing_and_reading_cost() {
    parsing_copies_nothing_but_the_strings_it_unescapes();
    a_reader_holds_at_most_seven_times_the_largest_message();
}

fn parsing_copies_nothing_but_the_strings_it_unescapes() {
    let zeros = |head: &str| frame_of(head, "0,", "0]}");
    // Nothing of these is copied: serde_json skips what no field keeps without
    // building it, and a string with no escapes is looked at where it lies.
    let uncopied = [
        (
            "[0,0,…] in an unknown field",
            zeros(r#"{"name":"a","msg":"hi","pad":["#),
        ),
        ("[0,0,…] in id", zeros(r#"{"name":"a","msg":"hi","id":["#)),
        (
            "[0,0,…] in room",
            zeros(r#"{"name":"a","msg":"hi","room":["#),
        ),
        (
            "[0,0,…] as a join's room",
            zeros(r#"{"type":"join","room":["#),
        ),
        (
            "objects in id",
            frame_of(r#"{"name":"a","msg":"hi","id":["#, r#"{"k":[0]},"#, "0]}"),
        ),
        (
            "U+00AD in type",
            frame_of(r#"{"type":""#, "\u{ad}", r#"","name":"a","msg":"hi"}"#),
        ),
        (
            "U+00AD in msg",
            frame_of(r#"{"name":"a","msg":""#, "\u{ad}", r#""}"#),
        ),
    ];
    // A string with escapes is unescaped into serde_json's buffer first, which
    // doubles as it grows: up to twice the string, three times for the instant
    // it moves.
    let unescaped = [
        (
            "escaped U+00AD in type",
            frame_of(r#"{"type":""#, "\\u00ad", r#"","name":"a","msg":"hi"}"#),
        ),
        (
            "a msg with one escape at its end",
            frame_of(r#"{"name":"a","msg":""#, "x", r#"\n"}"#),
        ),
        (
            "an unknown key with one escape at its end",
            frame_of(r#"{"name":"a","msg":"hi",""#, "x", r#"\n":1}"#),
        ),
        (
            "nested arrays in an unknown field",
            format!(
                r#"{{"pad":{}{},"name":"a","msg":"hi"}}"#,
                "[".repeat(MAX_MESSAGE / 2 - 20),
                "]".repeat(MAX_MESSAGE / 2 - 20)
            ),
        ),
        (
            "the longest valid message, every character escaped",
            format!(
                r#"{{"name":"{}","msg":"{}"}}"#,
                "\\u0001".repeat(protocol::MAX_NAME_CHARS),
                "\\u0001".repeat(protocol::MAX_MSG_CHARS)
            ),
        ),
    ];
    let parse = |frame: &str| (protocol::parse(frame), protocol::parse_chat(frame));
    for (what, frame) in &uncopied {
        let extra = peak_extra(|| parse(frame));
        eprintln!("{what}: {} bytes, {extra} more to parse", frame.len());
        assert!(extra <= 1024, "{what}: {extra} bytes to parse");
    }
    for (what, frame) in &unescaped {
        let extra = peak_extra(|| parse(frame));
        eprintln!("{what}: {} bytes, {extra} more to parse", frame.len());
        assert!(extra <= 3 * frame.len(), "{what}: {extra} bytes to parse");
    }
    // The count is real: a tree of the first frame's values costs many times it.
    let (_, frame) = &uncopied[0];
    let tree = peak_extra(|| serde_json::from_str::<serde_json::Value>(frame));
    eprintln!("the same as a serde_json::Value: {tree} bytes");
    assert!(tree > 8 * frame.len(), "a Value tree took {tree} bytes");
}

/// Bytes a client has sent, for a server-side WebSocket to read; what it writes
/// back is kept apart.
struct Wire {
    sent: Cursor<Vec<u8>>,
    answers: Vec<u8>,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sent.read(buf)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.answers.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Wire {
    fn new(sent: Vec<u8>) -> Wire {
        Wire {
            sent: Cursor::new(sent),
            answers: Vec::new(),
        }
    }
}

/// `frames` as a client puts them on the wire (masked).
fn client_bytes(frames: Vec<Frame>) -> Vec<u8> {
    let mut client = WebSocket::from_raw_socket(Wire::new(Vec::new()), Role::Client, None);
    for frame in frames {
        client.write(Message::Frame(frame)).unwrap();
    }
    client.flush().unwrap();
    client.into_inner().answers
}

/// A text message of `len` bytes whose `msg` ends in an escape: the most its
/// parse can cost.
fn message_of(len: usize) -> String {
    let json = format!(r#"{{"name":"a","msg":"{}\n"}}"#, "x".repeat(len - 23));
    assert_eq!(json.len(), len);
    json
}

fn text(part: &str, first: bool, last: bool) -> Frame {
    let opcode = if first { Data::Text } else { Data::Continue };
    Frame::message(part.as_bytes().to_vec(), OpCode::Data(opcode), last)
}

fn a_reader_holds_at_most_seven_times_the_largest_message() {
    let largest = message_of(MAX_MESSAGE);
    let (first_half, second_half) = largest.split_at(MAX_MESSAGE - 100);
    // tungstenite's read buffer doubles as it grows (a frame just larger than the
    // last one), a message sent in fragments is joined in a string that doubles
    // too, and parsing it unescapes its `msg`.
    let sequences = [
        ("the largest message", vec![text(&largest, true, true)]),
        (
            "a large message, then the largest",
            vec![
                text(&message_of(61_000), true, true),
                text(&largest, true, true),
            ],
        ),
        (
            "those, then the largest in two fragments",
            vec![
                text(&message_of(61_000), true, true),
                text(&largest, true, true),
                text(first_half, true, false),
                text(second_half, false, true),
            ],
        ),
    ];
    for (what, frames) in sequences {
        let messages = frames.iter().filter(|f| f.header().is_final).count();
        // As src/handshake.rs configures every chat client's WebSocket.
        let config = WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(0)
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let wire = Wire::new(client_bytes(frames));
        let mut reader = WebSocket::from_raw_socket(wire, Role::Server, Some(config));
        let extra = peak_extra(|| {
            for _ in 0..messages {
                let Message::Text(text) = reader.read().expect("a message") else {
                    panic!("a text message")
                };
                assert!(protocol::parse(&text).is_err(), "over the msg limit");
            }
        });
        eprintln!(
            "{what}: {extra} bytes at most, {:.2} times the largest message",
            extra as f64 / MAX_MESSAGE as f64
        );
        assert!(extra <= 7 * MAX_MESSAGE, "{what}: {extra} bytes");
    }
}
