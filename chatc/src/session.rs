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

use std::time::Duration;

use chatcore::wire::{
    Ask, Command, DecodeError, ErrorReply, IdleArg, LineDecoder, ParseError, ServerLine,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::{channel, unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use crate::frontend::{Frontend, InputEvent, Request};
use crate::interrupt::Interrupts;
use crate::render::{bye_words, error_words, render, sanitize, HELP};
use crate::seen::SeenIds;

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

/// What a typed line means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Typed {
    /// Send this line to the server.
    Send(String),
    /// Show the command list.
    Help,
    /// Nothing to do (a blank line).
    Nothing,
}

/// Interprets a typed line: the few client-side words (`busy`, `online`,
/// `help`), and everything else as typed, since the server parses commands
/// and answers mistakes in its own words.
pub fn typed(line: &str) -> Typed {
    let word = line.trim();
    if word.is_empty() {
        Typed::Nothing
    } else if word.eq_ignore_ascii_case("busy") {
        Typed::Send(Command::Idle(IdleArg::Busy).to_string())
    } else if word.eq_ignore_ascii_case("online") {
        Typed::Send(Command::Idle(IdleArg::Online).to_string())
    } else if word.eq_ignore_ascii_case("help") {
        Typed::Help
    } else {
        Typed::Send(line.to_string())
    }
}

/// Whether the server answers a line sent by a logged-in client: every
/// command gets exactly one reply line except a heartbeat reply (`idle`,
/// `idle <seq>`), and a blank line is ignored (PROTOCOL.md §2, §4). Parsed
/// as the server parses it, after the `\r` it drops before the `\n`.
pub fn expects_reply(line: &str) -> bool {
    let line = line.strip_suffix('\r').unwrap_or(line);
    !matches!(
        Command::parse(line),
        Ok(Command::Idle(IdleArg::None | IdleArg::Seq(_))) | Err(ParseError::Blank)
    )
}

/// Whether a server line is the one reply to a command (PROTOCOL.md §2).
/// `BYE` is left out: it answers only `logout`, which is not counted.
fn is_reply(line: &ServerLine) -> bool {
    matches!(
        line,
        ServerLine::Delivered { .. }
            | ServerLine::Queued { .. }
            | ServerLine::Broadcasted { .. }
            | ServerLine::Status(_)
            | ServerLine::Who(_)
            | ServerLine::Last(_)
            | ServerLine::Err(_)
    )
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, BufReader, Lines};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::output::Output;

    /// The person's side in a test.
    struct Person {
        /// Command lines, typed once logged in.
        typed: &'static [&'static str],
        /// The input ends after them (the end of a script).
        then_eof: bool,
        /// Piped mode rather than a terminal.
        scripted: bool,
        limits: Limits,
    }

    impl Person {
        /// At a terminal, typing `typed` and then nothing.
        fn typing(typed: &'static [&'static str]) -> Person {
            Person {
                typed,
                then_eof: false,
                scripted: false,
                limits: Limits::default(),
            }
        }

        /// A script of `typed`, ending after them.
        fn script(typed: &'static [&'static str]) -> Person {
            Person {
                typed,
                then_eof: true,
                scripted: true,
                limits: Limits::default(),
            }
        }
    }

    /// Runs a session against `script`, a fake server given the accepted
    /// socket, with `typed` as the person's command lines (the password
    /// answer is `pw`). Returns the exit status and what was shown.
    async fn session_with<F, Fut>(typed: &'static [&'static str], script: F) -> (i32, Vec<String>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let (ending, shown) = session_as(Person::typing(typed), script).await;
        (ending.code, shown)
    }

    /// Runs a session of `person` against `script`, a fake server given the
    /// accepted socket (the password answer is `pw`). Returns how it ended
    /// and what was shown, the last words included.
    async fn session_as<F, Fut>(person: Person, script: F) -> (Ending, Vec<String>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            script(sock).await;
        });
        let shown = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&shown);
        let (requests, rx) = std::sync::mpsc::channel();
        let (events_tx, events) = channel(crate::frontend::INPUT_QUEUE);
        let (typed, then_eof) = (person.typed, person.then_eof);
        std::thread::spawn(move || {
            for r in rx {
                // The session may be over before every line is taken.
                let _ = match r {
                    Request::Username => panic!("--user answers the name"),
                    Request::Password => events_tx.blocking_send(InputEvent::Answer("pw".into())),
                    Request::Commands { .. } => {
                        for line in typed {
                            let _ = events_tx.blocking_send(InputEvent::Line((*line).into()));
                        }
                        if then_eof {
                            let _ = events_tx.blocking_send(InputEvent::Eof);
                        }
                        Ok(())
                    }
                };
            }
        });
        let mut fe = Frontend {
            output: Output::spawn(Box::new(move |l| sink.lock().unwrap().push(l))),
            requests,
            events,
            scripted: person.scripted,
            screen: crate::frontend::Screen::Plain,
        };
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut interrupts = Interrupts::new().unwrap();
        let ending = run(
            stream,
            Some("alice".into()),
            &mut fe,
            &mut interrupts,
            &person.limits,
        )
        .await;
        fe.finish(ending.words.as_deref());
        server.await.unwrap();
        let shown = shown.lock().unwrap().clone();
        (ending, shown)
    }

    /// The fake server's side of a login as alice with password `pw`.
    async fn log_in(lines: &mut Lines<BufReader<OwnedReadHalf>>, w: &mut OwnedWriteHalf) {
        w.write_all(b"HELLO CHAT/1\nASK username\n").await.unwrap();
        assert_eq!(next(lines).await, "alice");
        w.write_all(b"ASK password\n").await.unwrap();
        assert_eq!(next(lines).await, "pw");
        w.write_all(b"OK login alice\n").await.unwrap();
    }

    async fn next(lines: &mut Lines<BufReader<OwnedReadHalf>>) -> String {
        lines.next_line().await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn heartbeats_are_answered_unseen_and_repeats_dropped() {
        let (code, shown) = session_with(&["whoelse", "busy", "help"], |sock| async move {
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"HELLO CHAT/1\nASK username\n").await.unwrap();
            assert_eq!(next(&mut lines).await, "alice");
            w.write_all(b"ASK password\n").await.unwrap();
            assert_eq!(next(&mut lines).await, "pw");
            w.write_all(
                b"OK login alice\nOFFLINE 1\nMSG 5 2026-11-24T17:12:01Z bob hi\nIDLE 3\n\
                  MSG 5 2026-11-24T17:12:01Z bob hi\n",
            )
            .await
            .unwrap();
            assert_eq!(next(&mut lines).await, "idle 3");
            assert_eq!(next(&mut lines).await, "whoelse");
            w.write_all(b"WHO\n").await.unwrap();
            assert_eq!(next(&mut lines).await, "idle busy");
            w.write_all(b"OK status busy\nIDLE 4\n").await.unwrap();
            assert_eq!(next(&mut lines).await, "idle 4");
            w.write_all(b"BYE shutdown\n").await.unwrap();
        })
        .await;
        assert_eq!(code, 0);
        // `help` is answered locally, before the server's replies.
        let mut want: Vec<String> = ["logged in as alice", "1 message while you were away:"]
            .map(String::from)
            .to_vec();
        want.push(format!(
            "{} bob: hi",
            crate::render::local_time(
                chatcore::Time::from_unix_secs(1_795_540_321),
                &chrono::Local
            )
        ));
        want.extend(
            [
                HELP,
                "you are alone",
                "you are now busy",
                "the server shut down",
            ]
            .map(String::from),
        );
        assert_eq!(shown, want);
    }

    #[tokio::test]
    async fn a_lost_connection_exits_1() {
        let (code, shown) = session_with(&[], |sock| async move {
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"HELLO CHAT/1\nASK username\n").await.unwrap();
            lines.next_line().await.unwrap();
            w.write_all(b"ASK password\n").await.unwrap();
            lines.next_line().await.unwrap();
            w.write_all(b"OK login alice\n").await.unwrap();
        })
        .await;
        assert_eq!(code, 1);
        assert_eq!(
            shown,
            [
                "logged in as alice",
                "the connection to the server was lost"
            ]
        );
    }

    /// `MSG <id>` from bob, as the server writes it, and as chatc shows it.
    fn msg(id: u64) -> (String, String) {
        let wire = format!("MSG {id} 2026-11-24T17:12:01Z bob m{id}\n");
        let at = chatcore::Time::from_unix_secs(1_795_540_321);
        let shown = format!(
            "{} bob: m{id}",
            crate::render::local_time(at, &chrono::Local)
        );
        (wire, shown)
    }

    #[tokio::test]
    async fn probes_inside_an_offline_block_are_answered_at_once_and_never_shown() {
        let (code, shown) = session_with(&[], |sock| async move {
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            log_in(&mut lines, &mut w).await;
            // PROTOCOL.md §5: probes may come between the lines of the
            // block, uncounted. Each is answered before the block goes on.
            w.write_all(b"OFFLINE 3\nIDLE 1\n").await.unwrap();
            assert_eq!(next(&mut lines).await, "idle 1");
            w.write_all(format!("{}IDLE 2\n", msg(1).0).as_bytes())
                .await
                .unwrap();
            assert_eq!(next(&mut lines).await, "idle 2");
            w.write_all(format!("{}IDLE 3\nIDLE 4\n{}", msg(2).0, msg(3).0).as_bytes())
                .await
                .unwrap();
            assert_eq!(next(&mut lines).await, "idle 3");
            assert_eq!(next(&mut lines).await, "idle 4");
            w.write_all(b"IDLE 5\n").await.unwrap();
            assert_eq!(next(&mut lines).await, "idle 5");
            w.write_all(b"BYE shutdown\n").await.unwrap();
        })
        .await;
        assert_eq!(code, 0);
        assert_eq!(
            shown,
            [
                "logged in as alice".to_string(),
                "3 messages while you were away:".into(),
                msg(1).1,
                msg(2).1,
                msg(3).1,
                "the server shut down".into(),
            ]
        );
    }

    #[tokio::test]
    async fn a_script_waits_through_an_offline_block_for_its_reply() {
        let (ending, shown) = session_as(Person::script(&["whoelse"]), |sock| async move {
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            log_in(&mut lines, &mut w).await;
            w.write_all(b"OFFLINE 2\nIDLE 1\n").await.unwrap();
            let mut two = [next(&mut lines).await, next(&mut lines).await];
            two.sort();
            assert_eq!(two, ["idle 1", "whoelse"]);
            // The probe in the block is no reply: chatc still waits.
            w.write_all(format!("{}IDLE 2\n{}", msg(1).0, msg(2).0).as_bytes())
                .await
                .unwrap();
            assert_eq!(next(&mut lines).await, "idle 2");
            w.write_all(b"WHO bob\n").await.unwrap();
            assert_eq!(next(&mut lines).await, "logout");
            w.write_all(b"BYE logout\n").await.unwrap();
        })
        .await;
        assert_eq!((ending.code, ending.unanswered), (0, 0));
        assert_eq!(
            shown,
            [
                "logged in as alice".to_string(),
                "2 messages while you were away:".into(),
                msg(1).1,
                msg(2).1,
                "online: bob".into(),
                "logged out".into(),
            ]
        );
    }

    #[tokio::test]
    async fn a_script_logs_out_only_after_every_reply() {
        let typed = &[
            "message bob a",
            "idle",
            "idle 3",
            "",
            "help",
            "whoelse",
            "idle busy",
        ];
        let (ending, shown) = session_as(Person::script(typed), |sock| async move {
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            log_in(&mut lines, &mut w).await;
            for want in ["message bob a", "idle", "idle 3", "whoelse", "idle busy"] {
                assert_eq!(next(&mut lines).await, want);
            }
            w.write_all(b"OK message bob delivered\nWHO\n")
                .await
                .unwrap();
            // One reply still missing: no logout yet, probes answered.
            w.write_all(b"IDLE 4\n").await.unwrap();
            assert_eq!(next(&mut lines).await, "idle 4");
            w.write_all(b"OK status busy\n").await.unwrap();
            assert_eq!(next(&mut lines).await, "logout");
            w.write_all(b"BYE logout\n").await.unwrap();
        })
        .await;
        assert_eq!((ending.code, ending.unanswered), (0, 0));
        assert_eq!(
            shown,
            [
                "logged in as alice",
                HELP,
                "delivered to bob",
                "you are alone",
                "you are now busy",
                "logged out"
            ]
        );
    }

    #[tokio::test]
    async fn a_script_never_has_more_than_the_limit_unanswered() {
        const TYPED: &[&str] = &["whoelse", "wholast 1", "whoelse", "wholast 2", "whoelse"];
        const REPLIES: &[&str] = &["WHO", "LAST", "WHO", "LAST", "WHO"];
        let mut person = Person::script(TYPED);
        person.limits.max_in_flight = 2;
        let (ending, _) = session_as(person, |sock| async move {
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            log_in(&mut lines, &mut w).await;
            assert_eq!(next(&mut lines).await, TYPED[0]);
            assert_eq!(next(&mut lines).await, TYPED[1]);
            for (i, reply) in REPLIES.iter().enumerate() {
                // Two unanswered (or the script's last): what chatc sends
                // next is the answer to a probe, not another command.
                w.write_all(format!("IDLE {i}\n").as_bytes()).await.unwrap();
                assert_eq!(next(&mut lines).await, format!("idle {i}"));
                w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                if let Some(cmd) = TYPED.get(i + 2) {
                    assert_eq!(next(&mut lines).await, *cmd);
                }
            }
            assert_eq!(next(&mut lines).await, "logout");
            w.write_all(b"BYE logout\n").await.unwrap();
        })
        .await;
        assert_eq!((ending.code, ending.unanswered), (0, 0));
    }

    #[tokio::test]
    async fn a_script_gives_up_on_a_server_that_stops_answering() {
        let mut person = Person::script(&["message bob a", "message bob b"]);
        // Shortened from 90 s; the server below goes on probing meanwhile.
        person.limits.reply_stall = Duration::from_secs(1);
        let (ending, shown) = session_as(person, |sock| async move {
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            log_in(&mut lines, &mut w).await;
            assert_eq!(next(&mut lines).await, "message bob a");
            assert_eq!(next(&mut lines).await, "message bob b");
            w.write_all(b"OK message bob delivered\n").await.unwrap();
            // Probes prove the connection alive, not that commands move.
            let mut seq = 0;
            loop {
                seq += 1;
                if w.write_all(format!("IDLE {seq}\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
                match lines.next_line().await {
                    Ok(Some(line)) => assert_eq!(line, format!("idle {seq}")),
                    _ => break,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert_eq!((ending.code, ending.unanswered), (1, 1));
        assert_eq!(
            shown,
            [
                "logged in as alice",
                "delivered to bob",
                "the server has not answered for 1 s; leaving"
            ]
        );
    }

    #[tokio::test]
    async fn a_connection_refused_for_a_limit_says_the_server_is_full() {
        let (ending, shown) = session_as(Person::typing(&[]), |mut sock| async move {
            sock.write_all(b"ERR rate-limited too many connections\n")
                .await
                .unwrap();
        })
        .await;
        assert_eq!(ending.code, 1);
        assert_eq!(
            shown,
            ["the server is full (too many connections): try again later"]
        );
    }

    #[test]
    fn which_lines_get_a_reply() {
        for line in [
            "whoelse",
            "message bob hi",
            "idle busy",
            "IDLE online",
            "logout",
            "dance",
            "idle idle",
            "idlewhoelse",
            "idle 99999999999999999999999",
            "idle\r\r",
            "wholast 999",
        ] {
            assert!(expects_reply(line), "{line:?}");
        }
        for line in [
            "idle",
            "IDLE",
            "idle 7",
            " idle\t7 ",
            "idleidle",
            "idle\r",
            "  ",
        ] {
            assert!(!expects_reply(line), "{line:?}");
        }
    }

    #[test]
    fn typed_lines() {
        assert_eq!(typed("  "), Typed::Nothing);
        assert_eq!(typed("busy"), Typed::Send("idle busy".into()));
        assert_eq!(typed(" Online "), Typed::Send("idle online".into()));
        assert_eq!(typed("help"), Typed::Help);
        assert_eq!(
            typed("message bob  hi there "),
            Typed::Send("message bob  hi there ".into())
        );
        assert_eq!(typed("busy now"), Typed::Send("busy now".into()));
    }
}
