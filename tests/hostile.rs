//! Hardening (PROTOCOL.md §1, §2, §4): hostile input against the live
//! binary. Random bytes, control characters, invalid UTF-8 and a 10 MB line
//! are each refused with one `ERR` line, the offender's session stays
//! usable, other users see nothing of it, and the server's memory does not
//! grow with the size of a line it refuses.

mod common;

use std::io::Write;

use common::*;

const USERS: &[(&str, &str)] = &[("alice", "pw-a"), ("bob", "pw-b")];

/// Flood control out of the way: these tests send hundreds of lines at once
/// on purpose, and flood control has its own tests (tests/flood.rs).
const NO_FLOOD: &[&str] = &[
    "flood_burst = 1000000",
    "flood_per_second = 1000000",
    "flood_backlog = 1000000",
];

/// What the server must answer to one complete line (PROTOCOL.md §1, §4):
/// `None` for a line it ignores (empty or all blank).
fn expected_reply(line: &[u8]) -> Option<String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(text) = std::str::from_utf8(line) else {
        return Some("ERR bad-encoding".into());
    };
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Some("ERR bad-encoding".into());
    }
    let word = text.split([' ', '\t']).find(|w| !w.is_empty())?;
    Some(format!("ERR unknown-command {word}"))
}

/// One hostile line (without its `\n`), of one of several shapes.
fn hostile_line(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(40);
    let mut line: Vec<u8> = match rng.below(8) {
        // Arbitrary bytes.
        0..=2 => (0..len).map(|_| rng.next() as u8).collect(),
        // Printable text, some of it multi-byte, with blanks.
        3 => {
            let alphabet = [
                "a", "Z", "9", " ", "\t", "é", "ß", "日本", "🦀", "-", "idle",
            ];
            (0..len)
                .flat_map(|_| alphabet[rng.below(alphabet.len())].bytes())
                .collect()
        }
        // Text with a terminal escape sequence or another control inside.
        4 => {
            let controls: [&[u8]; 9] = [
                b"\x1b[2J",
                b"\x1b]0;pwned\x07",
                "\u{9b}31m".as_bytes(),
                b"\x00",
                b"\x7f",
                b"\x08\x08",
                b"mid\rline",
                b"\x0c",
                "\u{85}".as_bytes(),
            ];
            let mut v = b"message bob ".to_vec();
            v.extend_from_slice(controls[rng.below(controls.len())]);
            v.extend_from_slice(b"text");
            v
        }
        // Invalid UTF-8 inside otherwise fine text.
        5 => {
            let bad: [&[u8]; 6] = [
                b"\xff",
                b"\xc0\x80",
                b"\xed\xa0\x80",
                b"\xe6\x97",
                b"\xf8\x88\x80\x80\x80",
                b"\x80",
            ];
            let mut v = b"broadcast message ".to_vec();
            v.extend_from_slice(bad[rng.below(bad.len())]);
            v
        }
        // Empty, blank, or a lone CR.
        6 => [&b""[..], b"  \t ", b"\r", b"\t"][rng.below(4)].to_vec(),
        // A CRLF line.
        _ => b"whatever\r".to_vec(),
    };
    line.retain(|&b| b != b'\n');
    // A line that would be a real command is made an unknown one, so that
    // every reply can be predicted; `zz` is no keyword and never `idle`.
    if let Some(reply) = expected_reply(&line) {
        if reply.starts_with("ERR unknown-command") || reply.starts_with("ERR usage") {
            line.splice(0..0, *b"zz");
        }
    }
    line
}

