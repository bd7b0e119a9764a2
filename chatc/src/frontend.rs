//! What the session needs from the person's side, whether a terminal or a
//! script on stdin: answers to login questions, typed lines, and a place to
//! show lines.

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::mpsc::Receiver;

use crate::output::Output;

/// How many input events may wait for the session. The input thread blocks
/// when they are not taken (a script far ahead of the server's replies), so
/// a long piped file is read as the session goes, not into memory at once.
pub const INPUT_QUEUE: usize = 64;

/// How long the end of a session waits for queued lines to be shown.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

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

/// How the session's last words reach the screen.
pub enum Screen {
    /// Lines go to stdout as they are (piped mode).
    Plain,
    /// The line editor holds the terminal.
    Editor(crate::terminal::EditorEnd),
}

/// The person's side of a session.
pub struct Frontend {
    /// Where lines are shown.
    pub output: Output,
    /// Requests to the input thread.
    pub requests: mpsc::Sender<Request>,
    /// What the input thread produced.
    pub events: Receiver<InputEvent>,
    /// Standard input is a script rather than a person: the session waits
    /// for the reply to every command before it logs out, and fails when
    /// one never comes, since nobody is watching.
    pub scripted: bool,
    /// How the session ends on screen.
    pub screen: Screen,
}

impl Frontend {
    /// Shows every queued line and then `last_words` (why the session
    /// ended), and gives the terminal back as it was.
    pub fn finish(self, last_words: Option<&str>) {
        match self.screen {
            Screen::Plain => {
                if let Some(words) = last_words {
                    self.output.line(words);
                }
                self.output.flush(FLUSH_WAIT);
            }
            Screen::Editor(end) => {
                self.output.flush(FLUSH_WAIT);
                end.finish(&self.output, last_words);
            }
        }
        let _ = std::io::stdout().flush();
    }
}
