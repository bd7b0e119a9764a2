//! Interactive mode: rustyline on its own thread, incoming lines printed
//! above the line being typed through rustyline's external printer, and the
//! password read with echo off.

use std::io::Write;
use std::sync::mpsc;
use std::thread;

use anyhow::Context;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config, DefaultEditor, Editor, ExternalPrinter};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::frontend::{Frontend, InputEvent, Request};
use crate::output::Output;

/// How many typed lines the up arrow can bring back.
const HISTORY: usize = 1000;

/// Starts the line editor thread and the printer for a terminal on stdin.
pub fn start() -> anyhow::Result<Frontend> {
    // Taken before the editor first switches to raw mode.
    #[cfg(unix)]
    let saved_termios = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
    let config = Config::builder()
        .max_history_size(HISTORY)
        .context("configuring the line editor")?
        .history_ignore_dups(true)
        .context("configuring the line editor")?
        .auto_add_history(false)
        // A pasted block of lines is then sent line by line, as typed, and
        // there is no paste mode left on if the process exits mid-line.
        .bracketed_paste(false)
        .build();
    let mut editor: DefaultEditor =
        Editor::with_config(config).context("starting the line editor")?;
    let output = match editor.create_external_printer() {
        Ok(mut printer) => Output::spawn(Box::new(move |line: String| {
            if printer.print(format!("{line}\n")).is_err() {
                println!("{line}");
            }
        })),
        // stdout is not a terminal (e.g. `chatc | tee log`): plain lines.
        Err(_) => Output::spawn(Box::new(|line: String| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        })),
    };
    let (requests, rx) = mpsc::channel();
    let (events_tx, events) = unbounded_channel();
    thread::Builder::new()
        .name("chatc-editor".into())
        .spawn(move || serve(editor, rx, events_tx))
        .context("starting the line editor thread")?;
    Ok(Frontend {
        output,
        requests,
        events,
        #[cfg(unix)]
        saved_termios,
    })
}

/// Maps an editor result to what the session sees.
fn event(r: rustyline::Result<String>, make: fn(String) -> InputEvent) -> InputEvent {
    match r {
        Ok(s) => make(s),
        Err(ReadlineError::Interrupted) => InputEvent::Interrupt,
        // Eof, or the terminal went away: either way the person is gone.
        Err(_) => InputEvent::Eof,
    }
}

/// The editor thread: answers requests until the session ends (the process
/// exits around it when it is blocked in `readline`).
fn serve(
    mut editor: Editor<(), DefaultHistory>,
    requests: mpsc::Receiver<Request>,
    events: UnboundedSender<InputEvent>,
) {
    for request in requests {
        match request {
            Request::Username => {
                let e = event(editor.readline("Username: "), InputEvent::Answer);
                if events.send(e).is_err() {
                    return;
                }
            }
            Request::Password => {
                // Echo off on the controlling terminal, restored after.
                let e = match rpassword::prompt_password("Password: ") {
                    Ok(p) => InputEvent::Answer(p),
                    Err(_) => InputEvent::Eof,
                };
                if events.send(e).is_err() {
                    return;
                }
            }
            Request::Commands { user } => {
                let prompt = format!("{user}> ");
                loop {
                    let e = event(editor.readline(&prompt), InputEvent::Line);
                    if let InputEvent::Line(line) = &e {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                    }
                    let last = !matches!(e, InputEvent::Line(_));
                    if events.send(e).is_err() || last {
                        return;
                    }
                }
            }
        }
    }
}
