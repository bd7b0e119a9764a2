//! Tools for people writing their own tests against the core (feature
//! `testing`): proptest strategies for lines and commands, and a harness
//! that drives a [`Server`](crate::Server) with a clock it jumps from deadline to
//! deadline, so time-based rules are tested exactly and without sleeping.
//! [`store_check`] holds a store of your own to the store contract.

mod harness;
pub mod store_check;
pub mod strategies;

pub use harness::{accounts, Harness, START};
