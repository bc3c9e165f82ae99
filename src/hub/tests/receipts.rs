//! Direct messages and kicks between nodes, and the receipts that answer them
//! (`hub/receipts.rs`), on a clustered hub.

use super::*;

/// Client `n` of cluster node `node`.
fn of_node(node: u64, n: u64) -> ClientId {
    ClientId((node << 32) + n)
}

fn direct(from: ClientId, to: ClientId, msg: &str) -> DirectMessage {
    DirectMessage {
        from,
        name: "ann".into(),
        to,
        msg: msg.into(),
    }
}

/// Node `node`'s first entry, as every node appends it when it joins: alive.
fn node_joins(node: u64) -> Event {
    Event::RelayedSeats {
        entry: 0,
        node,
        seats: Vec::new(),
        offer: 0,
    }
}

/// A clustered hub (node 1) with Ann, and what she was sent read past.
fn ann_on_node_1() -> (
    Hub,
    crossbeam_channel::Receiver<Publish>,
    std::net::TcpStream,
) {
    let (mut hub, published) = clustered_hub();
    let (ann, mut ann_reads) = client(of_node(1, 1).0);
    hub.apply(connect(of_node(1, 1).0, &ann));
    assert!(read_back_seats(&mut hub, &published).is_none());
    hub.flush();
    received(&mut ann_reads, 2); // welcome, her join
    (hub, published, ann_reads)
}

#[test]
fn a_direct_message_to_another_node_waits_for_that_node_s_receipt() {
    let (mut hub, published, mut ann_reads) = ann_on_node_1();
    let ann = of_node(1, 1);
    hub.apply(node_joins(2));
    // Bob, on node 2, was never seen seated here: his message goes anyway.
    let bob = of_node(2, 7);
    hub.apply(Event::Direct(direct(ann, bob, "psst")));
    let sent = next_said(&published);
    assert_eq!(sent.to, Some(bob));
    // Read back from the stream: no copy for Ann yet, only once node 2 says.
    hub.apply(Event::RelayedDirect {
        id: 5,
        ts: 9,
        direct: direct(ann, bob, "psst"),
    });
    hub.flush();
    let receipt = |of, target, delivered| Event::RelayedReceipt {
        entry: of,
        receipt: Receipt {
            of,
            target,
            sender: ann,
            delivered,
        },
    };
    hub.apply(receipt(5, bob, true));
    hub.flush();
    let copy = received(&mut ann_reads, 1).remove(0);
    assert_eq!(
        (copy["type"].as_str(), copy["id"].as_u64()),
        (Some("direct"), Some(5)),
        "the copy is the first she hears: {copy}"
    );
    assert_eq!(copy["delivered"], true, "{copy}");
    // Node 2 had nobody under that id: an error, and a second receipt is none.
    let nobody = of_node(2, 8);
    hub.apply(Event::RelayedDirect {
        id: 6,
        ts: 9,
        direct: direct(ann, nobody, "there?"),
    });
    hub.apply(receipt(6, nobody, false));
    hub.apply(receipt(6, nobody, false));
    hub.flush();
    // (A turn's room frames go before its replies: the marker in a turn after.)
    hub.apply(say(ann.0, "marker"));
    hub.apply(relayed(next_said(&published), 7));
    hub.flush();
    let heard = received(&mut ann_reads, 2);
    assert_eq!(heard[0]["type"], "error", "{heard:?}");
    assert!(
        heard[0]["msg"]
            .as_str()
            .unwrap()
            .contains(&nobody.to_string())
    );
    assert_eq!(heard[1]["msg"], "marker", "{heard:?}");
}

