//! Properties of the pure wire layer: commands and server lines print in
//! the form they parse back from, `idle` stripping follows PROTOCOL.md §4
//! and never touches free text, and the line decoder frames by `\n` alone
//! whatever the read boundaries, within its bound.

use chatcore::testing::strategies::{
    chop, chopped_stream, client_line, command, free_text, hostile_bytes, hostile_line, idle_soup,
    line_style, recase, render_command, server_line, token, user_name, LineStyle,
};
use chatcore::wire::{
    Audience, Command, DecodeError, IdleArg, LineDecoder, ParseError, ServerLine, UsageOf,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn command_round_trips(c in command()) {
        prop_assert_eq!(Command::parse(&c.to_string()), Ok(c));
    }

    #[test]
    fn a_line_as_sent_is_its_display_and_a_newline(l in server_line()) {
        let mut sent = String::from("before ");
        l.write_line(&mut sent);
        prop_assert_eq!(sent, format!("before {l}\n"));
    }

    #[test]
    fn server_line_round_trips(l in server_line()) {
        let text = l.to_string();
        prop_assert!(!text.contains('\n'), "a server line holds a newline: {:?}", text);
        prop_assert_eq!(ServerLine::parse(&text), Ok(l));
    }

    /// Keyword case, blanks between tokens, and glued `idle` tokens where
    /// §4 allows them, never change the command.
    #[test]
    fn styled_client_lines_parse_to_their_command((line, c) in client_line()) {
        prop_assert_eq!(Command::parse(&line), Ok(c));
    }

    /// Free text is never altered, whatever `idle` it holds or ends with,
    /// and whatever is glued in front of the keyword.
    #[test]
    fn idle_in_free_text_is_kept(
        to in user_name(),
        before in free_text(),
        tail in prop::sample::select(&["idle", "IDLE", " idle", " idleidle", "idle idle", "\tidle", "idle7", " idle 7"][..]),
        style in line_style(),
        audience in prop_oneof![Just(Audience::Online), Just(Audience::All), vec(user_name(), 1..3).prop_map(Audience::Users)],
    ) {
        for text in [format!("{before}{tail}"), tail.trim_start().to_string(), format!("{before} {tail} {before}")] {
            let m = Command::Message { to: to.clone(), text: text.clone() };
            prop_assert_eq!(Command::parse(&render_command(&m, &style)), Ok(m));
            let b = Command::Broadcast { audience: audience.clone(), text: text.clone() };
            prop_assert_eq!(Command::parse(&render_command(&b, &style)), Ok(b));
        }
    }

    /// `idle` glued before the keyword any number of times, and after the
    /// last token of `whoelse`, `wholast <n>` and `logout`, is stripped.
    #[test]
    fn glued_idle_variants_parse_the_same(
        lead in 0usize..4,
        trail in 0usize..4,
        masks in vec(any::<u64>(), 8),
        minutes in 0u64..1000,
    ) {
        let idles = |n: usize, off: usize| -> String {
            (0..n).map(|i| recase("idle", masks[(i + off) % masks.len()])).collect()
        };
        let (l, t) = (idles(lead, 0), idles(trail, 4));
        for (word, c) in [("whoelse", Command::WhoElse), ("logout", Command::Logout)] {
            let line = format!("{l}{}{t}", recase(word, masks[7]));
            prop_assert_eq!(Command::parse(&line), Ok(c), "{:?}", line);
        }
        let line = format!("{l}wholast {minutes}{t}");
        prop_assert_eq!(Command::parse(&line), Ok(Command::WhoLast { minutes }), "{:?}", line);
        let line = format!("{l}idle");
        prop_assert_eq!(Command::parse(&line), Ok(Command::Idle(IdleArg::None)), "{:?}", line);
        let line = format!("{l}idle {minutes}");
        prop_assert_eq!(Command::parse(&line), Ok(Command::Idle(IdleArg::Seq(minutes))), "{:?}", line);
    }

    /// Separated `idle` tokens are never stripped (§4: `wholast 32 idle` is
    /// a usage error).
    #[test]
    fn separated_idle_is_not_stripped(minutes in 0u64..100, sep in prop::sample::select(&[" ", "\t", "  "][..])) {
        prop_assert_eq!(Command::parse(&format!("wholast {minutes}{sep}idle")), Err(ParseError::Usage(UsageOf::WhoLast)));
        prop_assert_eq!(Command::parse(&format!("whoelse{sep}idle")), Err(ParseError::Usage(UsageOf::WhoElse)));
        prop_assert_eq!(Command::parse(&format!("logout{sep}idle")), Err(ParseError::Usage(UsageOf::Logout)));
    }

    /// Parsing never panics, and whatever parses prints back to a line that
    /// parses to the same value (parse ∘ display is the identity on parsed
    /// values).
    #[test]
    fn parse_never_panics_and_is_stable(line in prop_oneof![
        hostile_line(),
        idle_soup(),
        client_line().prop_map(|(l, _)| l),
        (client_line(), token()).prop_map(|((l, _), t)| format!("{l} {t}")),
        (token(), client_line()).prop_map(|(t, (l, _))| format!("{t}{l}")),
    ]) {
        if let Ok(c) = Command::parse(&line) {
            prop_assert_eq!(Command::parse(&c.to_string()), Ok(c), "from {:?}", line);
        }
        if let Ok(l) = ServerLine::parse(&line) {
            prop_assert_eq!(ServerLine::parse(&l.to_string()), Ok(l), "from {:?}", line);
        }
    }

    /// Server-line parsing is stable on near-valid server lines too.
    #[test]
    fn server_line_parse_is_stable(l in server_line(), junk in prop_oneof![Just(String::new()), hostile_line()], cut in any::<prop::sample::Index>()) {
        let text = l.to_string();
        let mut cut_at = cut.index(text.len() + 1);
        while !text.is_char_boundary(cut_at) { cut_at -= 1; }
        for candidate in [format!("{}{junk}", &text[..cut_at]), format!("{text}{junk}"), format!("{text} ")] {
            if let Ok(p) = ServerLine::parse(&candidate) {
                prop_assert_eq!(ServerLine::parse(&p.to_string()), Ok(p), "from {:?}", candidate);
            }
        }
    }
}

