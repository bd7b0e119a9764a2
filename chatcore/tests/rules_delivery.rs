//! PROTOCOL.md §5, held messages: boxes, busy status, durability across
//! a crash, and a big box sent page by page as the client reads. Driven
//! through the harness with a clock that jumps: no sleeps, exact deadlines.

mod common;

use std::time::Duration;

use chatcore::testing::Harness;
use chatcore::Config;
use common::{harness, harness_with, secs};

// §5 Held messages --------------------------------------------------------------

#[test]
fn held_messages_arrive_at_login_oldest_first_with_their_ids_and_times() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    h.send(a, "message bob one");
    h.advance(secs(5));
    h.send(a, "broadcast all two");
    h.take(a);
    h.advance(secs(60));
    let b = h.connect_logged_in("bob", "b-pw");
    assert_eq!(
        h.take_text(b),
        [
            "OFFLINE 2",
            "MSG 1 2026-11-24T17:12:01Z alice one",
            "BCAST 2 2026-11-24T17:12:06Z alice two",
        ]
    );
}

#[test]
fn busy_holds_and_online_delivers_then_confirms_status() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(b, "idle busy");
    assert_eq!(h.take_text(b), ["OK status busy"]);
    h.send(a, "message bob one");
    h.send(a, "broadcast two");
    assert!(h.take_text(b).is_empty());
    h.send(b, "idle online");
    let lines = h.take_text(b);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], "OFFLINE 2");
    assert!(lines[1].starts_with("MSG 1 ") && lines[2].starts_with("BCAST 2 "));
    assert_eq!(lines[3], "OK status online");
    h.send(b, "idle online");
    assert_eq!(h.take_text(b), ["OK status online"]);
}

#[test]
fn busy_ends_at_logout() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(b, "idle busy");
    h.send(b, "logout");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(a, "message bob hi");
    assert_eq!(h.take_text(a), ["OK message bob delivered"]);
    assert_eq!(h.take_text(b).len(), 1);
}

#[test]
fn held_messages_and_history_survive_a_restart_and_ids_are_never_reused() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    h.send(a, "message bob before the crash");
    h.take(a);
    h.restart();
    h.advance(secs(60));
    let c = h.connect_logged_in("carol", "c-pw");
    h.send(c, "wholast 5");
    assert_eq!(h.take_replies(c), ["LAST alice"]);
    h.send(c, "message bob after the crash");
    h.take(c);
    let b = h.connect_logged_in("bob", "b-pw");
    let lines = h.take_text(b);
    assert_eq!(lines[0], "OFFLINE 2");
    assert!(lines[1].starts_with("MSG 1 ") && lines[1].ends_with("alice before the crash"));
    let second_id: u64 = lines[2].split(' ').nth(1).unwrap().parse().unwrap();
    assert!(second_id > 1, "id reused after restart: {}", lines[2]);
}

#[test]
fn the_id_counter_is_persisted_in_blocks_ahead_of_use() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    for _ in 0..3 {
        h.send(a, "message bob hi");
    }
    h.take(b);
    assert!(h.store.next_id > 3);
    let reservations = h.store.next_id;
    h.restart();
    let a = h.connect_logged_in("alice", "a-pw");
    let _b = h.connect_logged_in("bob", "b-pw");
    h.send(a, "broadcast x");
    let first = h.take_text(a)[0].clone();
    assert!(
        first.starts_with(&format!("BCAST {reservations} ")),
        "{first}"
    );
}

// Crash safety -------------------------------------------------------------------

#[test]
fn a_live_delivery_is_persisted_before_it_is_written_and_survives_a_crash() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(a, "message bob in flight");
    assert_eq!(h.take_text(a), ["OK message bob delivered"]);
    assert_eq!(h.take_text(b).len(), 1);
    assert_eq!(h.store.held["bob"].len(), 1);
    h.restart();
    let b = h.connect_logged_in("bob", "b-pw");
    let lines = h.take_text(b);
    assert_eq!(lines[0], "OFFLINE 1");
    assert!(lines[1].starts_with("MSG 1 ") && lines[1].ends_with(" alice in flight"));
    h.advance(Duration::from_millis(200));
    h.answer_probe(b);
    assert!(h.store.held.is_empty());
}

