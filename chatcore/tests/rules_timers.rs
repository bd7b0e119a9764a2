//! PROTOCOL.md §3 and §6 deadlines, whatever the driver's timing: the core
//! runs every deadline that has passed before it looks at anything new, so
//! a driver that calls `handle_timeout` late, early or not at all gets what
//! one that calls it at every deadline gets.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chatcore::testing::{accounts, START};
use chatcore::wire::{Ask, ByeReason, ErrorReply, ServerLine};
use chatcore::{Config, Input, Output, Server, SessionId};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn drain(server: &mut Server) -> Vec<Output> {
    std::iter::from_fn(|| server.poll_output()).collect()
}

fn lines_to(outputs: &[Output], to: SessionId) -> Vec<ServerLine> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { session, line } if *session == to => Some(line.clone()),
            _ => None,
        })
        .collect()
}

/// The login timeout is 60 s; a driver that never called `handle_timeout`
/// hands the user name in at 120 s. The connection is over: the name must
/// not be taken and answered with `ASK password`.
#[test]
fn a_user_name_after_the_login_timeout_is_too_late_without_handle_timeout() {
    let mut server = Server::new(START, Config::default(), accounts(&[("alice", "pw")]));
    let s = server.open_session(START, LOCALHOST);
    drain(&mut server);
    server.handle_input(
        START + Duration::from_secs(120),
        Input::Line {
            session: s,
            line: "alice".into(),
        },
    );
    let out = drain(&mut server);
    assert_eq!(
        lines_to(&out, s),
        [ServerLine::Bye(ByeReason::LoginTimeout)]
    );
    assert!(out.contains(&Output::Close { session: s }), "{out:?}");
    assert!(!lines_to(&out, s).contains(&ServerLine::Ask(Ask::Password)));
    assert_eq!(server.session_count(), 0);
}

// The property: the driver's timing does not matter ---------------------------

use std::collections::{BTreeMap, VecDeque};

use chatcore::testing::strategies::{client_line, free_text};
use chatcore::{Event, FloodLimit, HeldRequest, PasswordCheck, StoreModel, StoreOp, Time};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config as ProptestConfig;

const USERS: &[(&str, &str)] = &[("ann", "a"), ("bob", "b"), ("cat", "c"), ("dan", "d")];

/// What a session sends.
#[derive(Clone, Debug)]
enum Say {
    /// User `i`'s name.
    Name(usize),
    /// User `i`'s password, or a wrong one.
    Password(usize, bool),
    /// `idle <seq>` for the latest probe the session got (a bare `idle`
    /// before the first): what a client that confirms does.
    AnswerProbe,
    /// Any other line.
    Text(String),
}

/// One step of a script. Times only move forward.
#[derive(Clone, Debug)]
enum Step {
    /// Time passes; nothing is called.
    Wait(Duration),
    /// Time passes, then the driver calls `handle_timeout` (the reference
    /// driver does not: it calls it at every deadline anyway).
    Timeout(Duration),
    /// A connection opens, from one of two addresses.
    Open(bool),
    /// The `i`-th session opened (modulo how many) sends a line.
    Line(usize, Say),
    /// The `i`-th session's peer goes away.
    Closed(usize),
    /// The `i`-th session's peer sends EOF.
    InputEnded(usize),
    /// A new connection logs in as user `u` (three inputs).
    LogIn(usize),
    /// The users file is read again, unchanged (`set_accounts`).
    Reload,
    /// Every session answers its latest probe, as live clients do.
    AnswerProbes,
    /// [`Step::AnswerProbes`] spelled out: the line each session sends, in
    /// the order they opened.
    Answers(Vec<String>),
}

/// How a driver calls `handle_timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timing {
    /// Exactly at every deadline (`poll_timeout`) up to each input's time,
    /// before the input.
    Exact,
    /// Only where the script says, late, early or never.
    Free,
}

