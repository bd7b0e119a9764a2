//! The session loop against a fake server on a local socket: heartbeats,
//! `OFFLINE` blocks, lost connections and scripted mode's waiting for
//! replies, as the person (or script) would see them.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::output::Output;

/// The person's side in a test.
struct Person {
    /// Command lines, typed once logged in.
    typed: &'static [&'static str],
    /// The input ends after them (the end of a script).
    then_eof: bool,
    /// Piped mode rather than a terminal.
    scripted: bool,
    limits: Limits,
}

impl Person {
    /// At a terminal, typing `typed` and then nothing.
    fn typing(typed: &'static [&'static str]) -> Person {
        Person {
            typed,
            then_eof: false,
            scripted: false,
            limits: Limits::default(),
        }
    }

    /// A script of `typed`, ending after them.
    fn script(typed: &'static [&'static str]) -> Person {
        Person {
            typed,
            then_eof: true,
            scripted: true,
            limits: Limits::default(),
        }
    }
}

/// Runs a session against `script`, a fake server given the accepted
/// socket, with `typed` as the person's command lines (the password
/// answer is `pw`). Returns the exit status and what was shown.
async fn session_with<F, Fut>(typed: &'static [&'static str], script: F) -> (i32, Vec<String>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (ending, shown) = session_as(Person::typing(typed), script).await;
    (ending.code, shown)
}

/// Runs a session of `person` against `script`, a fake server given the
/// accepted socket (the password answer is `pw`). Returns how it ended
/// and what was shown, the last words included.
async fn session_as<F, Fut>(person: Person, script: F) -> (Ending, Vec<String>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        script(sock).await;
    });
    let shown = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&shown);
    let (requests, rx) = std::sync::mpsc::channel();
    let (events_tx, events) = channel(crate::frontend::INPUT_QUEUE);
    let (typed, then_eof) = (person.typed, person.then_eof);
    std::thread::spawn(move || {
        for r in rx {
            // The session may be over before every line is taken.
            let _ = match r {
                Request::Username => panic!("--user answers the name"),
                Request::Password => events_tx.blocking_send(InputEvent::Answer("pw".into())),
                Request::Commands { .. } => {
                    for line in typed {
                        let _ = events_tx.blocking_send(InputEvent::Line((*line).into()));
                    }
                    if then_eof {
                        let _ = events_tx.blocking_send(InputEvent::Eof);
                    }
                    Ok(())
                }
            };
        }
    });
    let mut fe = Frontend {
        output: Output::spawn(Box::new(move |l| sink.lock().unwrap().push(l))),
        requests,
        events,
        scripted: person.scripted,
        screen: crate::frontend::Screen::Plain,
    };
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut interrupts = Interrupts::new().unwrap();
    let ending = run(
        stream,
        Some("alice".into()),
        &mut fe,
        &mut interrupts,
        &person.limits,
    )
    .await;
    fe.finish(ending.words.as_deref());
    server.await.unwrap();
    let shown = shown.lock().unwrap().clone();
    (ending, shown)
}

/// The fake server's side of a login as alice with password `pw`.
async fn log_in(lines: &mut Lines<BufReader<OwnedReadHalf>>, w: &mut OwnedWriteHalf) {
    w.write_all(b"HELLO CHAT/1\nASK username\n").await.unwrap();
    assert_eq!(next(lines).await, "alice");
    w.write_all(b"ASK password\n").await.unwrap();
    assert_eq!(next(lines).await, "pw");
    w.write_all(b"OK login alice\n").await.unwrap();
}

async fn next(lines: &mut Lines<BufReader<OwnedReadHalf>>) -> String {
    lines.next_line().await.unwrap().unwrap()
}

#[tokio::test]
async fn heartbeats_are_answered_unseen_and_repeats_dropped() {
    let (code, shown) = session_with(&["whoelse", "busy", "help"], |sock| async move {
        let (r, mut w) = sock.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"HELLO CHAT/1\nASK username\n").await.unwrap();
        assert_eq!(next(&mut lines).await, "alice");
        w.write_all(b"ASK password\n").await.unwrap();
        assert_eq!(next(&mut lines).await, "pw");
        w.write_all(
            b"OK login alice\nOFFLINE 1\nMSG 5 2026-11-24T17:12:01Z bob hi\nIDLE 3\n\
              MSG 5 2026-11-24T17:12:01Z bob hi\n",
        )
        .await
        .unwrap();
        assert_eq!(next(&mut lines).await, "idle 3");
        assert_eq!(next(&mut lines).await, "whoelse");
        w.write_all(b"WHO\n").await.unwrap();
        assert_eq!(next(&mut lines).await, "idle busy");
        w.write_all(b"OK status busy\nIDLE 4\n").await.unwrap();
        assert_eq!(next(&mut lines).await, "idle 4");
        w.write_all(b"BYE shutdown\n").await.unwrap();
    })
    .await;
    assert_eq!(code, 0);
    // `help` is answered locally, before the server's replies.
    let mut want: Vec<String> = ["logged in as alice", "1 message while you were away:"]
        .map(String::from)
        .to_vec();
    want.push(format!(
        "{} bob: hi",
        crate::render::local_time(
            chatcore::Time::from_unix_secs(1_795_540_321),
            &chrono::Local
        )
    ));
    want.extend(
        [
            HELP,
            "you are alone",
            "you are now busy",
            "the server shut down",
        ]
        .map(String::from),
    );
    assert_eq!(shown, want);
}

