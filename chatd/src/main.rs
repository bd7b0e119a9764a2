//! The `chatd` binary: the command line, then [`chatd::serve`]; errors
//! become exit statuses (2: bad command line or configuration, 1: runtime
//! failure), each with a one-line cause on stderr.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;

use chatd::{Cli, Command, Settings};

fn main() -> ExitCode {
    let cli = Cli::from_env(); // exits 2 itself on a bad command line
    if let Some(Command::HashPassword) = cli.command {
        return match chatd::hash_password_cmd(std::io::stdin().lock(), std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e, e.downcast_ref::<chatd::BadPassword>().is_some()),
        };
    }
    let settings = match Settings::from_cli(&cli) {
        Ok(s) => s,
        Err(e) => return fail(&e.into(), true),
    };
    chatd::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e).context("cannot start tokio"), false),
    };
    let result = runtime.block_on(async {
        // Before `serve` prints its readiness line: see `shutdown_signal`.
        let shutdown =
            chatd::shutdown_signal().context("cannot install the SIGINT/SIGTERM handlers")?;
        chatd::serve(settings, shutdown).await
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
