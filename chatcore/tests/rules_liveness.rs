//! PROTOCOL.md §6 and §7, how a session stays up and how it ends:
//! heartbeats, liveness, the inactivity timeout, confirmation of deliveries
//! (and redelivery of what was not confirmed), and shutdown. Driven through
//! the harness with a clock that jumps: no sleeps, exact deadlines.

mod common;

use std::time::Duration;

use chatcore::wire::ServerLine;
use chatcore::{Config, Input};
use common::{harness, harness_with, secs};

// §6 Heartbeat, liveness and confirmation ----------------------------------------

#[test]
fn probes_come_every_heartbeat_with_growing_seq() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    for seq in 1..=3 {
        h.advance(secs(30));
        assert_eq!(h.take(a), [ServerLine::Idle { seq }]);
        h.send(a, &format!("idle {seq}"));
    }
    assert!(!h.is_closed(a));
}

#[test]
fn a_silent_session_is_dead_after_heartbeat_timeout_without_bye() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.advance(secs(89));
    h.send(b, "idle");
    assert!(!h.is_closed(a));
    h.advance(secs(1));
    assert!(h.is_closed(a));
    assert!(!h.take_text(a).iter().any(|l| l.starts_with("BYE")));
    h.send(b, "whoelse");
    assert_eq!(h.take_replies(b), ["WHO"]);
}

#[test]
fn inactivity_times_out_and_heartbeat_replies_and_deliveries_do_not_count() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    // Bob keeps answering probes and keeps receiving messages, but never
    // sends a command.
    for minute in 1..=30 {
        h.advance(secs(60));
        if minute < 30 {
            h.answer_probe(a);
            h.answer_probe(b);
            h.send(a, "message bob ping");
        }
    }
    assert!(h.is_closed(b));
    assert!(h.take_text(b).contains(&"BYE timeout".to_string()));
    // Alice's last command was a minute ago.
    assert!(!h.is_closed(a));

    // idle busy / idle online count as commands.
    let mut h = harness_with(Config::default().with_heartbeat_timeout(secs(7200)));
    let c = h.connect_logged_in("carol", "c-pw");
    h.advance(secs(1000));
    h.send(c, "idle busy");
    h.advance(secs(1799));
    assert!(!h.is_closed(c));
    h.advance(secs(1));
    assert!(h.is_closed(c));
}

#[test]
fn a_probe_follows_deliveries_soon_and_its_answer_confirms_them() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(a, "message bob one");
    h.take(b);
    h.advance(Duration::from_millis(200));
    assert_eq!(h.take(b), [ServerLine::Idle { seq: 1 }]);
    h.send(b, "idle 1");
    h.close(b);
    let b = h.connect_logged_in("bob", "b-pw");
    assert!(h.take_text(b).is_empty(), "a confirmed message came again");
}

#[test]
fn unconfirmed_deliveries_come_again_after_an_abrupt_close_with_the_same_id() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(a, "message bob one");
    h.send(a, "message bob two");
    let first = h.take_text(b);
    // Answering a probe sent before the deliveries confirms nothing.
    h.send(b, "idle 0");
    h.close(b);
    h.send(a, "message bob three");
    assert_eq!(
        h.take_text(a).last().unwrap(),
        "OK message bob queued offline"
    );
    let b = h.connect_logged_in("bob", "b-pw");
    let again = h.take_text(b);
    assert_eq!(again[0], "OFFLINE 3");
    assert_eq!(again[1..3], first[..]);
    assert!(again[3].ends_with(" alice three"));
}

#[test]
fn held_messages_leave_the_store_only_once_confirmed() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    h.send(a, "message bob one");
    assert_eq!(h.store.held["bob"].len(), 1);
    let b = h.connect_logged_in("bob", "b-pw");
    assert_eq!(h.store.held["bob"].len(), 1, "released before confirmation");
    h.advance(Duration::from_millis(200));
    h.answer_probe(b);
    assert!(!h.store.held.contains_key("bob"));
}

#[test]
fn logout_confirms_what_was_delivered() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    h.send(a, "message bob one");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(b, "logout");
    assert!(h.store.held.is_empty());
    let b = h.connect_logged_in("bob", "b-pw");
    assert!(h.take_text(b).is_empty());
}

#[test]
fn dead_session_requeues_in_order_before_messages_held_later() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(a, "message bob live");
    h.send(b, "idle busy");
    h.send(a, "message bob held");
    h.advance(secs(90)); // bob never answers: dead
    assert!(h.is_closed(b));
    let b = h.connect_logged_in("bob", "b-pw");
    let lines = h.take_text(b);
    assert_eq!(lines[0], "OFFLINE 2");
    assert!(lines[1].ends_with(" live") && lines[2].ends_with(" held"));
    let stored: Vec<u64> = h.store.held["bob"].iter().map(|m| m.id).collect();
    assert_eq!(stored, [1, 2]);
}

// §7 Shutdown -------------------------------------------------------------------

#[test]
fn shutdown_says_bye_to_everyone_and_keeps_what_is_unconfirmed() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    let pending = h.connect();
    h.send(a, "message bob one");
    h.take(a);
    h.take(b);
    h.take(pending);
    h.input(Input::Shutdown);
    for s in [a, b, pending] {
        assert_eq!(h.take_text(s), ["BYE shutdown"]);
        assert!(h.is_closed(s));
    }
    assert_eq!(h.store.held["bob"].len(), 1);
    let late = h.connect();
    assert_eq!(h.take_text(late), ["HELLO CHAT/1", "BYE shutdown"]);
    assert!(h.is_closed(late));
}

#[test]
fn every_login_and_departure_is_persisted_for_wholast() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    h.advance(secs(7));
    h.send(a, "logout");
    assert_eq!(
        h.store.last_seen.get("alice"),
        Some(&(chatcore::testing::START + secs(7)))
    );
    h.restart();
    h.advance(secs(60));
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(b, "wholast 2");
    assert_eq!(h.take_replies(b), ["LAST alice"]);
    h.send(b, "wholast 0");
    assert_eq!(h.take_replies(b), ["LAST"]);
}
