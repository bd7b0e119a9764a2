//! One connection's state, from greeting to goodbye.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;

use super::api::{CheckId, LoadId};
use super::flood::Bucket;
use crate::config::Config;
use crate::message::{Message, MessageId};
use crate::time::Time;
use crate::wire::{Audience, ErrorReply};

/// A line as it arrived from the client: its text, or the `ERR` that
/// answers a line the decoder (or the core's own check) refused.
///
/// Lines sent while a password is being checked wait in this form: whether
/// they are login answers or commands depends on how the check ends, so
/// they are classified only then, in arrival order.
#[derive(Debug)]
pub(crate) enum Received {
    Text(String),
    Refused(ErrorReply),
}

#[derive(Debug)]
pub(crate) enum Phase {
    /// `ASK username` was sent.
    AwaitUser,
    /// `ASK password` was sent for `user`.
    AwaitPassword { user: String },
    /// The driver is verifying the password.
    Checking {
        user: String,
        check: CheckId,
        pending: VecDeque<Received>,
        /// The account changed or went away while the check ran (see
        /// `Server::set_accounts`): a match against the old credential
        /// must not log in.
        stale: bool,
    },
    /// Logged in.
    Active(Box<Active>),
}

/// A delivery written to the client and not yet confirmed.
#[derive(Debug)]
pub(crate) struct Unconfirmed {
    /// The last probe sequence number sent before the delivery: an answer to
    /// any later probe confirms it.
    pub(crate) after_probe: u64,
    pub(crate) message: Arc<Message>,
    /// Whether the message is in the store (it came from the box), so that
    /// confirming it must release it there.
    pub(crate) stored: bool,
}

#[derive(Debug)]
pub(crate) struct Active {
    pub(crate) user: String,
    pub(crate) busy: bool,
    /// Anything at all arrived (heartbeat liveness).
    pub(crate) last_heard: Time,
    /// A command other than a heartbeat reply arrived (inactivity timeout).
    pub(crate) last_command: Time,
    pub(crate) next_heartbeat: Time,
    /// The last probe sequence number sent; 0 before the first.
    pub(crate) probe_seq: u64,
    /// When to send the probe that confirms recent deliveries.
    pub(crate) confirm_at: Option<Time>,
    pub(crate) unconfirmed: VecDeque<Unconfirmed>,
    /// Flood control's tokens.
    pub(crate) bucket: Option<Bucket>,
    /// Commands waiting for the flood rate or for the held messages to be
    /// sent, in arrival order.
    pub(crate) backlog: VecDeque<Request>,
    /// The rest of an `OFFLINE` block being sent page by page, and what
    /// must follow it before anything else.
    pub(crate) paging: VecDeque<Paged>,
    /// A page was sent and the driver has not yet said it is written.
    pub(crate) page_in_flight: bool,
    /// The block's next page was asked of the store (the request and how
    /// many entries it asked for); the block waits for the answer.
    pub(crate) loading: Option<(LoadId, usize)>,
    /// The largest id delivered in this session: the entries of the box up
    /// to it are this session's deliveries, which stay in the store until
    /// confirmed, so a block started later reads only above it.
    pub(crate) delivered_upto: MessageId,
    /// The client answered a probe with a bare `idle`...
    pub(crate) bare_answers: bool,
    /// ...and never with `idle <seq>`.
    pub(crate) seq_answers: bool,
}

/// What waits in an `OFFLINE` block still being sent.
#[derive(Debug)]
pub(crate) enum Paged {
    /// A message, as [`Unconfirmed::stored`] says.
    Message { message: Arc<Message>, stored: bool },
    /// Entries of the user's box still in the store, not read yet: `count`
    /// of them, with ids in `(after, upto]`. Read a page at a time.
    Stored {
        after: MessageId,
        upto: MessageId,
        count: usize,
    },
    /// A reply that must come after the block (`OK status online`).
    Reply(crate::wire::ServerLine),
}

