//! What `chatcore::guide` says the core does, checked: each test pins one
//! claim a driver relies on, so that a change to the core that breaks the
//! guide fails here. Driven through `Server` directly, not the harness, so
//! that the order of every output (changes, barriers, lines, closes) is
//! visible exactly as a driver sees it.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chatcore::wire::{ByeReason, DecodeError, LineDecoder, ServerLine};
use chatcore::{
    Accounts, Config, HeldRequest, Input, Output, PasswordCheck, Server, SessionId, StoreModel,
    StoreOp, Time,
};

const START: Time = Time::from_unix_secs(1_795_540_321);

/// A minimal driver: the clock moves by hand, changes go to an in-memory
/// store at once, plain-text passwords are checked at once, and pages of
/// boxes are read from the store at once unless `hold_loads` is set.
struct Rig {
    server: Server,
    now: Time,
    store: StoreModel,
    hold_checks: bool,
    hold_loads: bool,
    checks: Vec<PasswordCheck>,
    loads: Vec<HeldRequest>,
}

impl Rig {
    fn new() -> Rig {
        Rig::with(Config::default())
    }

    fn with(config: Config) -> Rig {
        let accounts = Accounts::parse("alice a-pw\nbob b-pw\ncarol c-pw\n").unwrap();
        Rig::restore(config, accounts, StoreModel::default())
    }

    /// A server carrying on from `store`, as after a restart.
    fn restore(config: Config, accounts: Accounts, store: StoreModel) -> Rig {
        Rig {
            server: Server::restore(START, config, accounts, store.restored()),
            now: START,
            store,
            hold_checks: false,
            hold_loads: false,
            checks: Vec::new(),
            loads: Vec::new(),
        }
    }

    /// Every output since the last call, acting on each as a driver does.
    fn drain(&mut self) -> Vec<Output> {
        let mut all = Vec::new();
        while let Some(output) = self.server.poll_output() {
            match &output {
                Output::Persist(op) => self.store.apply(op),
                Output::CheckPassword(check) if self.hold_checks => self.checks.push(check.clone()),
                Output::CheckPassword(check) => {
                    let ok = check
                        .credential
                        .as_ref()
                        .and_then(|c| c.verify_plain(&check.password));
                    let answer = Input::PasswordChecked {
                        session: check.session,
                        check: check.check,
                        ok: ok == Some(true),
                    };
                    self.server.handle_input(self.now, answer);
                }
                Output::LoadHeld(request) if self.hold_loads => self.loads.push(request.clone()),
                Output::LoadHeld(request) => {
                    let answer = self.load(request);
                    self.server.handle_input(self.now, answer);
                }
                _ => {}
            }
            all.push(output);
        }
        all
    }

    fn load(&self, r: &HeldRequest) -> Input {
        Input::HeldLoaded {
            session: r.session,
            load: r.load,
            messages: self.store.held_page(&r.user, r.after, r.upto, r.max),
        }
    }

    fn input(&mut self, input: Input) -> Vec<Output> {
        self.server.handle_input(self.now, input);
        self.drain()
    }

    fn line(&mut self, session: SessionId, line: &str) -> Vec<Output> {
        self.input(Input::Line {
            session,
            line: line.to_string(),
        })
    }

    fn connect(&mut self) -> SessionId {
        let id = self
            .server
            .open_session(self.now, IpAddr::V4(Ipv4Addr::LOCALHOST));
        self.drain();
        id
    }

    /// Logs in; returns the session and the lines it got after `OK login`.
    fn login(&mut self, user: &str, password: &str) -> (SessionId, Vec<String>) {
        let id = self.connect();
        self.line(id, user);
        let lines = lines(&self.line(id, password), id);
        assert_eq!(lines[0], format!("OK login {user}"));
        (id, lines[1..].to_vec())
    }

    fn timeout(&mut self, at: Time) -> Vec<Output> {
        self.now = at;
        self.server.handle_timeout(at);
        self.drain()
    }
}

