//! A blocking `std::net` driver keeping the rules of `chatcore::guide`: a
//! mutex owns the `Server`, each connection has a reader and a writer thread,
//! a timer thread wakes the core for deadlines. `cargo run -p chatcore
//! --example std_driver`, then `nc 127.0.0.1 4119` (`alice`, `wonderland`).
//! A real driver adds argon2 checks outside the lock (unknown names checked
//! against a dummy credential, for the same cost), a durable store committed
//! before each round's lines go out, and connection limits.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

use chatcore::wire::LineDecoder;
use chatcore::{Accounts, Config, Input, Output, Server, SessionId, StoreModel, Time};

/// A write blocked this long, or a queue this many lines long, is a peer
/// that stopped reading: it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const QUEUE_LINES: usize = 1024;
/// How long a closed connection reads on, so that the peer's late bytes do
/// not make the kernel reset the connection and destroy the `BYE`.
const LINGER: Duration = Duration::from_secs(1);

struct Core {
    server: Server,
    conns: HashMap<SessionId, SyncSender<String>>,
    db: StoreModel, // the store, in memory here
}

/// The condvar wakes the timer thread: an input may move the next deadline.
type Shared = Arc<(Mutex<Core>, Condvar)>;

fn now() -> Time {
    Time::from_system(SystemTime::now())
}

/// Serves CHAT/1 on `listener` for ever.
pub fn serve(listener: TcpListener, accounts: Accounts) {
    let server = Server::new(now(), Config::default(), accounts);
    let (conns, db) = (HashMap::new(), StoreModel::default());
    let shared: Shared = Arc::new((Mutex::new(Core { server, conns, db }), Condvar::new()));
    let timers = Arc::clone(&shared);
    thread::spawn(move || {
        let mut core = timers.0.lock().unwrap();
        loop {
            let next = core.server.poll_timeout();
            let wait = next.map_or(Duration::from_secs(3600), |at| at.since(now()));
            core = timers.1.wait_timeout(core, wait).unwrap().0;
            core.server.handle_timeout(now()); // early or repeated calls do nothing
            core.drain();
        }
    });
    for stream in listener.incoming().flatten() {
        let (Ok(peer), Ok(reader)) = (stream.peer_addr(), stream.try_clone()) else {
            continue;
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let mut core = shared.0.lock().unwrap();
        let session = core.server.open_session(now(), peer.ip());
        let max = core.server.config().max_line_bytes;
        core.conns.insert(session, tx);
        core.drain();
        drop(core);
        shared.1.notify_one(); // its login timeout may be the next deadline
        let (for_reader, for_writer) = (Arc::clone(&shared), Arc::clone(&shared));
        thread::spawn(move || read_lines(reader, session, max, &for_reader));
        thread::spawn(move || write_lines(&stream, &rx, session, &for_writer));
    }
}

/// Hands the core one input and acts on what it says.
fn feed(shared: &Shared, input: Input) {
    let mut core = shared.0.lock().unwrap();
    if let Input::Closed { session } = input {
        core.conns.remove(&session); // the core sends it nothing more
    }
    core.server.handle_input(now(), input);
    core.drain();
    shared.1.notify_one();
}

impl Core {
    /// Acts on every output, in order.
    fn drain(&mut self) {
        let t = self.server.now();
        while let Some(output) = self.server.poll_output() {
            match output {
                Output::Send { session, line } => self.queue(session, line.to_string()),
                // Only with `Config::held_page_size` set, which this driver
                // leaves off (boxes come in one page).
                Output::NotifyWritten { .. } => {}
                // Its writer writes what is queued, then closes.
                Output::Close { session } => drop(self.conns.remove(&session)),
                // Applied before any line is written: barriers wait for nothing.
                Output::Persist(op) => self.db.apply(&op),
                Output::Barrier { .. } | Output::Event(_) => {}
                Output::CheckPassword(c) => {
                    // Plain text only, verified here: see the module doc.
                    let ok = c
                        .credential
                        .as_ref()
                        .and_then(|cr| cr.verify_plain(&c.password));
                    self.server.handle_input(t, c.answer(ok == Some(true)));
                }
                Output::LoadHeld(r) => {
                    let messages = self.db.held_page(&r.user, r.after, r.upto, r.max);
                    let (session, load) = (r.session, r.load);
                    let answer = Input::HeldLoaded {
                        session,
                        load,
                        messages,
                    };
                    self.server.handle_input(t, answer);
                }
            }
        }
    }

    /// Hands a connection's writer its next entry; a full queue is a peer
    /// that stopped reading.
    fn queue(&mut self, session: SessionId, line: String) {
        if let Some(Err(_)) = self.conns.get(&session).map(|q| q.try_send(line)) {
            self.conns.remove(&session);
            self.server
                .handle_input(self.server.now(), Input::Closed { session });
        }
    }
}

/// Feeds the core the peer's lines until it stops sending.
fn read_lines(mut r: TcpStream, session: SessionId, max: usize, shared: &Shared) {
    let (mut decoder, mut buf) = (LineDecoder::new(max), [0; 4096]);
    loop {
        let mut bytes = match r.read(&mut buf) {
            Ok(0) => return feed(shared, Input::InputEnded { session }),
            Ok(n) => &buf[..n],
            Err(_) => return feed(shared, Input::Closed { session }),
        };
        while let Some(line) = decoder.decode(&mut bytes) {
            let input = match line {
                Ok(line) => Input::Line { session, line },
                Err(error) => Input::Malformed { session, error },
            };
            feed(shared, input);
        }
    }
}

/// Writes the core's lines until it drops the queue, then closes.
fn write_lines(mut w: &TcpStream, rx: &Receiver<String>, session: SessionId, shared: &Shared) {
    w.set_write_timeout(Some(WRITE_TIMEOUT)).ok();
    w.set_nodelay(true).ok();
    for line in rx {
        if w.write_all(format!("{line}\n").as_bytes()).is_err() {
            feed(shared, Input::Closed { session });
            break;
        }
    }
    // Shut our side down so the peer reads the `BYE` to its end, and close
    // once the reader has read on for `LINGER` (which also ends it).
    w.shutdown(Shutdown::Write).ok();
    thread::sleep(LINGER);
    w.shutdown(Shutdown::Both).ok();
}

fn main() {
    let listener = TcpListener::bind("127.0.0.1:4119").expect("port 4119 free");
    let accounts = Accounts::parse("alice wonderland\nbob builder\n").expect("valid accounts");
    serve(listener, accounts);
}
