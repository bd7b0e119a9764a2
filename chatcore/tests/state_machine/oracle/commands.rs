//! Commands of a logged-in client: arrival (flood control, the backlog),
//! the one reply of each, message routing, `OFFLINE` blocks and
//! confirmation.

use std::collections::BTreeSet;
use std::sync::Arc;

use chatcore::wire::{Audience, Command, ErrorReply, HeldBecause, IdleArg, ParseError, ServerLine};
use chatcore::Message;

use super::{decode_error_reply, rel, Block, In, Key, Oracle, Parsed, Waiting};

mod replies;

/// What the reply to a command must be, from the state when it runs.
#[derive(Clone, Debug)]
enum Expect {
    Exactly(ServerLine),
    Busy,
    Who,
    Last(u64),
    /// The messages held for the user, oldest first.
    Online(Vec<u64>),
    Logout,
    Message {
        to: String,
        text: String,
        fate: Option<Fate>,
    },
    Broadcast {
        text: String,
        unknown: Vec<String>,
        recipients: Vec<(String, Fate)>,
    },
}

/// Where one recipient's copy must go.
#[derive(Clone, Debug)]
struct Fate {
    /// `None`: not a recipient (offline, online-only broadcast).
    route: Option<Route>,
    /// Online and not busy, but an `OFFLINE` block is being sent to them:
    /// the copy goes after the block.
    deferred: bool,
    /// Their box has no room (only for copies that would be held).
    full: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Deliver,
    Hold(HeldBecause),
}

/// What actually became of one recipient's copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    Now,
    Deferred,
    Held,
    Full,
    Skipped,
}

impl Oracle {
    /// A line from a logged-in client reached the core (on arrival, or,
    /// with `after_check`, when a password check let it through).
    pub(super) fn command_arrives(&mut self, key: Key, input: In, after_check: bool) {
        let now = self.now;
        let parsed = match input {
            In::Line(l) => Parsed::Line(Command::parse(&l)),
            In::Malformed(e) => Parsed::Malformed(e),
        };
        let s = self.sm(key);
        s.last_rx = now;
        match &parsed {
            Parsed::Line(Ok(Command::Idle(IdleArg::None)) | Err(ParseError::Blank)) => return,
            Parsed::Line(Ok(Command::Idle(IdleArg::Seq(q)))) => {
                let q = *q;
                if after_check {
                    self.late_confirms.push((key, q));
                } else {
                    self.confirm_probe(key, q);
                }
                return;
            }
            Parsed::Line(Ok(_)) => {
                s.last_cmd_any = now;
                s.last_cmd_def = now;
            }
            // The protocol leaves open whether these count as activity.
            Parsed::Line(Err(_)) | Parsed::Malformed(_) => s.last_cmd_any = now,
        }
        // Lines held behind a password check are handled while the login's
        // block waits for its first page from the store: behind the block,
        // like any command that arrives during it.
        let block_active = s.block.is_some();
        let backlog = s.waiting.iter().filter(|w| !w.at_once).count();
        let bound = self
            .cfg
            .flood
            .as_ref()
            .map_or(self.cfg.max_pending_lines, |f| f.backlog);
        let at_once = !block_active && backlog == 0 && {
            let flood = self.cfg.flood.clone();
            let s = self.sm(key);
            match (&mut s.bucket, &flood) {
                (Some(b), Some(f)) => b.take(f, now),
                _ => true,
            }
        };
        let s = self.sm(key);
        if at_once {
            s.waiting.push_back(Waiting {
                parsed,
                at_once: true,
            });
        } else if backlog < bound {
            s.waiting.push_back(Waiting {
                parsed,
                at_once: false,
            });
            self.count("cmd-waits");
        } else {
            s.refusals += 1;
        }
    }

    /// Whether flood control lets a waiting command of the session run now.
    pub(super) fn token_available(&self, key: Key) -> bool {
        match (&self.s(key).bucket, &self.cfg.flood) {
            (Some(b), Some(f)) => b.clone().take(f, self.now),
            _ => true,
        }
    }

