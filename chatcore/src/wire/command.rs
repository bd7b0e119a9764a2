//! Client commands: what a logged-in client may send, parsed and printed.

use std::fmt;

/// Who a `broadcast` goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    /// `broadcast message <text>` (or `broadcast <text>`): every online
    /// user, the sender included; offline users get nothing.
    Online,
    /// `broadcast all <text>`: every account; offline ones get it held.
    All,
    /// `broadcast user <u1> [<u2> ...] message <text>`: the listed users, as
    /// typed (duplicates are ignored when routing); offline ones get it held.
    Users(Vec<String>),
}

/// The argument of an `idle` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleArg {
    /// A bare `idle`: a sign of life that confirms nothing.
    None,
    /// `idle <seq>`: the answer to the probe `IDLE <seq>`.
    Seq(u64),
    /// `idle busy`: hold every message from now on.
    Busy,
    /// `idle online`: deliver what was held and stop holding.
    Online,
}

/// A command from a logged-in client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `message <user> <text>`.
    Message {
        /// The recipient, as typed.
        to: String,
        /// The text, byte for byte.
        text: String,
    },
    /// One of the `broadcast` forms.
    Broadcast {
        /// Who it goes to.
        audience: Audience,
        /// The text, byte for byte.
        text: String,
    },
    /// `whoelse`.
    WhoElse,
    /// `wholast <minutes>`; the range is checked by the server, which knows
    /// `last_hour_minutes`.
    WhoLast {
        /// The window, in minutes.
        minutes: u64,
    },
    /// `idle [<seq>|busy|online]`.
    Idle(IdleArg),
    /// `logout`.
    Logout,
}

/// Which command a usage error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageOf {
    /// `message <user> <text>`.
    Message,
    /// Any `broadcast` form.
    Broadcast,
    /// `whoelse` (it takes no argument).
    WhoElse,
    /// `wholast <minutes>`.
    WhoLast,
    /// `idle [<seq>|busy|online]`.
    Idle,
    /// `logout` (it takes no argument).
    Logout,
}

impl UsageOf {
    /// The usage text sent after `ERR usage`. `wholast`'s range depends on
    /// the configuration, so it is given here.
    pub fn text(self, last_hour_minutes: u64) -> String {
        match self {
            UsageOf::Message => "message <user> <text>".into(),
            UsageOf::Broadcast => {
                "broadcast [message|all|user <u1> [<u2> ...] message] <text>".into()
            }
            UsageOf::WhoElse => "whoelse".into(),
            UsageOf::WhoLast => format!("wholast <0-{}>", last_hour_minutes.saturating_sub(1)),
            UsageOf::Idle => "idle [<seq>|busy|online]".into(),
            UsageOf::Logout => "logout".into(),
        }
    }
}

/// Why a line is not a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// An empty or all-blank line: ignored, never answered.
    Blank,
    /// The first word is no command; holds the word as typed.
    UnknownCommand(String),
    /// A known command with missing or malformed arguments.
    Usage(UsageOf),
}

const KEYWORDS: [&str; 6] = [
    "message",
    "broadcast",
    "whoelse",
    "wholast",
    "idle",
    "logout",
];

