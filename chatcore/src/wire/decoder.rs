//! Framing: bytes in, lines out, never holding more than one line's bound.

use thiserror::Error;

/// Why a line was refused by the [`LineDecoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The line passed `max` bytes (terminator included). Its bytes up to
    /// the next `\n` are discarded without being buffered.
    #[error("line longer than {max} bytes")]
    LineTooLong {
        /// The bound that was passed.
        max: usize,
    },
    /// The line was not UTF-8, or held a control character other than TAB.
    #[error("line is not valid UTF-8 text")]
    BadEncoding,
}

/// Splits a byte stream into lines by `\n` alone, whatever the read
/// boundaries, dropping one `\r` before the `\n`.
///
/// The decoder never buffers more than `max_line_bytes` of one line: an
/// over-long line is reported as soon as it passes the bound (so a peer
/// cannot make the reader wait for a terminator that never comes) and the
/// rest of it is skipped as it arrives.
///
/// ```
/// use chatcore::wire::{LineDecoder, DecodeError};
/// let mut d = LineDecoder::new(8);
/// let mut input: &[u8] = b"hi\r\nwho";
/// assert_eq!(d.decode(&mut input), Some(Ok("hi".to_string())));
/// assert_eq!(d.decode(&mut input), None); // "who" waits for its `\n`
/// let mut more: &[u8] = b"else\nthis line is too long\n";
/// assert_eq!(d.decode(&mut more), Some(Ok("whoelse".to_string())));
/// assert_eq!(d.decode(&mut more), Some(Err(DecodeError::LineTooLong { max: 8 })));
/// assert_eq!(d.decode(&mut more), None);
/// ```
#[derive(Debug, Clone)]
pub struct LineDecoder {
    max: usize,
    buf: Vec<u8>,
    discarding: bool,
}

impl LineDecoder {
    /// A decoder for lines of at most `max_line_bytes` bytes, `\n` included.
    /// A bound below 2 is raised to 2 so that a one-byte line fits.
    pub fn new(max_line_bytes: usize) -> Self {
        LineDecoder {
            max: max_line_bytes.max(2),
            buf: Vec::new(),
            discarding: false,
        }
    }

    /// The bound this decoder enforces.
    pub fn max_line_bytes(&self) -> usize {
        self.max
    }

    /// Bytes of an unfinished line held now (never more than the bound).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Consumes bytes from the front of `input` up to and including the next
    /// complete line, and returns it; returns `None` once `input` is used up
    /// without completing a line (the partial line is kept for the next call).
    pub fn decode(&mut self, input: &mut &[u8]) -> Option<Result<String, DecodeError>> {
        while !input.is_empty() {
            let newline = find_newline(input);
            let take = newline.map_or(input.len(), |i| i + 1);
            let (chunk, rest) = input.split_at(take);
            *input = rest;
            let content = newline.map_or(chunk, |_| &chunk[..chunk.len() - 1]);
            if self.discarding {
                if newline.is_some() {
                    self.discarding = false;
                }
                continue;
            }
            // Content plus the terminator must fit within the bound.
            if self.buf.len() + content.len() >= self.max {
                // Freed, not cleared: a connection that sent one long line
                // would otherwise keep its buffer for as long as it lives.
                self.buf = Vec::new();
                self.discarding = newline.is_none();
                return Some(Err(DecodeError::LineTooLong { max: self.max }));
            }
            self.buf.extend_from_slice(content);
            if newline.is_some() {
                let line = std::mem::take(&mut self.buf);
                return Some(check_text(line));
            }
        }
        None
    }
}

/// The place of the first `\n` in `bytes`, looked for eight bytes at a
/// time: a byte at a time was most of the time spent framing a line, and
/// blocks tested whole then searched a byte at a time still took 240
/// instructions for a line of 80 bytes, against 130 (callgrind).
///
/// A word holds a `\n` where its bytes XOR `\n` hold a zero byte, and
/// `(x - 0x01..01) & !x & 0x80..80` sets the top bit of the lowest zero
/// byte of `x` (and maybe of bytes above it, which do not matter: the
/// lowest set bit is the first `\n`, the word being little-endian).
fn find_newline(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const TOPS: u64 = 0x8080_8080_8080_8080;
    const NEWLINES: u64 = ONES * b'\n' as u64;
    let mut words = bytes.chunks_exact(8);
    let mut start = 0;
    for word in &mut words {
        let x = u64::from_le_bytes(word.try_into().unwrap_or_default()) ^ NEWLINES;
        let found = x.wrapping_sub(ONES) & !x & TOPS;
        if found != 0 {
            return Some(start + (found.trailing_zeros() / 8) as usize);
        }
        start += 8;
    }
    let rest = words.remainder().iter().position(|&b| b == b'\n');
    rest.map(|i| start + i)
}

/// Turns a complete line's bytes into text: drops one trailing `\r`, and
/// refuses invalid UTF-8 and control characters other than TAB.
fn check_text(mut line: Vec<u8>) -> Result<String, DecodeError> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let text = String::from_utf8(line).map_err(|_| DecodeError::BadEncoding)?;
    if has_forbidden_control(&text) {
        return Err(DecodeError::BadEncoding);
    }
    Ok(text)
}

/// C0 controls other than TAB, and DEL. C1 controls (U+0080–U+009F) are
/// refused too: some terminals act on them as escape sequences. The
/// definition [`has_forbidden_control`] is checked against (tests and the
/// `testing` strategies); lines themselves are checked by that one.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn is_forbidden_control(c: char) -> bool {
    (c.is_control() && c != '\t') || c == '\u{7f}'
}

