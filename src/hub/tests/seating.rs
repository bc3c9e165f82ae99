//! This node's own seat changes, applied where the stream hands them back
//! (`hub/seating.rs`), on a clustered hub: what waits behind them, what
//! applies them, and what happens when one does not come back.

use super::super::seating::MAX_HELD;
use super::*;

#[test]
fn a_client_here_is_seated_where_the_stream_hands_its_seat_back_and_what_it_asks_waits() {
    let (mut hub, published) = clustered_hub();
    let (ann, mut ann_reads) = client(NODE_1);
    hub.apply(connect(NODE_1, &ann));
    read_back_seats(&mut hub, &published);
    hub.flush();
    let bob = ClientId((2 << 32) + 1);
    let bob_seat = |room: Option<&str>| Event::RelayedSeat {
        entry: 0,
        id: bob,
        seat: room.map(|room| Location {
            room: room.into(),
            name: "bob".into(),
        }),
        offer: 1,
    };
    hub.apply(bob_seat(Some(LOBBY)));
    hub.flush();
    received(&mut ann_reads, 3); // welcome, her join, Bob's
    // Cid arrives here, says hello and asks who is there: only his seat is
    // appended, and nothing is applied.
    let cid = NODE_1 + 1;
    let (cid_outbox, mut cid_reads) = client(cid);
    hub.apply(connect(cid, &cid_outbox));
    hub.apply(say(cid, "hello"));
    hub.apply(Event::Who { id: ClientId(cid) });
    let seat = published.try_recv().unwrap();
    assert_eq!((seat.kind, seat.from), (Entry::Seat, ClientId(cid)));
    assert!(published.try_recv().is_err(), "only his seat");
    // What the stream holds before his seat: a message of Bob's, then his leave.
    let mut before = Publish::message(
        LOBBY,
        bob,
        ChatMessage {
            name: "bob".into(),
            msg: "bye".into(),
        },
        false,
        9,
    );
    before.kind = Entry::Said;
    hub.apply(relayed(before, 1));
    hub.apply(bob_seat(None));
    hub.flush();
    // Then his seat; what he said is appended only now.
    hub.apply(Event::RelayedSeat {
        entry: 1,
        id: ClientId(cid),
        seat: Some(Location {
            room: seat.room,
            name: seat.name,
        }),
        offer: seat.offer,
    });
    hub.flush();
    assert_eq!(next_said(&published).msg, "hello");
    // Ann heard it all in the stream's order: Cid came after Bob left.
    let heard = received(&mut ann_reads, 3);
    let seen: Vec<_> = heard
        .iter()
        .map(|f| {
            (
                f["event"].as_str().or(f["msg"].as_str()),
                f["count"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (Some("bye"), None),
            (Some("leave"), Some(1)),
            (Some("join"), Some(2))
        ]
    );
    // Cid's welcome is as of his seat: Bob gone, his message in the history
    // only, then his own join and the answer to `who`.
    let heard = received(&mut cid_reads, 4);
    assert_eq!(
        (heard[0]["type"].as_str(), heard[0]["count"].as_u64()),
        (Some("welcome"), Some(2))
    );
    assert_eq!(heard[1]["msg"], "bye");
    assert_eq!(heard[2]["event"], "join");
    let who: Vec<u64> = (heard[3]["members"].as_array().unwrap().iter())
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(who, [NODE_1, cid]);
}

#[test]
fn a_move_waits_for_its_seat_unless_the_node_is_cut_off_and_what_waits_behind_it_is_capped() {
    let (mut hub, published) = clustered_hub();
    let (ann, mut ann_reads) = client(NODE_1);
    hub.apply(connect(NODE_1, &ann));
    read_back_seats(&mut hub, &published);
    hub.flush();
    received(&mut ann_reads, 2); // welcome, her join
    hub.apply(join(NODE_1, "side"));
    for n in 0..MAX_HELD + 1 {
        hub.apply(say(NODE_1, &n.to_string()));
    }
    hub.flush();
    // One too many: refused at once, while she is still in the lobby.
    let refused = &received(&mut ann_reads, 1)[0];
    assert!(
        refused["msg"].as_str().unwrap().contains("busy"),
        "{refused}"
    );
    assert_eq!(hub.clients[&ClientId(NODE_1)].room, LOBBY);
    // Cut off: the move is made at once, and what waited is said in her new
    // room, numbered by the node.
    hub.apply(Event::Linked { up: false });
    hub.flush();
    let heard = received(&mut ann_reads, 2 + MAX_HELD);
    let joined = heard.iter().position(|f| f["type"] == "joined").unwrap();
    let said: Vec<_> = heard[joined..]
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| (f["room"].as_str().unwrap(), f["msg"].as_str().unwrap()))
        .collect();
    let expected: Vec<_> = (0..MAX_HELD).map(|n| n.to_string()).collect();
    assert_eq!(said.len(), MAX_HELD, "{heard:?}");
    for ((room, msg), n) in said.iter().zip(&expected) {
        assert_eq!((*room, *msg), ("side", n.as_str()));
    }
}

/// The seat item `publish` (appended by this hub) as `redis-in` hands it back.
fn seat_back(publish: &Publish) -> Event {
    assert_eq!(publish.kind, Entry::Seat, "{publish:?}");
    Event::RelayedSeat {
        entry: 0,
        id: publish.from,
        seat: (!publish.room.is_empty()).then(|| Location {
            room: publish.room.clone(),
            name: publish.name.clone(),
        }),
        offer: publish.offer,
    }
}

#[test]
fn a_change_is_applied_by_its_own_item_or_what_says_it_and_by_nothing_else() {
    let (mut hub, published) = clustered_hub();
    let (ann, _ann_reads) = client(NODE_1);
    hub.apply(connect(NODE_1, &ann));
    read_back_seats(&mut hub, &published);
    let room = |hub: &Hub| hub.clients[&ClientId(NODE_1)].room.clone();
    // To b, then a seats entry, then to c: b's item applies b only.
    hub.apply(join(NODE_1, "b"));
    let to_b = published.try_recv().unwrap();
    hub.apply(Event::Reannounce);
    let seats = published.try_recv().unwrap();
    assert_eq!(seats.kind, Entry::Seats);
    hub.apply(seat_back(&to_b));
    assert_eq!(room(&hub), "b");
    hub.apply(join(NODE_1, "c"));
    let to_c = published.try_recv().unwrap();
    // The seats entry, offered before the move to c, says nothing of it.
    hub.apply(Event::RelayedSeats {
        entry: 0,
        node: 1,
        seats: seats.seats.clone(),
        offer: seats.offer,
    });
    assert_eq!(room(&hub), "b");
    // An item of hers from before (sent again after a cut, say) is passed over.
    hub.apply(seat_back(&to_b));
    assert_eq!(room(&hub), "b");
    hub.apply(seat_back(&to_c));
    assert_eq!(room(&hub), "c");
    // A batch Redis refused: what it carried is applied at once.
    hub.flush(); // b, empty, makes way (three rooms at most here)
    hub.apply(join(NODE_1, "d"));
    let to_d = published.try_recv().unwrap();
    hub.apply(Event::SeatsNotTaken {
        upto: to_d.offer - 1,
    });
    assert_eq!(room(&hub), "c");
    hub.apply(Event::SeatsNotTaken { upto: to_d.offer });
    assert_eq!(room(&hub), "d");
    // What she says next goes after a seats entry that has her there.
    hub.apply(say(NODE_1, "in d"));
    let seats = published.try_recv().unwrap();
    assert_eq!(seats.kind, Entry::Seats);
    assert_eq!(seats.seats[0].1.room, "d");
    assert_eq!(published.try_recv().unwrap().msg, "in d");
}

#[test]
fn an_acknowledged_login_is_spelled_the_tutorial_s_way_at_once() {
    let (mut hub, published) = clustered_hub();
    let (page, _page_reads) = client(NODE_1);
    hub.apply(connect(NODE_1, &page));
    read_back_seats(&mut hub, &published);
    hub.apply(Event::Acked(Acked {
        id: ClientId(NODE_1),
        ack: 1,
        event: Box::new(Event::Login {
            id: ClientId(NODE_1),
            name: "xyz".into(),
        }),
    }));
    // Its seat (the new name) is on its way; its frames are the tutorial's now.
    assert_eq!(published.try_recv().unwrap().name, "xyz");
    let format = hub.clients[&ClientId(NODE_1)].format;
    assert_eq!(format, Format::SocketIoTutorial);
}

#[test]
fn an_acknowledged_kick_waits_behind_its_target_s_change_and_loses_nothing() {
    let (mut hub, published) = clustered_hub();
    let (admin, target) = (NODE_1, NODE_1 + 1);
    let (admin_outbox, _admin_reads) = client(admin);
    let (target_outbox, _target_reads) = client(target);
    hub.apply(connect(admin, &admin_outbox));
    hub.apply(connect(target, &target_outbox));
    assert!(read_back_seats(&mut hub, &published).is_none());
    hub.apply(join(target, "b"));
    hub.apply(say(target, "hi"));
    hub.apply(Event::Acked(Acked {
        id: ClientId(admin),
        ack: 5,
        event: Box::new(Event::Kick {
            target: ClientId(target),
            by: ClientId(admin),
        }),
    }));
    // Only the move is appended; then, in order, what he said and the kick.
    let to_b = published.try_recv().unwrap();
    assert_eq!(to_b.room, "b");
    assert!(published.try_recv().is_err());
    hub.apply(seat_back(&to_b));
    assert_eq!(next_said(&published).msg, "hi");
    let gone = published.try_recv().unwrap();
    assert_eq!((gone.kind, gone.room.as_str()), (Entry::Seat, ""));
    assert!(
        hub.clients.contains_key(&ClientId(target)),
        "kicked at its place"
    );
    hub.apply(seat_back(&gone));
    assert!(!hub.clients.contains_key(&ClientId(target)));
}

#[test]
fn a_client_that_says_too_much_before_its_welcome_is_told_once_after_it() {
    let (mut hub, published) = clustered_hub();
    let (cid, mut cid_reads) = client(NODE_1);
    hub.apply(connect(NODE_1, &cid));
    for n in 0..MAX_HELD + 5 {
        hub.apply(say(NODE_1, &n.to_string()));
    }
    assert!(read_back_seats(&mut hub, &published).is_some());
    hub.flush();
    // Welcome, its own join, then one error for the five it lost.
    let heard = received(&mut cid_reads, 3);
    assert_eq!(heard[0]["type"], "welcome");
    assert_eq!(heard[1]["event"], "join");
    assert!(
        heard[2]["msg"].as_str().unwrap().contains("busy"),
        "{heard:?}"
    );
    let mut said = 1; // the first, returned above
    while let Ok(publish) = published.try_recv() {
        said += usize::from(publish.kind == Entry::Said);
    }
    assert_eq!(said, MAX_HELD);
}