/// Splits off the first blank-separated word; the rest starts at the next
/// non-blank character (so free text keeps its inner and trailing blanks).
///
/// Blanks are ASCII, so the bytes are searched rather than the characters
/// decoded: every command line is split at least twice, and decoding was
/// most of the cost of parsing one.
fn split_word(s: &str) -> (&str, &str) {
    let s = trim_blanks(s);
    match s.bytes().position(is_blank) {
        Some(i) => (&s[..i], trim_blanks(&s[i..])),
        None => (s, ""),
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `s` without its leading blanks.
fn trim_blanks(s: &str) -> &str {
    let start = s.bytes().position(|b| !is_blank(b));
    // A blank is one byte, so a non-blank's position is a character
    // boundary; all blanks leave nothing.
    s.get(start.unwrap_or(s.len())..).unwrap_or_default()
}

fn starts_with_idle(word: &str) -> bool {
    word.len() >= 4 && word.as_bytes()[..4].eq_ignore_ascii_case(b"idle")
}

fn ends_with_idle(word: &str) -> bool {
    word.len() >= 4 && word.as_bytes()[word.len() - 4..].eq_ignore_ascii_case(b"idle")
}

/// Strips `idle` glued in front of a keyword any number of times; `idleidle`
/// becomes `idle`. Returns the word unchanged when what remains is no
/// keyword, so `idlefoo` stays an unknown command named as typed.
fn strip_leading_idle(word: &str) -> &str {
    if !starts_with_idle(word) {
        // Nearly every command: no keyword search for what is unchanged.
        return word;
    }
    let w = strip_leading_idle_raw(word);
    if is_keyword(w) {
        w
    } else {
        word
    }
}

fn strip_leading_idle_raw(word: &str) -> &str {
    let mut w = word;
    while starts_with_idle(w) && w.len() > 4 {
        w = &w[4..];
    }
    w
}

fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}

/// Strips `idle` glued to the end of a word, any number of times, keeping at
/// least one byte.
fn strip_trailing_idle(word: &str) -> &str {
    let mut w = word;
    while ends_with_idle(w) && w.len() > 4 {
        w = &w[..w.len() - 4];
    }
    w
}

impl Command {
    /// Parses one line from a logged-in client, after stripping the `idle`
    /// tokens that clients glue to commands ([PROTOCOL.md §4](crate::protocol#4-commands)): leading `idle`
    /// glued to the keyword, trailing `idle` glued to the last token of
    /// `whoelse`, `wholast` and `logout`. Free text is never altered.
    pub fn parse(line: &str) -> Result<Command, ParseError> {
        let (first, rest) = split_word(line);
        if first.is_empty() {
            return Err(ParseError::Blank);
        }
        let mut word = strip_leading_idle(first);
        // `whoelseidle`, `logoutidle`: the keyword is the last token.
        if rest.is_empty() && !is_keyword(word) {
            let stripped = strip_trailing_idle(strip_leading_idle_raw(first));
            if ["whoelse", "logout", "wholast"]
                .iter()
                .any(|k| k.eq_ignore_ascii_case(stripped))
            {
                word = stripped;
            }
        }
        // Compared in place: a lowercased copy was an allocation a line.
        let is = |k: &str| word.eq_ignore_ascii_case(k);
        if is("message") {
            parse_message(rest)
        } else if is("broadcast") {
            parse_broadcast(rest)
        } else if is("whoelse") {
            no_args(rest, Command::WhoElse, UsageOf::WhoElse)
        } else if is("logout") {
            no_args(rest, Command::Logout, UsageOf::Logout)
        } else if is("wholast") {
            parse_wholast(rest)
        } else if is("idle") {
            parse_idle(rest)
        } else {
            Err(ParseError::UnknownCommand(first.to_string()))
        }
    }
}

/// `whoelse idle` is two tokens, and separated tokens are never stripped: a
/// usage error, not a silent `whoelse`.
fn no_args(rest: &str, cmd: Command, usage: UsageOf) -> Result<Command, ParseError> {
    if rest.is_empty() {
        Ok(cmd)
    } else {
        Err(ParseError::Usage(usage))
    }
}

fn parse_message(rest: &str) -> Result<Command, ParseError> {
    let (to, text) = split_word(rest);
    if to.is_empty() || text.is_empty() {
        return Err(ParseError::Usage(UsageOf::Message));
    }
    Ok(Command::Message {
        to: to.to_string(),
        text: text.to_string(),
    })
}

fn parse_broadcast(rest: &str) -> Result<Command, ParseError> {
    let usage = Err(ParseError::Usage(UsageOf::Broadcast));
    let (first, after) = split_word(rest);
    if first.is_empty() {
        return usage;
    }
    let (audience, text) = if first.eq_ignore_ascii_case("message") {
        (Audience::Online, after)
    } else if first.eq_ignore_ascii_case("all") {
        (Audience::All, after)
    } else if first.eq_ignore_ascii_case("user") {
        let mut users = Vec::new();
        let mut cursor = after;
        loop {
            let (name, next) = split_word(cursor);
            if name.is_empty() {
                return usage; // the list never reached `message`
            }
            if name.eq_ignore_ascii_case("message") {
                cursor = next;
                break;
            }
            users.push(name.to_string());
            cursor = next;
        }
        if users.is_empty() {
            return usage;
        }
        (Audience::Users(users), cursor)
    } else {
        (Audience::Online, rest)
    };
    if text.is_empty() {
        return usage;
    }
    Ok(Command::Broadcast {
        audience,
        text: text.to_string(),
    })
}

fn parse_wholast(rest: &str) -> Result<Command, ParseError> {
    let (arg, extra) = split_word(rest);
    let arg = strip_trailing_idle(arg);
    if arg.is_empty() || !extra.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Usage(UsageOf::WhoLast));
    }
    let minutes = arg
        .parse()
        .map_err(|_| ParseError::Usage(UsageOf::WhoLast))?;
    Ok(Command::WhoLast { minutes })
}

