//! PROTOCOL.md §3 (login): the login dialogue, bad credentials, lockout per
//! (user, address), already-online, the per-connection attempt budget and
//! the login timeout; §10 (users file forms and hashed passwords).

mod common;

use std::time::Duration;

use common::*;

const USERS: &[(&str, &str)] = &[
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("carol", "carol-pw"),
];

/// `ERR blocked <secs>`: returns the seconds.
fn blocked_secs(line: &str) -> u64 {
    let secs = line
        .strip_prefix("ERR blocked ")
        .unwrap_or_else(|| panic!("expected `ERR blocked <secs>`, got {line:?}"));
    secs.parse()
        .unwrap_or_else(|_| panic!("bad seconds in {line:?}"))
}

#[test]
fn login_dialogue_follows_the_protocol() {
    let server = TestServer::start(Opts {
        users: USERS,
        plain: true,
        ..Opts::default()
    });
    let mut c = server.client();
    c.expect("HELLO CHAT/1");
    c.expect("ASK username");
    c.send("alice");
    c.expect("ASK password");
    c.send("alice-pw");
    c.expect("OK login alice");
    // No OFFLINE 0: the next line is the reply to the first command.
    c.send("whoelse");
    c.expect("WHO");
}

#[test]
fn unknown_user_and_wrong_password_get_the_same_answer() {
    let server = TestServer::start(Opts {
        users: USERS,
        plain: true,
        ..Opts::default()
    });
    let mut c = server.client();
    c.expect("HELLO CHAT/1");
    let dialogue = |c: &mut Client, user: &str, password: &str| -> Vec<String> {
        let mut lines = vec![c.line()];
        c.send(user);
        let next = c.line();
        lines.push(next.clone());
        if next == "ASK password" {
            c.send(password);
            lines.push(c.line());
        }
        lines
    };
    let unknown = dialogue(&mut c, "mallory", "whatever");
    let wrong = dialogue(&mut c, "alice", "not-her-password");
    assert_eq!(
        unknown,
        ["ASK username", "ASK password", "ERR bad-credentials"]
    );
    assert_eq!(
        wrong, unknown,
        "unknown user and wrong password must look the same"
    );
    // The connection goes on: a third, good attempt works.
    assert_eq!(c.login_attempt("alice", "alice-pw"), "OK login alice");
}

#[test]
fn passwords_and_names_are_case_sensitive() {
    let server = TestServer::start(Opts {
        users: USERS,
        plain: true,
        ..Opts::default()
    });
    let mut c = server.client();
    assert_eq!(c.login_attempt("Alice", "alice-pw"), "ERR bad-credentials");
    assert_eq!(c.login_attempt("alice", "ALICE-PW"), "ERR bad-credentials");
    assert_eq!(c.login_attempt("alice", "alice-pw"), "OK login alice");
}

#[test]
fn three_bad_attempts_block_the_user_from_that_address_only() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["block_time = 60"],
        plain: true,
        ..Opts::default()
    });

    // Two failures on one connection, the third on another: the count is
    // per (user, address), across connections.
    let mut c1 = server.client();
    assert_eq!(c1.login_attempt("alice", "wrong-1"), "ERR bad-credentials");
    assert_eq!(c1.login_attempt("alice", "wrong-2"), "ERR bad-credentials");
    drop(c1);
    let mut c2 = server.client();
    let third = c2.login_attempt("alice", "wrong-3");
    let secs = blocked_secs(&third);
    assert!(
        (1..=60).contains(&secs),
        "block of {secs} s, block_time is 60: {third:?}"
    );
    c2.expect("BYE blocked");
    c2.expect_closed();

    // While blocked, even the right password is refused, and the
    // connection is closed.
    let mut c3 = server.client();
    let again = c3.login_attempt("alice", "alice-pw");
    let left = blocked_secs(&again);
    assert!(left <= secs, "the block grew: {secs} then {left}");
    c3.expect("BYE blocked");
    c3.expect_closed();

    // The same name from another address is not blocked.
    let mut other_ip = Client::connect_from(server.addr(), "127.0.0.2");
    assert_eq!(
        other_ip.login_attempt("alice", "alice-pw"),
        "OK login alice"
    );
    other_ip.logout();

    // Other names from the blocked address are not blocked.
    let mut c4 = server.client();
    assert_eq!(c4.login_attempt("bob", "wrong"), "ERR bad-credentials");
    assert_eq!(c4.login_attempt("bob", "bob-pw"), "OK login bob");
    c4.logout();

    // And alice from 127.0.0.1 is still blocked.
    let mut c5 = server.client();
    blocked_secs(&c5.login_attempt("alice", "alice-pw"));
    c5.expect("BYE blocked");
    c5.expect_closed();
}

