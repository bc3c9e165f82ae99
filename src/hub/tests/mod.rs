//! The hub's own tests: real outboxes on loopback sockets, the frames read back
//! from the other end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::event::{
    Acked, Arrival, DirectMessage, Endpoint, Entry, Join, Location, Publish, Receipt, Said,
};
use crate::format::Format;
use crate::places;
use crate::protocol::ChatMessage;

mod receipts;
mod seating;

/// The JSON texts of the whole unmasked text frames at the start of `bytes`.
pub(super) fn texts(bytes: &[u8]) -> Vec<serde_json::Value> {
    frames(bytes)
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect()
}

/// The payloads of the whole unmasked text frames at the start of `bytes`.
pub(super) fn frames(bytes: &[u8]) -> Vec<String> {
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
        out.push(String::from_utf8(payload.to_vec()).unwrap());
        at += header + len;
    }
    out
}

/// A client on a loopback connection: its outbox, and the other end to read.
fn client(id: u64) -> (Arc<Outbox>, std::net::TcpStream) {
    use crate::places::{Cap, Caps, Kind, Places};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let theirs = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, peer) = listener.accept().unwrap();
    let places = Places::new(Caps {
        clients: Cap {
            total: 1,
            per_host: 0,
        },
        ..Caps::default()
    });
    let place = places.take(Kind::Chat, peer.ip()).unwrap();
    let outbox = Outbox::new(
        ClientId(id),
        Arc::new(ours),
        1 << 20,
        Duration::from_secs(1),
        place,
        None,
    );
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
    let settings = HubSettings {
        ping_interval: Duration::from_secs(30),
        history: 100,
        max_rooms: 3,
        max_rooms_per_host: 0,
        epoch: 1,
    };
    Hub::new(settings, None, Arc::new(Stats::new()))
}

/// The first client of cluster node 1.
const NODE_1: u64 = (1 << 32) + 1;

/// A hub of cluster node 1 with no bridge behind it: the test reads what it would
/// append (`Publish`) and hands back what `redis-in` would.
fn clustered_hub() -> (Hub, crossbeam_channel::Receiver<Publish>) {
    let (outgoing, published) = crossbeam_channel::bounded(16);
    let side = HubSide {
        node: 1,
        outgoing,
        elsewhere: Vec::new(),
        alive: Vec::new(),
        highest: Arc::default(),
    };
    let mut hub = hub();
    hub.cluster = Some(ClusterView::new(side));
    (hub, published)
}

/// The next message the hub handed to `redis-out`, past its seat entries.
fn next_said(published: &crossbeam_channel::Receiver<Publish>) -> Publish {
    loop {
        let publish = published.try_recv().expect("a message was published");
        if publish.kind == Entry::Said {
            return publish;
        }
    }
}

/// Hands back what the hub appended, as `redis-in` would, up to its first
/// message (or direct message, or receipt…), which is returned: the seat
/// changes awaiting their seat and seats items are applied.
fn read_back_seats(
    hub: &mut Hub,
    published: &crossbeam_channel::Receiver<Publish>,
) -> Option<Publish> {
    while let Ok(publish) = published.try_recv() {
        let entry = hub.last_message_id;
        let event = match publish.kind {
            Entry::Seat => Event::RelayedSeat {
                entry,
                id: publish.from,
                seat: (!publish.room.is_empty()).then_some(Location {
                    room: publish.room,
                    name: publish.name,
                }),
                offer: publish.offer,
            },
            Entry::Seats => Event::RelayedSeats {
                entry,
                node: hub.cluster.as_ref().unwrap().node(),
                seats: publish.seats,
                offer: publish.offer,
            },
            _ => return Some(publish),
        };
        hub.apply(event);
    }
    None
}

/// `publish` as the stream hands it back, numbered `id`.
fn relayed(publish: Publish, id: u64) -> Event {
    Event::Relayed(RelayedMessage {
        id,
        ts: publish.ts,
        from: publish.from,
        room: publish.room,
        name: publish.name,
        msg: publish.msg,
        except_sender: publish.except_sender,
    })
}

fn connect(id: u64, outbox: &Arc<Outbox>) -> Event {
    Event::Connect(Arrival {
        id: ClientId(id),
        outbox: Arc::clone(outbox),
        endpoint: Endpoint::Chat,
        format: Format::Json,
        name: String::new(),
        room: None,
        protocol: protocol::SUBPROTOCOL,
        address: std::net::Ipv4Addr::LOCALHOST.into(),
        allowance: None,
    })
}

