//! Regression tests for defects found by review, by attack and by fuzzing:
//! each one failed on the core before its fix. Driven through the harness
//! with a clock that jumps.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use chatcore::testing::Harness;
use chatcore::{Config, Event, FloodLimit, Input};
use common::{harness_with, secs};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Opens a connection from `from` and sends a name and a password; the
/// check stays pending when the harness holds checks.
fn submit(h: &mut Harness, from: IpAddr, user: &str, pw: &str) -> chatcore::SessionId {
    let s = h.connect_from(from);
    h.send(s, user);
    h.send(s, pw);
    s
}

// Lockout --------------------------------------------------------------------

#[test]
fn parallel_guesses_get_at_most_block_after_minus_one_bad_credentials() {
    let mut h = harness_with(Config::default());
    h.hold_password_checks();
    let sessions: Vec<_> = (0..20)
        .map(|_| submit(&mut h, ip(9), "alice", "wrong"))
        .collect();
    while h.answer_password_check(false).is_some() {}
    let mut bad = 0;
    let mut blocked = 0;
    for s in sessions {
        let lines = h.take_text(s);
        if lines.iter().any(|l| l == "ERR bad-credentials") {
            bad += 1;
        } else {
            assert!(
                lines.iter().any(|l| l.starts_with("ERR blocked ")),
                "{lines:?}"
            );
            assert_eq!(lines.last().unwrap(), "BYE blocked", "{lines:?}");
            assert!(h.is_closed(s));
            blocked += 1;
        }
    }
    assert_eq!(
        bad, 2,
        "block_after is 3: only 2 guesses may be told bad-credentials"
    );
    assert_eq!(blocked, 18);
}

#[test]
fn a_right_password_in_flight_when_the_block_falls_is_refused_and_does_not_clear_it() {
    let mut h = harness_with(Config::default());
    h.hold_password_checks();
    let wrong: Vec<_> = (0..3)
        .map(|_| submit(&mut h, ip(9), "alice", "wrong"))
        .collect();
    let right = submit(&mut h, ip(9), "alice", "a-pw");
    // The wrong guesses are answered first and block the pair...
    for _ in &wrong {
        h.answer_password_check(false);
    }
    h.take_events();
    // ...then the right one, which was already being checked.
    h.answer_password_check(true);
    let lines = h.take_text(right);
    assert_eq!(lines[lines.len() - 2..], ["ERR blocked 60", "BYE blocked"]);
    assert!(h.is_closed(right));
    assert!(h
        .take_events()
        .iter()
        .all(|e| !matches!(e, Event::LoggedIn { .. })));
    // Still blocked, and not for longer than the block.
    h.advance(secs(30));
    let s = h.connect_from(ip(9));
    h.take(s);
    h.send(s, "alice");
    assert_eq!(h.take_text(s), ["ERR blocked 30", "BYE blocked"]);
}

#[test]
fn an_answer_for_a_blocked_pair_does_not_count_or_extend_the_block() {
    let mut h = harness_with(Config::default());
    h.hold_password_checks();
    let late: Vec<_> = (0..5)
        .map(|_| submit(&mut h, ip(9), "alice", "wrong"))
        .collect();
    for _ in 0..3 {
        h.answer_password_check(false);
    }
    h.advance(secs(59));
    // Two answers come in while blocked, a second before the block ends.
    h.answer_password_check(false);
    h.answer_password_check(false);
    assert!(h.is_closed(late[3]) && h.is_closed(late[4]));
    h.advance(secs(1));
    // The block ended on time and the count starts again from zero.
    let s = submit(&mut h, ip(9), "alice", "wrong");
    h.answer_password_check(false);
    assert_eq!(
        h.take_text(s)[2..],
        ["ASK password", "ERR bad-credentials", "ASK username"]
    );
}

// Names that are no user names ----------------------------------------------

