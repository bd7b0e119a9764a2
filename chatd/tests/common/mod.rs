//! The in-process harness chatd's own tests share: the server started with
//! `chatd::prepare(...).run(...)` on port 0 with any `Store`, and a raw
//! line client. (The workspace's `tests/` drive the real binary instead.)
// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::time::Duration;

use chatcore::Accounts;
use chatd::{RunError, Settings, Store};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for one expected line or for the server to stop.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process on a port the system picked.
pub struct TestServer {
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    /// How `run` ends, once it does.
    pub task: JoinHandle<Result<(), RunError>>,
}

impl TestServer {
    pub async fn start(
        settings: Settings,
        accounts: Accounts,
        store: Box<dyn Store>,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            chatd::prepare(settings, accounts, store)
                .await?
                .run(listener, shutdown)
                .await
        });
        TestServer {
            port,
            stop: Some(stop),
            task,
        }
    }

    pub async fn connect(&self) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let (r, w) = stream.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    pub async fn login(&self, user: &str, password: &str) -> Client {
        let mut c = self.connect().await;
        c.login(user, password).await;
        c
    }

    /// Asks the server to stop and returns how `run` ended.
    pub async fn stop(mut self) -> Result<(), RunError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops in time")
            .unwrap()
    }
}

/// A raw CHAT/1 connection.
pub struct Client {
    pub r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
}

impl Client {
    /// Writes `text` as it is (no `\n` added).
    pub async fn send_raw(&mut self, text: &str) {
        self.w.write_all(text.as_bytes()).await.unwrap();
    }

    /// Writes one line.
    pub async fn send(&mut self, line: &str) {
        self.send_raw(&format!("{line}\n")).await;
    }

    /// The next line within `within`: `Ok(None)` at EOF, `Err` on timeout.
    /// A failed read (a reset) fails the test: the server closes cleanly.
    pub async fn line_within(&mut self, within: Duration) -> Result<Option<String>, ()> {
        let mut line = String::new();
        match tokio::time::timeout(within, self.r.read_line(&mut line)).await {
            Err(_) => Err(()),
            Ok(Ok(0)) => Ok(None),
            Ok(Ok(_)) => Ok(Some(line.trim_end_matches('\n').to_string())),
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }

    /// Whether the connection ends without another line, by EOF or by a
    /// reset: a connection the server drops (for not reading, or because
    /// it stops on a store failure) is aborted with whatever the peer sent
    /// still unread, and the kernel answers that with a reset, not a FIN.
    pub async fn dropped(&mut self) -> bool {
        let mut line = String::new();
        match tokio::time::timeout(WAIT, self.r.read_line(&mut line)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Err(_) | Ok(Ok(_)) => false,
        }
    }

    /// The next line, `None` at EOF.
    pub async fn line(&mut self) -> Option<String> {
        self.line_within(WAIT).await.expect("a line in time")
    }

    /// The next line that is not a heartbeat probe, `None` at EOF.
    pub async fn reply(&mut self) -> Option<String> {
        loop {
            let line = self.line().await?;
            if !line.starts_with("IDLE ") {
                return Some(line);
            }
        }
    }

    /// The next line, probes skipped, is `want`.
    pub async fn expect(&mut self, want: &str) {
        assert_eq!(self.reply().await.as_deref(), Some(want));
    }

    pub async fn login(&mut self, user: &str, password: &str) {
        self.expect("HELLO CHAT/1").await;
        self.expect("ASK username").await;
        self.send(user).await;
        self.expect("ASK password").await;
        self.send(password).await;
        self.expect(&format!("OK login {user}")).await;
    }

    /// Nothing arrives for a while. Absence can only be checked by
    /// waiting: a slow machine can make this pass wrongly, never fail
    /// wrongly.
    pub async fn expect_silence(&mut self) {
        let got = self.line_within(Duration::from_millis(300)).await;
        assert!(got.is_err(), "expected nothing yet, got {got:?}");
    }
}
