//! What goes into and comes out of the [`Server`](crate::Server): the whole
//! vocabulary a driver speaks, kept apart from the state behind it so it can
//! be read (and kept stable) on its own. Nothing here does I/O; these are
//! the requests for it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::accounts::Credential;
use crate::message::{Message, MessageId};
use crate::persist::StoreOp;
use crate::time::Time;
use crate::wire::{DecodeError, ServerLine};

/// A connection, as the core knows it. Allocated by
/// [`Server::open_session`](crate::Server::open_session) and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct SessionId(pub(crate) u64);

impl SessionId {
    /// The number behind the id, for logs.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Names one password check, so that a late answer for an attempt that no
/// longer matters (the connection timed out or closed) is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CheckId(pub(crate) u64);

/// Names one [`Output::LoadHeld`], so that an answer that comes after its
/// session ended (or after the core stopped waiting for it) is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct LoadId(pub(crate) u64);

/// Something that happened outside the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A complete line from a connection, already decoded by a
    /// [`LineDecoder`](crate::wire::LineDecoder).
    Line {
        /// From whom.
        session: SessionId,
        /// The line, without its terminator.
        line: String,
    },
    /// A line the decoder refused (too long, bad encoding). It is answered
    /// with an `ERR` and counts as a sign of life.
    Malformed {
        /// From whom.
        session: SessionId,
        /// Why it was refused.
        error: DecodeError,
    },
    /// The connection is gone without `logout` (EOF, reset, a failed write,
    /// or a peer that stopped reading). Unconfirmed deliveries are held again.
    Closed {
        /// Which connection.
        session: SessionId,
    },
    /// The peer closed its sending half (EOF) but may still read. Lines it
    /// sent before are still handled, in order, at the flood rate (a piped
    /// `printf ... | nc` does this); then the session ends: with `BYE
    /// logout` if one of them was `logout`, otherwise as [`Input::Closed`]
    /// does (unconfirmed deliveries are held again), followed by
    /// [`Output::Close`] so the driver flushes and closes the socket.
    InputEnded {
        /// Which connection.
        session: SessionId,
    },
    /// The store cannot make changes durable right now (a full disk, say):
    /// until [`Input::StoreAvailable`], commands whose effect must be
    /// durable (`message`, `broadcast`) are refused with `ERR unavailable
    /// <detail>` and change nothing; everything else goes on.
    StoreUnavailable {
        /// Why, for the `ERR unavailable` detail (for people).
        detail: String,
    },
    /// The store commits again: durable commands are accepted again.
    StoreAvailable,
    /// The answer to an [`Output::CheckPassword`].
    PasswordChecked {
        /// The connection that asked.
        session: SessionId,
        /// The check being answered.
        check: CheckId,
        /// Whether the password matched.
        ok: bool,
    },
    /// Every line sent to the session before an
    /// [`Output::NotifyWritten`] has been written to its socket.
    Written {
        /// Which connection.
        session: SessionId,
    },
    /// The answer to an [`Output::LoadHeld`].
    HeldLoaded {
        /// The connection that asked.
        session: SessionId,
        /// The request being answered.
        load: LoadId,
        /// The entries asked for, oldest first.
        messages: Vec<Arc<Message>>,
    },
    /// The server is shutting down: every session gets `BYE shutdown`.
    Shutdown,
}

impl Input {
    /// The session the input is about, if it is about one.
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Input::Line { session, .. }
            | Input::Malformed { session, .. }
            | Input::Closed { session }
            | Input::InputEnded { session }
            | Input::PasswordChecked { session, .. }
            | Input::Written { session }
            | Input::HeldLoaded { session, .. } => Some(*session),
            Input::StoreUnavailable { .. } | Input::StoreAvailable | Input::Shutdown => None,
        }
    }
}

