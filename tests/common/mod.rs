//! The shared harness of the end-to-end suite (after irctest): every test
//! starts its own `chatd` on port 0 with a temporary config, users file and
//! data directory, drives it over raw sockets, and synchronises on replies —
//! every command of a logged-in client gets exactly one reply, so a
//! `whoelse` answered by `WHO` is a barrier proving everything sent before
//! it was processed. No test sleeps to wait for the server.
//!
//! Server side: [`TestServer`], [`Opts`], [`run_chatd`], [`hash_password`].
//! Client side: [`Client`] (synchronous, line-framed, auto-answers `IDLE`),
//! [`Delivery`] (a parsed `MSG`/`BCAST`).
//!
//! The harness is split the same way: [`server`] starts and stops the
//! process under test, [`client`] speaks CHAT/1 to it, and [`util`] holds
//! what neither side owns (a seeded generator, `/proc` readers, polling,
//! time parsing). Everything is re-exported here so each test only needs
//! `mod common; use common::*;`.
// Each test binary compiles its own copy of this module and uses only part
// of it.
#![allow(dead_code)]

pub mod client;
pub mod server;
pub mod util;

// A test binary that needs no helper from one side would otherwise warn
// about that side's re-export, as it would about an unused function.
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use server::*;
#[allow(unused_imports)]
pub use util::*;

use std::time::Duration;

/// How long a client waits for one expected line before the test fails.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server gets to print its `listening` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server gets to exit after a signal.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
