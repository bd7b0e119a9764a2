//! The whole core, fed arbitrary sequences of connections, lines, closes,
//! end-of-input, password answers, clock jumps, store outages, slow reads
//! of held messages and shutdowns. It must never panic, never
//! write to a session after closing it, never close one twice, and never
//! ask to be woken in the past.
#![no_main]

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use arbitrary::Arbitrary;
use chatcore::{
    Accounts, Config, FloodLimit, HeldRequest, Input, Output, PasswordCheck, Server, SessionId,
    StoreModel, Time,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Connect { ip: u8 },
    Line { session: u8, line: String },
    Known { session: u8, which: u8, arg: u8 },
    Close { session: u8 },
    Answer { ok: bool },
    Tick { millis: u32 },
    Shutdown,
    Written,
}

const LINES: &[&str] = &[
    "alice",
    "a-pw",
    "bob",
    "b-pw",
    "whoelse",
    "wholast 5",
    "idle busy",
    "idle online",
    "logout",
    "message bob hi",
    "message alice yo",
    "broadcast all x",
    "broadcast user bob message y",
    "broadcast hello",
    "idle",
    "idle 1",
    "idle 2",
    "idlewhoelseidle",
    "wholast 60",
];

/// `Op::Line` with this text is the peer's end of input.
const EOF: &str = "\u{4}";
/// `Op::Line` with this text: the store stops committing.
const STORE_DOWN: &str = "\u{15}";
/// `Op::Line` with this text: the store commits again.
const STORE_UP: &str = "\u{6}";
/// `Op::Line` with this text: pages of boxes are answered late (the next
/// time this line comes), not at once.
const SLOW_LOADS: &str = "\u{12}";

fuzz_target!(|ops: Vec<Op>| {
    let accounts = Accounts::parse("alice a-pw\nbob b-pw\ncarol c-pw\n").unwrap();
    let config = Config::default()
        .with_max_held_per_user(3)
        .with_heartbeat(Duration::from_secs(2))
        .with_heartbeat_timeout(Duration::from_secs(5))
        .with_time_out(Duration::from_secs(20))
        .with_login_timeout(Duration::from_secs(10))
        .with_block_time(Duration::from_secs(5))
        .with_max_pending_lines(4)
        .with_held_page_size(Some(2))
        .with_flood(Some(FloodLimit {
            burst: 3,
            per_second: 2,
            backlog: 4,
        }));
    let mut now = Time::from_unix_secs(1_795_540_321);
    let mut server = Server::new(now, config, accounts);
    let mut sessions: Vec<SessionId> = Vec::new();
    let mut closed: HashSet<SessionId> = HashSet::new();
    let mut checks: VecDeque<PasswordCheck> = VecDeque::new();
    let mut written: VecDeque<SessionId> = VecDeque::new();
    let mut store = StoreModel::default();
    let mut loads: VecDeque<HeldRequest> = VecDeque::new();
    let mut slow_loads = false;
    let pick = |sessions: &Vec<SessionId>, n: u8| -> Option<SessionId> {
        (!sessions.is_empty()).then(|| sessions[usize::from(n) % sessions.len()])
    };
    for op in ops.into_iter().take(256) {
        match op {
            Op::Connect { ip } => {
                let peer = IpAddr::V4(Ipv4Addr::new(127, 0, 0, ip % 3));
                sessions.push(server.open_session(now, peer));
            }
            // Driver events the first `Op`s did not have ride on three
            // reserved lines, so that the corpus keeps decoding as it did.
            Op::Line { line, .. } if line == STORE_DOWN => server.handle_input(
                now,
                Input::StoreUnavailable {
                    detail: "disk full".into(),
                },
            ),
            Op::Line { line, .. } if line == STORE_UP => {
                server.handle_input(now, Input::StoreAvailable)
            }
            Op::Line { line, .. } if line == SLOW_LOADS => slow_loads = !slow_loads,
            Op::Line { session, line } => {
                if let Some(s) = pick(&sessions, session) {
                    let input = if line == EOF {
                        Input::InputEnded { session: s }
                    } else {
                        Input::Line { session: s, line }
                    };
                    server.handle_input(now, input);
                }
            }
            Op::Known {
                session,
                which,
                arg,
            } => {
                if let Some(s) = pick(&sessions, session) {
                    let line =
                        LINES[usize::from(which) % LINES.len()].replace('1', &arg.to_string());
                    server.handle_input(now, Input::Line { session: s, line });
                }
            }
            Op::Close { session } => {
                if let Some(s) = pick(&sessions, session) {
                    server.handle_input(now, Input::Closed { session: s });
                    closed.insert(s);
                }
            }
            Op::Answer { ok } => {
                if let Some(c) = checks.pop_front() {
                    let ok = ok
                        && c.credential
                            .as_ref()
                            .and_then(|k| k.verify_plain(&c.password))
                            .unwrap_or(false);
                    server.handle_input(
                        now,
                        Input::PasswordChecked {
                            session: c.session,
                            check: c.check,
                            ok,
                        },
                    );
                }
            }
            Op::Tick { millis } => {
                now = now + Duration::from_millis(u64::from(millis % 120_000));
                server.handle_timeout(now);
                if let Some(next) = server.poll_timeout() {
                    assert!(next > now, "woken for {next:?} at {now:?}");
                }
            }
            Op::Shutdown => server.handle_input(now, Input::Shutdown),
            Op::Written => {
                if let Some(session) = written.pop_front() {
                    server.handle_input(now, Input::Written { session });
                }
            }
        }
        loop {
            while let Some(out) = server.poll_output() {
                match out {
                    Output::Send { session, line } => {
                        assert!(
                            !closed.contains(&session),
                            "{line} after close of {session}"
                        );
                    }
                    Output::Close { session } => assert!(closed.insert(session), "closed twice"),
                    Output::CheckPassword(c) => checks.push_back(c),
                    Output::NotifyWritten { session } => written.push_back(session),
                    Output::Persist(op) => store.apply(&op),
                    Output::LoadHeld(request) => loads.push_back(request),
                    Output::Barrier { .. } | Output::Event(_) => {}
                }
            }
            if slow_loads {
                break;
            }
            let Some(r) = loads.pop_front() else {
                break;
            };
            let messages = store.held_page(&r.user, r.after, r.upto, r.max);
            server.handle_input(
                now,
                Input::HeldLoaded {
                    session: r.session,
                    load: r.load,
                    messages,
                },
            );
        }
    }
});
