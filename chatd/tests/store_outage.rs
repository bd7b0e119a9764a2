//! A store that cannot write (a full disk) does not take the server down:
//! what must be durable is refused with `ERR unavailable`, everything else
//! goes on, and once a commit succeeds again everything works without a
//! restart. Failures that leave the store's state unknown (a failed fsync)
//! still stop the server. Runs the server (`chatd::prepare`, then `Prepared::run`) in-process with a store that
//! fails on demand.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatcore::{Accounts, Message, MessageId, Restored, StoreModel, StoreOp};
use chatd::{RunError, Settings, Store, StoreError};
use rusqlite::ffi;

mod common;

use common::{Client, TestServer, WAIT};

/// What the fake store does with the next commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Works,
    /// `SQLITE_FULL`, as SQLite reports `ENOSPC`.
    DiskFull,
    /// `SQLITE_IOERR_FSYNC`.
    FsyncFails,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    /// Everything committed so far.
    committed: StoreModel,
    /// Commits refused so far.
    refused: usize,
}

/// A store in memory that fails on demand, shared with the test.
#[derive(Clone, Debug)]
struct Disk(Arc<Mutex<State>>);

impl Disk {
    fn new() -> Disk {
        Disk(Arc::new(Mutex::new(State {
            mode: Mode::Works,
            committed: StoreModel::default(),
            refused: 0,
        })))
    }

    fn set(&self, mode: Mode) {
        self.0.lock().unwrap().mode = mode;
    }

    fn committed(&self) -> StoreModel {
        self.0.lock().unwrap().committed.clone()
    }

    fn refused(&self) -> usize {
        self.0.lock().unwrap().refused
    }

