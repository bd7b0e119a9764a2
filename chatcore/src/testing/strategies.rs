//! Proptest strategies for CHAT/1 values: user names, free text, client
//! commands and the lines that carry them (with the case changes and glued
//! `idle` tokens [PROTOCOL.md §4](crate::protocol#4-commands) allows), server lines, hostile input, and
//! byte streams chopped at arbitrary read boundaries.
//!
//! Every strategy here produces *valid* values unless its name says
//! otherwise (`hostile_*`), so a round-trip property can use them directly:
//!
//! ```
//! use chatcore::testing::strategies::command;
//! use chatcore::wire::Command;
//! use proptest::prelude::*;
//!
//! proptest!(|(c in command())| {
//!     prop_assert_eq!(Command::parse(&c.to_string()), Ok(c));
//! });
//! ```

use std::sync::Arc;

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use proptest::sample::{select, Index};

use crate::message::{Message, MessageKind};
use crate::names::is_valid_user_name;
use crate::time::Time;
use crate::wire::{
    is_forbidden_control, Ask, Audience, ByeReason, Command, ErrorReply, HeldBecause, IdleArg,
    ServerLine, Status,
};

/// Words that stress the parser when they appear inside free text or next
/// to keywords: the keywords themselves, the `idle` token in several cases,
/// the `broadcast` sub-keywords, digits and some non-ASCII text.
pub const TRICKY_WORDS: &[&str] = &[
    "idle",
    "IDLE",
    "Idle",
    "idleidle",
    "idle7",
    "all",
    "ALL",
    "user",
    "message",
    "Message",
    "broadcast",
    "busy",
    "online",
    "whoelse",
    "logout",
    "wholast",
    "0",
    "42",
    "é",
    "✓",
    "日本",
    "\u{a0}",
    "-",
    "#",
];

/// The last second RFC 3339 with a four-digit year can show
/// (9999-12-31T23:59:59Z), plus one.
const END_OF_YEAR_9999: u64 = 253_402_300_800;

/// Valid user names: 1–32 of `A-Z a-z 0-9 _ . -`, never a reserved word
/// (`all`, `user`, `message` in any case).
pub fn user_name() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => select(&["ann", "bob", "cat", "Alice", "x", "a.b", "_-_", "messages", "allx", "idle", "0"][..])
            .prop_map(String::from),
        3 => "[A-Za-z0-9_.-]{1,32}",
    ]
    .prop_filter("reserved or invalid name", |n| is_valid_user_name(n))
}

/// One character that may appear in free text: anything but a control
/// character other than TAB ([PROTOCOL.md §1](crate::protocol#1-transport-and-framing)). Mostly printable ASCII.
pub fn text_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => proptest::char::range(' ', '~'),
        1 => Just('\t'),
        2 => any::<char>().prop_filter("control character", |c| !is_forbidden_control(*c)),
    ]
}

/// Free text as a client may type it after a command: non-empty, no
/// control characters (TAB allowed), not starting with a blank (space or
/// TAB). Inner and trailing blanks, `idle` and keywords are common.
pub fn free_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => vec(text_char(), 1..8).prop_map(|v| v.into_iter().collect::<String>()),
        2 => select(TRICKY_WORDS).prop_map(String::from),
        2 => select(&[" ", "  ", "\t", " \t "][..]).prop_map(String::from),
    ];
    vec(piece, 1..8).prop_map(|pieces| {
        let s = pieces.concat();
        let t = s.trim_start_matches([' ', '\t']);
        if t.is_empty() {
            format!("x{s}")
        } else {
            t.to_string()
        }
    })
}

/// One word as a client may type it (e.g. the recipient of `message`):
/// non-empty, no blanks, no control characters. Not necessarily a valid
/// user name.
pub fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => user_name(),
        1 => select(TRICKY_WORDS)
            .prop_map(String::from)
            .prop_filter("blank", |w| !w.contains([' ', '\t'])),
        2 => vec(
            text_char().prop_filter("blank", |c| *c != ' ' && *c != '\t'),
            1..12
        )
        .prop_map(|v| v.into_iter().collect::<String>()),
    ]
}

/// Any argument of `idle`.
pub fn idle_arg() -> impl Strategy<Value = IdleArg> {
    prop_oneof![
        Just(IdleArg::None),
        prop_oneof![0u64..100, any::<u64>()].prop_map(IdleArg::Seq),
        Just(IdleArg::Busy),
        Just(IdleArg::Online),
    ]
}

/// Any `broadcast` audience; `Users` lists hold 1–4 valid names, possibly
/// repeated.
pub fn audience() -> impl Strategy<Value = Audience> {
    prop_oneof![
        Just(Audience::Online),
        Just(Audience::All),
        vec(user_name(), 1..5).prop_map(Audience::Users),
    ]
}

