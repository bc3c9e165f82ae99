//! Log lines on stderr: for people by default, or one JSON object per line
//! (`--log-format json`) for journald and log shippers, which then need no pattern
//! to split a line into time, level, source and message.
//!
//! Under systemd, stderr goes to the journal either way, so there is no log file
//! to rotate or reopen.
//!
//! # What a client can make us write
//!
//! On a Raspberry Pi the log lives on an SD card, and a client decides how often
//! most lines are written (one per refused request, failed handshake, connect) and
//! what some of them say (a `Host` header, an error quoting its input). Requests
//! with a 60 KB `Host`, each refused with 421 and each logged whole, once wrote
//! 848 MB in 10 s. Two rules bound that:
//!
//! * **Client text is `Untrusted`.** It reaches a line escaped (a newline cannot
//!   forge a line, an escape sequence cannot repaint a terminal, a bidi control
//!   cannot hide text) and cut to `UNTRUSTED_BYTES`, with its full length.
//! * **Lines a client can cause are `limited!`**, per `Noisy` kind: `BURST` lines
//!   at once, then one per `REFILL`. What is held back is counted, and the next
//!   line of its kind says how many and since when; if none comes, a line of its
//!   own says it within a second or two. Nothing is lost but the detail.
//!
//! So under any attack each kind writes about a line a second, a few hundred bytes;
//! all of them at once, a few hundred KB a minute.

use std::fmt::{self, Write as _};
use std::io::Write;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::Level;
use serde::Serialize;

/// How log lines look (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[time LEVEL target] message`.
    Human,
    /// `{"ts":…,"level":…,"target":…,"msg":…}`.
    Json,
}

/// Starts logging to stderr: `info` unless `RUST_LOG` says otherwise.
pub fn init(format: LogFormat) {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(log::LevelFilter::Info)
        .parse_env(env_logger::Env::default());
    if format == LogFormat::Json {
        builder.format(|out, record| {
            let line = JsonLine {
                ts: out.timestamp_millis().to_string(),
                level: record.level().as_str(),
                target: record.target(),
                msg: record.args().to_string(),
            };
            let line = serde_json::to_string(&line).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")
        });
    }
    builder.init();
    start_the_summariser();
}

/// One JSON log line, fields in this order.
#[derive(Serialize)]
struct JsonLine<'a> {
    /// RFC 3339, UTC, milliseconds.
    ts: String,
    level: &'a str,
    /// The module that logged, e.g. `threadchat::hub`.
    target: &'a str,
    msg: String,
}

/// The most an [`Untrusted`] value writes into a line, in bytes, before `…` and its
/// length. Enough to recognise a name, a path or an error by; the length says how
/// much more there was.
const UNTRUSTED_BYTES: usize = 96;

/// The most a [`Quoting`] text writes: room for a refusal's advice around the
/// name it quotes.
const QUOTING_BYTES: usize = 200;

/// Text a client chose (a header, a path, a name, an error that quotes input), as
/// it may appear in a log line: `"`, `\`, control and invisible characters escaped
/// as in Rust (`\n`, `\"`, `\u{202e}`), and cut after [`UNTRUSTED_BYTES`] bytes
/// with `…(61440 bytes)`. It formats lazily: a line whose level is off costs
/// nothing. Wraps anything that displays, so an error is escaped as it is written,
/// without a `String` in between.
pub(crate) struct Untrusted<T>(pub T);

/// Our own text that quotes a client's (a refusal that names the `Host` it
/// refused, already quoted and escaped with `{:?}`): control and invisible
/// characters escaped as by [`Untrusted`], but `"` and `\` left alone, so what is
/// already escaped is not escaped twice; cut after [`QUOTING_BYTES`].
pub(crate) struct Quoting<T>(pub T);

impl<T: fmt::Display> fmt::Display for Untrusted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, &self.0, Escape::All, UNTRUSTED_BYTES)
    }
}

impl<T: fmt::Display> fmt::Display for Quoting<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, &self.0, Escape::Invisible, QUOTING_BYTES)
    }
}

/// Which characters [`write_escaped`] escapes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// Control and invisible characters, `"` and `\`.
    All,
    /// Control and invisible characters only.
    Invisible,
}

