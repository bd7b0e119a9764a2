//! `chat-bench ab`: S1's many-pairs phase, again and again, alternating
//! between chatd, optionally a second build of chatd, and ngircd, each
//! started once.
//!
//! On a shared machine one run's figures drift by a tenth or more from the
//! next run's, which hides the few percent a change to chatd makes. The
//! rounds here are short and interleaved, so the servers see the same
//! weather: the figure to read is each build's ratio to ngircd within a
//! round, and the median of those ratios over the rounds.

use std::path::Path;

use anyhow::Result;

use crate::client::Kind;
use crate::ctx::{ChatdConfig, Ctx};

use super::plain_with_cheap;
use super::s1_private::measure_pairs;

/// Runs `rounds` rounds of S1's many-pairs phase against each server.
/// Prints each round's round trips a second and ratios, then the medians.
pub async fn ab(ctx: &Ctx, other: Option<&Path>, rounds: usize) -> Result<()> {
    let o = &ctx.opts;
    let pairs = o.s1_pairs;
    let accounts = plain_with_cheap("p", 2 * pairs)?;
    let mut servers = Vec::new();
    let setup = ctx.chatd_setup("ab", &accounts, ChatdConfig::load_test())?;
    servers.push(("chatd", ctx.chat, ctx.start_chatd(&setup)?));
    if let Some(other) = other {
        let setup = ctx.chatd_setup("ab-other", &accounts, ChatdConfig::load_test())?;
        servers.push(("other", ctx.chat, ctx.start_chatd_binary(&setup, other)?));
    }
    let ngircd = ctx.start_ngircd("ab")?;
    if let Some(ngircd) = ngircd {
        servers.push(("ngircd", Kind::Irc, ngircd));
    }
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    for round in 1..=rounds {
        let mut per_sec = Vec::new();
        for (_, kind, server) in &servers {
            let f = measure_pairs(ctx, *kind, server.addr, &accounts, pairs).await?;
            per_sec.push(f.per_sec);
        }
        let reference = *per_sec.last().unwrap_or(&1.0);
        let mut line = format!("round {round}:");
        for (i, ((name, ..), r)) in servers.iter().zip(&per_sec).enumerate() {
            line.push_str(&format!(" {name} {r:.0}/s ({:.3}×)", r / reference));
            ratios[i].push(r / reference);
        }
        println!("{line}");
    }
    let mut line = format!(
        "median of {rounds} rounds, against {}:",
        servers.last().map_or("", |s| s.0)
    );
    for ((name, ..), r) in servers.iter().zip(&mut ratios) {
        r.sort_by(f64::total_cmp);
        line.push_str(&format!(" {name} {:.3}×", r[r.len() / 2]));
    }
    println!("{line}");
    Ok(())
}
