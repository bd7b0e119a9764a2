//! Hardening: a crash loop (PROTOCOL.md §5, §6 "Delivery guarantee", §2
//! `<id>`). A dozen clients exchange private messages and broadcasts in
//! several rounds; `chatd` is SIGKILLed at a pseudo-random moment of each
//! round's traffic and restarted on the same data directory; the clients
//! go down with it (what is still unread in their sockets is never read),
//! then log in again and carry on, answering probes.
//!
//! At the end, every message whose sender got `OK message ...` or
//! `OK broadcast ...` has reached each of its recipients at least once, in
//! order per (sender, recipient) once repeated ids are dropped, and no
//! message id was ever given to two different messages.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const CLIENTS: usize = 12;
const ROUNDS: usize = 6;
/// Commands each client sends per round.
const OPS: usize = 40;
const SEED: u64 = 0xC0FF_EE00_2026;
/// Commands each crash round must have seen acknowledged before its kill,
/// so that every crash hits real traffic.
const MIN_ACKS_PER_CRASH: usize = CLIENTS * 4;

fn user(i: usize) -> String {
    format!("u{i:02}")
}

fn password(i: usize) -> String {
    format!("pw-{i:02}")
}

/// One command a client sent, and what came of it.
#[derive(Debug)]
struct Sent {
    /// The sender's sequence number, also the text's first word `s<seq>`.
    seq: usize,
    text: String,
    /// Who must get it, if the sender got its `OK`.
    to: Vec<String>,
    acked: bool,
}

/// What one client saw in one round.
#[derive(Debug, Default)]
struct RoundLog {
    /// The `OFFLINE` block at login, then live deliveries, in order.
    received: Vec<Delivery>,
    sent: Vec<Sent>,
}

