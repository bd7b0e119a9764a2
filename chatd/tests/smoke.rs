//! Smoke tests of the server (`chatd::prepare`, then `Prepared::run`) in-process on port 0: the driver's own
//! duties (framing, shutdown, connection limits, slow readers, the store
//! across restarts). The protocol itself is tested end to end in the
//! workspace's `tests/`.

use std::time::Duration;

use chatcore::Accounts;
use chatd::{MemoryStore, Settings, SqliteStore};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

mod common;

use common::{TestServer, WAIT};

fn accounts() -> Accounts {
    Accounts::parse("alice a\nbob b\ncarol c\n").unwrap()
}

fn settings() -> Settings {
    let mut s = Settings {
        port: 0,
        ..Settings::default()
    };
    s.core.heartbeat = Duration::from_millis(500);
    s.core.heartbeat_timeout = Duration::from_secs(5);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_message_and_shutdown() {
    let server = TestServer::start(settings(), accounts(), Box::new(MemoryStore::default())).await;
    let mut alice = server.connect().await;
    alice.login("alice", "a").await;
    let mut bob = server.connect().await;
    bob.login("bob", "b").await;
    // One line over several writes, and several lines in one write.
    alice.send_raw("mess").await;
    alice.send_raw("age bob hi\r").await;
    alice.send_raw("\nwhoelse\n").await;
    let msg = bob.reply().await.unwrap();
    assert!(
        msg.starts_with("MSG ") && msg.ends_with(" alice hi"),
        "{msg}"
    );
    alice.expect("OK message bob delivered").await;
    alice.expect("WHO bob").await;
    server.stop().await.unwrap();
    alice.expect("BYE shutdown").await;
    assert_eq!(alice.reply().await, None);
    bob.expect("BYE shutdown").await;
    assert_eq!(bob.reply().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused() {
    let mut s = settings();
    s.max_connections_per_ip = 2;
    let server = TestServer::start(s, accounts(), Box::new(MemoryStore::default())).await;
    let mut one = server.connect().await;
    one.expect("HELLO CHAT/1").await;
    let mut two = server.connect().await;
    two.expect("HELLO CHAT/1").await;
    let mut three = server.connect().await;
    three.expect("ERR rate-limited too many connections").await;
    assert_eq!(three.line().await, None);
    // A place frees up when a connection goes.
    drop(one);
    let mut four = None;
    for _ in 0..50 {
        let mut c = server.connect().await;
        if c.line().await.as_deref() == Some("HELLO CHAT/1") {
            four = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(four.is_some(), "a freed place is reused");
    drop(two);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        settings(),
        accounts(),
        Box::new(SqliteStore::open(dir.path()).unwrap()),
    )
    .await;
    let mut alice = server.connect().await;
    alice.login("alice", "a").await;
    alice
        .send_raw("message bob first\nmessage bob second\n")
        .await;
    alice.expect("OK message bob queued offline").await;
    alice.expect("OK message bob queued offline").await;
    server.stop().await.unwrap();

    let server = TestServer::start(
        settings(),
        accounts(),
        Box::new(SqliteStore::open(dir.path()).unwrap()),
    )
    .await;
    let mut bob = server.connect().await;
    bob.login("bob", "b").await;
    bob.expect("OFFLINE 2").await;
    let first = bob.reply().await.unwrap();
    let second = bob.reply().await.unwrap();
    assert!(first.ends_with(" alice first"), "{first}");
    assert!(second.ends_with(" alice second"), "{second}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_dropped() {
    let mut s = settings();
    s.max_outbound_bytes = 64 * 1024;
    // Long enough that the core's own liveness check cannot be what drops
    // bob: the outbound bound must.
    s.core.heartbeat = Duration::from_secs(1);
    s.core.heartbeat_timeout = Duration::from_secs(600);
    s.core.flood = None;
    let started = std::time::Instant::now();
    let server = TestServer::start(s, accounts(), Box::new(MemoryStore::default())).await;
    let mut bob = server.connect().await;
    bob.login("bob", "b").await;
    // Bob stops reading. Alice sends until the server gives up on him.
    let mut alice = server.connect().await;
    alice.login("alice", "a").await;
    let text = "x".repeat(3000);
    let (mut r, mut w) = (alice.r, alice.w);
    let writer = tokio::spawn(async move {
        for _ in 0..20_000 {
            let line = format!("message bob {text}\n");
            if w.write_all(line.as_bytes()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        w
    });
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut line = String::new();
        loop {
            line.clear();
            let n = r.read_line(&mut line).await.unwrap();
            assert!(n > 0, "alice stays connected");
            if line.starts_with("OK message bob queued offline") {
                return;
            }
        }
    })
    .await
    .expect("the server gives up on bob in time");
    writer.abort();
    assert!(started.elapsed() < Duration::from_secs(60));
    // Bob's connection was closed: reading what is left ends in EOF (or a reset).
    let mut sink = vec![0u8; 1 << 16];
    let mut bob_r = bob.r.into_inner();
    let eof = tokio::time::timeout(WAIT, async {
        loop {
            match bob_r.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "bob's connection is closed");
    server.stop().await.unwrap();
}
