//! A room's frames for the turn being built, spelled once in each format its
//! members read, and how each member is sent its part of them.
//!
//! Joins and leaves that follow each other are announced together: a run of k
//! joins becomes one notification, "k users joined", with the count after the
//! run. When N clients connect at once, every one of them must hear about every
//! other: N²/2 frames one by one (2 million for 2,000 clients), but only about as
//! many as there are batches when runs are folded. The count stays exact; only the
//! steps in between are skipped.

use std::ops::Range;
use std::sync::Arc;

use crate::format::{Format, PerFormat};
use crate::frame;
use crate::outbox::Outbox;
use crate::protocol::{ClientId, NamedClient, Outgoing, Presence};

/// One room's frames of this turn.
#[derive(Default)]
pub(super) struct Batch {
    /// The frames in each format. A format's buffer is written only while some
    /// member reads it ([`Batch::wanted`]): a format costs nothing where nobody
    /// reads it.
    buffers: PerFormat<Vec<u8>>,
    wanted: PerFormat<bool>,
    /// Frames this turn, whether or not any buffer took them (a room with no
    /// members wants no format): what [`Batch::is_empty`] counts, and the hub's
    /// list of rooms with frames this turn relies on.
    frames: usize,
    /// The run of joins or leaves not written yet.
    pending: Option<PresenceRun>,
}

/// Joins (or leaves) in a row, announced as one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PresenceRun {
    event: Presence,
    /// How many joined (or left) in this run.
    users: usize,
    /// Members after the run.
    count: usize,
    /// The one client a run of one is about.
    single: Option<NamedClient>,
}

/// Where a frame lies in each format's buffer.
pub(super) type Span = PerFormat<Range<usize>>;

/// Where a client joining now starts reading, in each format's buffer.
pub(super) type Start = PerFormat<usize>;

impl Batch {
    /// Spells the batch in `format` too, from now on: a member who reads it has
    /// joined. If nobody read it before, the frames before are not in it, and
    /// nobody needs them: the newcomer starts after them.
    pub(super) fn want(&mut self, format: Format) {
        self.wanted[format] = true;
    }

    /// Spells the batch only in the formats of `members` (some have left).
    pub(super) fn want_only(&mut self, members: impl Iterator<Item = Format>) {
        self.wanted = PerFormat::default();
        for format in members {
            self.wanted[format] = true;
        }
    }

    /// Records a join or leave; `count` is the number of members after it. Returns
    /// where a client joining now starts reading: the run it belongs to is written
    /// there, and nothing before it (an earlier leave, say) is its news.
    pub(super) fn presence(
        &mut self,
        event: Presence,
        count: usize,
        single: NamedClient,
        room: &str,
    ) -> Start {
        match &mut self.pending {
            Some(run) if run.event == event && event != Presence::Kick => {
                run.users += 1;
                run.count = count;
                run.single = None;
            }
            _ => {
                self.write_presence(room);
                self.pending = Some(PresenceRun {
                    event,
                    users: 1,
                    count,
                    single: Some(single),
                });
            }
        }
        // Nothing else is appended while a run is pending, so the run will be
        // written exactly here.
        self.ends()
    }

    /// Appends a frame (`json` is its JSON, spelled already), after any presence
    /// run before it. Returns where it lies.
    pub(super) fn push(&mut self, json: &str, frame: &Outgoing<'_>, room: &str) -> Span {
        self.write_presence(room);
        let start = self.ends();
        self.append(json, frame, room);
        let end = self.ends();
        PerFormat::from_fn(|format| start[format]..end[format])
    }

    /// Whether nothing was written or recorded this turn.
    pub(super) fn is_empty(&self) -> bool {
        self.frames == 0 && self.pending.is_none()
    }

    /// Writes the pending run, if any, and hands the buffers over.
    pub(super) fn finish(&mut self, room: &str) -> PerFormat<Vec<u8>> {
        self.write_presence(room);
        self.frames = 0;
        let empty = PerFormat::from_fn(|_| Vec::new());
        std::mem::replace(&mut self.buffers, empty)
    }

    fn ends(&self) -> Start {
        PerFormat::from_fn(|format| self.buffers[format].len())
    }

    fn append(&mut self, json: &str, frame: &Outgoing<'_>, room: &str) {
        for format in Format::ALL {
            if !self.wanted[format] {
                continue;
            }
            let buffer = &mut self.buffers[format];
            match format {
                Format::Json => frame::append_text(buffer, json),
                other => frame::append_text(buffer, &other.spell(frame, room)),
            }
        }
        self.frames += 1;
    }

    fn write_presence(&mut self, room: &str) {
        let Some(run) = self.pending.take() else {
            return;
        };
        let Outgoing::Notification { msg, .. } =
            Outgoing::presence(run.event, run.users, run.count)
        else {
            unreachable!("presence makes a notification")
        };
        let note = Outgoing::Notification {
            msg,
            count: run.count,
            event: run.event,
            users: run.users,
            room: Some(room),
            id: run.single.as_ref().map(|single| single.id),
            name: run.single.as_ref().map(|single| single.name.as_str()),
        };
        self.append(&note.to_json(), &note, room);
    }
}

/// A chat client, as its room holds it: where to send its room's batches, and
/// what of this turn's batch it must or must not get.
pub(super) struct Member {
    pub(super) id: ClientId,
    pub(super) outbox: Arc<Outbox>,
    pub(super) format: Format,
    /// Set when the client joined during the batch being built.
    pub(super) joining: Option<Joining>,
    /// Frames of this batch it must not get (its own `except_sender` messages).
    pub(super) except: Vec<Span>,
}

