//! Hardening: peers that stop reading or vanish (PROTOCOL.md §6). A client
//! that never reads while others broadcast to it costs the server bounded
//! memory (`max_outbound_bytes`), is dropped, and gets every unconfirmed
//! delivery again at its next login; a client that stops answering and
//! reading is dropped after `heartbeat_timeout`, and likewise loses nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-a"),
    ("bob", "pw-b"),
    ("carol", "pw-c"),
    ("sloth", "pw-s"),
];

/// Polls `observer`'s `whoelse` until `user` is no longer listed.
fn wait_offline(observer: &mut Client, user: &str, within: Duration) {
    poll_until(&format!("{user} to go offline"), within, || {
        (!observer.whoelse().iter().any(|u| u == user)).then_some(())
    });
}

#[test]
fn a_client_that_never_reads_is_bounded_dropped_and_loses_nothing() {
    // Broadcast texts just under max_line_bytes (4096).
    const TEXT: usize = 4000;
    const BATCH: usize = 25;
    // What the broadcasts add up to, for the one that never reads.
    const TOTAL: usize = 32 << 20;
    let server = TestServer::with(
        USERS,
        &[
            "max_outbound_bytes = 8192",
            // The outbound stall grace is the heartbeat (at least 1 s); the
            // heartbeat timeout is far away, so it cannot be what drops sloth.
            "heartbeat = 1",
            "heartbeat_timeout = 120",
            "flood_burst = 1000000",
            "flood_per_second = 1000000",
            "flood_backlog = 1000000",
            // Sloth's held copies wait in the journal's memory for the
            // database, up to journal_memory (its own bound, tested with
            // the store): at its least, so what is measured is the reader.
            "journal_memory = 1048576",
        ],
    );
    let pid = server.pid().unwrap();
    let mut alice = server.login("alice", "pw-a");
    let mut bob = server.login("bob", "pw-b");
    let mut carol = server.login("carol", "pw-c");
    let mut sloth = Client::connect_with_rcvbuf(server.addr(), 4096);
    sloth.login("sloth", "pw-s");
    // From here on sloth reads nothing and answers no probe.

    let reset = reset_peak_rss(pid);
    let rss_before = proc_status_kb(pid, "VmRSS");
    let hwm_before = proc_status_kb(pid, "VmHWM");

    let filler = "z".repeat(TEXT - 12);
    // Everything accepted for sloth, in the order the server accepted it.
    let mut for_sloth: Vec<String> = Vec::new();
    let mut sent_bytes = 0usize;
    let mut dropped_after: Option<usize> = None;
    let mut max_round_trip = Duration::ZERO;
    let mut hwm_at_drop = None;
    let mut i = 0usize;
    let started = Instant::now();
    while sent_bytes < TOTAL {
        let mut batch = String::new();
        let texts: Vec<String> = (i..i + BATCH)
            .map(|n| format!("b{n:07} {filler}"))
            .collect();
        for t in &texts {
            batch.push_str("broadcast message ");
            batch.push_str(t);
            batch.push('\n');
        }
        let t = Instant::now();
        alice.send_raw(batch.as_bytes());
        // Her own copies may come ahead of the `OK`s, which wait for their
        // commit: each kind in order.
        let (mut own, mut oks) = (Vec::new(), std::collections::VecDeque::new());
        while own.len() + oks.len() < 2 * texts.len() {
            let line = alice.line();
            match Delivery::parse(&line) {
                Some(d) => own.push(d.text),
                None => oks.push_back(line),
            }
        }
        assert_eq!(&own, &texts);
        for text in &texts {
            let ok = oks.pop_front().unwrap();
            match ok.as_str() {
                "OK broadcast 4 0" => {
                    assert!(dropped_after.is_none(), "sloth came back?");
                    for_sloth.push(text.clone());
                    sent_bytes += text.len();
                }
                "OK broadcast 3 0" => {
                    dropped_after.get_or_insert(sent_bytes);
                }
                other => panic!("alice: unexpected reply {other:?}"),
            }
            assert_eq!(&carol.expect_delivery().text, text, "carol missed one");
            assert_eq!(&bob.expect_delivery().text, text, "bob missed one");
        }
        // bob keeps writing to sloth privately, too.
        let private = format!("p{i:07}");
        bob.send(&format!("message sloth {private}"));
        match bob.line().as_str() {
            "OK message sloth delivered" => assert!(dropped_after.is_none()),
            // Dropped after the batch's last broadcast was queued for it.
            "OK message sloth queued offline" => {
                dropped_after.get_or_insert(sent_bytes);
            }
            other => panic!("bob: unexpected reply {other:?}"),
        }
        for_sloth.push(private);
        max_round_trip = max_round_trip.max(t.elapsed());
        i += BATCH;
        // After the drop, the broadcasts no longer go to sloth; count them
        // anyway up to TOTAL so that the memory bound means something.
        if dropped_after.is_some() {
            sent_bytes += BATCH * TEXT;
            hwm_at_drop.get_or_insert_with(|| proc_status_kb(pid, "VmHWM"));
        }
    }
    let took = started.elapsed();
    let dropped_after = dropped_after.expect("sloth was never dropped although it never read");
    let hwm_after = proc_status_kb(pid, "VmHWM");
    let hwm_at_drop = hwm_at_drop.unwrap_or(hwm_after);
    let base = if reset {
        rss_before
    } else {
        rss_before.max(hwm_before)
    };
    let grown_kb = hwm_after.saturating_sub(base);
    eprintln!(
        "{i} broadcasts in {took:?} (slowest batch {max_round_trip:?}); sloth dropped after \
         {dropped_after} bytes; RSS {rss_before} kB, peak {hwm_at_drop} kB at the drop, \
         {hwm_after} kB at the end (reset: {reset})"
    );
    // Everyone else kept receiving (checked above, each broadcast); the
    // server's memory stayed well below what was sent to sloth...
    assert!(
        (grown_kb as usize) * 1024 < TOTAL / 2,
        "the server's peak RSS grew by {grown_kb} kB while {TOTAL} bytes were broadcast to a \
         client that never reads (max_outbound_bytes 8192)"
    );
    // ...and did not grow with what was broadcast after the drop.
    let after_drop = TOTAL - dropped_after;
    assert!(
        after_drop > TOTAL / 2,
        "sloth was dropped only after {dropped_after} bytes"
    );
    let grown_after_kb = hwm_after.saturating_sub(hwm_at_drop);
    assert!(
        grown_after_kb < 4 * 1024,
        "peak RSS grew by {grown_after_kb} kB after sloth was dropped, over {after_drop} \
         more bytes of broadcasts"
    );
    // sloth shows as offline to the others.
    assert_eq!(carol.whoelse(), ["alice", "bob"]);
    assert_eq!(alice.barrier(), ["bob", "carol"]);
    // The old connection was closed by the server, without BYE.
    let mut seen_old = 0;
    loop {
        match sloth.recv(Duration::from_secs(10)) {
            Recv::Line(l) => {
                assert!(!l.starts_with("BYE"), "a dropped peer gets no BYE: {l:?}");
                seen_old += 1;
            }
            Recv::Closed => break,
            Recv::TimedOut => panic!("sloth's old connection is still open"),
        }
    }
    drop(sloth);
    assert!(seen_old > 0);

    // At its next login sloth gets every message accepted for it, in order:
    // the unconfirmed deliveries held again, then what was queued offline.
    let mut sloth = server.client();
    let held = sloth.login("sloth", "pw-s");
    let got: Vec<&str> = held
        .iter()
        .map(|d| d.text.split(' ').next().unwrap())
        .collect();
    let want: Vec<&str> = for_sloth
        .iter()
        .map(|t| t.split(' ').next().unwrap())
        .collect();
    assert_eq!(got.len(), want.len(), "held messages lost or added");
    assert_eq!(got, want);
    assert!(held.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    // And it is a normal session now.
    alice.send("message sloth welcome back");
    alice.expect("OK message sloth delivered");
    assert_eq!(sloth.expect_delivery().text, "welcome back");
    assert_eq!(sloth.barrier(), ["alice", "bob", "carol"]);
}

#[test]
fn a_peer_that_stops_answering_and_reading_is_dropped_and_loses_nothing() {
    let server = TestServer::with(
        USERS,
        &["heartbeat = 0.2", "heartbeat_timeout = 1", "time_out = 60"],
    );
    let mut alice = server.login("alice", "pw-a");
    let mut ghost = server.login("bob", "pw-b");
    // From here on the ghost neither reads nor answers probes: a peer whose
    // host vanished, as far as the server can tell. The server last heard
    // from it just before this (its login's `whoelse`).
    let silent_since = Instant::now();
    for n in 0..5 {
        alice.send(&format!("message bob live {n}"));
        alice.expect("OK message bob delivered");
    }
    alice.send("broadcast message everyone");
    let bcast = alice.expect_delivery();
    alice.expect("OK broadcast 2 0");
    wait_offline(&mut alice, "bob", Duration::from_secs(10));
    let took = silent_since.elapsed();
    // A lower bound, which load cannot break (load only delays the drop);
    // the 300 ms below heartbeat_timeout cover the time between the server
    // reading the ghost's last line and silent_since.
    assert!(
        took >= Duration::from_millis(700),
        "dropped after only {took:?} with heartbeat_timeout 1 s"
    );
    for n in 0..2 {
        alice.send(&format!("message bob offline {n}"));
        alice.expect("OK message bob queued offline");
    }
    // What the ghost's socket got before the server closed it: the live
    // deliveries and probes, no BYE.
    ghost.set_idle_mode(IdleMode::Show);
    let mut live = Vec::new();
    loop {
        match ghost.recv(Duration::from_secs(10)) {
            Recv::Line(l) if probe_seq(&l).is_some() => {}
            Recv::Line(l) => {
                live.push(Delivery::parse(&l).unwrap_or_else(|| panic!("ghost got {l:?}")))
            }
            Recv::Closed => break,
            Recv::TimedOut => panic!("the ghost's connection is still open"),
        }
    }
    assert_eq!(live.len(), 6, "{live:?}");
    assert_eq!(live[5], bcast);

    let mut bob = server.client();
    let held = bob.login("bob", "pw-b");
    assert_eq!(held.len(), 8, "{held:?}");
    assert_eq!(held[..6], live[..], "same ids, timestamps and texts");
    let texts: Vec<&str> = held[6..].iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, ["offline 0", "offline 1"]);
    assert_eq!(bob.barrier(), ["alice"]);
}

