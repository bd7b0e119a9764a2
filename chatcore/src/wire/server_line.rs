//! Server lines: everything `chatd` sends, parsed and printed.

use std::fmt;
use std::sync::Arc;

use super::DecodeError;
use crate::message::{Message, MessageKind};
use crate::names::is_valid_user_name;
use crate::time::{Rfc3339, Time};

/// What an `ASK` line asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// `ASK username`.
    Username,
    /// `ASK password`.
    Password,
}

/// Why a message was held rather than delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldBecause {
    /// The recipient is not logged in.
    Offline,
    /// The recipient said `idle busy`.
    Busy,
}

/// A user's status after `idle busy` or `idle online`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Messages are delivered at once.
    Online,
    /// Messages are held until `idle online`.
    Busy,
}

/// The reason in a `BYE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByeReason {
    /// The client sent `logout`.
    Logout,
    /// No command for `time_out`.
    Timeout,
    /// The server is shutting down.
    Shutdown,
    /// The (user name, address) pair is locked out.
    Blocked,
    /// The connection used up its login attempts.
    LoginFailed,
    /// The connection did not log in within `login_timeout`.
    LoginTimeout,
}

impl ByeReason {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ByeReason::Logout => "logout",
            ByeReason::Timeout => "timeout",
            ByeReason::Shutdown => "shutdown",
            ByeReason::Blocked => "blocked",
            ByeReason::LoginFailed => "login-failed",
            ByeReason::LoginTimeout => "login-timeout",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "logout" => ByeReason::Logout,
            "timeout" => ByeReason::Timeout,
            "shutdown" => ByeReason::Shutdown,
            "blocked" => ByeReason::Blocked,
            "login-failed" => ByeReason::LoginFailed,
            "login-timeout" => ByeReason::LoginTimeout,
            _ => return None,
        })
    }
}

/// An `ERR` line: a code clients match on, and its detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorReply {
    /// `ERR line-too-long <max>`.
    LineTooLong {
        /// The configured `max_line_bytes`.
        max: usize,
    },
    /// `ERR bad-encoding`.
    BadEncoding,
    /// `ERR bad-credentials`: unknown user or wrong password, alike.
    BadCredentials,
    /// `ERR already-online`.
    AlreadyOnline,
    /// `ERR blocked <seconds-left>`.
    Blocked {
        /// Whole seconds until the block ends, rounded up.
        seconds_left: u64,
    },
    /// `ERR unknown-command <word>`.
    UnknownCommand {
        /// The word as typed.
        word: String,
    },
    /// `ERR usage <usage>`.
    Usage {
        /// How the command is used, e.g. `wholast <0-59>`.
        usage: String,
    },
    /// `ERR unknown-user <user>`.
    UnknownUser {
        /// The name as typed.
        user: String,
    },
    /// `ERR queue-full <user>`.
    QueueFull {
        /// Whose box is full.
        user: String,
    },
    /// `ERR rate-limited [<detail>]`.
    RateLimited {
        /// What was refused, for people.
        detail: String,
    },
    /// `ERR unavailable [<detail>]`: the server cannot make the command's
    /// effect durable right now (its disk is full); nothing was done.
    Unavailable {
        /// Why, for people.
        detail: String,
    },
}

impl ErrorReply {
    /// The code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorReply::LineTooLong { .. } => "line-too-long",
            ErrorReply::BadEncoding => "bad-encoding",
            ErrorReply::BadCredentials => "bad-credentials",
            ErrorReply::AlreadyOnline => "already-online",
            ErrorReply::Blocked { .. } => "blocked",
            ErrorReply::UnknownCommand { .. } => "unknown-command",
            ErrorReply::Usage { .. } => "usage",
            ErrorReply::UnknownUser { .. } => "unknown-user",
            ErrorReply::QueueFull { .. } => "queue-full",
            ErrorReply::RateLimited { .. } => "rate-limited",
            ErrorReply::Unavailable { .. } => "unavailable",
        }
    }
}

