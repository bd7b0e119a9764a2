//! PROTOCOL.md §2 and §4 (commands): message, the four broadcast forms,
//! whoelse, wholast, logout, unknown commands, blank lines, keyword case and
//! the idle-token stripping rules.

mod common;

use common::*;

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-a"),
    ("bob", "pw-b"),
    ("carol", "pw-c"),
    ("dave", "pw-d"),
];

fn server() -> TestServer {
    TestServer::start(Opts::users(USERS))
}

fn pw(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).unwrap().1
}

fn login(server: &TestServer, user: &str) -> Client {
    server.login(user, pw(user))
}

#[test]
fn message_to_an_online_user_is_delivered_at_once() {
    let server = server();
    let mut alice = login(&server, "alice");
    let mut bob = login(&server, "bob");
    let before = unix_now();
    alice.send("message bob hi there, how are you?");
    alice.expect("OK message bob delivered");
    let d = bob.expect_delivery();
    assert_eq!(d.kind, "MSG");
    assert_eq!(d.from, "alice");
    assert_eq!(d.text, "hi there, how are you?");
    let at = d.unix_time();
    assert!(
        (before - 2..=unix_now() + 2).contains(&at),
        "timestamp {} is not now",
        d.ts
    );
    // The sender gets no copy of a private message.
    assert_eq!(alice.barrier(), ["bob"]);
}

#[test]
fn message_ids_are_unique_and_text_is_kept_byte_for_byte() {
    let server = server();
    let mut alice = login(&server, "alice");
    let mut bob = login(&server, "bob");
    let texts = [
        "Mixed CASE  two  spaces",
        "tab\there",
        "unicode: héllo ✓ 日本",
        "idle",
        "ends with a dot.",
    ];
    let mut ids = Vec::new();
    for text in texts {
        alice.send(&format!("message bob {text}"));
        alice.expect("OK message bob delivered");
        let d = bob.expect_delivery();
        assert_eq!(d.text, text);
        ids.push(d.id);
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "ids reused: {ids:?}");
}

#[test]
fn message_to_an_offline_user_is_queued() {
    let server = server();
    let mut alice = login(&server, "alice");
    alice.send("message carol see you later");
    alice.expect("OK message carol queued offline");
    let mut carol = server.client();
    let held = carol.login("carol", pw("carol"));
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0].kind.as_str(), held[0].from.as_str()),
        ("MSG", "alice")
    );
    assert_eq!(held[0].text, "see you later");
}

#[test]
fn message_to_a_busy_user_is_queued_busy() {
    let server = server();
    let mut alice = login(&server, "alice");
    let mut bob = login(&server, "bob");
    bob.send("idle busy");
    bob.expect("OK status busy");
    alice.send("message bob are you there?");
    alice.expect("OK message bob queued busy");
    // Nothing reached bob.
    bob.barrier();
    bob.send("idle online");
    bob.expect("OFFLINE 1");
    let d = bob.expect_delivery();
    assert_eq!(
        (d.from.as_str(), d.text.as_str()),
        ("alice", "are you there?")
    );
    bob.expect("OK status online");
    alice.send("message bob now?");
    alice.expect("OK message bob delivered");
    assert_eq!(bob.expect_delivery().text, "now?");
}

#[test]
fn message_errors() {
    let server = server();
    let mut alice = login(&server, "alice");
    alice.send("message nobody hello");
    alice.expect("ERR unknown-user nobody");
    // Names are case-sensitive.
    alice.send("message Bob hello");
    alice.expect("ERR unknown-user Bob");
    alice.send("message bob");
    alice.expect("ERR usage message <user> <text>");
    alice.send("message");
    alice.expect_prefix("ERR usage");
    // The session goes on.
    assert_eq!(alice.barrier(), Vec::<String>::new());
}

/// alice and bob online, carol offline, dave busy.
fn broadcast_scene() -> (TestServer, Client, Client, Client) {
    let server = server();
    let alice = login(&server, "alice");
    let bob = login(&server, "bob");
    let mut dave = login(&server, "dave");
    dave.send("idle busy");
    dave.expect("OK status busy");
    (server, alice, bob, dave)
}

#[test]
fn broadcast_message_reaches_online_users_and_holds_only_for_busy() {
    let (server, mut alice, mut bob, mut dave) = broadcast_scene();
    alice.send("broadcast message hello all");
    // The sender's own copy comes before the reply.
    let own = alice.expect_delivery();
    assert_eq!(
        (own.kind.as_str(), own.from.as_str(), own.text.as_str()),
        ("BCAST", "alice", "hello all")
    );
    alice.expect("OK broadcast 2 1");
    let b = bob.expect_delivery();
    assert_eq!(
        b, own,
        "every copy of one broadcast has the same id and timestamp"
    );
    dave.barrier();
    dave.send("idle online");
    dave.expect("OFFLINE 1");
    assert_eq!(dave.expect_delivery(), own);
    dave.expect("OK status online");
    // carol was offline: `broadcast message` never holds for her.
    let mut carol = server.client();
    assert!(carol.login("carol", pw("carol")).is_empty());
}