/// Counts to `n` across threads, with a deadline instead of a hang if one
/// of them died.
fn rendezvous(counter: &AtomicUsize, n: usize, what: &str) {
    counter.fetch_add(1, Ordering::AcqRel);
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter.load(Ordering::Acquire) < n {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Reads until a line that is not a delivery (the reply); deliveries are
/// logged. `None` if the connection closed first (the server was killed),
/// or once `crashed` is set: then the client goes down with the server and
/// never reads what is still in its socket, so those deliveries stay
/// unconfirmed and only the server's store can bring them back.
fn await_reply(c: &mut Client, log: &mut RoundLog, crashed: &AtomicBool) -> Option<String> {
    loop {
        if crashed.load(Ordering::Acquire) {
            return None;
        }
        match c.recv(LINE_TIMEOUT) {
            Recv::Line(line) => match Delivery::parse(&line) {
                Some(d) => log.received.push(d),
                None => return Some(line),
            },
            Recv::Closed => return None,
            Recv::TimedOut => panic!("no reply within {LINE_TIMEOUT:?}: {:#?}", c.seen()),
        }
    }
}

struct Shared {
    logged_in: AtomicUsize,
    acks: AtomicUsize,
    finished: AtomicUsize,
    drained: AtomicUsize,
    crashed: AtomicBool,
}

fn client_round(
    addr: SocketAddr,
    me: usize,
    round: usize,
    last: bool,
    shared: &Shared,
) -> RoundLog {
    let mut log = RoundLog::default();
    let mut rng = Rng::new(SEED ^ ((round as u64) << 32) ^ me as u64);
    let mut c = Client::connect(addr);
    log.received = c.login(&user(me), &password(me));
    rendezvous(&shared.logged_in, CLIENTS, "every client to log in");
    for op in 0..OPS {
        let seq = round * 1000 + op;
        let broadcast = rng.below(4) == 0;
        let text = format!("s{seq:05} from {} round {round}", user(me));
        let (line, to) = if broadcast {
            (
                format!("broadcast all {text}"),
                (0..CLIENTS).map(user).collect(),
            )
        } else {
            let mut peer = rng.below(CLIENTS - 1);
            if peer >= me {
                peer += 1;
            }
            (format!("message {} {text}", user(peer)), vec![user(peer)])
        };
        log.sent.push(Sent {
            seq,
            text,
            to: to.clone(),
            acked: false,
        });
        if !c.try_send_raw(format!("{line}\n").as_bytes()) {
            break;
        }
        let Some(reply) = await_reply(&mut c, &mut log, &shared.crashed) else {
            break;
        };
        let ok = if broadcast {
            reply.starts_with("OK broadcast ")
        } else {
            reply == format!("OK message {} delivered", to[0])
                || reply.starts_with(&format!("OK message {} queued ", to[0]))
        };
        assert!(ok, "{}: unexpected reply {reply:?} to {line:?}", user(me));
        log.sent.last_mut().unwrap().acked = true;
        shared.acks.fetch_add(1, Ordering::AcqRel);
    }
    shared.finished.fetch_add(1, Ordering::AcqRel);
    if last {
        // Once every sender is done, everything for me is queued before the
        // reply to my `whoelse`.
        rendezvous(&shared.drained, CLIENTS, "every client to finish sending");
        c.send("whoelse");
        let reply =
            await_reply(&mut c, &mut log, &shared.crashed).expect("the last round has no crash");
        assert!(reply.starts_with("WHO"), "{reply:?}");
    } else {
        // Keep reading (and answering probes) until the crash.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !shared.crashed.load(Ordering::Acquire) {
            match c.recv(Duration::from_millis(20)) {
                Recv::Line(line) => {
                    let d = Delivery::parse(&line)
                        .unwrap_or_else(|| panic!("{}: unexpected {line:?}", user(me)));
                    log.received.push(d);
                }
                Recv::Closed => break,
                Recv::TimedOut => assert!(Instant::now() < deadline, "the server was never killed"),
            }
        }
    }
    log
}

#[test]
fn no_accepted_message_is_lost_or_reordered_across_crashes() {
    let accounts: Vec<(String, String)> = (0..CLIENTS).map(|i| (user(i), password(i))).collect();
    let users: Vec<(&str, &str)> = accounts
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    let mut server = TestServer::with(
        &users,
        &[
            // Probes soon after deliveries, so that a crash finds some
            // deliveries confirmed and some not.
            "heartbeat = 0.3",
            "confirm_delay = 0.01",
            "heartbeat_timeout = 30",
            "flood_burst = 1000000",
            "flood_per_second = 1000000",
            "flood_backlog = 1000000",
        ],
    );
    let mut rng = Rng::new(SEED);
    let started = Instant::now();
    // Per user, everything received in order across rounds, with its round.
    let mut received: HashMap<String, Vec<(usize, Delivery)>> = HashMap::new();
    let mut sent: Vec<(String, Sent)> = Vec::new();
    let mut kills = Vec::new();
    for round in 0..ROUNDS {
        let last = round == ROUNDS - 1;
        if round > 0 {
            server.restart();
        }
        let addr = server.addr();
        let shared = Shared {
            logged_in: AtomicUsize::new(0),
            acks: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            drained: AtomicUsize::new(0),
            crashed: AtomicBool::new(false),
        };
        let logs: Vec<RoundLog> = thread::scope(|s| {
            let handles: Vec<_> = (0..CLIENTS)
                .map(|me| {
                    let shared = &shared;
                    s.spawn(move || client_round(addr, me, round, last, shared))
                })
                .collect();
            if !last {
                // SIGKILL once a seeded number of commands were answered.
                let target =
                    MIN_ACKS_PER_CRASH + rng.below(CLIENTS * OPS * 3 / 4 - MIN_ACKS_PER_CRASH);
                let deadline = Instant::now() + Duration::from_secs(30);
                while shared.acks.load(Ordering::Acquire) < target
                    && shared.finished.load(Ordering::Acquire) < CLIENTS
                {
                    assert!(
                        Instant::now() < deadline,
                        "round {round}: traffic stalled at {} acks",
                        shared.acks.load(Ordering::Acquire)
                    );
                    thread::sleep(Duration::from_millis(1));
                }
                shared.crashed.store(true, Ordering::Release);
                server.kill();
                kills.push((target, shared.acks.load(Ordering::Acquire)));
            }
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (me, log) in logs.into_iter().enumerate() {
            received
                .entry(user(me))
                .or_default()
                .extend(log.received.into_iter().map(|d| (round, d)));
            sent.extend(log.sent.into_iter().map(|s| (user(me), s)));
        }
    }
    let acked = sent.iter().filter(|(_, s)| s.acked).count();
    eprintln!(
        "{ROUNDS} rounds, kills at (target, acks) {kills:?}, {} commands sent, {acked} acknowledged, \
         in {:?}",
        sent.len(),
        started.elapsed()
    );
    for (round, (target, acks)) in kills.iter().enumerate() {
        assert!(
            *acks >= MIN_ACKS_PER_CRASH,
            "round {round} was killed after {acks} acknowledgements (target {target}): \
             too little traffic to prove anything"
        );
    }

    // A repeat is a redelivery after a crash: within one round (one
    // session per user) no id may come twice, the final, crash-free round
    // included. A server that sends every delivery twice fails here.
    for (who, deliveries) in &received {
        let mut in_round = HashSet::new();
        for (round, d) in deliveries {
            assert!(
                in_round.insert((*round, d.id)),
                "{who} got id {} twice in round {round}",
                d.id
            );
        }
    }

    // No id was given to two different messages, and a message kept its id
    // through redeliveries (every copy of a broadcast shares one).
    let mut text_of: HashMap<u64, (String, String)> = HashMap::new();
    let mut id_of: HashMap<(String, String), u64> = HashMap::new();
    for (_, d) in received.values().flatten() {
        let key = (d.from.clone(), d.text.clone());
        let prev = text_of.entry(d.id).or_insert_with(|| key.clone());
        assert_eq!(*prev, key, "id {} given to two different messages", d.id);
        let prev = id_of.entry(key).or_insert(d.id);
        assert_eq!(*prev, d.id, "{d:?} came with two different ids");
    }

    // In order per (sender, recipient), once repeated ids are dropped.
    let mut repeats = 0;
    for (who, deliveries) in &received {
        let mut seen_ids = HashSet::new();
        let mut last_seq: HashMap<&str, usize> = HashMap::new();
        for (_, d) in deliveries {
            if !seen_ids.insert(d.id) {
                repeats += 1;
                continue;
            }
            let seq: usize = d.text[1..6].parse().unwrap();
            if let Some(prev) = last_seq.insert(d.from.as_str(), seq) {
                assert!(
                    seq > prev,
                    "{who} got s{seq:05} from {} after s{prev:05}",
                    d.from
                );
            }
        }
    }

    // Every acknowledged message reached every recipient at least once.
    let texts: HashMap<&str, HashSet<(&str, &str)>> = received
        .iter()
        .map(|(u, ds)| {
            (
                u.as_str(),
                ds.iter()
                    .map(|(_, d)| (d.from.as_str(), d.text.as_str()))
                    .collect(),
            )
        })
        .collect();
    let mut lost = Vec::new();
    for (from, s) in sent.iter().filter(|(_, s)| s.acked) {
        for to in &s.to {
            if !texts[to.as_str()].contains(&(from.as_str(), s.text.as_str())) {
                lost.push(format!("{from} -> {to}: {:?} (seq {})", s.text, s.seq));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged deliveries lost:\n{}",
        lost.len(),
        lost.join("\n")
    );

    // The crashes hit unconfirmed deliveries, or the test proved little.
    eprintln!("{repeats} deliveries repeated after a crash");
    assert!(
        repeats > 0,
        "no delivery was ever repeated: the crashes did not hit unconfirmed deliveries"
    );
}
