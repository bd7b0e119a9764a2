//! The world the model runs in (accounts, addresses, the configuration and
//! how the driver behaves), the transitions, and the reference state machine
//! that generates them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chatcore::testing::strategies::{
    hostile_bytes, hostile_line, line_style, render_command, LineStyle,
};
use chatcore::wire::{Audience, Command, IdleArg};
use chatcore::{Accounts, Config, Credential, FloodLimit};
use proptest::prelude::*;
use proptest::sample::select;

pub const USERS: [(&str, &str); 3] = [("ann", "pw-ann"), ("bob", "pw bob"), ("cat", "Pw-Cat")];
/// A valid name that is no account.
pub const STRANGER: &str = "zed";
pub const NAMES: [&str; 4] = ["ann", "bob", "cat", STRANGER];
/// The accounts' names.
pub const ACCOUNTS: [&str; 3] = ["ann", "bob", "cat"];
/// Names for the lockout property: mostly one account, an unknown valid
/// name, and two names that are not valid user names (a reserved word and
/// one with a blank inside), which must never be blocked.
pub const LOCKOUT_NAMES: [&str; 9] = [
    "bob", "bob", "bob", "bob", "bob", "bob", STRANGER, "all", "b o b",
];
/// 2026-11-24T17:12:01.500Z: not on a whole second, so timestamps are
/// visibly truncated.
pub const START_MS: u64 = 1_795_540_321_500;

pub fn ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))
}

/// An address no transition uses, for the final drain.
pub fn fresh_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200))
}

pub fn accounts() -> Accounts {
    let mut a = Accounts::new();
    for (u, p) in USERS {
        a.insert(u, Credential::Plain(p.into())).unwrap();
    }
    a
}

pub fn password(user: &str, right: bool) -> String {
    match USERS.iter().find(|(u, _)| *u == user) {
        Some((_, p)) if right => (*p).to_string(),
        _ => "wrong".to_string(),
    }
}

pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

/// The knobs a case runs with: the core's flood control and page size, and
/// whether the driver answers password checks and `NotifyWritten` at once
/// or leaves them pending for transitions to answer (in any order, with
/// time passing and lines arriving meanwhile).
#[derive(Clone, Debug)]
pub struct Setup {
    pub flood: Option<FloodLimit>,
    pub page: Option<usize>,
    pub checks_later: bool,
    pub written_later: bool,
    pub max_pending_lines: usize,
}

impl Setup {
    /// What the model ran before flood control, pages and slow password
    /// checks were modelled; still one of the generated setups.
    pub const CLASSIC: Setup = Setup {
        flood: None,
        page: None,
        checks_later: false,
        written_later: false,
        max_pending_lines: 64,
    };

    /// Short timers so that a few transitions reach every timeout, and a
    /// small box so that it fills.
    pub fn config(&self) -> Config {
        // `max_unconfirmed` (once the core has it) stays at its default:
        // a case delivers a few dozen messages at most.
        Config::default()
            .with_block_time(Duration::from_secs(60))
            .with_block_after(3)
            .with_time_out(Duration::from_secs(300))
            .with_heartbeat(Duration::from_secs(20))
            .with_heartbeat_timeout(Duration::from_secs(60))
            .with_confirm_delay(Duration::from_millis(200))
            .with_login_timeout(Duration::from_secs(30))
            .with_last_hour_minutes(60)
            .with_max_login_attempts(3)
            .with_max_line_bytes(128)
            .with_max_held_per_user(4)
            .with_flood(self.flood.clone())
            .with_held_page_size(self.page)
            .with_max_pending_lines(self.max_pending_lines)
    }
}

/// Small bursts and backlogs, so that commands wait and the backlog fills
/// within the few commands a case sends between ticks.
fn flood_limit() -> impl Strategy<Value = FloodLimit> {
    (2u32..=3, 1u32..=3, 1usize..=4).prop_map(|(burst, per_second, backlog)| FloodLimit {
        burst,
        per_second,
        backlog,
    })
}

