//! What a line means to the session: a typed line (a client-side word or a
//! command for the server), whether the server owes a command a reply, and
//! whether a server line is that reply. Scripted mode's reply accounting
//! counts on these rules, so they are kept apart from the loop and tested
//! line by line.

use chatcore::wire::{Command, IdleArg, ParseError, ServerLine};

/// What a typed line means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Typed {
    /// Send this line to the server.
    Send(String),
    /// Show the command list.
    Help,
    /// Nothing to do (a blank line).
    Nothing,
}

/// Interprets a typed line: the few client-side words (`busy`, `online`,
/// `help`), and everything else as typed, since the server parses commands
/// and answers mistakes in its own words.
pub fn typed(line: &str) -> Typed {
    let word = line.trim();
    if word.is_empty() {
        Typed::Nothing
    } else if word.eq_ignore_ascii_case("busy") {
        Typed::Send(Command::Idle(IdleArg::Busy).to_string())
    } else if word.eq_ignore_ascii_case("online") {
        Typed::Send(Command::Idle(IdleArg::Online).to_string())
    } else if word.eq_ignore_ascii_case("help") {
        Typed::Help
    } else {
        Typed::Send(line.to_string())
    }
}

/// Whether the server answers a line sent by a logged-in client: every
/// command gets exactly one reply line except a heartbeat reply (`idle`,
/// `idle <seq>`), and a blank line is ignored (PROTOCOL.md §2, §4). Parsed
/// as the server parses it, after the `\r` it drops before the `\n`.
pub fn expects_reply(line: &str) -> bool {
    let line = line.strip_suffix('\r').unwrap_or(line);
    !matches!(
        Command::parse(line),
        Ok(Command::Idle(IdleArg::None | IdleArg::Seq(_))) | Err(ParseError::Blank)
    )
}

/// Whether a server line is the one reply to a command (PROTOCOL.md §2).
/// `BYE` is left out: it answers only `logout`, which is not counted.
pub(super) fn is_reply(line: &ServerLine) -> bool {
    matches!(
        line,
        ServerLine::Delivered { .. }
            | ServerLine::Queued { .. }
            | ServerLine::Broadcasted { .. }
            | ServerLine::Status(_)
            | ServerLine::Who(_)
            | ServerLine::Last(_)
            | ServerLine::Err(_)
    )
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_lines_get_a_reply() {
        for line in [
            "whoelse",
            "message bob hi",
            "idle busy",
            "IDLE online",
            "logout",
            "dance",
            "idle idle",
            "idlewhoelse",
            "idle 99999999999999999999999",
            "idle\r\r",
            "wholast 999",
        ] {
            assert!(expects_reply(line), "{line:?}");
        }
        for line in [
            "idle",
            "IDLE",
            "idle 7",
            " idle\t7 ",
            "idleidle",
            "idle\r",
            "  ",
        ] {
            assert!(!expects_reply(line), "{line:?}");
        }
    }

    #[test]
    fn typed_lines() {
        assert_eq!(typed("  "), Typed::Nothing);
        assert_eq!(typed("busy"), Typed::Send("idle busy".into()));
        assert_eq!(typed(" Online "), Typed::Send("idle online".into()));
        assert_eq!(typed("help"), Typed::Help);
        assert_eq!(
            typed("message bob  hi there "),
            Typed::Send("message bob  hi there ".into())
        );
        assert_eq!(typed("busy now"), Typed::Send("busy now".into()));
    }
}