    /// Waits until `n` commits in all were refused: the barrier that the
    /// round of a line whose reply is held back is done.
    async fn wait_refused(&self, n: usize) {
        tokio::time::timeout(WAIT, async {
            while self.refused() < n {
                // Polling shared state for an event, not waiting for time.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("a commit refused in time");
    }

    /// Waits until everything the server did so far is durable: the `OK`
    /// of a message waits for the commit of every change before it. (A
    /// login's changes are committed in the background, after `OK login`:
    /// a disk that fills up right after it would fail that commit.)
    async fn settle(&self, client: &mut Client, user: &str) {
        client.send(&format!("message {user} settle")).await;
        let ok = format!("OK message {user} delivered");
        loop {
            match client.reply().await {
                Some(line) if line == ok => return,
                Some(line) if line.starts_with("MSG ") => {}
                other => panic!("settling: unexpected {other:?}"),
            }
        }
    }

    /// Waits until the server knows the store cannot write: the first
    /// refusal, then a second one, which is the driver's retry, started
    /// only after it has handled the first (and told the core). A line sent
    /// right after the first refusal could still be handled before it.
    async fn wait_outage_noticed(&self) {
        self.wait_refused(2).await;
    }

    /// The texts held for `user`, in order.
    fn held_texts(&self, user: &str) -> Vec<String> {
        self.committed()
            .held
            .get(user)
            .map(|b| b.iter().map(|m| m.text.clone()).collect())
            .unwrap_or_default()
    }
}

/// The error SQLite gives, with its message.
fn sqlite_error(code: std::os::raw::c_int, message: &str) -> StoreError {
    StoreError::Sqlite {
        path: "/data/chatd.db".into(),
        source: rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some(message.into())),
    }
}

impl Store for Disk {
    fn load(&mut self) -> Result<Restored, StoreError> {
        Ok(self.committed().restored())
    }

    fn held_page(
        &mut self,
        user: &str,
        after: MessageId,
        upto: MessageId,
        max: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        Ok(self.committed().held_page(user, after, upto, max))
    }

    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let mut state = self.0.lock().unwrap();
        match state.mode {
            Mode::Works => {
                for op in ops {
                    state.committed.apply(op);
                }
                Ok(())
            }
            Mode::DiskFull => {
                state.refused += 1;
                Err(sqlite_error(ffi::SQLITE_FULL, "database or disk is full"))
            }
            Mode::FsyncFails => {
                state.refused += 1;
                Err(sqlite_error(ffi::SQLITE_IOERR_FSYNC, "disk I/O error"))
            }
        }
    }
}

async fn start(disk: &Disk) -> TestServer {
    start_with(disk, |_| {}).await
}

async fn start_with(disk: &Disk, tune: impl FnOnce(&mut Settings)) -> TestServer {
    let accounts = Accounts::parse("alice a\nbob b\ncarol c\ndave d\n").unwrap();
    let mut settings = Settings {
        port: 0,
        ..Settings::default()
    };
    // No probe may land in a round by chance: these tests decide which
    // sessions have lines in the round whose commit fails.
    settings.core.heartbeat = Duration::from_secs(600);
    settings.core.heartbeat_timeout = Duration::from_secs(1200);
    tune(&mut settings);
    let store: Box<dyn Store> = Box::new(disk.clone());
    TestServer::start(settings, accounts, store).await
}

/// An error and its causes, as chatd prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

const UNAVAILABLE: &str = "ERR unavailable the server's disk is full";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_messages_until_it_has_room_again() {
    let disk = Disk::new();
    let server = start(&disk).await;
    let mut alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;
    alice.send("message carol one").await;
    alice.expect("OK message carol queued offline").await;

    // The disk fills up: the commit of alice's message fails. Her `OK`
    // must wait until the message is durable; the server stays up.
    disk.set(Mode::DiskFull);
    alice.send("message carol two").await;
    disk.wait_outage_noticed().await;
    bob.send("whoelse").await;
    bob.expect("WHO alice").await;
    // From now on the core knows: a message is refused at once.
    bob.send("message carol three").await;
    bob.expect(UNAVAILABLE).await;
    bob.send("broadcast message all three again").await;
    bob.expect(UNAVAILABLE).await;
    // What needs no write works, logins included; sessions stay open.
    let mut dave = server.login("dave", "d").await;
    dave.send("whoelse").await;
    dave.expect("WHO alice bob").await;
    bob.send("wholast 5").await;
    let wholast = bob.line().await.unwrap();
    assert!(wholast.starts_with("LAST "), "{wholast}");
    // Alice's reply waits behind her unacknowledged message, in order.
    alice.send("whoelse").await;
    alice.expect_silence().await;
    assert_eq!(disk.held_texts("carol"), ["one"]);

    // Room again: the retry commits, alice's lines come in order, and
    // messages are accepted again without a restart.
    disk.set(Mode::Works);
    alice.expect("OK message carol queued offline").await;
    alice.expect("WHO bob dave").await;
    // The core may hear of the recovery a moment after alice's lines go
    // out; a refusal before that is fine, an `OK` must follow.
    loop {
        bob.send("message carol four").await;
        match bob.line().await.as_deref() {
            Some("OK message carol queued offline") => break,
            Some(UNAVAILABLE) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    dave.send("message carol five").await;
    dave.expect("OK message carol queued offline").await;
    assert_eq!(disk.held_texts("carol"), ["one", "two", "four", "five"]);
    server.stop().await.expect("a clean stop");

    // Everything acknowledged is in the store: carol gets it after a
    // restart, and nothing that was refused.
    let server = start(&disk).await;
    let mut carol = server.login("carol", "c").await;
    carol.expect("OFFLINE 4").await;
    for text in ["one", "two", "four", "five"] {
        let got = carol.line().await.unwrap();
        assert!(got.starts_with("MSG ") && got.ends_with(text), "{got}");
    }
    server.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_of_bookkeeping_only_holds_nothing_back() {
    let disk = Disk::new();
    let server = start(&disk).await;
    let mut alice = server.login("alice", "a").await;
    disk.settle(&mut alice, "alice").await;
    disk.set(Mode::DiskFull);
    // Bob's login records when he was seen: the first commit to fail. His
    // login is answered all the same; messages are refused.
    let mut bob = server.login("bob", "b").await;
    disk.wait_outage_noticed().await;
    bob.send("whoelse").await;
    bob.expect("WHO alice").await;
    alice.send("message bob hi").await;
    alice.expect(UNAVAILABLE).await;
    bob.send("logout").await;
    bob.expect("BYE logout").await;
    assert_eq!(bob.line().await, None);
    disk.set(Mode::Works);
    loop {
        alice.send("message bob hi").await;
        match alice.line().await.as_deref() {
            Some("OK message bob queued offline") => break,
            Some(UNAVAILABLE) => {
                // Polling for the retry (every second), not waiting blind.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The bookkeeping waited and was committed: bob was seen.
    assert!(disk.committed().last_seen.contains_key("bob"));
    server.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closed_while_the_disk_is_full_loses_nothing_acknowledged() {
    let disk = Disk::new();
    let server = start(&disk).await;
    let mut alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;
    // The first message reserves message ids: deliveries wait for that.
    alice.send("message bob first").await;
    alice.expect("OK message bob delivered").await;
    let got = bob.reply().await.unwrap();
    assert!(got.ends_with(" alice first"), "{got}");
    disk.set(Mode::DiskFull);
    // Bob is online: he reads the message at once, while the commit that
    // makes it durable fails; alice's `OK` waits for that commit.
    alice.send("message bob hello").await;
    let got = bob.reply().await.unwrap();
    assert!(got.ends_with(" alice hello"), "{got}");
    disk.wait_outage_noticed().await;
    let mut carol = server.login("carol", "c").await;
    carol.send("message bob refused").await;
    carol.expect(UNAVAILABLE).await;
    alice.expect_silence().await;
    // Bob goes away without confirming; he logs in again later.
    drop(bob);
    loop {
        carol.send("whoelse").await;
        match carol.line().await.as_deref() {
            Some("WHO alice") => break,
            Some("WHO alice bob") => continue, // not noticed yet
            other => panic!("unexpected {other:?}"),
        }
    }
    disk.set(Mode::Works);
    alice.expect("OK message bob delivered").await;
    let mut bob = server.connect().await;
    bob.login("bob", "b").await;
    // Neither delivery was confirmed: both come back, in order.
    bob.expect("OFFLINE 2").await;
    for text in [" alice first", " alice hello"] {
        let got = bob.line().await.unwrap();
        assert!(got.ends_with(text), "{got}");
    }
    server.stop().await.expect("a clean stop");
}

/// Lines held back for a session cost bounded memory: past
/// `max_outbound_bytes` the session is dropped, as a peer that stops
/// reading is, and the others carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_lines_are_bounded_per_session() {
    let disk = Disk::new();
    let server = start_with(&disk, |s| {
        s.max_outbound_bytes = 4096;
        s.core.flood = None;
    })
    .await;
    let mut alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;
    disk.settle(&mut alice, "alice").await;
    disk.set(Mode::DiskFull);
    alice.send("message carol held back").await;
    disk.wait_outage_noticed().await;
    // Each `WHO bob` waits behind alice's `OK`: 10 bytes each.
    for _ in 0..1000 {
        alice.send("whoelse").await;
    }
    // Nothing reached alice (her `OK` waits for the disk, and every
    // `WHO bob` behind it): she is dropped without a line.
    assert!(alice.dropped().await, "alice is dropped");
    bob.send("whoelse").await;
    loop {
        // Until the server has noticed alice is gone.
        match bob.line().await.as_deref() {
            Some("WHO") => break,
            Some("WHO alice") => bob.send("whoelse").await,
            other => panic!("unexpected {other:?}"),
        }
    }
    disk.set(Mode::Works);
    loop {
        bob.send("message carol after").await;
        match bob.line().await.as_deref() {
            Some("OK message carol queued offline") => break,
            Some(UNAVAILABLE) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Alice was never told, but her message was accepted and is kept.
    assert_eq!(disk.held_texts("carol"), ["held back", "after"]);
    server.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_while_the_disk_is_full_fails_and_acknowledges_nothing() {
    let disk = Disk::new();
    let server = start(&disk).await;
    let mut alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;
    disk.settle(&mut alice, "alice").await;
    disk.set(Mode::DiskFull);
    alice.send("message carol never acknowledged").await;
    disk.wait_outage_noticed().await;
    bob.send("message carol refused").await;
    bob.expect(UNAVAILABLE).await;
    let result = server.stop().await;
    let e = result.expect_err("the last commit failed");
    let text = chain(&e);
    assert!(text.contains("database or disk is full"), "{text}");
    // Bob had nothing waiting: he is told. Alice's lines were never sent
    // (a probe sent before her message may have been).
    bob.expect("BYE shutdown").await;
    assert_eq!(alice.reply().await, None);
    assert!(disk.held_texts("carol").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_server() {
    let disk = Disk::new();
    let server = start(&disk).await;
    let mut alice = server.login("alice", "a").await;
    disk.set(Mode::FsyncFails);
    alice.send("message carol in doubt").await;
    // Not acknowledged: the connection ends without an `OK`.
    assert!(
        alice.dropped().await,
        "alice's connection ends without a line"
    );
    let result = tokio::time::timeout(WAIT, server.task)
        .await
        .expect("the server stops by itself")
        .unwrap();
    assert!(matches!(result, Err(RunError::Store(_))), "{result:?}");
}