/// The default configuration with one change, made field by field rather
/// than with a struct literal, which a `#[non_exhaustive]` `Config` forbids.
fn config(change: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    change(&mut config);
    config
}

/// The lines sent to `session`, as on the wire.
fn lines(outputs: &[Output], session: SessionId) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { session: s, line } if *s == session => Some(line.to_string()),
            _ => None,
        })
        .collect()
}

fn position(outputs: &[Output], want: impl Fn(&Output) -> bool) -> usize {
    outputs.iter().position(want).expect("the output is there")
}

fn is_line_to(o: &Output, session: SessionId, start: &str) -> bool {
    matches!(o, Output::Send { session: s, line } if *s == session && line.to_string().starts_with(start))
}

// The round ------------------------------------------------------------------

#[test]
fn close_comes_after_the_bye_and_nothing_for_the_session_follows() {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    let out = rig.line(alice, "logout");
    let bye = position(&out, |o| is_line_to(o, alice, "BYE logout"));
    let close = position(&out, |o| *o == Output::Close { session: alice });
    assert!(bye < close);
    assert!(out[close..]
        .iter()
        .all(|o| !matches!(o, Output::Send { .. })));
    // The core has forgotten the session: what still comes from it is ignored.
    assert_eq!(rig.line(alice, "whoelse"), []);
    assert_eq!(rig.input(Input::Closed { session: alice }), []);
}

#[test]
fn closed_ends_the_session_with_no_line_and_no_close() {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    let out = rig.input(Input::Closed { session: alice });
    assert!(out
        .iter()
        .all(|o| !matches!(o, Output::Send { .. } | Output::Close { .. })));
    assert_eq!(rig.server.session_count(), 0);
    assert_eq!(rig.server.online_users().count(), 0);
}

#[test]
fn only_the_ok_of_a_held_message_waits_behind_a_barrier() {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    let (bob, _) = rig.login("bob", "b-pw");
    // The first message reserves a block of ids: deliveries wait for that.
    let out = rig.line(alice, "message bob one");
    let reserve = position(&out, |o| {
        matches!(o, Output::Persist(StoreOp::ReserveIds { .. }))
    });
    let all = position(&out, |o| *o == Output::Barrier { session: None });
    let delivery = position(&out, |o| is_line_to(o, bob, "MSG "));
    assert!(reserve < all && all < delivery);
    // Later ones: the delivery goes out at once, while its change is still
    // being committed; the sender's OK waits for the change.
    let out = rig.line(alice, "message bob two");
    let hold = position(&out, |o| matches!(o, Output::Persist(StoreOp::Hold { .. })));
    let barrier = position(&out, |o| {
        *o == Output::Barrier {
            session: Some(alice),
        }
    });
    let ok = position(&out, |o| is_line_to(o, alice, "OK message bob delivered"));
    assert!(hold < barrier && barrier < ok);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Barrier { .. }))
            .count(),
        1,
        "{out:#?}"
    );
    assert_eq!(lines(&out, bob).len(), 1);
}

#[test]
fn a_message_held_for_an_offline_user_is_acknowledged_behind_a_barrier() {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    rig.line(alice, "message bob warm-up");
    let out = rig.line(alice, "message bob are you there?");
    let hold = position(&out, |o| matches!(o, Output::Persist(StoreOp::Hold { .. })));
    let barrier = position(&out, |o| {
        *o == Output::Barrier {
            session: Some(alice),
        }
    });
    let ok = position(&out, |o| {
        is_line_to(o, alice, "OK message bob queued offline")
    });
    assert!(hold < barrier && barrier < ok);
}

#[test]
fn replies_that_acknowledge_nothing_durable_never_wait() {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    for command in ["whoelse", "wholast 5", "idle busy", "idle online", "dance"] {
        let out = rig.line(alice, command);
        assert!(
            out.iter().all(|o| !matches!(o, Output::Barrier { .. })),
            "{command}: {out:#?}"
        );
    }
}