#[test]
fn random_bytes_each_get_one_error_and_the_session_stays_usable() {
    let server = TestServer::with(USERS, NO_FLOOD);
    let mut alice = server.login("alice", "pw-a");
    let mut bob = server.login("bob", "pw-b");
    let mut rng = Rng::new(0x5EED_0001);

    // A few KB of hostile lines, one of them too long, sent in pieces
    // split at arbitrary byte positions.
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    while stream.len() < 6000 {
        let line = if rng.below(50) == 0 {
            // Longer than max_line_bytes (4096), arbitrary bytes.
            let n = 4096 + rng.below(3000);
            let mut v: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            v.retain(|&b| b != b'\n');
            if v.len() < 4096 {
                continue;
            }
            expected.push("ERR line-too-long 4096".to_string());
            v
        } else {
            let v = hostile_line(&mut rng);
            expected.extend(expected_reply(&v));
            v
        };
        stream.extend_from_slice(&line);
        stream.push(b'\n');
    }
    assert!(
        expected.iter().filter(|r| *r == "ERR bad-encoding").count() > 50
            && expected
                .iter()
                .any(|r| r.starts_with("ERR unknown-command"))
            && expected.iter().any(|r| r.starts_with("ERR line-too-long")),
        "the generator should cover every kind of refusal: {expected:?}"
    );
    eprintln!(
        "{} hostile bytes in {} lines, {} replies expected",
        stream.len(),
        stream.iter().filter(|&&b| b == b'\n').count(),
        expected.len()
    );
    let mut rest = &stream[..];
    while !rest.is_empty() {
        let n = (1 + rng.below(700)).min(rest.len());
        alice.send_raw(&rest[..n]);
        rest = &rest[n..];
    }
    alice.send("whoelse");
    let mut got = Vec::new();
    loop {
        let line = alice.line();
        if line.starts_with("WHO") {
            assert_eq!(line, "WHO bob");
            break;
        }
        got.push(line);
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "one reply per refused line, none for blank ones"
    );
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "reply {i} of {}", expected.len());
    }

    // bob saw none of it; alice's session still works.
    assert_eq!(bob.barrier(), ["alice"]);
    alice.send("message bob still here");
    alice.expect("OK message bob delivered");
    let d = bob.expect_delivery();
    assert_eq!((d.from.as_str(), d.text.as_str()), ("alice", "still here"));
    bob.barrier();
    assert_eq!(alice.barrier(), ["bob"]);
}

#[test]
fn control_characters_and_bad_utf8_never_reach_another_user() {
    let users = [("alice", "pw-a"), ("bob", "pw-b"), ("carol", "pw-c")];
    let server = TestServer::with(&users, NO_FLOOD);
    let mut alice = server.login("alice", "pw-a");
    let mut bob = server.login("bob", "pw-b");
    let refused: &[&[u8]] = &[
        b"message bob \x1b[31mred\x1b[0m",
        b"message bob \x1b]2;title\x07",
        "message bob \u{9b}2J".as_bytes(),
        b"message bob nul\x00byte",
        b"message bob del\x7f",
        b"message bob back\x08space",
        b"message bob cr\rin the middle",
        b"message bob \xff\xfe",
        b"message bob \xc0\xaf overlong",
        b"message bob \xed\xa0\x80 surrogate",
        b"message bob truncated \xe2\x82",
        b"broadcast message \x1b[2J",
        b"broadcast all \x00",
        b"broadcast user bob message \x1bc",
        b"\x00",
        b"\x1b",
        b"mess\x00age bob hi",
    ];
    for line in refused {
        let mut bytes = line.to_vec();
        bytes.push(b'\n');
        alice.send_raw(&bytes);
        alice.expect("ERR bad-encoding");
    }
    // TAB is the one control character that is allowed.
    alice.send("message bob a\tb");
    alice.expect("OK message bob delivered");
    let d = bob.expect_delivery();
    assert_eq!(d.text, "a\tb");
    // Nothing else reached bob.
    assert_eq!(bob.barrier(), ["alice"]);
    assert!(
        bob.seen()
            .iter()
            .all(|l| !l.chars().any(|c| c.is_control() && c != '\t')),
        "a control character reached bob: {:?}",
        bob.seen()
    );
    assert_eq!(alice.barrier(), ["bob"]);

    // Before login too: a refused name or password gets ERR and the same
    // prompt again, and the login goes on.
    let mut carol = server.client();
    carol.expect_ask_username();
    carol.send_raw(b"car\x1b[1mol\n");
    carol.expect("ERR bad-encoding");
    carol.expect("ASK username");
    carol.send_raw(b"\xff\xfe\n");
    carol.expect("ERR bad-encoding");
    carol.expect("ASK username");
    carol.send("carol");
    carol.expect("ASK password");
    carol.send_raw(b"pw-c\x00\n");
    carol.expect("ERR bad-encoding");
    carol.expect("ASK password");
    carol.send("pw-c");
    carol.expect("OK login carol");
    carol.barrier();
    assert_eq!(alice.barrier(), ["bob", "carol"]);
}

