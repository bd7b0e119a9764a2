//! One test per rule of PROTOCOL.md §2–§7, driven through the harness with
//! a clock that jumps: no sleeps, exact deadlines.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chatcore::testing::{accounts, Harness};
use chatcore::wire::{DecodeError, ServerLine};
use chatcore::{Config, Input};

const USERS: &[(&str, &str)] = &[
    ("alice", "a-pw"),
    ("bob", "b-pw"),
    ("carol", "c-pw"),
    ("dave", "d-pw"),
];

fn harness() -> Harness {
    Harness::with_users(USERS)
}

fn harness_with(config: Config) -> Harness {
    Harness::new(config, accounts(USERS))
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
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
    let mut h = harness_with(Config {
        block_after: 10,
        ..Config::default()
    });
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

// §4 Commands -----------------------------------------------------------------

#[test]
fn message_delivered_queued_and_refused() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(a, "message bob hello there");
    assert_eq!(h.take_text(a), ["OK message bob delivered"]);
    assert_eq!(
        h.take_text(b),
        ["MSG 1 2026-11-24T17:12:01Z alice hello there"]
    );
    h.send(a, "message carol later");
    h.send(a, "message zed hi");
    h.send(a, "message bob");
    h.send(a, "message");
    assert_eq!(
        h.take_text(a),
        [
            "OK message carol queued offline",
            "ERR unknown-user zed",
            "ERR usage message <user> <text>",
            "ERR usage message <user> <text>",
        ]
    );
    h.send(b, "idle busy");
    h.send(a, "message bob are you there");
    assert_eq!(h.take_text(a), ["OK message bob queued busy"]);
}

#[test]
fn broadcast_forms_and_their_counts() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    let c = h.connect_logged_in("carol", "c-pw");
    h.send(c, "idle busy");
    h.take(c);

    // Online only: alice (sender) and bob get it, busy carol has it held,
    // offline dave gets nothing.
    h.send(a, "broadcast message hi all");
    let lines = h.take_text(a);
    assert!(lines[0].starts_with("BCAST 1 ") && lines[0].ends_with(" alice hi all"));
    assert_eq!(lines[1], "OK broadcast 2 1");
    assert_eq!(h.take_text(b).len(), 1);
    assert_eq!(h.server.held_count("carol"), 1);
    assert_eq!(h.server.held_count("dave"), 0);

    h.send(a, "broadcast hello");
    assert_eq!(h.take_text(a)[1], "OK broadcast 2 1");

    // All: dave's copy is held too.
    h.send(a, "broadcast all to everyone");
    assert_eq!(h.take_text(a)[1], "OK broadcast 2 2");
    assert_eq!(h.server.held_count("dave"), 1);

    // A user list: duplicates ignored, offline held, sender only if listed.
    h.send(a, "broadcast user bob dave bob message psst");
    assert_eq!(h.take_text(a), ["OK broadcast 1 1"]);
    let to_bob = h.take_text(b);
    assert_eq!(to_bob.len(), 3);
    assert!(to_bob[2].ends_with(" alice psst"));
}

#[test]
fn broadcast_to_a_list_with_an_unknown_user_is_refused_whole() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(a, "broadcast user bob zed message hi");
    assert_eq!(h.take_text(a), ["ERR unknown-user zed"]);
    assert!(h.take_text(b).is_empty());
    assert_eq!(h.server.held_count("dave"), 0);
    h.send(a, "broadcast user bob hi");
    assert_eq!(
        h.take_text(a),
        ["ERR usage broadcast [message|all|user <u1> [<u2> ...] message] <text>"]
    );
}

#[test]
fn broadcast_names_full_boxes_and_skips_them() {
    let mut h = harness_with(Config {
        max_held_per_user: 1,
        ..Config::default()
    });
    let a = h.connect_logged_in("alice", "a-pw");
    h.send(a, "message dave first");
    h.send(a, "broadcast all second");
    let lines = h.take_text(a);
    assert_eq!(lines[0], "OK message dave queued offline");
    assert_eq!(lines[2], "OK broadcast 1 2 full dave");
    h.send(a, "message dave third");
    assert_eq!(h.take_text(a), ["ERR queue-full dave"]);
}

#[test]
fn whoelse_is_sorted_and_excludes_the_asker() {
    let mut h = harness();
    let c = h.connect_logged_in("carol", "c-pw");
    h.send(c, "whoelse");
    assert_eq!(h.take_text(c), ["WHO"]);
    let _a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(b, "idle busy");
    h.send(c, "WhoElse");
    assert_eq!(h.take_text(c), ["WHO alice bob"]);
}

#[test]
fn wholast_covers_the_window_and_checks_its_argument() {
    let mut h = harness_with(Config {
        heartbeat_timeout: secs(3600),
        ..Config::default()
    });
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(b, "logout");
    h.advance(secs(10 * 60));
    let _c = h.connect_logged_in("carol", "c-pw");
    h.send(a, "wholast 5");
    h.send(a, "wholast 10");
    h.send(a, "wholast 0");
    assert_eq!(
        h.take_replies(a),
        ["LAST carol", "LAST bob carol", "LAST carol"]
    );
    for bad in [
        "wholast 60",
        "wholast",
        "wholast x",
        "wholast 32 idle",
        "wholast -1",
    ] {
        h.send(a, bad);
        assert_eq!(h.take_replies(a), ["ERR usage wholast <0-59>"], "{bad}");
    }
    // dave never logged in: never listed.
    h.send(a, "wholast 59idle");
    assert_eq!(h.take_replies(a), ["LAST bob carol"]);
}

