//! What an idle logged-in session costs chatd in memory: chat servers
//! spend most of their life holding many quiet connections, so the bytes
//! each one keeps while nothing happens bound how many users a machine
//! serves. chat-bench S3 measures the release build next to ngircd (about
//! 2.6 KiB a session); this test keeps the debug build from drifting back
//! to the ~10 KiB a session it once cost (a task per direction, an 8 KiB
//! read buffer, a channel of ~1.3 KiB per connection).

mod common;

use common::*;

/// Sessions measured; enough that hash-table doublings and allocator
/// rounding average out. chatd's allocator (mimalloc) takes memory from
/// the system in chunks of a few MiB: at 2000 sessions one chunk more or
/// less read as 3.3 or 6.1 KiB a session from one run to the next; at
/// 6000 the figure holds at about 3.3 KiB.
const SESSIONS: usize = 6000;
/// Sessions logged in before the first reading, so that code pages, the
/// runtime's first allocations and the tables' first sizes are in.
const WARM: usize = 100;
/// Threads logging in at once (each login is a few round trips).
const LOGIN_THREADS: usize = 4;
/// The bound per session. A release build measures about 1.7 KiB (S3) and
/// this debug build about 3.3 KiB (its futures are larger, and mimalloc
/// rounds them up to its size classes). RSS
/// moves by whole pages and with the allocator's arenas, so the bound
/// leaves about 1.5× room over the debug figure, while staying far below
/// the 10 KiB the old layout cost.
const MAX_BYTES_PER_SESSION: u64 = 4 * 1024;

#[test]
fn an_idle_logged_in_session_costs_at_most_4_kib() {
    let names: Vec<String> = (0..WARM + SESSIONS).map(|i| format!("u{i}")).collect();
    let users: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "pw")).collect();
    let per_ip = format!("max_connections_per_ip = {}", WARM + SESSIONS + 10);
    let server = TestServer::with(&users, &[per_ip.as_str()]);
    let pid = server.pid().unwrap();

    let log_in = |names: &[String]| -> Vec<Client> {
        let chunk = names.len().div_ceil(LOGIN_THREADS);
        std::thread::scope(|s| {
            let threads: Vec<_> = names
                .chunks(chunk)
                .map(|names| {
                    let server = &server;
                    s.spawn(move || {
                        names
                            .iter()
                            .map(|n| {
                                let mut c = server.login(n, "pw");
                                // Logged in and everything answered: the
                                // session is idle from here on.
                                c.barrier();
                                c
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        })
    };

    let warm = log_in(&names[..WARM]);
    let before = proc_status_kb(pid, "VmRSS");
    let idle = log_in(&names[WARM..]);
    // Every login ended with a barrier answered: the server has handled
    // them all, and nothing is in flight.
    let after = proc_status_kb(pid, "VmRSS");
    let per_session = (after.saturating_sub(before)) * 1024 / SESSIONS as u64;
    eprintln!(
        "{SESSIONS} idle sessions: VmRSS {before} kB -> {after} kB, {per_session} B a session"
    );
    assert!(
        per_session <= MAX_BYTES_PER_SESSION,
        "an idle session costs {per_session} B (VmRSS {before} kB -> {after} kB for \
         {SESSIONS} sessions), over {MAX_BYTES_PER_SESSION} B"
    );
    drop(idle);
    drop(warm);
}
