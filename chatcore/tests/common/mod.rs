//! What the harness-driven test files (`rules_*`, `defects`) share: the
//! four accounts the rules are written against and harness builders, so
//! each file reads as its section of PROTOCOL.md and nothing else.
// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::time::Duration;

use chatcore::testing::{accounts, Harness};
use chatcore::Config;

pub const USERS: &[(&str, &str)] = &[
    ("alice", "a-pw"),
    ("bob", "b-pw"),
    ("carol", "c-pw"),
    ("dave", "d-pw"),
];

pub fn harness() -> Harness {
    Harness::with_users(USERS)
}

pub fn harness_with(config: Config) -> Harness {
    Harness::new(config, accounts(USERS))
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
