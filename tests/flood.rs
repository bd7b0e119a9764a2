//! Hardening: flood control (PROTOCOL.md §8 `rate-limited`, §9
//! `flood_burst`, `flood_per_second`). A session over the rate has its
//! commands delayed, in order, none dropped, while its backlog is under
//! `flood_backlog`; past it each refused command gets `ERR rate-limited`.
//! Heartbeat replies are exempt, and one flooder only delays itself.

mod common;

use std::time::{Duration, Instant};

use common::*;

const USERS: &[(&str, &str)] = &[("fred", "pw-f"), ("bob", "pw-b"), ("olive", "pw-o")];

const BURST: usize = 10;
const PER_SECOND: usize = 10;
const BACKLOG: usize = 20;

/// The `i`-th command of the flood and the reply it must get: every third
/// one a real message (so deliveries are checked too), the others unknown
/// commands whose reply names them (so order is visible).
fn flood_command(i: usize) -> (String, String) {
    if i % 3 == 0 {
        (
            format!("message bob m{i}"),
            "OK message bob delivered".into(),
        )
    } else {
        (format!("zz{i}"), format!("ERR unknown-command zz{i}"))
    }
}

#[test]
fn a_flood_is_delayed_in_order_then_refused_and_others_stay_fast() {
    let burst = format!("flood_burst = {BURST}");
    let rate = format!("flood_per_second = {PER_SECOND}");
    let backlog = format!("flood_backlog = {BACKLOG}");
    let server = TestServer::with(
        USERS,
        &[
            &burst,
            &rate,
            &backlog,
            "heartbeat = 0.2",
            "heartbeat_timeout = 5",
        ],
    );
    let mut bob = server.login("bob", "pw-b");
    let mut olive = server.login("olive", "pw-o");
    // fred's login barrier takes one token, which may or may not have come
    // back by the time the flood arrives.
    let mut fred = server.login("fred", "pw-f");

    // Far over the burst, in one write; then heartbeat replies, which must
    // neither be refused nor answered although the backlog is full.
    const N: usize = BURST + BACKLOG + 15;
    let mut bytes = String::new();
    for i in 0..N {
        bytes.push_str(&flood_command(i).0);
        bytes.push('\n');
    }
    for _ in 0..5 {
        bytes.push_str("idle\n");
    }
    let t0 = Instant::now();
    fred.send_raw(bytes.as_bytes());

    // Meanwhile olive's round trips go on: they must all be answered before
    // fred's backlog has drained (checked below), which takes seconds at
    // the flood rate, however loaded the machine.
    let mut olive_done = t0;
    for _ in 0..5 {
        assert_eq!(olive.barrier(), ["bob", "fred"]);
        olive_done = Instant::now();
    }

    // fred: one reply per command, the admitted ones in order.
    let mut answered = Vec::new();
    let mut refused = 0;
    let mut last_answer = t0;
    while answered.len() + refused < N {
        let line = fred.line();
        if line.starts_with("ERR rate-limited") {
            refused += 1;
        } else {
            answered.push(line);
            last_answer = Instant::now();
        }
    }
    let k = answered.len();
    for (i, got) in answered.iter().enumerate() {
        assert_eq!(*got, flood_command(i).1, "reply {i}: out of order or wrong");
    }
    // None dropped while the backlog was under its bound; refused past it
    // (a token or two may come back while the lines arrive).
    assert!(
        (BURST + BACKLOG - 1..=BURST + BACKLOG + 2).contains(&k),
        "{k} of {N} commands admitted with burst {BURST} and backlog {BACKLOG}"
    );
    assert_eq!(refused, N - k);
    // The backlog was delayed to the rate, not run at once: the last of 20
    // delayed commands at 10/s comes about 2 s after the flood.
    let drain = last_answer - t0;
    assert!(
        drain >= Duration::from_millis(1500),
        "{} delayed commands answered within {drain:?}: not rate limited",
        k - BURST
    );
    assert!(
        olive_done < last_answer,
        "olive's round trips should have finished while fred's backlog drained"
    );
    // Heartbeat replies got nothing, and probes were answered meanwhile.
    assert_eq!(fred.barrier(), ["bob", "olive"]);
    assert!(
        !fred.answered_probes().is_empty(),
        "no probe came during the flood: the exemption was not exercised"
    );

    // bob got exactly the admitted messages, in order.
    let mut got = Vec::new();
    bob.send("whoelse");
    loop {
        let line = bob.line();
        if line.starts_with("WHO") {
            break;
        }
        let d = Delivery::parse(&line).unwrap_or_else(|| panic!("bob: {line:?}"));
        got.push(d.text);
    }
    let want: Vec<String> = (0..k)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_flooder_recovers_once_it_slows_down() {
    let server = TestServer::with(
        USERS,
        &[
            "flood_burst = 5",
            "flood_per_second = 20",
            "flood_backlog = 5",
        ],
    );
    let mut fred = server.login("fred", "pw-f");
    let _bob = server.login("bob", "pw-b");
    // 5 at once, 5 delayed, 10 refused.
    let mut bytes = String::new();
    for i in 0..20 {
        bytes.push_str(&format!("zz{i}\n"));
    }
    fred.send_raw(bytes.as_bytes());
    let mut answered = Vec::new();
    let mut refused = 0;
    while answered.len() + refused < 20 {
        let line = fred.line();
        if line.starts_with("ERR rate-limited") {
            refused += 1;
        } else {
            answered.push(line);
        }
    }
    assert!(refused >= 8, "only {refused} refused: {answered:?}");
    for (i, got) in answered.iter().enumerate() {
        assert_eq!(*got, format!("ERR unknown-command zz{i}"));
    }
    // At a pace under the rate every command is served, none refused.
    for i in 0..15 {
        let t = Instant::now();
        fred.send(&format!("message bob paced {i}"));
        fred.expect("OK message bob delivered");
        // Pace to 10/s (half the rate): waiting on the reply, then the rest
        // of the 100 ms, is the client's own pacing, not a synchronisation.
        if let Some(left) = Duration::from_millis(100).checked_sub(t.elapsed()) {
            std::thread::sleep(left);
        }
    }
    assert_eq!(fred.barrier(), ["bob"]);
}

#[test]
fn a_pipelined_script_that_closes_its_sending_half_gets_every_line_handled() {
    // `printf 'alice\npw\nmessage bob ...\n...logout\n' | nc host port`:
    // nc closes its sending half at the end of its input, long before flood
    // control has let every command through.
    let server = TestServer::with(
        &[("alice", "pw-a"), ("bob", "pw-b")],
        &["flood_burst = 3", "flood_per_second = 20"],
    );
    let mut bob = server.login("bob", "pw-b");
    let mut script = String::from("alice\npw-a\n");
    for i in 0..60 {
        script.push_str(&format!("message bob n{i}\n"));
    }
    script.push_str("logout\n");
    let mut nc = server.client();
    nc.send_raw(script.as_bytes());
    nc.stream().shutdown(std::net::Shutdown::Write).unwrap();
    nc.expect("HELLO CHAT/1");
    nc.expect("ASK username");
    nc.expect("ASK password");
    nc.expect("OK login alice");
    for _ in 0..60 {
        nc.expect("OK message bob delivered");
    }
    nc.expect("BYE logout");
    nc.expect_closed();
    let got: Vec<String> = (0..60).map(|_| bob.expect_delivery().text).collect();
    let want: Vec<String> = (0..60).map(|i| format!("n{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn a_script_without_logout_gets_every_line_handled_then_the_connection_closes() {
    let server = TestServer::with(
        &[("alice", "pw-a"), ("bob", "pw-b")],
        &["flood_burst = 3", "flood_per_second = 20"],
    );
    let mut script = String::from("alice\npw-a\n");
    for _ in 0..20 {
        script.push_str("whoelse\n");
    }
    let mut nc = server.client();
    nc.send_raw(script.as_bytes());
    nc.stream().shutdown(std::net::Shutdown::Write).unwrap();
    nc.expect("HELLO CHAT/1");
    nc.expect("ASK username");
    nc.expect("ASK password");
    nc.expect("OK login alice");
    for _ in 0..20 {
        nc.expect("WHO");
    }
    nc.expect_closed();
    // The session is over: alice can log in again at once.
    let alice = server.login("alice", "pw-a");
    alice.logout();
}
