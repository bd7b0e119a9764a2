//! Every deadline the core has, in one ordered set.

use std::collections::BTreeSet;

use super::api::SessionId;
use crate::time::Time;

/// One entry per session: the earliest moment it may have work. Sessions
/// move their entry earlier when a nearer deadline appears (a delivery
/// wants a confirming probe) but never later: when activity pushes a
/// deadline back, the old entry fires early, the session finds nothing due
/// and arms itself again. That keeps the hot path (every line received)
/// free of set updates.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    set: BTreeSet<(Time, SessionId)>,
}

impl Timers {
    /// Makes `at` the session's entry, replacing `armed` if it is later.
    /// Returns the entry now in force.
    pub(crate) fn arm(&mut self, session: SessionId, armed: Option<Time>, at: Time) -> Time {
        match armed {
            Some(old) if old <= at => old,
            Some(old) => {
                self.set.remove(&(old, session));
                self.set.insert((at, session));
                at
            }
            None => {
                self.set.insert((at, session));
                at
            }
        }
    }

    /// Forgets a session's entry.
    pub(crate) fn disarm(&mut self, session: SessionId, armed: Option<Time>) {
        if let Some(at) = armed {
            self.set.remove(&(at, session));
        }
    }

    /// Removes and returns the earliest entry due at `now`.
    pub(crate) fn pop_due(&mut self, now: Time) -> Option<(Time, SessionId)> {
        let first = *self.set.first()?;
        (first.0 <= now).then(|| {
            self.set.remove(&first);
            first
        })
    }

    /// The earliest entry.
    pub(crate) fn next(&self) -> Option<Time> {
        self.set.first().map(|(t, _)| *t)
    }
}
