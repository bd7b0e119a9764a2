//! Focused examples: the same driver and oracle, fixed sequences. Those
//! about flood control, pages, late password answers and ended input run in
//! the setup they are about.

use std::collections::BTreeMap;

use chatcore::FloodLimit;

use crate::model::Setup;
use crate::model::Transition::{self, *};
use crate::sut::Sut;

fn run_with(setup: Setup, ts: Vec<Transition>) -> BTreeMap<&'static str, usize> {
    let mut sut = Sut::new(setup);
    for t in ts {
        sut.oracle.note(format!("== {t:?}"));
        sut.apply(t);
    }
    sut.drain_everything();
    sut.oracle.stats.clone()
}

fn run(ts: Vec<Transition>) -> BTreeMap<&'static str, usize> {
    run_with(Setup::CLASSIC, ts)
}

fn send(s: usize, line: &str) -> Transition {
    Send {
        s,
        line: line.into(),
    }
}

fn login(s: usize, user: &'static str) -> Transition {
    Login {
        s,
        user,
        right: true,
    }
}

fn wrong(s: usize, user: &'static str) -> Transition {
    Login {
        s,
        user,
        right: false,
    }
}

fn stat(stats: &BTreeMap<&'static str, usize>, what: &str) -> usize {
    stats.get(what).copied().unwrap_or(0)
}

fn slow_checks() -> Setup {
    Setup {
        checks_later: true,
        ..Setup::CLASSIC
    }
}

fn paged(page: usize) -> Setup {
    Setup {
        page: Some(page),
        written_later: true,
        ..Setup::CLASSIC
    }
}

fn flood(burst: u32, per_second: u32, backlog: usize) -> Setup {
    Setup {
        flood: Some(FloodLimit {
            burst,
            per_second,
            backlog,
        }),
        ..Setup::CLASSIC
    }
}

#[test]
fn example_login_message_logout() {
    run(vec![
        Connect { ip: 1 },
        login(0, "ann"),
        Connect { ip: 1 },
        login(1, "bob"),
        send(0, "message bob #1 hi idle"),
        send(0, "message cat #2 held"),
        send(1, "whoelse"),
        send(1, "wholast 5"),
        Tick { millis: 300 },
        AnswerProbe { s: 1 },
        send(1, "logout"),
    ]);
}

#[test]
fn example_lockout_across_connections() {
    let stats = run(vec![
        Connect { ip: 1 },
        wrong(0, "bob"),
        wrong(0, "bob"),
        Connect { ip: 1 },
        wrong(1, "bob"),
        Connect { ip: 1 },
        login(2, "bob"),
        Connect { ip: 2 },
        login(3, "bob"),
        Tick { millis: 61_000 },
        Connect { ip: 1 },
        login(4, "bob"),
    ]);
    assert_eq!(stat(&stats, "ERR-blocked"), 2, "{stats:?}");
}

#[test]
fn example_unconfirmed_delivery_survives_a_crash() {
    run(vec![
        Connect { ip: 1 },
        login(0, "ann"),
        Connect { ip: 1 },
        login(1, "bob"),
        send(0, "message bob #1 before crash"),
        Crash,
        Connect { ip: 1 },
        login(2, "bob"),
    ]);
}

#[test]
fn example_busy_then_online() {
    run(vec![
        Connect { ip: 1 },
        login(0, "ann"),
        Connect { ip: 2 },
        login(1, "cat"),
        send(1, "idle busy"),
        send(0, "message cat #1 one"),
        send(0, "broadcast #2 two"),
        send(0, "broadcast all #3 three"),
        send(1, "idle online"),
        Tick { millis: 500 },
        AnswerProbe { s: 1 },
    ]);
}

#[test]
fn example_box_full() {
    let mut ts = vec![Connect { ip: 1 }, login(0, "ann")];
    for i in 0..6 {
        ts.push(send(0, &format!("message bob #{i} x")));
    }
    ts.push(send(0, "broadcast all #9 everyone"));
    let stats = run(ts);
    assert_eq!(stat(&stats, "ERR-queue-full"), 2, "{stats:?}");
    assert_eq!(stat(&stats, "OK-broadcast-full"), 1, "{stats:?}");
}

#[test]
fn example_timeouts() {
    run(vec![
        Connect { ip: 1 },
        login(0, "ann"),
        Connect { ip: 1 },
        Tick { millis: 31_000 },
        AnswerProbe { s: 0 },
        Tick { millis: 19_000 },
        AnswerProbe { s: 0 },
        Tick { millis: 400_000 },
    ]);
}