#[tokio::test]
async fn a_lost_connection_exits_1() {
    let (code, shown) = session_with(&[], |sock| async move {
        let (r, mut w) = sock.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"HELLO CHAT/1\nASK username\n").await.unwrap();
        lines.next_line().await.unwrap();
        w.write_all(b"ASK password\n").await.unwrap();
        lines.next_line().await.unwrap();
        w.write_all(b"OK login alice\n").await.unwrap();
    })
    .await;
    assert_eq!(code, 1);
    assert_eq!(
        shown,
        [
            "logged in as alice",
            "the connection to the server was lost"
        ]
    );
}

/// `MSG <id>` from bob, as the server writes it, and as chatc shows it.
fn msg(id: u64) -> (String, String) {
    let wire = format!("MSG {id} 2026-11-24T17:12:01Z bob m{id}\n");
    let at = chatcore::Time::from_unix_secs(1_795_540_321);
    let shown = format!(
        "{} bob: m{id}",
        crate::render::local_time(at, &chrono::Local)
    );
    (wire, shown)
}

#[tokio::test]
async fn probes_inside_an_offline_block_are_answered_at_once_and_never_shown() {
    let (code, shown) = session_with(&[], |sock| async move {
        let (r, mut w) = sock.into_split();
        let mut lines = BufReader::new(r).lines();
        log_in(&mut lines, &mut w).await;
        // PROTOCOL.md §5: probes may come between the lines of the
        // block, uncounted. Each is answered before the block goes on.
        w.write_all(b"OFFLINE 3\nIDLE 1\n").await.unwrap();
        assert_eq!(next(&mut lines).await, "idle 1");
        w.write_all(format!("{}IDLE 2\n", msg(1).0).as_bytes())
            .await
            .unwrap();
        assert_eq!(next(&mut lines).await, "idle 2");
        w.write_all(format!("{}IDLE 3\nIDLE 4\n{}", msg(2).0, msg(3).0).as_bytes())
            .await
            .unwrap();
        assert_eq!(next(&mut lines).await, "idle 3");
        assert_eq!(next(&mut lines).await, "idle 4");
        w.write_all(b"IDLE 5\n").await.unwrap();
        assert_eq!(next(&mut lines).await, "idle 5");
        w.write_all(b"BYE shutdown\n").await.unwrap();
    })
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        shown,
        [
            "logged in as alice".to_string(),
            "3 messages while you were away:".into(),
            msg(1).1,
            msg(2).1,
            msg(3).1,
            "the server shut down".into(),
        ]
    );
}

#[tokio::test]
async fn a_script_waits_through_an_offline_block_for_its_reply() {
    let (ending, shown) = session_as(Person::script(&["whoelse"]), |sock| async move {
        let (r, mut w) = sock.into_split();
        let mut lines = BufReader::new(r).lines();
        log_in(&mut lines, &mut w).await;
        w.write_all(b"OFFLINE 2\nIDLE 1\n").await.unwrap();
        let mut two = [next(&mut lines).await, next(&mut lines).await];
        two.sort();
        assert_eq!(two, ["idle 1", "whoelse"]);
        // The probe in the block is no reply: chatc still waits.
        w.write_all(format!("{}IDLE 2\n{}", msg(1).0, msg(2).0).as_bytes())
            .await
            .unwrap();
        assert_eq!(next(&mut lines).await, "idle 2");
        w.write_all(b"WHO bob\n").await.unwrap();
        assert_eq!(next(&mut lines).await, "logout");
        w.write_all(b"BYE logout\n").await.unwrap();
    })
    .await;
    assert_eq!((ending.code, ending.unanswered), (0, 0));
    assert_eq!(
        shown,
        [
            "logged in as alice".to_string(),
            "2 messages while you were away:".into(),
            msg(1).1,
            msg(2).1,
            "online: bob".into(),
            "logged out".into(),
        ]
    );
}

