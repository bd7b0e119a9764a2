//! Ping-pong pairs: one private message in flight per pair, each echo
//! timed. S1 measures them alone; S4 runs one pair through a login storm to
//! see what the storm does to everyone else.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use chatcore::wire::ServerLine;
use chatcore::MessageKind;

use crate::client::{
    close_all, login_many, parse_payload, payload, Handler, Kind, LoggedIn, Out, Session,
};
use crate::hist::now_us;
use crate::users::Account;

use super::{ByPhase, Phase, STOP};

/// Sends to its peer, and on each echo records the round trip and sends
/// the next: one message in flight per pair.
struct Pinger {
    kind: Kind,
    peer: String,
    phase: Phase,
    text: usize,
    rec: ByPhase,
}

impl Handler for Pinger {
    fn on_line(&mut self, line: &ServerLine, out: &Out) {
        let ServerLine::Deliver(m) = line else {
            return;
        };
        if m.from != self.peer {
            return;
        }
        let Some((t, seq)) = parse_payload(&m.text) else {
            return;
        };
        let now = now_us();
        let phase = self.phase.get();
        if phase == STOP {
            return;
        }
        self.rec.record(phase, now.saturating_sub(t));
        out.send(
            self.kind
                .private(&self.peer, &payload(now_us(), seq + 1, self.text)),
        );
    }
}

/// Sends every private message back to its sender.
struct Echo {
    kind: Kind,
}

impl Handler for Echo {
    fn on_line(&mut self, line: &ServerLine, out: &Out) {
        if let ServerLine::Deliver(m) = line {
            if m.kind == MessageKind::Private {
                out.send(self.kind.private(&m.from, &m.text));
            }
        }
    }
}

/// Ping-pong pairs, running.
pub(super) struct Pairs {
    pingers: Vec<Session<Pinger>>,
    echoes: Vec<Session<Echo>>,
    pub(super) phase: Phase,
}

impl Pairs {
    /// Logs in `2 * pairs` accounts and starts every pair's first message.
    pub(super) async fn start(
        kind: Kind,
        addr: SocketAddr,
        accounts: &[Account],
        pairs: usize,
        text: usize,
    ) -> Result<Pairs> {
        if accounts.len() < 2 * pairs {
            bail!("{pairs} pairs need {} accounts", 2 * pairs);
        }
        let sessions = login_many(kind, addr, &accounts[..2 * pairs], 64).await?;
        let phase = Phase::default();
        let mut it = sessions.into_iter();
        let firsts: Vec<LoggedIn> = it.by_ref().take(pairs).collect();
        let echoes: Vec<Session<Echo>> = it.map(|s| s.spawn(Echo { kind })).collect();
        let pingers: Vec<Session<Pinger>> = firsts
            .into_iter()
            .zip(&echoes)
            .map(|(s, e)| {
                s.spawn(Pinger {
                    kind,
                    peer: e.user.clone(),
                    phase: phase.clone(),
                    text,
                    rec: ByPhase::default(),
                })
            })
            .collect();
        for (p, e) in pingers.iter().zip(&echoes) {
            p.out
                .send(kind.private(&e.user, &payload(now_us(), 0, text)));
        }
        Ok(Pairs {
            pingers,
            echoes,
            phase,
        })
    }

    /// Stops the pairs and merges what they recorded.
    pub(super) async fn finish(self) -> ByPhase {
        self.phase.set(STOP);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut all = ByPhase::default();
        for p in close_all(self.pingers, Duration::from_secs(10)).await {
            all.add(&p.rec);
        }
        close_all(self.echoes, Duration::from_secs(10)).await;
        all
    }
}
