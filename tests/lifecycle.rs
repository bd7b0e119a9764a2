//! PROTOCOL.md §7 (shutdown), §9 (command line and configuration), §10
//! (users file errors), connection limits, and a 200-client broadcast.

mod common;

use std::time::Duration;

use common::*;

const USERS: &[(&str, &str)] = &[("alice", "pw-a"), ("bob", "pw-b"), ("carol", "pw-c")];

#[test]
fn sigterm_says_bye_to_everyone_exits_0_and_keeps_held_messages() {
    let mut server = TestServer::start(Opts {
        users: USERS,
        config: &["heartbeat = 60"],
        ..Opts::default()
    });
    let mut alice = server.login("alice", "pw-a");
    let mut bob = server.login("bob", "pw-b");
    bob.set_idle_mode(IdleMode::Ignore);
    alice.send("message carol kept across shutdown");
    alice.expect("OK message carol queued offline");
    // bob receives a message but never confirms it.
    alice.send("message bob unconfirmed");
    alice.expect("OK message bob delivered");
    let unconfirmed = bob.expect_delivery();
    // A client still logging in.
    let mut pending = server.client();
    pending.expect("HELLO CHAT/1");
    pending.expect("ASK username");

    let status = server.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}\nstderr:\n{}",
        server.stderr()
    );
    alice.expect("BYE shutdown");
    alice.expect_closed();
    bob.expect("BYE shutdown");
    bob.expect_closed();
    // Not logged in yet: closed, maybe with a BYE.
    match pending.recv(LINE_TIMEOUT) {
        Recv::Line(l) => {
            assert_eq!(l, "BYE shutdown");
            pending.expect_closed();
        }
        Recv::Closed => {}
        Recv::TimedOut => panic!("a connection survived the shutdown"),
    }

    server.restart();
    let mut carol = server.client();
    let held = carol.login("carol", "pw-c");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].text, "kept across shutdown");
    let mut bob = server.client();
    assert_eq!(
        bob.login("bob", "pw-b"),
        vec![unconfirmed],
        "unconfirmed delivery lost in shutdown"
    );
}

#[test]
fn sigint_shuts_down_cleanly_too() {
    let mut server = TestServer::start(Opts::users(USERS));
    let mut alice = server.login("alice", "pw-a");
    server.signal("INT");
    alice.expect("BYE shutdown");
    alice.expect_closed();
    let status = server
        .wait_exit(EXIT_TIMEOUT)
        .expect("chatd did not exit after SIGINT");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_server_prints_its_real_port() {
    let server = TestServer::start(Opts::users(USERS));
    assert_ne!(server.addr().port(), 0);
    assert_eq!(
        server
            .stdout()
            .lines()
            .filter(|l| l.starts_with("chatd listening on "))
            .count(),
        1
    );
}

fn assert_usage_error(out: &RunOutput, must_name: &str) {
    let code = out.status.and_then(|s| s.code());
    assert_eq!(code, Some(2), "expected exit status 2: {out:#?}");
    assert!(
        out.stderr.contains(must_name),
        "stderr must name {must_name:?}: {out:#?}"
    );
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!out.stderr.contains(bad), "panic text on stderr: {out:#?}");
    }
}

fn files() -> (tempfile::TempDir, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.txt");
    std::fs::write(&users, "alice pw-a\n").unwrap();
    let config = dir.path().join("chatd.toml");
    std::fs::write(&config, "").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    (dir, s(&users), s(&config), s(&data))
}

#[test]
fn a_bad_port_exits_2_naming_it() {
    let (_dir, users, config, data) = files();
    for port in ["70000", "abc", "65536", "4119x"] {
        let out = run_chatd(
            &[
                "127.0.0.1",
                port,
                "--config",
                &config,
                "--users",
                &users,
                "--data-dir",
                &data,
            ],
            "",
            Duration::from_secs(20),
        );
        assert_usage_error(&out, port);
    }
}

