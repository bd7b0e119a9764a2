//! Scripted mode: stdin is not a terminal. Login answers and then commands
//! are read from stdin line by line; lines are printed to stdout plainly.

use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::thread;

use tokio::sync::mpsc::channel;

use crate::frontend::{Frontend, InputEvent, Request, Screen, INPUT_QUEUE};
use crate::output::Output;

/// Starts the stdin reader thread and a plain stdout printer.
pub fn start() -> anyhow::Result<Frontend> {
    let output = Output::spawn(Box::new(|line: String| {
        let mut out = std::io::stdout().lock();
        // Flushed per line so a script reading our stdout sees each reply
        // as it arrives.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }));
    let (requests, rx) = mpsc::channel::<Request>();
    let (events_tx, events) = channel(INPUT_QUEUE);
    thread::Builder::new()
        .name("chatc-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            for request in rx {
                match request {
                    Request::Username | Request::Password => {
                        let e = read_line(&mut stdin).map_or(InputEvent::Eof, InputEvent::Answer);
                        let end = e == InputEvent::Eof;
                        if events_tx.blocking_send(e).is_err() || end {
                            return;
                        }
                    }
                    Request::Commands { .. } => {
                        while let Some(line) = read_line(&mut stdin) {
                            if events_tx.blocking_send(InputEvent::Line(line)).is_err() {
                                return;
                            }
                        }
                        let _ = events_tx.blocking_send(InputEvent::Eof);
                        return;
                    }
                }
            }
        })?;
    Ok(Frontend {
        output,
        requests,
        events,
        scripted: true,
        screen: Screen::Plain,
    })
}

/// One line without its `\n` (or `\r\n`); `None` at the end of input.
/// Bytes that are not UTF-8 become U+FFFD rather than ending the script.
fn read_line(r: &mut impl BufRead) -> Option<String> {
    let mut buf = Vec::new();
    match r.read_until(b'\n', &mut buf) {
        Ok(0) | Err(_) => None,
        Ok(_) => {
            if buf.last() == Some(&b'\n') {
                buf.pop();
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
            }
            Some(String::from_utf8_lossy(&buf).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_lose_their_terminators() {
        let mut input: &[u8] = b"alice\r\nsecret\nlast";
        assert_eq!(read_line(&mut input).as_deref(), Some("alice"));
        assert_eq!(read_line(&mut input).as_deref(), Some("secret"));
        assert_eq!(read_line(&mut input).as_deref(), Some("last"));
        assert_eq!(read_line(&mut input), None);
    }
}
