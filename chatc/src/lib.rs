//! The CHAT/1 terminal client.
#![forbid(unsafe_code)]
