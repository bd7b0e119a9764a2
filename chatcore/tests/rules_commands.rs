//! PROTOCOL.md §4, commands of a logged-in client and their replies, and
//! flood control, which delays them in order. Driven through the harness
//! with a clock that jumps: no sleeps, exact deadlines.

mod common;

use std::time::Duration;

use chatcore::wire::DecodeError;
use chatcore::{Config, Input};
use common::{harness, harness_with, secs};

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
    let mut h = harness_with(Config::default().with_max_held_per_user(1));
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
    let mut h = harness_with(Config::default().with_heartbeat_timeout(secs(3600)));
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
    let mut h = harness_with(Config::default().with_flood(Some(chatcore::FloodLimit {
        burst: 2,
        per_second: 1,
        backlog: 3,
    })));
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
    let mut h = harness_with(Config::default().with_flood(Some(chatcore::FloodLimit {
        burst: 1,
        per_second: 1,
        backlog: 10,
    })));
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
