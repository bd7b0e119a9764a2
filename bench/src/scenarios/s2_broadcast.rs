//! S2: broadcast fan-out, throughput at saturation and latency at a fixed
//! load; for ngircd, a `PRIVMSG` to a channel every session joined.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chatcore::wire::ServerLine;
use chatcore::MessageKind;
use tokio::sync::Semaphore;

use crate::client::{close_all, login_many, parse_payload, payload, Handler, Kind, Out, Session};
use crate::ctx::{ChatdConfig, Ctx};
use crate::hist::now_us;
use crate::report::{PlotData, Row, Target, Unit};
use crate::users::Account;

use super::{plain_with_cheap, ByPhase, Phase};

/// What the receivers of one broadcast set share: per-broadcast delivery
/// counts, and the window of broadcasts in flight.
struct Fanout {
    receivers: u32,
    counts: Vec<AtomicU32>,
    window: Semaphore,
    completed: AtomicU64,
    phase: Phase,
}

/// Records each broadcast's latency; the last receiver of a broadcast
/// releases its place in the window.
struct Receiver {
    fan: Arc<Fanout>,
    rec: ByPhase,
}

impl Handler for Receiver {
    fn on_line(&mut self, line: &ServerLine, _: &Out) {
        let ServerLine::Deliver(m) = line else {
            return;
        };
        if m.kind != MessageKind::Broadcast {
            return;
        }
        let Some((t, seq)) = parse_payload(&m.text) else {
            return;
        };
        self.rec
            .record(self.fan.phase.get(), now_us().saturating_sub(t));
        if let Some(c) = usize::try_from(seq)
            .ok()
            .and_then(|s| self.fan.counts.get(s))
        {
            if c.fetch_add(1, Ordering::Relaxed) + 1 == self.fan.receivers {
                self.fan.completed.fetch_add(1, Ordering::Relaxed);
                self.fan.window.add_permits(1);
            }
        }
    }
}

/// `n` logged-in sessions; the first one also sends the broadcasts.
struct BroadcastSet {
    kind: Kind,
    sessions: Vec<Session<Receiver>>,
    fan: Arc<Fanout>,
    next_seq: u64,
    /// How many sessions take turns sending (1 unless chatd's flood
    /// control cannot be configured).
    senders: usize,
}

/// The most broadcasts one set sends (bounds the count array).
const MAX_BROADCASTS: usize = 2_000_000;

impl BroadcastSet {
    async fn login(
        kind: Kind,
        addr: SocketAddr,
        accounts: &[Account],
        window: usize,
        senders: usize,
    ) -> Result<Self> {
        let mut logged = login_many(kind, addr, accounts, 100).await?;
        if kind == Kind::Irc {
            // One at a time: every join is announced to the members so far,
            // and those lines wait unread in their sockets until the
            // sessions' readers start.
            for s in &mut logged {
                s.join(crate::irc::CHANNEL).await?;
            }
        }
        let mut counts = Vec::with_capacity(MAX_BROADCASTS);
        counts.resize_with(MAX_BROADCASTS, || AtomicU32::new(0));
        let fan = Arc::new(Fanout {
            receivers: u32::try_from(kind.broadcast_receivers(accounts.len()))?,
            counts,
            window: Semaphore::new(window),
            completed: AtomicU64::new(0),
            phase: Phase::default(),
        });
        let sessions = logged
            .into_iter()
            .map(|s| {
                s.spawn(Receiver {
                    fan: Arc::clone(&fan),
                    rec: ByPhase::default(),
                })
            })
            .collect();
        Ok(BroadcastSet {
            kind,
            sessions,
            fan,
            next_seq: 0,
            senders,
        })
    }

    fn n(&self) -> usize {
        self.sessions.len()
    }

