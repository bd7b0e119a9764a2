//! PROTOCOL.md §3, login: prompts, the per-connection attempt budget,
//! lockout per (user name, address) and how long failures are remembered.
//! Driven through the harness with a clock that jumps: no sleeps, exact
//! deadlines.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chatcore::testing::Harness;
use chatcore::wire::DecodeError;
use chatcore::{Config, Input};
use common::{harness, harness_with, secs};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Tries a login on an open connection; returns the lines it got.
fn attempt(h: &mut Harness, s: chatcore::SessionId, user: &str, pw: &str) -> Vec<String> {
    h.send(s, user);
    if !h.is_closed(s) {
        h.send(s, pw);
    }
    h.take_text(s)
}

// §3 Login ------------------------------------------------------------------

#[test]
fn greeting_then_login_without_offline_zero() {
    let mut h = harness();
    let s = h.connect();
    assert_eq!(h.take_text(s), ["HELLO CHAT/1", "ASK username"]);
    assert_eq!(
        attempt(&mut h, s, "alice", "a-pw"),
        ["ASK password", "OK login alice"]
    );
}

#[test]
fn unknown_user_and_wrong_password_get_the_same_answer() {
    let mut h = harness();
    let s = h.connect();
    h.take(s);
    let wrong = attempt(&mut h, s, "alice", "nope");
    let unknown = attempt(&mut h, s, "zed", "nope");
    assert_eq!(
        wrong,
        ["ASK password", "ERR bad-credentials", "ASK username"]
    );
    assert_eq!(unknown, wrong);
}

#[test]
fn three_bad_attempts_block_the_pair_across_connections() {
    let mut h = harness();
    let first = h.connect();
    h.take(first);
    attempt(&mut h, first, "alice", "x");
    attempt(&mut h, first, "alice", "y");
    // The attempt that causes the block is answered `blocked`, not
    // `bad-credentials`, and the connection ends.
    assert_eq!(
        attempt(&mut h, first, "alice", "z"),
        ["ASK password", "ERR blocked 60", "BYE blocked"]
    );
    assert!(h.is_closed(first));

    // Even the right password is refused, without being checked.
    h.advance(secs(20));
    let again = h.connect();
    h.take(again);
    assert_eq!(
        attempt(&mut h, again, "alice", "a-pw"),
        ["ERR blocked 40", "BYE blocked"]
    );

    // Another address, and another name from the same address, are free.
    let elsewhere = h.connect_from(ip(2));
    h.take(elsewhere);
    assert_eq!(
        attempt(&mut h, elsewhere, "alice", "a-pw")[1],
        "OK login alice"
    );
    let other_name = h.connect();
    h.take(other_name);
    assert_eq!(
        attempt(&mut h, other_name, "bob", "b-pw")[1],
        "OK login bob"
    );
}

#[test]
fn a_refused_attempt_does_not_extend_the_block_and_the_block_ends() {
    let mut h = harness();
    let s = h.connect();
    for pw in ["1", "2", "3"] {
        attempt(&mut h, s, "carol", pw);
    }
    h.advance(secs(59));
    let s = h.connect();
    h.take(s);
    assert_eq!(attempt(&mut h, s, "carol", "c-pw")[0], "ERR blocked 1");
    h.advance(secs(1));
    let s = h.connect();
    h.take(s);
    assert_eq!(attempt(&mut h, s, "carol", "c-pw")[1], "OK login carol");
}

#[test]
fn unknown_names_are_blocked_like_real_ones() {
    let mut h = harness();
    let s = h.connect();
    for pw in ["1", "2"] {
        attempt(&mut h, s, "ghost", pw);
    }
    assert_eq!(attempt(&mut h, s, "ghost", "3")[1], "ERR blocked 60");
}

#[test]
fn success_clears_the_count() {
    let mut h = harness();
    let s = h.connect();
    h.take(s);
    attempt(&mut h, s, "bob", "x");
    attempt(&mut h, s, "bob", "y");
    assert_eq!(attempt(&mut h, s, "bob", "b-pw")[1], "OK login bob");
    h.send(s, "logout");
    let s = h.connect();
    h.take(s);
    attempt(&mut h, s, "bob", "x");
    attempt(&mut h, s, "bob", "y");
    // Two fresh failures, not five: still only bad-credentials.
    let s2 = h.connect();
    h.take(s2);
    assert_eq!(attempt(&mut h, s2, "bob", "b-pw")[1], "OK login bob");
}