    /// A line to a logged-in session that no login step owes.
    pub(super) fn sent_logged_in(&mut self, key: Key, line: &ServerLine) {
        if let ServerLine::Idle { seq } = line {
            return self.probe(key, *seq);
        }
        if self.s(key).block.is_some() {
            return self.block_line(key, line);
        }
        match line {
            ServerLine::Deliver(m) => self.deliver_live(key, m),
            ServerLine::Err(ErrorReply::RateLimited { .. }) => {
                let s = self.s(key);
                self.check(self.own_round(key) && s.refusals > 0, || {
                    format!(
                        "ERR rate-limited to {:?} though {} commands wait (bound {:?})",
                        s.user(),
                        s.waiting.len(),
                        self.cfg.flood
                    )
                });
                self.sm(key).refusals -= 1;
            }
            l if is_command_reply(l) => self.execute_head(key, line),
            _ => self.fail(&format!(
                "{line:?} to logged-in {:?}, which nothing explains",
                self.s(key).user()
            )),
        }
    }

    /// A probe: numbered one more than the last, recorded so that an answer
    /// confirms what was written before it.
    fn probe(&mut self, key: Key, seq: u64) {
        let now = self.now;
        let s = self.s(key);
        if let Some(n) = s.next_seq {
            self.check(seq == n, || format!("probe IDLE {seq}, expected IDLE {n}"));
        }
        if s.block.as_ref().is_some_and(|b| b.announced) {
            self.count("probe-in-block");
        }
        let s = self.sm(key);
        s.next_seq = Some(seq + 1);
        let written = s.delivered.len();
        s.probes.push((seq, written));
        s.last_probe = now;
        s.unprobed_since = None;
    }

    /// The client answered probe `q`: what was written before it is
    /// confirmed. A number no probe had is a sign of life only.
    pub(super) fn confirm_probe(&mut self, key: Key, q: u64) {
        let s = self.s(key);
        if let Some((_, upto)) = s.probes.iter().find(|(seq, _)| *seq == q) {
            let upto = *upto;
            self.confirm(key, upto);
        }
    }

    fn confirm(&mut self, key: Key, upto: usize) {
        let s = self.s(key).clone();
        let Some(u) = s.user() else { return };
        let owed = self.owed.entry(u.to_string()).or_default();
        for id in &s.delivered[..upto.min(s.delivered.len())] {
            owed.remove(id);
        }
    }

    /// A line while an `OFFLINE` block is being sent: the block's next line
    /// and nothing else (probes and session ends are handled before).
    fn block_line(&mut self, key: Key, line: &ServerLine) {
        let u = self.s(key).user().unwrap_or_default().to_string();
        self.check(self.own_round(key), || {
            format!("{line:?} to {u}'s OFFLINE block in a round about another session")
        });
        let b = self.s(key).block.clone().unwrap();
        if !b.announced {
            match line {
                ServerLine::Offline { count } if *count == b.remaining.len() => {
                    let s = self.sm(key);
                    s.block.as_mut().unwrap().announced = true;
                    s.page_count = 0;
                    self.count("OFFLINE-at-login");
                    return;
                }
                _ => self.fail(&format!(
                    "after OK login {u} with {} messages held ({:?}) expected OFFLINE {}, got {line:?}",
                    b.remaining.len(),
                    b.remaining,
                    b.remaining.len()
                )),
            }
        }
        match line {
            ServerLine::Deliver(m) => {
                let deferred = b.remaining.is_empty() && b.reply.is_none();
                let want = if deferred {
                    b.deferred.front()
                } else {
                    b.remaining.front()
                };
                self.check(want == Some(&m.id), || {
                    format!(
                        "inside {u}'s OFFLINE block expected message {want:?} (held, oldest first: {:?}; then {:?} after {:?}), got {line:?}",
                        b.remaining, b.deferred, b.reply
                    )
                });
                self.check(!self.s(key).notify, || {
                    format!("{u}'s next page was sent before Input::Written")
                });
                let s = self.sm(key);
                let bm = s.block.as_mut().unwrap();
                if deferred {
                    bm.deferred.pop_front();
                } else {
                    bm.remaining.pop_front();
                }
                self.deliver_old(key, m);
                if deferred {
                    self.count("deferred-delivered");
                }
            }
            l if b.remaining.is_empty() && b.reply.as_ref() == Some(l) => {
                self.sm(key).block.as_mut().unwrap().reply = None;
                self.count("reply-after-block");
            }
            // A command refused while the block was sent: its refusal
            // waits for the end of the block, like every reply.
            ServerLine::Err(ErrorReply::RateLimited { .. })
                if (b.remaining.is_empty() || self.skip("refusal-in-block"))
                    && self.s(key).refusals > 0 =>
            {
                self.sm(key).refusals -= 1;
                self.count("refusal-after-block");
            }
            _ => self.fail(&format!(
                "{line:?} inside {u}'s OFFLINE block (still to come: {:?}, then {:?}, then {:?})",
                b.remaining, b.reply, b.deferred
            )),
        }
        let s = self.sm(key);
        if s.block.as_ref().is_some_and(Block::is_done) {
            s.block = None;
        }
    }

