//! The second reference: ngircd, an IRC server in C that keeps nothing on
//! disk. This module holds what the harness needs to speak enough IRC to
//! run S1–S3 against it (registration, `PING`, `JOIN`, `PRIVMSG`) and the
//! configuration it starts ngircd with.
//!
//! Incoming `PRIVMSG` lines are turned into CHAT/1 deliveries, so the
//! scenarios' handlers stay the same for every server: a message to a nick
//! becomes a private message, one to a channel a broadcast.

use std::path::PathBuf;
use std::sync::Arc;

use chatcore::wire::ServerLine;
use chatcore::{Message, MessageKind, Time};

/// The channel S2's fan-out goes through.
pub const CHANNEL: &str = "#bench";

/// At most this many IRC logins at once. ngircd listens with a backlog of
/// 10 connections; a larger burst of connects from one process overflows
/// it, and some connections are reset (seen in S3 with 256 at once).
pub const LOGIN_CONCURRENCY: usize = 8;

/// What the harness cares about in a line from an IRC server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrcLine {
    /// `PING :<token>`: answered with `PONG :<token>`.
    Ping(String),
    /// `001`: registration is complete.
    Welcome,
    /// `366`: end of `NAMES`, the last reply to our own `JOIN`.
    EndOfNames,
    /// `:<nick>!<user>@<host> PRIVMSG <target> :<text>`.
    Privmsg {
        /// The sender's nick.
        from: String,
        /// A nick or a channel.
        target: String,
        /// The message text.
        text: String,
    },
    /// `ERROR :<reason>`: the server is closing the connection.
    Error(String),
    /// Anything else (notices, `JOIN` lines of others, numerics).
    Other,
}

/// Splits an IRC line into its prefix (without `:`), command and
/// parameters (the trailing one without its `:`).
fn split(line: &str) -> (Option<&str>, &str, Vec<&str>) {
    let mut rest = line.trim_end_matches(['\r', '\n']);
    let prefix = match rest.strip_prefix(':') {
        Some(r) => {
            let (p, r) = r.split_once(' ').unwrap_or((r, ""));
            rest = r;
            Some(p)
        }
        None => None,
    };
    let rest = rest.trim_start_matches(' ');
    let (command, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            break;
        }
        if let Some(trailing) = rest.strip_prefix(':') {
            params.push(trailing);
            break;
        }
        let (p, r) = rest.split_once(' ').unwrap_or((rest, ""));
        params.push(p);
        rest = r;
    }
    (prefix, command, params)
}

/// Reads one line from an IRC server.
pub fn parse(line: &str) -> IrcLine {
    let (prefix, command, params) = split(line);
    match (command, params.as_slice()) {
        ("PING", [token, ..]) => IrcLine::Ping((*token).to_string()),
        ("001", _) => IrcLine::Welcome,
        ("366", _) => IrcLine::EndOfNames,
        ("ERROR", p) => IrcLine::Error(p.first().copied().unwrap_or_default().to_string()),
        ("PRIVMSG", [target, text]) => match prefix {
            Some(p) => IrcLine::Privmsg {
                from: p.split(['!', '@']).next().unwrap_or(p).to_string(),
                target: (*target).to_string(),
                text: (*text).to_string(),
            },
            None => IrcLine::Other,
        },
        _ => IrcLine::Other,
    }
}

/// A `PRIVMSG` as the CHAT/1 delivery the scenarios' handlers expect. IRC
/// carries no id or time; both are zero, and no handler reads them.
pub fn as_delivery(from: &str, target: &str, text: &str) -> ServerLine {
    let kind = if target.starts_with(['#', '&']) {
        MessageKind::Broadcast
    } else {
        MessageKind::Private
    };
    ServerLine::Deliver(Arc::new(Message {
        id: 0,
        at: Time::EPOCH,
        from: from.to_string(),
        kind,
        text: text.to_string(),
    }))
}

/// Where ngircd is, when it is on `PATH`.
pub fn find_ngircd() -> Option<PathBuf> {
    let out = std::process::Command::new("which")
        .arg("ngircd")
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?;
    let path = PathBuf::from(path.trim());
    (out.status.success() && path.is_file()).then_some(path)
}

