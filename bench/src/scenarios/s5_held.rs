//! The scenarios S1–S5: each runs against the baseline relay and chatd in
//! the same run and returns rows of the report.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chatcore::wire::ServerLine;
use chatcore::MessageKind;
use tokio::sync::{oneshot, Semaphore};

use crate::client::{
    close_all, connect_login, login_many, parse_payload, payload, Handler, Ignore, Kind, LoggedIn,
    Out, Session,
};
use crate::ctx::{ChatdConfig, Ctx};
use crate::hist::{now_us, Lat, Summary};
use crate::proc::{Memory, ServerProc};
use crate::report::{PlotData, Row, Target, Unit};
use crate::users::{self, Account};

/// Phase number that stops senders.
const STOP: u8 = u8::MAX;
/// Phases 1..PHASES are recorded separately; 0 is not recorded.
const PHASES: usize = 4;

/// The current phase of a measurement, shared by its handlers.
#[derive(Clone, Debug, Default)]
struct Phase(Arc<AtomicU8>);

impl Phase {
    fn set(&self, p: u8) {
        self.0.store(p, Ordering::SeqCst);
    }
    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latencies and counts by phase.
#[derive(Clone, Debug, Default)]
struct ByPhase {
    lat: [Lat; PHASES],
    count: [u64; PHASES],
}

impl ByPhase {
    fn record(&mut self, phase: u8, us: u64) {
        let p = phase as usize;
        if p > 0 && p < PHASES {
            self.lat[p].record(us);
            self.count[p] += 1;
        }
    }

    fn add(&mut self, other: &ByPhase) {
        for p in 0..PHASES {
            self.lat[p].add(&other.lat[p]);
            self.count[p] += other.count[p];
        }
    }
}

// ---------------------------------------------------------------- S1 ----

/// Sends to its peer, and on each echo records the round trip and sends
/// the next: one message in flight per pair.
struct Pinger {
    kind: Kind,
    peer: String,
    phase: Phase,
    text: usize,
    rec: ByPhase,
}

impl Handler for Pinger {
    fn on_line(&mut self, line: &ServerLine, out: &Out) {
        let ServerLine::Deliver(m) = line else {
            return;
        };
        if m.from != self.peer {
            return;
        }
        let Some((t, seq)) = parse_payload(&m.text) else {
            return;
        };
        let now = now_us();
        let phase = self.phase.get();
        if phase == STOP {
            return;
        }
        self.rec.record(phase, now.saturating_sub(t));
        out.send(
            self.kind
                .private(&self.peer, &payload(now_us(), seq + 1, self.text)),
        );
    }
}

/// Sends every private message back to its sender.
struct Echo {
    kind: Kind,
}

impl Handler for Echo {
    fn on_line(&mut self, line: &ServerLine, out: &Out) {
        if let ServerLine::Deliver(m) = line {
            if m.kind == MessageKind::Private {
                out.send(self.kind.private(&m.from, &m.text));
            }
        }
    }
}

/// Ping-pong pairs, running.
struct Pairs {
    pingers: Vec<Session<Pinger>>,
    echoes: Vec<Session<Echo>>,
    phase: Phase,
}

impl Pairs {
    /// Logs in `2 * pairs` accounts and starts every pair's first message.
    async fn start(
        kind: Kind,
        addr: SocketAddr,
        accounts: &[Account],
        pairs: usize,
        text: usize,
    ) -> Result<Pairs> {
        if accounts.len() < 2 * pairs {
            bail!("{pairs} pairs need {} accounts", 2 * pairs);
        }
        let sessions = login_many(kind, addr, &accounts[..2 * pairs], 64).await?;
        let phase = Phase::default();
        let mut it = sessions.into_iter();
        let firsts: Vec<LoggedIn> = it.by_ref().take(pairs).collect();
        let echoes: Vec<Session<Echo>> = it.map(|s| s.spawn(Echo { kind })).collect();
        let pingers: Vec<Session<Pinger>> = firsts
            .into_iter()
            .zip(&echoes)
            .map(|(s, e)| {
                s.spawn(Pinger {
                    kind,
                    peer: e.user.clone(),
                    phase: phase.clone(),
                    text,
                    rec: ByPhase::default(),
                })
            })
            .collect();
        for (p, e) in pingers.iter().zip(&echoes) {
            p.out
                .send(kind.private(&e.user, &payload(now_us(), 0, text)));
        }
        Ok(Pairs {
            pingers,
            echoes,
            phase,
        })
    }