/// A line the decoder refused is answered with the `ERR` naming why
/// ([PROTOCOL.md §2](crate::protocol#2-server-lines)), whether it came during login or after.
impl From<DecodeError> for ErrorReply {
    fn from(error: DecodeError) -> Self {
        match error {
            DecodeError::LineTooLong { max } => ErrorReply::LineTooLong { max },
            DecodeError::BadEncoding => ErrorReply::BadEncoding,
        }
    }
}

/// One line from the server ([PROTOCOL.md §2](crate::protocol#2-server-lines)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerLine {
    /// `HELLO CHAT/1`.
    Hello,
    /// `ASK username` / `ASK password`.
    Ask(Ask),
    /// `OK login <user>`.
    LoggedIn {
        /// Who is now logged in.
        user: String,
    },
    /// `OFFLINE <n>`: `n` held messages follow.
    Offline {
        /// How many follow.
        count: usize,
    },
    /// A delivered message: `MSG` for a private one, `BCAST` for a
    /// broadcast, by its [`kind`](Message::kind). Both have one layout,
    /// fields separated by one space:
    ///
    /// ```text
    /// MSG <id> <ts> <from> <text>
    /// BCAST <id> <ts> <from> <text>
    /// ```
    ///
    /// | field | from | encoding |
    /// |---|---|---|
    /// | `<id>` | [`Message::id`] | decimal digits; unique per server store, increasing, never reused, not dense; every copy of one broadcast has the same id |
    /// | `<ts>` | [`Message::at`] | when the server accepted the message, RFC 3339 UTC to the whole second (`2026-11-24T17:12:01Z`, no fraction, no other offset); a held message keeps it |
    /// | `<from>` | [`Message::from`] | the sender's user name: 1 to 32 of `A-Z a-z 0-9 _ . -` |
    /// | `<text>` | [`Message::text`] | the rest of the line, never empty: the sender's text from its first non-blank character, byte for byte (spaces inside and at the end included, so split off the first four fields only); valid UTF-8 with no control character but TAB |
    ///
    /// A client that may see a message twice (after a drop, unconfirmed
    /// deliveries come again, [PROTOCOL.md
    /// §6](crate::protocol#delivery-guarantee-at-least-once-in-order)) drops
    /// ids it has already shown. The lines are in [PROTOCOL.md
    /// §2](crate::protocol#2-server-lines).
    ///
    /// ```
    /// use chatcore::wire::ServerLine;
    /// use chatcore::{MessageKind, Time};
    ///
    /// let line = "MSG 17 2026-11-24T17:12:01Z bob see  you later ";
    /// let ServerLine::Deliver(message) = ServerLine::parse(line).unwrap() else {
    ///     panic!("not a delivery");
    /// };
    /// assert_eq!(message.id, 17);
    /// assert_eq!(message.at, Time::parse_rfc3339("2026-11-24T17:12:01Z").unwrap());
    /// assert_eq!(message.from, "bob");
    /// assert_eq!(message.kind, MessageKind::Private);
    /// assert_eq!(message.text, "see  you later ");
    /// assert_eq!(ServerLine::Deliver(message).to_string(), line);
    /// ```
    Deliver(Arc<Message>),
    /// `OK message <user> delivered`.
    Delivered {
        /// The recipient.
        user: String,
    },
    /// `OK message <user> queued <offline|busy>`.
    Queued {
        /// The recipient.
        user: String,
        /// Why it was held.
        because: HeldBecause,
    },
    /// `OK broadcast <delivered> <queued> [full <u1>,<u2>...]`.
    Broadcasted {
        /// Recipients it was delivered to at once.
        delivered: usize,
        /// Recipients it was held for.
        queued: usize,
        /// Recipients whose box was full, sorted.
        full: Vec<String>,
    },
    /// `OK status <online|busy>`.
    Status(Status),
    /// `WHO [<user> ...]`.
    Who(Vec<String>),
    /// `LAST [<user> ...]`.
    Last(Vec<String>),
    /// `IDLE <seq>`: the heartbeat probe.
    Idle {
        /// The probe's sequence number.
        seq: u64,
    },
    /// `ERR <code> [<detail>]`.
    Err(ErrorReply),
    /// `BYE <reason>`: the server closes after it.
    Bye(ByeReason),
}