/// A driver around a `Server` that records everything the server asked,
/// and answers password checks, pages to load and pages written once the
/// step that made them is over (the same way for both timings, so that
/// only the `handle_timeout` calls differ between them).
struct Rig {
    server: Server,
    timing: Timing,
    now: Time,
    store: StoreModel,
    opened: Vec<SessionId>,
    lines: BTreeMap<SessionId, Vec<ServerLine>>,
    closes: Vec<SessionId>,
    persisted: Vec<StoreOp>,
    events: Vec<Event>,
    checks: VecDeque<PasswordCheck>,
    written: VecDeque<SessionId>,
    loads: VecDeque<HeldRequest>,
}

/// What a run looks like from outside, to compare.
#[derive(Debug, PartialEq, Eq)]
struct Seen<'a> {
    lines: &'a BTreeMap<SessionId, Vec<ServerLine>>,
    closes: &'a [SessionId],
    persisted: &'a [StoreOp],
    events: &'a [Event],
}

impl Rig {
    fn new(config: &Config, timing: Timing) -> Self {
        Rig {
            server: Server::new(START, config.clone(), accounts(USERS)),
            timing,
            now: START,
            store: StoreModel::default(),
            opened: Vec::new(),
            lines: BTreeMap::new(),
            closes: Vec::new(),
            persisted: Vec::new(),
            events: Vec::new(),
            checks: VecDeque::new(),
            written: VecDeque::new(),
            loads: VecDeque::new(),
        }
    }

