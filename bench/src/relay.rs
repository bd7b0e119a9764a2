//! The baseline: a bare tokio line relay with chatd's framing (`\n` lines
//! through [`LineDecoder`]) and write batching (a writer task per connection
//! drains its queue into one write), and none of chat's rules: no passwords,
//! no persistence, no heartbeats, no flood control, no limits.
//!
//! It writes CHAT/1 server lines, byte for byte the size of chatd's, so the
//! same client measures both:
//!
//! - the first line names the connection: `<name>` → `OK login <name>`,
//!   then `OFFLINE <n>` and the `<n>` lines held for that name, if any;
//! - `to <name> <text>` → `MSG <seq> <ts> <from> <text>` to `<name>` if it is
//!   connected, else held in memory; `OK message <name> delivered|queued
//!   offline` to the sender;
//! - `all <text>` → `BCAST <seq> <ts> <from> <text>` to every connection,
//!   the sender's included; `OK broadcast <n> 0` to the sender;
//! - `idle ...` is ignored, `logout` → `BYE logout` and close, anything else
//!   → `ERR unknown-command <word>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chatcore::wire::{DecodeError, LineDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The timestamp field of relayed lines: a constant of chatd's width (the
/// relay keeps no clock).
pub const TS: &str = "2026-01-01T00:00:00Z";

/// The longest line accepted, as chatd's default `max_line_bytes`.
pub const MAX_LINE: usize = 4096;

type Tx = mpsc::UnboundedSender<Arc<str>>;

#[derive(Default)]
struct Entry {
    tx: Option<(u64, Tx)>,
    held: Vec<Arc<str>>,
}

#[derive(Default)]
struct Shared {
    names: Mutex<HashMap<String, Entry>>,
    seq: AtomicU64,
    conns: AtomicU64,
}

