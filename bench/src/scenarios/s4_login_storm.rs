//! S4: a storm of argon2id logins, against the raw verify rate of the
//! machine, and what it does to an S1 pair's latency meanwhile.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::client::connect_login;
use crate::ctx::{ChatdConfig, Ctx};
use crate::report::{Row, Target, Unit};
use crate::users::{self, Account};

use super::pairs::Pairs;

/// The raw argon2id verify rate on `threads` threads, for 2 s.
async fn raw_rate(accounts: &[Account], threads: usize) -> Result<f64> {
    let accounts = accounts.to_vec();
    tokio::task::spawn_blocking(move || {
        users::raw_verify_rate(&accounts, threads, Duration::from_secs(2))
    })
    .await?
}

/// S4: a login storm with argon2id accounts, against the raw verify rate,
/// and S1's p99 during it.
pub async fn s4(ctx: &Ctx) -> Result<Vec<Row>> {
    println!("S4: login storm");
    let o = ctx.opts.clone();
    let k = o.s4_accounts;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cache = ctx.cache.clone();
    let t0 = Instant::now();
    let hashed =
        tokio::task::spawn_blocking(move || users::argon2_default("s", k, threads, Some(&cache)))
            .await??;
    println!(
        "  {k} argon2id accounts ready in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // chatd's default password_check_concurrency, set explicitly.
    let concurrency = 2;
    let raw_before = raw_rate(&hashed, concurrency).await?;
    println!("  raw argon2id verify on {concurrency} threads: {raw_before:.1}/s");

    let pair = users::plain("q", 2);
    let mut all = hashed.clone();
    all.extend(pair.iter().cloned());
    let mut cfg = ChatdConfig::load_test();
    cfg.set("password_check_concurrency", &concurrency.to_string());
    let setup = ctx.chatd_setup("s4", &all, cfg)?;
    let chatd = ctx.start_chatd(&setup)?;
    let addr = chatd.addr;
    let pairs = Pairs::start(ctx.chat, addr, &pair, 1, o.text_bytes).await?;
    tokio::time::sleep(o.warmup).await;
    pairs.phase.set(1);
    tokio::time::sleep(o.phase).await;
    pairs.phase.set(2);
    let start = Instant::now();
    let chat = ctx.chat;
    let tasks: Vec<_> = hashed
        .iter()
        .cloned()
        .map(|a| {
            tokio::spawn(async move {
                let s =
                    tokio::time::timeout(Duration::from_secs(120), connect_login(chat, addr, &a))
                        .await
                        .map_err(|_| anyhow!("login of {} timed out", a.user))??;
                Ok::<_, anyhow::Error>((Instant::now(), s))
            })
        })
        .collect();
    let mut last = start;
    let mut sessions = Vec::new();
    let mut failed = 0usize;
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok((at, s))) => {
                last = last.max(at);
                sessions.push(s);
            }
            Ok(Err(e)) => {
                failed += 1;
                first_err.get_or_insert(e.to_string());
            }
            Err(e) => {
                failed += 1;
                first_err.get_or_insert(e.to_string());
            }
        }
    }
    pairs.phase.set(3);
    let storm_secs = last.duration_since(start).as_secs_f64();
    let rec = pairs.finish().await;
    for s in sessions {
        s.logout().await;
    }
    if failed > 0 {
        bail!(
            "{failed} of {k} storm logins failed: {}",
            first_err.unwrap_or_default()
        );
    }
    // The machine may be shared: the reference is the mean of the raw rate
    // just before and just after the storm.
    let raw_after = raw_rate(&hashed, concurrency).await?;
    let raw = (raw_before + raw_after) / 2.0;
    println!("  raw argon2id verify after the storm: {raw_after:.1}/s (mean {raw:.1}/s)");
    let rate = k as f64 / storm_secs;
    let (quiet, storm) = (rec.lat[1].summary(), rec.lat[2].summary());
    println!("  chatd: {k} logins in {storm_secs:.2} s = {rate:.1}/s");
    println!("  S1 quiet: {quiet}\n  S1 storm: {storm}");
    if !ctx.flood_configurable() {
        ctx.note(
            "S4: with flood control at its default, the S1 pair is paced at 5 round trips a \
             second, so its latency during the storm says little",
        );
    }
    if storm.count == 0 {
        ctx.note("S4: no S1 round trip completed during the login storm");
    }
    Ok(vec![
        Row::new(
            "S4",
            format!("{k} argon2id logins at once: logins/s"),
            Unit::PerSec,
        )
        .values(Some(rate), Some(raw))
        .reference(&format!("raw argon2 verify, {concurrency} threads"))
        .target(Target::RatioAtLeast(0.85)),
        Row::new(
            "S4",
            "1 pair: S1 p99 round trip during the storm",
            Unit::Micros,
        )
        .values(Some(storm.p99 as f64), Some(quiet.p99 as f64))
        .reference("same pair, quiet")
        .target(Target::RatioAtMost(2.0)),
        Row::new(
            "S4",
            "1 pair: S1 p50 round trip during the storm",
            Unit::Micros,
        )
        .values(Some(storm.p50 as f64), Some(quiet.p50 as f64))
        .reference("same pair, quiet"),
    ])
}