#[test]
fn a_name_that_is_no_user_name_is_refused_alike_but_never_recorded() {
    let mut h = harness_with(Config::default());
    let junk = [
        "message bob pipelined after a wrong password",
        &"x".repeat(4000),
        "all",
        "a\tb",
    ];
    for name in junk {
        for _ in 0..3 {
            let s = h.connect_from(ip(7));
            h.take(s);
            h.send(s, name);
            assert_eq!(h.take_text(s), ["ASK password"], "{name:?}");
            h.send(s, "pw");
            assert_eq!(
                h.take_text(s),
                ["ERR bad-credentials", "ASK username"],
                "{name:?}"
            );
            h.close(s);
        }
    }
    // Nothing was recorded, persisted or blocked, and no event names them.
    let store = &h.store;
    assert!(
        store.login_failures.is_empty(),
        "{:?}",
        store.login_failures
    );
    for e in h.take_events() {
        if let Event::LoginFailed { user, .. } = &e {
            assert!(user.is_none(), "{e:?}");
        }
    }
    // A real name from the same address is still counted and blocked.
    for _ in 0..3 {
        let s = h.connect_from(ip(7));
        h.send(s, "alice");
        h.send(s, "wrong");
    }
    assert_eq!(h.store.login_failures.len(), 1);
}

#[test]
fn junk_names_still_use_up_the_connection_budget() {
    let mut h = harness_with(Config::default());
    let s = h.connect();
    h.take(s);
    for _ in 0..3 {
        h.send(s, "no such name!");
        h.send(s, "pw");
    }
    assert_eq!(h.take_text(s).last().unwrap(), "BYE login-failed");
    assert!(h.is_closed(s));
}

// Held messages over a slow link --------------------------------------------

fn paged(page: usize) -> Harness {
    let mut h = harness_with(
        Config::default()
            .with_held_page_size(Some(page))
            .with_heartbeat(secs(1))
            .with_heartbeat_timeout(secs(3)),
    );
    h.hold_writes();
    h
}

fn hold_for_alice(h: &mut Harness, n: usize) {
    let b = h.connect_logged_in("bob", "b-pw");
    for i in 1..=n {
        h.send(b, &format!("message alice m{i}"));
        // Flood control spaces the messages out.
        h.advance(secs(1));
    }
    h.send(b, "logout");
}

/// Answers the last probe among `lines`, as a client reading them would.
fn answer_last_probe(h: &mut Harness, s: chatcore::SessionId, lines: &[String]) -> bool {
    let Some(seq) = lines.iter().rev().find_map(|l| l.strip_prefix("IDLE ")) else {
        return false;
    };
    h.send(s, &format!("idle {seq}"));
    true
}