#[test]
fn a_failed_login_is_answered_once_its_record_is_durable() {
    let mut rig = Rig::new();
    let id = rig.connect();
    rig.line(id, "alice");
    let out = rig.line(id, "wrong");
    let record = position(&out, |o| {
        matches!(o, Output::Persist(StoreOp::LoginFailures(_)))
    });
    let barrier = position(&out, |o| *o == Output::Barrier { session: Some(id) });
    let err = position(&out, |o| is_line_to(o, id, "ERR bad-credentials"));
    assert!(record < barrier && barrier < err);
}

// Timers -----------------------------------------------------------------------

#[test]
fn the_core_names_its_next_wake_up_and_an_early_one_does_nothing() {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    let (bob, _) = rig.login("bob", "b-pw");
    rig.line(alice, "message bob hi");
    let at = rig.server.poll_timeout().unwrap();
    assert_eq!(at, START + Duration::from_millis(200), "confirm_delay");
    assert_eq!(rig.timeout(at - Duration::from_millis(1)), []);
    let out = rig.timeout(at);
    assert_eq!(lines(&out, bob), ["IDLE 1"]);
    assert!(out.iter().all(|o| !matches!(o, Output::Barrier { .. })));
    assert!(rig.server.poll_timeout().unwrap() > at);
}

#[test]
fn the_core_clock_never_runs_backwards() {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    rig.now = START + Duration::from_secs(10);
    rig.line(alice, "whoelse");
    rig.now = START;
    rig.line(alice, "whoelse");
    assert_eq!(rig.server.now(), START + Duration::from_secs(10));
}

// Confirmation -----------------------------------------------------------------

/// Alice sends bob a message; bob gets it and the probe that confirms it.
fn delivered_and_probed() -> (Rig, SessionId, String) {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    let (bob, _) = rig.login("bob", "b-pw");
    let msg = lines(&rig.line(alice, "message bob hi"), bob).remove(0);
    let at = rig.server.poll_timeout().unwrap();
    assert_eq!(lines(&rig.timeout(at), bob), ["IDLE 1"]);
    (rig, bob, msg)
}

#[test]
fn a_delivery_answered_idle_seq_is_released_and_not_sent_again() {
    let (mut rig, bob, _) = delivered_and_probed();
    let out = rig.line(bob, "idle 1");
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Persist(StoreOp::Release { user, .. }) if user == "bob")));
    rig.input(Input::Closed { session: bob });
    let (_, replay) = rig.login("bob", "b-pw");
    assert_eq!(replay, Vec::<String>::new());
}

#[test]
fn a_delivery_not_answered_with_its_seq_is_sent_again_after_a_drop() {
    let (mut rig, bob, msg) = delivered_and_probed();
    // A bare `idle` is a sign of life, not a confirmation.
    let out = rig.line(bob, "idle");
    assert!(out
        .iter()
        .all(|o| !matches!(o, Output::Persist(StoreOp::Release { .. }))));
    rig.input(Input::Closed { session: bob });
    let (_, replay) = rig.login("bob", "b-pw");
    assert_eq!(replay, ["OFFLINE 1".to_string(), msg]);
}

// Held messages ----------------------------------------------------------------

#[test]
fn commands_wait_behind_a_page_until_the_store_answers() {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    rig.line(alice, "message bob are you there?");
    rig.hold_loads = true;
    let (bob, lines_at_login) = rig.login("bob", "b-pw");
    assert_eq!(lines_at_login, ["OFFLINE 1"]);
    assert_eq!(rig.loads.len(), 1);
    assert_eq!(rig.line(bob, "whoelse"), []);
    let request = rig.loads.remove(0);
    let answer = rig.load(&request);
    let got = lines(&rig.input(answer), bob);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].ends_with(" alice are you there?"));
    assert_eq!(got[1], "WHO alice");
}

