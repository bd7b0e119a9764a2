//! The chat service as a state machine.

mod io;

pub use io::{CheckId, Event, Input, LoginFailure, Output, PasswordCheck, SessionEnd, SessionId};

use std::net::IpAddr;

use crate::accounts::Accounts;
use crate::config::Config;
use crate::store::Restored;
use crate::time::Time;

/// The whole chat service for one data store.
#[derive(Debug)]
pub struct Server {
    _p: (),
}

impl Server {
    /// A server with no durable history.
    pub fn new(config: Config, accounts: Accounts, now: Time) -> Self {
        Self::restore(config, accounts, Restored::default(), now)
    }

    /// A server that carries on from what a store gave back.
    pub fn restore(_config: Config, _accounts: Accounts, _restored: Restored, _now: Time) -> Self {
        Server { _p: () }
    }

    /// A new connection from `peer`: greets it and asks for a user name.
    pub fn open_session(&mut self, _peer: IpAddr, _now: Time) -> SessionId {
        SessionId(0)
    }

    /// Feeds one input.
    pub fn handle_input(&mut self, _now: Time, _input: Input) {}

    /// Runs what is due at `now`. Early or repeated calls do nothing.
    pub fn handle_timeout(&mut self, _now: Time) {}

    /// The next piece of work for the driver.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        None
    }

    /// When to call [`Server::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        None
    }
}