fn texts(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with("MSG "))
        .map(|l| l.rsplit(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn a_probe_follows_each_page_and_confirms_it() {
    let mut h = paged(2);
    hold_for_alice(&mut h, 5);
    let a = h.connect_logged_in("alice", "a-pw");
    let first = h.take_text(a);
    assert_eq!(first[0], "OFFLINE 5");
    assert_eq!(texts(&first), ["m1", "m2"]);
    assert!(
        first[3].starts_with("IDLE "),
        "a probe after the page: {first:?}"
    );
    let released_before = released(&h);
    assert!(answer_last_probe(&mut h, a, &first));
    assert_eq!(released(&h) - released_before, 2, "the page is confirmed");
    h.answer_written();
    let second = h.take_text(a);
    assert_eq!(texts(&second), ["m3", "m4"]);
}

fn released(h: &Harness) -> usize {
    5 - h.store.held.get("alice").map_or(0, Vec::len)
}

#[test]
fn a_slow_reader_that_answers_probes_drains_a_big_box_past_heartbeat_timeout() {
    let mut h = paged(3);
    hold_for_alice(&mut h, 30);
    let a = h.connect_logged_in("alice", "a-pw");
    let mut got = Vec::new();
    // Each page takes the client 2 s to read: longer than a heartbeat
    // period, and ten pages take far longer than heartbeat_timeout.
    loop {
        let mut lines = h.take_text(a);
        assert!(!h.is_closed(a), "dropped after {} messages", got.len());
        h.advance(secs(2));
        lines.extend(h.take_text(a));
        got.extend(texts(&lines));
        answer_last_probe(&mut h, a, &lines);
        if h.answer_written().is_none() {
            break;
        }
    }
    got.extend(texts(&h.take_text(a)));
    assert_eq!(got.len(), 30, "{got:?}");
    assert!(!h.is_closed(a));
}

#[test]
fn after_a_drop_mid_drain_only_the_unconfirmed_pages_come_back() {
    let mut h = paged(2);
    hold_for_alice(&mut h, 6);
    let a = h.connect_logged_in("alice", "a-pw");
    let first = h.take_text(a);
    assert!(answer_last_probe(&mut h, a, &first)); // m1 m2 confirmed
    h.answer_written(); // m3 m4 written, not confirmed
    h.close(a);
    let a = h.connect_logged_in("alice", "a-pw");
    let mut lines = h.take_text(a);
    while h.answer_written().is_some() {
        lines.extend(h.take_text(a));
    }
    assert_eq!(lines[0], "OFFLINE 4");
    assert_eq!(texts(&lines), ["m3", "m4", "m5", "m6"]);
}

// EOF after pipelining -------------------------------------------------------

fn flooded() -> Harness {
    harness_with(Config::default().with_flood(Some(FloodLimit {
        burst: 3,
        per_second: 2,
        backlog: 100,
    })))
}

#[test]
fn lines_sent_before_eof_are_all_handled_in_order_then_logout() {
    let mut h = flooded();
    let b = h.connect_logged_in("bob", "b-pw");
    let a = h.connect_logged_in("alice", "a-pw");
    for i in 0..20 {
        h.send(a, &format!("message bob n{i}"));
    }
    h.send(a, "logout");
    h.input(Input::InputEnded { session: a });
    assert!(!h.is_closed(a), "closed with commands still waiting");
    h.advance(secs(30));
    let replies = h.take_replies(a);
    assert_eq!(replies.len(), 21, "{replies:?}");
    assert!(replies[..20]
        .iter()
        .all(|r| r == "OK message bob delivered"));
    assert_eq!(replies[20], "BYE logout");
    assert!(h.is_closed(a));
    let got: Vec<String> = h
        .take_text(b)
        .into_iter()
        .filter(|l| l.starts_with("MSG "))
        .map(|l| l.rsplit(' ').next().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn eof_without_logout_ends_the_session_once_the_backlog_is_done() {
    let mut h = flooded();
    let a = h.connect_logged_in("alice", "a-pw");
    for _ in 0..6 {
        h.send(a, "whoelse");
    }
    h.input(Input::InputEnded { session: a });
    assert!(!h.is_closed(a));
    h.advance(secs(5));
    assert_eq!(h.take_replies(a), vec!["WHO"; 6]);
    assert!(
        h.is_closed(a),
        "the session ends and the driver is told to close"
    );
}

#[test]
fn eof_right_after_a_pipelined_login_waits_for_the_password_check() {
    let mut h = flooded();
    h.hold_password_checks();
    let a = h.connect();
    h.take(a);
    for line in ["alice", "a-pw", "message bob hi", "logout"] {
        h.send(a, line);
    }
    h.input(Input::InputEnded { session: a });
    assert!(!h.is_closed(a));
    h.answer_password_check(true);
    assert_eq!(
        h.take_replies(a),
        [
            "ASK password",
            "OK login alice",
            "OK message bob queued offline",
            "BYE logout"
        ]
    );
    assert!(h.is_closed(a));
}

// wholast after a crash ------------------------------------------------------

#[test]
fn a_user_online_at_a_crash_counts_as_seen_up_to_the_crash() {
    let mut h = harness_with(
        Config::default()
            .with_heartbeat_timeout(secs(3 * 3600))
            .with_time_out(secs(3 * 3600)),
    );
    let _a = h.connect_logged_in("alice", "a-pw");
    h.advance(secs(2 * 3600));
    h.restart();
    h.advance(secs(60));
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(b, "wholast 5");
    assert_eq!(h.take_replies(b), ["LAST alice"]);
}

// Memory per session ----------------------------------------------------------

#[test]
fn a_client_that_never_confirms_keeps_a_bounded_list_of_unconfirmed_deliveries() {
    let mut h = harness_with(Config::default().with_max_unconfirmed(50).with_flood(None));
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    for i in 0..200 {
        h.send(b, &format!("message alice n{i}"));
        // alice answers probes with a bare `idle`, as the original
        // design's client does.
        h.send(a, "idle");
    }
    h.advance(secs(1));
    // Only the newest 50 are still owed: a drop redelivers those.
    assert_eq!(h.store.held.get("alice").map_or(0, Vec::len), 50);
    h.close(a);
    let a = h.connect_logged_in("alice", "a-pw");
    let lines = h.take_text(a);
    assert_eq!(lines[0], "OFFLINE 50");
    assert!(lines[1].ends_with(" bob n150"), "{}", lines[1]);
}

// Send after close (found by fuzzing) ----------------------------------------

fn fuzz_config() -> Config {
    Config::default()
        .with_held_page_size(Some(2))
        .with_flood(Some(FloodLimit {
            burst: 3,
            per_second: 2,
            backlog: 4,
        }))
}

#[test]
fn a_logout_waiting_behind_idle_online_ends_the_session_after_its_reply() {
    let mut h = harness_with(fuzz_config());
    h.hold_password_checks();
    let s = h.connect();
    h.take(s);
    for line in [
        "bob",
        "b-pw",
        "idle busy",
        "broadcast all pipelined",
        "frobnicate",
        "idle online",
        "logout",
    ] {
        h.send(s, line);
    }
    h.answer_password_check(true);
    // A late wake-up finds tokens for both waiting commands at once. (The
    // harness panics on a line after `Close`.)
    h.jump(secs(10));
    let replies = h.take_replies(s);
    let n = replies.len();
    assert!(n >= 4, "{replies:?}");
    assert_eq!(replies[n - 4], "OFFLINE 1", "{replies:?}");
    assert!(replies[n - 3].ends_with(" bob pipelined"), "{replies:?}");
    assert_eq!(replies[n - 2..], ["OK status online", "BYE logout"]);
}

#[test]
fn the_reply_to_idle_online_comes_before_the_reply_to_a_later_command() {
    let mut h = harness_with(fuzz_config());
    let a = h.connect_logged_in("alice", "a-pw");
    let b = h.connect_logged_in("bob", "b-pw");
    h.send(b, "idle busy");
    h.send(a, "message bob one");
    h.advance(secs(5));
    h.take(b);
    // Three tokens: the whoelses run at once, the rest waits...
    for line in ["whoelse", "whoelse", "whoelse", "idle online", "whoelse"] {
        h.send(b, line);
    }
    // ...until a late wake-up finds tokens for both.
    h.jump(secs(5));
    let replies: Vec<String> = h
        .take_replies(b)
        .into_iter()
        .filter(|l| !l.starts_with("MSG "))
        .collect();
    assert_eq!(
        replies,
        [
            "WHO alice",
            "WHO alice",
            "WHO alice",
            "OFFLINE 1",
            "OK status online",
            "WHO alice"
        ]
    );
}

#[test]
fn a_client_that_never_confirms_still_gets_a_box_bigger_than_max_unconfirmed() {
    let mut h = harness_with(
        Config::default()
            .with_max_unconfirmed(5)
            .with_held_page_size(Some(2)),
    );
    hold_for_alice(&mut h, 20);
    let a = h.connect_logged_in("alice", "a-pw");
    h.send(a, "whoelse");
    let mut got = Vec::new();
    let mut replies = Vec::new();
    for _ in 0..100 {
        for line in h.take_text(a) {
            if line.starts_with("IDLE ") {
                // The original design's client: a bare `idle` to each probe.
                h.send(a, "idle");
            } else if line.starts_with("MSG ") {
                got.push(line.rsplit(' ').next().unwrap().to_string());
            } else {
                replies.push(line);
            }
        }
        h.advance(secs(1));
    }
    let want: Vec<String> = (1..=20).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    assert_eq!(replies, ["OFFLINE 20", "WHO"]);
    // Its memory stays bounded: only the newest five are still owed.
    assert_eq!(h.store.held["alice"].len(), 5);
}
