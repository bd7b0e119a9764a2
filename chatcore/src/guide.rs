//! Writing a driver: what a program around [`Server`] must do, and why.
//!
//! The core holds every rule of CHAT/1; the driver owns everything else:
//! sockets, the clock, the store, and password verification. This page is
//! the contract between them, one rule at a time. Every statement it makes
//! about the core is pinned by a test in `tests/driver_contract.rs` (named
//! after each rule below) or by a doctest here, so a change to the core that
//! breaks a rule fails the build instead of surprising a driver.
//!
//! Two complete drivers show the rules in code:
//!
//! - `examples/in_memory.rs`: no sockets at all, time moved by hand
//!   (`cargo run -p chatcore --example in_memory`);
//! - `examples/std_driver.rs`: CHAT/1 over TCP with blocking `std::net`, a
//!   mutex around the server, a reader and a writer thread per connection
//!   (`cargo run -p chatcore --example std_driver`). `tests/std_driver.rs`
//!   runs it over loopback.
//!
//! `chatd`, the project's server, is the full-sized one: tokio, SQLite,
//! TLS and WebSocket.
//!
//! # One round
//!
//! 1. **Feed one input**, with the current time: [`Server::open_session`],
//!    [`Server::handle_input`] or [`Server::handle_timeout`]. Pass wall-clock
//!    time ([`Time::from_system`]); an earlier `now` than the last one is
//!    ignored, so a clock stepped back cannot reorder anything
//!    (`the_core_clock_never_runs_backwards`).
//!
//!    Every call that takes `now` first runs the timers that fell due by
//!    then, each at its own moment (`tests/rules_timers.rs`). So
//!    [`Server::handle_timeout`] is only for waking the core when nothing
//!    else happens: sleep until [`Server::poll_timeout`] or the next input,
//!    whichever comes first, and call it. A call before the deadline does
//!    nothing (`the_core_names_its_next_wake_up_and_an_early_one_does_nothing`).
//!    Ask `poll_timeout` again after every round: any input may move it.
//! 2. **Drain [`Server::poll_output`] until it returns `None`**, every time,
//!    and act on the outputs in the order given. Answers you can give at
//!    once ([`Input::PasswordChecked`] for a plain-text password,
//!    [`Input::HeldLoaded`] from a store at hand) may be fed back while
//!    draining; their outputs join the queue you are draining.
//! 3. **Commit the [`Output::Persist`] changes**, in the order given (see
//!    [`StoreOp`]; [`StoreModel::apply`] is the reference).
//! 4. **Write the lines** ([`Output::Send`]: the line and a `\n`), each
//!    session's in the order given. [`Output::Barrier`] is the one rule tying
//!    lines to the store: no line after a barrier may reach the network
//!    before every change emitted before it is durable; `Barrier { session:
//!    Some(s) }` holds back `s`'s later lines and its close, `Barrier {
//!    session: None }` every later delivery (`MSG`, `BCAST`) to anyone.
//!    **A driver that commits a round's changes before writing any of its
//!    lines meets this without looking at barriers.** One that commits in
//!    the background holds back only what a barrier names: the `OK` of a
//!    `message` or `broadcast` that stored something, the answer to a
//!    failed login whose record changed, and the deliveries after the core
//!    reserves a new block of message ids (a driver that looks at their ids
//!    may hold back only those carrying an id of the new block: at or above
//!    the `next` of the [`StoreOp::ReserveIds`] before it; chatd does, so
//!    that a reservation, every 32,768 messages, does not stall every
//!    conversation for a commit). Deliveries to online
//!    users, probes and replies that acknowledge nothing durable go out at
//!    once (`only_the_ok_of_a_held_message_waits_behind_a_barrier`,
//!    `a_message_held_for_an_offline_user_is_acknowledged_behind_a_barrier`,
//!    `a_failed_login_is_answered_once_its_record_is_durable`,
//!    `replies_that_acknowledge_nothing_durable_never_wait`).
//! 5. **Close** on [`Output::Close`], once the lines before it are written.
//!    It always comes after the session's last line, its `BYE` when it has
//!    one (`close_comes_after_the_bye_and_nothing_for_the_session_follows`,
//!    `a_timeout_bye_comes_before_its_close`). See [closing](#closing-so-the-peer-reads-bye).
//!
//! After its `Close`, the core sends a session nothing more, and ignores
//! whatever still comes for it: lines, `Closed`, late answers to checks and
//! loads.
//!
//! # Order: within a session, not across sessions
//!
//! Each connection's lines must go out in the order the core gave them.
//! Lines of different connections have no order between them: write them
//! concurrently, each connection at its own pace, so that one slow reader
//! never holds up the others. Only barriers reach across sessions (a
//! `Barrier { session: None }` holds back everyone's later deliveries).
//! Changes to the store have one order, the one given.
//!
//! # Closing so the peer reads `BYE`
//!
//! Write everything queued for the connection, `BYE` included; then **shut
//! down the write side** (the peer reads to the end and sees end of
//! input); then **keep reading, and discarding, for a bounded time** (chatd:
//! 1 s) or until the peer closes; then close. Closing a socket while the
//! peer's bytes are still arriving makes the kernel answer with a reset,
//! which can destroy the `BYE` before the peer has read it. The
//! `std_driver` example does this, and its test reads `BYE logout` and
//! then the end of the stream.
//!
//! # Peers that stop reading, and peers that go away
//!
//! Never let the core wait for a socket. Queue each connection's lines and
//! write them from elsewhere (a task, a thread), with two bounds:
//!
//! - a **write timeout**: a write that makes no progress for that long is
//!   a peer that stopped reading;
//! - a **bound on the queue** (bytes or lines): past it, the peer is dead
//!   too, rather than memory growing without end. chatd allows
//!   `max_outbound_bytes` (1 MiB) plus a period of no progress (the
//!   heartbeat, counted as 1 to 30 s), and 64 times the bound at most
//!   ([PROTOCOL.md §6](crate::protocol#6-heartbeat-and-liveness)).
//!
//! Either way, and for a failed read or write (reset), feed
//! [`Input::Closed`]. The session ends without `BYE`, the user goes
//! offline and unconfirmed deliveries are held again; the core answers with
//! **no** [`Output::Close`], so forget the connection yourself
//! (`closed_ends_the_session_with_no_line_and_no_close`). End of input
//! (a read of zero bytes) is different: the peer may still read, so feed
//! [`Input::InputEnded`] and keep writing; the core handles what the peer
//! sent before, then asks for the close.
//!
//! # Held messages: `LoadHeld` and `NotifyWritten`
//!
//! The core keeps only a count of each user's box. When it sends a box, it
//! asks for it a page at a time with [`Output::LoadHeld`]: answer with
//! [`Input::HeldLoaded`] holding the box's entries with
//! `after < id <= upto`, oldest first, at most `max`
//! ([`StoreModel::held_page`] is the reference). The answer must reflect
//! every change emitted before the request: commit, then read. Until it
//! comes, the session's commands and live messages wait behind the block
//! (`commands_wait_behind_a_page_until_the_store_answers`). Fewer entries
//! than `max` ends the block (`a_page_shorter_than_asked_ends_the_block`);
//! an answer for a session that is gone is ignored
//! (`an_answer_for_a_session_that_is_gone_is_ignored`).
//!
//! With [`Config::held_page_size`] set, each page ends with
//! [`Output::NotifyWritten`]: answer [`Input::Written`] once every line
//! before it has been written to the socket (taken by the kernel, not
//! merely queued). The next page waits for it, so a big box goes out at
//! the pace the client reads (`with_pages_the_next_page_waits_for_written`).
//! Without `held_page_size` the core never asks.
//!
//! # Confirmed means answered
//!
//! A delivery counts as confirmed only when the client answers `idle <seq>`
//! for a probe sent after it (or logs out): the core then emits
//! [`StoreOp::Release`]. A bare `idle` keeps the session alive and confirms
//! nothing. Deliveries not confirmed when the session ends any other way
//! are held again and sent at the next login with their ids
//! (`a_delivery_answered_idle_seq_is_released_and_not_sent_again`,
//! `a_delivery_not_answered_with_its_seq_is_sent_again_after_a_drop`).
//! So a driver never confirms for its clients, and a client that never
//! answers gets its deliveries again.
//!
//! # Password checks cost the same for every name
//!
//! [`Output::CheckPassword`] asks to verify a password. Run slow checks
//! (argon2) off the core's thread, a bounded number at once (chatd:
//! `password_check_concurrency`), and feed the answer back whenever it is
//! ready; the session's lines wait for it, and an answer that comes after
//! the session ended is ignored.
//!
//! When the name has no account, or is no user name at all (a pipelined
//! command typed at the prompt), the check still comes, with
//! [`PasswordCheck::credential`] `None`
//! (`a_name_with_no_account_is_still_checked_with_no_credential`). Spend
//! the same work as on a wrong password and answer "no", so that timing
//! does not tell which names exist: verify the password against
//! [`Accounts::dummy_credential`](crate::Accounts::dummy_credential), which costs what checking a real
//! account costs, then answer `false` whatever it says. Build the answer
//! with [`PasswordCheck::answer`](crate::PasswordCheck::answer).
//!
//! # Shutdown
//!
//! Feed [`Input::Shutdown`]. In that one round every connection, logged in
//! or not, gets `BYE shutdown` and [`Output::Close`]; afterwards
//! [`Server::session_count`] is 0 and [`Server::is_shut_down`] is true. A
//! password check still in flight has had its connection closed: its answer
//! is ignored, so the check can be dropped. A connection accepted later
//! gets `HELLO`, `BYE shutdown` and a close at once
//! (`shutdown_says_bye_and_closes_every_connection_in_one_round`).
//!
//! Shutdown is complete once that round's changes are committed (the
//! deliveries still unconfirmed stay in the store, and a server restored
//! from it sends them again:
//! `deliveries_unconfirmed_at_shutdown_are_in_the_store_it_leaves`) and
//! every connection has been flushed and closed as above, within a bounded
//! time (chatd: 3 s).
//!
//! # Transports that frame lines themselves
//!
//! [`wire::LineDecoder`](crate::wire::LineDecoder) frames a byte stream
//! (TCP, TLS, a pipe). A transport whose messages are already lines (a
//! WebSocket text frame, a QUIC stream per line, a message queue) may hand
//! each over as [`Input::Line`], without its terminator. What the core
//! checks itself, and what it leaves to the driver:
//!
//! - **Control characters: the core.** A line holding one (C0 other than
//!   TAB, DEL, C1, and so also `\r` and `\n`) is answered `ERR
//!   bad-encoding` and dropped, so nothing a user sends can put an escape
//!   sequence on another user's terminal
//!   (`the_core_refuses_control_characters_in_a_line_handed_over_directly`).
//! - **Encoding: the type.** `Input::Line` holds a `String`; decode bytes
//!   yourself and report invalid UTF-8 (or a binary frame) as
//!   [`Input::Malformed`] with `BadEncoding`, which is answered as the
//!   decoder's refusals are (`a_refused_frame_is_answered_like_a_refused_line`).
//! - **Length: the driver.** The core does not measure lines handed over
//!   (`the_core_does_not_measure_a_line_handed_over_directly`): refuse a
//!   frame of [`Config::max_line_bytes`] bytes or more (the bound counts
//!   the `\n` a frame lacks: `the_line_bound_counts_the_terminator_a_frame_lacks`)
//!   with `Input::Malformed` and `LineTooLong`, and bound what you read
//!   before you can look at a frame (chatd closes a WebSocket whose frame
//!   passes four times the bound).
//!
//! The simplest way to treat a frame exactly as a TCP line with the same
//! text, a trailing `\r` dropped included, is chatd's: give it its `\n`
//! and run it through a fresh decoder.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use chatcore::wire::{DecodeError, LineDecoder};
//! use chatcore::{Accounts, Config, Input, Server, SessionId, Time};
//!
//! /// One text frame, as the input a TCP line with the same bytes makes.
//! fn frame_input(session: SessionId, frame: &str, max_line_bytes: usize) -> Input {
//!     if frame.len() >= max_line_bytes {
//!         let error = DecodeError::LineTooLong { max: max_line_bytes };
//!         return Input::Malformed { session, error };
//!     }
//!     if frame.contains('\n') {
//!         // One frame is one line: a `\n` inside is a control character.
//!         return Input::Malformed { session, error: DecodeError::BadEncoding };
//!     }
//!     let bytes = format!("{frame}\n").into_bytes();
//!     match LineDecoder::new(max_line_bytes).decode(&mut &bytes[..]) {
//!         Some(Ok(line)) => Input::Line { session, line },
//!         Some(Err(error)) => Input::Malformed { session, error },
//!         None => unreachable!("the frame ends with its one `\\n`"),
//!     }
//! }
//!
//! let now = Time::from_unix_secs(1_795_540_321);
//! let mut server = Server::new(now, Config::default(), Accounts::new());
//! let s = server.open_session(now, IpAddr::V4(Ipv4Addr::LOCALHOST));
//! let max = server.config().max_line_bytes;
//! assert_eq!(frame_input(s, "whoelse\r", max), Input::Line { session: s, line: "whoelse".into() });
//! assert_eq!(
//!     frame_input(s, &"x".repeat(max), max),
//!     Input::Malformed { session: s, error: DecodeError::LineTooLong { max } }
//! );
//! assert_eq!(
//!     frame_input(s, "hi \u{1b}[2J", max),
//!     Input::Malformed { session: s, error: DecodeError::BadEncoding }
//! );
//! ```
//!
//! [`Server`]: crate::Server
//! [`Server::open_session`]: crate::Server::open_session
//! [`Server::handle_input`]: crate::Server::handle_input
//! [`Server::handle_timeout`]: crate::Server::handle_timeout
//! [`Server::poll_timeout`]: crate::Server::poll_timeout
//! [`Server::poll_output`]: crate::Server::poll_output
//! [`Server::session_count`]: crate::Server::session_count
//! [`Server::is_shut_down`]: crate::Server::is_shut_down
//! [`Time::from_system`]: crate::Time::from_system
//! [`Input::PasswordChecked`]: crate::Input::PasswordChecked
//! [`Input::HeldLoaded`]: crate::Input::HeldLoaded
//! [`Input::Closed`]: crate::Input::Closed
//! [`Input::InputEnded`]: crate::Input::InputEnded
//! [`Input::Written`]: crate::Input::Written
//! [`Input::Shutdown`]: crate::Input::Shutdown
//! [`Input::Line`]: crate::Input::Line
//! [`Input::Malformed`]: crate::Input::Malformed
//! [`Output::Persist`]: crate::Output::Persist
//! [`Output::Send`]: crate::Output::Send
//! [`Output::Barrier`]: crate::Output::Barrier
//! [`Output::Close`]: crate::Output::Close
//! [`Output::LoadHeld`]: crate::Output::LoadHeld
//! [`Output::NotifyWritten`]: crate::Output::NotifyWritten
//! [`Output::CheckPassword`]: crate::Output::CheckPassword
//! [`PasswordCheck::credential`]: crate::PasswordCheck::credential
//! [`StoreOp`]: crate::StoreOp
//! [`StoreOp::Release`]: crate::StoreOp::Release
//! [`StoreOp::ReserveIds`]: crate::StoreOp::ReserveIds
//! [`StoreModel::apply`]: crate::StoreModel::apply
//! [`StoreModel::held_page`]: crate::StoreModel::held_page
//! [`Config::held_page_size`]: crate::Config::held_page_size
//! [`Config::max_line_bytes`]: crate::Config::max_line_bytes