    fn seen(&self) -> Seen<'_> {
        Seen {
            lines: &self.lines,
            closes: &self.closes,
            persisted: &self.persisted,
            events: &self.events,
        }
    }

    /// The reference driver runs every deadline up to now, each at its
    /// moment, before anything else; the other leaves that to the core.
    fn before_call(&mut self) {
        if self.timing == Timing::Free {
            return;
        }
        while let Some(at) = self.server.poll_timeout().filter(|at| *at <= self.now) {
            self.server.handle_timeout(at);
            self.collect();
        }
    }

    fn input(&mut self, input: Input) {
        self.before_call();
        self.server.handle_input(self.now, input);
        self.collect();
    }

    fn collect(&mut self) {
        while let Some(out) = self.server.poll_output() {
            match out {
                Output::Send { session, line } => {
                    assert!(!self.closes.contains(&session), "{line} after Close");
                    self.lines.entry(session).or_default().push(line);
                }
                Output::Close { session } => self.closes.push(session),
                Output::Persist(op) => {
                    self.store.apply(&op);
                    self.persisted.push(op);
                }
                Output::Barrier { .. } => {}
                Output::Event(e) => self.events.push(e),
                Output::CheckPassword(check) => self.checks.push_back(check),
                Output::NotifyWritten { session } => self.written.push_back(session),
                Output::LoadHeld(request) => self.loads.push_back(request),
            }
        }
    }

    /// Answers everything the server asked for, at the current time.
    fn answer_all(&mut self) {
        loop {
            if let Some(check) = self.checks.pop_front() {
                let ok = check
                    .credential
                    .as_ref()
                    .and_then(|c| c.verify_plain(&check.password))
                    .unwrap_or(false);
                self.input(check.answer(ok));
            } else if let Some(r) = self.loads.pop_front() {
                let messages = self.store.held_page(&r.user, r.after, r.upto, r.max);
                self.input(Input::HeldLoaded {
                    session: r.session,
                    load: r.load,
                    messages,
                });
            } else if let Some(session) = self.written.pop_front() {
                self.input(Input::Written { session });
            } else {
                return;
            }
        }
    }

    fn pick(&self, i: usize) -> Option<SessionId> {
        (!self.opened.is_empty()).then(|| self.opened[i % self.opened.len()])
    }

    /// Runs one step; returns whether it was an input (after which both
    /// drivers have told the core the same things).
    fn step(&mut self, step: &Step) -> bool {
        match step {
            Step::Wait(d) => {
                self.now = self.now + *d;
                return false;
            }
            Step::Timeout(d) => {
                self.now = self.now + *d;
                if self.timing == Timing::Free {
                    self.server.handle_timeout(self.now);
                    self.collect();
                }
                return false;
            }
            Step::Open(other) => {
                let peer = if *other {
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))
                } else {
                    LOCALHOST
                };
                self.open(peer);
            }
            Step::LogIn(u) => {
                let (user, password) = USERS[u % USERS.len()];
                let session = self.open(LOCALHOST);
                for line in [user, password] {
                    self.answer_all();
                    let line = line.to_string();
                    self.input(Input::Line { session, line });
                }
            }
            Step::Reload => {
                self.before_call();
                self.server.set_accounts(self.now, accounts(USERS));
                self.collect();
            }
            Step::AnswerProbes => unreachable!("resolved into Step::Answers first"),
            Step::Answers(lines) => {
                for (session, line) in self.opened.clone().into_iter().zip(lines) {
                    let line = line.clone();
                    self.input(Input::Line { session, line });
                }
            }
            Step::Line(i, say) => {
                let Some(session) = self.pick(*i) else {
                    return false;
                };
                let line = match say {
                    Say::Name(u) => USERS[u % USERS.len()].0.to_string(),
                    Say::Password(u, right) => {
                        let pw = USERS[u % USERS.len()].1;
                        if *right {
                            pw.to_string()
                        } else {
                            format!("{pw}-wrong")
                        }
                    }
                    Say::AnswerProbe => self.probe_answer(session),
                    Say::Text(t) => t.clone(),
                };
                self.input(Input::Line { session, line });
            }
            Step::Closed(i) => {
                let Some(session) = self.pick(*i) else {
                    return false;
                };
                self.input(Input::Closed { session });
            }
            Step::InputEnded(i) => {
                let Some(session) = self.pick(*i) else {
                    return false;
                };
                self.input(Input::InputEnded { session });
            }
        }
        self.answer_all();
        true
    }

    fn open(&mut self, peer: IpAddr) -> SessionId {
        self.before_call();
        let id = self.server.open_session(self.now, peer);
        self.opened.push(id);
        self.collect();
        id
    }

    /// `idle <seq>` for the latest probe the session got, bare `idle`
    /// before the first.
    fn probe_answer(&self, session: SessionId) -> String {
        let seq = self.lines.get(&session).and_then(|l| {
            l.iter().rev().find_map(|l| match l {
                ServerLine::Idle { seq } => Some(*seq),
                _ => None,
            })
        });
        seq.map_or("idle".to_string(), |s| format!("idle {s}"))
    }

    /// The step with the line it sends spelled out, as this driver's client
    /// would type it. Called on the reference driver, after it has run the
    /// deadlines up to now: its client has seen every probe sent by now, and
    /// the other driver's client must send the same line (the property is
    /// about the same inputs).
    fn resolve(&mut self, step: &Step) -> Step {
        match step {
            Step::Line(i, Say::AnswerProbe) => match self.pick(*i) {
                Some(session) => {
                    self.before_call();
                    Step::Line(*i, Say::Text(self.probe_answer(session)))
                }
                None => step.clone(),
            },
            Step::AnswerProbes => {
                self.before_call();
                let lines = self.opened.iter().map(|s| self.probe_answer(*s)).collect();
                Step::Answers(lines)
            }
            _ => step.clone(),
        }
    }

    /// The end of the script: one last wake-up at `now`.
    fn finish(&mut self) {
        self.before_call();
        self.server.handle_timeout(self.now);
        self.collect();
        self.answer_all();
    }
}

