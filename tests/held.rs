//! PROTOCOL.md §5 (held messages): delivered at login oldest first with
//! their original ids and timestamps, kept across a crash and restart, ids
//! never reused, the per-user box limit, and busy status.

mod common;

use std::collections::HashSet;

use common::*;

const USERS: &[(&str, &str)] = &[("alice", "pw-a"), ("bob", "pw-b"), ("carol", "pw-c")];

fn pw(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).unwrap().1
}

#[test]
fn held_messages_come_at_login_oldest_first_with_original_ids_and_times() {
    let server = TestServer::start(Opts::users(USERS));
    let mut alice = server.login("alice", pw("alice"));
    let mut bob = server.login("bob", pw("bob"));
    alice.send("message carol one");
    alice.expect("OK message carol queued offline");
    bob.send("message carol two");
    bob.expect("OK message carol queued offline");
    alice.send("broadcast all three");
    let three = alice.expect_delivery();
    alice.expect("OK broadcast 2 1");
    assert_eq!(bob.expect_delivery(), three);
    alice.send("message carol four");
    alice.expect("OK message carol queued offline");

    let mut carol = server.client();
    carol.expect("HELLO CHAT/1");
    assert_eq!(carol.login_attempt("carol", pw("carol")), "OK login carol");
    // OFFLINE comes right after OK login, before anything else.
    carol.expect("OFFLINE 4");
    let held: Vec<Delivery> = (0..4).map(|_| carol.expect_delivery()).collect();
    let got: Vec<(&str, &str, &str)> = held
        .iter()
        .map(|d| (d.kind.as_str(), d.from.as_str(), d.text.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("MSG", "alice", "one"),
            ("MSG", "bob", "two"),
            ("BCAST", "alice", "three"),
            ("MSG", "alice", "four")
        ]
    );
    assert_eq!(
        held[2], three,
        "a held copy keeps the broadcast's id and timestamp"
    );
    assert!(
        held.windows(2).all(|w| w[0].id < w[1].id),
        "oldest first: {held:?}"
    );
    assert!(
        held.windows(2)
            .all(|w| w[0].unix_time() <= w[1].unix_time()),
        "{held:?}"
    );
    assert!(held.iter().all(|d| d.unix_time() <= unix_now() + 1));
    carol.barrier();
    // Logout confirms them: they are not held any more.
    carol.logout();
    let mut again = server.client();
    assert!(again.login("carol", pw("carol")).is_empty());
}

#[test]
fn held_messages_survive_a_crash_and_ids_are_never_reused() {
    let mut server = TestServer::start(Opts::users(USERS));
    let mut seen_ids = HashSet::new();
    let mut alice = server.login("alice", pw("alice"));
    let mut bob = server.login("bob", pw("bob"));
    for i in 0..3 {
        alice.send(&format!("message bob live {i}"));
        alice.expect("OK message bob delivered");
        seen_ids.insert(bob.expect_delivery().id);
    }
    alice.send("message carol before the crash");
    alice.expect("OK message carol queued offline");
    alice.send("broadcast all everyone, before the crash");
    let bcast = alice.expect_delivery();
    alice.expect("OK broadcast 2 1");
    seen_ids.insert(bcast.id);
    assert_eq!(bob.expect_delivery().id, bcast.id);
    bob.barrier();
    alice.barrier();

    server.kill();
    alice.expect_closed();
    bob.expect_closed();
    server.restart();

    let mut carol = server.client();
    let held = carol.login("carol", pw("carol"));
    assert_eq!(held.len(), 2, "held messages lost in the crash: {held:?}");
    assert_eq!(
        (held[0].kind.as_str(), held[0].text.as_str()),
        ("MSG", "before the crash")
    );
    assert_eq!(held[1], bcast, "same id and timestamp after the restart");
    seen_ids.insert(held[0].id);

    // New messages after the restart get ids never used before.
    let mut alice = server.login("alice", pw("alice"));
    for i in 0..5 {
        alice.send(&format!("message carol after {i}"));
        alice.expect("OK message carol delivered");
        let d = carol.expect_delivery();
        assert!(
            seen_ids.insert(d.id),
            "id {} reused after restart (seen {seen_ids:?})",
            d.id
        );
    }
    alice.send("broadcast message after");
    let b = alice.expect_delivery();
    alice.expect("OK broadcast 2 0");
    assert!(seen_ids.insert(b.id), "id {} reused after restart", b.id);
}

#[test]
fn a_full_box_refuses_messages_and_broadcasts_name_the_full_boxes() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["max_held_per_user = 2"],
        ..Opts::default()
    });
    let mut alice = server.login("alice", pw("alice"));
    alice.send("message carol 1");
    alice.expect("OK message carol queued offline");
    alice.send("message carol 2");
    alice.expect("OK message carol queued offline");
    alice.send("message carol 3");
    alice.expect("ERR queue-full carol");

    // bob (offline) has room, carol does not.
    alice.send("broadcast all b1");
    alice.expect_delivery();
    alice.expect("OK broadcast 1 1 full carol");
    alice.send("broadcast user carol bob message b2");
    alice.expect("OK broadcast 0 1 full carol");
    // Now both are full; full names are sorted and comma-separated.
    alice.send("broadcast all b3");
    alice.expect_delivery();
    alice.expect("OK broadcast 1 0 full bob,carol");

    let mut carol = server.client();
    let held = carol.login("carol", pw("carol"));
    let texts: Vec<&str> = held.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(
        texts,
        ["1", "2"],
        "nothing past the limit, nothing dropped before it"
    );
    let mut bob = server.client();
    let held = bob.login("bob", pw("bob"));
    let texts: Vec<&str> = held.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, ["b1", "b2"]);
    // Once confirmed (logout), the box has room again.
    carol.logout();
    alice.send("message carol 4");
    alice.expect("OK message carol queued offline");
}

#[test]
fn busy_holds_everything_until_idle_online() {
    let server = TestServer::start(Opts::users(USERS));
    let mut alice = server.login("alice", pw("alice"));
    let mut bob = server.login("bob", pw("bob"));
    bob.send("idle busy");
    bob.expect("OK status busy");
    // Busy users are still listed.
    assert_eq!(alice.whoelse(), ["bob"]);
    alice.send("message bob first");
    alice.expect("OK message bob queued busy");
    alice.send("broadcast message second");
    alice.expect_delivery();
    alice.expect("OK broadcast 1 1");
    alice.send("broadcast user bob message third");
    alice.expect("OK broadcast 0 1");
    // bob sees nothing while busy.
    bob.barrier();
    bob.send("idle online");
    bob.expect("OFFLINE 3");
    let texts: Vec<String> = (0..3).map(|_| bob.expect_delivery().text).collect();
    assert_eq!(texts, ["first", "second", "third"]);
    bob.expect("OK status online");
    // Going online with nothing held: no OFFLINE 0.
    bob.send("idle busy");
    bob.expect("OK status busy");
    bob.send("idle online");
    bob.expect("OK status online");
}

#[test]
fn busy_ends_at_logout() {
    let server = TestServer::start(Opts::users(USERS));
    let mut alice = server.login("alice", pw("alice"));
    let mut bob = server.login("bob", pw("bob"));
    bob.send("idle busy");
    bob.expect("OK status busy");
    bob.logout();
    let mut bob = server.client();
    assert!(bob.login("bob", pw("bob")).is_empty());
    alice.send("message bob back?");
    alice.expect("OK message bob delivered");
    assert_eq!(bob.expect_delivery().text, "back?");
}