/// A line that is not a CHAT/1 server line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a CHAT/1 server line: {0:?}")]
pub struct BadServerLine(pub String);

/// Appends `n` in decimal.
fn push_number(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

fn write_names(f: &mut fmt::Formatter<'_>, kind: &str, names: &[String]) -> fmt::Result {
    f.write_str(kind)?;
    for n in names {
        write!(f, " {n}")?;
    }
    Ok(())
}

impl fmt::Display for ServerLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerLine::Hello => f.write_str("HELLO CHAT/1"),
            ServerLine::Ask(Ask::Username) => f.write_str("ASK username"),
            ServerLine::Ask(Ask::Password) => f.write_str("ASK password"),
            ServerLine::LoggedIn { user } => write!(f, "OK login {user}"),
            ServerLine::Offline { count } => write!(f, "OFFLINE {count}"),
            ServerLine::Deliver(m) => {
                let kind = match m.kind {
                    MessageKind::Private => "MSG",
                    MessageKind::Broadcast => "BCAST",
                };
                write!(f, "{kind} {} {} {} {}", m.id, Rfc3339(m.at), m.from, m.text)
            }
            ServerLine::Delivered { user } => write!(f, "OK message {user} delivered"),
            ServerLine::Queued { user, because } => {
                let why = match because {
                    HeldBecause::Offline => "offline",
                    HeldBecause::Busy => "busy",
                };
                write!(f, "OK message {user} queued {why}")
            }
            ServerLine::Broadcasted {
                delivered,
                queued,
                full,
            } => {
                write!(f, "OK broadcast {delivered} {queued}")?;
                if !full.is_empty() {
                    write!(f, " full {}", full.join(","))?;
                }
                Ok(())
            }
            ServerLine::Status(Status::Online) => f.write_str("OK status online"),
            ServerLine::Status(Status::Busy) => f.write_str("OK status busy"),
            ServerLine::Who(names) => write_names(f, "WHO", names),
            ServerLine::Last(names) => write_names(f, "LAST", names),
            ServerLine::Idle { seq } => write!(f, "IDLE {seq}"),
            ServerLine::Err(e) => {
                write!(f, "ERR {}", e.code())?;
                match e {
                    ErrorReply::LineTooLong { max } => write!(f, " {max}"),
                    ErrorReply::Blocked { seconds_left } => write!(f, " {seconds_left}"),
                    ErrorReply::UnknownCommand { word: d }
                    | ErrorReply::Usage { usage: d }
                    | ErrorReply::UnknownUser { user: d }
                    | ErrorReply::QueueFull { user: d }
                    | ErrorReply::RateLimited { detail: d }
                    | ErrorReply::Unavailable { detail: d } => {
                        if d.is_empty() {
                            Ok(())
                        } else {
                            write!(f, " {d}")
                        }
                    }
                    ErrorReply::BadEncoding
                    | ErrorReply::BadCredentials
                    | ErrorReply::AlreadyOnline => Ok(()),
                }
            }
            ServerLine::Bye(reason) => write!(f, "BYE {}", reason.as_str()),
        }
    }
}

/// Splits at the first single space: the field and the rest of the line.
fn field(s: &str) -> (&str, Option<&str>) {
    match s.split_once(' ') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    }
}

fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn names(rest: Option<&str>) -> Option<Vec<String>> {
    match rest {
        None => Some(Vec::new()),
        Some(r) => r
            .split(' ')
            .map(|n| is_valid_user_name(n).then(|| n.to_string()))
            .collect(),
    }
}