#[test]
fn already_online_refuses_the_newcomer_and_leaves_the_first_alone() {
    let mut h = harness();
    let first = h.connect_logged_in("alice", "a-pw");
    let second = h.connect();
    h.take(second);
    assert_eq!(
        attempt(&mut h, second, "alice", "a-pw"),
        ["ASK password", "ERR already-online", "ASK username"]
    );
    assert!(!h.is_closed(first));
    h.send(first, "whoelse");
    assert_eq!(h.take_text(first), ["WHO"]);
}

#[test]
fn already_online_counts_toward_the_connection_budget_but_not_a_block() {
    let mut h = harness();
    let _first = h.connect_logged_in("alice", "a-pw");
    let s = h.connect();
    h.take(s);
    attempt(&mut h, s, "alice", "a-pw");
    attempt(&mut h, s, "alice", "a-pw");
    assert_eq!(
        attempt(&mut h, s, "alice", "a-pw"),
        ["ASK password", "ERR already-online", "BYE login-failed"]
    );
    assert!(h.is_closed(s));
    assert!(h.store.login_failures.is_empty());
}

#[test]
fn the_connection_budget_ends_in_login_failed() {
    let mut h = harness_with(Config::default().with_block_after(10));
    let s = h.connect();
    h.take(s);
    attempt(&mut h, s, "alice", "1");
    attempt(&mut h, s, "bob", "2");
    assert_eq!(
        attempt(&mut h, s, "carol", "3"),
        ["ASK password", "ERR bad-credentials", "BYE login-failed"]
    );
    assert!(h.is_closed(s));
}

#[test]
fn login_timeout_closes_a_connection_that_never_logs_in() {
    let mut h = harness();
    let s = h.connect();
    h.take(s);
    h.send(s, "alice");
    h.advance(secs(59));
    assert!(!h.is_closed(s));
    h.advance(secs(1));
    assert_eq!(h.take_text(s), ["ASK password", "BYE login-timeout"]);
    assert!(h.is_closed(s));
}

#[test]
fn lines_sent_ahead_of_a_slow_password_check_are_answered_in_order() {
    let mut h = harness();
    let _bob = h.connect_logged_in("bob", "b-pw");
    h.hold_password_checks();
    let s = h.connect();
    h.take(s);
    for line in ["alice", "a-pw", "whoelse", "message bob hi"] {
        h.send(s, line);
    }
    assert_eq!(h.take_text(s), ["ASK password"]);
    assert_eq!(h.answer_password_check(true), Some(s));
    assert_eq!(
        h.take_text(s),
        ["OK login alice", "WHO bob", "OK message bob delivered"]
    );
}

#[test]
fn a_late_check_answer_after_the_login_timeout_is_ignored() {
    let mut h = harness();
    h.hold_password_checks();
    let s = h.connect();
    h.send(s, "alice");
    h.send(s, "a-pw");
    h.advance(secs(60));
    assert!(h.is_closed(s));
    assert_eq!(h.answer_password_check(true), Some(s));
    assert_eq!(h.server.online_users().count(), 0);
}

#[test]
fn bad_lines_during_login_are_answered_and_asked_again() {
    let mut h = harness();
    let s = h.connect();
    h.take(s);
    h.input(Input::Malformed {
        session: s,
        error: DecodeError::BadEncoding,
    });
    h.send(s, "");
    assert_eq!(
        h.take_text(s),
        ["ERR bad-encoding", "ASK username", "ASK username"]
    );
}

#[test]
fn failures_are_forgotten_after_failure_memory() {
    let mut h = harness_with(Config::default().with_failure_memory(secs(3600)));
    let s = h.connect();
    attempt(&mut h, s, "alice", "1");
    attempt(&mut h, s, "alice", "2");
    h.advance(secs(3600));
    let s = h.connect();
    h.take(s);
    // The two old failures are forgotten: this one is the first of a new run.
    assert_eq!(attempt(&mut h, s, "alice", "3")[1], "ERR bad-credentials");
}

#[test]
fn failure_records_stay_bounded_but_blocks_are_kept() {
    let mut h = harness_with(
        Config::default()
            .with_max_failure_records(8)
            .with_max_login_attempts(1000),
    );
    let s = h.connect();
    for pw in ["1", "2", "3"] {
        attempt(&mut h, s, "alice", pw);
    }
    let s = h.connect();
    for n in 0..100 {
        attempt(&mut h, s, &format!("name{n}"), "x");
        h.advance(Duration::from_millis(100));
    }
    assert!(
        h.store.login_failures.len() <= 8,
        "{}",
        h.store.login_failures.len()
    );
    let s = h.connect();
    h.take(s);
    assert_eq!(
        attempt(&mut h, s, "alice", "a-pw"),
        ["ERR blocked 50", "BYE blocked"]
    );
}