    /// The send queues of the sessions that take turns sending.
    fn senders(&self) -> impl Iterator<Item = Out> + '_ {
        self.sessions
            .iter()
            .take(self.senders.max(1))
            .map(|s| s.out.clone())
    }

    /// Waits until every broadcast sent so far reached every receiver.
    async fn settle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.fan.completed.load(Ordering::Relaxed) < self.next_seq {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Deliveries per second with at most `window` broadcasts in flight.
    async fn saturate(&mut self, warmup: Duration, phase: Duration, text: usize) -> Result<f64> {
        let outs: Vec<Out> = self.senders().collect();
        let fan = Arc::clone(&self.fan);
        let kind = self.kind;
        let start_seq = self.next_seq;
        let sent = Arc::new(AtomicU64::new(start_seq));
        let sent2 = Arc::clone(&sent);
        let sender = tokio::spawn(async move {
            loop {
                let Ok(permit) = fan.window.acquire().await else {
                    return;
                };
                permit.forget();
                let seq = sent2.load(Ordering::Relaxed);
                if seq as usize >= MAX_BROADCASTS {
                    return;
                }
                outs[seq as usize % outs.len()].send(kind.broadcast(&payload(now_us(), seq, text)));
                sent2.store(seq + 1, Ordering::Relaxed);
            }
        });
        tokio::time::sleep(warmup).await;
        let c0 = self.fan.completed.load(Ordering::Relaxed);
        let t0 = Instant::now();
        self.fan.phase.set(1);
        tokio::time::sleep(phase).await;
        let c1 = self.fan.completed.load(Ordering::Relaxed);
        let secs = t0.elapsed().as_secs_f64();
        self.fan.phase.set(0);
        sender.abort();
        let _ = sender.await;
        self.next_seq = sent.load(Ordering::Relaxed);
        if !self.settle(Duration::from_secs(20)).await {
            bail!(
                "{} {} receivers: broadcasts still undelivered 20 s after saturation",
                self.kind.label(),
                self.n()
            );
        }
        let rate = (c1 - c0) as f64 * f64::from(self.fan.receivers) / secs;
        println!(
            "  {:8} {:5} receivers: {:.0} deliveries/s at saturation ({} broadcasts)",
            self.kind.label(),
            self.n(),
            rate,
            c1 - c0
        );
        Ok(rate)
    }

    /// Sends broadcasts at a fixed rate (deliveries/s), each stamped with
    /// the time it was due (so a stalled sender still counts its delay).
    async fn fixed(
        &mut self,
        deliveries_per_sec: f64,
        warmup: Duration,
        phase: Duration,
        text: usize,
    ) -> Result<()> {
        let per_sec = (deliveries_per_sec / f64::from(self.fan.receivers.max(1))).max(0.5);
        let warm = (warmup.as_secs_f64() * per_sec).ceil() as u64;
        let total = warm + (phase.as_secs_f64() * per_sec).ceil() as u64;
        let outs: Vec<Out> = self.senders().collect();
        let start = tokio::time::Instant::now();
        let start_us = now_us();
        self.fan.phase.set(0);
        for i in 0..total {
            if i == warm {
                self.fan.phase.set(2);
            }
            let offset = Duration::from_secs_f64(i as f64 / per_sec);
            tokio::time::sleep_until(start + offset).await;
            let due = start_us + u64::try_from(offset.as_micros()).unwrap_or(0);
            let out = &outs[self.next_seq as usize % outs.len()];
            out.send(self.kind.broadcast(&payload(due, self.next_seq, text)));
            self.next_seq += 1;
        }
        let ok = self.settle(Duration::from_secs(20)).await;
        self.fan.phase.set(0);
        if !ok {
            bail!(
                "{} {} receivers: fixed-load broadcasts undelivered after 20 s",
                self.kind.label(),
                self.n()
            );
        }
        Ok(())
    }

    /// Closes the sessions; the merged records.
    async fn close(self) -> ByPhase {
        let mut all = ByPhase::default();
        for r in close_all(self.sessions, Duration::from_secs(10)).await {
            all.add(&r.rec);
        }
        all
    }
}

