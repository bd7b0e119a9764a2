//! The one reply of each command: checked against what the model expects
//! from the state when the command ran, then made part of the model.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chatcore::wire::{ByeReason, ErrorReply, ServerLine, Status};
use chatcore::MessageKind;

use super::super::{Block, Effects, Key, Oracle};
use super::{Expect, Fate, Got, Route};

impl Oracle {
    /// Checks a command's reply and what the command did (`self.acc`), then
    /// makes its effects part of the model.
    pub(super) fn check_reply(&mut self, key: Key, expect: Expect, reply: &ServerLine) {
        let me = self.s(key).user().unwrap().to_string();
        let acc = std::mem::take(&mut self.acc);
        let no_msg = |this: &Self| {
            this.check(acc.msg.is_none(), || {
                format!("a message was routed though the reply was {reply:?}: {acc:?}")
            });
        };
        let check_msg = |this: &Self, kind: MessageKind, text: &str| {
            let Some(m) = &acc.msg else {
                this.fail(&format!(
                    "reply {reply:?} but no message was delivered or held"
                ))
            };
            this.check(m.from == me && m.kind == kind && m.text == text, || {
                format!("message altered: sent {kind:?} {text:?} as {me}, got {m:?}")
            });
        };
        let mut deferred_to: Vec<String> = Vec::new();
        match expect {
            Expect::Exactly(line) => {
                self.check(*reply == line, || {
                    format!("expected {line:?}, got {reply:?}")
                });
                no_msg(self);
            }
            Expect::Busy => {
                self.check(*reply == ServerLine::Status(Status::Busy), || {
                    format!("idle busy: expected OK status busy, got {reply:?}")
                });
                no_msg(self);
                self.sm(key).busy = true;
            }
            Expect::Who => {
                let others: Vec<String> =
                    self.online.keys().filter(|u| **u != me).cloned().collect();
                self.check(*reply == ServerLine::Who(others.clone()), || {
                    format!("expected WHO {others:?}, got {reply:?}")
                });
                no_msg(self);
            }
            Expect::Last(m) => {
                self.check_last(&me, m, reply);
                no_msg(self);
            }
            Expect::Online(held) => {
                no_msg(self);
                match reply {
                    ServerLine::Offline { count } => {
                        self.check(!held.is_empty() && *count == held.len(), || {
                            format!("idle online: OFFLINE {count}, but held are {held:?}")
                        });
                        let s = self.sm(key);
                        s.busy = false;
                        s.page_count = 0;
                        s.block = Some(Block {
                            announced: true,
                            remaining: held.into_iter().collect(),
                            reply: Some(ServerLine::Status(Status::Online)),
                            deferred: VecDeque::new(),
                        });
                        self.count("OFFLINE-at-online");
                    }
                    ServerLine::Status(Status::Online) => {
                        self.check(held.is_empty(), || {
                            format!(
                                "idle online: OK status online without the held messages {held:?}"
                            )
                        });
                        self.sm(key).busy = false;
                    }
                    _ => self.fail(&format!("idle online: got {reply:?}")),
                }
            }
            Expect::Logout => {
                self.check(*reply == ServerLine::Bye(ByeReason::Logout), || {
                    format!("logout got {reply:?}")
                });
                no_msg(self);
                self.confirm(key, usize::MAX);
                self.sm(key).ending = true;
            }
            Expect::Message { to, text, fate } => {
                let Some(fate) = fate else {
                    self.check(
                        *reply == ServerLine::Err(ErrorReply::UnknownUser { user: to.clone() }),
                        || format!("message to unknown {to}: got {reply:?}"),
                    );
                    return no_msg(self);
                };
                if *reply == (ServerLine::Err(ErrorReply::QueueFull { user: to.clone() })) {
                    self.check(fate.full, || {
                        format!(
                            "queue-full for {to} whose box holds {} < max",
                            self.owed(&to).len()
                        )
                    });
                    return no_msg(self);
                }
                self.check(!fate.full, || {
                    format!("{to}'s box is full but got {reply:?}")
                });
                let want = match fate.route {
                    Some(Route::Deliver) => ServerLine::Delivered { user: to.clone() },
                    Some(Route::Hold(because)) => ServerLine::Queued {
                        user: to.clone(),
                        because,
                    },
                    None => unreachable!("a message always has a route"),
                };
                self.check(*reply == want, || {
                    format!("expected {want:?}, got {reply:?}")
                });
                check_msg(self, MessageKind::Private, &text);
                let only: BTreeSet<String> = [to.clone()].into();
                let now_ok = fate.route == Some(Route::Deliver) && !fate.deferred;
                self.check(
                    if now_ok {
                        acc.delivered_to == only && acc.held_for == only
                    } else {
                        acc.delivered_to.is_empty() && acc.held_for == only
                    },
                    || {
                        format!(
                            "message to {to} ({fate:?}) was delivered to {:?}, stored for {:?}",
                            acc.delivered_to, acc.held_for
                        )
                    },
                );
                if fate.deferred {
                    deferred_to.push(to);
                }
            }
            Expect::Broadcast {
                text,
                unknown,
                recipients,
            } => {
                if !unknown.is_empty() {
                    self.check(matches!(reply, ServerLine::Err(ErrorReply::UnknownUser { user }) if unknown.contains(user)), || {
                        format!("broadcast naming unknown {unknown:?}: got {reply:?}")
                    });
                    return no_msg(self);
                }
                deferred_to = self.check_broadcast(reply, &acc, &recipients);
                if acc.msg.is_some() || !acc.delivered_to.is_empty() || !acc.held_for.is_empty() {
                    check_msg(self, MessageKind::Broadcast, &text);
                }
            }
        }
        if let Some(m) = &acc.msg {
            self.msgs.insert(m.id, Arc::clone(m));
            self.max_id = Some(self.max_id.map_or(m.id, |x| x.max(m.id)));
            for r in acc.delivered_to.iter().chain(acc.held_for.iter()) {
                self.owed.entry(r.clone()).or_default().insert(m.id);
            }
            for r in deferred_to {
                let k = self.online[&r];
                self.sm(k)
                    .block
                    .as_mut()
                    .expect("a deferred copy needs a block")
                    .deferred
                    .push_back(m.id);
                self.count("deferred");
            }
        }
    }