fn parse_idle(rest: &str) -> Result<Command, ParseError> {
    let (arg, extra) = split_word(rest);
    if !extra.is_empty() {
        return Err(ParseError::Usage(UsageOf::Idle));
    }
    let arg = if arg.is_empty() {
        IdleArg::None
    } else if arg.eq_ignore_ascii_case("busy") {
        IdleArg::Busy
    } else if arg.eq_ignore_ascii_case("online") {
        IdleArg::Online
    } else if arg.bytes().all(|b| b.is_ascii_digit()) {
        IdleArg::Seq(arg.parse().map_err(|_| ParseError::Usage(UsageOf::Idle))?)
    } else {
        return Err(ParseError::Usage(UsageOf::Idle));
    };
    Ok(Command::Idle(arg))
}

impl fmt::Display for Command {
    /// The canonical form, which [`Command::parse`] reads back as the same
    /// value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Message { to, text } => write!(f, "message {to} {text}"),
            Command::Broadcast { audience, text } => match audience {
                Audience::Online => write!(f, "broadcast message {text}"),
                Audience::All => write!(f, "broadcast all {text}"),
                Audience::Users(users) => {
                    f.write_str("broadcast user")?;
                    for u in users {
                        write!(f, " {u}")?;
                    }
                    write!(f, " message {text}")
                }
            },
            Command::WhoElse => f.write_str("whoelse"),
            Command::WhoLast { minutes } => write!(f, "wholast {minutes}"),
            Command::Idle(IdleArg::None) => f.write_str("idle"),
            Command::Idle(IdleArg::Seq(n)) => write!(f, "idle {n}"),
            Command::Idle(IdleArg::Busy) => f.write_str("idle busy"),
            Command::Idle(IdleArg::Online) => f.write_str("idle online"),
            Command::Logout => f.write_str("logout"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, ParseError> {
        Command::parse(s)
    }

    fn msg(to: &str, text: &str) -> Result<Command, ParseError> {
        Ok(Command::Message {
            to: to.into(),
            text: text.into(),
        })
    }

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(p("WhoElse"), Ok(Command::WhoElse));
        assert_eq!(p("LOGOUT"), Ok(Command::Logout));
        assert_eq!(p("Message Bob Hi There"), msg("Bob", "Hi There"));
    }

    #[test]
    fn leading_glued_idle_is_stripped_any_number_of_times() {
        assert_eq!(p("idlewhoelse"), Ok(Command::WhoElse));
        assert_eq!(p("idleidlelogout"), Ok(Command::Logout));
        assert_eq!(p("idlemessage bob hi"), msg("bob", "hi"));
        assert_eq!(p("IDLEwholast 5"), Ok(Command::WhoLast { minutes: 5 }));
        assert_eq!(p("idleidle"), Ok(Command::Idle(IdleArg::None)));
        assert_eq!(p("idleidleidle"), Ok(Command::Idle(IdleArg::None)));
        assert_eq!(p("idleidle 7"), Ok(Command::Idle(IdleArg::Seq(7))));
        assert_eq!(
            p("idlefoo"),
            Err(ParseError::UnknownCommand("idlefoo".into()))
        );
    }