/// Any valid [`Command`]: what [`Command::parse`] can return.
pub fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        3 => (token(), free_text()).prop_map(|(to, text)| Command::Message { to, text }),
        3 => (audience(), free_text()).prop_map(|(audience, text)| Command::Broadcast { audience, text }),
        1 => Just(Command::WhoElse),
        1 => prop_oneof![0u64..100, any::<u64>()].prop_map(|minutes| Command::WhoLast { minutes }),
        2 => idle_arg().prop_map(Command::Idle),
        1 => Just(Command::Logout),
    ]
}

/// A moment on the wire: whole seconds between 1970 and the end of 9999.
pub fn timestamp() -> impl Strategy<Value = Time> {
    prop_oneof![(1_700_000_000u64..1_900_000_000), (0u64..END_OF_YEAR_9999),]
        .prop_map(Time::from_unix_secs)
}

/// An accepted message, as `MSG`/`BCAST` carry it.
pub fn message() -> impl Strategy<Value = Arc<Message>> {
    (
        any::<u64>(),
        timestamp(),
        user_name(),
        prop_oneof![Just(MessageKind::Private), Just(MessageKind::Broadcast)],
        free_text(),
    )
        .prop_map(|(id, at, from, kind, text)| {
            Arc::new(Message {
                id,
                at,
                from,
                kind,
                text,
            })
        })
}

/// Any valid [`ErrorReply`] (details non-empty where the wire needs one).
pub fn error_reply() -> impl Strategy<Value = ErrorReply> {
    prop_oneof![
        any::<usize>().prop_map(|max| ErrorReply::LineTooLong { max }),
        Just(ErrorReply::BadEncoding),
        Just(ErrorReply::BadCredentials),
        Just(ErrorReply::AlreadyOnline),
        any::<u64>().prop_map(|seconds_left| ErrorReply::Blocked { seconds_left }),
        token().prop_map(|word| ErrorReply::UnknownCommand { word }),
        free_text().prop_map(|usage| ErrorReply::Usage { usage }),
        token().prop_map(|user| ErrorReply::UnknownUser { user }),
        user_name().prop_map(|user| ErrorReply::QueueFull { user }),
        prop_oneof![Just(String::new()), free_text()]
            .prop_map(|detail| ErrorReply::RateLimited { detail }),
        prop_oneof![Just(String::new()), free_text()]
            .prop_map(|detail| ErrorReply::Unavailable { detail }),
    ]
}

/// Sorted, distinct valid names, as `WHO`, `LAST` and `full` lists carry them.
pub fn sorted_names(max: usize) -> impl Strategy<Value = Vec<String>> {
    btree_set(user_name(), 0..=max).prop_map(|s| s.into_iter().collect())
}

/// Any valid [`ServerLine`].
pub fn server_line() -> impl Strategy<Value = ServerLine> {
    prop_oneof![
        1 => Just(ServerLine::Hello),
        1 => Just(ServerLine::Ask(Ask::Username)),
        1 => Just(ServerLine::Ask(Ask::Password)),
        1 => user_name().prop_map(|user| ServerLine::LoggedIn { user }),
        1 => any::<usize>().prop_map(|count| ServerLine::Offline { count }),
        3 => message().prop_map(ServerLine::Deliver),
        1 => user_name().prop_map(|user| ServerLine::Delivered { user }),
        1 => (user_name(), prop_oneof![Just(HeldBecause::Offline), Just(HeldBecause::Busy)])
            .prop_map(|(user, because)| ServerLine::Queued { user, because }),
        1 => (any::<usize>(), any::<usize>(), sorted_names(4))
            .prop_map(|(delivered, queued, full)| ServerLine::Broadcasted { delivered, queued, full }),
        1 => prop_oneof![Just(Status::Online), Just(Status::Busy)].prop_map(ServerLine::Status),
        1 => sorted_names(5).prop_map(ServerLine::Who),
        1 => sorted_names(5).prop_map(ServerLine::Last),
        1 => any::<u64>().prop_map(|seq| ServerLine::Idle { seq }),
        3 => error_reply().prop_map(ServerLine::Err),
        1 => select(&[
            ByeReason::Logout,
            ByeReason::Timeout,
            ByeReason::Shutdown,
            ByeReason::Blocked,
            ByeReason::LoginFailed,
            ByeReason::LoginTimeout,
        ][..])
        .prop_map(ServerLine::Bye),
    ]
}

