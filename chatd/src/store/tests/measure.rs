//! Measurements that justified the current layout, run by hand.

use super::*;

/// Times the version 1 and the current layout on broadcast load: 100
/// rounds of one 4000-byte broadcast held for 1000 users in one
/// `apply`, then released by all of them, either in one `apply` or in
/// 20 of 50 (confirmations arriving over several rounds). Run by hand:
/// `cargo test --release -p chatd measure_broadcast -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_broadcast_v1_vs_v2() {
    use std::time::{Duration, Instant};

    const ROUNDS: u64 = 100;
    const USERS: usize = 1000;
    let users: Vec<String> = (0..USERS).map(|i| format!("user{i:04}")).collect();
    let round = |id: u64| {
        let m = msg(id, "alice", MessageKind::Broadcast, &"b".repeat(4000));
        let holds: Vec<StoreOp> = users
            .iter()
            .map(|user| StoreOp::Hold {
                user: user.clone(),
                message: Arc::clone(&m),
            })
            .collect();
        let releases: Vec<StoreOp> = users
            .iter()
            .map(|user| StoreOp::Release {
                user: user.clone(),
                upto: id,
            })
            .collect();
        (holds, releases)
    };
    let run = |label: &str, release_batch: usize, apply: &mut dyn FnMut(&[StoreOp])| {
        let (mut hold_time, mut release_time) = (Duration::ZERO, Duration::ZERO);
        for id in 1..=ROUNDS {
            let (holds, releases) = round(id);
            let t = Instant::now();
            apply(&holds);
            hold_time += t.elapsed();
            let t = Instant::now();
            for chunk in releases.chunks(release_batch) {
                apply(chunk);
            }
            release_time += t.elapsed();
        }
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / ROUNDS as f64;
        println!(
            "{label:<32} hold {:7.2} ms/round  release {:7.2} ms/round  total {:7.2} s",
            per(hold_time),
            per(release_time),
            (hold_time + release_time).as_secs_f64(),
        );
    };
    for release_batch in [USERS, 50] {
        let dir = tempfile::tempdir().unwrap();
        let mut old = v1::open(dir.path());
        run(
            &format!("v1, releases in batches of {release_batch}"),
            release_batch,
            &mut |ops| v1::apply(&mut old, ops),
        );
        let dir = tempfile::tempdir().unwrap();
        let mut new = SqliteStore::open(dir.path()).unwrap();
        run(
            &format!("v2, releases in batches of {release_batch}"),
            release_batch,
            &mut |ops| new.apply(ops).unwrap(),
        );
    }
}

/// Times recording one failed login (one `apply`, so one commit) over
/// 100 000 records, with short and with 4 KB names, on the version 2
/// layout (no index on `seq`) and the current one. Run by hand:
/// `cargo test --release -p chatd measure_login_failures -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_login_failures_v2_vs_v3() {
    use std::time::Instant;

    const RECORDS: usize = 100_000;
    const FAILURES: usize = 200;
    for name_bytes in [16, 4096] {
        for layout in [2, SCHEMA_VERSION] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = if layout == 2 {
                v2::open(dir.path())
            } else {
                SqliteStore::open(dir.path()).unwrap()
            };
            fill_failures(&mut store, RECORDS, name_bytes);
            let t = Instant::now();
            for i in 0..FAILURES {
                let f = failure(RECORDS + i, name_bytes);
                store.apply(&[StoreOp::LoginFailures(f)]).unwrap();
            }
            let per = t.elapsed().as_secs_f64() * 1000.0 / FAILURES as f64;
            // The statement alone, without the commit's fsync.
            let tx = store.conn.transaction().unwrap();
            let t = Instant::now();
            for i in 0..FAILURES {
                let f = failure(2 * RECORDS + i, name_bytes);
                apply_one(&tx, &StoreOp::LoginFailures(f)).unwrap();
            }
            let statement = t.elapsed().as_secs_f64() * 1000.0 / FAILURES as f64;
            drop(tx);
            println!(
                "layout {layout}, {RECORDS} records of {name_bytes}-byte names: \
                 {per:7.3} ms per failure with its commit, {statement:7.3} ms without"
            );
        }
    }
    // The commit alone, for comparison: the same on any layout.
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let t = Instant::now();
    for i in 0..FAILURES {
        store
            .apply(&[StoreOp::Seen {
                user: format!("user{i}"),
                at: Time::from_unix_millis(1),
            }])
            .unwrap();
    }
    let per = t.elapsed().as_secs_f64() * 1000.0 / FAILURES as f64;
    println!("an empty-ish commit (one Seen): {per:7.3} ms");
}