fn parse_deliver(kind: MessageKind, rest: &str) -> Option<ServerLine> {
    let (id, rest) = field(rest);
    let (ts, rest) = field(rest?);
    let (from, text) = field(rest?);
    let text = text?;
    if !is_valid_user_name(from) || text.is_empty() {
        return None;
    }
    Some(ServerLine::Deliver(Arc::new(Message {
        id: number(id)?,
        at: Time::parse_rfc3339(ts)?,
        from: from.to_string(),
        kind,
        text: text.to_string(),
    })))
}

fn parse_ok(rest: &str) -> Option<ServerLine> {
    let (what, rest) = field(rest);
    match (what, rest) {
        ("login", Some(user)) if is_valid_user_name(user) => Some(ServerLine::LoggedIn {
            user: user.to_string(),
        }),
        ("message", Some(rest)) => {
            let (user, rest) = field(rest);
            if !is_valid_user_name(user) {
                return None;
            }
            let user = user.to_string();
            match rest? {
                "delivered" => Some(ServerLine::Delivered { user }),
                "queued offline" => Some(ServerLine::Queued {
                    user,
                    because: HeldBecause::Offline,
                }),
                "queued busy" => Some(ServerLine::Queued {
                    user,
                    because: HeldBecause::Busy,
                }),
                _ => None,
            }
        }
        ("broadcast", Some(rest)) => {
            let (delivered, rest) = field(rest);
            let (queued, rest) = field(rest?);
            let full = match rest {
                None => Vec::new(),
                Some(r) => {
                    let list = r.strip_prefix("full ")?;
                    list.split(',')
                        .map(|n| is_valid_user_name(n).then(|| n.to_string()))
                        .collect::<Option<Vec<_>>>()?
                }
            };
            Some(ServerLine::Broadcasted {
                delivered: number(delivered)?,
                queued: number(queued)?,
                full,
            })
        }
        ("status", Some("online")) => Some(ServerLine::Status(Status::Online)),
        ("status", Some("busy")) => Some(ServerLine::Status(Status::Busy)),
        _ => None,
    }
}

fn parse_err(rest: &str) -> Option<ErrorReply> {
    let (code, detail) = field(rest);
    // `ERR usage ` with nothing after the space has no detail.
    let detail = detail.filter(|d| !d.is_empty());
    let text = || detail.map(str::to_string);
    Some(match code {
        "line-too-long" => ErrorReply::LineTooLong {
            max: number(detail?)?,
        },
        "bad-encoding" if detail.is_none() => ErrorReply::BadEncoding,
        "bad-credentials" if detail.is_none() => ErrorReply::BadCredentials,
        "already-online" if detail.is_none() => ErrorReply::AlreadyOnline,
        "blocked" => ErrorReply::Blocked {
            seconds_left: number(detail?)?,
        },
        "unknown-command" => ErrorReply::UnknownCommand { word: text()? },
        "usage" => ErrorReply::Usage { usage: text()? },
        "unknown-user" => ErrorReply::UnknownUser { user: text()? },
        "queue-full" => ErrorReply::QueueFull { user: text()? },
        "rate-limited" => ErrorReply::RateLimited {
            detail: text().unwrap_or_default(),
        },
        "unavailable" => ErrorReply::Unavailable {
            detail: text().unwrap_or_default(),
        },
        _ => return None,
    })
}

impl ServerLine {
    /// Appends the line as sent: what [`fmt::Display`] shows, then `\n`.
    ///
    /// The lines a server sends for every message (`MSG`/`BCAST`, and the
    /// `OK` for a message) are put together by hand: through the formatting
    /// machinery they were a tenth of chatd's instructions per message.
    /// The others go through [`fmt::Display`].
    pub fn write_line(&self, out: &mut String) {
        match self {
            ServerLine::Deliver(m) => {
                out.push_str(match m.kind {
                    MessageKind::Private => "MSG ",
                    MessageKind::Broadcast => "BCAST ",
                });
                push_number(out, m.id);
                out.push(' ');
                Rfc3339(m.at).push_to(out);
                out.push(' ');
                out.push_str(&m.from);
                out.push(' ');
                out.push_str(&m.text);
            }
            ServerLine::Delivered { user } => {
                out.push_str("OK message ");
                out.push_str(user);
                out.push_str(" delivered");
            }
            ServerLine::Queued { user, because } => {
                out.push_str("OK message ");
                out.push_str(user);
                out.push_str(match because {
                    HeldBecause::Offline => " queued offline",
                    HeldBecause::Busy => " queued busy",
                });
            }
            other => {
                use fmt::Write as _;
                let _ = write!(out, "{other}");
            }
        }
        out.push('\n');
    }

