//! Time: the flood bucket as docs/PROTOCOL.md §4 describes it, the
//! deadlines that must have run by now, and what survives a restart.

use std::collections::BTreeSet;
use std::time::Duration;

use chatcore::{FloodLimit, StoreModel, Time};

use super::{rel, Oracle, Stage};

/// Tokens in thousandths, so that refill needs no floats.
const TOKEN: u64 = 1000;

/// `burst` commands at once, then `per_second` a second: a bucket of
/// `burst` tokens refilled continuously. Refilling at any instants gives
/// the same level, so this is the rate itself, not the core's bookkeeping.
#[derive(Clone, Debug)]
pub struct Bucket {
    level: u64,
    at: u64,
}

impl Bucket {
    pub fn full(f: &FloodLimit, now: Time) -> Self {
        Bucket {
            level: u64::from(f.burst) * TOKEN,
            at: now.unix_millis(),
        }
    }

    pub fn take(&mut self, f: &FloodLimit, now: Time) -> bool {
        let now = now.unix_millis();
        let gained = now.saturating_sub(self.at) * u64::from(f.per_second);
        self.level = (self.level + gained).min(u64::from(f.burst.max(1)) * TOKEN);
        self.at = self.at.max(now);
        if self.level >= TOKEN {
            self.level -= TOKEN;
            true
        } else {
            false
        }
    }
}

impl Oracle {
    /// After time reached `now` and every deadline up to it ran: nothing
    /// that was due is still pending.
    pub fn check_not_late(&self, now: Time) {
        for (key, s) in &self.sess {
            if s.closed || key.0 != self.epoch {
                continue;
            }
            match &s.stage {
                Stage::LoggedIn(u) => {
                    self.check((s.last_rx + self.cfg.heartbeat_timeout) > now, || {
                        format!(
                            "{u} ({key:?}) silent since {} still alive at {} (heartbeat_timeout)",
                            rel(s.last_rx),
                            rel(now)
                        )
                    });
                    self.check((s.last_cmd_any + self.cfg.time_out) > now, || {
                        format!(
                            "{u} ({key:?}) idle since {} still alive at {} (time_out)",
                            rel(s.last_cmd_any),
                            rel(now)
                        )
                    });
                    self.check((s.last_probe + self.cfg.heartbeat) > now, || {
                        format!(
                            "{u} ({key:?}): no IDLE probe since {} at {} (heartbeat {:?}; OFFLINE block in progress: {:?})",
                            rel(s.last_probe),
                            rel(now),
                            self.cfg.heartbeat,
                            s.block
                        )
                    });
                    if let Some(d) = s.unprobed_since {
                        self.check((d + Duration::from_secs(1)) > now, || {
                            format!(
                                "{u} ({key:?}): deliveries at {} still unprobed at {} (OFFLINE block in progress: {:?})",
                                rel(d),
                                rel(now),
                                s.block
                            )
                        });
                    }
                }
                _ => self.check((s.opened + self.cfg.login_timeout) > now, || {
                    format!(
                        "{key:?} ({:?}) not logged in since {} still open at {}",
                        s.stage,
                        rel(s.opened),
                        rel(now)
                    )
                }),
            }
        }
    }

    /// The server was rebuilt from `restored`: the store must hold exactly
    /// what is owed, ids must not go back, and users online at a crash must
    /// have been persisted as seen within a heartbeat of it.
    pub fn restart(&mut self, now: Time, restored: &StoreModel) {
        self.note(format!("@{} <restart>", rel(now)));
        self.now = now;
        for u in self.accounts.names().map(String::from).collect::<Vec<_>>() {
            let owed = self.owed(&u);
            let stored: BTreeSet<u64> = restored
                .held
                .get(&u)
                .map(|v| v.iter().map(|m| m.id).collect())
                .unwrap_or_default();
            self.check(owed == stored, || {
                format!("at restart the store holds {stored:?} for {u}, but {owed:?} are owed (held or unconfirmed)")
            });
        }
        if let Some(max) = self.max_id {
            self.check(restored.next_id > max, || {
                format!("restored next_id {} would reuse id {max}", restored.next_id)
            });
        }
        // The core persists `Seen` for online users at least once per
        // heartbeat; a second more for how it may round the instant.
        let lag = self.cfg.heartbeat + Duration::from_secs(1);
        for (u, key) in std::mem::take(&mut self.online) {
            let login_at = self.s(key).login_at;
            let lo = login_at.max(now - lag);
            let seen = restored.last_seen.get(&u).copied();
            self.check(seen.is_some_and(|t| t >= lo), || {
                format!(
                    "{u} was online until the crash at {} (logged in at {}), but the store last saw them at {:?}: wholast would forget them",
                    rel(now),
                    rel(login_at),
                    seen.map(rel)
                )
            });
            self.left.insert(u, (lo, now));
        }
        for (key, s) in self.sess.iter_mut() {
            if key.0 == self.epoch {
                s.closed = true;
            }
        }
        self.epoch += 1;
        self.reserved = restored.next_id;
        // What the store gave back is durable.
        self.reserved_behind_barrier = restored.next_id;
    }
}