    /// Stops the pairs and merges what they recorded.
    async fn finish(self) -> ByPhase {
        self.phase.set(STOP);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut all = ByPhase::default();
        for p in close_all(self.pingers, Duration::from_secs(10)).await {
            all.add(&p.rec);
        }
        close_all(self.echoes, Duration::from_secs(10)).await;
        all
    }
}

/// S1 figures of one server and pair count.
#[derive(Clone, Copy, Debug, Default)]
struct PairFigures {
    lat: Summary,
    per_sec: f64,
}

async fn measure_pairs(
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

/// Plain-text accounts plus the one that makes chatd's dummy check cheap.
fn plain_with_cheap(prefix: &str, n: usize) -> Result<Vec<Account>> {
    let mut a = users::plain(prefix, n);
    a.push(users::cheap_params_account()?);
    Ok(a)
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

    plot.s1 = Some((o.s1_pairs, chat[1].lat, base[1].lat));
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
    Ok(rows)
}

// ---------------------------------------------------------------- S2 ----

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
        let logged = login_many(kind, addr, accounts, 100).await?;
        let mut counts = Vec::with_capacity(MAX_BROADCASTS);
        counts.resize_with(MAX_BROADCASTS, || AtomicU32::new(0));
        let fan = Arc::new(Fanout {
            receivers: u32::try_from(accounts.len())?,
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
        let rate = (c1 - c0) as f64 * self.n() as f64 / secs;
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
        let per_sec = (deliveries_per_sec / self.n() as f64).max(0.5);
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
    }
    Ok(rows)
}

// ---------------------------------------------------------------- S3 ----

/// Server memory per idle session: (after − before) / sessions, in bytes.
async fn idle_sessions(
    kind: Kind,
    server: &ServerProc,
    accounts: &[Account],
) -> Result<(f64, Memory, Memory)> {
    // A few sessions first, so that code and runtime pages are in.
    let warm = login_many(kind, server.addr, &accounts[..50.min(accounts.len())], 50).await?;
    for s in warm {
        s.logout().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.memory()?;
    let t0 = Instant::now();
    let logged = login_many(kind, server.addr, accounts, 256).await?;
    let login_secs = t0.elapsed().as_secs_f64();
    let sessions: Vec<Session<Ignore>> = logged.into_iter().map(|s| s.spawn(Ignore)).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.memory()?;
    let per =
        (after.rss_kib.saturating_sub(before.rss_kib)) as f64 * 1024.0 / sessions.len() as f64;
    println!(
        "  {:8} {} idle sessions (logged in in {login_secs:.1} s): RSS {} → {} KiB, {:.0} B/session",
        kind.label(),
        sessions.len(),
        before.rss_kib,
        after.rss_kib,
        per
    );
    for s in sessions {
        s.abort();
    }
    Ok((per, before, after))
}

/// S3: memory per idle logged-in session.
pub async fn s3(ctx: &Ctx) -> Result<Vec<Row>> {
    println!("S3: idle sessions");
    let n = ctx.opts.s3_sessions;
    let accounts = plain_with_cheap("i", n)?;
    let (base, _, _) = {
        let relay = ctx.start_relay("s3")?;
        idle_sessions(Kind::Relay, &relay, &accounts[..n]).await?
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let setup = ctx.chatd_setup("s3", &accounts, ChatdConfig::load_test())?;
    let chatd = ctx.start_chatd(&setup)?;
    let (chat, before, after) = idle_sessions(ctx.chat, &chatd, &accounts[..n]).await?;
    Ok(vec![
        Row::new(
            "S3",
            format!("{n} idle sessions: server memory per session"),
            Unit::Bytes,
        )
        .values(Some(chat), Some(base))
        .target(Target::AtMost(4096.0)),
        Row::new(
            "S3",
            format!("{n} idle sessions: chatd RSS before → after"),
            Unit::Bytes,
        )
        .values(
            Some(after.rss_kib as f64 * 1024.0),
            Some(before.rss_kib as f64 * 1024.0),
        )
        .reference("chatd before"),
    ])
}

// ---------------------------------------------------------------- S4 ----

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

// ---------------------------------------------------------------- S5 ----

/// Counts the replies to a filler's messages and keeps its window.
struct Filler {
    window: Arc<Semaphore>,
    queued: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    first_err: Arc<Mutex<Option<String>>>,
}

impl Handler for Filler {
    fn on_line(&mut self, line: &ServerLine, _: &Out) {
        match line {
            ServerLine::Queued { .. } | ServerLine::Delivered { .. } => {
                self.queued.fetch_add(1, Ordering::Relaxed);
                self.window.add_permits(1);
            }
            ServerLine::Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut f = self.first_err.lock().unwrap_or_else(|e| e.into_inner());
                f.get_or_insert_with(|| line.to_string());
                drop(f);
                self.window.add_permits(1);
            }
            _ => {}
        }
    }
}

/// The result of filling an offline user's box.
#[derive(Debug, Clone, Copy)]
struct Fill {
    queued: u64,
    secs: f64,
}

/// Sends `n` messages to the offline `target` from `senders` (each with a
/// window of 64 unanswered messages), until done or `limit`.
async fn fill(
    kind: Kind,
    addr: SocketAddr,
    senders: &[Account],
    target: &str,
    n: u64,
    text: usize,
    limit: Duration,
) -> Result<Fill> {
    const WINDOW: usize = 64;
    let logged = login_many(kind, addr, senders, 16).await?;
    let queued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_err = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut sessions = Vec::new();
    let mut tasks = Vec::new();
    let per = n.div_ceil(senders.len() as u64);
    for (i, s) in logged.into_iter().enumerate() {
        let window = Arc::new(Semaphore::new(WINDOW));
        let session = s.spawn(Filler {
            window: Arc::clone(&window),
            queued: Arc::clone(&queued),
            errors: Arc::clone(&errors),
            first_err: Arc::clone(&first_err),
        });
        let out = session.out.clone();
        sessions.push(session);
        let (stop, sent, target) = (Arc::clone(&stop), Arc::clone(&sent), target.to_string());
        let mine = per.min(n.saturating_sub(per * i as u64));
        tasks.push(tokio::spawn(async move {
            for j in 0..mine {
                let Ok(p) = window.acquire().await else {
                    return;
                };
                p.forget();
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                out.send(kind.private(&target, &payload(now_us(), j, text)));
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let deadline = start + limit;
    let mut last_report = Instant::now();
    loop {
        let done = queued.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed);
        if done >= n {
            break;
        }
        if errors.load(Ordering::Relaxed) > 0 || Instant::now() >= deadline {
            stop.store(true, Ordering::Relaxed);
            // Let the replies to what was sent arrive.
            let settle = Instant::now() + Duration::from_secs(10);
            while queued.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed)
                < sent.load(Ordering::Relaxed)
                && Instant::now() < settle
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "    … {} of {n} queued after {:.0} s",
                queued.load(Ordering::Relaxed),
                start.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    close_all(sessions, Duration::from_secs(10)).await;
    let q = queued.load(Ordering::Relaxed);
    if let Some(e) = first_err.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        println!("    stopped at the first error: {e}");
    }
    println!(
        "  {:8} queued {q} messages for {target} in {secs:.1} s ({:.0}/s)",
        kind.label(),
        q as f64 / secs
    );
    Ok(Fill { queued: q, secs })
}

/// Counts the held messages as they arrive and reports the last one.
struct Drainer {
    expected: Option<u64>,
    got: u64,
    done: Option<oneshot::Sender<(Instant, u64)>>,
}

impl Handler for Drainer {
    fn on_line(&mut self, line: &ServerLine, _: &Out) {
        match line {
            ServerLine::Offline { count } => self.expected = Some(*count as u64),
            ServerLine::Deliver(_) => self.got += 1,
            _ => return,
        }
        if self.expected.is_some_and(|e| self.got >= e) {
            if let Some(tx) = self.done.take() {
                let _ = tx.send((Instant::now(), self.got));
            }
        }
    }
}

/// The result of one drain.
#[derive(Debug, Clone, Copy)]
struct Drain {
    got: u64,
    secs: f64,
    growth_bytes: f64,
    before: Memory,
    peak_rss_kib: u64,
}

/// Logs `account` in and times the delivery of its held messages, polling
/// the server's memory meanwhile.
async fn drain(kind: Kind, server: &ServerProc, account: &Account, expected: u64) -> Result<Drain> {
    let pid = server.pid();
    let before = Memory::of(pid)?;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(before.rss_kib));
    let poller = {
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(m) = Memory::of(pid) {
                    peak.fetch_max(m.rss_kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let start = Instant::now();
    let result = async {
        let logged = connect_login(kind, server.addr, account).await?;
        let (tx, rx) = oneshot::channel();
        let session = logged.spawn(Drainer {
            expected: None,
            got: 0,
            done: Some(tx),
        });
        let r = tokio::time::timeout(Duration::from_secs(180), rx).await;
        let out = match r {
            Ok(Ok((at, got))) => Ok((at.duration_since(start).as_secs_f64(), got)),
            Ok(Err(_)) => Err(anyhow!(
                "{}: the session ended before the last held message",
                kind.label()
            )),
            Err(_) => Err(anyhow!(
                "{}: held messages not all delivered within 180 s",
                kind.label()
            )),
        };
        // logout confirms what was delivered; give it time.
        session.close(Duration::from_secs(60)).await;
        out
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let (secs, got) = result?;
    let peak_rss_kib = peak.load(Ordering::Relaxed);
    let d = Drain {
        got,
        secs,
        growth_bytes: peak_rss_kib.saturating_sub(before.rss_kib) as f64 * 1024.0,
        before,
        peak_rss_kib,
    };
    if got != expected {
        println!(
            "    note: {} announced {got} held messages, {expected} were queued",
            kind.label()
        );
    }
    println!(
        "  {:8} drained {got} held messages in {secs:.3} s; RSS {} KiB before, peak {} KiB (+{:.1} MiB)",
        kind.label(),
        d.before.rss_kib,
        d.peak_rss_kib,
        d.growth_bytes / 1048576.0
    );
    Ok(d)
}

/// Time from spawning `server` until it greets a connection: chatd prints
/// its ready line before loading its store, so this is when it serves.
async fn time_to_serve(server: &ServerProc) -> Result<Duration> {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await?;
    let mut byte = [0u8; 1];
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::io::AsyncReadExt::read(&mut stream, &mut byte),
    )
    .await
    .map_err(|_| anyhow!("{} did not greet a connection within 120 s", server.name))??;
    Ok(server.spawned.elapsed())
}

/// S5: a user with many held messages logs in.
pub async fn s5(ctx: &Ctx) -> Result<Vec<Row>> {
    println!("S5: draining a full offline box");
    let o = ctx.opts.clone();
    let big = Account {
        user: "hbig".into(),
        password: users::password_of("hbig"),
        stored: users::password_of("hbig"),
    };
    let small = Account {
        user: "hsmall".into(),
        password: users::password_of("hsmall"),
        stored: users::password_of("hsmall"),
    };
    let all_senders = users::plain("f", 500);
    let mut senders = all_senders[..8].to_vec();
    let mut accounts = all_senders.clone();
    accounts.push(big.clone());
    accounts.push(small.clone());
    accounts.push(users::cheap_params_account()?);
    let mut cfg = ChatdConfig::load_test();
    cfg.set(
        "max_held_per_user",
        &(o.s5_messages.max(o.s5_small) + 1000).to_string(),
    );
    let setup = ctx.chatd_setup("s5", &accounts, cfg)?;

    // chatd: fill both boxes, restart (the store is read back), drain.
    let mut chatd = ctx.start_chatd(&setup)?;
    let empty_startup = if ctx.chat == Kind::Chat {
        time_to_serve(&chatd).await?
    } else {
        Duration::ZERO
    };
    if !ctx.flood_configurable() {
        ctx.note(
            "S5: chatd's flood control could not be raised, so the boxes are filled by 500 \
             sessions (both servers alike) to stay under it",
        );
        senders = all_senders;
    }
    let deadline = Instant::now() + o.s5_fill_limit;
    let fs = fill(
        ctx.chat,
        chatd.addr,
        &senders,
        &small.user,
        o.s5_small as u64,
        o.text_bytes,
        o.s5_fill_limit,
    )
    .await?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(5));
    let fb = fill(
        ctx.chat,
        chatd.addr,
        &senders,
        &big.user,
        o.s5_messages as u64,
        o.text_bytes,
        left,
    )
    .await?;
    if fb.queued < o.s5_messages as u64 || fs.queued < o.s5_small as u64 {
        ctx.note(format!(
            "S5: chatd queued only {} of {} (and {} of {}) messages within the fill limit of {:?}; \
             the drains below use what was queued",
            fb.queued, o.s5_messages, fs.queued, o.s5_small, o.s5_fill_limit
        ));
    }
    let store_bytes = crate::ctx::dir_bytes(&Ctx::data_dir(&setup));
    // (The self-test's relay keeps nothing across a restart: no restart.)
    let (chatd, stop_took) = if ctx.chat == Kind::Chat {
        let (_, took) = chatd
            .stop(Duration::from_secs(60))
            .context("stopping chatd after the fill")?;
        drop(chatd);
        (ctx.start_chatd(&setup)?, took)
    } else {
        (chatd, Duration::ZERO)
    };
    let filled_startup = if ctx.chat == Kind::Chat {
        time_to_serve(&chatd).await?
    } else {
        Duration::ZERO
    };
    let store_read = filled_startup.saturating_sub(empty_startup).as_secs_f64();
    println!(
        "  chatd store {:.1} MiB; shutdown {:.2} s; serving {:.3} s after spawn empty, {:.3} s with {} held (store read ≈ {:.3} s)",
        store_bytes as f64 / 1048576.0,
        stop_took.as_secs_f64(),
        empty_startup.as_secs_f64(),
        filled_startup.as_secs_f64(),
        fb.queued + fs.queued,
        store_read
    );
    let cs = drain(ctx.chat, &chatd, &small, fs.queued).await?;
    let cb = drain(ctx.chat, &chatd, &big, fb.queued).await?;
    drop(chatd);

    // The baseline: the same numbers of messages, held in its memory.
    let relay = ctx.start_relay("s5")?;
    let rfs = fill(
        Kind::Relay,
        relay.addr,
        &senders,
        &small.user,
        fs.queued,
        o.text_bytes,
        o.s5_fill_limit,
    )
    .await?;
    let rfb = fill(
        Kind::Relay,
        relay.addr,
        &senders,
        &big.user,
        fb.queued,
        o.text_bytes,
        o.s5_fill_limit,
    )
    .await?;
    let bs = drain(Kind::Relay, &relay, &small, rfs.queued).await?;
    let bb = drain(Kind::Relay, &relay, &big, rfb.queued).await?;
    drop(relay);

    let allowed = 2.0 * bb.secs + store_read;
    let growth_ok = cb.growth_bytes <= 1.5 * cs.growth_bytes + 2.0 * 1048576.0;
    let (nb, ns) = (cb.got, cs.got);
    Ok(vec![
        Row::new(
            "S5",
            format!(
                "fill: messages/s to an offline user ({} senders)",
                senders.len()
            ),
            Unit::PerSec,
        )
        .values(
            Some((fb.queued + fs.queued) as f64 / (fb.secs + fs.secs)),
            Some((rfb.queued + rfs.queued) as f64 / (rfb.secs + rfs.secs)),
        ),
        Row::new(
            "S5",
            format!("{nb} held: login → last message"),
            Unit::Micros,
        )
        .values(Some(cb.secs * 1e6), Some(bb.secs * 1e6))
        .target(Target::Judged {
            rule: format!(
                "≤ 2× baseline + store read = {}",
                crate::hist::fmt_us(allowed * 1e6)
            ),
            met: cb.secs <= allowed && nb >= o.s5_messages as u64,
        }),
        Row::new(
            "S5",
            "store read time (time to serve with the held messages − empty)",
            Unit::Micros,
        )
        .values(Some(store_read * 1e6), None)
        .reference("—"),
        Row::new(
            "S5",
            format!("{ns} held: login → last message"),
            Unit::Micros,
        )
        .values(Some(cs.secs * 1e6), Some(bs.secs * 1e6)),
        Row::new(
            "S5",
            format!("{nb} held: server memory growth during the drain"),
            Unit::Bytes,
        )
        .values(Some(cb.growth_bytes), Some(bb.growth_bytes))
        .target(Target::Judged {
            rule: format!("independent of length: ≤ 1.5× the {ns}-message drain's + 2 MiB"),
            met: growth_ok,
        }),
        Row::new(
            "S5",
            format!("{ns} held: server memory growth during the drain"),
            Unit::Bytes,
        )
        .values(Some(cs.growth_bytes), Some(bs.growth_bytes)),
        Row::new(
            "S5",
            "held messages delivered (big box, small box)",
            Unit::Count,
        )
        .values(Some(nb as f64), Some(ns as f64))
        .reference("small box"),
        Row::new(
            "S5",
            format!("{nb} held: server RSS before the drain"),
            Unit::Bytes,
        )
        .values(
            Some(cb.before.rss_kib as f64 * 1024.0),
            Some(bb.before.rss_kib as f64 * 1024.0),
        ),
    ])
}