/// How a client line is typed: letter case of each keyword, blanks between
/// tokens, `idle` glued in front of the command keyword and (for commands
/// without free text) glued to its last token. Apply it with
/// [`render_command`].
#[derive(Clone, Debug)]
pub struct LineStyle {
    /// Case masks for keywords, used in turn (bit `i` upper-cases letter `i`).
    pub case_masks: Vec<u64>,
    /// One case mask per `idle` glued in front of the command keyword.
    pub leading_idles: Vec<u64>,
    /// One case mask per `idle` glued after the last token (`whoelse`,
    /// `wholast`, `logout` only; ignored elsewhere).
    pub trailing_idles: Vec<u64>,
    /// Blank runs used in turn between tokens before the free text.
    pub separators: Vec<&'static str>,
    /// Blanks before the first token.
    pub leading_blanks: &'static str,
    /// Blanks after the last token of a command without free text.
    pub trailing_blanks: &'static str,
    /// Write `broadcast <text>` for the online audience when the text
    /// allows it (its first word is not `all`, `user` or `message`).
    pub short_broadcast: bool,
}

impl LineStyle {
    /// The canonical style: what `Display` writes.
    pub fn plain() -> Self {
        LineStyle {
            case_masks: vec![0],
            leading_idles: Vec::new(),
            trailing_idles: Vec::new(),
            separators: vec![" "],
            leading_blanks: "",
            trailing_blanks: "",
            short_broadcast: false,
        }
    }
}

/// Any [`LineStyle`]; shrinks towards [`LineStyle::plain`].
pub fn line_style() -> impl Strategy<Value = LineStyle> {
    let blanks = || select(&["", " ", "\t", "  ", " \t"][..]);
    (
        vec(prop_oneof![Just(0u64), any::<u64>()], 1..4),
        vec(prop_oneof![Just(0u64), any::<u64>()], 0..3),
        vec(prop_oneof![Just(0u64), any::<u64>()], 0..3),
        vec(select(&[" ", "  ", "\t", " \t"][..]), 1..3),
        blanks(),
        blanks(),
        any::<bool>(),
    )
        .prop_map(
            |(case_masks, leading_idles, trailing_idles, separators, lead, trail, short)| {
                LineStyle {
                    case_masks,
                    leading_idles,
                    trailing_idles,
                    separators,
                    leading_blanks: lead,
                    trailing_blanks: trail,
                    short_broadcast: short,
                }
            },
        )
}

