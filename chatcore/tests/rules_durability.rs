//! PROTOCOL.md §6, what waits for the disk: the core's raw outputs, read
//! in order, show which lines a driver may write before the changes before
//! them are durable (deliveries, probes, plain replies) and which wait
//! behind an `Output::Barrier` (the `OK` that accepts a message, the answer
//! to a failed login, deliveries carrying ids of a block just reserved).

use std::net::{IpAddr, Ipv4Addr};

use chatcore::server::ID_BLOCK;
use chatcore::testing::accounts;
use chatcore::wire::ServerLine;
use chatcore::{Config, Input, Output, Server, SessionId, StoreOp, Time};

mod common;

use common::USERS;

const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One output, reduced to what these rules are about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Line(SessionId, String),
    Persist(&'static str),
    Barrier(Option<SessionId>),
}

struct Driver {
    server: Server,
    now: Time,
}

impl Driver {
    fn new(config: Config) -> Driver {
        let now = Time::from_unix_secs(1_795_540_321);
        Driver {
            server: Server::new(now, config, accounts(USERS)),
            now,
        }
    }

    /// Every output since the last call, password checks answered.
    fn outputs(&mut self) -> Vec<Seen> {
        let mut seen = Vec::new();
        while let Some(output) = self.server.poll_output() {
            match output {
                Output::Send { session, line } => seen.push(Seen::Line(session, line.to_string())),
                Output::Persist(op) => seen.push(Seen::Persist(match op {
                    StoreOp::Hold { .. } => "hold",
                    StoreOp::Release { .. } => "release",
                    StoreOp::ReserveIds { .. } => "reserve",
                    StoreOp::Seen { .. } => "seen",
                    StoreOp::LoginFailures(_) => "failures",
                    StoreOp::ClearLoginFailures { .. } => "clear",
                })),
                Output::Barrier { session } => seen.push(Seen::Barrier(session)),
                Output::CheckPassword(check) => {
                    let ok = check
                        .credential
                        .as_ref()
                        .and_then(|c| c.verify_plain(&check.password))
                        .unwrap_or(false);
                    let answer = Input::PasswordChecked {
                        session: check.session,
                        check: check.check,
                        ok,
                    };
                    self.server.handle_input(self.now, answer);
                }
                // No box is read in these rules.
                Output::Close { .. }
                | Output::NotifyWritten { .. }
                | Output::LoadHeld(_)
                | Output::Event(_) => {}
            }
        }
        seen
    }

    fn line(&mut self, session: SessionId, line: &str) -> Vec<Seen> {
        let input = Input::Line {
            session,
            line: line.to_string(),
        };
        self.server.handle_input(self.now, input);
        self.outputs()
    }

    fn logged_in(&mut self, user: &str, password: &str) -> SessionId {
        let s = self.server.open_session(self.now, HOME);
        self.line(s, user);
        let out = self.line(s, password);
        assert!(
            out.contains(&Seen::Line(s, format!("OK login {user}"))),
            "{out:?}"
        );
        s
    }
}

fn position(out: &[Seen], want: impl Fn(&Seen) -> bool) -> usize {
    out.iter()
        .position(want)
        .unwrap_or_else(|| panic!("not in {out:?}"))
}

fn delivery_to(s: SessionId) -> impl Fn(&Seen) -> bool {
    move |o| matches!(o, Seen::Line(to, l) if *to == s && l.starts_with("MSG "))
}

#[test]
fn a_delivery_goes_out_before_the_commit_and_the_ok_waits_for_it() {
    let mut d = Driver::new(Config::default());
    let alice = d.logged_in("alice", "a-pw");
    let bob = d.logged_in("bob", "b-pw");
    // The first message reserves a block of ids: its delivery waits for
    // that (a barrier for deliveries), and so does the `OK`.
    let first = d.line(alice, "message bob first");
    let reserve = position(&first, |o| *o == Seen::Persist("reserve"));
    let for_deliveries = position(&first, |o| *o == Seen::Barrier(None));
    assert!(reserve < for_deliveries);
    assert!(for_deliveries < position(&first, delivery_to(bob)));
    // The next one: the copy kept for bob is persisted, bob's delivery
    // follows with no barrier for bob between, and alice's `OK` comes
    // behind a barrier for her, after the copy.
    let out = d.line(alice, "message bob second");
    let hold = position(&out, |o| *o == Seen::Persist("hold"));
    let delivery = position(&out, delivery_to(bob));
    let barrier = position(&out, |o| *o == Seen::Barrier(Some(alice)));
    let ok = position(&out, |o| {
        *o == Seen::Line(alice, "OK message bob delivered".into())
    });
    assert!(
        hold < delivery && delivery < barrier && barrier < ok,
        "{out:?}"
    );
    assert!(
        !out.iter().any(|o| matches!(o, Seen::Barrier(None))),
        "{out:?}"
    );
}

#[test]
fn a_reply_that_persisted_nothing_waits_for_nothing() {
    let mut d = Driver::new(Config::default().with_persist_deliveries(false));
    let alice = d.logged_in("alice", "a-pw");
    let _bob = d.logged_in("bob", "b-pw");
    d.line(alice, "message bob first");
    // Delivered live and not persisted: nothing to wait for.
    let out = d.line(alice, "message bob second");
    assert!(
        !out.iter()
            .any(|o| matches!(o, Seen::Persist(_) | Seen::Barrier(_))),
        "{out:?}"
    );
    let out = d.line(alice, "whoelse");
    assert_eq!(out, [Seen::Line(alice, "WHO bob".into())]);
}

#[test]
fn a_message_held_offline_is_acknowledged_behind_a_barrier() {
    let mut d = Driver::new(Config::default());
    let alice = d.logged_in("alice", "a-pw");
    d.line(alice, "message carol first");
    let out = d.line(alice, "broadcast all second");
    let last_hold = out
        .iter()
        .rposition(|o| *o == Seen::Persist("hold"))
        .expect("held");
    let barrier = position(&out, |o| *o == Seen::Barrier(Some(alice)));
    let ok = position(
        &out,
        |o| matches!(o, Seen::Line(s, l) if *s == alice && l.starts_with("OK broadcast")),
    );
    assert!(last_hold < barrier && barrier < ok, "{out:?}");
}

#[test]
fn the_answer_to_a_failed_login_waits_for_its_record() {
    let mut d = Driver::new(Config::default());
    let s = d.server.open_session(d.now, HOME);
    d.outputs();
    d.line(s, "alice");
    let out = d.line(s, "wrong");
    let record = position(&out, |o| *o == Seen::Persist("failures"));
    let barrier = position(&out, |o| *o == Seen::Barrier(Some(s)));
    let answer = position(&out, |o| {
        *o == Seen::Line(
            s,
            ServerLine::Err(chatcore::wire::ErrorReply::BadCredentials).to_string(),
        )
    });
    assert!(record < barrier && barrier < answer, "{out:?}");
}

#[test]
fn ids_are_reserved_half_a_block_ahead() {
    let n = ID_BLOCK * 3 / 2 + 1;
    let config = Config::default()
        .with_flood(None)
        .with_max_held_per_user(n as usize);
    let mut d = Driver::new(config);
    let alice = d.logged_in("alice", "a-pw");
    let mut reservations = Vec::new();
    for n in 0..n {
        let out = d.line(alice, "message carol x");
        if out.contains(&Seen::Barrier(None)) {
            reservations.push(n);
        }
    }
    // Each block is reserved when half of the one before is used, so the
    // commit is long done when its first id goes out.
    assert_eq!(reservations, [0, ID_BLOCK / 2, ID_BLOCK * 3 / 2]);
}
