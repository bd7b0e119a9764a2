//! Server lines in plain words, one line each, safe to put on a terminal.
//!
//! Everything here is pure so it can be tested without a server: the time
//! zone is a parameter (the client passes `chrono::Local`).

use std::borrow::Cow;
use std::fmt::Display;

use chatcore::message::MessageKind;
use chatcore::wire::{ByeReason, ErrorReply, HeldBecause, ServerLine, Status};
use chatcore::Time;
use chrono::TimeZone;

/// What `help` prints. Kept next to the renderer because both describe the
/// protocol in the client's words.
pub const HELP: &str = "\
commands:
  message <user> <text>             send a private message
  broadcast <text>                  send to everyone online (you included)
  broadcast all <text>              send to every account; offline ones get it later
  broadcast user <u1> [<u2> ...] message <text>
                                    send to the listed users
  whoelse                           who else is online
  wholast <minutes>                 who was online in the last <minutes>
  busy                              hold incoming messages until `online`
  online                            show held messages and receive again
  logout                            leave (Ctrl-D or Ctrl-C do the same)
  help                              this list";

/// Replaces characters that a terminal could act on (C0 and C1 controls,
/// DEL, and the bidirectional overrides that reorder what is shown) with
/// U+FFFD, and a TAB with a space so the line editor's columns stay right.
///
/// The server already refuses control characters from users, but the client
/// must not trust that: a rogue or broken server must not be able to drive
/// the person's terminal.
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\t' || is_dangerous(c)) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| match c {
                '\t' => ' ',
                c if is_dangerous(c) => '\u{FFFD}',
                c => c,
            })
            .collect(),
    )
}

fn is_dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A server timestamp as `2026/11/24 17:12:01` in the zone `tz`.
pub fn local_time<Tz: TimeZone>(t: Time, tz: &Tz) -> String
where
    Tz::Offset: Display,
{
    let secs = i64::try_from(t.unix_secs()).unwrap_or(i64::MAX);
    match tz.timestamp_opt(secs, 0).single() {
        Some(dt) => dt.format("%Y/%m/%d %H:%M:%S").to_string(),
        // Out of chrono's range: show the raw seconds rather than nothing.
        None => format!("@{secs}"),
    }
}

/// The words for a list of user names, or `empty` when there is none.
fn names(list: &[String], lead: &str, empty: &str) -> String {
    if list.is_empty() {
        empty.to_string()
    } else {
        format!("{lead}{}", sanitize(&list.join(", ")))
    }
}

/// Why the server said goodbye, in words.
pub fn bye_words(reason: ByeReason) -> &'static str {
    match reason {
        ByeReason::Logout => "logged out",
        ByeReason::Timeout => "the server logged you out: no activity for too long",
        ByeReason::Shutdown => "the server shut down",
        ByeReason::Blocked => "disconnected: this name is blocked for now",
        ByeReason::LoginFailed => "disconnected: too many failed login attempts",
        ByeReason::LoginTimeout => "disconnected: the login took too long",
    }
}

/// The words for flood control's `ERR rate-limited`.
const SLOW_DOWN: &str = "too many commands: slow down";

/// An `ERR` line as a short sentence.
pub fn error_words(e: &ErrorReply) -> String {
    match e {
        ErrorReply::LineTooLong { max } => format!(
            "that line was too long: at most {} bytes",
            max.saturating_sub(1)
        ),
        ErrorReply::BadEncoding => {
            "that line held characters the server refuses (control characters)".into()
        }
        ErrorReply::BadCredentials => "wrong user name or password".into(),
        ErrorReply::AlreadyOnline => "that user is already logged in elsewhere".into(),
        ErrorReply::Blocked { seconds_left } => {
            format!("too many failed attempts: try again in {seconds_left} s")
        }
        ErrorReply::UnknownCommand { word } => {
            format!("unknown command: {} (type help)", sanitize(word))
        }
        ErrorReply::Usage { usage } => format!("usage: {}", sanitize(usage)),
        ErrorReply::UnknownUser { user } => format!("no such user: {}", sanitize(user)),
        ErrorReply::QueueFull { user } => {
            format!("{}'s box is full: message not sent", sanitize(user))
        }
        // chatd's own detail is these very words: not said twice.
        ErrorReply::RateLimited { detail }
            if detail.is_empty() || detail.eq_ignore_ascii_case(SLOW_DOWN) =>
        {
            SLOW_DOWN.into()
        }
        ErrorReply::RateLimited { detail } => {
            format!("{SLOW_DOWN} ({})", sanitize(detail))
        }
        ErrorReply::Unavailable { detail } if detail.is_empty() => {
            "the server cannot store messages right now: nothing was sent, try again later".into()
        }
        ErrorReply::Unavailable { detail } => format!(
            "the server cannot store messages right now ({}): nothing was sent, try again later",
            sanitize(detail)
        ),
    }
}