    /// A message of a block (held, or routed while the block was sent).
    fn deliver_old(&mut self, key: Key, m: &Arc<Message>) {
        let now = self.now;
        let u = self.s(key).user().unwrap_or_default().to_string();
        let is_new = self.see_message(m);
        self.check(!is_new, || {
            format!("new message {} inside {u}'s OFFLINE block", m.id)
        });
        self.check(self.owed(&u).contains(&m.id), || {
            format!(
                "{u} got message {} which it is not owed (confirmed already, or never addressed to it)",
                m.id
            )
        });
        self.check_delivery(key, &u, m);
        let page = self.cfg.held_page_size;
        let s = self.sm(key);
        s.delivered.push(m.id);
        s.unprobed_since.get_or_insert(now);
        s.page_count += 1;
        let n = s.page_count;
        if let Some(p) = page {
            self.check(n <= p.max(1), || {
                format!("{n} messages of {u}'s OFFLINE block in one page (held_page_size {p})")
            });
        }
    }

    /// A new message delivered at once by the command being run.
    fn deliver_live(&mut self, key: Key, m: &Arc<Message>) {
        let now = self.now;
        let u = self.s(key).user().unwrap_or_default().to_string();
        if !self.msgs.contains_key(&m.id) {
            self.check_addressed(&u, m);
        }
        let is_new = self.see_message(m);
        self.check(is_new, || {
            format!("{u} got message {} again outside an OFFLINE block", m.id)
        });
        self.check_delivery(key, &u, m);
        self.acc.delivered_to.insert(u);
        let s = self.sm(key);
        s.delivered.push(m.id);
        s.unprobed_since.get_or_insert(now);
    }

    /// A new message goes at once only to the sessions the command being
    /// run sends it to now (its sender's oldest waiting command: commands
    /// run in order). Checked at each delivery, so that a session handed a
    /// message not meant for it fails there, named; the reply then checks
    /// that nobody owed a copy missed it.
    fn check_addressed(&self, u: &str, m: &Message) {
        let running = self
            .online
            .get(&m.from)
            .and_then(|k| Some((*k, self.s(*k).waiting.front()?.parsed.clone())));
        let Some((sender, parsed)) = running else {
            self.fail(&format!(
                "{u} got new message {} from {}, who has no command running",
                m.id, m.from
            ))
        };
        let now = |f: &Fate| f.route == Some(Route::Deliver) && !f.deferred;
        let addressed = match self.expectation(sender, &parsed) {
            Expect::Message {
                to, fate: Some(f), ..
            } => to == u && now(&f),
            Expect::Broadcast {
                unknown,
                recipients,
                ..
            } => unknown.is_empty() && recipients.iter().any(|(r, f)| r == u && now(f)),
            _ => false,
        };
        self.check(addressed, || {
            format!(
                "{u} got message {} from {}, whose command {parsed:?} does not send it to {u} now",
                m.id, m.from
            )
        });
    }

    fn check_delivery(&self, key: Key, u: &str, m: &Arc<Message>) {
        let s = self.s(key);
        self.check(!s.busy, || format!("delivery to busy {u}: {m:?}"));
        self.check(!s.delivered.contains(&m.id), || {
            format!("{u} got message {} twice in one session life", m.id)
        });
        for id in self.owed(u).range(..m.id) {
            let earlier = &self.msgs[id];
            self.check(earlier.from != m.from || s.delivered.contains(id), || {
                format!(
                    "order: {u} got {} from {} before owed earlier {id}",
                    m.id, m.from
                )
            });
        }
    }

    /// The core ran the session's oldest waiting command and `line` is its
    /// reply (or the start of its `OFFLINE` block).
    fn execute_head(&mut self, key: Key, line: &ServerLine) {
        let u = self.s(key).user().unwrap_or_default().to_string();
        self.check(self.own_round(key), || {
            format!("reply {line:?} to {u} in a round about another session")
        });
        let Some(w) = self.sm(key).waiting.pop_front() else {
            self.fail(&format!(
                "{line:?} to {u}, who has no command waiting for a reply"
            ))
        };
        if !w.at_once {
            let now = self.now;
            let flood = self.cfg.flood.clone();
            if let (Some(b), Some(f)) = (&mut self.sm(key).bucket, &flood) {
                let ok = b.take(f, now);
                self.check(ok, || {
                    format!(
                        "{u}'s waiting command ran at {} though flood control ({f:?}) had no token",
                        rel(now)
                    )
                });
            }
            self.count("cmd-delayed");
        }
        let expect = self.expectation(key, &w.parsed);
        self.check_reply(key, expect, line);
    }

