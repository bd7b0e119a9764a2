//! S6: a million held messages across 1,000 users: what chatd costs at
//! startup (memory, time to its ready line) and what one user's drain
//! costs, with every box in the store and none in memory.
//!
//! The boxes are filled through chatd itself (private messages from 8
//! senders, to the users in turn), not written into SQLite by a helper:
//! slower, but the store then holds exactly what chatd writes, summaries
//! included, and nothing here depends on its layout.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::s5_held::{drain, fill};
use crate::client::Kind;
use crate::ctx::{ChatdConfig, Ctx};
use crate::proc::Memory;
use crate::report::{Row, Target, Unit};
use crate::users;

/// Users with a box.
const USERS: usize = 1000;
/// Held messages per user in the full run (a million in all).
const PER_USER: usize = 1000;
/// How long filling may take.
const FILL_LIMIT: Duration = Duration::from_secs(600);
/// The resident memory chatd must stay under after startup (issue goal).
const RSS_GOAL_BYTES: f64 = 100.0 * 1048576.0;
/// Startup with the boxes may take this much longer than with an empty
/// store and still count as "not growing with held messages": reading
/// 1000 summaries is well under it, reading a million messages (about a
/// second on this machine) well over it; the slack absorbs a loaded
/// machine's noise in spawning a process.
const STARTUP_SLACK: Duration = Duration::from_millis(150);

/// S6: a million held messages across 1,000 users.
pub async fn s6(ctx: &Ctx) -> Result<Vec<Row>> {
    println!("S6: a million held messages across {USERS} users");
    if ctx.chat != Kind::Chat {
        ctx.note("S6: skipped for the relay, which keeps nothing across a restart");
        return Ok(Vec::new());
    }
    // The quick run scales the boxes down as it does S5's.
    let per_user = if ctx.opts.s5_messages < 100_000 {
        10
    } else {
        PER_USER
    };
    let total = (USERS * per_user) as u64;
    let held = users::plain("m", USERS);
    let senders = users::plain("g", 8);
    let targets: Vec<String> = held.iter().map(|a| a.user.clone()).collect();
    let mut accounts = held.clone();
    accounts.extend(senders.iter().cloned());
    // Without it, every login here pays an argon2id check with default
    // parameters (19 MiB, about 40 ms), which the drain's figures would
    // measure instead of the drain.
    accounts.push(users::cheap_params_account()?);
    let mut cfg = ChatdConfig::load_test();
    cfg.set("max_held_per_user", &(per_user + 1000).to_string());
    let setup = ctx.chatd_setup("s6", &accounts, cfg)?;

    let mut chatd = ctx.start_chatd(&setup)?;
    let empty_startup = chatd.startup;
    let empty_rss = Memory::of(chatd.pid())?.rss_kib;
    let f = fill(
        Kind::Chat,
        chatd.addr,
        &senders,
        &targets,
        total,
        ctx.opts.text_bytes,
        FILL_LIMIT,
    )
    .await?;
    if f.queued < total {
        ctx.note(format!(
            "S6: chatd queued only {} of {total} messages within {FILL_LIMIT:?}",
            f.queued
        ));
    }
    let store_bytes = crate::ctx::dir_bytes(&Ctx::data_dir(&setup));
    chatd
        .stop(Duration::from_secs(60))
        .context("stopping chatd after the fill")?;
    drop(chatd);
    let t = Instant::now();
    let chatd = ctx.start_chatd(&setup)?;
    let filled_startup = chatd.startup;
    let started_rss = Memory::of(chatd.pid())?.rss_kib;
    println!(
        "  chatd store {:.1} MiB; ready line {:.3} s after spawn empty, {:.3} s with {} held \
         (restart {:.3} s); RSS {} KiB empty, {} KiB with them",
        store_bytes as f64 / 1048576.0,
        empty_startup.as_secs_f64(),
        filled_startup.as_secs_f64(),
        f.queued,
        t.elapsed().as_secs_f64(),
        empty_rss,
        started_rss,
    );
    let one = &held[0];
    let expected = f.queued.div_ceil(USERS as u64);
    let d = drain(Kind::Chat, &chatd, one, expected).await?;
    drop(chatd);

    let startup_ok = filled_startup <= empty_startup + STARTUP_SLACK;
    Ok(vec![
        Row::new(
            "S6",
            format!("{} held across {USERS} users: RSS after startup", f.queued),
            Unit::Bytes,
        )
        .values(
            Some(started_rss as f64 * 1024.0),
            Some(empty_rss as f64 * 1024.0),
        )
        .reference("empty store")
        .target(Target::AtMost(RSS_GOAL_BYTES)),
        Row::new(
            "S6",
            format!("{} held: spawn → ready line", f.queued),
            Unit::Micros,
        )
        .values(
            Some(filled_startup.as_secs_f64() * 1e6),
            Some(empty_startup.as_secs_f64() * 1e6),
        )
        .reference("empty store")
        .target(Target::Judged {
            rule: format!(
                "does not grow with held messages: ≤ empty + {} ms",
                STARTUP_SLACK.as_millis()
            ),
            met: startup_ok,
        }),
        Row::new(
            "S6",
            format!("one user's {} held: login → last message", d.got),
            Unit::Micros,
        )
        .values(Some(d.secs * 1e6), None)
        .reference("—"),
        Row::new(
            "S6",
            format!(
                "one user's {} held: server memory growth during the drain",
                d.got
            ),
            Unit::Bytes,
        )
        .values(Some(d.growth_bytes), None)
        .reference("—"),
        Row::new(
            "S6",
            format!("fill: messages/s to {USERS} offline users (8 senders)"),
            Unit::PerSec,
        )
        .values(Some(f.queued as f64 / f.secs), None)
        .reference("—"),
    ])
}