/// Times the work of a fan-out on the current layout, as chatd's driver
/// gives it to the store: 200 broadcasts to 1000 online users, four to a
/// commit (group commit), each confirmed by every receiver in a later
/// commit, beside 100 000 entries held for 1000 offline users (so the
/// tables are not tiny). Run by hand, on two commits to compare layouts:
/// `cargo test --release -p chatd measure_fanout -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_fanout() {
    use std::time::{Duration, Instant};

    const ONLINE: usize = 1000;
    const OFFLINE: usize = 1000;
    const BACKLOG: u64 = 100;
    const BROADCASTS: u64 = 200;
    const PER_COMMIT: u64 = 4;
    let online: Vec<String> = (0..ONLINE).map(|i| format!("on{i:04}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let mut id = 0;
    for _ in 0..BACKLOG {
        id += 1;
        let m = msg(id, "alice", MessageKind::Broadcast, "held while away");
        let holds: Vec<StoreOp> = (0..OFFLINE)
            .map(|i| StoreOp::Hold {
                user: format!("off{i:04}"),
                message: Arc::clone(&m),
            })
            .collect();
        store.apply(&holds).unwrap();
    }
    // This thread's time on a CPU (Linux), apart from the waits in fsync:
    // what limits a store thread that always has the next batch waiting.
    let on_cpu = || -> Duration {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        let ns = stat.split(' ').next().and_then(|n| n.parse().ok());
        Duration::from_nanos(ns.unwrap_or(0))
    };
    let cpu_before = on_cpu();
    let (mut hold_time, mut release_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..BROADCASTS / PER_COMMIT {
        let mut holds = Vec::new();
        for _ in 0..PER_COMMIT {
            id += 1;
            let m = msg(
                id,
                "alice",
                MessageKind::Broadcast,
                "hello everyone, 30 bytes",
            );
            holds.extend(online.iter().map(|user| StoreOp::Hold {
                user: user.clone(),
                message: Arc::clone(&m),
            }));
        }
        let releases: Vec<StoreOp> = online
            .iter()
            .map(|user| StoreOp::Release {
                user: user.clone(),
                upto: id,
            })
            .collect();
        let t = Instant::now();
        store.apply(&holds).unwrap();
        hold_time += t.elapsed();
        let t = Instant::now();
        store.apply(&releases).unwrap();
        release_time += t.elapsed();
    }
    let cpu = on_cpu() - cpu_before;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / (BROADCASTS as f64 * ONLINE as f64);
    println!(
        "layout {SCHEMA_VERSION}: per delivery: hold {:.2} µs, release {:.2} µs, \
         total {:.2} µs, of which on a CPU {:.2} µs",
        per(hold_time),
        per(release_time),
        per(hold_time + release_time),
        per(cpu)
    );
}

/// Times the store on S1's shape of traffic: commits of 250 private
/// messages (rising ids) for 100 users, each user confirming what it got
/// every 20 commits. Run by hand:
/// `cargo test --release -p chatd measure_private -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_private_traffic() {
    use std::time::Instant;

    const COMMITS: u64 = 2000;
    const PER_COMMIT: u64 = 250;
    const USERS: u64 = 100;
    let users: Vec<String> = (0..USERS).map(|i| format!("p{i:05}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let mut id = 0;
    let t = Instant::now();
    for c in 0..COMMITS {
        let mut ops = Vec::new();
        for _ in 0..PER_COMMIT {
            id += 1;
            let to = &users[(id % USERS) as usize];
            let text = format!(
                "{} {id} xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                1_700_000_000u64 + id
            );
            ops.push(StoreOp::Hold {
                user: to.clone(),
                message: msg(id, "p99999", MessageKind::Private, &text),
            });
        }
        if c % 20 == 19 {
            for user in &users {
                ops.push(StoreOp::Release {
                    user: user.clone(),
                    upto: id,
                });
            }
        }
        store.apply(&ops).unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} messages in {secs:.2} s: {:.2} us a message, {:.0} us a commit",
        COMMITS * PER_COMMIT,
        secs * 1e6 / (COMMITS * PER_COMMIT) as f64,
        secs * 1e6 / COMMITS as f64
    );
}