#[test]
fn a_block_ends_after_block_time_and_polling_does_not_extend_it() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["block_time = 1"],
        ..Opts::default()
    });
    let mut c = server.client();
    assert_eq!(c.login_attempt("alice", "x"), "ERR bad-credentials");
    assert_eq!(c.login_attempt("alice", "y"), "ERR bad-credentials");
    let secs = blocked_secs(&c.login_attempt("alice", "z"));
    assert!(secs <= 1, "block_time is 1 s but the block is {secs} s");
    c.expect("BYE blocked");
    c.expect_closed();

    // Poll with the right password: refused while blocked (without
    // extending the block), then accepted.
    let mut ok = poll_until("the block on alice to end", Duration::from_secs(10), || {
        let mut c = server.client();
        let answer = c.login_attempt("alice", "alice-pw");
        if answer == "OK login alice" {
            return Some(c);
        }
        blocked_secs(&answer);
        c.expect("BYE blocked");
        None
    });
    ok.barrier();
    ok.logout();
}

#[test]
fn a_successful_login_clears_the_failure_count() {
    let server = TestServer::start(Opts::users(USERS));
    let mut c = server.client();
    assert_eq!(c.login_attempt("alice", "x"), "ERR bad-credentials");
    assert_eq!(c.login_attempt("alice", "y"), "ERR bad-credentials");
    assert_eq!(c.login_attempt("alice", "alice-pw"), "OK login alice");
    c.logout();
    // Two more failures do not block: the count started again at zero.
    let mut c = server.client();
    assert_eq!(c.login_attempt("alice", "x"), "ERR bad-credentials");
    assert_eq!(c.login_attempt("alice", "y"), "ERR bad-credentials");
    assert_eq!(c.login_attempt("alice", "alice-pw"), "OK login alice");
    c.logout();
}

#[test]
fn already_online_refuses_the_newcomer_and_leaves_the_session_alone() {
    let server = TestServer::start(Opts::users(USERS));
    let mut first = server.login("alice", "alice-pw");
    let mut bob = server.login("bob", "bob-pw");

    let mut second = server.client();
    assert_eq!(
        second.login_attempt("alice", "alice-pw"),
        "ERR already-online"
    );

    // The session that is online is untouched: it still gets messages and
    // answers commands.
    bob.send("message alice still there?");
    bob.expect("OK message alice delivered");
    let d = first.expect_delivery();
    assert_eq!(
        (d.kind.as_str(), d.from.as_str(), d.text.as_str()),
        ("MSG", "bob", "still there?")
    );
    assert_eq!(first.barrier(), ["bob"]);

    // already-online uses up the connection's attempts (3 by default)...
    assert_eq!(
        second.login_attempt("alice", "alice-pw"),
        "ERR already-online"
    );
    assert_eq!(
        second.login_attempt("alice", "alice-pw"),
        "ERR already-online"
    );
    second.expect("BYE login-failed");
    second.expect_closed();

    // ...but never counts toward a block.
    first.logout();
    let mut third = server.client();
    assert_eq!(third.login_attempt("alice", "alice-pw"), "OK login alice");
}

#[test]
fn a_connection_gets_max_login_attempts_then_login_failed() {
    let server = TestServer::start(Opts::users(USERS));
    let mut c = server.client();
    // Different names, so no (user, address) pair reaches the block.
    assert_eq!(c.login_attempt("alice", "x"), "ERR bad-credentials");
    assert_eq!(c.login_attempt("nobody", "x"), "ERR bad-credentials");
    c.expect("ASK username");
    c.send("bob");
    c.expect("ASK password");
    c.send("wrong");
    c.expect("ERR bad-credentials");
    c.expect("BYE login-failed");
    c.expect_closed();
}

#[test]
fn max_login_attempts_is_configurable() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["max_login_attempts = 1"],
        ..Opts::default()
    });
    let mut c = server.client();
    assert_eq!(c.login_attempt("alice", "x"), "ERR bad-credentials");
    c.expect("BYE login-failed");
    c.expect_closed();
}

#[test]
fn login_timeout_closes_a_connection_that_does_not_log_in() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["login_timeout = 2"],
        ..Opts::default()
    });
    // Silent from the start.
    let mut idle = server.client();
    // Half-way through the dialogue.
    let mut half = server.client();
    half.expect("HELLO CHAT/1");
    half.expect("ASK username");
    half.send("alice");
    half.expect("ASK password");

    idle.expect("HELLO CHAT/1");
    idle.expect("ASK username");
    idle.expect("BYE login-timeout");
    idle.expect_closed();
    half.expect("BYE login-timeout");
    half.expect_closed();

    // The server is fine and the name is free.
    let mut c = server.client();
    assert_eq!(c.login_attempt("alice", "alice-pw"), "OK login alice");
}