#[test]
fn without_persist_deliveries_only_held_messages_are_durable() {
    let mut h = harness_with(Config::default().with_persist_deliveries(false));
    let a = h.connect_logged_in("alice", "a-pw");
    let _b = h.connect_logged_in("bob", "b-pw");
    h.send(a, "message bob live");
    assert!(h.store.held.is_empty());
    // A message for someone offline is still committed before its `OK`.
    h.send(a, "message carol held");
    assert_eq!(
        h.take_replies(a).last().unwrap(),
        "OK message carol queued offline"
    );
    let held = &h.store.held["carol"];
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].text, "held");
}

// Held messages sent page by page -------------------------------------------------

fn paged(page: usize) -> Harness {
    let mut h = harness_with(Config::default().with_held_page_size(Some(page)));
    h.hold_writes();
    h
}

#[test]
fn a_big_box_goes_out_a_page_at_a_time_as_the_client_reads() {
    let mut h = paged(2);
    let b = h.connect_logged_in("bob", "b-pw");
    for n in 1..=5 {
        h.send(b, &format!("message alice held{n}"));
    }
    h.take(b);
    let a = h.connect_logged_in("alice", "a-pw");
    let first = h.take_text(a);
    assert_eq!(first.len(), 4, "{first:?}");
    assert_eq!(first[0], "OFFLINE 5");
    // Each page ends with a probe (§5 lets probes into the block)...
    assert!(first[3].starts_with("IDLE "), "{first:?}");
    // ...but nothing else comes between the lines of the block: a live
    // message and the reply to a command wait for it.
    h.send(b, "message alice live");
    assert_eq!(h.take_text(b), ["OK message alice delivered"]);
    h.send(a, "whoelse");
    assert!(h.take_text(a).is_empty());
    assert_eq!(h.answer_written(), Some(a));
    assert_eq!(h.take_replies(a).len(), 2);
    assert_eq!(h.answer_written(), Some(a));
    let last = h.take_replies(a);
    assert!(last[0].ends_with(" bob held5"), "{last:?}");
    assert!(last[1].ends_with(" bob live"), "{last:?}");
    assert_eq!(last[2], "WHO bob");
    assert_eq!(h.answer_written(), None);
}

#[test]
fn idle_online_replies_after_a_paged_block() {
    let mut h = paged(1);
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(a, "idle busy");
    h.send(b, "message alice one");
    h.send(b, "message alice two");
    h.take(a);
    h.send(a, "idle online");
    assert_eq!(h.take_replies(a).len(), 2);
    h.answer_written();
    let rest = h.take_replies(a);
    assert!(rest[0].ends_with(" bob two"));
    assert_eq!(rest[1], "OK status online");
}

#[test]
fn a_session_dying_mid_block_keeps_every_message_in_order() {
    let mut h = paged(2);
    let b = h.connect_logged_in("bob", "b-pw");
    for n in 1..=5 {
        h.send(b, &format!("message alice m{n}"));
    }
    let a = h.connect_logged_in("alice", "a-pw");
    h.take(a);
    h.send(b, "message alice live");
    h.close(a);
    let _ = h.answer_written(); // the page's answer comes too late
    let a = h.connect_logged_in("alice", "a-pw");
    let mut lines = h.take_replies(a);
    while h.answer_written().is_some() {
        lines.extend(h.take_replies(a));
    }
    let texts: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(lines[0], "OFFLINE 6");
    assert_eq!(texts, ["m1", "m2", "m3", "m4", "m5", "live"]);
}

#[test]
fn commands_waiting_for_a_paged_block_do_not_spin_the_timers() {
    let mut h = paged(1);
    let b = h.connect_logged_in("bob", "b-pw");
    for n in 1..=3 {
        h.send(b, &format!("message alice m{n}"));
    }
    let a = h.connect_logged_in("alice", "a-pw");
    h.send(a, "whoelse");
    // A timer pass while the command waits for the block must return.
    h.advance(Duration::from_secs(1));
    while h.answer_written().is_some() {}
    assert_eq!(h.take_replies(a).last().unwrap(), "WHO bob");
}