/// Client `id` moves to `room`, with no `since`.
fn join(id: u64, room: &str) -> Event {
    Event::Join(Join {
        id: ClientId(id),
        room: room.into(),
        since: None,
        epoch: None,
    })
}

fn say(from: u64, text: &str) -> Event {
    Event::Message(Said {
        from: ClientId(from),
        message: ChatMessage {
            name: format!("n{from}"),
            msg: text.into(),
        },
        except_sender: false,
    })
}

#[test]
fn a_client_joining_with_a_leave_in_its_turn_hears_only_what_follows_its_welcome() {
    let mut hub = hub();
    let (ann, _ann_reads) = client(1);
    let (bob, mut bob_reads) = client(2);
    let (cid, mut cid_reads) = client(3);
    hub.apply(connect(1, &ann));
    hub.apply(connect(2, &bob));
    hub.flush();
    // Ann leaves and Cid arrives in the same turn.
    hub.apply(Event::Leave { id: ClientId(1) });
    hub.apply(connect(3, &cid));
    hub.flush();

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
fn messages_get_increasing_ids_and_reach_their_room_in_one_order() {
    let mut hub = hub();
    let (ann, mut ann_reads) = client(1);
    let (bob, mut bob_reads) = client(2);
    let (cid, mut cid_reads) = client(3);
    for (id, outbox) in [(1, &ann), (2, &bob), (3, &cid)] {
        hub.apply(connect(id, outbox));
    }
    hub.flush();
    // Cid goes elsewhere; Ann and Bob talk in the lobby, Cid in its room.
    hub.apply(join(3, "side"));
    for (from, text) in [(1, "one"), (2, "two"), (3, "aside"), (1, "three")] {
        hub.apply(say(from, text));
    }
    hub.flush();
    for reads in [&mut ann_reads, &mut bob_reads] {
        // Welcome and the run of three joins; Cid's leave and three messages.
        let heard = received(reads, 2 + 4);
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
            [(1, "one".into()), (2, "two".into()), (4, "three".into())]
        );
    }
    // Welcome and the run; joined, its own join there, and its message.
    let heard = received(&mut cid_reads, 5);
    let last = heard.last().unwrap();
    assert_eq!(
        (last["msg"].as_str(), last["room"].as_str()),
        (Some("aside"), Some("side"))
    );
}

/// A cluster numbers node N's clients from `N << 32`: ids above any 32-bit
/// `usize`, which must pass through the hub whole on a 32-bit target too.
#[test]
fn ids_above_32_bits_reach_their_clients_whole() {
    let mut hub = hub();
    let ann_id = (1000 << 32) + 1;
    let bob_id = (1000 << 32) + 2;
    let (ann, mut ann_reads) = client(ann_id);
    let (bob, mut bob_reads) = client(bob_id);
    hub.apply(connect(ann_id, &ann));
    hub.apply(connect(bob_id, &bob));
    hub.flush();
    hub.apply(say(ann_id, "hi"));
    hub.apply(Event::Direct(DirectMessage {
        from: ClientId(bob_id),
        name: "bob".into(),
        to: ClientId(ann_id),
        msg: "psst".into(),
    }));
    hub.flush();
    // Welcome and the run of two joins, then the message and the direct one.
    let heard = received(&mut ann_reads, 4);
    assert_eq!(heard[0]["id"].as_u64(), Some(ann_id), "welcome: {heard:?}");
    assert_eq!(heard[2]["from"].as_u64(), Some(ann_id));
    assert_eq!(
        (heard[3]["from"].as_u64(), heard[3]["to"].as_u64()),
        (Some(bob_id), Some(ann_id))
    );
    let heard = received(&mut bob_reads, 4);
    assert_eq!(heard[0]["id"].as_u64(), Some(bob_id));
    assert_eq!(heard[2]["from"].as_u64(), Some(ann_id));
    assert_eq!(heard[3]["delivered"].as_bool(), Some(true), "{heard:?}");
}