fn setup_with(
    flood: f64,
    page: f64,
    checks_later: f64,
    written_later: f64,
) -> BoxedStrategy<Setup> {
    (
        proptest::option::weighted(flood, flood_limit()),
        // Boxes hold a few messages: small pages, so that blocks span
        // several.
        proptest::option::weighted(
            page,
            prop_oneof![3 => Just(1usize), 2 => Just(2), 1 => Just(3)],
        ),
        proptest::bool::weighted(checks_later),
        proptest::bool::weighted(written_later),
        1usize..=4,
    )
        .prop_map(
            |(flood, page, checks_later, written_later, max_pending_lines)| Setup {
                flood,
                page,
                checks_later,
                written_later,
                max_pending_lines,
            },
        )
        .boxed()
}

/// Any setup, the classic one included.
pub fn any_setup() -> BoxedStrategy<Setup> {
    prop_oneof![
        1 => Just(Setup::CLASSIC),
        3 => setup_with(0.6, 0.6, 0.6, 0.6),
    ]
    .boxed()
}

/// Half the classic setup (boxes fill fastest without flood control), half
/// flood control and pages (the paging property goes further).
pub fn traffic_setup() -> BoxedStrategy<Setup> {
    prop_oneof![
        1 => Just(Setup::CLASSIC),
        1 => setup_with(0.8, 0.8, 0.3, 0.7),
    ]
    .boxed()
}

/// Mostly slow password checks.
pub fn login_setup() -> BoxedStrategy<Setup> {
    prop_oneof![
        1 => Just(Setup::CLASSIC),
        3 => setup_with(0.4, 0.4, 0.9, 0.5),
    ]
    .boxed()
}

/// Always pages of one or two, written late; flood control half the time.
/// Password checks are answered at once: logins are not what this is about.
pub fn paging_setup() -> BoxedStrategy<Setup> {
    (
        proptest::option::weighted(0.5, flood_limit()),
        prop_oneof![2 => Just(1usize), 1 => Just(2)],
        1usize..=4,
    )
        .prop_map(|(flood, page, max_pending_lines)| Setup {
            flood,
            page: Some(page),
            checks_later: false,
            written_later: true,
            max_pending_lines,
        })
        .boxed()
}

/// Always slow password checks: answers come back in any order.
pub fn lockout_setup() -> BoxedStrategy<Setup> {
    setup_with(0.3, 0.3, 1.0, 0.5)
}

// ---------------------------------------------------------------------------
// Transitions.

/// Bytes that print as an escaped string, so shrunk cases stay readable.
#[derive(Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// One step. Sessions are named by the order they were opened in (`s`),
/// across restarts; a step on a session that is gone does nothing.
#[derive(Clone, Debug)]
pub enum Transition {
    /// A client connects from `10.0.0.<ip>`.
    Connect { ip: u8 },
    /// Session `s` answers `ASK username` and `ASK password` (whichever it
    /// is asked; nothing while its password is being checked).
    Login {
        s: usize,
        user: &'static str,
        right: bool,
    },
    /// Several clients connect from `10.0.0.<ip>` and each answers `ASK
    /// username` with `user` and `ASK password` with the right password or
    /// not (one per entry of `right`): parallel logins for one pair.
    Parallel {
        ip: u8,
        user: &'static str,
        right: Vec<bool>,
    },
    /// Session `s` sends `line` and a `\n`.
    Send { s: usize, line: String },
    /// Session `s` sends raw bytes (no terminator added).
    SendBytes { s: usize, bytes: Bytes },
    /// Session `s`'s connection dies (reset, no `logout`).
    Close { s: usize },
    /// Session `s` closes its sending half (EOF) but keeps reading.
    EndInput { s: usize },
    /// Session `s` answers its latest `IDLE <seq>` (bare `idle` if none).
    AnswerProbe { s: usize },
    /// The driver answers one of the pending password checks, with the
    /// right `ok`: the `pick`-th oldest (modulo how many are pending).
    AnswerCheck { pick: usize },
    /// The driver reports one pending `NotifyWritten` as written (the
    /// `pick`-th oldest, modulo how many are pending).
    Written { pick: usize },
    /// Time passes; every deadline on the way is run.
    Tick { millis: u64 },
    /// Time passes and the driver wakes late (a loaded machine): the
    /// deadlines passed on the way run, each at its own moment, and what
    /// they asked of the driver is answered only at the end.
    Jump { millis: u64 },
    /// `Input::Shutdown`, then a new server restored from the store.
    Shutdown,
    /// The process dies; a new server is restored from the store.
    Crash,
}