/// What the decoder must produce for `data` with bound `max`, computed the
/// simple way: split at every `\n`; a line with its terminator longer than
/// `max` is too long; else drop one `\r`, then it must be UTF-8 without
/// control characters other than TAB. An unterminated tail is reported only
/// when it is already too long.
fn reference_decode(data: &[u8], max: usize) -> Vec<Result<String, DecodeError>> {
    let max = max.max(2);
    let mut out = Vec::new();
    let mut parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let tail = parts.pop().unwrap_or(&[]);
    for line in parts {
        if line.len() + 1 > max {
            out.push(Err(DecodeError::LineTooLong { max }));
            continue;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.push(match std::str::from_utf8(line) {
            Ok(s)
                if !s
                    .chars()
                    .any(|c| (c.is_control() && c != '\t') || c == '\u{7f}') =>
            {
                Ok(s.to_string())
            }
            _ => Err(DecodeError::BadEncoding),
        });
    }
    if tail.len() >= max {
        out.push(Err(DecodeError::LineTooLong { max }));
    }
    out
}

fn decode_chunks(d: &mut LineDecoder, chunks: &[Vec<u8>]) -> Vec<Result<String, DecodeError>> {
    let mut out = Vec::new();
    for chunk in chunks {
        let mut input: &[u8] = chunk;
        loop {
            let before = input.len();
            let item = d.decode(&mut input);
            assert!(
                d.buffered() < d.max_line_bytes(),
                "decoder holds {} bytes, bound {}",
                d.buffered(),
                d.max_line_bytes()
            );
            match item {
                Some(x) => {
                    assert!(
                        input.len() < before,
                        "a line came out without consuming input"
                    );
                    out.push(x);
                }
                None => {
                    assert!(input.is_empty(), "decode returned None with input left");
                    break;
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config(512))]

    /// The same lines come out whatever the chunking, they are what the
    /// simple reference says, and the decoder never holds a whole bound.
    #[test]
    fn decoder_is_independent_of_chunking(
        (data, chunks) in chopped_stream(),
        max in prop_oneof![2usize..40, Just(4096usize), 0usize..2],
    ) {
        let whole = decode_chunks(&mut LineDecoder::new(max), std::slice::from_ref(&data));
        let chopped = decode_chunks(&mut LineDecoder::new(max), &chunks);
        prop_assert_eq!(&whole, &chopped);
        prop_assert_eq!(&whole, &reference_decode(&data, max));
    }

    /// Byte-at-a-time reading of arbitrary bytes agrees with the reference.
    #[test]
    fn decoder_byte_at_a_time(data in hostile_bytes(), max in 2usize..64) {
        let bytes: Vec<Vec<u8>> = data.iter().map(|b| vec![*b]).collect();
        let got = decode_chunks(&mut LineDecoder::new(max), &bytes);
        prop_assert_eq!(got, reference_decode(&data, max));
    }

    /// An over-long line is reported once, as soon as it passes the bound
    /// and before its `\n` arrives, and the next line is intact.
    #[test]
    fn over_long_lines_are_reported_early(
        len in 0usize..200, max in 2usize..64, next in client_line(),
        chunks_of in 1usize..17,
    ) {
        let mut d = LineDecoder::new(max);
        let long = vec![b'x'; len];
        let pieces: Vec<Vec<u8>> = long.chunks(chunks_of).map(<[u8]>::to_vec).collect();
        let early = decode_chunks(&mut d, &pieces);
        if len >= max {
            prop_assert_eq!(early, vec![Err(DecodeError::LineTooLong { max })]);
        } else {
            prop_assert!(early.is_empty());
        }
        let rest = format!("\n{}\n", next.0).into_bytes();
        let mut after = decode_chunks(&mut d, &[rest]);
        let expected_next = if next.0.len() + 1 > max {
            Err(DecodeError::LineTooLong { max })
        } else {
            Ok(next.0.clone())
        };
        prop_assert_eq!(after.pop(), Some(expected_next));
        if len < max {
            prop_assert_eq!(after, vec![Ok("x".repeat(len))]);
        } else {
            prop_assert!(after.is_empty());
        }
    }

    /// Chopping is a partition of the input.
    #[test]
    fn chop_is_a_partition((data, chunks) in hostile_bytes().prop_flat_map(|d| (Just(d.clone()), chop(d)))) {
        prop_assert_eq!(chunks.concat(), data);
    }
}

#[test]
fn plain_style_is_display() {
    let c = Command::Broadcast {
        audience: Audience::Users(vec!["ann".into(), "bob".into()]),
        text: "hi idle".into(),
    };
    assert_eq!(render_command(&c, &LineStyle::plain()), c.to_string());
}

#[test]
fn protocol_examples_of_idle_stripping() {
    let p = Command::parse;
    assert_eq!(p("idlewhoelse"), Ok(Command::WhoElse));
    assert_eq!(p("idleidlelogout"), Ok(Command::Logout));
    assert_eq!(
        p("idlemessage bob hi"),
        Ok(Command::Message {
            to: "bob".into(),
            text: "hi".into()
        })
    );
    assert_eq!(p("whoelseidle"), Ok(Command::WhoElse));
    assert_eq!(p("wholast 32idle"), Ok(Command::WhoLast { minutes: 32 }));
    assert_eq!(p("logoutidle"), Ok(Command::Logout));
    assert_eq!(p("idleidle"), Ok(Command::Idle(IdleArg::None)));
    assert_eq!(
        p("message bob I am idle"),
        Ok(Command::Message {
            to: "bob".into(),
            text: "I am idle".into()
        })
    );
    assert_eq!(
        p("message bob keep it idle"),
        Ok(Command::Message {
            to: "bob".into(),
            text: "keep it idle".into()
        })
    );
    assert_eq!(
        p("wholast 32 idle"),
        Err(ParseError::Usage(UsageOf::WhoLast))
    );
}

/// Whatever `ServerLine::parse` accepts must print back to a line it
/// accepts again. A code that needs a detail, given an empty one (a
/// trailing space), is the corner where that broke.
#[test]
fn empty_details_do_not_break_the_round_trip() {
    // Codes whose detail is required refuse an empty one...
    for line in [
        "ERR unknown-command ",
        "ERR usage ",
        "ERR unknown-user ",
        "ERR queue-full ",
    ] {
        assert!(ServerLine::parse(line).is_err(), "{line:?} must be refused");
    }
    // ...and those whose detail is optional read it as absent, and print
    // back without the trailing space.
    for (line, printed) in [
        ("ERR rate-limited ", "ERR rate-limited"),
        ("ERR unavailable ", "ERR unavailable"),
    ] {
        let l = ServerLine::parse(line).unwrap_or_else(|e| panic!("{line:?}: {e:?}"));
        assert_eq!(l.to_string(), printed);
        assert_eq!(ServerLine::parse(&l.to_string()), Ok(l));
    }
}
