//! PROTOCOL.md §6 (heartbeat and liveness): IDLE probes, dead sessions,
//! the inactivity time-out, and the at-least-once delivery guarantee.

mod common;

use std::time::{Duration, Instant};

use common::*;

const USERS: &[(&str, &str)] = &[("alice", "pw-a"), ("bob", "pw-b"), ("carol", "pw-c")];

fn pw(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).unwrap().1
}

/// Polls `observer`'s `whoelse` until `user` is no longer listed.
fn wait_offline(observer: &mut Client, user: &str) {
    poll_until(
        &format!("{user} to go offline"),
        Duration::from_secs(10),
        || (!observer.whoelse().iter().any(|u| u == user)).then_some(()),
    );
}

#[test]
fn probes_arrive_with_growing_sequence_numbers() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["heartbeat = 0.1"],
        ..Opts::default()
    });
    let mut alice = server.login("alice", pw("alice"));
    alice.set_auto_idle(false);
    let mut seqs = Vec::new();
    while seqs.len() < 4 {
        let line = alice.line();
        let seq = probe_seq(&line).unwrap_or_else(|| panic!("expected IDLE <seq>, got {line:?}"));
        alice.send(&format!("idle {seq}"));
        seqs.push(seq);
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "seq must grow by one: {seqs:?}"
    );
    // Answers to probes get no reply.
    alice.barrier();
}

#[test]
fn a_silent_session_is_dropped_after_heartbeat_timeout() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["heartbeat = 0.2", "heartbeat_timeout = 1", "time_out = 60"],
        ..Opts::default()
    });
    let mut alice = server.login("alice", pw("alice"));
    let mut silent = server.login("bob", pw("bob"));
    silent.set_idle_mode(IdleMode::Ignore);
    let start = Instant::now();
    wait_offline(&mut alice, "bob");
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "dropped too early: {:?}",
        start.elapsed()
    );
    // Closed without BYE: only probes may have come before the close.
    silent.expect_closed();
    assert!(
        !silent.seen().iter().any(|l| l.starts_with("BYE")),
        "a dead peer gets no BYE: {:?}",
        silent.seen()
    );
    // bob is offline now: messages for him are held, and he was seen recently.
    alice.send("message bob are you dead?");
    alice.expect("OK message bob queued offline");
    alice.send("wholast 1");
    alice.expect("LAST bob");
}

#[test]
fn answering_probes_keeps_a_session_alive() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &[
            "heartbeat = 0.1",
            "heartbeat_timeout = 0.6",
            "time_out = 60",
        ],
        ..Opts::default()
    });
    let mut bob = server.login("bob", pw("bob"));
    bob.set_auto_idle(false);
    // Answer probes, and send nothing else, for well over heartbeat_timeout.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        let line = bob.line();
        let seq = probe_seq(&line).unwrap_or_else(|| panic!("expected IDLE, got {line:?}"));
        bob.send(&format!("idle {seq}"));
    }
    let mut alice = server.login("alice", pw("alice"));
    assert_eq!(alice.whoelse(), ["bob"]);
    bob.set_auto_idle(true);
    assert_eq!(bob.barrier(), ["alice"]);
}

#[test]
fn a_bare_idle_counts_as_a_sign_of_life() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &[
            "heartbeat = 0.1",
            "heartbeat_timeout = 0.6",
            "time_out = 60",
        ],
        ..Opts::default()
    });
    let mut bob = server.login("bob", pw("bob"));
    bob.set_auto_idle(false);
    // Answer each probe with a bare `idle`, never with its sequence number.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        let line = bob.line();
        assert!(probe_seq(&line).is_some(), "expected IDLE, got {line:?}");
        bob.send("idle");
    }
    let mut alice = server.login("alice", pw("alice"));
    assert_eq!(alice.whoelse(), ["bob"]);
}

#[test]
fn inactivity_time_out_ignores_heartbeat_replies() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["heartbeat = 0.1", "heartbeat_timeout = 30", "time_out = 1"],
        ..Opts::default()
    });
    let mut alice = server.login("alice", pw("alice"));
    let last_command = Instant::now();
    // alice answers every probe (auto-idle) but sends no command.
    alice.expect("BYE timeout");
    let waited = last_command.elapsed();
    alice.expect_closed();
    assert!(
        waited >= Duration::from_millis(800),
        "timed out after only {waited:?}"
    );
    assert!(
        !alice.answered_probes().is_empty(),
        "no probes were answered: the test proves nothing"
    );
}