#[test]
fn example_shutdown_keeps_everything() {
    run(vec![
        Connect { ip: 1 },
        login(0, "ann"),
        send(0, "broadcast all #1 hello"),
        Shutdown,
        Connect { ip: 1 },
        login(1, "ann"),
    ]);
}

/// `time_out`: a session that only answers probes is ended with `BYE
/// timeout`; `idle busy` counts as a command and restarts the clock.
#[test]
fn example_time_out() {
    let mut ts = vec![
        Connect { ip: 1 },
        login(0, "ann"),
        Connect { ip: 2 },
        login(1, "bob"),
    ];
    for i in 0..18 {
        ts.push(Tick { millis: 19_000 });
        ts.push(AnswerProbe { s: 0 });
        ts.push(AnswerProbe { s: 1 });
        if i == 8 {
            ts.push(send(1, "idle busy"));
        }
    }
    let stats = run(ts);
    assert_eq!(stat(&stats, "BYE-timeout"), 1, "{stats:?}");
}

/// Held messages come back after a crash even when the recipient had them
/// delivered but never confirmed, and confirmed ones do not.
#[test]
fn example_confirmed_are_not_redelivered() {
    run(vec![
        Connect { ip: 1 },
        login(0, "ann"),
        Connect { ip: 1 },
        login(1, "bob"),
        send(0, "message bob #1 confirmed"),
        Tick { millis: 1_000 },
        AnswerProbe { s: 1 },
        send(0, "message bob #2 unconfirmed"),
        Close { s: 1 },
        Connect { ip: 1 },
        login(2, "bob"),
        Crash,
    ]);
}

/// The lockout race: four connections of one address send passwords for
/// bob at once; the third wrong answer blocks the pair, so the fourth
/// answer, which comes back after, is `ERR blocked` (here: a wrong
/// password, which must not count again).
#[test]
fn example_lockout_race_wrong_answer_after_the_block() {
    let mut ts = Vec::new();
    for s in 0..4 {
        ts.push(Connect { ip: 1 });
        ts.push(wrong(s, "bob"));
    }
    for _ in 0..4 {
        ts.push(AnswerCheck { pick: 0 });
    }
    let stats = run_with(slow_checks(), ts);
    assert_eq!(stat(&stats, "ERR-bad-credentials"), 2, "{stats:?}");
    assert_eq!(stat(&stats, "ERR-blocked"), 2, "{stats:?}");
    assert_eq!(stat(&stats, "answer-while-blocked"), 1, "{stats:?}");
}

/// The lockout race with the right password last: a block is a block, the
/// answer comes back `ERR blocked`, bob is not logged in and the block is
/// not lifted (a fifth connection is refused at the user name).
#[test]
fn example_lockout_race_right_answer_after_the_block() {
    let stats = run_with(
        slow_checks(),
        vec![
            Connect { ip: 1 },
            wrong(0, "bob"),
            Connect { ip: 1 },
            wrong(1, "bob"),
            Connect { ip: 1 },
            login(2, "bob"),
            Connect { ip: 1 },
            wrong(3, "bob"),
            // Answers in another order than asked: the three wrong ones
            // (the last of them blocks), then the right one.
            AnswerCheck { pick: 3 },
            AnswerCheck { pick: 0 },
            AnswerCheck { pick: 0 },
            AnswerCheck { pick: 0 },
            Tick { millis: 10_000 },
            Connect { ip: 1 },
            login(4, "bob"),
        ],
    );
    assert_eq!(
        stat(&stats, "OK-login"),
        3,
        "only the final drain: {stats:?}"
    );
    assert_eq!(stat(&stats, "ERR-blocked"), 3, "{stats:?}");
}

/// A name that is no valid user name (a hostile line, a reserved word) is
/// asked for a password and refused like an unknown name, but is never
/// recorded, so it never blocks: two connections spend all their attempts.
#[test]
fn example_invalid_names_are_never_blocked() {
    let mut ts = Vec::new();
    for s in 0..2 {
        ts.push(Connect { ip: 1 });
        for _ in 0..3 {
            ts.push(wrong(s, "all"));
        }
    }
    ts.push(Connect { ip: 1 });
    ts.push(wrong(2, "b o b"));
    let stats = run(ts);
    assert_eq!(stat(&stats, "ERR-blocked"), 0, "{stats:?}");
    assert_eq!(stat(&stats, "ERR-bad-credentials"), 7, "{stats:?}");
    assert_eq!(stat(&stats, "BYE-login-failed"), 2, "{stats:?}");
}