#[test]
fn rejoining_ones_own_room_replays_only_what_it_asks_for() {
    let mut hub = hub();
    let (ann, mut ann_reads) = client(1);
    hub.apply(connect(1, &ann));
    hub.apply(say(1, "before"));
    let rejoin = |since| {
        Event::Join(Join {
            id: ClientId(1),
            room: LOBBY.into(),
            since,
            epoch: None,
        })
    };
    // Without `since`: nothing again, or one small frame would buy the whole
    // history.
    hub.apply(rejoin(None));
    hub.apply(say(1, "between"));
    // With it: what came after, between what came before and what follows.
    hub.apply(rejoin(Some(0)));
    hub.apply(say(1, "after"));
    hub.flush();
    let heard = received(&mut ann_reads, 9);
    let kinds: Vec<String> = heard[2..]
        .iter()
        .map(|f| match f["history"].as_bool() {
            Some(true) => format!("history {}", f["msg"].as_str().unwrap()),
            _ => format!(
                "{} {}",
                f["type"].as_str().unwrap(),
                f["msg"].as_str().unwrap_or("")
            ),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "message before",
            "joined ",
            "message between",
            "joined ",
            "history before",
            "history between",
            "message after"
        ]
    );
}

#[test]
fn a_room_keeps_its_history_for_whoever_comes_back() {
    let mut hub = hub();
    let (ann, mut ann_reads) = client(1);
    hub.apply(connect(1, &ann));
    hub.apply(join(1, "a"));
    hub.apply(say(1, "remember me"));
    hub.apply(join(1, "b"));
    hub.apply(join(1, "a"));
    hub.flush();
    let heard = received(&mut ann_reads, 9);
    let back = heard.iter().rposition(|f| f["type"] == "joined").unwrap();
    assert_eq!(heard[back]["room"], "a");
    assert_eq!(heard[back + 1]["msg"], "remember me");
    assert_eq!(heard[back + 1]["history"], true);
    // A fourth room takes the place of the least recently used empty one (b).
    hub.apply(join(1, "c"));
    assert!(hub.rooms.contains_key("a") && !hub.rooms.contains_key("b"));
    // With someone in every room but the lobby, which never makes way, a fifth
    // finds no place: its maker is told, and stays where it was.
    let (bob, _bob_reads) = client(2);
    hub.apply(connect(2, &bob));
    hub.apply(join(2, "a"));
    hub.flush();
    received(&mut ann_reads, 2); // c's `joined` and her own join there
    hub.apply(join(1, "d"));
    hub.flush();
    let refused = received(&mut ann_reads, 1).pop().unwrap();
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(!hub.rooms.contains_key("d"));
    assert_eq!(hub.clients[&ClientId(1)].room, "c");
}

#[test]
fn an_address_s_new_rooms_make_way_among_its_own() {
    let mut hub = hub();
    hub.settings.max_rooms = 100;
    hub.settings.max_rooms_per_host = 2;
    let join = |id, room: &str| {
        Event::Join(Join {
            id: ClientId(id),
            room: room.into(),
            since: None,
            epoch: None,
        })
    };
    // Someone else's room, empty now: an attacker's churn must leave it be.
    let (ann, _ann_reads) = client(1);
    hub.apply(connect(1, &ann));
    hub.apply(join(1, "homework"));
    hub.apply(join(1, LOBBY));
    // Another address makes room after room: its own oldest makes way.
    let (eve, _eve_reads) = client(2);
    let mut from_eve = connect(2, &eve);
    if let Event::Connect(Arrival { address, .. }) = &mut from_eve {
        *address = std::net::Ipv4Addr::new(127, 0, 0, 2).into();
    }
    hub.apply(from_eve);
    for n in 0..20 {
        hub.apply(join(2, &format!("spam-{n}")));
        hub.flush(); // a turn each, as the hub's loop takes them
    }
    let made = |hub: &Hub| hub.rooms.keys().filter(|r| r.starts_with("spam")).count();
    assert_eq!(made(&hub), 2);
    assert!(hub.rooms.contains_key("homework") && hub.rooms.contains_key("spam-19"));
    // Both of its rooms in use (one by someone else): no third.
    hub.apply(join(1, "spam-18"));
    hub.flush();
    hub.apply(join(2, "spam-20"));
    assert!(!hub.rooms.contains_key("spam-20"), "{:?}", hub.rooms.keys());
    assert_eq!(made(&hub), 2);
}

