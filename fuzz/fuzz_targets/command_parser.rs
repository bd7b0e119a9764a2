//! The command and server-line parsers, fed arbitrary text: they must never
//! panic, and whatever they accept must print back to a form that parses
//! to the same value.
#![no_main]

use chatcore::wire::{Command, ServerLine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    if let Ok(command) = Command::parse(line) {
        let printed = command.to_string();
        assert_eq!(Command::parse(&printed), Ok(command), "{printed:?}");
    }
    if let Ok(server_line) = ServerLine::parse(line) {
        let printed = server_line.to_string();
        assert_eq!(ServerLine::parse(&printed), Ok(server_line), "{printed:?}");
    }
});
