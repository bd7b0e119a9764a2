//! PROTOCOL.md §1 (transport and framing): `\n` framing independent of read
//! boundaries, CRLF, over-long lines, bad encoding and control characters.

mod common;

use common::*;

const USERS: &[(&str, &str)] = &[("alice", "pw-a"), ("bob", "pw-b")];

fn pair(config: &[&str]) -> (TestServer, Client, Client) {
    let server = TestServer::start(Opts {
        users: USERS,
        config,
        ..Opts::default()
    });
    let alice = server.login("alice", "pw-a");
    let bob = server.login("bob", "pw-b");
    (server, alice, bob)
}

#[test]
fn line_length_limit_counts_the_terminator() {
    let (_server, mut alice, mut bob) = pair(&["max_line_bytes = 64"]);
    // "message bob " is 12 bytes: 51 bytes of text and "\n" make exactly 64.
    let fits = "x".repeat(51);
    alice.send(&format!("message bob {fits}"));
    alice.expect("OK message bob delivered");
    assert_eq!(bob.expect_delivery().text, fits);
    let too_long = "y".repeat(52);
    alice.send(&format!("message bob {too_long}"));
    alice.expect("ERR line-too-long 64");
    // Nothing of it reached bob, and alice's connection still works.
    bob.barrier();
    assert_eq!(alice.barrier(), ["bob"]);
}

#[test]
fn a_huge_line_is_refused_once_and_the_rest_is_kept() {
    let (_server, mut alice, mut bob) = pair(&["max_line_bytes = 64"]);
    // 1 MB without a newline, then a command in the same write.
    let mut bytes = b"message bob ".to_vec();
    bytes.extend(std::iter::repeat_n(b'z', 1 << 20));
    bytes.extend_from_slice(b"\nmessage bob after\n");
    alice.send_raw(&bytes);
    alice.expect("ERR line-too-long 64");
    alice.expect("OK message bob delivered");
    assert_eq!(bob.expect_delivery().text, "after");
    bob.barrier();
    alice.barrier();
}

#[test]
fn an_over_long_line_in_many_writes_gets_one_error() {
    let (_server, mut alice, mut bob) = pair(&["max_line_bytes = 64"]);
    alice.send_raw(b"message bob ");
    for _ in 0..50 {
        alice.send_raw(&[b'q'; 1000]);
    }
    alice.send_raw(b"\n");
    alice.expect("ERR line-too-long 64");
    // Exactly one error: the next line is the barrier's.
    alice.barrier();
    bob.barrier();
}

#[test]
fn default_line_limit_is_4096() {
    let (_server, mut alice, mut bob) = pair(&[]);
    // 4096 bytes with the terminator: accepted.
    let fits = "a".repeat(4096 - "message bob ".len() - 1);
    alice.send(&format!("message bob {fits}"));
    alice.expect("OK message bob delivered");
    assert_eq!(bob.expect_delivery().text.len(), fits.len());
    let too_long = "b".repeat(5000);
    alice.send(&format!("message bob {too_long}"));
    alice.expect("ERR line-too-long 4096");
    alice.barrier();
}

#[test]
fn invalid_utf8_and_control_characters_are_refused() {
    let (_server, mut alice, mut bob) = pair(&[]);
    let bad: &[&[u8]] = &[
        b"message bob \xff\xfe\n",
        b"message bob \xc0\xaf overlong\n",
        b"message bob \xed\xa0\x80 surrogate\n",
        b"message bob caf\xc3\n",
        b"message bob \x1b[31mred\x1b[0m\n",
        b"message bob \x1b]0;title\x07\n",
        b"message bob nul\x00byte\n",
        b"message bob del\x7fchar\n",
        b"message bob bell\x07\n",
        b"message bob cr\rinside\n",
        b"whoelse\x1b\n",
        b"\x00\n",
    ];
    for line in bad {
        alice.send_raw(line);
        let got = alice.line();
        assert_eq!(
            got,
            "ERR bad-encoding",
            "for {:?}",
            String::from_utf8_lossy(line)
        );
    }
    // Nothing reached bob; alice is still fine.
    bob.barrier();
    assert_eq!(alice.barrier(), ["bob"]);
    // TAB is allowed.
    alice.send("message bob a\tb");
    alice.expect("OK message bob delivered");
    assert_eq!(bob.expect_delivery().text, "a\tb");
}

