//! One connection from `HELLO` to `BYE`: reads server lines, renders them,
//! answers heartbeats, and sends what the person types.
//!
//! Everything happens on one task that waits on the socket, the input
//! thread and Ctrl-C at once, so an `IDLE` probe is answered at once even
//! while the person is in the middle of typing a line.

use std::time::Duration;

use chatcore::wire::{Ask, Command, DecodeError, IdleArg, LineDecoder, ServerLine};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use crate::frontend::{Frontend, InputEvent, Request};
use crate::interrupt::Interrupts;
use crate::render::{render, sanitize, HELP};
use crate::seen::SeenIds;

/// The longest server line accepted. Generous: a `WHO` list on a big server
/// is long, and the server is trusted to frame its lines.
pub const MAX_SERVER_LINE: usize = 1 << 20;

/// How long to wait for `BYE logout` after sending `logout`.
pub const LOGOUT_WAIT: Duration = Duration::from_secs(2);

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

#[derive(Debug)]
enum Phase {
    LoggingIn,
    LoggedIn,
    /// `logout` sent; the session ends at `BYE`, at the server's close, or
    /// at the deadline, whichever comes first.
    LoggingOut(Instant),
}

/// Whether the session goes on.
enum Flow {
    Go,
    Exit(i32),
}

struct Session<'a> {
    fe: &'a Frontend,
    to_server: UnboundedSender<String>,
    phase: Phase,
    /// `--user`: answers the first `ASK username` only, so a failed login
    /// asks the person instead of repeating a wrong name.
    user_answer: Option<String>,
    seen: SeenIds,
}

/// Runs the session to its end and returns the exit status: 0 after `BYE`
/// or the person leaving, 1 when the connection is lost. `stream` is a TCP
/// stream (with `TCP_NODELAY` set by the caller) or a TLS stream over one.
pub async fn run<S>(
    stream: S,
    user: Option<String>,
    fe: &mut Frontend,
    interrupts: &mut Interrupts,
) -> i32
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (to_server, lines) = unbounded_channel();
    tokio::spawn(write_lines(writer, lines));
    let mut events = std::mem::replace(&mut fe.events, unbounded_channel().1);
    let mut s = Session {
        fe,
        to_server,
        phase: Phase::LoggingIn,
        user_answer: user,
        seen: SeenIds::default(),
    };
    let mut decoder = LineDecoder::new(MAX_SERVER_LINE);
    let mut buf = vec![0u8; 64 * 1024];
    // The input thread ends after Ctrl-D or the end of stdin (having said
    // so); its closed channel must not read as further ends.
    let mut input_open = true;
    loop {
        let deadline = match s.phase {
            Phase::LoggingOut(at) => Some(at),
            _ => None,
        };
        let flow = tokio::select! {
            r = reader.read(&mut buf) => match r {
                Ok(0) | Err(_) => s.lost(),
                Ok(n) => {
                    let mut input = &buf[..n];
                    let mut flow = Flow::Go;
                    while let Some(item) = decoder.decode(&mut input) {
                        flow = s.on_line(item);
                        if let Flow::Exit(_) = flow {
                            break;
                        }
                    }
                    flow
                }
            },
            e = events.recv(), if input_open => match e {
                Some(e) => s.on_input(e),
                // The thread said Eof or Interrupt before it ended.
                None => {
                    input_open = false;
                    Flow::Go
                }
            },
            () = interrupts.recv() => s.quit(),
            () = sleep_until(deadline) => {
                s.fe.output.line("the server did not confirm the logout; leaving anyway");
                Flow::Exit(0)
            }
        };
        if let Flow::Exit(code) = flow {
            return code;
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
            _ => {}
        }
        if let Some(words) = render(&line, &chrono::Local) {
            self.show(words);
        }
        match line {
            ServerLine::LoggedIn { user } => {
                self.phase = Phase::LoggedIn;
                self.ask(Request::Commands { user });
                Flow::Go
            }
            ServerLine::Bye(_) => Flow::Exit(0),
            _ => Flow::Go,
        }
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
                    Typed::Send(cmd) => {
                        if Command::parse(&cmd) == Ok(Command::Logout) {
                            self.phase = Phase::LoggingOut(Instant::now() + LOGOUT_WAIT);
                        }
                        self.send(cmd);
                    }
                }
                Flow::Go
            }
            InputEvent::Eof | InputEvent::Interrupt => self.quit(),
        }
    }

    /// Ctrl-C, Ctrl-D or the end of stdin: log out politely when logged
    /// in; before that there is nothing to log out of.
    fn quit(&mut self) -> Flow {
        match self.phase {
            Phase::LoggingIn => Flow::Exit(0),
            Phase::LoggedIn => {
                self.send(Command::Logout.to_string());
                self.phase = Phase::LoggingOut(Instant::now() + LOGOUT_WAIT);
                Flow::Go
            }
            // Asked twice: stop waiting.
            Phase::LoggingOut(_) => Flow::Exit(0),
        }
    }

    /// The connection ended without `BYE`.
    fn lost(&mut self) -> Flow {
        match self.phase {
            Phase::LoggingOut(_) => Flow::Exit(0),
            _ => {
                self.show("the connection to the server was lost");
                Flow::Exit(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, BufReader, Lines};
    use tokio::net::tcp::OwnedReadHalf;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::output::Output;

    /// Runs a session against `script`, a fake server given the accepted
    /// socket, with `typed` as the person's command lines (the password
    /// answer is `pw`). Returns the exit status and what was shown.
    async fn session_with<F, Fut>(typed: &'static [&'static str], script: F) -> (i32, Vec<String>)
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
        let (events_tx, events) = unbounded_channel();
        std::thread::spawn(move || {
            for r in rx {
                match r {
                    Request::Username => panic!("--user answers the name"),
                    Request::Password => events_tx.send(InputEvent::Answer("pw".into())).unwrap(),
                    Request::Commands { .. } => {
                        for line in typed {
                            events_tx.send(InputEvent::Line((*line).into())).unwrap();
                        }
                    }
                }
            }
        });
        let mut fe = Frontend {
            output: Output::spawn(Box::new(move |l| sink.lock().unwrap().push(l))),
            requests,
            events,
            #[cfg(unix)]
            saved_termios: None,
        };
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut interrupts = Interrupts::new().unwrap();
        let code = run(stream, Some("alice".into()), &mut fe, &mut interrupts).await;
        fe.output.flush(Duration::from_secs(5));
        server.await.unwrap();
        let shown = shown.lock().unwrap().clone();
        (code, shown)
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