    /// Checks `OK broadcast` against each recipient's fate; returns those
    /// whose copy waits behind their `OFFLINE` block.
    fn check_broadcast(
        &self,
        reply: &ServerLine,
        acc: &Effects,
        recipients: &[(String, Fate)],
    ) -> Vec<String> {
        let ServerLine::Broadcasted {
            delivered,
            queued,
            full,
        } = reply
        else {
            self.fail(&format!("expected OK broadcast, got {reply:?}"))
        };
        self.check(full.windows(2).all(|w| w[0] < w[1]), || {
            format!("full list not sorted: {full:?}")
        });
        let (mut n_delivered, mut n_queued, mut deferred) = (0, 0, Vec::new());
        for (r, f) in recipients {
            let expected = match (f.route, f.deferred, f.full) {
                (None, _, _) => Got::Skipped,
                (Some(Route::Deliver), false, _) => Got::Now,
                (Some(Route::Deliver), true, _) => Got::Deferred,
                (Some(Route::Hold(_)), _, true) => Got::Full,
                (Some(Route::Hold(_)), _, false) => Got::Held,
            };
            let got = if full.contains(r) {
                Got::Full
            } else if acc.delivered_to.contains(r) {
                Got::Now
            } else if acc.held_for.contains(r) {
                if expected == Got::Deferred {
                    Got::Deferred
                } else {
                    Got::Held
                }
            } else {
                Got::Skipped
            };
            self.check(got == expected, || {
                format!("broadcast to {r} ({f:?}): expected {expected:?}, got {got:?}")
            });
            match got {
                Got::Now => n_delivered += 1,
                Got::Deferred => {
                    n_delivered += 1;
                    deferred.push(r.clone());
                }
                Got::Held => n_queued += 1,
                Got::Full | Got::Skipped => {}
            }
        }
        self.check(*delivered == n_delivered && *queued == n_queued, || {
            format!(
                "OK broadcast {delivered} {queued} but delivered to {:?}, stored for {:?}, deferred for {deferred:?}",
                acc.delivered_to, acc.held_for
            )
        });
        let names: BTreeSet<&String> = recipients.iter().map(|(r, _)| r).collect();
        for r in acc
            .delivered_to
            .iter()
            .chain(acc.held_for.iter())
            .chain(full.iter())
        {
            self.check(names.contains(r), || {
                format!("broadcast reached {r}, who is no recipient")
            });
        }
        deferred
    }

    fn check_last(&self, me: &str, m: u64, reply: &ServerLine) {
        let now = self.now;
        let ServerLine::Last(names) = reply else {
            self.fail(&format!("expected LAST, got {reply:?}"))
        };
        self.check(names.windows(2).all(|w| w[0] < w[1]), || {
            format!("LAST not sorted: {names:?}")
        });
        let start = now - Duration::from_secs(m * 60);
        for u in names {
            self.check(u != me, || "LAST lists the asking user".into());
            self.check(self.ever.contains(u), || {
                format!("LAST lists {u}, who never logged in")
            });
            let may = self.online.contains_key(u)
                || self
                    .left
                    .get(u)
                    .is_some_and(|(_, hi)| (*hi + Duration::from_secs(1)) >= start);
            self.check(may, || {
                format!(
                    "LAST {m} lists {u}, who left before the window ({:?})",
                    self.left.get(u)
                )
            });
        }
        for u in self.ever.iter().filter(|u| *u != me) {
            let must = self.online.contains_key(u)
                || self
                    .left
                    .get(u)
                    .is_some_and(|(lo, _)| *lo >= (start + Duration::from_secs(1)));
            self.check(!must || names.contains(u), || {
                format!(
                    "LAST {m} misses {u} (online: {}, left {:?})",
                    self.online.contains_key(u),
                    self.left.get(u)
                )
            });
        }
    }
}