#[test]
fn a_message_whose_address_spent_its_budget_meanwhile_is_dropped_and_told() {
    use crate::budget::{BudgetSettings, Budgets};
    let mut hub = hub();
    let budgets = Budgets::new(BudgetSettings {
        frames: 0,
        bytes_in: 0,
        bytes_out: 1_000,
    });
    let (ann, mut ann_reads) = client(1);
    let (bob, mut bob_reads) = client(2);
    let mut from_ann = connect(1, &ann);
    if let Event::Connect(Arrival { allowance, .. }) = &mut from_ann {
        *allowance = budgets.of(std::net::Ipv4Addr::LOCALHOST.into());
    }
    hub.apply(from_ann);
    hub.apply(connect(2, &bob));
    hub.apply(say(1, "within its budget"));
    hub.flush();
    // Both frames were let in by the reader; the first spent the rest.
    budgets
        .of(std::net::Ipv4Addr::LOCALHOST.into())
        .unwrap()
        .spend(1_000_000);
    hub.apply(say(1, "over it"));
    hub.apply(say(2, "bob's"));
    hub.flush();
    let ann_got = received(&mut ann_reads, 5);
    let told = ann_got
        .iter()
        .any(|f| f["type"] == "error" && f["dropped"] == 1);
    assert!(told, "{ann_got:?}");
    let bob_got = received(&mut bob_reads, 4);
    let said: Vec<_> = bob_got
        .iter()
        .filter(|f| f["type"] == "message")
        .filter_map(|f| f["msg"].as_str())
        .collect();
    assert_eq!(said, ["within its budget", "bob's"], "{bob_got:?}");
}

#[test]
fn an_ipv6_host_hopping_through_its_64_makes_the_64_s_share_of_rooms() {
    let mut hub = hub();
    hub.settings.max_rooms = 100;
    hub.settings.max_rooms_per_host = 2;
    // A new address of one /64 for every room: each holding its room.
    let mut kept = Vec::new();
    for n in 1..=20u16 {
        let (conn, reads) = client(u64::from(n));
        let mut from = connect(u64::from(n), &conn);
        if let Event::Connect(Arrival { address, .. }) = &mut from {
            *address = std::net::Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, n).into();
        }
        hub.apply(from);
        hub.apply(Event::Join(Join {
            id: ClientId(u64::from(n)),
            room: format!("hop-{n}"),
            since: None,
            epoch: None,
        }));
        hub.flush();
        kept.push((conn, reads));
    }
    let made = hub.rooms.keys().filter(|r| r.starts_with("hop")).count();
    assert_eq!(made, 2 * places::NETWORK_SHARES);
}

