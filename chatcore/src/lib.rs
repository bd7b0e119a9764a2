//! chatcore
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod accounts;
pub mod config;
pub mod message;
pub mod names;
pub mod server;
pub mod store;
pub mod time;
pub mod wire;

#[cfg(feature = "testing")]
pub mod testing;

pub use accounts::{Accounts, Credential, UsersFileError};
pub use config::Config;
pub use message::{Message, MessageId, MessageKind};
pub use server::{
    CheckId, Event, Input, LoginFailure, Output, PasswordCheck, Server, SessionEnd, SessionId,
};
pub use store::{LoginFailures, Restored, StoreOp};
pub use time::Time;
