//! S5: a user with many held messages logs in: how fast the box fills,
//! how fast it drains, and what it costs in memory and start-up time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use chatcore::wire::ServerLine;
use tokio::sync::{oneshot, Semaphore};

use crate::client::{close_all, connect_login, login_many, payload, Handler, Kind, Out};
use crate::ctx::{ChatdConfig, Ctx};
use crate::hist::now_us;
use crate::proc::{Memory, ServerProc};
use crate::report::{Row, Target, Unit};
use crate::users::{self, Account};

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

/// The result of filling offline users' boxes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fill {
    pub(super) queued: u64,
    pub(super) secs: f64,
}

/// Sends `n` messages to the offline `targets` (in turn) from `senders`
/// (each with a window of 64 unanswered messages), until done or `limit`.
pub(super) async fn fill(
    kind: Kind,
    addr: SocketAddr,
    senders: &[Account],
    targets: &[String],
    n: u64,
    text: usize,
    limit: Duration,
) -> Result<Fill> {
    let target = match targets {
        [one] => one.clone(),
        _ => format!("{} users", targets.len()),
    };
    let targets: Arc<[String]> = targets.into();
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
        let (stop, sent, targets) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&targets));
        let first = i as u64 * per;
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
                let to = &targets[((first + j) % targets.len() as u64) as usize];
                out.send(kind.private(to, &payload(now_us(), j, text)));
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
pub(super) struct Drain {
    pub(super) got: u64,
    pub(super) secs: f64,
    pub(super) growth_bytes: f64,
    pub(super) before: Memory,
    pub(super) peak_rss_kib: u64,
}

/// Logs `account` in and times the delivery of its held messages, polling
/// the server's memory meanwhile.
pub(super) async fn drain(
    kind: Kind,
    server: &ServerProc,
    account: &Account,
    expected: u64,
) -> Result<Drain> {
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
pub(super) async fn time_to_serve(server: &ServerProc) -> Result<Duration> {
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
        std::slice::from_ref(&small.user),
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
        std::slice::from_ref(&big.user),
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
        std::slice::from_ref(&small.user),
        fs.queued,
        o.text_bytes,
        o.s5_fill_limit,
    )
    .await?;
    let rfb = fill(
        Kind::Relay,
        relay.addr,
        &senders,
        std::slice::from_ref(&big.user),
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
