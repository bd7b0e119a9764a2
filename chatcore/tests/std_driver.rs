//! The `std_driver` example, run over loopback: a few CHAT/1 exchanges
//! through real sockets, so the example keeps working as the core changes.
//! Every step waits for a reply, never for a fixed time.

#[allow(dead_code)] // `main` is the example's, not the test's
#[path = "../examples/std_driver.rs"]
mod std_driver;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use chatcore::Accounts;

/// How long a test waits for one line before failing instead of hanging.
/// Generous: replies take milliseconds, but the machine is shared and loaded.
const REPLY_WAIT: Duration = Duration::from_secs(20);

fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accounts = Accounts::parse("alice wonderland\nbob builder\n").unwrap();
    std::thread::spawn(move || std_driver::serve(listener, accounts));
    addr
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let writer = TcpStream::connect(addr).unwrap();
        writer.set_read_timeout(Some(REPLY_WAIT)).unwrap();
        let reader = BufReader::new(writer.try_clone().unwrap());
        let mut client = Client { reader, writer };
        client.expect("HELLO CHAT/1");
        client.expect("ASK username");
        client
    }

    fn login(addr: SocketAddr, user: &str, password: &str) -> Client {
        let mut client = Client::connect(addr);
        client.send(user);
        client.expect("ASK password");
        client.send(password);
        client.expect(&format!("OK login {user}"));
        client
    }

    fn send(&mut self, line: &str) {
        self.send_bytes(format!("{line}\n").as_bytes());
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// The next line, `None` at the end of the stream.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("a line in time");
        (n > 0).then(|| line.trim_end_matches('\n').to_string())
    }

    /// The next line that is not a heartbeat probe.
    fn reply(&mut self) -> String {
        loop {
            let line = self.line().expect("a reply, not the end of the stream");
            if !line.starts_with("IDLE ") {
                return line;
            }
        }
    }

    fn expect(&mut self, want: &str) {
        assert_eq!(self.reply(), want);
    }
}

#[test]
fn two_users_log_in_and_talk() {
    let addr = start();
    let mut alice = Client::login(addr, "alice", "wonderland");
    let mut bob = Client::login(addr, "bob", "builder");
    alice.send("message bob hello bob");
    alice.expect("OK message bob delivered");
    let delivery = bob.reply();
    assert!(delivery.starts_with("MSG "), "{delivery}");
    assert!(delivery.ends_with(" alice hello bob"), "{delivery}");
    bob.send("whoelse");
    bob.expect("WHO alice");
}

#[test]
fn a_delivery_is_followed_by_a_confirming_probe() {
    // The probe comes `confirm_delay` after the delivery: only a driver
    // that wakes the core at `poll_timeout` sends it.
    let addr = start();
    let mut alice = Client::login(addr, "alice", "wonderland");
    let mut bob = Client::login(addr, "bob", "builder");
    alice.send("message bob ping");
    alice.expect("OK message bob delivered");
    assert!(bob.line().unwrap().starts_with("MSG "));
    assert_eq!(bob.line().unwrap(), "IDLE 1");
    bob.send("idle 1");
}

#[test]
fn bad_lines_get_an_error_and_the_session_goes_on() {
    let addr = start();
    let mut alice = Client::login(addr, "alice", "wonderland");
    alice.send("dance");
    alice.expect("ERR unknown-command dance");
    alice.send_bytes(b"message bob \x1b[2J\n");
    alice.expect("ERR bad-encoding");
    alice.send(&"x".repeat(5000));
    alice.expect("ERR line-too-long 4096");
    alice.send("whoelse");
    alice.expect("WHO");
}

#[test]
fn logout_gets_bye_and_then_the_end_of_the_stream() {
    let addr = start();
    let mut alice = Client::login(addr, "alice", "wonderland");
    alice.send("logout");
    alice.expect("BYE logout");
    assert_eq!(alice.line(), None, "the server closes after BYE");
}

#[test]
fn a_message_to_an_offline_user_waits_for_the_login() {
    let addr = start();
    let mut alice = Client::login(addr, "alice", "wonderland");
    alice.send("message bob are you there?");
    alice.expect("OK message bob queued offline");
    let mut bob = Client::login(addr, "bob", "builder");
    bob.expect("OFFLINE 1");
    let held = bob.reply();
    assert!(held.ends_with(" alice are you there?"), "{held}");
}

#[test]
fn a_wrong_password_is_refused() {
    let addr = start();
    let mut mallory = Client::connect(addr);
    mallory.send("alice");
    mallory.expect("ASK password");
    mallory.send("guess");
    mallory.expect("ERR bad-credentials");
    mallory.expect("ASK username");
    mallory.send("nobody");
    mallory.expect("ASK password");
    mallory.send("guess");
    mallory.expect("ERR bad-credentials");
}