/// ngircd's configuration for a load test on `127.0.0.1:<port>`: no limit
/// on connections (per IP too, all clients share 127.0.0.1) or channels,
/// nicks as long as ngircd allows (31; the harness's names are shorter), no flood penalties (chatd's
/// flood control is raised the same way), no PAM, IDENT or DNS look-ups
/// (they would time every login), and PING only after 10 idle minutes so
/// S3's idle sessions stay idle.
pub fn ngircd_config(port: u16, motd: &std::path::Path) -> String {
    format!(
        "[Global]\n\
         Name = bench.invalid\n\
         Info = chat-bench reference server\n\
         Listen = 127.0.0.1\n\
         Ports = {port}\n\
         MotdFile = {}\n\
         \n\
         [Limits]\n\
         MaxConnections = 0\n\
         MaxConnectionsIP = 0\n\
         MaxJoins = 0\n\
         MaxNickLength = 31\n\
         MaxPenaltyTime = 0\n\
         PingTimeout = 600\n\
         PongTimeout = 600\n\
         \n\
         [Options]\n\
         PAM = no\n\
         Ident = no\n\
         DNS = no\n",
        motd.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lines_the_harness_needs() {
        assert_eq!(
            parse("PING :bench.invalid\r"),
            IrcLine::Ping("bench.invalid".into())
        );
        assert_eq!(
            parse(":bench.invalid 001 p00001 :Welcome to the Internet Relay Network"),
            IrcLine::Welcome
        );
        assert_eq!(
            parse(":bench.invalid 366 p00001 #bench :End of NAMES list"),
            IrcLine::EndOfNames
        );
        assert_eq!(
            parse(":p00001!~p00001@127.0.0.1 PRIVMSG p00002 :123 4 xx x"),
            IrcLine::Privmsg {
                from: "p00001".into(),
                target: "p00002".into(),
                text: "123 4 xx x".into()
            }
        );
        assert_eq!(
            parse(":p00001!~p00001@127.0.0.1 PRIVMSG #bench :9 9 yy"),
            IrcLine::Privmsg {
                from: "p00001".into(),
                target: "#bench".into(),
                text: "9 9 yy".into()
            }
        );
        assert_eq!(
            parse("ERROR :Closing connection"),
            IrcLine::Error("Closing connection".into())
        );
        assert_eq!(
            parse(":p00002!~p00002@127.0.0.1 JOIN :#bench"),
            IrcLine::Other
        );
        assert_eq!(parse("PRIVMSG x :no prefix"), IrcLine::Other);
        assert_eq!(parse(""), IrcLine::Other);
    }

    #[test]
    fn privmsg_becomes_a_delivery_of_the_right_kind() {
        let ServerLine::Deliver(m) = as_delivery("a", "b", "hi there") else {
            panic!("not a delivery");
        };
        assert_eq!(
            (m.kind, m.from.as_str(), m.text.as_str()),
            (MessageKind::Private, "a", "hi there")
        );
        let ServerLine::Deliver(m) = as_delivery("a", CHANNEL, "x") else {
            panic!("not a delivery");
        };
        assert_eq!(m.kind, MessageKind::Broadcast);
    }

    /// The IRC client mode against a real ngircd: registration, a private
    /// message, and a channel message that reaches the other member but not
    /// the sender. Skipped (passes) when ngircd is not installed.
    #[tokio::test]
    async fn talks_to_a_real_ngircd() {
        use crate::client::{connect_login, Kind};
        use crate::ctx::{Ctx, Opts};
        let ctx = Ctx::new(None, Opts::quick(), false).unwrap();
        if ctx.ngircd.is_none() {
            eprintln!("ngircd not installed; skipped");
            return;
        }
        let server = ctx.start_ngircd("test").unwrap().unwrap();
        let accounts = crate::users::plain("t", 2);
        let mut a = connect_login(Kind::Irc, server.addr, &accounts[0])
            .await
            .unwrap();
        let mut b = connect_login(Kind::Irc, server.addr, &accounts[1])
            .await
            .unwrap();
        a.join(CHANNEL).await.unwrap();
        b.join(CHANNEL).await.unwrap();
        a.send_line_for_test(&Kind::Irc.private(&b.user, "1 2 private"))
            .await;
        a.send_line_for_test(&Kind::Irc.broadcast("3 4 to all"))
            .await;
        a.send_line_for_test("PING :marker").await;
        let mut got = Vec::new();
        while got.len() < 2 {
            if let IrcLine::Privmsg { from, target, text } = parse(&b.next_line_for_test().await) {
                got.push((from, target.starts_with('#'), text));
            }
        }
        assert_eq!(
            got,
            vec![
                (a.user.clone(), false, "1 2 private".to_string()),
                (a.user.clone(), true, "3 4 to all".to_string()),
            ]
        );
        // The sender gets its PONG and no copy of its channel message.
        loop {
            let line = a.next_line_for_test().await;
            assert!(!line.contains("PRIVMSG"), "echoed to the sender: {line}");
            if line.contains("PONG") && line.contains("marker") {
                break;
            }
        }
        drop(server);
        ctx.cleanup();
    }

    #[test]
    fn config_sets_the_port_and_lifts_the_limits() {
        let c = ngircd_config(16667, std::path::Path::new("/tmp/motd"));
        for line in [
            "Ports = 16667",
            "Listen = 127.0.0.1",
            "MaxConnectionsIP = 0",
            "MaxPenaltyTime = 0",
            "PAM = no",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} missing in\n{c}");
        }
    }
}
