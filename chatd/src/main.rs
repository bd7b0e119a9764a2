//! The `chatd` binary: the command line, then [`chatd::serve`]; errors
//! become exit statuses (2: bad command line or configuration, 1: runtime
//! failure), each with a one-line cause on stderr. Logging and signal
//! handling are set up here because they belong to the process, not to the
//! library: a test that runs the server in-process keeps its own.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;

use chatd::config::LogFormat;
use chatd::{Cli, Command, Settings};

/// Turns transparent huge pages off for the process. mimalloc asks for
/// them for its memory, and with them resident memory grows 2 MiB at a
/// time: an idle chatd was 27 MiB resident instead of 13, and 10,000 idle
/// sessions read 2.0 or 2.9 KiB each from run to run instead of 2.2.
/// Round trips at 50 pairs were the same either way (BENCHMARKS.md, S3).
/// A system without the setting runs with huge pages, as before.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("chatd: transparent huge pages stay on: {e}");
    }
}

/// mimalloc instead of the system allocator: chatd allocates and frees
/// small buffers for every line, mostly on one thread, which glibc's malloc
/// serves with more instructions and more bytes per idle session
/// (BENCHMARKS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::from_env(); // exits 2 itself on a bad command line
    if let Some(Command::CheckConfig { config }) = &cli.command {
        // Every refusal is a configuration mistake: 2, like a bad config
        // at startup, whatever file it is in.
        return match chatd::config::check_config(config.as_deref()) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.context("check-config"), true),
        };
    }
    if let Some(Command::HashPassword) = cli.command {
        return match chatd::passwords::hash_password_cmd(
            std::io::stdin().lock(),
            std::io::stdout().lock(),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(
                &e,
                e.downcast_ref::<chatd::passwords::BadPassword>().is_some(),
            ),
        };
    }
    let settings = match Settings::from_cli(&cli) {
        Ok(s) => s,
        Err(e) => return fail(&e.into(), true),
    };
    init_logging(settings.log_format);
    // One thread for the core and every connection: a line handed to a
    // connection is written by the same thread, with no wake-up of another
    // (measured: fan-out to 1000 receivers 1.75x the deliveries/s of the
    // multi-threaded runtime on 2 cores). The store and argon2 have
    // threads of their own, so the disk and password checks never stall it.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e).context("cannot start tokio"), false),
    };
    let result = runtime.block_on(async {
        // Before `serve` prints its readiness line: see `shutdown_signal`.
        let shutdown = shutdown_signal().context("cannot install the SIGINT/SIGTERM handlers")?;
        let shutdown = async move {
            shutdown.await;
            chatd::notify::stopping();
        };
        let reloads = reload_signal().context("cannot install the SIGHUP handler")?;
        chatd::serve(settings, shutdown, reloads).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, false),
    }
}

/// Prints the cause chain on one line; 2 for usage errors, 1 otherwise.
fn fail(e: &anyhow::Error, usage: bool) -> ExitCode {
    eprintln!("chatd: {e:#}");
    ExitCode::from(if usage { 2 } else { 1 })
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or as
/// one JSON object a line (`log_format`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        // Never colour codes inside JSON strings.
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Installs the SIGHUP handler now (for the reason `shutdown_signal` gives:
/// SIGHUP's default action would kill the server) and turns each SIGHUP
/// into a reload request. Signals that arrive while a reload runs make one
/// more reload, not one each: a reload reads the files as they are then.
fn reload_signal() -> std::io::Result<tokio::sync::mpsc::Receiver<()>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = tx.try_send(());
            }
        });
    }
    #[cfg(not(unix))]
    drop(tx);
    Ok(rx)
}

/// Installs the SIGINT and SIGTERM handlers now and returns a future that
/// completes on either. Must be called inside a tokio runtime.
///
/// The handlers are installed by this call, not when the future is first
/// polled: the caller makes the future before [`chatd::serve`] prints its readiness
/// line, and a supervisor that sends SIGTERM the instant it reads that line
/// must get a clean shutdown (`BYE shutdown`, the store closed, exit 0)
/// rather than the signal's default action. A signal that arrives while the
/// server is still starting is kept and acted on once it runs.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(windows)]
    {
        let mut ctrl_c = tokio::signal::windows::ctrl_c()?;
        Ok(async move {
            let _ = ctrl_c.recv().await;
        })
    }
}
