//! Server lines as the bytes the outbound queues take.

use std::sync::Arc;

use bytes::Bytes;
use chatcore::wire::ServerLine;
use chatcore::{Message, MessageKind};

/// A scratch buffer larger than this after a line is let go, so that one
/// long line does not keep its room for good.
const KEEP_SCRATCH: usize = 16 * 1024;

/// Formats server lines, `\n` included.
///
/// A line is written into a buffer kept for the purpose and copied into
/// bytes of exactly its length. Bytes made from a `String` with room to
/// spare cost an allocation of their own for their reference count; a
/// buffer of exactly the line's length does not until it is shared, and
/// most lines never are.
///
/// A broadcast's sends come one after another in a round, so remembering
/// the last broadcast is enough for its line to be formatted once and its
/// bytes shared by every receiver: formatting it per receiver (the
/// timestamp above all) was a tenth of the server's instructions under
/// fan-out.
#[derive(Default)]
pub(super) struct Lines {
    scratch: String,
    /// The last broadcast formatted, and its bytes.
    last: Option<(Arc<Message>, Bytes)>,
}

impl Lines {
    /// `line` as bytes; a broadcast's, once for all its receivers.
    pub(super) fn bytes(&mut self, line: &ServerLine) -> Bytes {
        let ServerLine::Deliver(message) = line else {
            return self.format(line);
        };
        if message.kind != MessageKind::Broadcast {
            return self.format(line);
        }
        if let Some((last, bytes)) = &self.last {
            if Arc::ptr_eq(last, message) {
                return bytes.clone();
            }
        }
        let bytes = self.format(line);
        self.last = Some((Arc::clone(message), bytes.clone()));
        bytes
    }

    fn format(&mut self, line: &ServerLine) -> Bytes {
        self.scratch.clear();
        line.write_line(&mut self.scratch);
        let bytes = Bytes::copy_from_slice(self.scratch.as_bytes());
        if self.scratch.capacity() > KEEP_SCRATCH {
            self.scratch = String::new();
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatcore::Time;

    fn message(id: u64, kind: MessageKind, text: &str) -> Arc<Message> {
        Arc::new(Message {
            id,
            at: Time::from_unix_millis(1_700_000_000_000),
            from: "alice".into(),
            kind,
            text: text.into(),
        })
    }

    #[test]
    fn a_broadcast_is_formatted_once_for_all_its_receivers() {
        let mut lines = Lines::default();
        let hi = ServerLine::Deliver(message(7, MessageKind::Broadcast, "hi all"));
        let first = lines.bytes(&hi);
        assert_eq!(first, format!("{hi}\n").as_bytes());
        // Every further receiver gets the same bytes, not a copy.
        for _ in 0..3 {
            let again = lines.bytes(&hi);
            assert_eq!(again.as_ptr(), first.as_ptr());
        }
        // Another message, even with the same text, is its own line.
        let other = ServerLine::Deliver(message(8, MessageKind::Broadcast, "hi all"));
        let second = lines.bytes(&other);
        assert_ne!(second.as_ptr(), first.as_ptr());
        assert!(second.starts_with(b"BCAST 8 "), "{second:?}");
    }

    #[test]
    fn every_line_is_its_text_and_a_newline() {
        let mut lines = Lines::default();
        let long = "x".repeat(2 * KEEP_SCRATCH);
        for line in [
            ServerLine::Deliver(message(9, MessageKind::Private, "hi bob")),
            ServerLine::Delivered { user: "bob".into() },
            ServerLine::Deliver(message(10, MessageKind::Private, &long)),
            ServerLine::Idle { seq: 3 },
        ] {
            assert_eq!(lines.bytes(&line), format!("{line}\n").as_bytes());
        }
        // The long line's room was let go.
        assert!(lines.scratch.capacity() <= KEEP_SCRATCH);
    }
}
