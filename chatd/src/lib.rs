//! The CHAT/1 server.
#![forbid(unsafe_code)]
