//! `chat-bench`: the benchmark suite of chatd.
//!
//! ```text
//! cargo build --release -p chat --bin chatd
//! cargo run --release -p chat-bench -- all
//! ```
//!
//! Every scenario runs against chatd and against a bare tokio line relay
//! (`chat-bench relay`, the baseline) in the same run, and reports chatd's
//! figures as ratios to the baseline's. `all` rewrites the generated
//! section of BENCHMARKS.md and `benchmarks.svg` beside it.
#![forbid(unsafe_code)]

mod client;
mod ctx;
mod hist;
mod irc;
mod proc;
mod relay;
mod report;
mod scenarios;
mod users;

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::ctx::{Ctx, Opts};
use crate::report::{PlotData, Row};

/// Benchmarks chatd against a bare tokio line relay.
#[derive(Debug, Parser)]
#[command(name = "chat-bench", version)]
struct Cli {
    /// chatd's binary (default: `chatd` beside this binary).
    #[arg(long, global = true, value_name = "PATH")]
    chatd: Option<PathBuf>,
    /// Small counts and short phases: a smoke test, not a measurement.
    #[arg(long, global = true)]
    quick: bool,
    /// The report `all` rewrites (its generated section only).
    #[arg(long, global = true, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Harness self-test: the baseline relay plays chatd's part too, so
    /// the scenarios can be checked before chatd exists. Never reported.
    #[arg(long, global = true)]
    self_test: bool,
    /// Do not write the report and plot even for `all`.
    #[arg(long, global = true)]
    no_report: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every scenario; rewrites BENCHMARKS.md's table and benchmarks.svg.
    All,
    /// Private-message round trips, 1 pair and 50 pairs.
    S1,
    /// Broadcast to 100 and 1000 receivers.
    S2,
    /// Memory per idle session (10,000 sessions).
    S3,
    /// Login storm with argon2id accounts.
    S4,
    /// A user with 100,000 held messages logs in.
    S5,
    /// A million held messages across 1,000 users: startup and one drain.
    S6,
    /// S1's many-pairs phase, alternating between chatd, optionally
    /// another build of it, and ngircd: ratios to ngircd per round and
    /// their medians, to tell a change of a few percent from the noise.
    Ab {
        /// Another chatd binary to compare in the same rounds.
        #[arg(long, value_name = "PATH")]
        other: Option<PathBuf>,
        /// Rounds (each a warm-up and a phase per server).
        #[arg(long, default_value_t = 8)]
        rounds: usize,
    },
    /// Runs the baseline relay (the suite starts it by itself).
    #[command(hide = true)]
    Relay {
        /// Address to listen on.
        #[arg(default_value = "127.0.0.1")]
        host: String,
        /// Port; 0 picks one.
        #[arg(default_value_t = 0)]
        port: u16,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let raised = proc::raise_nofile_limit();
    if let Cmd::Relay { host, port } = &cli.command {
        return run_relay(host, *port);
    }
    let limit = raised.context("raising the open-file limit")?;
    let opts = if cli.quick {
        Opts::quick()
    } else {
        Opts::full()
    };
    if limit < 2 * opts.s3_sessions as u64 + 1000 && matches!(cli.command, Cmd::All | Cmd::S3) {
        eprintln!(
            "warning: open-file limit {limit} may be too low for {} sessions",
            opts.s3_sessions
        );
    }
    let ctx = Ctx::new(cli.chatd.clone(), opts, cli.self_test)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        tokio::select! {
            r = run(&ctx, &cli) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Every server process is stopped by its guard by now; client tasks die
    // with the runtime.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    ctx.cleanup();
    result
}

fn run_relay(host: &str, port: u16) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((host, port)).await?;
        println!("relay listening on {}", listener.local_addr()?);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = relay::serve(listener) => r?,
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(ctx: &Ctx, cli: &Cli) -> Result<()> {
    let started = Instant::now();
    let load_before = loadavg();
    let mut plot = PlotData::default();
    let mut rows: Vec<Row> = Vec::new();
    if let Cmd::Ab { other, rounds } = &cli.command {
        ctx.require_chatd()?;
        return scenarios::ab(ctx, other.as_deref(), *rounds).await;
    }
    let which: Vec<u8> = match cli.command {
        Cmd::All => vec![1, 2, 3, 4, 5, 6],
        Cmd::S1 => vec![1],
        Cmd::S2 => vec![2],
        Cmd::S3 => vec![3],
        Cmd::S4 => vec![4],
        Cmd::S5 => vec![5],
        Cmd::S6 => vec![6],
        Cmd::Relay { .. } | Cmd::Ab { .. } => unreachable!("handled above"),
    };
    ctx.require_chatd()?;
    let mut failures = 0;
    for s in which.iter().copied() {
        let t = Instant::now();
        let r = match s {
            1 => scenarios::s1(ctx, &mut plot).await,
            2 => scenarios::s2(ctx, &mut plot).await,
            3 => scenarios::s3(ctx).await,
            4 => scenarios::s4(ctx).await,
            5 => scenarios::s5(ctx).await,
            _ => scenarios::s6(ctx).await,
        };
        match r {
            Ok(r) => rows.extend(r),
            Err(e) => {
                failures += 1;
                ctx.note(format!("S{s} failed: {e:#}"));
            }
        }
        println!("  (S{s} took {:.0} s)", t.elapsed().as_secs_f64());
    }
    report::print(&rows);
    ctx.note(format!(
        "load average (1, 5, 15 min) {load_before} before the run, {} after it: \
         the machine is shared, so compare ratios from one run, not figures across runs",
        loadavg()
    ));
    let total = started.elapsed();
    println!("suite took {:.0} s", total.as_secs_f64());
    if matches!(cli.command, Cmd::All) && !cli.no_report && !cli.quick && !cli.self_test {
        let path = cli.report.clone().unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("BENCHMARKS.md")
        });
        let svg = path.with_file_name("benchmarks.svg");
        report::plot(&svg, &plot).context("drawing the plot")?;
        report::write_section(&path, &section(ctx, &rows, total))?;
        println!("wrote {} and {}", path.display(), svg.display());
    }
    if failures > 0 {
        anyhow::bail!("{failures} scenario(s) failed (see the notes above)");
    }
    Ok(())
}

fn first_line_with(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// The generated section of BENCHMARKS.md.
fn section(ctx: &Ctx, rows: &[Row], took: std::time::Duration) -> String {
    let when = chatcore::Time::from_system(SystemTime::now()).to_rfc3339();
    let cpu =
        first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = first_line_with("/proc/meminfo", "MemTotal").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut s = format!(
        "## Latest figures\n\n\
         Run {when}, {:.0} s, by `cargo run --release -p chat-bench -- all`.\n\
         Machine: {cpu}, {cores} cores (shared by the servers and the load generator), {mem} RAM, \
         Linux {}, {rustc}; loopback TCP.\n\n",
        took.as_secs_f64(),
        kernel.trim()
    );
    s.push_str(&report::table(rows));
    let notes = ctx.notes();
    if !notes.is_empty() {
        s.push_str("\nNotes from this run:\n\n");
        for n in notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s.push_str("\n![S2 throughput and S1 latency, chatd against the baseline](benchmarks.svg)\n");
    s
}
