//! One connection from `HELLO` to `BYE`: reads server lines, renders them,
//! answers heartbeats, and sends what the person types.
//!
//! Everything happens on one task that waits on the socket, the input
//! thread and Ctrl-C at once, so an `IDLE` probe is answered at once even
//! while the person is in the middle of typing a line (or in the middle of
//! an `OFFLINE` block, which probes may interrupt).
//!
//! A script (piped mode) is not watching: the server may hold its commands
//! back for flood control and answer them seconds later, so the session
//! counts the commands awaiting their one reply each, logs out only once
//! none is left, and reports the ones that never got it.

//!
//! The loop is here; what a line means (a typed word, a command that is
//! owed a reply, a server line that is one) is in [`lines`], apart, because
//! the piped-mode accounting stands on those rules and they are tested on
//! their own; the loop's tests, against a fake server, are in `tests`.

mod lines;
#[cfg(test)]
mod tests;

use std::time::Duration;

use chatcore::wire::{Ask, Command, DecodeError, ErrorReply, IdleArg, LineDecoder, ServerLine};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::{channel, unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use crate::frontend::{Frontend, InputEvent, Request};
use crate::interrupt::Interrupts;
use crate::render::{bye_words, error_words, render, sanitize, HELP};
use crate::seen::SeenIds;
use lines::{expects_reply, is_reply, typed, Typed};

/// The longest server line accepted. Generous: a `WHO` list on a big server
/// is long, and the server is trusted to frame its lines.
pub const MAX_SERVER_LINE: usize = 1 << 20;

/// How long to wait for `BYE logout` after sending `logout`.
pub const LOGOUT_WAIT: Duration = Duration::from_secs(2);

/// In scripted mode, how long chatc waits for the server while commands
/// are unanswered and nothing but heartbeat probes comes. A healthy server
/// answers commands held back by flood control at least once a second
/// (`flood_per_second` is at least 1) and sends a long block of held
/// messages line after line, so a silence this long means it is stuck.
/// Three default heartbeat periods: as long as chatd waits for a silent
/// client (`heartbeat_timeout`) before giving up on it.
pub const REPLY_STALL: Duration = Duration::from_secs(90);

/// In scripted mode, how many commands may be sent before their replies
/// come. Well under chatd's default `flood_backlog` (100), so a long script
/// is paced by the replies instead of overflowing the commands the server
/// lets wait for the flood rate (those would be refused); and enough to
/// keep a link with a 100 ms round trip at 160 commands a second, far over
/// the default flood rate.
pub const MAX_IN_FLIGHT: usize = 16;

/// The session's bounds, in one place so that tests can shorten them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// See [`LOGOUT_WAIT`].
    pub logout_wait: Duration,
    /// See [`REPLY_STALL`].
    pub reply_stall: Duration,
    /// See [`MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            logout_wait: LOGOUT_WAIT,
            reply_stall: REPLY_STALL,
            max_in_flight: MAX_IN_FLIGHT,
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The exit status: 0 after `BYE` or the person leaving; 1 when the
    /// connection was lost or refused, or (scripted) a command got no reply.
    pub code: i32,
    /// Why it ended, in words, to show after every other line.
    pub words: Option<String>,
    /// In scripted mode, how many commands sent got no reply.
    pub unanswered: usize,
}