/// Writes `value` escaped, at most `bound` bytes of it, then `…(length bytes)` if
/// it was cut.
fn write_escaped(
    f: &mut fmt::Formatter<'_>,
    value: &dyn fmt::Display,
    escape: Escape,
    bound: usize,
) -> fmt::Result {
    let mut cut = Cut {
        out: f,
        escape,
        room: bound,
        length: 0,
        cut: false,
        failed: false,
    };
    // `Cut` itself never fails (it must see the whole value to count it);
    // `failed` remembers whether writing to the line did.
    let _ = write!(cut, "{value}");
    if cut.failed {
        return Err(fmt::Error);
    }
    if cut.cut {
        return write!(cut.out, "…({} bytes)", cut.length);
    }
    Ok(())
}

/// Escapes what passes through into `out` while it fits in `room`, and counts
/// the length of all of it.
struct Cut<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    escape: Escape,
    /// Bytes of escaped text still allowed.
    room: usize,
    /// Bytes of the original text.
    length: usize,
    /// Something did not fit: nothing more is written.
    cut: bool,
    failed: bool,
}

impl fmt::Write for Cut<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.length += text.len();
        for c in text.chars() {
            if self.cut {
                break;
            }
            // An apostrophe is harmless and common; what `Quoting` wraps has its
            // quotes and backslashes escaped already.
            let verbatim =
                c == '\'' || (self.escape == Escape::Invisible && (c == '"' || c == '\\'));
            let escaped = (!verbatim).then(|| c.escape_debug());
            let bytes = escaped
                .clone()
                .map_or(c.len_utf8(), |e| e.map(char::len_utf8).sum());
            if bytes > self.room {
                self.cut = true;
                break;
            }
            self.room -= bytes;
            let written = match escaped {
                Some(escaped) => write!(self.out, "{escaped}"),
                None => self.out.write_char(c),
            };
            self.failed |= written.is_err();
        }
        Ok(())
    }
}

/// How many lines of one [`Noisy`] kind may be written at once.
const BURST: u32 = 10;

/// After a burst, a kind earns one more line per `REFILL`.
const REFILL: Duration = Duration::from_secs(1);

/// Writes a line of a [`Noisy`] kind, unless the kind has used up its lines for
/// now; then the line is counted, and said later in a summary. The line's level is
/// the kind's, its target the calling module, as for `log::log!`.
///
/// ```ignore
/// limited!(Noisy::Misdirected, "page request from {peer} refused with 421");
/// ```
macro_rules! limited {
    ($kind:expr, $($arg:tt)+) => {{
        let kind: $crate::logging::Noisy = $kind;
        if let ::std::option::Option::Some(held) = kind.admit() {
            ::log::log!(kind.level(), "{}{}", ::std::format_args!($($arg)+), held);
        }
    }};
}
pub(crate) use limited;