#[tokio::test]
async fn a_script_logs_out_only_after_every_reply() {
    let typed = &[
        "message bob a",
        "idle",
        "idle 3",
        "",
        "help",
        "whoelse",
        "idle busy",
    ];
    let (ending, shown) = session_as(Person::script(typed), |sock| async move {
        let (r, mut w) = sock.into_split();
        let mut lines = BufReader::new(r).lines();
        log_in(&mut lines, &mut w).await;
        for want in ["message bob a", "idle", "idle 3", "whoelse", "idle busy"] {
            assert_eq!(next(&mut lines).await, want);
        }
        w.write_all(b"OK message bob delivered\nWHO\n")
            .await
            .unwrap();
        // One reply still missing: no logout yet, probes answered.
        w.write_all(b"IDLE 4\n").await.unwrap();
        assert_eq!(next(&mut lines).await, "idle 4");
        w.write_all(b"OK status busy\n").await.unwrap();
        assert_eq!(next(&mut lines).await, "logout");
        w.write_all(b"BYE logout\n").await.unwrap();
    })
    .await;
    assert_eq!((ending.code, ending.unanswered), (0, 0));
    assert_eq!(
        shown,
        [
            "logged in as alice",
            HELP,
            "delivered to bob",
            "you are alone",
            "you are now busy",
            "logged out"
        ]
    );
}

#[tokio::test]
async fn a_script_never_has_more_than_the_limit_unanswered() {
    const TYPED: &[&str] = &["whoelse", "wholast 1", "whoelse", "wholast 2", "whoelse"];
    const REPLIES: &[&str] = &["WHO", "LAST", "WHO", "LAST", "WHO"];
    let mut person = Person::script(TYPED);
    person.limits.max_in_flight = 2;
    let (ending, _) = session_as(person, |sock| async move {
        let (r, mut w) = sock.into_split();
        let mut lines = BufReader::new(r).lines();
        log_in(&mut lines, &mut w).await;
        assert_eq!(next(&mut lines).await, TYPED[0]);
        assert_eq!(next(&mut lines).await, TYPED[1]);
        for (i, reply) in REPLIES.iter().enumerate() {
            // Two unanswered (or the script's last): what chatc sends
            // next is the answer to a probe, not another command.
            w.write_all(format!("IDLE {i}\n").as_bytes()).await.unwrap();
            assert_eq!(next(&mut lines).await, format!("idle {i}"));
            w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            if let Some(cmd) = TYPED.get(i + 2) {
                assert_eq!(next(&mut lines).await, *cmd);
            }
        }
        assert_eq!(next(&mut lines).await, "logout");
        w.write_all(b"BYE logout\n").await.unwrap();
    })
    .await;
    assert_eq!((ending.code, ending.unanswered), (0, 0));
}

#[tokio::test]
async fn a_script_gives_up_on_a_server_that_stops_answering() {
    let mut person = Person::script(&["message bob a", "message bob b"]);
    // Shortened from 90 s; the server below goes on probing meanwhile.
    person.limits.reply_stall = Duration::from_secs(1);
    let (ending, shown) = session_as(person, |sock| async move {
        let (r, mut w) = sock.into_split();
        let mut lines = BufReader::new(r).lines();
        log_in(&mut lines, &mut w).await;
        assert_eq!(next(&mut lines).await, "message bob a");
        assert_eq!(next(&mut lines).await, "message bob b");
        w.write_all(b"OK message bob delivered\n").await.unwrap();
        // Probes prove the connection alive, not that commands move.
        let mut seq = 0;
        loop {
            seq += 1;
            if w.write_all(format!("IDLE {seq}\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
            match lines.next_line().await {
                Ok(Some(line)) => assert_eq!(line, format!("idle {seq}")),
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!((ending.code, ending.unanswered), (1, 1));
    assert_eq!(
        shown,
        [
            "logged in as alice",
            "delivered to bob",
            "the server has not answered for 1 s; leaving"
        ]
    );
}

#[tokio::test]
async fn a_connection_refused_for_a_limit_says_the_server_is_full() {
    let (ending, shown) = session_as(Person::typing(&[]), |mut sock| async move {
        sock.write_all(b"ERR rate-limited too many connections\n")
            .await
            .unwrap();
    })
    .await;
    assert_eq!(ending.code, 1);
    assert_eq!(
        shown,
        ["the server is full (too many connections): try again later"]
    );
}