fn say() -> impl Strategy<Value = Say> {
    let user = 0..USERS.len();
    let name = || select(USERS.iter().map(|(n, _)| *n).collect::<Vec<_>>());
    let command = prop_oneof![
        3 => (name(), free_text()).prop_map(|(to, t)| format!("message {to} {t}")),
        1 => free_text().prop_map(|t| format!("broadcast {t}")),
        1 => free_text().prop_map(|t| format!("broadcast all {t}")),
        1 => Just("whoelse".to_string()),
        1 => Just("wholast 5".to_string()),
        1 => Just("idle busy".to_string()),
        1 => Just("idle online".to_string()),
        1 => Just(String::new()),
    ];
    prop_oneof![
        3 => user.clone().prop_map(Say::Name),
        3 => (user, proptest::bool::weighted(0.8)).prop_map(|(u, ok)| Say::Password(u, ok)),
        4 => Just(Say::AnswerProbe),
        8 => command.prop_map(Say::Text),
        1 => client_line().prop_map(|(l, _)| Say::Text(l)),
        1 => Just(Say::Text("logout".into())),
    ]
}

fn delay() -> impl Strategy<Value = Duration> {
    prop_oneof![
        4 => (0u64..1_500).prop_map(Duration::from_millis),
        3 => (1_000u64..12_000).prop_map(Duration::from_millis),
        1 => (12_000u64..70_000).prop_map(Duration::from_millis),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let who = 0usize..6;
    prop_oneof![
        3 => delay().prop_map(Step::Wait),
        4 => delay().prop_map(Step::Timeout),
        1 => any::<bool>().prop_map(Step::Open),
        2 => (0..USERS.len()).prop_map(Step::LogIn),
        1 => Just(Step::Reload),
        3 => Just(Step::AnswerProbes),
        12 => (who.clone(), say()).prop_map(|(i, s)| Step::Line(i, s)),
        1 => who.clone().prop_map(Step::Closed),
        1 => who.prop_map(Step::InputEnded),
    ]
}

/// Short deadlines, so that a script of a few dozen steps meets all of
/// them: heartbeats, confirming probes, heartbeat death, `time_out`, the
/// login timeout, flood control and paged held blocks.
// Fields are set one by one rather than in a struct literal, which a
// `#[non_exhaustive]` `Config` would not allow outside the crate.
#[allow(clippy::field_reassign_with_default)]
fn config() -> impl Strategy<Value = Config> {
    (
        proptest::option::weighted(0.6, (1u32..3, 1u32..3, 1usize..4)),
        proptest::option::of(1usize..3),
        any::<bool>(),
    )
        .prop_map(|(flood, page, persist)| {
            let mut c = Config::default();
            c.heartbeat = Duration::from_secs(10);
            c.heartbeat_timeout = Duration::from_secs(25);
            c.time_out = Duration::from_secs(30);
            c.login_timeout = Duration::from_secs(20);
            c.flood = flood.map(|(burst, per_second, backlog)| FloodLimit {
                burst,
                per_second,
                backlog,
            });
            c.held_page_size = page;
            c.persist_deliveries = persist;
            c
        })
}

/// Opens a few sessions and logs them in first, so that most scripts are
/// about logged-in users.
fn prelude() -> Vec<Step> {
    let mut steps = Vec::new();
    for u in 0..3 {
        steps.push(Step::Open(false));
        steps.push(Step::Line(u, Say::Name(u)));
        steps.push(Step::Line(u, Say::Password(u, true)));
    }
    steps
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any interleaving of inputs with `handle_timeout` calls at arbitrary
    /// times (late, early, never) gives what calls at every deadline give:
    /// the same lines to every session, the same closes, the same changes
    /// persisted, the same events.
    #[test]
    fn handle_timeout_timing_does_not_change_what_anyone_sees(
        config in config(),
        script in proptest::collection::vec(step(), 1..80),
    ) {
        let mut exact = Rig::new(&config, Timing::Exact);
        let mut free = Rig::new(&config, Timing::Free);
        for (n, step) in prelude().iter().chain(&script).enumerate() {
            let step = &exact.resolve(step);
            let input = exact.step(step);
            free.step(step);
            if input {
                prop_assert_eq!(exact.seen(), free.seen(), "after step {} {:?}", n, step);
            }
        }
        exact.finish();
        free.finish();
        prop_assert_eq!(exact.seen(), free.seen(), "at the end");
    }
}

// Harness::settle: exactly-once without knowing about flood control or confirmation

use chatcore::testing::Harness;

#[derive(Clone, Debug)]
enum Traffic {
    /// User `from` sends `n` messages to user `to` as fast as it can.
    Burst { from: usize, to: usize, n: usize },
    /// User `who`'s connection drops (after `settle`), and they log in again.
    Drop { who: usize },
}

fn traffic() -> impl Strategy<Value = Traffic> {
    prop_oneof![
        3 => (0..3usize, 0..3usize, 1..25usize).prop_map(|(from, to, n)| Traffic::Burst { from, to, n }),
        1 => (0..3usize).prop_map(|who| Traffic::Drop { who }),
    ]
}

/// What a property author keeps: per user the texts received, and per
/// sender the texts whose reply is still to come.
#[derive(Default)]
struct Tally {
    received: BTreeMap<usize, Vec<String>>,
    unanswered: BTreeMap<usize, VecDeque<(usize, String)>>,
    accepted: Vec<(usize, String)>,
}

impl Tally {
    fn read(&mut self, h: &mut Harness, sessions: &[SessionId]) {
        for (user, s) in sessions.iter().enumerate() {
            for line in h.take(*s) {
                match line {
                    ServerLine::Deliver(m) => {
                        self.received.entry(user).or_default().push(m.text.clone())
                    }
                    ServerLine::Delivered { .. } | ServerLine::Queued { .. } => {
                        let sent = self.unanswered.entry(user).or_default().pop_front();
                        self.accepted.push(sent.expect("a reply to a message sent"));
                    }
                    // Flood control refuses a command at once, ahead of the
                    // replies of the commands waiting before it (PROTOCOL.md
                    // §4): the refused one is the one just sent.
                    ServerLine::Err(ErrorReply::RateLimited { .. }) => {
                        self.unanswered.entry(user).or_default().pop_back();
                    }
                    ServerLine::Err(_) => {
                        self.unanswered.entry(user).or_default().pop_front();
                    }
                    _ => {}
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every message accepted reaches its recipient exactly once, across
    /// dropped connections, with flood control on (the default): written
    /// as if neither flood control nor confirmation existed, thanks to
    /// `settle` (the `Harness` docs show the same without it failing).
    #[test]
    fn with_settle_every_accepted_message_arrives_exactly_once(
        script in proptest::collection::vec(traffic(), 1..12),
    ) {
        let mut h = Harness::with_users(USERS);
        let mut sessions: Vec<SessionId> =
            USERS[..3].iter().map(|(u, p)| h.connect_logged_in(u, p)).collect();
        let mut tally = Tally::default();
        let mut tag = 0;
        for step in &script {
            match *step {
                Traffic::Burst { from, to, n } => {
                    for _ in 0..n {
                        tag += 1;
                        let text = format!("t{tag}");
                        h.send(sessions[from], &format!("message {} {text}", USERS[to].0));
                        tally.unanswered.entry(from).or_default().push_back((to, text));
                        tally.read(&mut h, &sessions);
                    }
                }
                Traffic::Drop { who } => {
                    h.settle();
                    tally.read(&mut h, &sessions);
                    h.close(sessions[who]);
                    let (user, password) = USERS[who];
                    sessions[who] = h.connect_logged_in(user, password);
                    tally.read(&mut h, &sessions);
                }
            }
        }
        h.settle();
        tally.read(&mut h, &sessions);
        prop_assert!(tally.unanswered.values().all(VecDeque::is_empty));
        let mut expected: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (to, text) in &tally.accepted {
            expected.entry(*to).or_default().push(text.clone());
        }
        for texts in tally.received.values_mut().chain(expected.values_mut()) {
            texts.sort();
        }
        prop_assert_eq!(tally.received, expected);
    }
}