#[test]
fn a_closed_connection_whose_peer_never_reads_gives_its_place_back() {
    // Texts just under max_line_bytes (4096): 4 MB in all, far more than
    // the two sockets' buffers hold while the peer reads nothing.
    const TEXT: usize = 4000;
    const MESSAGES: usize = 1000;
    let server = TestServer::with(
        USERS,
        &[
            // Room for all of it, so that the server never drops the peer
            // as one that stopped reading while its session is open: its own
            // `logout` closes it.
            "max_outbound_bytes = 67108864",
            // After the close the last lines get the outbound stall grace:
            // the heartbeat, here 1 s.
            "heartbeat = 1",
            "heartbeat_timeout = 120",
            "flood_burst = 1000000",
            "flood_per_second = 1000000",
            "flood_backlog = 1000000",
            // Alice and sloth: a third connection waits for sloth's place.
            "max_connections = 2",
        ],
    );
    let mut alice = server.login("alice", "pw-a");
    let mut sloth = Client::connect_with_rcvbuf(server.addr(), 4096);
    sloth.login("sloth", "pw-s");
    // From here on sloth reads nothing.
    send_messages(&mut alice, "sloth", MESSAGES, TEXT, "delivered");
    // The server answers `BYE logout` and closes the session, with most of
    // the 4 MB still queued behind the socket sloth does not read.
    sloth.send("logout");
    let logged_out = Instant::now();
    assert_eq!(
        alice.barrier(),
        Vec::<String>::new(),
        "sloth is still online"
    );

    // Until the grace runs out, sloth's connection keeps its place; then
    // the server lets go of it, and a new connection gets in.
    let (took, mut again) = poll_until(
        "a place in max_connections after sloth's close",
        Duration::from_secs(20),
        || match server.try_connect("127.0.0.1") {
            (true, c) => Some((logged_out.elapsed(), c)),
            (false, _) => None,
        },
    );
    assert!(
        took >= Duration::from_millis(900),
        "the place came back after {took:?}, before the 1 s grace"
    );
    // `logout` confirmed what sloth was sent (PROTOCOL.md §6): a new login
    // starts with an empty box.
    again.send("sloth");
    again.expect("ASK password");
    again.send("pw-s");
    again.expect("OK login sloth");
    assert_eq!(again.barrier(), ["alice"]);
    drop(sloth);
}