/// `word` with letter `i` upper-cased where bit `i % 64` of `mask` is set.
pub fn recase(word: &str, mask: u64) -> String {
    word.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Types `cmd` in `style`. The result parses back as `cmd` ([PROTOCOL.md §4](crate::protocol#4-commands):
/// keywords are case-insensitive, glued `idle` tokens are stripped where the
/// protocol allows, blanks between tokens are free).
pub fn render_command(cmd: &Command, style: &LineStyle) -> String {
    let mut kw_i = 0;
    let mut kw = |w: &str| {
        let m = style.case_masks[kw_i % style.case_masks.len()];
        kw_i += 1;
        recase(w, m)
    };
    let lead_idle: String = style
        .leading_idles
        .iter()
        .map(|m| recase("idle", *m))
        .collect();
    let trail_idle: String = style
        .trailing_idles
        .iter()
        .map(|m| recase("idle", *m))
        .collect();
    let mut tokens: Vec<String> = Vec::new();
    let mut text: Option<&str> = None;
    let mut glue_trailing = false;
    match cmd {
        Command::Message { to, text: t } => {
            tokens.push(lead_idle + &kw("message"));
            tokens.push(to.clone());
            text = Some(t);
        }
        Command::Broadcast { audience, text: t } => {
            tokens.push(lead_idle + &kw("broadcast"));
            match audience {
                Audience::Online => {
                    let first = t.split([' ', '\t']).next().unwrap_or("");
                    let ambiguous = ["all", "user", "message"]
                        .iter()
                        .any(|k| k.eq_ignore_ascii_case(first));
                    if !style.short_broadcast || ambiguous {
                        tokens.push(kw("message"));
                    }
                }
                Audience::All => tokens.push(kw("all")),
                Audience::Users(users) => {
                    tokens.push(kw("user"));
                    tokens.extend(users.iter().cloned());
                    tokens.push(kw("message"));
                }
            }
            text = Some(t);
        }
        Command::WhoElse => {
            tokens.push(lead_idle + &kw("whoelse"));
            glue_trailing = true;
        }
        Command::Logout => {
            tokens.push(lead_idle + &kw("logout"));
            glue_trailing = true;
        }
        Command::WhoLast { minutes } => {
            tokens.push(lead_idle + &kw("wholast"));
            tokens.push(minutes.to_string());
            glue_trailing = true;
        }
        Command::Idle(arg) => {
            tokens.push(lead_idle + &kw("idle"));
            match arg {
                IdleArg::None => {}
                IdleArg::Seq(n) => tokens.push(n.to_string()),
                IdleArg::Busy => tokens.push(kw("busy")),
                IdleArg::Online => tokens.push(kw("online")),
            }
        }
    }
    if glue_trailing {
        if let Some(last) = tokens.last_mut() {
            last.push_str(&trail_idle);
        }
    }
    let mut line = String::from(style.leading_blanks);
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            line.push_str(style.separators[i % style.separators.len()]);
        }
        line.push_str(t);
    }
    match text {
        Some(t) => {
            line.push_str(style.separators[tokens.len() % style.separators.len()]);
            line.push_str(t);
        }
        None => line.push_str(style.trailing_blanks),
    }
    line
}

/// A client line and the command it must parse as: the `Display` of a
/// valid command retyped in a random [`LineStyle`].
pub fn client_line() -> impl Strategy<Value = (String, Command)> {
    (command(), line_style()).prop_map(|(c, s)| (render_command(&c, &s), c))
}

/// Lines made of `idle` tokens, keywords, digits and blanks glued in any
/// order: the input the idle-stripping rules must not trip over.
pub fn idle_soup() -> impl Strategy<Value = String> {
    vec(
        select(
            &[
                "idle",
                "IDLE",
                "iDlE",
                "idl",
                "e",
                " ",
                "\t",
                "whoelse",
                "logout",
                "wholast",
                "message",
                "broadcast",
                "all",
                "user",
                "busy",
                "online",
                "7",
                "32",
                "bob",
            ][..],
        ),
        1..12,
    )
    .prop_map(|v| v.concat())
}

/// Hostile text lines: arbitrary strings (control characters included),
/// printable junk, `idle` soup, near-valid commands with a character
/// inserted, and huge lines (up to 20 000 bytes). May contain `\n`.
pub fn hostile_line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "\\PC{0,60}",
        2 => idle_soup(),
        2 => (client_line(), any::<Index>(), any::<char>()).prop_map(|((l, _), at, c)| {
            let mut chars: Vec<char> = l.chars().collect();
            let i = at.index(chars.len() + 1);
            chars.insert(i, c);
            chars.into_iter().collect()
        }),
        1 => (select(&["x", "message bob ", "idle", "é"][..]), 1000usize..20_000)
            .prop_map(|(s, n)| s.repeat(n / s.len().max(1))),
        1 => vec(proptest::char::range('\0', '\u{a0}'), 0..40).prop_map(|v| v.into_iter().collect()),
    ]
}

/// Hostile bytes: arbitrary bytes, bytes drawn from the awkward ones
/// (`\n`, `\r`, NUL, ESC, DEL, invalid UTF-8 lead bytes, a split `é`), and
/// hostile lines as bytes.
pub fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => vec(any::<u8>(), 0..300),
        2 => vec(
            select(&[b'\n', b'\r', 0, 0x1b, 0x7f, 0xff, 0xc3, 0xa9, b'i', b'd', b'l', b'e', b' ', b'\t', b'a'][..]),
            0..300
        ),
        1 => hostile_line().prop_map(String::into_bytes),
    ]
}

/// Cuts `data` at arbitrary points: the reads a socket might deliver it in.
/// Empty reads may appear; concatenating the pieces gives `data` back.
pub fn chop(data: Vec<u8>) -> impl Strategy<Value = Vec<Vec<u8>>> {
    vec(any::<Index>(), 0..16).prop_map(move |cuts| {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::with_capacity(at.len() + 1);
        let mut from = 0;
        for a in at {
            pieces.push(data[from..a].to_vec());
            from = a;
        }
        pieces.push(data[from..].to_vec());
        pieces
    })
}

/// A byte stream of lines (valid client lines, hostile lines and hostile
/// bytes, each followed by `\n`, `\r\n` or nothing) and the same stream
/// chopped at arbitrary read boundaries.
pub fn chopped_stream() -> impl Strategy<Value = (Vec<u8>, Vec<Vec<u8>>)> {
    let line = prop_oneof![
        3 => client_line().prop_map(|(l, _)| l.into_bytes()),
        1 => hostile_line().prop_map(String::into_bytes),
        1 => hostile_bytes(),
    ];
    const ENDS: &[&[u8]] = &[b"\n", b"\r\n", b"", b"\n\n"];
    let end = select(ENDS);
    vec((line, end), 0..8)
        .prop_map(|parts| {
            parts
                .into_iter()
                .flat_map(|(l, e)| l.into_iter().chain(e.iter().copied()))
                .collect::<Vec<u8>>()
        })
        .prop_flat_map(|data| (Just(data.clone()), chop(data)))
}