#[test]
fn a_ten_megabyte_line_gets_one_error_and_is_never_buffered() {
    const MAX: usize = 4096;
    const HUGE: usize = 10 << 20;
    let server = TestServer::with(USERS, NO_FLOOD);
    let pid = server.pid().unwrap();
    let mut alice = server.login("alice", "pw-a");
    let mut bob = server.login("bob", "pw-b");

    // Before login: a 1 MB user name.
    let mut early = server.client();
    early.expect_ask_username();
    let mut writer = early.stream().try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'u'; 64 << 10];
        for _ in 0..16 {
            writer.write_all(&chunk).unwrap();
        }
        writer.write_all(b"\n").unwrap();
    });
    early.expect(&format!("ERR line-too-long {MAX}"));
    sender.join().unwrap();
    early.expect("ASK username");
    early.send("carol");
    early.expect("ASK password");
    early.send("x");
    early.expect("ERR bad-credentials");

    let reset = reset_peak_rss(pid);
    let rss_before = proc_status_kb(pid, "VmRSS");
    let hwm_before = proc_status_kb(pid, "VmHWM");

    // alice sends 10 MB without a newline, from another thread, while bob
    // keeps using the server and alice reads her replies. Halfway, alice's
    // sender waits until bob has had a round trip: a server stalled by the
    // unfinished line would never answer bob, and the test would fail on
    // bob's line timeout instead of on a wall-clock threshold.
    let (halfway_tx, halfway_rx) = std::sync::mpsc::channel::<()>();
    let (bob_served_tx, bob_served_rx) = std::sync::mpsc::channel::<()>();
    let mut writer = alice.stream().try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < HUGE {
            writer.write_all(&chunk).unwrap();
            sent += chunk.len();
            if sent >= HUGE / 2 && sent < HUGE / 2 + chunk.len() {
                halfway_tx.send(()).unwrap();
                bob_served_rx.recv().unwrap();
            }
        }
        // The end of the long line, then a command on the same write.
        writer.write_all(b"tail\nwhoelse\n").unwrap();
    });
    // The refusal comes as soon as the line is over the bound, not at its end.
    alice.expect(&format!("ERR line-too-long {MAX}"));
    halfway_rx.recv().unwrap();
    assert_eq!(bob.barrier(), ["alice"]);
    bob_served_tx.send(()).unwrap();
    while !sender.is_finished() {
        assert_eq!(bob.barrier(), ["alice"]);
    }
    sender.join().unwrap();
    // Exactly one error for the whole line; the command after it is served.
    alice.expect("WHO bob");
    alice.send("message bob after the big one");
    alice.expect("OK message bob delivered");
    assert_eq!(bob.expect_delivery().text, "after the big one");
    assert_eq!(bob.barrier(), ["alice"]);

    let hwm_after = proc_status_kb(pid, "VmHWM");
    let base = if reset {
        rss_before
    } else {
        rss_before.max(hwm_before)
    };
    let grown_kb = hwm_after.saturating_sub(base);
    eprintln!(
        "RSS before {rss_before} kB, peak before {hwm_before} kB (reset: {reset}), peak after {hwm_after} kB"
    );
    assert!(
        grown_kb < 4 * 1024,
        "the server's peak RSS grew by {grown_kb} kB while refusing a {HUGE}-byte line"
    );
}