#[test]
fn a_direct_message_is_refused_at_once_when_no_answer_can_come() {
    let (mut hub, published, mut ann_reads) = ann_on_node_1();
    let ann = of_node(1, 1);
    let refused_for = |reads: &mut std::net::TcpStream, id: ClientId| {
        let error = received(reads, 1).remove(0);
        assert_eq!(error["type"], "error", "{error}");
        assert!(error["msg"].as_str().unwrap().contains(&id.to_string()));
    };
    // One of this node's own numbers, not here: refused before the stream.
    hub.apply(Event::Direct(direct(ann, of_node(1, 99), "hi")));
    hub.flush();
    refused_for(&mut ann_reads, of_node(1, 99));
    assert!(published.try_recv().is_err(), "nothing published");
    // Ann's direct message to `to`, read back from the stream as message `id`.
    let read_back = |id, to| Event::RelayedDirect {
        id,
        ts: 9,
        direct: direct(ann, to, "hi"),
    };
    // A node that has not joined where the message is read.
    hub.apply(read_back(3, of_node(3, 1)));
    hub.flush();
    refused_for(&mut ann_reads, of_node(3, 1));
    // A node that is gone before it answered.
    hub.apply(node_joins(2));
    hub.apply(read_back(4, of_node(2, 1)));
    hub.apply(Event::RelayedGone { entry: 4, node: 2 });
    hub.flush();
    refused_for(&mut ann_reads, of_node(2, 1));
    // And after it, at once, as for a node never seen.
    hub.apply(read_back(5, of_node(2, 1)));
    hub.flush();
    refused_for(&mut ann_reads, of_node(2, 1));
}

#[test]
fn the_target_s_node_delivers_and_answers_with_a_receipt() {
    let (mut hub, published, mut ann_reads) = ann_on_node_1();
    let (ann, bob) = (of_node(1, 1), of_node(2, 1));
    let receipt = |published: &crossbeam_channel::Receiver<Publish>| {
        let publish = published.try_recv().expect("a receipt");
        assert_eq!(publish.to, Some(bob), "addressed to the sender");
        (publish.kind, publish.from, publish.msg)
    };
    hub.apply(Event::RelayedDirect {
        id: 5,
        ts: 9,
        direct: direct(bob, ann, "psst"),
    });
    hub.flush();
    let got = received(&mut ann_reads, 1).remove(0);
    assert_eq!(
        (got["msg"].as_str(), got["id"].as_u64()),
        (Some("psst"), Some(5))
    );
    let delivered = Entry::Receipt { delivered: true };
    assert_eq!(receipt(&published), (delivered, ann, "5".into()));
    // Nobody here under that number.
    let missing = of_node(1, 50);
    hub.apply(Event::RelayedDirect {
        id: 6,
        ts: 9,
        direct: direct(bob, missing, "psst"),
    });
    let undelivered = Entry::Receipt { delivered: false };
    assert_eq!(receipt(&published), (undelivered, missing, "6".into()));
    // Nor one whose connection is gone, its leave on its way through the
    // stream (still in its room as of now).
    let (cid_outbox, _cid_reads) = client(of_node(1, 2).0);
    hub.apply(connect(of_node(1, 2).0, &cid_outbox));
    read_back_seats(&mut hub, &published);
    hub.apply(Event::Leave { id: of_node(1, 2) });
    assert_eq!(published.try_recv().unwrap().kind, Entry::Seat, "his leave");
    hub.apply(Event::RelayedDirect {
        id: 6,
        ts: 9,
        direct: direct(bob, of_node(1, 2), "psst"),
    });
    assert!(hub.clients.contains_key(&of_node(1, 2)), "still seated");
    assert_eq!(
        receipt(&published),
        (undelivered, of_node(1, 2), "6".into())
    );
    // A kick the same way: not here, then Ann, closed.
    hub.apply(Event::RelayedKick {
        id: 7,
        target: missing,
        by: bob,
    });
    assert_eq!(receipt(&published), (undelivered, missing, "7".into()));
    hub.apply(Event::RelayedKick {
        id: 8,
        target: ann,
        by: bob,
    });
    assert!(!hub.clients.contains_key(&ann), "closed");
    assert_eq!(published.try_recv().unwrap().kind, Entry::Seat, "she left");
    assert_eq!(receipt(&published), (delivered, ann, "8".into()));
}