/// Work for the driver. Drain them with [`Server::poll_output`](crate::Server::poll_output)
/// after every `handle_*` call and act on them in order.
///
/// Deliberately not `#[non_exhaustive]`, unlike [`Event`]: a driver that
/// ignores a kind of output it does not know (a line not sent, a change not
/// made durable, a password never checked) is broken, so a new kind must
/// fail to compile in every driver until it is handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write `line` and a `\n` to the connection, after the lines sent to it
    /// before. It may reach the network before earlier [`Output::Persist`]
    /// changes are durable, unless an [`Output::Barrier`] came between them.
    Send {
        /// To whom.
        session: SessionId,
        /// What.
        line: ServerLine,
    },
    /// Close the connection once the lines sent before this are written.
    /// The core has forgotten the session.
    Close {
        /// Which connection.
        session: SessionId,
    },
    /// Answer with [`Input::Written`] once every line sent to the session
    /// before this output has been written to its socket (not merely
    /// queued). Asked between pages of held messages, so that a big box is
    /// paced by how fast the client reads. Only emitted when
    /// [`Config::held_page_size`](crate::Config::held_page_size) is set.
    NotifyWritten {
        /// Which connection.
        session: SessionId,
    },
    /// Verify a password, off the event loop if it is slow, and answer with
    /// [`Input::PasswordChecked`].
    CheckPassword(PasswordCheck),
    /// Make a change durable. Changes are applied in the order given.
    Persist(StoreOp),
    /// Lines after this one wait for the store: no line sent after it to
    /// `session` (with `None`: no delivery, `ServerLine::Deliver`, to any
    /// session) may reach the network before every [`Output::Persist`]
    /// change emitted before it is durable. Later lines of a session with a
    /// line waiting, and its [`Output::Close`], wait behind it, in order.
    ///
    /// The core emits one for a session before a line that promises
    /// durability: the `OK` of a `message` or `broadcast` that held
    /// something, and the answer to a failed login whose record changed.
    /// It emits one for deliveries after reserving a block of message ids:
    /// a delivery carrying one of them must not be seen before the
    /// reservation is durable, or a crash could hand the same id out twice
    /// (blocks are reserved well ahead, so this rarely holds anything
    /// back). Every other line (deliveries to online users, probes,
    /// replies that changed nothing durable) may go out at once, while the
    /// changes before it are still being committed: a crash then loses
    /// only messages whose senders never got `OK`.
    ///
    /// A driver that commits every change of a round before writing any of
    /// the round's lines meets this without doing anything; one that commits
    /// in the background holds back only what a barrier names.
    Barrier {
        /// Whose lines wait: one session's, or everyone's.
        session: Option<SessionId>,
    },
    /// Read a page of a box from the store and answer with
    /// [`Input::HeldLoaded`]. The core keeps only a summary of each box
    /// (`OFFLINE <n>` needs the count), so an `OFFLINE` block is read from
    /// the store as it is sent.
    ///
    /// The answer must reflect every [`Output::Persist`] emitted before
    /// this output (a driver that commits each round before acting on the
    /// next meets it by reading after the round's commit); whether it
    /// reflects later ones does not matter, since the core changes no entry
    /// in the range while it waits. Until the answer comes, the session's
    /// commands and live messages wait behind the block, as they do behind
    /// a page being written.
    LoadHeld(HeldRequest),
    /// Something worth a log line.
    Event(Event),
}

/// A password to verify, off the event loop if that is slow, answered with
/// [`PasswordCheck::answer`].
///
/// Every check should cost the same work, or response times tell which
/// names exist and how passwords are stored: verify a hashed account's
/// password against its hash, and everything else (a name that is no
/// account, `credential: None`, and a plain-text account) against
/// [`Accounts::dummy_credential`](crate::Accounts::dummy_credential) as
/// well, then answer with the real result: `false` for a name that is no
/// account, [`Credential::verify_plain`] for a plain-text one.
///
/// ```
/// use std::net::{IpAddr, Ipv4Addr};
/// use chatcore::{Accounts, Credential, Input, Output, PasswordCheck, Server, Time};
/// use chatcore::wire::{ErrorReply, ServerLine};
///
/// /// Stands for the driver's argon2 library: slow on purpose, so a real
/// /// driver runs it on a thread of its own.
/// fn argon2_verify(phc: &str, password: &str) -> bool {
///     # let _ = (phc, password);
///     false
/// }
///
/// /// Made once, and again whenever the accounts change.
/// fn dummy(accounts: &Accounts) -> String {
///     match accounts.dummy_credential() {
///         Credential::Argon2id(phc) => phc,
///         Credential::Plain(_) => unreachable!("the dummy is always a hash"),
///     }
/// }
///
/// fn verify(check: &PasswordCheck, dummy: &str) -> Input {
///     let ok = match &check.credential {
///         Some(Credential::Argon2id(phc)) => argon2_verify(phc, &check.password),
///         Some(plain) => {
///             argon2_verify(dummy, &check.password);
///             plain.verify_plain(&check.password).unwrap_or(false)
///         }
///         None => {
///             argon2_verify(dummy, &check.password);
///             false
///         }
///     };
///     check.answer(ok)
/// }
///
/// let accounts = Accounts::parse("alice secret\n").unwrap();
/// let dummy = dummy(&accounts);
/// let now = Time::from_unix_secs(1_795_540_321);
/// let mut server = Server::new(now, Default::default(), accounts);
/// let s = server.open_session(now, IpAddr::V4(Ipv4Addr::LOCALHOST));
/// let mut answers = Vec::new();
/// for line in ["mallory", "guess"] {
///     server.handle_input(now, Input::Line { session: s, line: line.into() });
///     while let Some(output) = server.poll_output() {
///         if let Output::CheckPassword(check) = output {
///             answers.push(verify(&check, &dummy));
///         }
///     }
/// }
/// for answer in answers {
///     server.handle_input(now, answer);
/// }
/// let err = ServerLine::Err(ErrorReply::BadCredentials);
/// assert!(std::iter::from_fn(|| server.poll_output())
///     .any(|o| o == Output::Send { session: s, line: err.clone() }));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordCheck {
    /// The connection that asked.
    pub session: SessionId,
    /// Quote it in the answer.
    pub check: CheckId,
    /// The user name as typed.
    pub user: String,
    /// The password as typed.
    pub password: String,
    /// The account's credential, or `None` for a name that is no account.
    /// The driver must then spend the same work as on a wrong password
    /// (verify against [`Accounts::dummy_credential`](crate::Accounts::dummy_credential))
    /// and answer `ok: false`, so timing does not tell which names exist.
    pub credential: Option<Credential>,
}

