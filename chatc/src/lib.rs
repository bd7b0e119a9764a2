//! The CHAT/1 terminal client, `chatc`.
//!
//! A library so the binary stays a thin shell and the pieces can be tested
//! alone: [`args`] (the command line), `connect` (waiting for the server),
//! `session` (one connection), `render` (server lines in words), `terminal`
//! and `piped` (the person's side, interactive or scripted).
#![forbid(unsafe_code)]

pub mod args;
mod connect;
mod frontend;
mod interrupt;
mod output;
mod piped;
pub mod render;
mod seen;
mod session;
mod terminal;

use std::io::IsTerminal;

use anyhow::Context;

pub use args::Args;

/// A problem with the command line found after parsing (a host that does
/// not resolve): exit status 2, like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs the client to its end and returns the process exit status: 0 after
/// a normal end (`BYE`, logout, Ctrl-C), 1 when the connection was lost.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> anyhow::Result<i32> {
    let mut interrupts = interrupt::Interrupts::new()?;
    let Some(stream) = connect::connect(&args.host, args.port, &mut interrupts).await? else {
        return Ok(0);
    };
    let mut frontend = if std::io::stdin().is_terminal() {
        terminal::start()?
    } else {
        piped::start()?
    };
    let code = session::run(stream, args.user, &mut frontend, &mut interrupts).await;
    frontend.finish();
    Ok(code)
}
