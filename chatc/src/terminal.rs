//! Interactive mode: rustyline on its own thread, incoming lines printed
//! above the line being typed through rustyline's external printer, and the
//! password read with echo off.
//!
//! The external printer only hands a line to the editor thread, which draws
//! it when it gets to it; a process that exits right after handing over its
//! last line (`BYE`, a lost connection) may exit before it is drawn. So the
//! session's last words are not sent that way: [`EditorEnd::finish`] first
//! waits until the editor has drawn everything handed over, then takes the
//! terminal away from it, and prints them itself.

use std::io::{IsTerminal, Write};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use anyhow::Context;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config, DefaultEditor, Editor, ExternalPrinter};
use tokio::sync::mpsc::{channel, Sender};

use crate::frontend::{Frontend, InputEvent, Request, Screen, INPUT_QUEUE};
use crate::output::Output;

/// How many typed lines the up arrow can bring back.
const HISTORY: usize = 1000;

/// A line the editor draws as nothing: its printer clears the prompt,
/// writes the line and its `\n` and draws the prompt again; this moves the
/// cursor up first, so the `\n` brings it back to where the prompt was.
/// Used to learn when the editor has drawn what came before it (see
/// [`EditorEnd::finish`]).
const INVISIBLE: &str = "\x1b[A";

/// How long the end of a session waits for the editor thread to draw its
/// lines and leave the terminal. It normally takes milliseconds; the bound
/// is for a machine so loaded that the thread is not scheduled, and then
/// the last words are printed anyway.
const EDITOR_STOP_WAIT: Duration = Duration::from_secs(5);

/// Whether the editor thread is inside `readline` (with the terminal in
/// raw mode and the printer's lines drawn by that thread), and whether the
/// session has ended, after which it must not start another.
#[derive(Debug, Default)]
struct EditorState {
    reading: bool,
    stopped: bool,
}

/// What the end of the session needs to give the terminal back.
pub struct EditorEnd {
    /// Lines go through the editor's printer (stdout is a terminal too).
    printer: bool,
    state: Arc<Mutex<EditorState>>,
    /// Disconnected once the editor thread has ended.
    editor_gone: mpsc::Receiver<()>,
    /// The terminal, kept open when standard input is taken from the editor
    /// at the end (see [`EditorEnd::finish`]), and its settings from before
    /// the editor touched them: the editor thread may be stopped in the
    /// middle of a `readline` (raw mode) or of the password prompt (echo
    /// off), so the process puts them back itself.
    #[cfg(unix)]
    tty: Option<(std::os::fd::OwnedFd, nix::sys::termios::Termios)>,
}

/// Starts the line editor thread and the printer for a terminal on stdin.
pub fn start() -> anyhow::Result<Frontend> {
    // Taken before the editor first switches to raw mode.
    #[cfg(unix)]
    let tty = {
        use std::os::fd::AsFd;
        let stdin = std::io::stdin();
        let fd = stdin.as_fd().try_clone_to_owned().ok();
        let saved = nix::sys::termios::tcgetattr(stdin.as_fd()).ok();
        fd.zip(saved)
    };
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
    let (output, printer) = match editor.create_external_printer() {
        Ok(mut printer) => (
            Output::spawn(Box::new(move |line: String| {
                if printer.print(format!("{line}\n")).is_err() {
                    println!("{line}");
                }
            })),
            true,
        ),
        // stdout is not a terminal (e.g. `chatc | tee log`): plain lines.
        Err(_) => (
            Output::spawn(Box::new(|line: String| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            })),
            false,
        ),
    };
    let (requests, rx) = mpsc::channel();
    let (events_tx, events) = channel(INPUT_QUEUE);
    let state = Arc::new(Mutex::new(EditorState::default()));
    let (gone_tx, editor_gone) = mpsc::channel::<()>();
    let thread_state = Arc::clone(&state);
    thread::Builder::new()
        .name("chatc-editor".into())
        .spawn(move || {
            let _gone = gone_tx;
            serve(editor, rx, events_tx, &thread_state);
        })
        .context("starting the line editor thread")?;
    Ok(Frontend {
        output,
        requests,
        events,
        scripted: false,
        screen: Screen::Editor(EditorEnd {
            printer,
            state,
            editor_gone,
            #[cfg(unix)]
            tty,
        }),
    })
}

