//! The CHAT/1 terminal client, `chatc`.
//!
//! A library so the binary stays a thin shell and the pieces can be tested
//! alone: [`args`] (the command line), `connect` (waiting for the server),
//! [`tls`] (`--tls`), `session` (one connection), `render` (server lines in
//! words), `terminal` and `piped` (the person's side, interactive or
//! scripted).
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
pub mod tls;

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;

pub use args::Args;
pub use tls::TlsFailure;

/// A problem with the command line found after parsing (a host that does
/// not resolve): exit status 2, like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs the client to its end and returns the process exit status: 0 after
/// a normal end (`BYE`, logout, Ctrl-C), 1 when the connection was lost or
/// refused (the server is full), or a script's command got no answer.
/// Errors are [`UsageError`]s (status 2) or anything else (status 1, e.g. a
/// [`TlsFailure`]).
pub fn run(args: Args) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> anyhow::Result<i32> {
    // Checked before connecting: a bad --ca file should not wait for a server.
    let tls = match args.tls {
        true => Some(tls::Tls::new(&args.host, args.ca.as_deref())?),
        false => None,
    };
    let mut interrupts = interrupt::Interrupts::new()?;
    let waits = connect::Waits::default();
    let Some(stream) = connect::connect(&args.host, args.port, &mut interrupts, &waits).await?
    else {
        return Ok(0);
    };
    let _ = stream.set_nodelay(true);
    let stream = match &tls {
        None => {
            if !greeted(&stream, &mut interrupts).await {
                return Ok(0);
            }
            Connected::Plain(stream)
        }
        Some(tls) => match tls.handshake(stream, &mut interrupts).await? {
            Some(stream) => Connected::Tls(Box::new(stream)),
            None => return Ok(0),
        },
    };
    let mut frontend = if std::io::stdin().is_terminal() {
        terminal::start()?
    } else {
        piped::start()?
    };
    let limits = session::Limits::default();
    let ending = match stream {
        Connected::Plain(s) => {
            session::run(s, args.user, &mut frontend, &mut interrupts, &limits).await
        }
        Connected::Tls(s) => {
            session::run(*s, args.user, &mut frontend, &mut interrupts, &limits).await
        }
    };
    frontend.finish(ending.words.as_deref());
    if ending.unanswered > 0 {
        eprintln!("chatc: {}", unanswered_words(ending.unanswered));
    }
    Ok(ending.code)
}

/// The stderr line for commands a script sent that the server never
/// answered: they may or may not have been carried out.
fn unanswered_words(n: usize) -> String {
    match n {
        1 => "1 command got no answer from the server (it may not have been carried out)".into(),
        n => format!(
            "{n} commands got no answer from the server (they may not have been carried out)"
        ),
    }
}

/// How long a plain connection waits for `HELLO` before chatc suggests
/// `--tls`.
const GREETING_HINT: Duration = Duration::from_secs(5);

/// Waits up to [`GREETING_HINT`] for the server's first bytes, without
/// reading them; if none come, says once that the server may want TLS (a
/// TLS port waits for a handshake that plain chatc never starts, so the
/// person would otherwise see nothing until the server gives up). False if
/// Ctrl-C came first.
async fn greeted(stream: &tokio::net::TcpStream, interrupts: &mut interrupt::Interrupts) -> bool {
    let mut byte = [0u8; 1];
    tokio::select! {
        r = tokio::time::timeout(GREETING_HINT, stream.peek(&mut byte)) => {
            if r.is_err() {
                eprintln!(
                    "no greeting from the server after {} s; if it uses TLS, connect with --tls",
                    GREETING_HINT.as_secs()
                );
            }
            true
        }
        () = interrupts.recv() => false,
    }
}

/// The connection to the server, once set up.
enum Connected {
    Plain(tokio::net::TcpStream),
    // Boxed: a TLS stream carries rustls's buffers and state.
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}