/// Whether `text` holds a C0 control other than TAB, DEL or a C1 control,
/// found in its bytes rather than by decoding each character: every line
/// is checked, and decoding was most of the time spent on it. In UTF-8 the
/// C0 controls and DEL are single bytes, and the C1 controls are `0xC2`
/// followed by `0x80`–`0x9F`.
pub(crate) fn has_forbidden_control(text: &str) -> bool {
    let bytes = text.as_bytes();
    // Most lines are printable ASCII: a test the compiler can run on many
    // bytes at once (it does not stop early) rules them out.
    let plain = bytes
        .iter()
        .fold(true, |plain, &b| plain & (0x20..0x7f).contains(&b));
    if plain {
        return false;
    }
    bytes.iter().enumerate().any(|(i, &b)| match b {
        b'\t' => false,
        0..=0x1f | 0x7f => true,
        0xc2 => matches!(bytes.get(i + 1), Some(0x80..=0x9f)),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_newline_is_found_wherever_it_is() {
        // Fillers next to `\n` in value, and ones with the top bit set:
        // what a word-at-a-time search could mistake for it.
        for (len, filler) in
            (0..100).flat_map(|len| [b'x', 0x0b, 0x09, 0x8a, 0x00, 0xff, 0x80].map(|f| (len, f)))
        {
            for at in 0..=len {
                let mut bytes = vec![filler; len];
                if at < len {
                    bytes[at] = b'\n';
                    if at + 1 < len {
                        bytes[len - 1] = b'\n';
                    }
                }
                let expected = bytes.iter().position(|&b| b == b'\n');
                assert_eq!(find_newline(&bytes), expected, "{len} {at}");
            }
        }
    }

    #[test]
    fn the_byte_check_agrees_with_the_character_check_on_every_character() {
        for c in (0..=0x10_ffff).filter_map(char::from_u32) {
            for text in [
                format!("{c}"),
                format!("a{c}é"),
                format!("\u{a0}{c}\u{a0}x"),
            ] {
                assert_eq!(
                    has_forbidden_control(&text),
                    text.chars().any(is_forbidden_control),
                    "{text:?}"
                );
            }
        }
    }

    fn all(d: &mut LineDecoder, mut input: &[u8]) -> Vec<Result<String, DecodeError>> {
        let mut out = Vec::new();
        while let Some(item) = d.decode(&mut input) {
            out.push(item);
        }
        out
    }

    #[test]
    fn lines_split_across_reads_join() {
        let mut d = LineDecoder::new(64);
        assert!(all(&mut d, b"mess").is_empty());
        assert!(all(&mut d, b"age bob h").is_empty());
        assert_eq!(
            all(&mut d, b"i\r\nwhoelse\n"),
            vec![Ok("message bob hi".into()), Ok("whoelse".into())]
        );
    }

    #[test]
    fn an_over_long_line_leaves_no_buffer_behind() {
        // A connection that once sent a long line and went quiet must not
        // keep a line's worth of buffer for the rest of its life.
        let mut d = LineDecoder::new(4096);
        assert!(all(&mut d, &[b'x'; 3000]).is_empty());
        assert_eq!(
            all(&mut d, &[b'x'; 2000]),
            vec![Err(DecodeError::LineTooLong { max: 4096 })]
        );
        assert_eq!(d.buf.capacity(), 0);
        assert_eq!(all(&mut d, b"rest\nok\n"), vec![Ok("ok".into())]);
    }

    #[test]
    fn bound_counts_the_terminator() {
        let mut d = LineDecoder::new(5);
        assert_eq!(all(&mut d, b"abcd\n"), vec![Ok("abcd".into())]);
        assert_eq!(
            all(&mut d, b"abcde\n"),
            vec![Err(DecodeError::LineTooLong { max: 5 })]
        );
        assert_eq!(all(&mut d, b"ok\n"), vec![Ok("ok".into())]);
    }

    #[test]
    fn over_long_line_is_reported_early_and_skipped_to_its_end() {
        let mut d = LineDecoder::new(8);
        assert_eq!(
            all(&mut d, b"0123456789"),
            vec![Err(DecodeError::LineTooLong { max: 8 })]
        );
        assert_eq!(d.buffered(), 0);
        assert!(all(&mut d, &[b'x'; 10_000]).is_empty());
        assert_eq!(d.buffered(), 0);
        assert_eq!(all(&mut d, b"tail\nnext\n"), vec![Ok("next".into())]);
    }

    #[test]
    fn refuses_bad_encoding_and_controls_but_keeps_tabs() {
        let mut d = LineDecoder::new(64);
        assert_eq!(
            all(&mut d, b"\xff\xfe\n"),
            vec![Err(DecodeError::BadEncoding)]
        );
        assert_eq!(
            all(&mut d, b"a\x1b[2Jb\n"),
            vec![Err(DecodeError::BadEncoding)]
        );
        assert_eq!(all(&mut d, b"a\0b\n"), vec![Err(DecodeError::BadEncoding)]);
        assert_eq!(
            all(&mut d, b"a\x7fb\n"),
            vec![Err(DecodeError::BadEncoding)]
        );
        assert_eq!(all(&mut d, b"a\rb\n"), vec![Err(DecodeError::BadEncoding)]);
        assert_eq!(
            all(&mut d, "a\u{9b}b\n".as_bytes()),
            vec![Err(DecodeError::BadEncoding)]
        );
        assert_eq!(
            all(&mut d, "a\tb é\n".as_bytes()),
            vec![Ok("a\tb é".into())]
        );
    }
}
