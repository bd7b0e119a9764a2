//! `chatc`: the CHAT/1 terminal client. The work is in the `chatc` library
//! crate; this only maps its outcome to an exit status.
#![forbid(unsafe_code)]

use anyhow::Context;

fn main() {
    let args = chatc::Args::from_command_line();
    let target = format!("{}:{}", args.host, args.port);
    let code = match chatc::run(args).with_context(|| format!("chatc with the server at {target}"))
    {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chatc: {e:#}");
            // Usage errors 2, everything else (a failed TLS handshake, an
            // untrusted certificate) 1: see `chatc --help`.
            if e.downcast_ref::<chatc::UsageError>().is_some() {
                2
            } else {
                1
            }
        }
    };
    // Exit at once: the line editor thread may still be blocked reading the
    // terminal, and nothing else is left to finish.
    std::process::exit(code);
}