// ---------------------------------------------------------------------------
// The reference model: only what generation needs.

#[derive(Clone, Debug)]
pub struct RefSession {
    alive: bool,
    user: Option<&'static str>,
    /// Its password is being checked (when checks are answered later).
    checking: bool,
}

/// Roughly which sessions are alive and whose they are (a login whose
/// check is pending counts as done, so that lines are sent ahead of the
/// answer), which password checks are pending (in the order the driver
/// keeps them, as long as every login asks for one), and a counter that
/// makes every message text unique.
#[derive(Clone, Debug)]
pub struct Model {
    pub setup: Setup,
    sessions: Vec<RefSession>,
    next_tag: u32,
    checks: Vec<usize>,
}

/// How often each kind of transition is generated.
pub struct Weights {
    connect: u32,
    login: u32,
    wrong_password: u32,
    send: u32,
    hostile: u32,
    close: u32,
    end_input: u32,
    probe: u32,
    tick: u32,
    /// Of ticks: how many are short (< 1.5 s), medium (1-25 s: heartbeats,
    /// login timeouts) and long (25-400 s: every timeout).
    tick_lengths: [u32; 3],
    jump: u32,
    restart: u32,
    answer: u32,
    written: u32,
    parallel: u32,
}

/// One property's generation: weights, addresses, names and setups.
pub struct Profile {
    weights: Weights,
    /// Connections come from `10.0.0.1` to `10.0.0.<ips>`, the first most.
    ips: u8,
    names: &'static [&'static str],
    /// Whom commands name.
    recipients: &'static [&'static str],
    setup: fn() -> BoxedStrategy<Setup>,
}

/// Everything, commands most.
pub const GENERAL: Profile = Profile {
    weights: Weights {
        connect: 3,
        login: 6,
        wrong_password: 1,
        send: 14,
        hostile: 1,
        close: 1,
        end_input: 1,
        probe: 4,
        tick: 6,
        tick_lengths: [5, 3, 1],
        jump: 1,
        restart: 1,
        answer: 8,
        written: 4,
        parallel: 0,
    },
    ips: 2,
    names: &NAMES,
    recipients: &NAMES,
    setup: any_setup,
};

/// Long conversations: many commands, few logins, boxes filling up, the
/// flood backlog filling, pages. Messages go to accounts only, so that more
/// of them fill boxes.
pub const TRAFFIC: Profile = Profile {
    weights: Weights {
        connect: 2,
        login: 4,
        wrong_password: 0,
        send: 24,
        hostile: 0,
        close: 2,
        end_input: 1,
        probe: 6,
        tick: 5,
        tick_lengths: [6, 3, 1],
        jump: 1,
        restart: 1,
        answer: 8,
        written: 8,
        parallel: 0,
    },
    ips: 2,
    names: &NAMES,
    recipients: &ACCOUNTS,
    setup: traffic_setup,
};

