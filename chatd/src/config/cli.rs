//! The command line: what clap parses, before it is merged with the
//! configuration file into [`Settings`](super::Settings).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

// clap reports a bad PORT (not an integer in 0–65535) itself, naming the
// value, with exit status 2.
/// The CHAT/1 chat server.
#[derive(Debug, Clone, Default, Parser)]
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
    /// Checks the configuration file, the users file and the TLS files it
    /// names, without starting: exit status 0 if chatd would start with
    /// them, 2 with the reason if not.
    CheckConfig {
        /// The TOML configuration file to check (default: none, that is
        /// the defaults).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

impl Cli {
    /// Parses the process's arguments; on a bad command line prints clap's
    /// message and exits with status 2 (0 for `--help`/`--version`).
    pub fn from_env() -> Cli {
        <Cli as clap::Parser>::parse()
    }
}