/// Declares [`Noisy`] and `Noisy::ALL` from one list: every kind has an allowance,
/// found by its place in `ALL`, so none may be left out of it.
macro_rules! noisy_kinds {
    ($($(#[doc = $doc:literal])* $kind:ident,)*) => {
        /// A kind of log line that a client, or many, can make the server write as
        /// often as they like. Each kind has its own allowance, so a flood of one
        /// kind does not silence the others.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Noisy {
            $($(#[doc = $doc])* $kind,)*
        }

        impl Noisy {
            /// Every kind, in declaration order.
            const ALL: &'static [Noisy] = &[$(Noisy::$kind,)*];
        }
    };
}

noisy_kinds! {
    /// A connection refused at `accept`: every place of its kind is taken.
    Full,
    /// A connection refused at `accept`: its address holds its share.
    AddressFull,
    /// `accept` failed for want of descriptors or memory.
    AcceptFailed,
    /// A connection shed because no thread could be started for it.
    NoThread,
    /// A request or handshake refused with 400.
    BadRequest,
    /// … with 401: the access token missing or wrong.
    Unauthorized,
    /// … with 403: a foreign `Origin`.
    Forbidden,
    /// … with 404: no WebSocket endpoint at that path.
    NotFound,
    /// … with 408: the head did not arrive in time.
    RequestTimeout,
    /// … with 421: a `Host` that is not this server's name.
    Misdirected,
    /// … with 431: the head too large.
    HeadTooLarge,
    /// … with 503: no place for it.
    Unavailable,
    /// … with 429: an address over its budget, reconnecting.
    OverBudget,
    /// … with another status.
    OtherRefusal,
    /// A TLS or WebSocket handshake that failed.
    HandshakeFailed,
    /// A handshake not finished by its deadline.
    HandshakeTimedOut,
    /// A chat client connected.
    Connected,
    /// A chat client left, for any reason without a kind of its own.
    Left,
    /// A chat client closed for flooding.
    Flooding,
    /// A chat client closed for a frame too big, invalid, or against the protocol.
    BadFrames,
    /// A chat client cut off for not reading, or for a write that timed out.
    SlowConsumer,
    /// A request for a `--www` file over the size limit.
    FileTooLarge,
    /// An entry of the Redis stream that is not a message.
    BadStreamEntry,
}

impl Noisy {
    /// The kind of a refusal with `status`.
    pub(crate) fn refused(status: u16) -> Noisy {
        match status {
            400 => Noisy::BadRequest,
            401 => Noisy::Unauthorized,
            403 => Noisy::Forbidden,
            404 => Noisy::NotFound,
            408 => Noisy::RequestTimeout,
            421 => Noisy::Misdirected,
            431 => Noisy::HeadTooLarge,
            429 => Noisy::OverBudget,
            503 => Noisy::Unavailable,
            _ => Noisy::OtherRefusal,
        }
    }

    /// The level its lines are written at.
    pub(crate) fn level(self) -> Level {
        match self {
            Noisy::NoThread => Level::Error,
            Noisy::Full
            | Noisy::AddressFull
            | Noisy::AcceptFailed
            | Noisy::SlowConsumer
            | Noisy::FileTooLarge
            | Noisy::BadStreamEntry => Level::Warn,
            _ => Level::Info,
        }
    }

    /// What a summary counts: "and 12 more {these} since …".
    fn these(self) -> &'static str {
        match self {
            Noisy::Full => "connections refused for a full server",
            Noisy::AddressFull => "connections refused for an address at its share",
            Noisy::AcceptFailed => "failed accepts",
            Noisy::NoThread => "connections shed for want of a thread",
            Noisy::BadRequest => "refusals with 400",
            Noisy::Unauthorized => "refusals with 401",
            Noisy::Forbidden => "refusals with 403",
            Noisy::NotFound => "refusals with 404",
            Noisy::RequestTimeout => "refusals with 408",
            Noisy::Misdirected => "refusals with 421",
            Noisy::HeadTooLarge => "refusals with 431",
            Noisy::OverBudget => "refusals with 429",
            Noisy::Unavailable => "refusals with 503",
            Noisy::OtherRefusal => "other refusals",
            Noisy::HandshakeFailed => "failed handshakes",
            Noisy::HandshakeTimedOut => "handshakes timed out",
            Noisy::Connected => "clients connected",
            Noisy::Left => "clients disconnected",
            Noisy::Flooding => "clients disconnected for flooding",
            Noisy::BadFrames => "clients disconnected for bad frames",
            Noisy::SlowConsumer => "slow clients cut off",
            Noisy::FileTooLarge => "requests for files over the limit",
            Noisy::BadStreamEntry => "Redis entries skipped",
        }
    }

    fn allowance(self) -> MutexGuard<'static, LineAllowance> {
        // `noisy_kinds!` puts every kind in `ALL`, in declaration order.
        let allowance = &LINE_ALLOWANCES[self as usize];
        allowance.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one line of the allowance: `Some` with what was held back before it
    /// (to add to the line), or `None` when this line is to be held back too.
    /// Cheap when the level is off: no lock, and nothing is counted.
    pub(crate) fn admit(self) -> Option<HeldBack> {
        if self.level() > log::max_level() {
            return None;
        }
        let mut allowance = self.allowance();
        allowance.refill(Instant::now());
        if allowance.lines > 0 {
            allowance.lines -= 1;
            return Some(allowance.take_held_back(self));
        }
        allowance.held += 1;
        if allowance.held == 1 {
            allowance.held_since = Some(SystemTime::now());
            drop(allowance);
            wake_the_summariser();
        }
        None
    }
}

/// One [`Noisy`] kind's lines to spend, and what it held back.
struct LineAllowance {
    /// Lines that may be written now, up to [`BURST`].
    lines: u32,
    /// When `lines` was last topped up; `None` until the kind's first line.
    refilled: Option<Instant>,
    /// Lines held back since the last line of this kind.
    held: u64,
    /// When the first of them was.
    held_since: Option<SystemTime>,
}

impl LineAllowance {
    const UNUSED: LineAllowance = LineAllowance {
        lines: BURST,
        refilled: None,
        held: 0,
        held_since: None,
    };

    /// Adds a line per whole [`REFILL`] since the last top-up, up to [`BURST`].
    fn refill(&mut self, now: Instant) {
        let Some(last) = self.refilled else {
            self.refilled = Some(now);
            return;
        };
        let earned = now.saturating_duration_since(last).as_nanos() / REFILL.as_nanos();
        if earned == 0 {
            return;
        }
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        self.lines = self.lines.saturating_add(earned).min(BURST);
        // Partly earned time carries over, unless the allowance is full.
        self.refilled = Some(if self.lines == BURST {
            now
        } else {
            last + REFILL * earned
        });
    }

    fn take_held_back(&mut self, kind: Noisy) -> HeldBack {
        let held = HeldBack {
            kind,
            count: self.held,
            since: self.held_since.take(),
        };
        self.held = 0;
        held
    }
}

static LINE_ALLOWANCES: [Mutex<LineAllowance>; Noisy::ALL.len()] =
    [const { Mutex::new(LineAllowance::UNUSED) }; Noisy::ALL.len()];

/// Lines of one kind held back before the line it is added to: nothing if none
/// were, else ` (and 12 more refusals with 421 since 10:04:31Z)`.
pub(crate) struct HeldBack {
    kind: Noisy,
    count: u64,
    since: Option<SystemTime>,
}

impl HeldBack {
    /// `and 12 more refusals with 421 since 10:04:31Z`; `None` if nothing was
    /// held back.
    fn count(&self) -> Option<String> {
        let since = self.since.filter(|_| self.count > 0)?;
        Some(format!(
            "and {} more {} since {}",
            self.count,
            self.kind.these(),
            ClockTime(since)
        ))
    }
}

impl fmt::Display for HeldBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.count() {
            Some(count) => write!(f, " ({count})"),
            None => Ok(()),
        }
    }
}