/// Logins from two addresses, half of them wrong, and time: lockout,
/// attempts per connection, login timeout, already-online.
pub const LOGIN: Profile = Profile {
    weights: Weights {
        connect: 4,
        login: 10,
        wrong_password: 8,
        send: 2,
        hostile: 1,
        close: 1,
        end_input: 1,
        probe: 1,
        tick: 4,
        tick_lengths: [5, 3, 1],
        jump: 0,
        restart: 1,
        answer: 8,
        written: 2,
        parallel: 1,
    },
    ips: 2,
    names: &NAMES,
    recipients: &NAMES,
    setup: login_setup,
};

/// Users coming and going (so that boxes fill while they are away) and
/// readers slow to take their pages: commands and live messages pile up
/// behind `OFFLINE` blocks, and flood control delays what follows.
pub const PAGING: Profile = Profile {
    weights: Weights {
        connect: 4,
        login: 6,
        wrong_password: 0,
        send: 24,
        hostile: 0,
        close: 5,
        end_input: 1,
        probe: 4,
        tick: 10,
        tick_lengths: [8, 2, 0],
        jump: 2,
        restart: 1,
        answer: 0,
        written: 3,
        parallel: 0,
    },
    ips: 2,
    names: &NAMES,
    recipients: &ACCOUNTS,
    setup: paging_setup,
};

/// Many connections of one address logging in as one name at once, mostly
/// wrong, with the checks answered in any order.
pub const LOCKOUT: Profile = Profile {
    weights: Weights {
        connect: 6,
        login: 1,
        wrong_password: 11,
        send: 1,
        hostile: 0,
        close: 1,
        end_input: 1,
        probe: 1,
        tick: 2,
        tick_lengths: [8, 1, 0],
        jump: 0,
        restart: 1,
        answer: 5,
        written: 1,
        parallel: 4,
    },
    ips: 2,
    names: &LOCKOUT_NAMES,
    recipients: &NAMES,
    setup: lockout_setup,
};

fn text_suffix() -> impl Strategy<Value = &'static str> {
    select(
        &[
            "",
            "hi",
            "I am idle",
            "keep it idle",
            "idle",
            "idleidle",
            "ÉCHO ✓",
            "a\tb",
            "two  spaces  ",
            "all",
            "message x",
        ][..],
    )
}

fn tagged(tag: u32, suffix: &str) -> String {
    if suffix.is_empty() {
        format!("#{tag}")
    } else {
        format!("#{tag} {suffix}")
    }
}

/// A command a logged-in client might send, typed in a random style.
fn command_line(tag: u32, recipients: &'static [&'static str]) -> impl Strategy<Value = String> {
    let name = || select(recipients);
    let cmd = prop_oneof![
        6 => (name(), text_suffix()).prop_map(move |(to, sfx)| Command::Message {
            to: to.into(),
            text: tagged(tag, sfx),
        }),
        4 => (
            prop_oneof![
                Just(Audience::Online),
                Just(Audience::All),
                proptest::collection::vec(name(), 1..4)
                    .prop_map(|v| Audience::Users(v.into_iter().map(String::from).collect())),
            ],
            text_suffix()
        )
            .prop_map(move |(audience, sfx)| Command::Broadcast {
                audience,
                text: tagged(tag, sfx),
            }),
        2 => Just(Command::WhoElse),
        2 => prop_oneof![0u64..3, 0u64..70].prop_map(|minutes| Command::WhoLast { minutes }),
        3 => Just(Command::Idle(IdleArg::Busy)),
        3 => Just(Command::Idle(IdleArg::Online)),
        1 => Just(Command::Idle(IdleArg::None)),
        1 => Just(Command::Logout),
    ];
    prop_oneof![
        12 => (cmd, prop_oneof![Just(LineStyle::plain()), line_style()]).prop_map(|(c, s)| render_command(&c, &s)),
        1 => select(&["message ann", "broadcast user zed message hi", "wholast 32 idle", "dance", "", "   ", "idle later"][..])
            .prop_map(String::from),
    ]
}

