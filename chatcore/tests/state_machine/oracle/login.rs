//! Logging in: what each login line and each password answer must produce,
//! exactly, and the lockout ledger.

use std::net::IpAddr;

use chatcore::names::is_valid_user_name;
use chatcore::wire::{Ask, ByeReason, ErrorReply, ServerLine};
use chatcore::CheckId;

use super::{decode_error_reply, In, Key, Oracle, Stage, Want};
use crate::model::ms;

/// Whole seconds, rounded up: `ERR blocked` never says 0 while blocked.
fn ceil_secs(d: std::time::Duration) -> u64 {
    ms(d).div_ceil(1000)
}

impl Oracle {
    /// Seconds the (name, address) pair stays blocked. Names that are not
    /// valid user names are never recorded, so never blocked.
    fn blocked_secs(&self, user: &str, ip: IpAddr) -> Option<u64> {
        if !self.recorded(user) {
            return None;
        }
        let until = self.pairs.get(&(user.to_string(), ip))?.until?;
        (until > self.now).then(|| ceil_secs(until.since(self.now)))
    }

    /// Whether failures of this name are recorded per (name, address).
    fn recorded(&self, user: &str) -> bool {
        is_valid_user_name(user)
    }

    fn refuse_blocked(&mut self, key: Key, secs: u64) {
        let s = self.sm(key);
        s.script
            .push_back(Want::Line(ServerLine::Err(ErrorReply::Blocked {
                seconds_left: secs,
            })));
        s.script
            .push_back(Want::Line(ServerLine::Bye(ByeReason::Blocked)));
        s.script.push_back(Want::Close);
    }

    /// Whether the session is owed its `Close` already.
    fn doomed(&self, key: Key) -> bool {
        self.s(key).script.back() == Some(&Want::Close)
    }

    /// A line answering `ASK username` or `ASK password`.
    pub(super) fn login_line(&mut self, key: Key, input: In) {
        let s = self.s(key).clone();
        let max = self.cfg.max_line_bytes;
        match (&s.stage, input) {
            (Stage::AwaitUser, In::Malformed(e)) => {
                let s = self.sm(key);
                s.script
                    .push_back(Want::Line(ServerLine::Err(decode_error_reply(e, max))));
                s.script
                    .push_back(Want::Line(ServerLine::Ask(Ask::Username)));
            }
            (Stage::AwaitPassword(_), In::Malformed(e)) => {
                let s = self.sm(key);
                s.script
                    .push_back(Want::Line(ServerLine::Err(decode_error_reply(e, max))));
                s.script
                    .push_back(Want::Line(ServerLine::Ask(Ask::Password)));
            }
            (Stage::AwaitUser, In::Line(line)) => {
                // Blanks around the name are dropped (docs/PROTOCOL.md §3)
                // and nothing else; the trimmed name is the lockout pair's.
                let name = line.trim_matches([' ', '\t']).to_string();
                if name.is_empty() {
                    self.sm(key)
                        .script
                        .push_back(Want::Line(ServerLine::Ask(Ask::Username)));
                } else if let Some(secs) = self.blocked_secs(&name, s.ip) {
                    self.refuse_blocked(key, secs);
                } else {
                    if !is_valid_user_name(&name) {
                        self.count("invalid-name");
                    }
                    let sm = self.sm(key);
                    sm.script
                        .push_back(Want::Line(ServerLine::Ask(Ask::Password)));
                    sm.stage = Stage::AwaitPassword(name);
                }
            }
            (Stage::AwaitPassword(name), In::Line(password)) => {
                // Another connection may have blocked the pair meanwhile.
                if let Some(secs) = self.blocked_secs(name, s.ip) {
                    self.refuse_blocked(key, secs);
                } else {
                    let sm = self.sm(key);
                    sm.script.push_back(Want::Check {
                        user: name.clone(),
                        password: password.clone(),
                    });
                    sm.stage = Stage::Checking {
                        user: name.clone(),
                        password,
                        check: None,
                    };
                }
            }
            (stage, _) => unreachable!("login line in {stage:?}"),
        }
    }

    /// The driver answered a password check.
    pub(super) fn answer(&mut self, key: Key, check: CheckId, ok: bool) {
        let s = self.s(key).clone();
        let Stage::Checking {
            user,
            password,
            check: Some(current),
        } = &s.stage
        else {
            return; // the connection is gone or moved on: ignored
        };
        if s.closed || *current != check {
            return;
        }
        let right = self
            .accounts
            .get(user)
            .and_then(|c| c.verify_plain(password))
            == Some(true);
        self.check(ok == right, || {
            format!("the driver answered ok={ok} for {user:?}")
        });
        self.sm(key).answering = Some(user.clone());
        let valid = self.recorded(user);
        let pair = (user.clone(), s.ip);
        if let Some(secs) = self.blocked_secs(user, s.ip) {
            // Blocked while the check was in flight (by another connection's
            // failures): refused, not counted, the block not extended.
            self.count("answer-while-blocked");
            self.refuse_blocked(key, secs);
        } else if !ok {
            let mut blocks = false;
            if valid {
                let p = self.pairs.entry(pair).or_default();
                p.count += 1;
                if p.count >= self.cfg.block_after {
                    p.count = 0;
                    p.until = Some(self.now + self.cfg.block_time);
                    blocks = true;
                }
            }
            if blocks {
                self.refuse_blocked(key, ceil_secs(self.cfg.block_time));
            } else {
                self.sm(key)
                    .script
                    .push_back(Want::Line(ServerLine::Err(ErrorReply::BadCredentials)));
                self.attempt_end(key);
            }
        } else if self.online.contains_key(user) {
            self.sm(key)
                .script
                .push_back(Want::Line(ServerLine::Err(ErrorReply::AlreadyOnline)));
            self.attempt_end(key);
        } else {
            self.log_in(key, user.clone());
        }
        if self.doomed(key) {
            self.sm(key).pending.clear();
            return;
        }
        self.cascade(key);
    }

