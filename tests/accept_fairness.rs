//! New connections are not starved by load: while 50 pairs of logged-in
//! clients keep chatd busy with messages, a newcomer still gets `HELLO`
//! promptly. The server's main loop has several sources of work (inputs
//! from connections, timers, new connections); under load the inputs are
//! never empty, and a loop that always serves them first never gets to
//! `accept`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Pairs of clients messaging each other back and forth.
const PAIRS: usize = 50;
/// New connections timed while the load runs.
const NEWCOMERS: usize = 20;

/// One pair: `a` messages `b`, waits for its `OK` and for `b` to receive
/// it, then the other way round, until `stop`. Counts round trips.
fn ping_pong(
    mut a: Client,
    a_name: String,
    mut b: Client,
    b_name: String,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        one_way(&mut a, &mut b, &b_name, n);
        one_way(&mut b, &mut a, &a_name, n + 1);
        n += 2;
        count.fetch_add(1, Ordering::Relaxed);
    }
}

/// `from` messages `to`; returns once both saw their line.
fn one_way(from: &mut Client, to: &mut Client, to_name: &str, n: u64) {
    from.send(&format!("message {to_name} ping {n}"));
    from.expect(&format!("OK message {to_name} delivered"));
    let got = to.expect_delivery();
    assert_eq!(got.text, format!("ping {n}"), "{got:?}");
}

/// How long a new connection waits for `HELLO CHAT/1`.
fn connect_to_hello(server: &TestServer) -> Duration {
    let started = Instant::now();
    let stream = TcpStream::connect(server.addr()).expect("connect");
    stream
        .set_read_timeout(Some(LINE_TIMEOUT))
        .expect("read timeout");
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .expect("read HELLO");
    let took = started.elapsed();
    assert_eq!(line, "HELLO CHAT/1\n");
    took
}

#[test]
fn a_new_connection_gets_hello_promptly_under_load() {
    let names: Vec<String> = (0..2 * PAIRS).map(|i| format!("u{i:03}")).collect();
    let passwords: Vec<String> = names.iter().map(|n| format!("pw-{n}")).collect();
    let users: Vec<(&str, &str)> = names
        .iter()
        .zip(&passwords)
        .map(|(n, p)| (n.as_str(), p.as_str()))
        .collect();
    let server = TestServer::with(
        &users,
        &[
            // Every client connects from 127.0.0.1.
            "max_connections_per_ip = 1000",
            // Flood control would pace the pairs, not the server.
            "flood_burst = 1000000",
            "flood_per_second = 1000000",
            "flood_backlog = 1000000",
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut pairs = Vec::new();
    for pair in names.chunks(2) {
        let (a_name, b_name) = (pair[0].clone(), pair[1].clone());
        let a = server.login(&a_name, &format!("pw-{a_name}"));
        let b = server.login(&b_name, &format!("pw-{b_name}"));
        let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
        pairs.push(thread::spawn(move || {
            ping_pong(a, a_name, b, b_name, stop, count)
        }));
    }
    // The load is on once every pair has gone back and forth a few times.
    poll_until("the load to start", Duration::from_secs(60), || {
        (count.load(Ordering::Relaxed) >= 5 * PAIRS as u64).then_some(())
    });

    let before = count.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut took: Vec<Duration> = (0..NEWCOMERS).map(|_| connect_to_hello(&server)).collect();
    let elapsed = started.elapsed();
    let during = count.load(Ordering::Relaxed) - before;

    stop.store(true, Ordering::Relaxed);
    for pair in pairs {
        pair.join().expect("a pair failed");
    }
    took.sort();
    let median = took[NEWCOMERS / 2];
    let max = took[NEWCOMERS - 1];
    println!(
        "connect to HELLO under load: median {median:?}, max {max:?} (all {took:?}); \
         {during} round trips ({:.0} messages/s) meanwhile",
        (2 * during) as f64 / elapsed.as_secs_f64()
    );
    // The load really ran while the newcomers were timed.
    assert!(during > 0, "no message went through while connecting");
    // Unloaded, HELLO takes well under a millisecond plus at most one round
    // (one commit, a few ms). 100 ms is the target; the median of 20 keeps
    // a few connects delayed by other builds on this shared 2-core machine
    // from failing the test, while a loop that starves `accept` (seconds,
    // or never) fails it every time.
    assert!(
        median < Duration::from_millis(100),
        "median connect-to-HELLO {median:?} (all: {took:?})"
    );
}