/// A weighted choice that leaves out the options weighted 0 (which
/// `Union` refuses).
fn one_of(options: Vec<(u32, BoxedStrategy<Transition>)>) -> BoxedStrategy<Transition> {
    proptest::strategy::Union::new_weighted(options.into_iter().filter(|(w, _)| *w > 0).collect())
        .boxed()
}

impl Model {
    pub fn init(profile: &Profile) -> BoxedStrategy<Model> {
        (profile.setup)()
            .prop_map(|setup| Model {
                setup,
                sessions: Vec::new(),
                next_tag: 0,
                checks: Vec::new(),
            })
            .boxed()
    }

    pub fn transitions_with(&self, p: &Profile) -> BoxedStrategy<Transition> {
        let state = self;
        let w = &p.weights;
        let [short, medium, long] = w.tick_lengths;
        let tick = prop_oneof![
            short => 0u64..1_500,
            medium => 1_000u64..25_000,
            long => 25_000u64..400_000,
        ]
        .prop_map(|millis| Transition::Tick { millis });
        let jump = prop_oneof![3 => 0u64..3_000, 1 => 3_000u64..40_000]
            .prop_map(|millis| Transition::Jump { millis });
        let ips = p.ips;
        let connect = prop_oneof![3 => Just(1u8), 1 => 1u8..=ips]
            .prop_map(|ip| Transition::Connect { ip })
            .boxed();
        let answer_w = if state.setup.checks_later && !state.checks.is_empty() {
            w.answer
        } else {
            0
        };
        let answer = prop_oneof![2 => Just(0usize), 3 => 1usize..6]
            .prop_map(|pick| Transition::AnswerCheck { pick });
        let written_w = if state.setup.written_later && state.setup.page.is_some() {
            w.written
        } else {
            0
        };
        let written = (0usize..4).prop_map(|pick| Transition::Written { pick });
        let parallel_w = if state.setup.checks_later {
            w.parallel
        } else {
            0
        };
        let parallel = (
            prop_oneof![3 => Just(1u8), 1 => 1u8..=ips],
            select(p.names),
            proptest::collection::vec(proptest::bool::weighted(0.15), 2..6),
        )
            .prop_map(|(ip, user, right)| Transition::Parallel { ip, user, right });
        if !state.sessions.iter().any(|s| s.alive) {
            return one_of(vec![
                (6, connect),
                (parallel_w, parallel.boxed()),
                (1, tick.boxed()),
                (1, Just(Transition::Crash).boxed()),
                (answer_w, answer.boxed()),
                (written_w, written.boxed()),
            ]);
        }
        let alive: Vec<usize> = (0..state.sessions.len())
            .filter(|i| state.sessions[*i].alive)
            .collect();
        let logged: Vec<usize> = alive
            .iter()
            .copied()
            .filter(|i| state.sessions[*i].user.is_some())
            .collect();
        let waiting: Vec<usize> = alive
            .iter()
            .copied()
            .filter(|i| state.sessions[*i].user.is_none() && !state.sessions[*i].checking)
            .collect();
        let any_s = || select(alive.clone());
        let tag = state.next_tag;
        let free: Vec<&'static str> = p
            .names
            .iter()
            .copied()
            .filter(|n| !state.sessions.iter().any(|x| x.alive && x.user == Some(*n)))
            .collect();
        let free = if free.is_empty() {
            p.names.to_vec()
        } else {
            free
        };
        let login = if waiting.is_empty() {
            connect.clone()
        } else {
            (
                select(waiting.clone()),
                prop_oneof![3 => select(free), 1 => select(p.names)],
                prop_oneof![w.login => Just(true), w.wrong_password => Just(false)],
            )
                .prop_map(|(s, user, right)| Transition::Login { s, user, right })
                .boxed()
        };
        let send = if logged.is_empty() {
            login.clone()
        } else {
            (select(logged.clone()), command_line(tag, p.recipients))
                .prop_map(|(s, line)| Transition::Send { s, line })
                .boxed()
        };
        let hostile = (any_s(), hostile_line()).prop_map(|(s, line)| Transition::Send { s, line });
        let bytes = (any_s(), hostile_bytes())
            .prop_map(|(s, b)| Transition::SendBytes { s, bytes: Bytes(b) });
        let close = any_s().prop_map(|s| Transition::Close { s });
        let end_input = any_s().prop_map(|s| Transition::EndInput { s });
        let probe = if logged.is_empty() {
            tick.clone().boxed()
        } else {
            select(logged.clone())
                .prop_map(|s| Transition::AnswerProbe { s })
                .boxed()
        };
        one_of(vec![
            (w.connect, connect),
            (parallel_w, parallel.boxed()),
            (w.login + w.wrong_password, login),
            (w.send, send),
            (w.hostile, hostile.boxed()),
            (w.hostile, bytes.boxed()),
            (w.close, close.boxed()),
            (w.end_input, end_input.boxed()),
            (w.probe, probe),
            (w.tick, tick.boxed()),
            (w.jump, jump.boxed()),
            (w.restart, Just(Transition::Shutdown).boxed()),
            (w.restart, Just(Transition::Crash).boxed()),
            (answer_w, answer.boxed()),
            (written_w, written.boxed()),
        ])
    }