#[test]
fn a_big_offline_box_reaches_a_client_that_reads_it() {
    // max_outbound_bytes bounds what waits for a peer that stops reading;
    // a peer that reads its OFFLINE block as fast as it comes must get all
    // of it, however much bigger than the bound the block is.
    const N: usize = 300;
    let server = TestServer::with(
        USERS,
        &[
            "max_outbound_bytes = 8192",
            "flood_burst = 1000000",
            "flood_per_second = 1000000",
            "flood_backlog = 1000000",
        ],
    );
    let mut alice = server.login("alice", "pw-a");
    let filler = "q".repeat(4000);
    let mut batch = String::new();
    for n in 0..N {
        batch.push_str(&format!("message bob h{n:04} {filler}\n"));
    }
    alice.send_raw(batch.as_bytes());
    for _ in 0..N {
        alice.expect("OK message bob queued offline");
    }
    let mut bob = server.client();
    let held = bob.login("bob", "pw-b");
    let got: Vec<String> = held
        .iter()
        .map(|d| d.text.split(' ').next().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..N).map(|n| format!("h{n:04}")).collect();
    assert_eq!(got, want);
    assert_eq!(bob.barrier(), ["alice"]);
}

/// Fills `user`'s box with `n` messages of about `size` bytes from `from`
/// (already logged in), numbered `h00000`, `h00001`... in their text.
fn fill_box(from: &mut Client, user: &str, n: usize, size: usize) {
    send_messages(from, user, n, size, "queued offline");
}