#[test]
fn plain_broadcast_is_broadcast_message() {
    let (server, mut alice, mut bob, mut dave) = broadcast_scene();
    alice.send("broadcast good morning everyone");
    let own = alice.expect_delivery();
    assert_eq!(
        (own.kind.as_str(), own.text.as_str()),
        ("BCAST", "good morning everyone")
    );
    alice.expect("OK broadcast 2 1");
    assert_eq!(bob.expect_delivery(), own);
    dave.send("idle online");
    dave.expect("OFFLINE 1");
    assert_eq!(dave.expect_delivery(), own);
    dave.expect("OK status online");
    let mut carol = server.client();
    assert!(carol.login("carol", pw("carol")).is_empty());
}

#[test]
fn broadcast_all_holds_for_offline_and_busy_accounts() {
    let (server, mut alice, mut bob, mut dave) = broadcast_scene();
    alice.send("broadcast all meeting at noon");
    let own = alice.expect_delivery();
    assert_eq!(own.text, "meeting at noon");
    alice.expect("OK broadcast 2 2");
    assert_eq!(bob.expect_delivery(), own);
    let mut carol = server.client();
    assert_eq!(carol.login("carol", pw("carol")), vec![own.clone()]);
    dave.send("idle online");
    dave.expect("OFFLINE 1");
    assert_eq!(dave.expect_delivery(), own);
    dave.expect("OK status online");
}

#[test]
fn broadcast_user_sends_to_the_listed_users_once_each() {
    let (server, mut alice, mut bob, mut dave) = broadcast_scene();
    alice.send("broadcast user bob carol bob dave message lunch?");
    alice.expect("OK broadcast 1 2");
    let b = bob.expect_delivery();
    assert_eq!(
        (b.kind.as_str(), b.from.as_str(), b.text.as_str()),
        ("BCAST", "alice", "lunch?")
    );
    // Duplicates ignored: bob got one copy.
    bob.barrier();
    // The sender is not listed: no copy for her.
    alice.barrier();
    let mut carol = server.client();
    assert_eq!(carol.login("carol", pw("carol")), vec![b.clone()]);
    dave.send("idle online");
    dave.expect("OFFLINE 1");
    assert_eq!(dave.expect_delivery(), b);
    dave.expect("OK status online");
}

#[test]
fn broadcast_user_with_an_unknown_name_is_refused_whole() {
    let server = server();
    let mut alice = login(&server, "alice");
    let mut bob = login(&server, "bob");
    alice.send("broadcast user bob nobody carol message hi");
    alice.expect("ERR unknown-user nobody");
    bob.barrier();
    let mut carol = server.client();
    assert!(
        carol.login("carol", pw("carol")).is_empty(),
        "nothing may be sent"
    );
}

#[test]
fn broadcast_usage_errors() {
    let server = server();
    let mut alice = login(&server, "alice");
    let mut bob = login(&server, "bob");
    for bad in [
        "broadcast",
        "broadcast message",
        "broadcast all",
        "broadcast user",
        "broadcast user bob",
        "broadcast user bob hello there",
        "broadcast user bob message",
        "broadcast user message hi",
    ] {
        alice.send(bad);
        let got = alice.line();
        assert!(got.starts_with("ERR usage"), "{bad:?} got {got:?}");
    }
    // Nothing was sent to anybody.
    assert_eq!(bob.barrier(), ["alice"]);
    alice.barrier();
}

#[test]
fn whoelse_lists_other_users_sorted_busy_included() {
    let users = [
        ("alice", "a"),
        ("Zed", "z"),
        ("bob", "b"),
        ("carl", "c"),
        ("_x", "x"),
    ];
    let server = TestServer::start(Opts::users(&users));
    let mut alice = server.login("alice", "a");
    alice.send("whoelse");
    alice.expect("WHO");
    let _carl = server.login("carl", "c");
    let mut zed = server.login("Zed", "z");
    let _bob = server.login("bob", "b");
    let _x = server.login("_x", "x");
    zed.send("idle busy");
    zed.expect("OK status busy");
    alice.send("whoelse");
    // Byte order: upper case before '_' before lower case.
    alice.expect("WHO Zed _x bob carl");
    zed.send("whoelse");
    zed.expect("WHO _x alice bob carl");
}

#[test]
fn whoelse_drops_users_who_log_out() {
    let server = server();
    let mut alice = login(&server, "alice");
    let bob = login(&server, "bob");
    assert_eq!(alice.whoelse(), ["bob"]);
    bob.logout();
    assert_eq!(alice.whoelse(), Vec::<String>::new());
}

#[test]
fn wholast_lists_online_and_recent_users() {
    let server = server();
    let mut alice = login(&server, "alice");
    let bob = login(&server, "bob");
    bob.logout();
    let _carol = login(&server, "carol");
    // dave never logged in; alice never lists herself.
    alice.send("wholast 5");
    alice.expect("LAST bob carol");
    alice.send("wholast 59");
    alice.expect("LAST bob carol");
    alice.send("wholast 0");
    let last = words_after(&alice.line(), "LAST");
    assert!(
        last.contains(&"carol".to_owned()),
        "online users are in every window: {last:?}"
    );
    assert!(
        !last.contains(&"alice".to_owned()) && !last.contains(&"dave".to_owned()),
        "{last:?}"
    );
}

