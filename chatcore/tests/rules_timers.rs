//! PROTOCOL.md §3 and §6 deadlines, whatever the driver's timing: the core
//! runs every deadline that has passed before it looks at anything new, so
//! a driver that calls `handle_timeout` late, early or not at all gets what
//! one that calls it at every deadline gets.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chatcore::testing::{accounts, START};
use chatcore::wire::{Ask, ByeReason, ServerLine};
use chatcore::{Config, Input, Output, Server, SessionId};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn drain(server: &mut Server) -> Vec<Output> {
    std::iter::from_fn(|| server.poll_output()).collect()
}

fn lines_to(outputs: &[Output], to: SessionId) -> Vec<ServerLine> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { session, line } if *session == to => Some(line.clone()),
            _ => None,
        })
        .collect()
}

/// The login timeout is 60 s; a driver that never called `handle_timeout`
/// hands the user name in at 120 s. The connection is over: the name must
/// not be taken and answered with `ASK password`.
#[test]
fn a_user_name_after_the_login_timeout_is_too_late_without_handle_timeout() {
    let mut server = Server::new(START, Config::default(), accounts(&[("alice", "pw")]));
    let s = server.open_session(START, LOCALHOST);
    drain(&mut server);
    server.handle_input(
        START + Duration::from_secs(120),
        Input::Line {
            session: s,
            line: "alice".into(),
        },
    );
    let out = drain(&mut server);
    assert_eq!(
        lines_to(&out, s),
        [ServerLine::Bye(ByeReason::LoginTimeout)]
    );
    assert!(out.contains(&Output::Close { session: s }), "{out:?}");
    assert!(!lines_to(&out, s).contains(&ServerLine::Ask(Ask::Password)));
    assert_eq!(server.session_count(), 0);
}