/// Lines sent while the password is checked are answered in order once it
/// is, up to `max_pending_lines`; more are refused at once.
#[test]
fn example_lines_ahead_of_the_password_check() {
    let stats = run_with(
        Setup {
            max_pending_lines: 2,
            ..slow_checks()
        },
        vec![
            Connect { ip: 1 },
            login(0, "ann"),
            send(0, "whoelse"),
            send(0, "message bob #1 early"),
            send(0, "wholast 5"),
            AnswerCheck { pick: 0 },
        ],
    );
    assert_eq!(stat(&stats, "line-ahead-of-check"), 2, "{stats:?}");
    assert_eq!(stat(&stats, "ERR-rate-limited"), 1, "{stats:?}");
    assert_eq!(stat(&stats, "WHO"), 1, "{stats:?}");
}

/// Flood control: `burst` commands run at once, `backlog` more wait and
/// run at the rate, the rest are refused.
#[test]
fn example_flood_backlog() {
    let mut ts = vec![Connect { ip: 1 }, login(0, "ann")];
    for _ in 0..6 {
        ts.push(send(0, "whoelse"));
    }
    ts.push(Tick { millis: 2_500 });
    let stats = run_with(flood(2, 1, 2), ts);
    assert_eq!(stat(&stats, "WHO"), 4, "{stats:?}");
    assert_eq!(stat(&stats, "cmd-delayed"), 2, "{stats:?}");
    assert_eq!(stat(&stats, "ERR-rate-limited"), 2, "{stats:?}");
}

/// A client that pipes its commands and closes its sending half: what it
/// sent is still run at the flood rate, `logout` included, then the
/// connection closes; a second one without `logout` just ends.
#[test]
fn example_input_ended_runs_what_was_sent() {
    let stats = run_with(
        flood(2, 1, 4),
        vec![
            Connect { ip: 1 },
            login(0, "ann"),
            send(0, "whoelse"),
            send(0, "message bob #1 piped"),
            send(0, "wholast 3"),
            send(0, "logout"),
            EndInput { s: 0 },
            Tick { millis: 3_000 },
            Connect { ip: 1 },
            login(1, "cat"),
            send(1, "whoelse"),
            EndInput { s: 1 },
        ],
    );
    assert_eq!(stat(&stats, "BYE-logout"), 1, "{stats:?}");
    assert_eq!(stat(&stats, "input-ended-close"), 1, "{stats:?}");
}

/// Paging: a box of four, two at a time; a command sent meanwhile waits
/// for the block, and `idle online` gets its reply after its own block and
/// before live messages routed meanwhile.
#[test]
fn example_pages_hold_back_commands_and_live_messages() {
    let stats = run_with(
        paged(2),
        vec![
            Connect { ip: 1 },
            login(0, "ann"),
            send(0, "message bob #1 a"),
            send(0, "message bob #2 b"),
            send(0, "message bob #3 c"),
            Connect { ip: 2 },
            login(1, "bob"),
            send(1, "whoelse"),
            send(0, "message bob #4 live"),
            Written { pick: 0 },
            send(1, "idle busy"),
            send(0, "message bob #5 d"),
            send(0, "message bob #6 e"),
            send(0, "message bob #7 f"),
            send(1, "idle online"),
            send(0, "message bob #8 live"),
            send(1, "whoelse"),
            Written { pick: 0 },
        ],
    );
    assert_eq!(stat(&stats, "deferred"), 2, "{stats:?}");
    assert_eq!(stat(&stats, "reply-after-block"), 1, "{stats:?}");
    assert_eq!(stat(&stats, "cmd-delayed"), 2, "{stats:?}");
}

/// A reader that is slow to take its pages still gets probes: a probe
/// follows each page within a second, so the page is confirmed, and after
/// the connection drops only the unconfirmed messages come back.
#[test]
fn example_probe_between_pages_confirms_the_pages_read() {
    let stats = run_with(
        paged(1),
        vec![
            Connect { ip: 1 },
            login(0, "ann"),
            send(0, "message bob #1 a"),
            send(0, "message bob #2 b"),
            send(0, "message bob #3 c"),
            Connect { ip: 2 },
            login(1, "bob"),
            Tick { millis: 1_200 },
            AnswerProbe { s: 1 },
            Written { pick: 0 },
            Tick { millis: 1_200 },
            AnswerProbe { s: 1 },
            Close { s: 1 },
            Connect { ip: 2 },
            login(2, "bob"),
        ],
    );
    assert!(stat(&stats, "probe-in-block") >= 2, "{stats:?}");
}