#[test]
fn wholast_usage_errors_keep_the_session() {
    let server = server();
    let mut alice = login(&server, "alice");
    for bad in [
        "wholast",
        "wholast 60",
        "wholast 1000",
        "wholast -1",
        "wholast abc",
        "wholast 1.5",
        "wholast 32 idle",
        "wholast 5 6",
    ] {
        alice.send(bad);
        assert_eq!(alice.line(), "ERR usage wholast <0-59>", "for {bad:?}");
    }
    alice.barrier();
}

#[test]
fn wholast_range_follows_last_hour_minutes() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["last_hour_minutes = 30"],
        ..Opts::default()
    });
    let mut alice = login(&server, "alice");
    alice.send("wholast 30");
    alice.expect("ERR usage wholast <0-29>");
    alice.send("wholast 29");
    alice.expect("LAST");
}

#[test]
fn logout_says_bye_and_closes() {
    let server = server();
    let alice = login(&server, "alice");
    alice.logout();
    // She can log in again at once.
    let mut again = server.client();
    assert_eq!(again.login_attempt("alice", pw("alice")), "OK login alice");
}

#[test]
fn unknown_commands_and_blank_lines() {
    let server = server();
    let mut alice = login(&server, "alice");
    alice.send("frobnicate the thing");
    alice.expect("ERR unknown-command frobnicate");
    alice.send("Frob");
    alice.expect("ERR unknown-command Frob");
    alice.send("");
    alice.send("   ");
    alice.send(" \t ");
    // Blank lines get no reply: the next line is the barrier's.
    alice.barrier();
    // A name is not a command.
    alice.send("bob hello");
    alice.expect("ERR unknown-command bob");
}

#[test]
fn keywords_are_case_insensitive() {
    let server = server();
    let mut alice = login(&server, "alice");
    let mut bob = login(&server, "bob");
    alice.send("WhoElse");
    alice.expect("WHO bob");
    alice.send("MESSAGE bob Keep My Case");
    alice.expect("OK message bob delivered");
    assert_eq!(bob.expect_delivery().text, "Keep My Case");
    alice.send("Broadcast User bob Message Hi");
    alice.expect("OK broadcast 1 0");
    assert_eq!(bob.expect_delivery().text, "Hi");
    alice.send("BROADCAST MESSAGE Yo");
    alice.expect_delivery();
    alice.expect("OK broadcast 2 0");
    assert_eq!(bob.expect_delivery().text, "Yo");
    alice.send("WHOLAST 5");
    alice.expect("LAST bob");
    bob.send("IDLE BUSY");
    bob.expect("OK status busy");
    bob.send("Idle Online");
    bob.expect("OK status online");
    bob.send("LogOut");
    bob.expect("BYE logout");
    bob.expect_closed();
}

#[test]
fn leading_glued_idle_tokens_are_stripped() {
    let server = server();
    let mut alice = login(&server, "alice");
    let mut bob = login(&server, "bob");
    alice.send("idlewhoelse");
    alice.expect("WHO bob");
    alice.send("idleidleidlewhoelse");
    alice.expect("WHO bob");
    alice.send("idlemessage bob hi");
    alice.expect("OK message bob delivered");
    assert_eq!(bob.expect_delivery().text, "hi");
    alice.send("idlewholast 5");
    alice.expect("LAST bob");
    bob.send("idleidlelogout");
    bob.expect("BYE logout");
    bob.expect_closed();
}

#[test]
fn trailing_glued_idle_is_stripped_only_without_free_text() {
    let server = server();
    let mut alice = login(&server, "alice");
    let mut bob = login(&server, "bob");
    alice.send("whoelseidle");
    alice.expect("WHO bob");
    alice.send("wholast 32idle");
    alice.expect("LAST bob");
    alice.send("wholast 32 idle");
    alice.expect("ERR usage wholast <0-59>");
    // Free text is never altered.
    for text in [
        "I am idle",
        "keep it idle",
        "hiidle",
        "idle",
        "idleidle",
        "idle hands",
    ] {
        alice.send(&format!("message bob {text}"));
        alice.expect("OK message bob delivered");
        assert_eq!(bob.expect_delivery().text, text);
    }
    alice.send("broadcast message going idle");
    assert_eq!(alice.expect_delivery().text, "going idle");
    alice.expect("OK broadcast 2 0");
    assert_eq!(bob.expect_delivery().text, "going idle");
    bob.send("logoutidle");
    bob.expect("BYE logout");
    bob.expect_closed();
}

#[test]
fn heartbeat_replies_get_no_reply() {
    let server = server();
    let mut alice = login(&server, "alice");
    alice.send("idle");
    alice.send("idle 1");
    alice.send("idleidle");
    alice.send("IDLE");
    // None of them is answered: the next line is the barrier's.
    alice.barrier();
}
