//! Robustness outside the driver contract, with a bare server: lines handed
//! over without a decoder, late password answers, input for forgotten
//! sessions.

use chatcore::testing::strategies::hostile_line;
use chatcore::wire::{DecodeError, ServerLine};
use chatcore::{Input, Output, Server, SessionId, Time};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use crate::model::{accounts, ip, password, Setup, START_MS};

fn config() -> chatcore::Config {
    Setup::CLASSIC.config()
}

fn drain(server: &mut Server) -> Vec<Output> {
    std::iter::from_fn(|| server.poll_output())
        .take(100_000)
        .collect()
}

fn sent_to(outputs: &[Output], session: SessionId) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { session: s, line } if *s == session => Some(line.to_string()),
            Output::Close { session: s } if *s == session => Some("<close>".into()),
            _ => None,
        })
        .collect()
}

fn bare_login(server: &mut Server, now: Time, user: &str) -> SessionId {
    let s = server.open_session(now, ip(1));
    server.handle_input(
        now,
        Input::Line {
            session: s,
            line: user.into(),
        },
    );
    server.handle_input(
        now,
        Input::Line {
            session: s,
            line: password(user, true),
        },
    );
    for o in drain(server) {
        if let Output::CheckPassword(pc) = o {
            server.handle_input(
                now,
                Input::PasswordChecked {
                    session: pc.session,
                    check: pc.check,
                    ok: true,
                },
            );
        }
    }
    let out = drain(server);
    assert!(
        sent_to(&out, s).contains(&format!("OK login {user}")),
        "{out:?}"
    );
    s
}

/// Feeds `lines` straight to `Input::Line` (no decoder) from a logged-in
/// session and from one that is not; returns an error if `check` refuses an
/// output line to another session.
fn feed_raw(lines: Vec<String>, strict_controls: bool) -> Result<(), TestCaseError> {
    let now = Time::from_unix_millis(START_MS);
    let mut server = Server::new(now, config(), accounts());
    let ann = bare_login(&mut server, now, "ann");
    let bob = bare_login(&mut server, now, "bob");
    let fresh = server.open_session(now, ip(2));
    drain(&mut server);
    for line in lines {
        for s in [ann, fresh] {
            server.handle_input(
                now,
                Input::Line {
                    session: s,
                    line: line.clone(),
                },
            );
            for o in drain(&mut server) {
                if let Output::Send { session, line } = &o {
                    prop_assert!(
                        *session != bob || matches!(line, ServerLine::Deliver(_)),
                        "bob got {line:?}"
                    );
                    let text = line.to_string();
                    prop_assert!(
                        !strict_controls
                            || *session == s
                            || !text
                                .chars()
                                .any(|c| (c.is_control() && c != '\t') || c == '\u{7f}'),
                        "control character on another user's wire: {:?}",
                        text
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Lines handed over without a decoder (control characters, `\n`, huge)
    /// never panic the core.
    #[test]
    fn raw_lines_never_panic(lines in proptest::collection::vec(hostile_line(), 1..8)) {
        feed_raw(lines, false)?;
    }

    /// Defence in depth, beyond the driver contract (`Input::Line` should
    /// come from a `LineDecoder`, which refuses control characters): a raw
    /// control character never reaches another user.
    #[test]
    fn raw_lines_never_leak_controls_to_others(lines in proptest::collection::vec(hostile_line(), 1..8)) {
        feed_raw(lines, true)?;
    }
}

/// A password check answered after its connection closed logs nobody in,
/// and input for a session the core has forgotten is ignored.
#[test]
fn late_password_answer_and_forgotten_sessions_are_ignored() {
    let now = Time::from_unix_millis(START_MS);
    let mut server = Server::new(now, config(), accounts());
    let s = server.open_session(now, ip(1));
    server.handle_input(
        now,
        Input::Line {
            session: s,
            line: "ann".into(),
        },
    );
    server.handle_input(
        now,
        Input::Line {
            session: s,
            line: "pw-ann".into(),
        },
    );
    let check = drain(&mut server)
        .into_iter()
        .find_map(|o| match o {
            Output::CheckPassword(pc) => Some(pc),
            _ => None,
        })
        .expect("a password check");
    // Another connection is served while the check is pending.
    let other = server.open_session(now, ip(2));
    let out = drain(&mut server);
    assert_eq!(sent_to(&out, other), ["HELLO CHAT/1", "ASK username"]);
    server.handle_input(now, Input::Closed { session: s });
    let out = drain(&mut server);
    assert!(
        sent_to(&out, s).is_empty(),
        "output after Input::Closed: {out:?}"
    );
    server.handle_input(
        now,
        Input::PasswordChecked {
            session: s,
            check: check.check,
            ok: true,
        },
    );
    server.handle_input(
        now,
        Input::Line {
            session: s,
            line: "whoelse".into(),
        },
    );
    server.handle_input(
        now,
        Input::Malformed {
            session: s,
            error: DecodeError::BadEncoding,
        },
    );
    server.handle_input(now, Input::Closed { session: s });
    let out = drain(&mut server);
    assert!(
        sent_to(&out, s).is_empty(),
        "output for a closed session: {out:?}"
    );
    // ann is not online: she can log in elsewhere.
    bare_login(&mut server, now, "ann");
}
