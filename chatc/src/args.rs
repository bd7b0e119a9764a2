//! The command line: `chatc [HOST] [PORT] [--user NAME] [--tls [--ca FILE]]`.

use std::path::PathBuf;

use clap::Parser;

/// Shown after the options in `--help`.
const AFTER_HELP: &str = "\
Exit status:
  0  the session ended normally (logout, end of input, Ctrl-C, BYE from the server)
  1  the connection was lost, the server was full, the TLS handshake failed
     (e.g. the server's certificate is not trusted), or with standard input
     not a terminal, a command got no answer from the server (said on stderr)
  2  a usage error: bad arguments, a HOST that does not resolve, an unreadable
     --ca file";

/// The CHAT/1 terminal client.
///
/// Connects to a chatd server (waiting for it if it is not up yet), logs in
/// and lets you chat. With standard input not a terminal it reads the login
/// answers and then commands line by line, so it can be scripted; at the
/// end of input it waits for the reply to every command, then logs out.
#[derive(Debug, Clone, Parser)]
#[command(name = "chatc", version, about, after_help = AFTER_HELP)]
pub struct Args {
    /// The server's host name or IP address.
    #[arg(default_value = "127.0.0.1")]
    pub host: String,

    /// The server's TCP port (1-65535).
    #[arg(default_value_t = 4119, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,

    /// Answer the server's first user-name question with NAME.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Connect with TLS, for a server configured with tls_cert and tls_key.
    /// The server's certificate must be valid for HOST and signed by a
    /// trusted authority (the built-in Mozilla roots, or --ca).
    #[arg(long)]
    pub tls: bool,

    /// With --tls: also trust the CA certificate(s) in this PEM file, e.g.
    /// a private CA or the server's self-signed certificate.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<PathBuf>,
}

impl Args {
    /// Parses the process's command line; on a usage error prints it and
    /// exits with status 2 (clap's convention). Here so the binary, whose
    /// package does not depend on clap, need not.
    pub fn from_command_line() -> Args {
        Args::parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let a = Args::try_parse_from(["chatc"]).unwrap();
        assert_eq!((a.host.as_str(), a.port, a.user), ("127.0.0.1", 4119, None));
        let a = Args::try_parse_from(["chatc", "example.org", "7000", "--user", "bob"]).unwrap();
        assert_eq!((a.host.as_str(), a.port), ("example.org", 7000));
        assert_eq!(a.user.as_deref(), Some("bob"));
    }

    #[test]
    fn tls_options() {
        let a = Args::try_parse_from(["chatc"]).unwrap();
        assert!(!a.tls);
        assert_eq!(a.ca, None);
        let a = Args::try_parse_from(["chatc", "--tls", "--ca", "ca.pem", "host"]).unwrap();
        assert!(a.tls);
        assert_eq!(a.ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(a.host, "host");
        // --ca alone would silently talk plain text: refused.
        let e = Args::try_parse_from(["chatc", "--ca", "ca.pem"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn bad_ports_are_usage_errors() {
        for port in ["0", "65536", "http", "-1"] {
            let e = Args::try_parse_from(["chatc", "localhost", port]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{port}");
        }
    }
}