/// A time of day in UTC, `10:04:31Z`: the lines around it carry the date.
struct ClockTime(SystemTime);

impl fmt::Display for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
        write!(
            f,
            "{:02}:{:02}:{:02}Z",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        )
    }
}

/// The thread that says what was held back when no line of its kind came to say
/// it. Started with logging, so that it is one of the threads the server always
/// has (none comes and goes with an attack); parked while nothing is held back.
static SUMMARISER: OnceLock<Thread> = OnceLock::new();

fn start_the_summariser() {
    let started = thread::Builder::new()
        .name("log-summary".into())
        .spawn(summarise);
    match started {
        Ok(handle) => {
            let _ = SUMMARISER.set(handle.thread().clone());
        }
        // Without it, the next line of each kind still carries its count.
        Err(e) => log::warn!("cannot start the log-summary thread ({e})"),
    }
}

fn wake_the_summariser() {
    if let Some(summariser) = SUMMARISER.get() {
        summariser.unpark();
    }
}

/// Parks until lines are held back; then, each [`REFILL`], writes a summary for
/// every kind that has held lines back and has earned a line, until none has.
fn summarise() {
    loop {
        // An unpark that came while the loop below ran makes this return at once.
        thread::park();
        loop {
            thread::sleep(REFILL);
            if !write_summaries() {
                break;
            }
        }
    }
}