#[test]
fn a_page_shorter_than_asked_ends_the_block() {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    rig.line(alice, "message bob lost");
    rig.hold_loads = true;
    let (bob, _) = rig.login("bob", "b-pw");
    let request = rig.loads.remove(0);
    let empty = Input::HeldLoaded {
        session: request.session,
        load: request.load,
        messages: Vec::new(),
    };
    assert_eq!(lines(&rig.input(empty), bob), Vec::<String>::new());
    assert_eq!(lines(&rig.line(bob, "whoelse"), bob), ["WHO alice"]);
}

#[test]
fn an_answer_for_a_session_that_is_gone_is_ignored() {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    rig.line(alice, "message bob hi");
    rig.hold_loads = true;
    let (bob, _) = rig.login("bob", "b-pw");
    rig.input(Input::Closed { session: bob });
    let request = rig.loads.remove(0);
    let answer = rig.load(&request);
    assert_eq!(rig.input(answer), []);
}

#[test]
fn with_pages_the_next_page_waits_for_written() {
    let mut rig = Rig::with(config(|c| c.held_page_size = Some(1)));
    let (alice, _) = rig.login("alice", "a-pw");
    rig.line(alice, "message bob one");
    rig.line(alice, "message bob two");
    let bob = rig.connect();
    rig.line(bob, "bob");
    let out = rig.line(bob, "b-pw");
    let got = lines(&out, bob);
    // A page is followed by a probe, so that it can be confirmed.
    assert_eq!(got[..2], ["OK login bob", "OFFLINE 2"]);
    assert!(got[2].ends_with(" alice one"), "{got:?}");
    assert_eq!(got[3..], ["IDLE 1"]);
    assert_eq!(out.last(), Some(&Output::NotifyWritten { session: bob }));
    let got = lines(&rig.input(Input::Written { session: bob }), bob);
    assert!(got[0].ends_with(" alice two"), "{got:?}");
}

// Shutdown ---------------------------------------------------------------------

#[test]
fn shutdown_says_bye_and_closes_every_connection_in_one_round() {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    let carol = rig.connect(); // asked for a user name
    rig.hold_checks = true;
    let bob = rig.connect();
    rig.line(bob, "bob");
    rig.line(bob, "b-pw"); // its password check is in flight
    let out = rig.input(Input::Shutdown);
    for id in [alice, bob, carol] {
        assert_eq!(lines(&out, id), ["BYE shutdown"]);
        assert!(out.contains(&Output::Close { session: id }));
    }
    assert!(rig.server.is_shut_down());
    assert_eq!(rig.server.session_count(), 0);
    // The check's answer comes too late and is ignored.
    let check = rig.checks.remove(0);
    let late = Input::PasswordChecked {
        session: check.session,
        check: check.check,
        ok: true,
    };
    assert_eq!(rig.input(late), []);
    // A connection accepted after it is refused at once.
    let late = rig
        .server
        .open_session(rig.now, IpAddr::V4(Ipv4Addr::LOCALHOST));
    let out = rig.drain();
    assert_eq!(lines(&out, late), ["HELLO CHAT/1", "BYE shutdown"]);
    assert_eq!(out.last(), Some(&Output::Close { session: late }));
}

#[test]
fn deliveries_unconfirmed_at_shutdown_are_in_the_store_it_leaves() {
    let (mut rig, bob, msg) = delivered_and_probed();
    rig.input(Input::Shutdown);
    assert!(lines(&rig.drain(), bob).is_empty());
    let accounts = rig.server.accounts().clone();
    let mut rig = Rig::restore(Config::default(), accounts, rig.store);
    let (_, replay) = rig.login("bob", "b-pw");
    assert_eq!(replay, ["OFFLINE 1".to_string(), msg]);
}

// Password checks --------------------------------------------------------------

