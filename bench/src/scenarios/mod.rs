//! The scenarios S1–S6: each runs against the baseline relay and chatd in
//! the same run (S6 against chatd alone) and returns rows of the report.
//!
//! One file per scenario, so that reading one measurement does not mean
//! reading the others; what several scenarios share lives here (the phase
//! a measurement is in, latencies by phase, account lists) and in
//! [`pairs`] (the ping-pong pairs S1 measures and S4 keeps running during
//! its login storm).

mod ab;
mod pairs;
mod s1_private;
mod s2_broadcast;
mod s3_idle_memory;
mod s4_login_storm;
mod s5_held;
mod s6_million;

pub use ab::ab;
pub use s1_private::s1;
pub use s2_broadcast::s2;
pub use s3_idle_memory::s3;
pub use s4_login_storm::s4;
pub use s5_held::s5;
pub use s6_million::s6;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use anyhow::Result;

use crate::hist::Lat;
use crate::users::{self, Account};

/// Phase number that stops senders.
const STOP: u8 = u8::MAX;
/// Phases 1..PHASES are recorded separately; 0 is not recorded.
const PHASES: usize = 4;

/// The current phase of a measurement, shared by its handlers.
#[derive(Clone, Debug, Default)]
struct Phase(Arc<AtomicU8>);

impl Phase {
    fn set(&self, p: u8) {
        self.0.store(p, Ordering::SeqCst);
    }
    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latencies and counts by phase.
#[derive(Clone, Debug, Default)]
struct ByPhase {
    lat: [Lat; PHASES],
    count: [u64; PHASES],
}

impl ByPhase {
    fn record(&mut self, phase: u8, us: u64) {
        let p = phase as usize;
        if p > 0 && p < PHASES {
            self.lat[p].record(us);
            self.count[p] += 1;
        }
    }

    fn add(&mut self, other: &ByPhase) {
        for p in 0..PHASES {
            self.lat[p].add(&other.lat[p]);
            self.count[p] += other.count[p];
        }
    }
}

/// Plain-text accounts plus the one that makes chatd's dummy check cheap.
fn plain_with_cheap(prefix: &str, n: usize) -> Result<Vec<Account>> {
    let mut a = users::plain(prefix, n);
    a.push(users::cheap_params_account()?);
    Ok(a)
}
