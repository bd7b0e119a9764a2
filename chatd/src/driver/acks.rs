//! `OK`s for messages that wait, queued, for company (`ok_delay`).
//!
//! In a conversation each client sends a message and then waits for the
//! reply. Its `OK` is ready long before the reply, and written alone it
//! costs the server one write and the client one wake-up and one read more
//! than the reply alone: on loopback the writes are most of the server's
//! time per message. So an `OK message …` or `OK broadcast …` is queued
//! without waking the connection's writer ([`Outbound::push_quiet`]): the
//! next line to that client takes it along, and whatever is still asleep
//! `ok_delay` after the first such `OK` is woken then. The order of lines
//! never changes, only when the writer runs.
//!
//! A client that only sends (a script with a window of messages in flight)
//! gets nothing but `OK`s, so each would wait the whole delay: once a quiet
//! `OK` went out alone, its connection's next `OK`s go at once until a line
//! of another kind comes to it (`Outbound`).
//!
//! [`Outbound::push_quiet`]: crate::outbound::Outbound::push_quiet

use std::time::Duration;

use chatcore::wire::ServerLine;
use chatcore::SessionId;
use tokio::time::Instant;

/// Whether a line is an `OK` that may wait for company.
pub(super) fn may_wait(line: &ServerLine) -> bool {
    matches!(
        line,
        ServerLine::Delivered { .. } | ServerLine::Queued { .. } | ServerLine::Broadcasted { .. }
    )
}

/// The sessions with an `OK` asleep in their queue, and when to wake them.
#[derive(Debug)]
pub(super) struct QuietAcks {
    /// `ok_delay`; zero sends every `OK` at once.
    delay: Duration,
    /// Sessions given a quiet `OK` since the last wake-up (a session may be
    /// listed twice; waking it twice is harmless).
    sessions: Vec<SessionId>,
    /// When the oldest of them is due.
    due: Option<Instant>,
}

impl QuietAcks {
    pub(super) fn new(delay: Duration) -> QuietAcks {
        QuietAcks {
            delay,
            sessions: Vec::new(),
            due: None,
        }
    }

    /// Whether `OK`s wait at all.
    pub(super) fn enabled(&self) -> bool {
        !self.delay.is_zero()
    }

    /// `session` was given a quiet `OK` now.
    pub(super) fn queued(&mut self, session: SessionId) {
        if self.sessions.last() != Some(&session) {
            self.sessions.push(session);
        }
        if self.due.is_none() {
            self.due = Some(Instant::now() + self.delay);
        }
    }

    /// When the sessions listed must be woken, if any are.
    pub(super) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The sessions to wake now; the list starts again.
    pub(super) fn take(&mut self) -> Vec<SessionId> {
        self.due = None;
        std::mem::take(&mut self.sessions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_quiet_ok_sets_when_all_are_woken() {
        let mut server = chatcore::Server::new(
            chatcore::Time::EPOCH,
            chatcore::Config::default(),
            chatcore::Accounts::new(),
        );
        let peer = std::net::Ipv4Addr::LOCALHOST.into();
        let one = server.open_session(chatcore::Time::EPOCH, peer);
        let two = server.open_session(chatcore::Time::EPOCH, peer);
        let mut acks = QuietAcks::new(Duration::from_millis(1));
        assert!(acks.enabled());
        assert_eq!(acks.due(), None);
        let start = Instant::now();
        acks.queued(one);
        tokio::time::advance(Duration::from_micros(600)).await;
        acks.queued(two);
        acks.queued(two);
        // Due a delay after the first, not the last.
        assert_eq!(acks.due(), Some(start + Duration::from_millis(1)));
        assert_eq!(acks.take(), [one, two]);
        assert_eq!(acks.due(), None);
        assert!(acks.take().is_empty());
        assert!(!QuietAcks::new(Duration::ZERO).enabled());
    }

    #[test]
    fn only_oks_for_messages_wait() {
        let waits = |line: &str| may_wait(&ServerLine::parse(line).unwrap());
        assert!(waits("OK message bob delivered"));
        assert!(waits("OK message bob queued offline"));
        assert!(waits("OK broadcast 3 2"));
        assert!(!waits("OK login alice"));
        assert!(!waits("OK status busy"));
        assert!(!waits("IDLE 7"));
        assert!(!waits("MSG 17 2026-11-24T17:12:01Z bob hi"));
    }
}