#[test]
fn a_logged_in_session_is_not_hit_by_the_login_timeout() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["login_timeout = 2"],
        ..Opts::default()
    });
    let mut alice = server.login("alice", "alice-pw");
    // Outlive the login timeout: a client that is still logging in gets
    // its BYE after 2 s; by then alice must still be fine.
    let mut late = server.client();
    late.expect("HELLO CHAT/1");
    late.expect("ASK username");
    late.expect("BYE login-timeout");
    assert_eq!(alice.barrier(), Vec::<String>::new());
}

#[test]
fn users_file_accepts_comments_blanks_crlf_and_no_final_newline() {
    let raw =
        "# accounts\r\n\r\n  alice   alice-pw  \r\n\n# bob below\nbob bob-pw\r\ncarol carol-pw";
    let server = TestServer::start(Opts {
        users_raw: Some(raw),
        ..Opts::default()
    });
    for (user, pw) in USERS {
        let mut c = server.client();
        assert_eq!(c.login_attempt(user, pw), format!("OK login {user}"));
    }
}

#[test]
fn hashed_passwords_work() {
    let phc = hash_password("s3cret with spaces");
    let users = [("alice", phc.as_str()), ("bob", "bob-pw")];
    let server = TestServer::start(Opts::users(&users));
    let mut c = server.client();
    assert_eq!(c.login_attempt("alice", "s3cret"), "ERR bad-credentials");
    assert_eq!(
        c.login_attempt("alice", "s3cret with spaces"),
        "OK login alice"
    );
    // A plain account next to it still works.
    let mut b = server.client();
    assert_eq!(b.login_attempt("bob", "bob-pw"), "OK login bob");
}

#[test]
fn slow_login_does_not_stall_others() {
    // A connection that stops mid-login must not hold up anybody else.
    let server = TestServer::start(Opts::users(USERS));
    let mut stuck = server.client();
    stuck.expect("HELLO CHAT/1");
    stuck.expect("ASK username");
    stuck.send("alice");
    stuck.expect("ASK password");
    let mut bob = server.login("bob", "bob-pw");
    let mut carol = server.login("carol", "carol-pw");
    bob.send("message carol hi");
    bob.expect("OK message carol delivered");
    assert_eq!(carol.expect_delivery().text, "hi");
}

#[test]
fn parallel_guesses_from_one_address_are_answered_bad_credentials_at_most_twice() {
    // A real argon2 hash (default parameters) keeps each check in flight
    // long enough for the guesses to overlap, as an attacker's would.
    let phc = hash_password("alice-pw");
    let server = TestServer::start(Opts {
        users: &[("alice", &phc)],
        config: &[
            "password_check_concurrency = 4",
            "max_connections_per_ip = 64",
        ],
        ..Opts::default()
    });
    let mut clients: Vec<Client> = (0..20).map(|_| server.client()).collect();
    for c in &mut clients {
        c.expect_ask_username();
        c.send("alice");
        c.expect("ASK password");
    }
    // Every guess is on its way before any answer comes back. (Whether a
    // right password in flight is refused depends on which check ends
    // first, so that case is the core's test, where the order is chosen.)
    for c in &mut clients {
        c.send("wrong");
    }
    let mut bad = 0;
    for mut c in clients {
        let answer = c.line();
        if answer == "ERR bad-credentials" {
            bad += 1;
            continue;
        }
        assert!(
            answer.starts_with("ERR blocked "),
            "a guess in flight when the pair was blocked must be refused, got {answer:?}"
        );
        c.expect("BYE blocked");
        c.expect_closed();
    }
    assert_eq!(bad, 2, "the lockout promises a block at the third failure");
    // Even the right password is refused now.
    let mut c = server.client();
    c.expect_ask_username();
    c.send("alice");
    let answer = c.line();
    assert!(answer.starts_with("ERR blocked "), "{answer:?}");
}

#[test]
fn text_that_is_no_user_name_is_never_logged_and_never_blocks() {
    let server = TestServer::with(USERS, &[]);
    let marker = "pipelined-secret-4f1c";
    let long = format!("{marker}{}", "x".repeat(3000));
    for name in [format!("message bob {marker}"), long] {
        // More attempts than block the pair of a real name.
        for _ in 0..4 {
            let mut c = server.client();
            let answer = c.login_attempt(&name, "pw");
            assert_eq!(answer, "ERR bad-credentials");
            c.expect("ASK username");
        }
    }
    // A barrier: a full login and command round trip after the failures.
    let mut alice = server.login("alice", "alice-pw");
    alice.barrier();
    let log = server.stderr_once(|log| log.matches("failed login").count() >= 8);
    assert!(
        log.contains("failed login"),
        "failures are still logged:\n{log}"
    );
    assert!(
        !log.contains(marker),
        "inbound text reached the log:\n{log}"
    );
}