    #[test]
    fn trailing_glued_idle_only_on_commands_without_free_text() {
        assert_eq!(p("whoelseidle"), Ok(Command::WhoElse));
        assert_eq!(p("logoutidle"), Ok(Command::Logout));
        assert_eq!(p("idlelogoutidle"), Ok(Command::Logout));
        assert_eq!(p("wholast 32idle"), Ok(Command::WhoLast { minutes: 32 }));
        assert_eq!(
            p("wholast 32idleidle"),
            Ok(Command::WhoLast { minutes: 32 })
        );
        assert_eq!(p("wholastidle"), Err(ParseError::Usage(UsageOf::WhoLast)));
        assert_eq!(p("message bob I am idle"), msg("bob", "I am idle"));
        assert_eq!(p("message bob keep it idle"), msg("bob", "keep it idle"));
        assert_eq!(p("message bob idle"), msg("bob", "idle"));
        assert_eq!(p("message bobidle hi"), msg("bobidle", "hi"));
        assert_eq!(
            p("broadcast hiidle"),
            Ok(Command::Broadcast {
                audience: Audience::Online,
                text: "hiidle".into()
            })
        );
    }

    #[test]
    fn separated_idle_is_not_stripped() {
        assert_eq!(
            p("wholast 32 idle"),
            Err(ParseError::Usage(UsageOf::WhoLast))
        );
        assert_eq!(p("whoelse idle"), Err(ParseError::Usage(UsageOf::WhoElse)));
        assert_eq!(p("logout idle"), Err(ParseError::Usage(UsageOf::Logout)));
        assert_eq!(p("idle idle"), Err(ParseError::Usage(UsageOf::Idle)));
    }

    #[test]
    fn free_text_is_kept_byte_for_byte() {
        assert_eq!(p("message bob  two  spaces  "), msg("bob", "two  spaces  "));
        assert_eq!(p("message\tbob\ttab\there"), msg("bob", "tab\there"));
        assert_eq!(p("message bob ÉCHO ✓"), msg("bob", "ÉCHO ✓"));
    }

    #[test]
    fn broadcast_forms() {
        let b = |audience, text: &str| {
            Ok(Command::Broadcast {
                audience,
                text: text.into(),
            })
        };
        assert_eq!(p("broadcast message hi all"), b(Audience::Online, "hi all"));
        assert_eq!(p("broadcast hi all"), b(Audience::Online, "hi all"));
        assert_eq!(p("broadcast allow me"), b(Audience::Online, "allow me"));
        assert_eq!(p("broadcast ALL hi"), b(Audience::All, "hi"));
        assert_eq!(
            p("broadcast user a b a Message hi there"),
            b(
                Audience::Users(vec!["a".into(), "b".into(), "a".into()]),
                "hi there"
            )
        );
        for bad in [
            "broadcast",
            "broadcast message",
            "broadcast all",
            "broadcast user a b",
            "broadcast user message hi",
            "broadcast user a message",
        ] {
            assert_eq!(p(bad), Err(ParseError::Usage(UsageOf::Broadcast)), "{bad}");
        }
    }

    #[test]
    fn errors() {
        assert_eq!(p(""), Err(ParseError::Blank));
        assert_eq!(p(" \t "), Err(ParseError::Blank));
        assert_eq!(
            p("dance now"),
            Err(ParseError::UnknownCommand("dance".into()))
        );
        assert_eq!(p("message bob"), Err(ParseError::Usage(UsageOf::Message)));
        assert_eq!(
            p("message bob   "),
            Err(ParseError::Usage(UsageOf::Message))
        );
        assert_eq!(p("message"), Err(ParseError::Usage(UsageOf::Message)));
        for bad in [
            "wholast",
            "wholast x",
            "wholast -1",
            "wholast +5",
            "wholast 99999999999999999999999",
        ] {
            assert_eq!(p(bad), Err(ParseError::Usage(UsageOf::WhoLast)), "{bad}");
        }
        assert_eq!(p("idle later"), Err(ParseError::Usage(UsageOf::Idle)));
        assert_eq!(p("idle 3"), Ok(Command::Idle(IdleArg::Seq(3))));
        assert_eq!(p("idle BUSY"), Ok(Command::Idle(IdleArg::Busy)));
        assert_eq!(p("  whoelse"), Ok(Command::WhoElse));
    }

    #[test]
    fn usage_texts() {
        assert_eq!(UsageOf::WhoLast.text(60), "wholast <0-59>");
        assert_eq!(UsageOf::Message.text(60), "message <user> <text>");
    }
}