    pub fn allows(&self, t: &Transition) -> bool {
        match t {
            Transition::Login { s, .. }
            | Transition::Send { s, .. }
            | Transition::SendBytes { s, .. }
            | Transition::Close { s }
            | Transition::EndInput { s }
            | Transition::AnswerProbe { s } => *s < self.sessions.len(),
            _ => true,
        }
    }

    pub fn step(mut self, t: &Transition) -> Model {
        let state = &mut self;
        match t {
            Transition::Connect { .. } => state.sessions.push(RefSession {
                alive: true,
                user: None,
                checking: false,
            }),
            Transition::Parallel { right, .. } => {
                for _ in right {
                    let s = state.sessions.len();
                    state.sessions.push(RefSession {
                        alive: true,
                        user: None,
                        checking: true,
                    });
                    state.checks.push(s);
                }
            }
            Transition::Login { s, user, right } => {
                let taken = state
                    .sessions
                    .iter()
                    .any(|x| x.alive && x.user == Some(*user));
                let r = &mut state.sessions[*s];
                if r.alive && r.user.is_none() && !r.checking {
                    if state.setup.checks_later {
                        r.checking = true;
                        state.checks.push(*s);
                    }
                    if *right && USERS.iter().any(|(u, _)| u == user) && !taken {
                        r.user = Some(user);
                    }
                }
            }
            Transition::Send { s, line } => {
                state.next_tag += 1;
                if Command::parse(line) == Ok(Command::Logout) && state.sessions[*s].user.is_some()
                {
                    state.sessions[*s].alive = false;
                }
            }
            Transition::Close { s } | Transition::EndInput { s } => {
                state.sessions[*s].alive = false
            }
            Transition::AnswerCheck { pick } => {
                if !state.checks.is_empty() {
                    let i = pick % state.checks.len();
                    let s = state.checks.remove(i);
                    state.sessions[s].checking = false;
                }
            }
            Transition::Tick { millis } => {
                for r in &mut state.sessions {
                    if *millis >= 30_000 && r.user.is_none() || *millis >= 60_000 {
                        r.alive = false;
                    }
                }
            }
            Transition::Shutdown | Transition::Crash => {
                for r in &mut state.sessions {
                    r.alive = false;
                }
                state.checks.clear();
            }
            Transition::Jump { millis } => {
                for r in &mut state.sessions {
                    if *millis >= 30_000 && r.user.is_none() {
                        r.alive = false;
                    }
                }
            }
            Transition::SendBytes { .. }
            | Transition::AnswerProbe { .. }
            | Transition::Written { .. } => {}
        }
        self
    }
}