/// The words for one server line, or `None` for lines the person never sees
/// (`HELLO`, `ASK`, `IDLE`): those are the client's business.
pub fn render<Tz: TimeZone>(line: &ServerLine, tz: &Tz) -> Option<String>
where
    Tz::Offset: Display,
{
    Some(match line {
        ServerLine::Hello | ServerLine::Ask(_) | ServerLine::Idle { .. } => return None,
        ServerLine::LoggedIn { user } => format!("logged in as {}", sanitize(user)),
        ServerLine::Offline { count: 1 } => "1 message while you were away:".into(),
        ServerLine::Offline { count } => format!("{count} messages while you were away:"),
        ServerLine::Deliver(m) => {
            let when = local_time(m.at, tz);
            let from = sanitize(&m.from);
            let text = sanitize(&m.text);
            match m.kind {
                MessageKind::Private => format!("{when} {from}: {text}"),
                MessageKind::Broadcast => format!("{when} {from} broadcast: {text}"),
            }
        }
        ServerLine::Delivered { user } => format!("delivered to {}", sanitize(user)),
        ServerLine::Queued { user, because } => {
            let why = match because {
                HeldBecause::Offline => "offline",
                HeldBecause::Busy => "busy",
            };
            format!("{} is {why}: message held", sanitize(user))
        }
        ServerLine::Broadcasted {
            delivered,
            queued,
            full,
        } => {
            let mut s = format!("broadcast: delivered to {delivered}, held for {queued}");
            if !full.is_empty() {
                s.push_str("; box full for ");
                s.push_str(&sanitize(&full.join(", ")));
            }
            s
        }
        ServerLine::Status(Status::Busy) => "you are now busy".into(),
        ServerLine::Status(Status::Online) => "you are now online".into(),
        ServerLine::Who(list) => names(list, "online: ", "you are alone"),
        ServerLine::Last(list) => names(list, "seen in that time: ", "nobody in that time"),
        ServerLine::Err(e) => error_words(e),
        ServerLine::Bye(reason) => bye_words(*reason).into(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chatcore::message::Message;
    use chatcore::wire::Ask;
    use chrono::FixedOffset;

    use super::*;

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).unwrap()
    }

    fn words(line: &str) -> Option<String> {
        render(&ServerLine::parse(line).unwrap(), &utc())
    }

    #[test]
    fn every_server_line_in_words() {
        let cases = [
            ("HELLO CHAT/1", None),
            ("ASK username", None),
            ("ASK password", None),
            ("IDLE 7", None),
            ("OK login alice", Some("logged in as alice")),
            ("OFFLINE 1", Some("1 message while you were away:")),
            ("OFFLINE 3", Some("3 messages while you were away:")),
            (
                "MSG 17 2026-11-24T17:12:01Z bob see you later",
                Some("2026/11/24 17:12:01 bob: see you later"),
            ),
            (
                "BCAST 18 2026-11-24T17:12:01Z bob hello all",
                Some("2026/11/24 17:12:01 bob broadcast: hello all"),
            ),
            ("OK message bob delivered", Some("delivered to bob")),
            (
                "OK message bob queued offline",
                Some("bob is offline: message held"),
            ),
            (
                "OK message bob queued busy",
                Some("bob is busy: message held"),
            ),
            (
                "OK broadcast 3 2",
                Some("broadcast: delivered to 3, held for 2"),
            ),
            (
                "OK broadcast 3 2 full carol,dave",
                Some("broadcast: delivered to 3, held for 2; box full for carol, dave"),
            ),
            ("OK status busy", Some("you are now busy")),
            ("OK status online", Some("you are now online")),
            ("WHO", Some("you are alone")),
            ("WHO bob carol", Some("online: bob, carol")),
            ("LAST", Some("nobody in that time")),
            ("LAST bob", Some("seen in that time: bob")),
            (
                "ERR line-too-long 4096",
                Some("that line was too long: at most 4095 bytes"),
            ),
            (
                "ERR bad-encoding",
                Some("that line held characters the server refuses (control characters)"),
            ),
            ("ERR bad-credentials", Some("wrong user name or password")),
            (
                "ERR already-online",
                Some("that user is already logged in elsewhere"),
            ),
            (
                "ERR blocked 42",
                Some("too many failed attempts: try again in 42 s"),
            ),
            (
                "ERR unknown-command dance",
                Some("unknown command: dance (type help)"),
            ),
            ("ERR usage wholast <0-59>", Some("usage: wholast <0-59>")),
            ("ERR unknown-user zed", Some("no such user: zed")),
            (
                "ERR queue-full bob",
                Some("bob's box is full: message not sent"),
            ),
            ("ERR rate-limited", Some("too many commands: slow down")),
            (
                "ERR rate-limited too many commands: slow down",
                Some("too many commands: slow down"),
            ),
            (
                "ERR rate-limited later",
                Some("too many commands: slow down (later)"),
            ),
            ("BYE logout", Some("logged out")),
            (
                "BYE timeout",
                Some("the server logged you out: no activity for too long"),
            ),
            ("BYE shutdown", Some("the server shut down")),
            (
                "BYE blocked",
                Some("disconnected: this name is blocked for now"),
            ),
            (
                "BYE login-failed",
                Some("disconnected: too many failed login attempts"),
            ),
            (
                "BYE login-timeout",
                Some("disconnected: the login took too long"),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(words(line).as_deref(), want, "{line}");
        }
        assert_eq!(render(&ServerLine::Ask(Ask::Password), &utc()), None);
    }

    #[test]
    fn control_characters_are_neutralised() {
        // Built by hand: the wire parser and decoder refuse such lines, but
        // the renderer must not rely on that.
        let m = Message {
            id: 1,
            at: Time::from_unix_secs(0),
            from: "ev\u{1b}il".into(),
            kind: MessageKind::Private,
            text: "a\u{1b}[2Jb\u{7}c\u{9b}d\re\tf\u{202e}g\u{0}".into(),
        };
        let out = render(&ServerLine::Deliver(Arc::new(m)), &utc()).unwrap();
        assert_eq!(
            out,
            "1970/01/01 00:00:00 ev\u{FFFD}il: a\u{FFFD}[2Jb\u{FFFD}c\u{FFFD}d\u{FFFD}e f\u{FFFD}g\u{FFFD}"
        );
        assert!(!out.chars().any(|c| c.is_control()));
        let e = ErrorReply::UnknownCommand {
            word: "\u{1b}]0;pwned\u{7}".into(),
        };
        assert!(!error_words(&e).chars().any(|c| c.is_control()));
        assert!(matches!(sanitize("plain é text"), Cow::Borrowed(_)));
    }

    #[test]
    fn times_are_shown_in_the_given_zone() {
        let t = Time::parse_rfc3339("2026-11-24T17:12:01Z").unwrap();
        let tokyo = FixedOffset::east_opt(9 * 3600).unwrap();
        let new_york = FixedOffset::west_opt(5 * 3600).unwrap();
        assert_eq!(local_time(t, &tokyo), "2026/11/25 02:12:01");
        assert_eq!(local_time(t, &new_york), "2026/11/24 12:12:01");
        let half = FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
        assert_eq!(local_time(t, &half), "2026/11/24 22:42:01");
    }
}