/// A client that joined during the batch being built: it must get its prefix
/// (welcome or joined, then the room's history) before anything else, and nothing
/// of the batch from before it joined.
pub(super) struct Joining {
    pub(super) prefix: Vec<u8>,
    pub(super) start: Start,
}

impl Member {
    /// Sends its room's batch: its prefix if it just joined, then the batch from
    /// where it starts, without its own `except_sender` messages.
    pub(super) fn deliver(&mut self, batches: &PerFormat<Arc<Vec<u8>>>) {
        let batch = &batches[self.format];
        let mut start = 0;
        // A failed send needs no action here: the outbox has already closed the
        // client, whose reader will report the Leave.
        if let Some(joining) = self.joining.take() {
            let _ = self.outbox.send_shared(&Arc::new(joining.prefix), 0);
            start = joining.start[self.format];
        }
        for skip in self.except.drain(..) {
            let skip = &skip[self.format];
            if skip.start > start {
                let _ = self.outbox.send_shared_part(batch, start..skip.start);
            }
            start = start.max(skip.end);
        }
        if start < batch.len() {
            let _ = self.outbox.send_shared_part(batch, start..batch.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::tests::{frames, texts};
    use crate::hub::{LARGEST_BATCH, MAX_BATCH_BYTES};
    use crate::protocol::{self, LOBBY as ROOM};

    fn single(id: u64) -> NamedClient {
        NamedClient {
            id: ClientId(id),
            name: String::new(),
        }
    }

    /// A batch for a room of JSON clients.
    fn json_batch() -> Batch {
        let mut batch = Batch::default();
        batch.want(Format::Json);
        batch
    }

    #[test]
    fn a_run_of_joins_is_one_notification_with_the_count_after_it() {
        let mut batch = json_batch();
        for count in 4..=6 {
            batch.presence(Presence::Join, count, single(count as u64), ROOM);
        }
        let frames = texts(&batch.finish(ROOM)[Format::Json]);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0]["users"], 3);
        assert_eq!(frames[0]["count"], 6);
        assert_eq!(frames[0]["msg"], "3 users joined [online: 6]");
        assert_eq!(frames[0]["room"], ROOM);
        assert!(frames[0].get("id").is_none(), "a run names no one");
    }

    #[test]
    fn a_single_join_names_its_client() {
        let mut batch = json_batch();
        let ann = NamedClient {
            id: ClientId(7),
            name: "ann".into(),
        };
        batch.presence(Presence::Join, 1, ann, ROOM);
        let frames = texts(&batch.finish(ROOM)[Format::Json]);
        assert_eq!(
            (frames[0]["id"].as_u64(), frames[0]["name"].as_str()),
            (Some(7), Some("ann"))
        );
    }

    fn message_frame(text: &str) -> (String, Outgoing<'_>) {
        let frame = Outgoing::Message {
            id: 1,
            ts: 1,
            from: ClientId(1),
            name: "n",
            msg: text,
            room: Some(ROOM),
        };
        (frame.to_json(), frame)
    }

    #[test]
    fn a_client_joining_after_a_leave_starts_after_it() {
        let mut batch = json_batch();
        let (json, frame) = message_frame("before");
        batch.push(&json, &frame, ROOM);
        batch.presence(Presence::Leave, 4, single(1), ROOM);
        let start = batch.presence(Presence::Join, 5, single(2), ROOM);
        let bytes = &batch.finish(ROOM)[Format::Json];
        assert_eq!(texts(bytes).len(), 3);
        let heard = texts(&bytes[start[Format::Json]..]);
        assert_eq!(heard.len(), 1, "the joiner heard {heard:?}");
        assert_eq!(heard[0]["event"], "join");
        assert_eq!(heard[0]["count"], 5);
    }

    #[test]
    fn text_lines_are_built_only_for_a_room_that_has_text_members() {
        let mut batch = json_batch();
        let (json, frame) = message_frame("hi");
        batch.push(&json, &frame, ROOM);
        batch.want(Format::Text);
        batch.push(&json, &frame, ROOM);
        let bob = NamedClient {
            id: ClientId(3),
            name: "bob".into(),
        };
        batch.presence(Presence::Leave, 1, bob, ROOM);
        let bytes = batch.finish(ROOM);
        // The first message came before any text member: no line for it.
        assert_eq!(
            frames(&bytes[Format::Text]),
            ["[n] hi", "user left [online: 1]"]
        );
        assert_eq!(texts(&bytes[Format::Json]).len(), 3);
        // And a room whose text members left stops spelling lines.
        batch.want_only([Format::Json].into_iter());
        batch.push(&json, &frame, ROOM);
        assert!(batch.finish(ROOM)[Format::Text].is_empty());
    }

    #[test]
    fn a_full_batch_stays_within_its_bound() {
        let worst = protocol::largest_message_json();
        let frame = Outgoing::Pong;
        let mut batch = json_batch();
        let mut count = 0;
        let name = "\u{1}".repeat(protocol::MAX_NAME_CHARS);
        let largest = |name: &str| NamedClient {
            id: ClientId(u64::MAX),
            name: name.to_string(),
        };
        // As the hub fills one: an event is taken while the batch is under its size.
        while batch.buffers[Format::Json].len() < MAX_BATCH_BYTES {
            count += 1;
            batch.presence(Presence::Leave, usize::MAX - count, largest(&name), ROOM);
            batch.push(&worst, &frame, ROOM);
        }
        batch.presence(Presence::Join, usize::MAX, largest(&name), ROOM);
        assert!(batch.finish(ROOM)[Format::Json].len() <= LARGEST_BATCH);
    }
}
