//! CHAT/1 on the wire, shared by the server and clients: the bounded line
//! decoder, typed client commands and typed server lines. Every type here
//! prints with [`std::fmt::Display`] in the form its `parse` reads back.

mod command;
mod decoder;
mod server_line;

pub use command::{Audience, Command, IdleArg, ParseError, UsageOf};
pub(crate) use decoder::has_forbidden_control;
#[cfg(any(test, feature = "testing"))]
pub(crate) use decoder::is_forbidden_control;
pub use decoder::{DecodeError, LineDecoder};
pub use server_line::{Ask, BadServerLine, ByeReason, ErrorReply, HeldBecause, ServerLine, Status};