// Held messages read from the store page by page -------------------------------

use chatcore::StoreOp;

/// Confirming a block of held messages is one change per user however long
/// the block: the store removes everything up to the last id confirmed.
#[test]
fn confirming_a_block_releases_it_in_one_change() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    for i in 0..5 {
        h.send(a, &format!("message bob m{i}"));
    }
    h.take(a);
    let b = h.connect_logged_in("bob", "b-pw");
    assert_eq!(h.take_text(b).len(), 6, "OFFLINE 5 and five messages");
    h.take_persisted();
    h.advance(Duration::from_millis(200)); // the confirming probe
    h.answer_probe(b).expect("a probe after the deliveries");
    let releases: Vec<StoreOp> = h
        .take_persisted()
        .into_iter()
        .filter(|op| matches!(op, StoreOp::Release { .. }))
        .collect();
    assert_eq!(
        releases,
        [StoreOp::Release {
            user: "bob".into(),
            upto: 5
        }],
        "ids 1 to 5, in one change"
    );
    assert!(h.store.held.is_empty());
}

/// After a restart the core holds only a summary of each box: it reads the
/// messages from the store when they are sent, a page at a time, and what
/// the user sends meanwhile waits behind the block.
#[test]
fn a_restored_box_is_read_from_the_store_a_page_at_a_time() {
    let mut h = harness_with(Config::default().with_held_page_size(Some(2)));
    let a = h.connect_logged_in("alice", "a-pw");
    for i in 0..5 {
        h.send(a, &format!("message bob m{i}"));
    }
    h.restart();
    assert_eq!(h.server.held_count("bob"), 5);
    h.hold_loads();
    let b = h.connect_logged_in("bob", "b-pw");
    assert_eq!(h.take_text(b), ["OFFLINE 5"]);
    let asked: Vec<_> = h.pending_loads().cloned().collect();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        (asked[0].user.as_str(), asked[0].after, asked[0].max),
        ("bob", 0, 2)
    );
    h.send(b, "whoelse");
    assert!(h.take_text(b).is_empty(), "whoelse waits behind the block");
    h.answer_load();
    let page = h.take_text(b);
    assert_eq!(page.len(), 3, "{page:?}");
    assert!(page[0].ends_with(" alice m0") && page[1].ends_with(" alice m1"));
    assert!(page[2].starts_with("IDLE "), "{page:?}");
    // The next page is read once this one is written (the harness says
    // so at once), from after the last id sent.
    let asked: Vec<_> = h.pending_loads().cloned().collect();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].after, asked[0].upto - 3);
    h.answer_load();
    assert_eq!(h.take_text(b).len(), 3);
    h.answer_load();
    let last = h.take_text(b);
    assert!(last[0].ends_with(" alice m4"), "{last:?}");
    assert_eq!(last[1], "WHO");
    assert!(h.pending_loads().next().is_none());
}

/// A page that comes after its session ended is ignored, and the block's
/// unread part stays owed: the next login gets the whole box again.
#[test]
fn a_page_for_a_gone_session_is_ignored_and_the_box_stays_owed() {
    let mut h = harness_with(Config::default().with_held_page_size(Some(2)));
    let a = h.connect_logged_in("alice", "a-pw");
    for i in 0..3 {
        h.send(a, &format!("message bob m{i}"));
    }
    h.hold_loads();
    let b = h.connect_logged_in("bob", "b-pw");
    assert_eq!(h.take_text(b), ["OFFLINE 3"]);
    h.close(b);
    assert_eq!(h.server.held_count("bob"), 3);
    h.answer_load();
    assert_eq!(h.server.held_count("bob"), 3);
    let b = h.connect_logged_in("bob", "b-pw");
    assert_eq!(h.take_text(b), ["OFFLINE 3"]);
    h.answer_load();
    assert_eq!(h.take_text(b).len(), 3, "two messages and a probe");
}
