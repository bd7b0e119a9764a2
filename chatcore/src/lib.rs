//! The CHAT/1 chat service as a pure state machine.
//!
//! `chatcore` holds every rule of the chat service (login and lockout,
//! command parsing with idle-token stripping, routing, held messages, busy
//! status, presence, heartbeats, timeouts and delivery confirmation) and
//! nothing else. The `chatd` server is a thin tokio shell around it; you can
//! embed it in your own server, bot or test.
//!
//! **Writing a driver?** Read [the guide](guide): the order of a round,
//! closing, bounds, shutdown, confirmation and password checks, each rule
//! tested. Two complete drivers come with the crate: `examples/in_memory.rs`
//! (no sockets) and `examples/std_driver.rs` (blocking `std::net`).
//!
//! # What it does not do
//!
//! - **No I/O.** It never touches a socket or a file. It tells you which
//!   lines to write ([`Output::Send`]), which connections to close
//!   ([`Output::Close`]) and which changes to make durable
//!   ([`Output::Persist`]); you do them.
//! - **No clock.** Every call takes the current [`Time`]; a test can jump an
//!   hour in one call. [`Server::poll_timeout`] says when to call back.
//! - **No threads, no slow work.** Verifying a password (argon2 is slow on
//!   purpose) is asked for as [`Output::CheckPassword`] and answered with
//!   [`Input::PasswordChecked`], so you decide where it runs.
//! - **No framing policy.** [`wire::LineDecoder`] splits bytes into bounded
//!   lines; you feed it and pass the lines in.
//!
//! # The run loop
//!
//! Feed an event, then drain [`Server::poll_output`] until it returns
//! `None`, every time. Call [`Server::handle_timeout`] once
//! [`Server::poll_timeout`] is reached. Waking late is harmless: every
//! call that takes `now` first runs what fell due before it, each deadline
//! at its own moment, so an input handed in before `handle_timeout` still
//! sees the timeouts that passed. [`guide`] says the rest of what a driver
//! must do.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use chatcore::{Accounts, Config, Input, Output, Server, Time};
//!
//! let accounts = Accounts::parse("alice secret\nbob hunter2\n").unwrap();
//! let mut now = Time::from_unix_secs(1_795_540_321);
//! let mut server = Server::new(now, Config::default(), accounts);
//! let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
//!
//! // What a driver does with each output; here we just collect the lines.
//! fn drain(server: &mut Server, now: Time, wire: &mut Vec<String>) {
//!     while let Some(output) = server.poll_output() {
//!         match output {
//!             Output::Send { session, line } => wire.push(format!("{session} {line}")),
//!             Output::CheckPassword(check) => {
//!                 // A real driver verifies argon2 hashes off its event loop.
//!                 let ok = check
//!                     .credential
//!                     .as_ref()
//!                     .and_then(|c| c.verify_plain(&check.password))
//!                     .unwrap_or(false);
//!                 server.handle_input(now, check.answer(ok));
//!             }
//!             Output::Persist(_op) => { /* make it durable */ }
//!             // Lines after a barrier wait until the changes before it are
//!             // durable; nothing to do for a driver that commits at once.
//!             Output::Barrier { .. } => {}
//!             // Only with `Config::held_page_size` set: answer with
//!             // `Input::Written` once the lines before it are on the socket.
//!             Output::NotifyWritten { .. } => {}
//!             // A page of a held box: read it from the store (after
//!             // committing the changes before it) and answer with
//!             // `Input::HeldLoaded`. This store holds nothing.
//!             Output::LoadHeld(request) => {
//!                 let answer = Input::HeldLoaded {
//!                     session: request.session,
//!                     load: request.load,
//!                     messages: Vec::new(),
//!                 };
//!                 server.handle_input(now, answer);
//!             }
//!             Output::Close { .. } | Output::Event(_) => {}
//!         }
//!     }
//! }
//!
//! let mut wire = Vec::new();
//! let alice = server.open_session(now, localhost);
//! drain(&mut server, now, &mut wire);
//! for line in ["alice", "secret", "whoelse"] {
//!     server.handle_input(now, Input::Line { session: alice, line: line.into() });
//!     drain(&mut server, now, &mut wire);
//! }
//! assert_eq!(
//!     wire,
//!     ["#1 HELLO CHAT/1", "#1 ASK username", "#1 ASK password", "#1 OK login alice", "#1 WHO"]
//! );
//!
//! // Time passes only when you say so: thirty seconds later, a heartbeat.
//! now = server.poll_timeout().unwrap();
//! server.handle_timeout(now);
//! wire.clear();
//! drain(&mut server, now, &mut wire);
//! assert_eq!(wire, ["#1 IDLE 1"]);
//! ```
//!
//! # Durability
//!
//! Build a server from what your store gives back with [`Server::restore`].
//! The store applies [`StoreOp`]s in order; [`StoreModel::apply`] is the
//! reference for what each means. One rule ties sends to persistence: a line
//! emitted after an [`Output::Barrier`] must not reach the network before
//! every change emitted before the barrier is durable. Committing each
//! round's changes in one transaction before writing its lines (group
//! commit) meets it; a faster driver commits in the background and holds
//! back only the lines behind a barrier (the `OK` of a message, not its
//! delivery).
//! Held messages are not kept in memory: the core asks for them a page at
//! a time with [`Output::LoadHeld`], answered by [`Input::HeldLoaded`].
//! What any store must do is [the store contract](persist#the-store-contract).
//!
//! # Testing
//!
//! The `testing` feature exports `testing::Harness`, which drives a server
//! in memory with a clock that jumps from deadline to deadline, and proptest
//! strategies for lines and commands in `testing::strategies`.
//! `testing::store_check` checks a store of your own against the store
//! contract in a few lines.
//!
//! # Features
//!
//! - `testing`: the harness, strategies and store check above (pulls in
//!   proptest).
//! - `serde`: `Serialize` and `Deserialize` on what a store keeps and on
//!   [`HeldRequest`], in forms that are part of the API
//!   ([`persist`](persist#serialized-forms-feature-serde)).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod accounts;
pub mod config;
pub mod guide;
pub mod message;
pub mod names;
pub mod persist;
pub mod protocol;
pub mod server;
pub mod time;
pub mod wire;

#[cfg(feature = "testing")]
pub mod testing;

pub use accounts::{Accounts, AccountsChange, Credential, UsersFileError};
pub use config::{Config, FloodLimit};
pub use message::{Message, MessageId, MessageKind};
pub use persist::{BoxSummary, LoginFailures, Restored, StoreModel, StoreOp};
pub use server::{
    CheckId, Event, HeldRequest, Input, LoadId, LoginFailure, Output, PasswordCheck, Server,
    SessionEnd, SessionId, SessionIdHasher, SessionMap,
};
pub use time::Time;