impl EditorEnd {
    /// Ends the editor's hold on the terminal and prints `last_words`.
    /// Every line given to `output` so far must already be handed over.
    ///
    /// The printer hands a line over only once the editor thread has taken
    /// the one before, and the thread draws one line before it takes the
    /// next. So once two [`INVISIBLE`] lines are handed over, everything
    /// before the first is on the screen. Then standard input is swapped for
    /// a socket that reports end of file, which ends the `readline` in
    /// progress (the editor takes the terminal's keys before its printer's
    /// lines, which is why this comes last). With the editor thread gone,
    /// nothing else writes to the terminal.
    pub fn finish(self, output: &Output, last_words: Option<&str>) {
        let reading = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            s.stopped = true;
            s.reading
        };
        let editor_stopped = reading && self.printer && self.stop_editor(output);
        self.restore_terminal();
        let mut out = std::io::stdout().lock();
        if out.is_terminal() {
            let _ = out.write_all(if editor_stopped {
                // The editor ended its line after the prompt: erase that
                // prompt, so the last words replace it.
                b"\x1b[A\r\x1b[K"
            } else {
                // A prompt may stand on the current line (the editor
                // redraws it under every line, or the password prompt).
                b"\r\x1b[K"
            });
        }
        if let Some(words) = last_words {
            let _ = writeln!(out, "{words}");
        }
        let _ = out.flush();
    }

    /// Makes the editor thread draw what it was given and leave its
    /// `readline`; true once it has ended.
    #[cfg(unix)]
    fn stop_editor(&self, output: &Output) -> bool {
        let Ok((ours, theirs)) = std::os::unix::net::UnixStream::pair() else {
            return false;
        };
        if nix::unistd::dup2_stdin(&theirs).is_err() {
            return false;
        }
        drop(theirs);
        output.line(INVISIBLE);
        output.line(INVISIBLE);
        output.flush(EDITOR_STOP_WAIT);
        // End of file on the editor's standard input.
        drop(ours);
        matches!(
            self.editor_gone.recv_timeout(EDITOR_STOP_WAIT),
            Err(mpsc::RecvTimeoutError::Disconnected)
        )
    }

    #[cfg(not(unix))]
    fn stop_editor(&self, _output: &Output) -> bool {
        false
    }

    /// Puts back the terminal settings from before the editor started.
    fn restore_terminal(&self) {
        #[cfg(unix)]
        if let Some((fd, saved)) = &self.tty {
            use nix::sys::termios::{tcsetattr, SetArg};
            let _ = tcsetattr(fd, SetArg::TCSANOW, saved);
        }
    }
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

/// One `readline`, unless the session has ended; `state` says meanwhile
/// that the editor holds the terminal.
fn readline(
    editor: &mut Editor<(), DefaultHistory>,
    prompt: &str,
    state: &Mutex<EditorState>,
) -> Option<rustyline::Result<String>> {
    {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.stopped {
            return None;
        }
        s.reading = true;
    }
    let r = editor.readline(prompt);
    state.lock().unwrap_or_else(PoisonError::into_inner).reading = false;
    Some(r)
}

/// The editor thread: answers requests until the session ends (the process
/// exits around it when it is blocked in the password prompt).
fn serve(
    mut editor: Editor<(), DefaultHistory>,
    requests: mpsc::Receiver<Request>,
    events: Sender<InputEvent>,
    state: &Mutex<EditorState>,
) {
    for request in requests {
        match request {
            Request::Username => {
                let Some(r) = readline(&mut editor, "Username: ", state) else {
                    return;
                };
                if events.blocking_send(event(r, InputEvent::Answer)).is_err() {
                    return;
                }
            }
            Request::Password => {
                // Echo off on the controlling terminal, restored after.
                let e = match rpassword::prompt_password("Password: ") {
                    Ok(p) => InputEvent::Answer(p),
                    Err(_) => InputEvent::Eof,
                };
                if events.blocking_send(e).is_err() {
                    return;
                }
            }
            Request::Commands { user } => {
                let prompt = format!("{user}> ");
                loop {
                    let Some(r) = readline(&mut editor, &prompt, state) else {
                        return;
                    };
                    let e = event(r, InputEvent::Line);
                    if let InputEvent::Line(line) = &e {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                    }
                    let last = !matches!(e, InputEvent::Line(_));
                    if events.blocking_send(e).is_err() || last {
                        return;
                    }
                }
            }
        }
    }
}