/// The words for a connection the server refused before `HELLO`.
fn refused_words(e: &ErrorReply) -> String {
    match e {
        ErrorReply::RateLimited { detail } if detail.is_empty() => {
            "the server is full: try again later".into()
        }
        ErrorReply::RateLimited { detail } => {
            format!("the server is full ({}): try again later", sanitize(detail))
        }
        other => format!("the server refused the connection: {}", error_words(other)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connected, no `HELLO` yet: an `ERR` now is the server refusing the
    /// connection (a connection limit), not an answer to anything typed.
    Greeting,
    LoggingIn,
    LoggedIn,
    /// Scripted mode, input over (or `logout` read): waiting for the
    /// replies to the commands sent before `logout` is sent.
    Draining,
    /// `logout` sent; the session ends at `BYE`, at the server's close, or
    /// at the deadline, whichever comes first.
    LoggingOut(Instant),
}

/// Whether the session goes on.
enum Flow {
    Go,
    End(Ending),
}

struct Session<'a> {
    fe: &'a Frontend,
    limits: &'a Limits,
    to_server: UnboundedSender<String>,
    phase: Phase,
    /// `--user`: answers the first `ASK username` only, so a failed login
    /// asks the person instead of repeating a wrong name.
    user_answer: Option<String>,
    seen: SeenIds,
    /// Commands sent since the login whose reply has not come yet.
    awaiting: usize,
    /// When the server last showed progress on them: a reply, a delivery,
    /// anything but a heartbeat probe (which proves the connection alive,
    /// not that commands move).
    last_progress: Instant,
    /// The input thread ended after Ctrl-D or the end of stdin (having
    /// said so), or a script's `logout` was read: no more lines are taken.
    input_open: bool,
}

/// Runs the session to its end. `stream` is a TCP stream (with
/// `TCP_NODELAY` set by the caller) or a TLS stream over one.
pub async fn run<S>(
    stream: S,
    user: Option<String>,
    fe: &mut Frontend,
    interrupts: &mut Interrupts,
    limits: &Limits,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (to_server, lines) = unbounded_channel();
    tokio::spawn(write_lines(writer, lines));
    let mut events = std::mem::replace(&mut fe.events, channel(1).1);
    let mut s = Session {
        fe,
        limits,
        to_server,
        phase: Phase::Greeting,
        user_answer: user,
        seen: SeenIds::default(),
        awaiting: 0,
        last_progress: Instant::now(),
        input_open: true,
    };
    let mut decoder = LineDecoder::new(MAX_SERVER_LINE);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let takes_input = s.takes_input();
        let flow = tokio::select! {
            r = reader.read(&mut buf) => match r {
                Ok(0) | Err(_) => s.lost(),
                Ok(n) => {
                    let mut input = &buf[..n];
                    let mut flow = Flow::Go;
                    while let Some(item) = decoder.decode(&mut input) {
                        flow = s.on_line(item);
                        if let Flow::End(_) = flow {
                            break;
                        }
                    }
                    flow
                }
            },
            e = events.recv(), if takes_input => match e {
                Some(e) => s.on_input(e),
                // The thread said Eof or Interrupt before it ended.
                None => {
                    s.input_open = false;
                    Flow::Go
                }
            },
            () = interrupts.recv() => s.quit_now(),
            () = sleep_until(s.deadline()) => s.on_deadline(),
        };
        if let Flow::End(ending) = flow {
            return ending;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes queued lines to the server. Shared by the heartbeat answers and
/// the person's commands through the channel, so lines never interleave.
async fn write_lines<W: AsyncWrite>(writer: W, mut lines: UnboundedReceiver<String>) {
    tokio::pin!(writer);
    while let Some(mut line) = lines.recv().await {
        line.push('\n');
        // The flush sends what TLS may still hold; a no-op on plain TCP.
        if writer.write_all(line.as_bytes()).await.is_err() || writer.flush().await.is_err() {
            // The reader sees the connection end and says so.
            return;
        }
    }
}

impl Session<'_> {
    fn send(&self, line: String) {
        let _ = self.to_server.send(line);
    }

    fn show(&self, line: impl Into<String>) {
        self.fe.output.line(line);
    }

    fn ask(&self, r: Request) {
        let _ = self.fe.requests.send(r);
    }

    /// Whether the next typed line is taken now. A script is held back
    /// while [`Limits::max_in_flight`] commands are unanswered, and stops
    /// at its `logout`; a person's keys (Ctrl-C among them) are always
    /// taken.
    fn takes_input(&self) -> bool {
        if !self.input_open {
            return false;
        }
        if !self.fe.scripted {
            return true;
        }
        match self.phase {
            Phase::LoggedIn => self.awaiting < self.limits.max_in_flight,
            Phase::Greeting | Phase::LoggingIn => true,
            Phase::Draining | Phase::LoggingOut(_) => false,
        }
    }

    /// The next time something must happen without the server: the end of
    /// the wait for `BYE`, or (scripted) of the wait for a reply.
    fn deadline(&self) -> Option<Instant> {
        let logout = match self.phase {
            Phase::LoggingOut(at) => Some(at),
            _ => None,
        };
        let stall = (self.fe.scripted && self.awaiting > 0)
            .then(|| self.last_progress + self.limits.reply_stall);
        match (logout, stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_deadline(&mut self) -> Flow {
        match self.phase {
            Phase::LoggingOut(at) if Instant::now() >= at => self.end(
                0,
                Some("the server did not confirm the logout; leaving anyway".into()),
            ),
            _ => self.end(
                1,
                Some(format!(
                    "the server has not answered for {} s; leaving",
                    self.limits.reply_stall.as_secs()
                )),
            ),
        }
    }

    /// The session's end; in scripted mode a command left unanswered makes
    /// it a failure whatever ended it.
    fn end(&self, code: i32, words: Option<String>) -> Flow {
        let unanswered = if self.fe.scripted { self.awaiting } else { 0 };
        Flow::End(Ending {
            code: if unanswered > 0 { code.max(1) } else { code },
            words,
            unanswered,
        })
    }

    fn on_line(&mut self, item: Result<String, DecodeError>) -> Flow {
        let text = match item {
            Ok(text) => text,
            Err(DecodeError::LineTooLong { .. }) => {
                self.show("(skipped a line from the server: too long)");
                return Flow::Go;
            }
            Err(DecodeError::BadEncoding) => {
                self.show("(skipped a line from the server: not plain text)");
                return Flow::Go;
            }
        };
        match ServerLine::parse(&text) {
            Ok(line) => self.on_server_line(line),
            Err(_) => {
                self.show(format!("(unexpected from the server: {})", sanitize(&text)));
                Flow::Go
            }
        }
    }

    fn on_server_line(&mut self, line: ServerLine) -> Flow {
        if self.phase == Phase::Greeting {
            if let ServerLine::Err(e) = &line {
                return self.end(1, Some(refused_words(e)));
            }
            self.phase = Phase::LoggingIn;
        }
        if !matches!(line, ServerLine::Idle { .. }) {
            self.last_progress = Instant::now();
        }
        let logged_in = matches!(
            self.phase,
            Phase::LoggedIn | Phase::Draining | Phase::LoggingOut(_)
        );
        if logged_in && is_reply(&line) {
            self.awaiting = self.awaiting.saturating_sub(1);
        }
        match &line {
            ServerLine::Idle { seq } => {
                self.send(Command::Idle(IdleArg::Seq(*seq)).to_string());
                return Flow::Go;
            }
            ServerLine::Ask(Ask::Username) => {
                match self.user_answer.take() {
                    Some(name) => self.send(name),
                    None => self.ask(Request::Username),
                }
                return Flow::Go;
            }
            ServerLine::Ask(Ask::Password) => {
                self.ask(Request::Password);
                return Flow::Go;
            }
            ServerLine::Deliver(m) if !self.seen.first_time(m.id) => return Flow::Go,
            ServerLine::Bye(reason) => return self.end(0, Some(bye_words(*reason).into())),
            _ => {}
        }
        if let Some(words) = render(&line, &chrono::Local) {
            self.show(words);
        }
        if let ServerLine::LoggedIn { user } = line {
            self.phase = Phase::LoggedIn;
            self.ask(Request::Commands { user });
        }
        if self.phase == Phase::Draining && self.awaiting == 0 {
            self.send_logout();
        }
        Flow::Go
    }

    fn on_input(&mut self, e: InputEvent) -> Flow {
        match e {
            InputEvent::Answer(answer) => {
                self.send(answer);
                Flow::Go
            }
            InputEvent::Line(line) => {
                match typed(&line) {
                    Typed::Nothing => {}
                    Typed::Help => self.show(HELP),
                    Typed::Send(cmd) if Command::parse(&cmd) == Ok(Command::Logout) => {
                        if self.fe.scripted {
                            // The rest of the script would not be answered.
                            self.input_open = false;
                            self.leave_after_replies();
                        } else {
                            self.phase =
                                Phase::LoggingOut(Instant::now() + self.limits.logout_wait);
                            self.send(cmd);
                        }
                    }
                    Typed::Send(cmd) => {
                        if self.phase == Phase::LoggedIn && expects_reply(&cmd) {
                            if self.awaiting == 0 {
                                self.last_progress = Instant::now();
                            }
                            self.awaiting += 1;
                        }
                        self.send(cmd);
                    }
                }
                Flow::Go
            }
            InputEvent::Eof => {
                self.input_open = false;
                match self.phase {
                    Phase::LoggedIn if self.fe.scripted => {
                        self.leave_after_replies();
                        Flow::Go
                    }
                    _ => self.quit_now(),
                }
            }
            InputEvent::Interrupt => self.quit_now(),
        }
    }

    /// A script is over: `logout` once every command sent has its reply.
    fn leave_after_replies(&mut self) {
        if self.awaiting == 0 {
            self.send_logout();
        } else {
            self.phase = Phase::Draining;
        }
    }

    fn send_logout(&mut self) {
        self.send(Command::Logout.to_string());
        self.phase = Phase::LoggingOut(Instant::now() + self.limits.logout_wait);
    }

    /// Ctrl-C, Ctrl-D, a signal: log out politely when logged in; before
    /// that there is nothing to log out of. Asked again while logging out:
    /// stop waiting.
    fn quit_now(&mut self) -> Flow {
        match self.phase {
            Phase::Greeting | Phase::LoggingIn => self.end(0, None),
            Phase::LoggedIn | Phase::Draining => {
                self.send_logout();
                Flow::Go
            }
            Phase::LoggingOut(_) => self.end(0, None),
        }
    }

    /// The connection ended without `BYE`.
    fn lost(&mut self) -> Flow {
        match self.phase {
            Phase::LoggingOut(_) => self.end(0, None),
            _ => self.end(1, Some("the connection to the server was lost".into())),
        }
    }
}
