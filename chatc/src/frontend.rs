//! What the session needs from the person's side, whether a terminal or a
//! script on stdin: answers to login questions, typed lines, and a place to
//! show lines.

use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::output::Output;

/// What the session asks the input side for. Input is read only on
/// request, so that login answers and commands are taken from stdin in
/// order in piped mode, and the terminal shows the right prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read a user name (prompt `Username: `).
    Username,
    /// Read a password, hidden on a terminal (prompt `Password: `).
    Password,
    /// Read commands until the end of input, with the prompt `<user>> `.
    Commands {
        /// Who is logged in, for the prompt.
        user: String,
    },
}

/// What the input side produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputEvent {
    /// The answer to [`Request::Username`] or [`Request::Password`].
    Answer(String),
    /// One typed command line.
    Line(String),
    /// Ctrl-D, or the end of stdin.
    Eof,
    /// Ctrl-C typed while the line editor had the terminal.
    Interrupt,
}

/// The person's side of a session.
pub struct Frontend {
    /// Where lines are shown.
    pub output: Output,
    /// Requests to the input thread.
    pub requests: mpsc::Sender<Request>,
    /// What the input thread produced.
    pub events: UnboundedReceiver<InputEvent>,
    /// The terminal settings from before the line editor touched them, to
    /// put back when the process exits while the editor still holds the
    /// terminal in raw mode (or the password prompt holds echo off): the
    /// editor thread cannot be interrupted, so the process exits around it.
    #[cfg(unix)]
    pub saved_termios: Option<nix::sys::termios::Termios>,
}

impl Frontend {
    /// Shows every queued line, then gives the terminal back as it was.
    pub fn finish(&self) {
        self.output.flush(Duration::from_secs(1));
        #[cfg(unix)]
        if let Some(saved) = &self.saved_termios {
            use nix::sys::termios::{tcsetattr, SetArg};
            let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
            let mut out = std::io::stdout();
            if out.is_terminal() {
                // The editor redraws its prompt (and any half-typed text)
                // under the last line shown; erase it so the shell's prompt
                // starts on a clean line.
                let _ = out.write_all(b"\r\x1b[K");
                let _ = out.flush();
            }
        }
    }
}