impl PasswordCheck {
    /// The answer to this check, to hand to
    /// [`Server::handle_input`](crate::Server::handle_input): whether the
    /// password matched.
    pub fn answer(&self, ok: bool) -> Input {
        Input::PasswordChecked {
            session: self.session,
            check: self.check,
            ok,
        }
    }
}

impl fmt::Debug for PasswordCheck {
    /// Leaves the password out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordCheck")
            .field("session", &self.session)
            .field("check", &self.check)
            .field("user", &self.user)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// A page of a box to read: the entries of `user`'s box with
/// `after < id <= upto`, oldest first, at most `max` of them.
///
/// Fewer than `max` means the range is exhausted; the core then ends the
/// block there even if its summary promised more.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HeldRequest {
    /// The connection that asked.
    pub session: SessionId,
    /// Quote it in the answer.
    pub load: LoadId,
    /// Whose box.
    pub user: String,
    /// Entries at or below this id are not wanted: they were delivered in
    /// this session (deliveries stay in the box until confirmed).
    pub after: MessageId,
    /// Entries above this id are not wanted: they arrived after the block
    /// began and wait in memory behind it.
    pub upto: MessageId,
    /// The most entries to give.
    pub max: usize,
}

/// Why a session ended, for logs. New reasons may come: match with a
/// wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The client sent `logout`.
    Logout,
    /// No command for `time_out`.
    Timeout,
    /// Nothing at all for `heartbeat_timeout`.
    HeartbeatTimeout,
    /// The connection closed without `logout`.
    Closed,
    /// The peer closed its sending half without `logout`, and every line it
    /// sent before was handled.
    InputEnded,
    /// The server shut down.
    Shutdown,
}

/// Why a login attempt failed, for logs. New reasons may come: match with
/// a wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginFailure {
    /// Unknown name or wrong password.
    BadCredentials,
    /// The name is logged in elsewhere.
    AlreadyOnline,
    /// The (name, address) pair is blocked.
    Blocked,
}

/// Something worth a log line. Message texts never appear here. New kinds
/// may come (logging one late is harmless): match with a wildcard arm.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A connection logged in.
    LoggedIn {
        /// The connection.
        session: SessionId,
        /// As whom.
        user: String,
        /// From where.
        peer: IpAddr,
    },
    /// A login attempt failed.
    LoginFailed {
        /// The connection.
        session: SessionId,
        /// The name tried; `None` when what was sent is no valid user name
        /// ([PROTOCOL.md §3](crate::protocol#3-login)). Such text may be anything a client pipelined,
        /// even a password, so it is never handed out to be logged.
        user: Option<String>,
        /// From where.
        peer: IpAddr,
        /// Why.
        reason: LoginFailure,
    },
    /// A (name, address) pair was blocked until `until`.
    Blocked {
        /// The name.
        user: String,
        /// The address.
        peer: IpAddr,
        /// When the block ends.
        until: Time,
    },
    /// A logged-in session ended.
    SessionEnded {
        /// The connection.
        session: SessionId,
        /// Whose it was.
        user: String,
        /// Why it ended.
        how: SessionEnd,
        /// Deliveries that were not confirmed and are held again.
        requeued: usize,
    },
    /// A connection that never logged in was closed.
    LoginAbandoned {
        /// The connection.
        session: SessionId,
        /// From where.
        peer: IpAddr,
        /// The `BYE` it got, if any (none when the peer closed).
        bye: Option<crate::wire::ByeReason>,
    },
}