/// A user online when the server crashes counts for `wholast` as seen up
/// to the crash, give or take a heartbeat.
#[test]
fn example_crash_keeps_online_users_in_wholast() {
    let mut ts = vec![
        Connect { ip: 1 },
        login(0, "ann"),
        Connect { ip: 1 },
        login(1, "bob"),
    ];
    for _ in 0..10 {
        ts.push(Tick { millis: 19_000 });
        ts.push(AnswerProbe { s: 0 });
        ts.push(AnswerProbe { s: 1 });
    }
    ts.extend([
        Crash,
        Connect { ip: 1 },
        login(2, "ann"),
        send(2, "wholast 1"),
    ]);
    run(ts);
}

/// A command refused by flood control while an `OFFLINE` block is being
/// sent is answered after the block (nothing else comes inside it,
/// docs/PROTOCOL.md §5), not between its messages.
#[test]
fn example_flood_refusal_waits_for_the_block() {
    let stats = run_with(
        Setup {
            page: Some(1),
            written_later: true,
            ..flood(2, 1, 1)
        },
        vec![
            Connect { ip: 1 },
            login(0, "ann"),
            send(0, "message bob #1 a"),
            send(0, "message bob #2 b"),
            Connect { ip: 2 },
            login(1, "bob"),
            send(1, "whoelse"),
            send(1, "wholast 5"),
            Written { pick: 0 },
        ],
    );
    assert_eq!(stat(&stats, "ERR-rate-limited"), 1, "{stats:?}");
    assert_eq!(stat(&stats, "cmd-delayed"), 1, "{stats:?}");
}

/// When an `OFFLINE` block ends and a command waited behind it, the next
/// deadline the core names is not in the past (a driver would spin on it).
#[test]
fn example_no_deadline_in_the_past_after_a_block() {
    run_with(
        Setup {
            page: Some(1),
            written_later: true,
            ..flood(2, 1, 1)
        },
        vec![
            Connect { ip: 1 },
            login(0, "ann"),
            send(0, "message cat #1 a"),
            send(0, "message cat #2 b"),
            Connect { ip: 1 },
            login(1, "cat"),
            Tick { millis: 1 },
            send(1, "message ann #3 c"),
            Written { pick: 0 },
        ],
    );
}

/// The fuzzer's send-after-`Close` finding: commands waiting behind flood
/// control and an `OFFLINE` block, run together by a late wake-up, die with
/// their session (nothing follows its `Close`), and the reply to
/// `idle online` comes before theirs.
#[test]
fn example_work_behind_a_block_dies_with_its_session() {
    run_with(
        Setup {
            page: Some(2),
            checks_later: true,
            ..flood(3, 2, 4)
        },
        vec![
            Connect { ip: 1 },
            login(0, "bob"),
            send(0, "idle busy"),
            send(0, "broadcast all pipelined"),
            send(0, "frobnicate"),
            send(0, "idle online"),
            send(0, "logout"),
            AnswerCheck { pick: 0 },
            Jump { millis: 10_000 },
        ],
    );
}

/// A driver that wakes late runs two sessions' delayed commands in one
/// round: ann's broadcast reaches bob and cat, bob's message reaches cat.
/// Each session must get exactly the copies addressed to it (a server that
/// hands bob the message meant for cat fails, even though every message
/// went to someone online).
#[test]
fn example_late_wake_up_delivers_two_senders_messages_in_one_round() {
    let stats = run_with(
        flood(1, 1, 5),
        vec![
            Connect { ip: 1 },
            login(0, "ann"),
            Connect { ip: 2 },
            login(1, "bob"),
            Connect { ip: 3 },
            login(2, "cat"),
            send(0, "whoelse"),
            send(0, "broadcast #1 to all online"),
            send(1, "whoelse"),
            send(1, "message cat #2 for cat only"),
            Jump { millis: 3_000 },
        ],
    );
    assert_eq!(stat(&stats, "cmd-delayed"), 2, "{stats:?}");
    assert_eq!(stat(&stats, "OK-broadcast"), 1, "{stats:?}");
    assert_eq!(stat(&stats, "OK-delivered"), 1, "{stats:?}");
}