#[test]
fn what_awaits_a_receipt_is_bounded_in_number_and_in_time() {
    use super::super::receipts::{MOST_UNANSWERED_PER_ADDRESS as MOST, RECEIPT_PATIENCE};
    let (mut hub, _published, mut ann_reads) = ann_on_node_1();
    let ann = of_node(1, 1);
    hub.apply(node_joins(2));
    let sent = MOST as u64 + 1;
    for n in 1..=sent {
        hub.apply(Event::RelayedDirect {
            id: n,
            ts: 9,
            direct: direct(ann, of_node(2, n), "hi"),
        });
    }
    hub.flush();
    // One too many: the oldest is given up.
    let error = received(&mut ann_reads, 1).remove(0);
    let text = error["msg"].as_str().unwrap();
    assert!(
        text.contains(&of_node(2, 1).to_string()) && text.contains("could not be confirmed"),
        "{error}"
    );
    // The others, once they have waited long enough.
    let due = hub.receipt_due().expect("the rest await");
    hub.give_up_late_receipts(due - Duration::from_millis(1));
    assert!(hub.receipt_due().is_some(), "not yet");
    hub.give_up_late_receipts(Instant::now() + RECEIPT_PATIENCE);
    hub.flush();
    assert_eq!(hub.receipt_due(), None);
    let errors = received(&mut ann_reads, MOST);
    assert!(errors.iter().all(|e| e["type"] == "error"));
    assert!(
        errors[MOST - 1]["msg"]
            .as_str()
            .unwrap()
            .contains(&of_node(2, sent).to_string())
    );
}

#[test]
fn one_address_flooding_a_node_that_does_not_answer_gives_up_only_its_own_oldest() {
    use super::super::receipts::MOST_UNANSWERED_PER_ADDRESS;
    let (mut hub, published, mut ann_reads) = ann_on_node_1();
    let (ann, eve) = (of_node(1, 1), of_node(1, 2));
    let (eve_outbox, mut eve_reads) = client(eve.0);
    let mut from_eve = connect(eve.0, &eve_outbox);
    if let Event::Connect(Arrival { address, .. }) = &mut from_eve {
        *address = std::net::Ipv4Addr::new(127, 0, 0, 2).into();
    }
    hub.apply(from_eve);
    read_back_seats(&mut hub, &published);
    hub.apply(node_joins(2));
    hub.flush();
    received(&mut eve_reads, 1); // her welcome
    received(&mut ann_reads, 1); // Eve's join
    // Ann's one message, then Eve's flood, all for node 2, which never answers.
    let to_bob = |id| Event::RelayedDirect {
        id,
        ts: 9,
        direct: direct(ann, of_node(2, 1), "hi"),
    };
    hub.apply(to_bob(1));
    let over = 10;
    let flood = MOST_UNANSWERED_PER_ADDRESS as u64 + over;
    for n in 1..=flood {
        hub.apply(Event::RelayedDirect {
            id: 1 + n,
            ts: 9,
            direct: direct(eve, of_node(2, 100 + n), "spam"),
        });
    }
    hub.flush();
    // Eve's own oldest are given up, in their order.
    let errors = received(&mut eve_reads, over as usize);
    for (n, error) in (1..).zip(&errors) {
        let text = error["msg"].as_str().unwrap();
        assert!(
            text.contains("could not be confirmed")
                && text.contains(&of_node(2, 100 + n).to_string()),
            "{error}"
        );
    }
    // Ann's still waits: node 2's receipt, when it comes, is her copy.
    hub.apply(Event::RelayedReceipt {
        entry: 1 + flood,
        receipt: Receipt {
            of: 1,
            target: of_node(2, 1),
            sender: ann,
            delivered: true,
        },
    });
    hub.flush();
    let copy = received(&mut ann_reads, 1).remove(0);
    assert_eq!(
        (copy["type"].as_str(), copy["delivered"].as_bool()),
        (Some("direct"), Some(true)),
        "{copy}"
    );
}