#[test]
fn an_unknown_config_key_exits_2_naming_it() {
    let (dir, users, _config, data) = files();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "heartbeat = 30\nbogus_knob = 1\n").unwrap();
    let out = run_chatd(
        &[
            "127.0.0.1",
            "0",
            "--config",
            config.to_str().unwrap(),
            "--users",
            &users,
            "--data-dir",
            &data,
        ],
        "",
        Duration::from_secs(20),
    );
    assert_usage_error(&out, "bogus_knob");
}

#[test]
fn a_config_value_of_the_wrong_type_exits_2_naming_the_key() {
    let (dir, users, _config, data) = files();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "block_time = \"a minute\"\n").unwrap();
    let out = run_chatd(
        &[
            "127.0.0.1",
            "0",
            "--config",
            config.to_str().unwrap(),
            "--users",
            &users,
            "--data-dir",
            &data,
        ],
        "",
        Duration::from_secs(20),
    );
    assert_usage_error(&out, "block_time");
}

#[test]
fn a_bad_users_file_line_is_a_startup_error_naming_the_line() {
    let (dir, _users, config, data) = files();
    let users = dir.path().join("bad-users.txt");
    std::fs::write(&users, "# ok\nalice pw-a\nnopassword\n").unwrap();
    let out = run_chatd(
        &[
            "127.0.0.1",
            "0",
            "--config",
            &config,
            "--users",
            users.to_str().unwrap(),
            "--data-dir",
            &data,
        ],
        "",
        Duration::from_secs(20),
    );
    let code = out.status.and_then(|s| s.code());
    assert!(
        matches!(code, Some(1) | Some(2)),
        "expected a startup failure: {out:#?}"
    );
    assert!(
        out.stderr.contains("line 3"),
        "stderr must name line 3: {out:#?}"
    );
    assert!(!out.stdout.contains("listening"), "{out:#?}");
    assert!(!out.stderr.contains("panicked"), "{out:#?}");
}

#[test]
fn max_connections_per_ip_refuses_the_extra_connection() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["max_connections_per_ip = 2"],
        ..Opts::default()
    });
    let mut c1 = server.client();
    c1.expect("HELLO CHAT/1");
    let mut c2 = server.login("alice", "pw-a");
    let mut c3 = server.client();
    c3.expect_prefix("ERR");
    c3.expect_closed();
    // Another address is counted separately.
    let mut other = Client::connect_from(server.addr(), "127.0.0.2");
    other.expect("HELLO CHAT/1");
    // The accepted ones are unaffected.
    c2.barrier();
    c1.expect("ASK username");
}

#[test]
fn max_connections_refuses_the_extra_connection() {
    let server = TestServer::start(Opts {
        users: USERS,
        config: &["max_connections = 2"],
        ..Opts::default()
    });
    let mut c1 = server.client();
    c1.expect("HELLO CHAT/1");
    let mut c2 = Client::connect_from(server.addr(), "127.0.0.3");
    c2.expect("HELLO CHAT/1");
    let mut c3 = Client::connect_from(server.addr(), "127.0.0.4");
    c3.expect_prefix("ERR");
    c3.expect_closed();
}

#[test]
fn a_broadcast_reaches_200_clients_with_one_id() {
    const N: usize = 200;
    let names: Vec<String> = (0..N).map(|i| format!("u{i:03}")).collect();
    // Cheap hashes: 200 logins must not spend their time in argon2.
    let hash = cheap_hash("pw");
    let users: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), hash.as_str())).collect();
    let server = TestServer::start(Opts {
        users: &users,
        config: &["max_connections_per_ip = 1000", "max_connections = 1000"],
        ..Opts::default()
    });
    let mut clients: Vec<Client> = names.iter().map(|n| server.login(n, "pw")).collect();
    let sender = &mut clients[0];
    sender.send("broadcast message hello two hundred");
    let own = sender.expect_delivery();
    assert_eq!((own.kind.as_str(), own.from.as_str()), ("BCAST", "u000"));
    sender.expect(&format!("OK broadcast {N} 0"));
    for c in &mut clients[1..] {
        assert_eq!(c.expect_delivery(), own);
    }
    assert_eq!(clients[N - 1].whoelse().len(), N - 1);
}
