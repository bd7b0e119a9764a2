//! The CHAT/1 protocol text, rendered here so that the section references
//! in this crate's docs are links that resolve wherever the docs are read
//! (docs.rs included). The text is the repository's `docs/PROTOCOL.md`,
//! the one copy kept true, included at build time; `chatcore/PROTOCOL.md`
//! is a symlink to it so that the published crate carries it too.
//!
//! ---
//!
#![doc = include_str!("../PROTOCOL.md")]
