//! The command line: what clap parses, before it is merged with the
//! configuration file into [`Settings`](super::Settings).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

// clap reports a bad PORT (not an integer in 0–65535) itself, naming the
// value, with exit status 2.
/// The CHAT/1 chat server.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chatd",
    version,
    about = "The CHAT/1 chat server",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// The address to listen on (default 127.0.0.1).
    pub host: Option<String>,
    /// The port to listen on; 0 picks a free port (default 4119).
    pub port: Option<u16>,
    /// A TOML configuration file; command-line values win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The users file: one `<user> <password>` a line (default user_pass.txt).
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Where held messages and other durable state live (default chatd-data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Something other than serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Reads one password line from stdin and prints its argon2id PHC
    /// string, for the users file.
    HashPassword,
}

impl Cli {
    /// Parses the process's arguments; on a bad command line prints clap's
    /// message and exits with status 2 (0 for `--help`/`--version`).
    pub fn from_env() -> Cli {
        <Cli as clap::Parser>::parse()
    }
}