#[test]
fn unknown_commands_blank_lines_and_case() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    h.send(a, "dance now");
    h.send(a, "");
    h.send(a, "   ");
    h.send(a, "WHOELSE");
    assert_eq!(h.take_text(a), ["ERR unknown-command dance", "WHO"]);
}

#[test]
fn glued_idle_tokens_are_stripped_and_free_text_is_not() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    for line in ["idlewhoelse", "whoelseidle", "idleidlewhoelse"] {
        h.send(a, line);
        assert_eq!(h.take_text(a), ["WHO bob"], "{line}");
    }
    h.send(a, "idleidle");
    assert!(h.take_text(a).is_empty());
    h.send(a, "idlemessage bob I am idle");
    assert_eq!(h.take_text(a), ["OK message bob delivered"]);
    assert!(h.take_text(b)[0].ends_with(" alice I am idle"));
    h.send(a, "logoutidle");
    assert_eq!(h.take_text(a), ["BYE logout"]);
}

#[test]
fn logout_says_bye_and_closes() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    h.send(a, "logout");
    assert_eq!(h.take_text(a), ["BYE logout"]);
    assert!(h.is_closed(a));
    assert_eq!(h.server.online_users().count(), 0);
}

#[test]
fn malformed_lines_get_one_error_and_the_session_goes_on() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    h.input(Input::Malformed {
        session: a,
        error: DecodeError::LineTooLong { max: 4096 },
    });
    h.input(Input::Malformed {
        session: a,
        error: DecodeError::BadEncoding,
    });
    h.send(a, "whoelse");
    assert_eq!(
        h.take_text(a),
        ["ERR line-too-long 4096", "ERR bad-encoding", "WHO"]
    );
}

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
    let mut h = harness_with(Config {
        heartbeat_timeout: secs(7200),
        ..Config::default()
    });
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

#[test]
fn failures_are_forgotten_after_failure_memory() {
    let mut h = harness_with(Config {
        failure_memory: secs(3600),
        ..Config::default()
    });
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
    let mut h = harness_with(Config {
        max_failure_records: 8,
        max_login_attempts: 1000,
        ..Config::default()
    });
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

// Flood control ------------------------------------------------------------------

#[test]
fn commands_over_the_rate_are_delayed_in_order_not_dropped() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    for n in 0..12 {
        h.send(a, &format!("message bob n{n}"));
    }
    // The burst (10) is answered at once; two wait for the rate (5/s).
    assert_eq!(h.take_replies(a).len(), 10);
    let mut to_bob = h.take_replies(b);
    h.send(b, "whoelse");
    assert_eq!(
        h.take_replies(b).last().unwrap(),
        "WHO alice",
        "bob is not slowed"
    );
    h.advance(Duration::from_millis(199));
    assert!(h.take_replies(a).is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.take_replies(a), ["OK message bob delivered"]);
    h.advance(Duration::from_millis(200));
    assert_eq!(h.take_replies(a), ["OK message bob delivered"]);
    to_bob.extend(h.take_replies(b));
    let texts: Vec<String> = to_bob
        .iter()
        .filter_map(|l| l.rsplit(' ').next().map(str::to_string))
        .collect();
    let expected: Vec<String> = (0..12).map(|n| format!("n{n}")).collect();
    assert_eq!(texts, expected);
}

#[test]
fn past_the_backlog_each_command_is_refused_with_rate_limited() {
    let mut h = harness_with(Config {
        flood: Some(chatcore::FloodLimit {
            burst: 2,
            per_second: 1,
            backlog: 3,
        }),
        ..Config::default()
    });
    let a = h.connect_logged_in("alice", "a-pw");
    for _ in 0..7 {
        h.send(a, "whoelse");
    }
    assert_eq!(
        h.take_replies(a),
        [
            "WHO",
            "WHO",
            "ERR rate-limited too many commands: slow down",
            "ERR rate-limited too many commands: slow down"
        ]
    );
    // Heartbeat replies skip the queue: a probe answered while commands wait
    // still confirms, and the delayed commands still run.
    h.advance(Duration::from_secs(3));
    assert_eq!(h.take_replies(a), ["WHO", "WHO", "WHO"]);
}

#[test]
fn heartbeat_replies_are_exempt_from_flood_control() {
    let mut h = harness_with(Config {
        flood: Some(chatcore::FloodLimit {
            burst: 1,
            per_second: 1,
            backlog: 10,
        }),
        ..Config::default()
    });
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(b, "message alice one");
    h.advance(Duration::from_millis(200));
    h.send(a, "whoelse");
    h.send(a, "whoelse");
    // The probe answer is taken at once although a command is waiting.
    h.answer_probe(a);
    h.close(a);
    let a = h.connect_logged_in("alice", "a-pw");
    assert!(
        h.take_text(a).is_empty(),
        "the confirmed message came again"
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
    let mut h = harness_with(Config {
        persist_deliveries: false,
        ..Config::default()
    });
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
    let mut h = harness_with(Config {
        held_page_size: Some(page),
        ..Config::default()
    });
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