/// A logged-in client's line that gets exactly one reply, as classified on
/// arrival: what waits in [`Active::backlog`] for its turn.
///
/// Heartbeat answers and blank lines are never here: they are handled the
/// moment they arrive, so running a request never meets one.
#[derive(Debug)]
pub(crate) enum Request {
    /// `message <to> <text>`.
    Message { to: String, text: String },
    /// `broadcast [<audience>] <text>`.
    Broadcast { audience: Audience, text: String },
    /// `whoelse`.
    WhoElse,
    /// `wholast <minutes>`.
    WhoLast { minutes: u64 },
    /// `idle busy`.
    SetBusy,
    /// `idle online`.
    SetOnline,
    /// `logout`.
    Logout,
    /// A line refused with this reply (unreadable, unknown or misused).
    Refuse(ErrorReply),
}

impl Active {
    pub(crate) fn new(now: Time, user: String, config: &Config) -> Self {
        Active {
            bucket: config.flood.as_ref().map(|f| Bucket::full(now, f)),
            backlog: VecDeque::new(),
            paging: VecDeque::new(),
            page_in_flight: false,
            loading: None,
            delivered_upto: 0,
            bare_answers: false,
            seq_answers: false,
            user,
            busy: false,
            last_heard: now,
            last_command: now,
            next_heartbeat: now + config.heartbeat,
            probe_seq: 0,
            confirm_at: None,
            unconfirmed: VecDeque::new(),
        }
    }

    /// Whether the client answers probes without confirming anything (the
    /// original design's client: a bare `idle`, never `idle <seq>`).
    pub(crate) fn never_confirms(&self) -> bool {
        self.bare_answers && !self.seq_answers
    }

    /// Whether a delivery is waiting for a probe sent after it.
    pub(crate) fn needs_probe(&self) -> bool {
        self.unconfirmed
            .back()
            .is_some_and(|u| u.after_probe == self.probe_seq)
    }

    pub(crate) fn heartbeat_deadline(&self, config: &Config) -> Time {
        self.last_heard + config.heartbeat_timeout
    }

    pub(crate) fn inactivity_deadline(&self, config: &Config) -> Time {
        self.last_command + config.time_out
    }
}

#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) peer: IpAddr,
    pub(crate) opened: Time,
    /// Failed login attempts of any kind on this connection.
    pub(crate) failed_attempts: u32,
    pub(crate) phase: Phase,
    /// This session's entry in the timer set.
    pub(crate) armed: Option<Time>,
    /// The peer sent EOF ([`Input::InputEnded`](super::Input::InputEnded)): the session ends
    /// once what it sent before is handled.
    pub(crate) input_ended: bool,
}

impl Session {
    pub(crate) fn new(now: Time, peer: IpAddr) -> Self {
        Session {
            peer,
            opened: now,
            failed_attempts: 0,
            phase: Phase::AwaitUser,
            armed: None,
            input_ended: false,
        }
    }

    pub(crate) fn active(&self) -> Option<&Active> {
        match &self.phase {
            Phase::Active(a) => Some(a),
            _ => None,
        }
    }

    pub(crate) fn active_mut(&mut self) -> Option<&mut Active> {
        match &mut self.phase {
            Phase::Active(a) => Some(a),
            _ => None,
        }
    }

    /// The earliest moment this session may have work.
    pub(crate) fn deadline(&self, config: &Config) -> Time {
        match &self.phase {
            Phase::Active(a) => {
                let mut d = a
                    .next_heartbeat
                    .min(a.heartbeat_deadline(config))
                    .min(a.inactivity_deadline(config));
                if let Some(c) = a.confirm_at {
                    d = d.min(c);
                }
                // Waiting commands run on the next token, but not while an
                // `OFFLINE` block is being sent: `Input::Written` moves that.
                let waiting = !a.backlog.is_empty() && a.paging.is_empty();
                if let (true, Some(b), Some(f)) = (waiting, &a.bucket, &config.flood) {
                    d = d.min(b.next_token(f));
                }
                d
            }
            _ => self.opened + config.login_timeout,
        }
    }
}
