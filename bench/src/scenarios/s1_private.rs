//! S1: private-message round trips, one pair and many pairs, against the
//! relay, chatd, chatd without persisted deliveries, and ngircd (IRC
//! `PRIVMSG` to a nick) when it is installed.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::client::Kind;
use crate::ctx::{ChatdConfig, Ctx};
use crate::hist::Summary;
use crate::report::{PlotData, Row, Target, Unit};
use crate::users::Account;

use super::pairs::Pairs;
use super::plain_with_cheap;

/// S1 figures of one server and pair count.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct PairFigures {
    pub(super) lat: Summary,
    pub(super) per_sec: f64,
}

pub(super) async fn measure_pairs(
    ctx: &Ctx,
    kind: Kind,
    addr: SocketAddr,
    accounts: &[Account],
    pairs: usize,
) -> Result<PairFigures> {
    let o = &ctx.opts;
    let p = Pairs::start(kind, addr, accounts, pairs, o.text_bytes).await?;
    tokio::time::sleep(o.warmup).await;
    p.phase.set(1);
    let t0 = Instant::now();
    tokio::time::sleep(o.phase).await;
    p.phase.set(0);
    let secs = t0.elapsed().as_secs_f64();
    let rec = p.finish().await;
    let f = PairFigures {
        lat: rec.lat[1].summary(),
        per_sec: rec.count[1] as f64 / secs,
    };
    println!(
        "  {:8} {pairs:3} pair(s): {:.0} round trips/s, {}",
        kind.label(),
        f.per_sec,
        f.lat
    );
    if f.lat.count == 0 {
        bail!("{} {pairs} pair(s): no round trip completed", kind.label());
    }
    Ok(f)
}

/// S1: private-message round trips, 1 pair and many pairs.
pub async fn s1(ctx: &Ctx, plot: &mut PlotData) -> Result<Vec<Row>> {
    println!("S1: private-message round trip");
    let o = &ctx.opts;
    let cases = [1, o.s1_pairs];
    let accounts = plain_with_cheap("p", 2 * o.s1_pairs)?;
    let mut base = Vec::new();
    {
        let relay = ctx.start_relay("s1")?;
        for &n in &cases {
            base.push(measure_pairs(ctx, Kind::Relay, relay.addr, &accounts, n).await?);
        }
    }
    let mut chat = Vec::new();
    let mut chat_nopersist = Vec::new();
    {
        let setup = ctx.chatd_setup("s1", &accounts, ChatdConfig::load_test())?;
        let chatd = ctx.start_chatd(&setup)?;
        if !ctx.flood_configurable() {
            ctx.note(
                "S1: chatd's flood control could not be raised (it allows a session 5 commands \
                 a second), so chatd's S1 figures measure flood control, not chatd",
            );
        }
        for &n in &cases {
            chat.push(measure_pairs(ctx, ctx.chat, chatd.addr, &accounts, n).await?);
        }
    }
    let mut cfg = ChatdConfig::load_test();
    cfg.set("persist_deliveries", "false");
    let setup = ctx.chatd_setup("s1-nopersist", &accounts, cfg)?;
    let chatd = ctx.start_chatd(&setup)?;
    if ctx.key_accepted("persist_deliveries") {
        println!("  chatd with persist_deliveries = false:");
        for &n in &cases {
            chat_nopersist.push(measure_pairs(ctx, ctx.chat, chatd.addr, &accounts, n).await?);
        }
    }
    drop(chatd);
    let mut irc = Vec::new();
    if let Some(ngircd) = ctx.start_ngircd("S1")? {
        for &n in &cases {
            irc.push(measure_pairs(ctx, Kind::Irc, ngircd.addr, &accounts, n).await?);
        }
    }

    plot.s1 = Some((o.s1_pairs, chat[1].lat, base[1].lat));
    plot.s1_ngircd = irc.get(1).map(|f| f.lat);
    let mut rows = Vec::new();
    let mut add = |figs: &[PairFigures], suffix: &str| {
        for (i, &n) in cases.iter().enumerate() {
            let case = if n == 1 {
                "1 pair".to_string()
            } else {
                format!("{n} pairs")
            };
            let (c, b) = (figs[i], base[i]);
            let mut p50 = Row::new(
                "S1",
                format!("{case}{suffix}: p50 round trip"),
                Unit::Micros,
            )
            .values(Some(c.lat.p50 as f64), Some(b.lat.p50 as f64));
            if i == 0 || suffix.is_empty() {
                p50 = p50.target(Target::RatioAtMost(1.3));
            }
            rows.push(p50);
            rows.push(
                Row::new(
                    "S1",
                    format!("{case}{suffix}: p99 round trip"),
                    Unit::Micros,
                )
                .values(Some(c.lat.p99 as f64), Some(b.lat.p99 as f64)),
            );
            rows.push(
                Row::new("S1", format!("{case}{suffix}: round trips/s"), Unit::PerSec)
                    .values(Some(c.per_sec), Some(b.per_sec)),
            );
        }
    };
    add(&chat, "");
    if !chat_nopersist.is_empty() {
        add(&chat_nopersist, " (persist_deliveries=false)");
    }
    for (i, (&n, f)) in cases.iter().zip(&irc).enumerate() {
        let case = if n == 1 {
            "1 pair".to_string()
        } else {
            format!("{n} pairs")
        };
        let c = chat[i];
        for (what, unit, cv, iv) in [
            (
                "p50 round trip",
                Unit::Micros,
                c.lat.p50 as f64,
                f.lat.p50 as f64,
            ),
            (
                "p99 round trip",
                Unit::Micros,
                c.lat.p99 as f64,
                f.lat.p99 as f64,
            ),
            ("round trips/s", Unit::PerSec, c.per_sec, f.per_sec),
        ] {
            rows.push(
                Row::new("S1", format!("{case}: {what}"), unit)
                    .values(Some(cv), Some(iv))
                    .reference("ngircd"),
            );
        }
    }
    Ok(rows)
}