impl Shared {
    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let shared = Arc::new(Shared::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            // Out of descriptors and the like: wait and go on.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(connection(stream, Arc::clone(&shared)));
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let conn = shared.conns.fetch_add(1, Ordering::Relaxed);
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel::<Arc<str>>();
    let writer = tokio::spawn(write_loop(wr, rx));
    let mut dec = LineDecoder::new(MAX_LINE);
    let mut buf = vec![0u8; MAX_LINE];
    let mut me: Option<String> = None;
    'read: loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut input = &buf[..n];
        while let Some(line) = dec.decode(&mut input) {
            let line = match line {
                Ok(l) => l,
                Err(DecodeError::LineTooLong { max }) => {
                    let _ = tx.send(format!("ERR line-too-long {max}\n").into());
                    continue;
                }
                Err(DecodeError::BadEncoding) => {
                    let _ = tx.send("ERR bad-encoding\n".into());
                    continue;
                }
            };
            match &me {
                None => {
                    let name = line.trim();
                    if name.is_empty() {
                        continue;
                    }
                    login(&shared, name, conn, &tx);
                    me = Some(name.to_string());
                }
                Some(name) => {
                    if !command(&shared, name, &line, &tx) {
                        break 'read;
                    }
                }
            }
        }
    }
    if let Some(name) = me {
        let mut names = shared.names();
        if let Some(e) = names.get_mut(&name) {
            if e.tx.as_ref().is_some_and(|(c, _)| *c == conn) {
                e.tx = None;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn login(shared: &Shared, name: &str, conn: u64, tx: &Tx) {
    let mut names = shared.names();
    let e = names.entry(name.to_string()).or_default();
    e.tx = Some((conn, tx.clone()));
    let _ = tx.send(format!("OK login {name}\n").into());
    if !e.held.is_empty() {
        let held = std::mem::take(&mut e.held);
        let _ = tx.send(format!("OFFLINE {}\n", held.len()).into());
        for line in held {
            let _ = tx.send(line);
        }
    }
}

/// Runs one command; `false` ends the connection.
fn command(shared: &Shared, me: &str, line: &str, tx: &Tx) -> bool {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "to" => {
            let Some((to, text)) = rest.split_once(' ') else {
                let _ = tx.send("ERR usage to <name> <text>\n".into());
                return true;
            };
            let seq = shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let msg: Arc<str> = format!("MSG {seq} {TS} {me} {text}\n").into();
            let reply = {
                let mut names = shared.names();
                let e = names.entry(to.to_string()).or_default();
                match &e.tx {
                    Some((_, t)) if t.send(Arc::clone(&msg)).is_ok() => "delivered",
                    _ => {
                        e.held.push(msg);
                        "queued offline"
                    }
                }
            };
            let _ = tx.send(format!("OK message {to} {reply}\n").into());
        }
        "all" => {
            let seq = shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let msg: Arc<str> = format!("BCAST {seq} {TS} {me} {rest}\n").into();
            let mut n = 0usize;
            for e in shared.names().values() {
                if let Some((_, t)) = &e.tx {
                    if t.send(Arc::clone(&msg)).is_ok() {
                        n += 1;
                    }
                }
            }
            let _ = tx.send(format!("OK broadcast {n} 0\n").into());
        }
        "idle" | "" => {}
        "logout" => {
            let _ = tx.send("BYE logout\n".into());
            return false;
        }
        other => {
            let _ = tx.send(format!("ERR unknown-command {other}\n").into());
        }
    }
    true
}

async fn write_loop(mut w: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Arc<str>>) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    while let Some(first) = rx.recv().await {
        buf.extend_from_slice(first.as_bytes());
        while buf.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(l) => buf.extend_from_slice(l.as_bytes()),
                Err(_) => break,
            }
        }
        if w.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
        if buf.capacity() > 256 * 1024 {
            buf = Vec::with_capacity(4096);
        }
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{connect_login, Kind};
    use crate::users;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::AsyncBufReadExt;

    async fn start() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l));
        addr
    }

    fn strip_ids(lines: &[String]) -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                let mut f: Vec<&str> = l.splitn(3, ' ').collect();
                if f[0] == "MSG" || f[0] == "BCAST" {
                    f[1] = "#";
                }
                f.join(" ")
            })
            .collect()
    }

    #[tokio::test]
    async fn relays_private_broadcast_and_held_lines() {
        // Sessions are read by hand, line by line: each expected line is a
        // barrier, so nothing waits on a sleep.
        let addr = start().await;
        let acc = users::plain("r", 3);
        let mut a = connect_login(Kind::Relay, addr, &acc[0]).await.unwrap();
        let mut b = connect_login(Kind::Relay, addr, &acc[1]).await.unwrap();
        for line in [
            Kind::Relay.private("r00001", "hello b"),
            Kind::Relay.private("r00002", "held for c"),
            Kind::Relay.broadcast("to all"),
            "idle 3".into(),
            "dance".into(),
        ] {
            a.send_line_for_test(&line).await;
        }
        let mut got_a = Vec::new();
        for _ in 0..5 {
            got_a.push(a.next_line_for_test().await);
        }
        assert_eq!(
            strip_ids(&got_a),
            [
                "OK message r00001 delivered",
                "OK message r00002 queued offline",
                &format!("BCAST # {TS} r00000 to all"),
                "OK broadcast 2 0",
                "ERR unknown-command dance",
            ]
        );
        let got_b = vec![b.next_line_for_test().await, b.next_line_for_test().await];
        assert_eq!(
            strip_ids(&got_b),
            [
                format!("MSG # {TS} r00000 hello b"),
                format!("BCAST # {TS} r00000 to all"),
            ]
        );
        // c logs in after the message for it was held.
        let mut c = connect_login(Kind::Relay, addr, &acc[2]).await.unwrap();
        let got_c = vec![c.next_line_for_test().await, c.next_line_for_test().await];
        assert_eq!(
            strip_ids(&got_c),
            [
                "OFFLINE 1".to_string(),
                format!("MSG # {TS} r00000 held for c")
            ]
        );
    }

    #[tokio::test]
    async fn frames_by_newline_not_by_read() {
        let addr = start().await;
        let mut bob = TcpStream::connect(addr).await.unwrap();
        bob.write_all(b"bob\n").await.unwrap();
        let mut bob = tokio::io::BufReader::new(bob);
        let mut line = String::new();
        bob.read_line(&mut line).await.unwrap();
        assert_eq!(line, "OK login bob\n");

        let mut alice = TcpStream::connect(addr).await.unwrap();
        // One line over many writes, and many lines in one write.
        for part in [
            &b"al"[..],
            b"ice\nto bob h",
            b"i\r",
            b"\nto bob one\nto bob two\n",
        ] {
            alice.write_all(part).await.unwrap();
            alice.flush().await.unwrap();
            // Not a wait for anything: it only makes the relay likely to see
            // each part in a read of its own. The assertions hold however
            // the parts are merged, so a loaded machine cannot fail this.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            line.clear();
            bob.read_line(&mut line).await.unwrap();
            got.push(line.splitn(5, ' ').last().unwrap().to_string());
        }
        assert_eq!(got, ["hi\n", "one\n", "two\n"]);
        // An over-long line is refused, and the connection goes on.
        let long = vec![b'x'; MAX_LINE + 10];
        alice.write_all(&long).await.unwrap();
        alice.write_all(b"\nlogout\n").await.unwrap();
        let mut rest = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut alice, &mut rest)
            .await
            .unwrap();
        assert!(
            rest.ends_with(&format!("ERR line-too-long {MAX_LINE}\nBYE logout\n")),
            "{rest}"
        );
    }

    #[tokio::test]
    async fn batches_many_queued_lines_into_few_writes() {
        // A receiver that is not reading gets its lines batched: 2000 lines
        // queued while it sleeps all arrive, in order.
        let addr = start().await;
        let acc = users::plain("q", 2);
        let mut rx = connect_login(Kind::Relay, addr, &acc[0]).await.unwrap();
        let tx = connect_login(Kind::Relay, addr, &acc[1]).await.unwrap();
        let tx = tx.spawn(crate::client::Ignore);
        for i in 0..2000 {
            tx.out.send(Kind::Relay.private("q00000", &format!("n{i}")));
        }
        for i in 0..2000 {
            let l = rx.next_line_for_test().await;
            assert!(l.ends_with(&format!(" q00001 n{i}")), "{l}");
        }
        tx.abort();
    }
}