#[test]
fn cut_off_twice_a_hub_numbers_alone_in_a_new_epoch_each_time_and_forgets_it_after() {
    // The hub's side of a cut: `Linked` is all it hears of it.
    let (mut hub, published) = clustered_hub();
    let (ann, mut ann_reads) = client(NODE_1);
    hub.apply(connect(NODE_1, &ann));
    read_back_seats(&mut hub, &published);
    hub.apply(say(NODE_1, "a"));
    hub.apply(relayed(next_said(&published), 1));
    hub.flush();
    received(&mut ann_reads, 3); // welcome, her join, "a" (id 1)
    let said = |frames: &[serde_json::Value]| {
        frames
            .iter()
            .filter(|f| f["type"] == "message")
            .map(|f| f["msg"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let mut epochs = Vec::new();
    for (newcomer, text) in [(NODE_1 + 7, "b"), (NODE_1 + 8, "c")] {
        hub.apply(Event::Linked { up: false });
        hub.apply(say(NODE_1, text));
        hub.flush();
        let heard = received(&mut ann_reads, 2);
        assert_eq!(heard[0]["connected"], false, "{}", heard[0]);
        let own = heard[0]["epoch"].as_u64().unwrap();
        epochs.push(own);
        // Its own ids go on from the cluster's last, each time anew.
        assert_eq!(
            (heard[1]["msg"].as_str(), heard[1]["id"].as_u64()),
            (Some(text), Some(2))
        );
        // A newcomer meanwhile: the node's epoch, and both parts of the history.
        let (outbox, mut reads) = client(newcomer);
        hub.apply(connect(newcomer, &outbox));
        hub.flush();
        let welcomed = received(&mut reads, 4);
        assert_eq!(welcomed[0]["epoch"].as_u64(), Some(own));
        assert_eq!(said(&welcomed), ["a", text]);
        // Resuming in the cluster's epoch: just what the node said alone.
        hub.apply(Event::Join(Join {
            id: ClientId(newcomer),
            room: LOBBY.into(),
            since: Some(1),
            epoch: Some(1),
        }));
        hub.flush();
        let resumed = received(&mut reads, 2);
        assert_ne!(resumed[0]["gap"], true, "{}", resumed[0]);
        assert_eq!(said(&resumed), [text]);
        hub.apply(Event::Leave {
            id: ClientId(newcomer),
        });
        hub.apply(Event::Linked { up: true });
        hub.flush();
        let back = received(&mut ann_reads, 2);
        let note = back.iter().find(|f| f["event"] == "cluster").unwrap();
        assert_eq!(
            (note["connected"].as_bool(), note["epoch"].as_u64()),
            (Some(true), Some(1))
        );
    }
    assert!(epochs[1] > epochs[0], "{epochs:?}");
    // After: the history is the cluster's alone.
    let (outbox, mut reads) = client(NODE_1 + 6);
    hub.apply(connect(NODE_1 + 6, &outbox));
    // The node's seats entry, appended once it was back, comes back first.
    read_back_seats(&mut hub, &published);
    hub.flush();
    let welcomed = received(&mut reads, 3);
    assert_eq!(welcomed[0]["epoch"].as_u64(), Some(1));
    assert_eq!(said(&welcomed), ["a"]);
}

#[test]
fn seats_on_the_stream_are_heard_counted_and_listed_in_the_stream_s_order() {
    let (mut hub, published) = clustered_hub();
    let (ann, mut ann_reads) = client((1 << 32) + 1);
    hub.apply(connect((1 << 32) + 1, &ann));
    // Her seat goes out on the stream.
    let seat = published.try_recv().unwrap();
    assert_eq!(
        (seat.kind, seat.from, seat.room.as_str()),
        (Entry::Seat, ClientId((1 << 32) + 1), LOBBY)
    );
    let lobby = |name: &str| {
        Some(Location {
            room: LOBBY.into(),
            name: name.into(),
        })
    };
    let (bob, zoe) = (ClientId((2 << 32) + 1), ClientId((3 << 32) + 5));
    // Node 1's own seat, come back: she is welcomed now, and nothing more is
    // appended for her.
    hub.apply(Event::RelayedSeat {
        entry: 2,
        id: ClientId((1 << 32) + 1),
        seat: lobby(""),
        offer: seat.offer,
    });
    hub.flush();
    received(&mut ann_reads, 2); // welcome, her join
    assert!(published.try_recv().is_err());
    // One turn each: a turn folds joins in a row into one notification.
    let heard_alone = |hub: &mut Hub, reads: &mut std::net::TcpStream, event: Event| {
        hub.apply(event);
        hub.flush();
        let frame = received(reads, 1).remove(0);
        let field = |name: &str| frame[name].clone();
        (field("event"), field("id"), field("count"))
    };
    let seen = heard_alone(
        &mut hub,
        &mut ann_reads,
        Event::RelayedSeat {
            entry: 3,
            id: zoe,
            seat: lobby("zoe"),
            offer: 1,
        },
    );
    assert_eq!(seen, ("join".into(), zoe.0.into(), 2.into()));
    let seen = heard_alone(
        &mut hub,
        &mut ann_reads,
        Event::RelayedSeat {
            entry: 4,
            id: bob,
            seat: lobby("bob"),
            offer: 1,
        },
    );
    assert_eq!(seen, ("join".into(), bob.0.into(), 3.into()));
    // `who` lists everyone by id, whichever node they are on.
    hub.apply(Event::Who {
        id: ClientId((1 << 32) + 1),
    });
    hub.flush();
    let who = &received(&mut ann_reads, 1)[0];
    let ids: Vec<u64> = who["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [(1 << 32) + 1, bob.0, zoe.0]);
    // Node 2 says who it has: nobody now. Node 3 is let go (a `gone` entry).
    let seen = heard_alone(
        &mut hub,
        &mut ann_reads,
        Event::RelayedSeats {
            entry: 5,
            node: 2,
            seats: Vec::new(),
            offer: 2,
        },
    );
    assert_eq!(seen, ("leave".into(), bob.0.into(), 2.into()));
    let gone = Event::RelayedGone { entry: 6, node: 3 };
    let seen = heard_alone(&mut hub, &mut ann_reads, gone);
    assert_eq!(seen, ("leave".into(), zoe.0.into(), 1.into()));
}