    /// Parses one server line (without its `\n`), as [`fmt::Display`] writes it.
    pub fn parse(line: &str) -> Result<ServerLine, BadServerLine> {
        Self::parse_opt(line).ok_or_else(|| BadServerLine(line.to_string()))
    }

    fn parse_opt(line: &str) -> Option<ServerLine> {
        let (kind, rest) = field(line);
        match (kind, rest) {
            ("HELLO", Some("CHAT/1")) => Some(ServerLine::Hello),
            ("ASK", Some("username")) => Some(ServerLine::Ask(Ask::Username)),
            ("ASK", Some("password")) => Some(ServerLine::Ask(Ask::Password)),
            ("OK", Some(rest)) => parse_ok(rest),
            ("OFFLINE", Some(n)) => Some(ServerLine::Offline { count: number(n)? }),
            ("MSG", Some(rest)) => parse_deliver(MessageKind::Private, rest),
            ("BCAST", Some(rest)) => parse_deliver(MessageKind::Broadcast, rest),
            ("WHO", rest) => Some(ServerLine::Who(names(rest)?)),
            ("LAST", rest) => Some(ServerLine::Last(names(rest)?)),
            ("IDLE", Some(n)) => Some(ServerLine::Idle { seq: number(n)? }),
            ("ERR", Some(rest)) => Some(ServerLine::Err(parse_err(rest)?)),
            ("BYE", Some(r)) => Some(ServerLine::Bye(ByeReason::parse(r)?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_lines_are_answered_with_their_error() {
        let too_long = ErrorReply::from(DecodeError::LineTooLong { max: 4096 });
        assert_eq!(
            ServerLine::Err(too_long).to_string(),
            "ERR line-too-long 4096"
        );
        let bad = ErrorReply::from(DecodeError::BadEncoding);
        assert_eq!(ServerLine::Err(bad).to_string(), "ERR bad-encoding");
    }

    #[test]
    fn protocol_examples_parse_and_print_back() {
        for line in [
            "HELLO CHAT/1",
            "ASK username",
            "ASK password",
            "OK login alice",
            "OFFLINE 1",
            "MSG 17 2026-11-24T17:12:01Z bob see you later",
            "BCAST 18 2026-11-24T17:12:01Z bob  spaced  out ",
            "OK message bob delivered",
            "OK message bob queued offline",
            "OK message bob queued busy",
            "OK broadcast 3 2",
            "OK broadcast 3 0 full carol,dave",
            "OK status online",
            "OK status busy",
            "WHO",
            "WHO bob carol",
            "LAST",
            "IDLE 4",
            "ERR line-too-long 4096",
            "ERR bad-encoding",
            "ERR bad-credentials",
            "ERR already-online",
            "ERR blocked 42",
            "ERR unknown-command dance",
            "ERR usage wholast <0-59>",
            "ERR unknown-user zed",
            "ERR queue-full bob",
            "ERR rate-limited",
            "ERR rate-limited slow down",
            "BYE login-timeout",
        ] {
            let parsed = ServerLine::parse(line).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.to_string(), line);
        }
    }

    #[test]
    fn refuses_what_is_not_a_server_line() {
        for line in [
            "",
            "hello CHAT/1",
            "OK",
            "OK login",
            "MSG x 2026-11-24T17:12:01Z bob hi",
            "MSG 1 2026-11-24T17:12:01Z bob",
            "ERR blocked soon",
            "ERR mystery",
            "BYE later",
            "IDLE",
        ] {
            assert!(ServerLine::parse(line).is_err(), "{line:?}");
        }
    }
}
