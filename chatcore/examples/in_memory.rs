//! Two users chatting through `chatcore` with no sockets: the smallest
//! driver there is. Run it with `cargo run -p chatcore --example in_memory`.
//!
//! Each "connection" is an inbox of lines; time is a number we move by hand;
//! the store is the in-memory `StoreModel` the core's changes add up to.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chatcore::{Accounts, Config, Input, Output, Server, SessionId, StoreModel, Time};

struct Driver {
    server: Server,
    now: Time,
    inbox: BTreeMap<SessionId, Vec<String>>,
    names: BTreeMap<SessionId, &'static str>,
    store: StoreModel,
}

impl Driver {
    fn run_outputs(&mut self) {
        while let Some(output) = self.server.poll_output() {
            match output {
                Output::Send { session, line } => {
                    let who = self.names.get(&session).copied().unwrap_or("?");
                    println!("  to {who:<5} {line}");
                    self.inbox
                        .entry(session)
                        .or_default()
                        .push(line.to_string());
                }
                Output::Close { session } => {
                    println!(
                        "  close {}",
                        self.names.get(&session).copied().unwrap_or("?")
                    );
                }
                Output::CheckPassword(check) => {
                    let ok = check
                        .credential
                        .as_ref()
                        .and_then(|c| c.verify_plain(&check.password))
                        .unwrap_or(false);
                    self.server.handle_input(self.now, check.answer(ok));
                }
                Output::Persist(op) => self.store.apply(&op),
                // Changes are applied at once: nothing waits for them.
                Output::Barrier { .. } => {}
                Output::Event(event) => println!("  event {event:?}"),
                // Lines are "written" as soon as they are sent here.
                Output::NotifyWritten { session } => self
                    .server
                    .handle_input(self.now, Input::Written { session }),
                // Held messages are read from the store a page at a time.
                Output::LoadHeld(r) => {
                    let messages = self.store.held_page(&r.user, r.after, r.upto, r.max);
                    let answer = Input::HeldLoaded {
                        session: r.session,
                        load: r.load,
                        messages,
                    };
                    self.server.handle_input(self.now, answer);
                }
            }
        }
    }

    fn connect(&mut self, name: &'static str) -> SessionId {
        let id = self
            .server
            .open_session(self.now, IpAddr::V4(Ipv4Addr::LOCALHOST));
        self.names.insert(id, name);
        self.run_outputs();
        id
    }

    fn say(&mut self, session: SessionId, line: &str) {
        println!("{} says: {line}", self.names[&session]);
        self.server.handle_input(
            self.now,
            Input::Line {
                session,
                line: line.to_string(),
            },
        );
        self.run_outputs();
    }

    /// Moves the clock, running each deadline at its moment.
    fn wait(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) = self.server.poll_timeout().filter(|at| *at <= end) {
            self.now = at;
            self.server.handle_timeout(at);
            self.run_outputs();
        }
        self.now = end;
    }
}

fn main() {
    let accounts = Accounts::parse("alice wonderland\nbob builder\n").expect("valid accounts");
    let now = Time::from_unix_secs(1_795_540_321);
    let mut d = Driver {
        server: Server::new(now, Config::default(), accounts),
        now,
        inbox: BTreeMap::new(),
        names: BTreeMap::new(),
        store: StoreModel::default(),
    };

    let alice = d.connect("alice");
    d.say(alice, "alice");
    d.say(alice, "wonderland");
    d.say(alice, "message bob are you there?");

    let bob = d.connect("bob");
    d.say(bob, "bob");
    d.say(bob, "builder");
    d.wait(Duration::from_millis(200));
    d.say(bob, "idle 1");
    d.say(bob, "whoelse");
    d.say(bob, "broadcast hello everyone");
    d.wait(Duration::from_secs(30));
    d.say(alice, "logout");
    d.say(bob, "wholast 5");

    println!(
        "bob received {} lines; {} held messages left in the store",
        d.inbox[&bob].len(),
        d.store.held.values().map(Vec::len).sum::<usize>()
    );
}