/// Sends `user` `n` messages of about `size` bytes from `from` (already
/// logged in), numbered `h00000`, `h00001`... in their text, in one write,
/// and reads each one's `OK message <user> <outcome>`.
fn send_messages(from: &mut Client, user: &str, n: usize, size: usize, outcome: &str) {
    let filler = "q".repeat(size);
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!("message {user} h{i:05} {filler}\n"));
    }
    from.send_raw(batch.as_bytes());
    for _ in 0..n {
        from.expect(&format!("OK message {user} {outcome}"));
    }
}

/// Reads a login's `OFFLINE` block at about `bytes_per_sec`, answering the
/// probes inside it as it meets them; stops after `limit` messages. Returns
/// the block's count and the numbers of the messages read. The pauses are
/// the slow link being simulated, not a wait for the server.
fn read_block_slowly(c: &mut Client, bytes_per_sec: usize, limit: usize) -> (usize, Vec<usize>) {
    let start = Instant::now();
    let header = c.expect_prefix("OFFLINE ");
    let n: usize = header["OFFLINE ".len()..].parse().unwrap();
    let mut got = Vec::new();
    let mut bytes = 0;
    while got.len() < n.min(limit) {
        let line = c.line(); // answers and skips probes
        bytes += line.len() + 1;
        let d = Delivery::parse(&line).unwrap_or_else(|| panic!("not a delivery: {line:?}"));
        got.push(d.text[1..6].parse().unwrap());
        let due = Duration::from_secs_f64(bytes as f64 / bytes_per_sec as f64);
        if let Some(ahead) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    (n, got)
}

#[test]
fn a_slow_reader_gets_a_big_box_whole_and_a_drop_mid_drain_costs_one_page() {
    // 10,000 held messages of ~330 bytes read at ~600 KB/s take about 5 s,
    // longer than heartbeat_timeout: the probes after each page keep the
    // reader alive while it drains.
    const N: usize = 10_000;
    let server = TestServer::with(
        USERS,
        &[
            "heartbeat = 1",
            "heartbeat_timeout = 3",
            "max_outbound_bytes = 65536",
            "flood_burst = 1000000",
            "flood_per_second = 1000000",
            "flood_backlog = 1000000",
        ],
    );
    let mut alice = server.login("alice", "pw-a");
    fill_box(&mut alice, "bob", N, 300);
    alice.logout();
    // First login: read 4,000 slowly, then vanish.
    let mut bob = Client::connect_with_rcvbuf(server.addr(), 32 * 1024);
    assert_eq!(bob.login_attempt("bob", "pw-b"), "OK login bob");
    let (n, first) = read_block_slowly(&mut bob, 600_000, 4_000);
    assert_eq!(n, N);
    assert_eq!(first, (0..4_000).collect::<Vec<_>>());
    bob.abort();
    // What was confirmed page by page stays gone: at most the unconfirmed
    // pages come back (a page is at most 64 KiB of these lines, ~190).
    let mut bob = poll_until("bob's next login", Duration::from_secs(10), || {
        let mut c = Client::connect_with_rcvbuf(server.addr(), 32 * 1024);
        // `already-online` until the server has seen the reset.
        (c.login_attempt("bob", "pw-b") == "OK login bob").then_some(c)
    });
    let (n, rest) = read_block_slowly(&mut bob, 600_000, N);
    assert!(n < N - 4_000 + 600, "{} messages came back", n);
    assert_eq!(rest.last(), Some(&(N - 1)));
    let first_again = rest[0];
    assert!(
        first_again <= 4_000,
        "nothing is lost: resumed at {first_again}"
    );
    assert_eq!(rest, (first_again..N).collect::<Vec<_>>());
    assert_eq!(bob.barrier(), Vec::<String>::new());
}
