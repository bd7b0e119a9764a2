//! The line decoder, fed arbitrary bytes in arbitrary chunks: it must give
//! the same lines whatever the chunking, never buffer more than its bound,
//! and never hand out a line with a terminator or a control character.
#![no_main]

use chatcore::wire::{DecodeError, LineDecoder};
use libfuzzer_sys::fuzz_target;

fn decode(max: usize, chunks: &[&[u8]]) -> Vec<Result<String, DecodeError>> {
    let mut d = LineDecoder::new(max);
    let mut out = Vec::new();
    for chunk in chunks {
        let mut rest: &[u8] = chunk;
        while let Some(item) = d.decode(&mut rest) {
            out.push(item);
        }
        assert!(d.buffered() < d.max_line_bytes());
    }
    out
}

fuzz_target!(|input: (u8, Vec<u8>, Vec<u8>)| {
    let (max, cuts, data) = input;
    let max = usize::from(max) + 2;
    let whole = decode(max, &[&data]);
    let mut chunks = Vec::new();
    let mut rest = &data[..];
    for cut in cuts {
        if rest.is_empty() {
            break;
        }
        let at = usize::from(cut) % rest.len() + 1;
        let (a, b) = rest.split_at(at);
        chunks.push(a);
        rest = b;
    }
    chunks.push(rest);
    let chunked = decode(max, &chunks);
    // An over-long line is reported as soon as it passes the bound, so the
    // report can come at a different place only if nothing else differs.
    assert_eq!(whole, chunked);
    for line in whole.into_iter().flatten() {
        assert!(line.len() < max);
        assert!(!line.contains('\n'));
        assert!(!line.chars().any(|c| c.is_control() && c != '\t'));
    }
});