/// S2: broadcast throughput at saturation and latency at a fixed load.
pub async fn s2(ctx: &Ctx, plot: &mut PlotData) -> Result<Vec<Row>> {
    println!("S2: broadcast");
    let o = &ctx.opts;
    let max_n = o.s2_receivers.iter().copied().max().unwrap_or(0);
    let accounts = plain_with_cheap("b", max_n)?;
    let relay = ctx.start_relay("s2")?;
    let setup = ctx.chatd_setup("s2", &accounts, ChatdConfig::load_test())?;
    let chatd = ctx.start_chatd(&setup)?;
    let ngircd = ctx.start_ngircd("S2")?;
    let senders = if ctx.flood_configurable() {
        1
    } else {
        ctx.note(
            "S2: chatd's flood control could not be raised, so the broadcasts are sent \
             by every receiver in turn (both servers alike) to stay under it",
        );
        usize::MAX
    };
    let mut rows = Vec::new();
    for &n in &o.s2_receivers {
        let mut b = BroadcastSet::login(
            Kind::Relay,
            relay.addr,
            &accounts[..n],
            o.s2_window,
            senders.min(n),
        )
        .await?;
        let sat_b = b.saturate(o.warmup, o.phase, o.text_bytes).await?;
        let mut c = BroadcastSet::login(
            ctx.chat,
            chatd.addr,
            &accounts[..n],
            o.s2_window,
            senders.min(n),
        )
        .await?;
        let sat_c = c.saturate(o.warmup, o.phase, o.text_bytes).await;
        let sat_c = match sat_c {
            Ok(x) => x,
            Err(e) => {
                b.close().await;
                return Err(e);
            }
        };
        plot.s2.push((n, Some(sat_c), Some(sat_b)));
        // Default flood control: 5 commands a second per session, 10 at once.
        if !ctx.flood_configurable() && sat_c / n as f64 >= 0.8 * 5.0 * senders.min(n) as f64 {
            ctx.note(format!(
                "S2 {n} receivers: chatd's saturation figure is bounded by flood control \
                 ({} senders × 5 broadcasts/s)",
                senders.min(n)
            ));
        }
        // The same offered load for both: half the slower one's saturation.
        let load = 0.5 * sat_b.min(sat_c);
        b.fixed(load, o.warmup, o.phase, o.text_bytes).await?;
        c.fixed(load, o.warmup, o.phase, o.text_bytes).await?;
        let (rb, rc) = (b.close().await, c.close().await);
        let (lb, lc) = (rb.lat[2].summary(), rc.lat[2].summary());
        println!(
            "  {n} receivers at {load:.0} deliveries/s: chatd {lc}\n  {:>14} baseline {lb}",
            ""
        );
        let irc = match &ngircd {
            Some(server) => Some(ngircd_figures(ctx, server.addr, &accounts[..n], load).await?),
            None => None,
        };
        let mut sat = Row::new(
            "S2",
            format!("{n} receivers: deliveries/s, window {}", o.s2_window),
            Unit::PerSec,
        )
        .values(Some(sat_c), Some(sat_b));
        if n == 1000 || n == max_n {
            sat = sat.target(Target::RatioAtLeast(0.5));
        }
        rows.push(sat);
        let at = crate::report::fmt_value(Unit::PerSec, Some(load));
        rows.push(
            Row::new(
                "S2",
                format!("{n} receivers: p50 latency at {at}"),
                Unit::Micros,
            )
            .values(Some(lc.p50 as f64), Some(lb.p50 as f64)),
        );
        rows.push(
            Row::new(
                "S2",
                format!("{n} receivers: p99 latency at {at}"),
                Unit::Micros,
            )
            .values(Some(lc.p99 as f64), Some(lb.p99 as f64)),
        );
        if let Some((sat_i, li)) = irc {
            plot.s2_ngircd.push((n, sat_i));
            rows.push(
                Row::new(
                    "S2",
                    format!("{n} receivers: deliveries/s, window {}", o.s2_window),
                    Unit::PerSec,
                )
                .values(Some(sat_c), Some(sat_i))
                .reference("ngircd"),
            );
            rows.push(
                Row::new(
                    "S2",
                    format!("{n} receivers: p50 latency at {at}"),
                    Unit::Micros,
                )
                .values(Some(lc.p50 as f64), Some(li.p50 as f64))
                .reference("ngircd"),
            );
        }
    }
    Ok(rows)
}

/// ngircd's S2 figures for `accounts.len()` channel members: deliveries/s
/// at saturation, and latency at the offered load chatd and the relay got.
/// One member sends and gets no copy back, so a broadcast makes one
/// delivery fewer than chatd's.
async fn ngircd_figures(
    ctx: &Ctx,
    addr: SocketAddr,
    accounts: &[Account],
    load: f64,
) -> Result<(f64, crate::hist::Summary)> {
    let o = &ctx.opts;
    let mut i = BroadcastSet::login(Kind::Irc, addr, accounts, o.s2_window, 1).await?;
    let sat = match i.saturate(o.warmup, o.phase, o.text_bytes).await {
        Ok(x) => x,
        Err(e) => {
            i.close().await;
            return Err(e);
        }
    };
    let fixed = i.fixed(load, o.warmup, o.phase, o.text_bytes).await;
    let lat = i.close().await.lat[2].summary();
    fixed?;
    println!("  {:>14} ngircd {lat}", "");
    Ok((sat, lat))
}