    /// A failed attempt: ask again, or `BYE login-failed` once the
    /// connection's attempts are spent.
    fn attempt_end(&mut self, key: Key) {
        let max = self.cfg.max_login_attempts;
        let s = self.sm(key);
        s.failed += 1;
        s.stage = Stage::AwaitUser;
        if s.failed >= max {
            s.script
                .push_back(Want::Line(ServerLine::Bye(ByeReason::LoginFailed)));
            s.script.push_back(Want::Close);
        } else {
            s.script
                .push_back(Want::Line(ServerLine::Ask(Ask::Username)));
        }
    }

    fn log_in(&mut self, key: Key, user: String) {
        let now = self.now;
        let owed = self.owed(&user);
        let bucket = self.cfg.flood.as_ref().map(|f| super::Bucket::full(f, now));
        let ip = self.s(key).ip;
        self.pairs.remove(&(user.clone(), ip));
        self.online.insert(user.clone(), key);
        self.ever.insert(user.clone());
        let s = self.sm(key);
        s.stage = Stage::LoggedIn(user.clone());
        s.login_at = now;
        s.last_rx = now;
        s.last_cmd_def = now;
        s.last_cmd_any = now;
        s.last_probe = now;
        s.busy = false;
        s.bucket = bucket;
        s.script
            .push_back(Want::Line(ServerLine::LoggedIn { user }));
        if !owed.is_empty() {
            s.block = Some(super::Block {
                announced: false,
                remaining: owed.into_iter().collect(),
                reply: None,
                deferred: Default::default(),
            });
            s.page_count = 0;
        }
    }

    /// Lines sent ahead of the answer, handled in order once it is in.
    fn cascade(&mut self, key: Key) {
        let lines: Vec<In> = self.sm(key).pending.drain(..).collect();
        for input in lines {
            if self.doomed(key) {
                break;
            }
            match &self.s(key).stage {
                // Queued again behind the new check, without a bound: they
                // were counted when they arrived.
                Stage::Checking { .. } => self.sm(key).pending.push_back(input),
                Stage::AwaitUser | Stage::AwaitPassword(_) => self.login_line(key, input),
                Stage::LoggedIn(_) => self.command_arrives(key, input, true),
            }
        }
        let s = self.s(key);
        if s.input_ended
            && matches!(s.stage, Stage::AwaitUser | Stage::AwaitPassword(_))
            && !self.doomed(key)
        {
            self.sm(key).script.push_back(Want::Close);
        }
    }

    /// The lockout property, stated on its own: for each (name, address),
    /// answers to password checks never give more than `block_after - 1`
    /// `ERR bad-credentials` in a row, never `bad-credentials` or `OK login`
    /// while the pair is blocked, and never block a name that is not a
    /// valid user name.
    pub(super) fn ledger(&mut self, key: Key, name: &str, line: &ServerLine) {
        let ip = self.s(key).ip;
        let now = self.now;
        let block_after = self.cfg.block_after;
        let block_time = self.cfg.block_time;
        let valid = is_valid_user_name(name);
        let l = self
            .ledger
            .entry((name.to_string(), ip))
            .or_default()
            .clone();
        let blocked = l.blocked_until.filter(|u| *u > now);
        let mut next = l.clone();
        match line {
            ServerLine::Err(ErrorReply::BadCredentials) => {
                self.check(blocked.is_none(), || {
                    format!(
                        "lockout: ERR bad-credentials for ({name}, {ip}) while that pair is blocked ({}s left): the answer was counted instead of refused",
                        blocked.map_or(0, |u| u.since(now).as_secs())
                    )
                });
                if valid {
                    next.bad_in_a_row += 1;
                    self.check(next.bad_in_a_row < block_after, || {
                        format!(
                            "lockout: {} ERR bad-credentials in a row for ({name}, {ip}), and no block",
                            next.bad_in_a_row
                        )
                    });
                }
                self.count("ledger-bad");
            }
            ServerLine::Err(ErrorReply::Blocked { .. }) => {
                self.check(valid, || {
                    format!(
                        "lockout: {name:?} is no valid user name, yet ({name:?}, {ip}) was blocked"
                    )
                });
                if blocked.is_none() {
                    next.bad_in_a_row = 0;
                    next.blocked_until = Some(now + block_time);
                }
            }
            ServerLine::LoggedIn { .. } => {
                self.check(blocked.is_none(), || {
                    format!("lockout: OK login for ({name}, {ip}) while that pair is blocked")
                });
                next.bad_in_a_row = 0;
            }
            _ => {}
        }
        self.ledger.insert((name.to_string(), ip), next);
    }
}