    fn expectation(&self, key: Key, parsed: &Parsed) -> Expect {
        let s = self.s(key).clone();
        let me = s.user().unwrap().to_string();
        let max = self.cfg.max_line_bytes;
        let command = match parsed {
            Parsed::Malformed(e) => {
                return Expect::Exactly(ServerLine::Err(decode_error_reply(*e, max)))
            }
            Parsed::Line(Err(ParseError::UnknownCommand(word))) => {
                return Expect::Exactly(ServerLine::Err(ErrorReply::UnknownCommand {
                    word: word.clone(),
                }))
            }
            Parsed::Line(Err(ParseError::Usage(of))) => {
                return Expect::Exactly(ServerLine::Err(ErrorReply::Usage {
                    usage: of.text(self.cfg.last_hour_minutes),
                }))
            }
            Parsed::Line(Err(ParseError::Blank)) => unreachable!("blank lines never wait"),
            Parsed::Line(Ok(c)) => c.clone(),
        };
        match command {
            Command::Idle(IdleArg::None | IdleArg::Seq(_)) => {
                unreachable!("heartbeat replies never wait")
            }
            Command::WhoElse => Expect::Who,
            Command::WhoLast { minutes } if minutes < self.cfg.last_hour_minutes => {
                Expect::Last(minutes)
            }
            Command::WhoLast { .. } => Expect::Exactly(ServerLine::Err(ErrorReply::Usage {
                usage: format!("wholast <0-{}>", self.cfg.last_hour_minutes - 1),
            })),
            Command::Idle(IdleArg::Busy) => Expect::Busy,
            Command::Idle(IdleArg::Online) => Expect::Online(
                self.owed(&me)
                    .into_iter()
                    .filter(|id| !s.delivered.contains(id))
                    .collect(),
            ),
            Command::Logout => Expect::Logout,
            Command::Message { to, text } => {
                let fate = self.accounts.contains(&to).then(|| self.fate(&to, true));
                Expect::Message { to, text, fate }
            }
            Command::Broadcast { audience, text } => {
                let (names, holds_offline): (Vec<String>, bool) = match &audience {
                    Audience::Online => (self.online.keys().cloned().collect(), false),
                    Audience::All => (self.accounts.names().map(String::from).collect(), true),
                    Audience::Users(list) => (list.clone(), true),
                };
                let unknown: Vec<String> = names
                    .iter()
                    .filter(|n| !self.accounts.contains(n))
                    .cloned()
                    .collect();
                let set: BTreeSet<String> = names.into_iter().collect();
                let recipients = set
                    .into_iter()
                    .filter(|n| self.accounts.contains(n))
                    .map(|n| {
                        let f = self.fate(&n, holds_offline);
                        (n, f)
                    })
                    .collect();
                Expect::Broadcast {
                    text,
                    unknown,
                    recipients,
                }
            }
        }
    }

    fn fate(&self, r: &str, holds_offline: bool) -> Fate {
        let owed = self.owed(r);
        let max = self.cfg.max_held_per_user;
        match self.online.get(r) {
            Some(k) => {
                let s = self.s(*k);
                if s.busy {
                    let boxed = owed.iter().filter(|id| !s.delivered.contains(id)).count();
                    Fate {
                        route: Some(Route::Hold(HeldBecause::Busy)),
                        deferred: false,
                        full: boxed >= max,
                    }
                } else {
                    Fate {
                        route: Some(Route::Deliver),
                        deferred: s.block.is_some(),
                        full: false,
                    }
                }
            }
            None => Fate {
                route: holds_offline.then_some(Route::Hold(HeldBecause::Offline)),
                deferred: false,
                full: holds_offline && owed.len() >= max,
            },
        }
    }
}

/// A line that answers a command (as opposed to deliveries and probes).
fn is_command_reply(l: &ServerLine) -> bool {
    super::is_reply(l) || matches!(l, ServerLine::Offline { .. })
}