/// Writes the summaries that are due; true if lines are still held back.
fn write_summaries() -> bool {
    let mut still_held = false;
    for &kind in Noisy::ALL {
        let mut allowance = kind.allowance();
        if allowance.held == 0 {
            continue;
        }
        allowance.refill(Instant::now());
        if allowance.lines == 0 {
            still_held = true;
            continue;
        }
        allowance.lines -= 1;
        let held = allowance.take_held_back(kind);
        drop(allowance);
        if let Some(count) = held.count() {
            log::log!(kind.level(), "… {count}");
        }
    }
    still_held
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(value: impl fmt::Display) -> String {
        value.to_string()
    }

    #[test]
    fn untrusted_text_is_escaped() {
        assert_eq!(
            shown(Untrusted("a\"b\\c\nd\r\u{1b}[31m\u{202e}é'")),
            r#"a\"b\\c\nd\r\u{1b}[31m\u{202e}é'"#
        );
        assert_eq!(shown(Untrusted("plain.example:8000")), "plain.example:8000");
    }

    #[test]
    fn untrusted_text_is_cut_with_its_length() {
        let host = "a".repeat(61_440);
        let line = shown(Untrusted(&host));
        assert_eq!(
            line,
            format!("{}…(61440 bytes)", "a".repeat(UNTRUSTED_BYTES))
        );
        // Exactly at the bound: whole, no mark.
        let fits = "b".repeat(UNTRUSTED_BYTES);
        assert_eq!(shown(Untrusted(&fits)), fits);
    }

    #[test]
    fn escapes_count_towards_the_cut() {
        // Each control character escapes to six bytes: the bound is on what is
        // written, not on what was sent.
        let line = shown(Untrusted("\u{1}".repeat(1000)));
        let kept = line.split('…').next().unwrap();
        assert_eq!(kept, r"\u{1}".repeat(UNTRUSTED_BYTES / 5));
        assert!(line.ends_with("…(1000 bytes)"), "{line}");
        // A character is never split: multi-byte ones stop before the bound.
        let wide = shown(Untrusted("中".repeat(100)));
        assert_eq!(
            wide,
            format!("{}…(300 bytes)", "中".repeat(UNTRUSTED_BYTES / 3))
        );
    }

    #[test]
    fn quoting_text_is_not_escaped_twice() {
        let refusal = format!("the name {:?} is not ours", "evil\n\u{1b}");
        assert_eq!(
            shown(Quoting(format!("{refusal}\u{7}\r\n"))),
            r#"the name "evil\n\u{1b}" is not ours\u{7}\r\n"#
        );
        let long = format!("the name {:?}", "a".repeat(1000));
        assert_eq!(
            shown(Quoting(&long)),
            format!("the name \"{}…(1011 bytes)", "a".repeat(QUOTING_BYTES - 10))
        );
    }

    #[test]
    fn an_error_is_escaped_as_it_is_written() {
        let error = std::io::Error::other("bad input \"x\ny\"");
        assert_eq!(shown(Untrusted(&error)), r#"bad input \"x\ny\""#);
    }

    #[test]
    fn an_allowance_spends_a_burst_then_earns_a_line_per_refill() {
        let start = Instant::now();
        let mut allowance = LineAllowance::UNUSED;
        allowance.refill(start);
        assert_eq!(allowance.lines, BURST);
        allowance.lines = 0;
        allowance.refill(start + REFILL / 2);
        assert_eq!(allowance.lines, 0);
        // The half already waited counts towards the next line.
        allowance.refill(start + REFILL);
        assert_eq!(allowance.lines, 1);
        allowance.refill(start + REFILL * 3 + REFILL / 2);
        assert_eq!(allowance.lines, 3);
        allowance.refill(start + REFILL * 4);
        assert_eq!(allowance.lines, 4);
        allowance.refill(start + REFILL * 1000);
        assert_eq!(allowance.lines, BURST);
    }

    #[test]
    fn held_back_lines_are_said_with_their_count_and_time() {
        let mut allowance = LineAllowance::UNUSED;
        assert_eq!(shown(allowance.take_held_back(Noisy::Misdirected)), "");
        allowance.held = 12;
        allowance.held_since = Some(UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 36_271));
        assert_eq!(
            shown(allowance.take_held_back(Noisy::Misdirected)),
            " (and 12 more refusals with 421 since 10:04:31Z)"
        );
        assert_eq!((allowance.held, allowance.held_since), (0, None));
    }
}