#[test]
fn crlf_is_accepted_and_the_cr_dropped() {
    let (_server, mut alice, mut bob) = pair(&[]);
    alice.send_raw(b"whoelse\r\n");
    alice.expect("WHO bob");
    alice.send_raw(b"message bob over crlf\r\n");
    alice.expect("OK message bob delivered");
    assert_eq!(bob.expect_delivery().text, "over crlf");
}

#[test]
fn pipelined_commands_in_one_write_are_all_answered_in_order() {
    let (_server, mut alice, mut bob) = pair(&[]);
    // Nine commands in one write: within the default flood burst (10, one
    // of them used by the login barrier), so none is delayed.
    let mut batch = String::from("whoelse\n");
    for i in 0..5 {
        batch.push_str(&format!("message bob n{i}\n"));
    }
    batch.push_str("wholast 5\nfrobnicate\n\nwhoelse\n");
    alice.send_raw(batch.as_bytes());
    alice.expect("WHO bob");
    for _ in 0..5 {
        alice.expect("OK message bob delivered");
    }
    alice.expect("LAST bob");
    alice.expect("ERR unknown-command frobnicate");
    alice.expect("WHO bob");
    for i in 0..5 {
        assert_eq!(bob.expect_delivery().text, format!("n{i}"));
    }
}

#[test]
fn pipelined_messages_from_many_senders_arrive_in_order_per_sender() {
    let users: Vec<(String, String)> = (0..8).map(|i| (format!("s{i}"), "pw".to_owned())).collect();
    let mut all: Vec<(&str, &str)> = users
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    all.push(("sink", "pw"));
    let server = TestServer::start(Opts::users(&all));
    let mut sink = server.login("sink", "pw");
    let mut senders: Vec<Client> = users.iter().map(|(u, p)| server.login(u, p)).collect();
    for s in &mut senders {
        let batch: String = (0..8).map(|i| format!("message sink m{i}\n")).collect();
        s.send_raw(batch.as_bytes());
    }
    let mut next = vec![0usize; senders.len()];
    for _ in 0..senders.len() * 8 {
        let d = sink.expect_delivery();
        let k: usize = d.from[1..].parse().unwrap();
        assert_eq!(
            d.text,
            format!("m{}", next[k]),
            "out of order from {}",
            d.from
        );
        next[k] += 1;
    }
    for s in &mut senders {
        for _ in 0..8 {
            s.expect("OK message sink delivered");
        }
    }
}

#[test]
fn a_whole_login_in_one_write_works() {
    let server = TestServer::start(Opts::users(USERS));
    let mut c = server.client();
    c.send_raw(b"alice\npw-a\nwhoelse\n");
    c.expect("HELLO CHAT/1");
    c.expect("ASK username");
    c.expect("ASK password");
    c.expect("OK login alice");
    c.expect("WHO");
}

#[test]
fn a_command_split_over_many_writes_is_one_command() {
    let (_server, mut alice, mut bob) = pair(&[]);
    let line = "message bob héllo wörld ✓ in pieces\n".as_bytes();
    // One byte per write, splitting multi-byte characters too.
    for b in line {
        alice.send_raw(std::slice::from_ref(b));
    }
    alice.expect("OK message bob delivered");
    assert_eq!(bob.expect_delivery().text, "héllo wörld ✓ in pieces");
    // A line split across writes that also carry the next line's start.
    alice.send_raw(b"who");
    alice.send_raw(b"else\nmessage b");
    alice.send_raw(b"ob second\n");
    alice.expect("WHO bob");
    alice.expect("OK message bob delivered");
    assert_eq!(bob.expect_delivery().text, "second");
}

#[test]
fn login_lines_are_framed_too() {
    let server = TestServer::start(Opts::users(USERS));
    let mut c = server.client();
    c.expect("HELLO CHAT/1");
    c.expect("ASK username");
    c.send_raw(b"ali");
    c.send_raw(b"ce\r\npw");
    c.expect("ASK password");
    c.send_raw(b"-a\r\n");
    c.expect("OK login alice");
}
