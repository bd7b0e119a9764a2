//! chatd's memory after a storm of argon2id logins: password checks run on
//! `password_check_concurrency` threads started once, each reusing one
//! argon2 buffer, so the resident set stays bounded by that many buffers
//! however many logins there have been, instead of growing with every
//! thread that ever ran a check.

mod common;

use std::time::Instant;

use common::*;

/// argon2 0.5's default m_cost, what `chatd hash-password` uses: 19 MiB.
const M_COST_KIB: u64 = 19 * 1024;
/// chatd's default.
const CONCURRENCY: u64 = 2;
/// Accounts, one per client thread (a name is logged in once at a time).
const CLIENTS: usize = 8;
const LOGINS: usize = 504; // 63 per client
/// Everything but the argon2 buffers: a debug chatd is at about 12 MiB
/// before its first login (7.5 MiB in release); the rest is room for
/// tokio's and SQLite's own growth, the clients' connection buffers and
/// the allocator's slack, and is still far below one more 19 MiB buffer
/// per login thread.
const SLACK_KIB: u64 = 30 * 1024;

#[test]
fn rss_after_500_argon2_logins_is_bounded_by_the_check_threads() {
    let accounts: Vec<(String, String)> = (0..CLIENTS)
        .map(|i| {
            let phc = hash_password(&format!("pw-{i}"));
            assert!(phc.contains("$m=19456,t=2,p=1$"), "default params: {phc}");
            (format!("user{i}"), phc)
        })
        .collect();
    let users: Vec<(&str, &str)> = accounts
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    let concurrency = format!("password_check_concurrency = {CONCURRENCY}");
    let server = TestServer::with(&users, &[concurrency.as_str()]);
    let pid = server.pid().unwrap();
    let before = proc_status_kb(pid, "VmRSS");
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for (user, _) in &accounts {
            let server = &server;
            s.spawn(move || {
                let password = format!("pw-{}", &user["user".len()..]);
                for _ in 0..LOGINS / CLIENTS {
                    server.login(user, &password).logout();
                }
            });
        }
    });
    let took = t0.elapsed();
    let rss = proc_status_kb(pid, "VmRSS");
    let peak = proc_status_kb(pid, "VmHWM");
    let bound = 2 * CONCURRENCY * M_COST_KIB + SLACK_KIB;
    eprintln!(
        "{LOGINS} logins in {took:?}: VmRSS {before} kB before, {rss} kB after \
         (peak {peak} kB, bound {bound} kB)"
    );
    assert!(
        rss < bound,
        "VmRSS after {LOGINS} logins is {rss} kB (peak {peak} kB, {before} kB before), over \
         2 × {CONCURRENCY} threads × {M_COST_KIB} kB + {SLACK_KIB} kB = {bound} kB"
    );
}