#[test]
fn a_name_with_no_account_is_still_checked_with_no_credential() {
    let mut rig = Rig::new();
    rig.hold_checks = true;
    for name in ["mallory", "message bob hi"] {
        let id = rig.connect();
        rig.line(id, name);
        rig.line(id, "guess");
        let check = rig.checks.remove(0);
        assert_eq!(check.credential, None, "{name}");
        let answer = Input::PasswordChecked {
            session: check.session,
            check: check.check,
            ok: false,
        };
        assert_eq!(
            lines(&rig.input(answer), id),
            ["ERR bad-credentials", "ASK username"]
        );
    }
}

// Transports that hand over lines themselves -----------------------------------

#[test]
fn the_core_refuses_control_characters_in_a_line_handed_over_directly() {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    let (bob, _) = rig.login("bob", "b-pw");
    for bad in [
        "hi \u{1b}[2J",
        "hi\0",
        "hi\u{7f}",
        "hi \u{9b}2J",
        "whoelse\r",
        "a\nwhoelse",
    ] {
        let out = rig.line(alice, &format!("message bob {bad}"));
        assert_eq!(lines(&out, alice), ["ERR bad-encoding"], "{bad:?}");
        assert!(lines(&out, bob).is_empty());
    }
    let out = rig.line(alice, "message bob tab\tok");
    assert_eq!(lines(&out, alice), ["OK message bob delivered"]);
}

#[test]
fn the_core_does_not_measure_a_line_handed_over_directly() {
    let mut rig = Rig::new();
    let (alice, _) = rig.login("alice", "a-pw");
    let (bob, _) = rig.login("bob", "b-pw");
    let long = "x".repeat(3 * Config::default().max_line_bytes);
    let out = rig.line(alice, &format!("message bob {long}"));
    assert_eq!(lines(&out, alice), ["OK message bob delivered"]);
    assert!(lines(&out, bob)[0].ends_with(&long));
}

#[test]
fn a_refused_frame_is_answered_like_a_refused_line() {
    let mut rig = Rig::new();
    let id = rig.connect();
    let too_long = Input::Malformed {
        session: id,
        error: DecodeError::LineTooLong { max: 4096 },
    };
    assert_eq!(
        lines(&rig.input(too_long), id),
        ["ERR line-too-long 4096", "ASK username"]
    );
    let (alice, _) = rig.login("alice", "a-pw");
    let bad = Input::Malformed {
        session: alice,
        error: DecodeError::BadEncoding,
    };
    assert_eq!(lines(&rig.input(bad), alice), ["ERR bad-encoding"]);
}

#[test]
fn the_line_bound_counts_the_terminator_a_frame_lacks() {
    // So a frame of `max_line_bytes - 1` bytes fits and one of
    // `max_line_bytes` does not.
    let max = 8;
    let mut decoder = LineDecoder::new(max);
    let mut fits: &[u8] = b"1234567\n";
    assert_eq!(decoder.decode(&mut fits), Some(Ok("1234567".to_string())));
    let mut too_long: &[u8] = b"12345678\n";
    assert_eq!(
        decoder.decode(&mut too_long),
        Some(Err(DecodeError::LineTooLong { max }))
    );
}

#[test]
fn a_timeout_bye_comes_before_its_close() {
    // As for `logout` above: the driver flushes the `BYE`, then closes.
    let mut rig = Rig::with(config(|c| c.time_out = Duration::from_secs(60)));
    let (alice, _) = rig.login("alice", "a-pw");
    let mut out = Vec::new();
    while !out.contains(&Output::Close { session: alice }) {
        let at = rig.server.poll_timeout().unwrap();
        out = rig.timeout(at);
        rig.line(alice, "idle");
    }
    let bye = position(&out, |o| {
        matches!(
            o,
            Output::Send {
                line: ServerLine::Bye(ByeReason::Timeout),
                ..
            }
        )
    });
    assert!(bye < position(&out, |o| *o == Output::Close { session: alice }));
}
