//! Chat messages as the server accepted them.

use crate::time::Time;

/// A message id: unique per data store and never reused.
pub type MessageId = u64;

/// Private or broadcast: decides `MSG` or `BCAST` on the wire.
///
/// With the `serde` feature: `"private"` or `"broadcast"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum MessageKind {
    /// Sent with `message`.
    Private,
    /// Sent with one of the `broadcast` forms.
    Broadcast,
}

/// One accepted message. Every recipient of a broadcast shares one value
/// (behind an `Arc`), with one id.
///
/// With the `serde` feature, an object with the fields below; a
/// deserialized message is a value of its own, so recipients that shared
/// one `Arc` before no longer do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Message {
    /// Its id.
    pub id: MessageId,
    /// When the server accepted it, to the whole second.
    pub at: Time,
    /// The sender.
    pub from: String,
    /// Private or broadcast.
    pub kind: MessageKind,
    /// The text, byte for byte.
    pub text: String,
}