#[test]
fn received_messages_do_not_count_as_activity_but_idle_busy_does() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &[
            "heartbeat = 0.2",
            "heartbeat_timeout = 30",
            "time_out = 1.5",
        ],
        ..Opts::default()
    });
    let mut bob = server.login("bob", pw("bob"));
    let bob_since = Instant::now();
    let mut carol = server.login("carol", pw("carol"));
    let mut alice = server.login("alice", pw("alice"));
    // carol keeps herself active with idle busy / idle online; bob only
    // receives messages from alice. The loop runs past twice carol's
    // time_out, so only her idle busy/online can keep her in.
    let mut bob_bye = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3500) {
        alice.send("message bob ping");
        let reply = alice.line();
        carol.send("idle busy");
        carol.expect("OK status busy");
        carol.send("idle online");
        carol.expect("OK status online");
        if bob_bye.is_some() {
            assert_eq!(reply, "OK message bob queued offline");
        } else if reply == "OK message bob delivered" {
            match bob.recv(Duration::from_secs(5)) {
                Recv::Line(l) if l == "BYE timeout" => bob_bye = Some(bob_since.elapsed()),
                Recv::Line(l) => assert!(l.starts_with("MSG "), "{l:?}"),
                other => panic!("bob: {other:?}"),
            }
        } else {
            // bob is gone already; his BYE is waiting to be read.
            assert_eq!(reply, "OK message bob queued offline");
            loop {
                let l = bob.line();
                if l == "BYE timeout" {
                    bob_bye = Some(bob_since.elapsed());
                    break;
                }
                assert!(l.starts_with("MSG "), "{l:?}");
            }
        }
    }
    let waited = bob_bye.expect("bob never timed out although he only received messages");
    // A lower bound holds on a loaded machine too (load only delays the
    // timeout); the 300 ms margin covers bob_since being read after the
    // server logged him in.
    assert!(
        waited >= Duration::from_millis(1200),
        "bob timed out after {waited:?}"
    );
    bob.expect_closed();
    // carol's idle busy/online kept her in.
    assert!(carol.whoelse().contains(&"alice".to_owned()));
}

#[test]
fn an_unconfirmed_delivery_is_redelivered_after_an_abrupt_close() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["heartbeat = 60"],
        ..Opts::default()
    });
    let mut alice = server.login("alice", pw("alice"));
    let mut bob = server.login("bob", pw("bob"));
    bob.set_idle_mode(IdleMode::Ignore);
    alice.send("message bob do you read me?");
    alice.expect("OK message bob delivered");
    let first = bob.expect_delivery();
    // bob dies without answering the probe.
    bob.abort();
    wait_offline(&mut alice, "bob");
    let mut bob = server.client();
    let held = bob.login("bob", pw("bob"));
    assert_eq!(held, vec![first], "same id, timestamp and text");
}

#[test]
fn an_unconfirmed_delivery_survives_eof_without_logout() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["heartbeat = 60"],
        ..Opts::default()
    });
    let mut alice = server.login("alice", pw("alice"));
    let mut bob = server.login("bob", pw("bob"));
    bob.set_idle_mode(IdleMode::Ignore);
    alice.send("broadcast message one");
    alice.expect_delivery();
    alice.expect("OK broadcast 2 0");
    alice.send("message bob two");
    alice.expect("OK message bob delivered");
    let d1 = bob.expect_delivery();
    let d2 = bob.expect_delivery();
    bob.close();
    wait_offline(&mut alice, "bob");
    let mut bob = server.client();
    assert_eq!(
        bob.login("bob", pw("bob")),
        vec![d1, d2],
        "in order, at least once"
    );
}

#[test]
fn a_delivery_confirmed_by_a_later_probe_is_not_redelivered() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["heartbeat = 60"],
        ..Opts::default()
    });
    let mut alice = server.login("alice", pw("alice"));
    let mut bob = server.login("bob", pw("bob"));
    bob.set_auto_idle(false);
    alice.send("message bob confirm me");
    alice.expect("OK message bob delivered");
    let d = bob.expect_delivery();
    assert_eq!(d.text, "confirm me");
    // A probe follows soon ("within a second") after a delivery, not only
    // on the heartbeat (60 s here); 2 s leaves room for a loaded machine.
    let probe = bob.line_within(Duration::from_secs(2));
    let seq = probe_seq(&probe)
        .unwrap_or_else(|| panic!("expected an IDLE probe after the delivery, got {probe:?}"));
    bob.send(&format!("idle {seq}"));
    bob.barrier();
    bob.abort();
    wait_offline(&mut alice, "bob");
    let mut bob = server.client();
    assert!(
        bob.login("bob", pw("bob")).is_empty(),
        "confirmed message redelivered"
    );
}

#[test]
fn logout_confirms_deliveries() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["heartbeat = 60"],
        ..Opts::default()
    });
    let mut alice = server.login("alice", pw("alice"));
    let mut bob = server.login("bob", pw("bob"));
    bob.set_idle_mode(IdleMode::Ignore);
    alice.send("message bob bye soon");
    alice.expect("OK message bob delivered");
    bob.expect_delivery();
    bob.logout();
    let mut bob = server.client();
    assert!(bob.login("bob", pw("bob")).is_empty());
}

#[test]
fn held_messages_shown_at_login_but_unconfirmed_come_again() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["heartbeat = 60"],
        ..Opts::default()
    });
    let mut alice = server.login("alice", pw("alice"));
    alice.send("message carol one");
    alice.expect("OK message carol queued offline");
    alice.send("message carol two");
    alice.expect("OK message carol queued offline");
    let mut carol = server.client();
    carol.set_idle_mode(IdleMode::Ignore);
    let first = carol.login("carol", pw("carol"));
    assert_eq!(first.len(), 2);
    carol.abort();
    wait_offline(&mut alice, "carol");
    let mut carol = server.client();
    assert_eq!(carol.login("carol", pw("carol")), first);
}
