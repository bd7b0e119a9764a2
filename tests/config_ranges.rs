//! Every duration and count key of the configuration file has a range
//! (PROTOCOL.md §9: a bad configuration is exit status 2 with a message
//! naming the key). A value just outside it stops the real binary with
//! status 2 and `chatd: config: <key> must be between <min> and <max>, got
//! <value>`; the boundary values themselves start a server that listens.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

/// One key's range as an operator reads it in the message, the values
/// just outside it, and the other keys a boundary value needs to form a
/// consistent configuration (e.g. a long `heartbeat` needs a longer
/// `heartbeat_timeout`).
struct Row {
    key: &'static str,
    min: &'static str,
    max: &'static str,
    unit: &'static str,
    below: &'static str,
    above: &'static str,
    with_min: &'static [&'static str],
    with_max: &'static [&'static str],
}

const fn row(
    key: &'static str,
    min: &'static str,
    max: &'static str,
    unit: &'static str,
    below: &'static str,
    above: &'static str,
) -> Row {
    Row {
        key,
        min,
        max,
        unit,
        below,
        above,
        with_min: &[],
        with_max: &[],
    }
}

const S: &str = " s";

const ROWS: &[Row] = &[
    row("block_time", "0.001", "604800", S, "0", "604800.001"),
    row("block_after", "1", "100", "", "0", "101"),
    row("failure_memory", "0.001", "2592000", S, "0.0009", "2592001"),
    row("max_failure_records", "1", "10000000", "", "0", "10000001"),
    row("time_out", "0.001", "604800", S, "-1.5", "604801"),
    Row {
        with_max: &["heartbeat_timeout = 3600.5"],
        ..row("heartbeat", "0.01", "3600", S, "0.009", "3600.001")
    },
    Row {
        with_min: &["heartbeat = 0.01", "confirm_delay = 0.01"],
        ..row("heartbeat_timeout", "0.02", "10800", S, "0.019", "10801")
    },
    row("confirm_delay", "0.001", "1", S, "0", "1.001"),
    row("login_timeout", "0.001", "3600", S, "0", "3601"),
    row("ok_delay", "0", "0.1", S, "-0.001", "0.101"),
    row("commit_interval", "0", "1", S, "-0.001", "1.001"),
    row("last_hour_minutes", "1", "10080", "", "0", "10081"),
    row("max_login_attempts", "1", "100", "", "0", "101"),
    Row {
        with_min: &["max_outbound_bytes = 64"],
        ..row("max_line_bytes", "64", "1048576", "", "63", "1048577")
    },
    row("max_held_per_user", "1", "1000000", "", "0", "1000001"),
    row("max_pending_lines", "1", "10000", "", "-1", "10001"),
    row("max_unconfirmed", "1", "1000000", "", "0", "1000001"),
    Row {
        with_max: &["max_line_bytes = 64"],
        ..row("held_page_size", "1", "100000", "", "0", "100001")
    },
    row("flood_burst", "1", "1000000", "", "0", "1000001"),
    row("flood_per_second", "1", "1000000", "", "0", "1000001"),
    row("flood_backlog", "1", "1000000", "", "0", "1000001"),
    row("max_connections", "1", "1000000", "", "0", "1000001"),
    row("max_connections_per_ip", "1", "1000000", "", "0", "1000001"),
    Row {
        with_min: &["max_line_bytes = 64"],
        ..row(
            "max_outbound_bytes",
            "64",
            "268435456",
            "",
            "63",
            "268435457",
        )
    },
    row(
        "max_unwritten_bytes",
        "1048576",
        "1073741824",
        "",
        "1048575",
        "1073741825",
    ),
    row(
        "journal_size",
        "1048576",
        "1073741824",
        "",
        "1048575",
        "1073741825",
    ),
    row(
        "journal_memory",
        "1048576",
        "1073741824",
        "",
        "1048575",
        "1073741825",
    ),
    row("password_check_concurrency", "1", "256", "", "0", "257"),
];

/// Runs the real binary on a config file holding `lines`; a refused
/// configuration exits before it reads the users file or listens.
fn run_with(lines: &[String]) -> RunOutput {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chatd.toml");
    std::fs::write(&config, lines.join("\n") + "\n").unwrap();
    let users = dir.path().join("users.txt");
    std::fs::write(&users, format!("alice {}\n", cheap_hash("pw-a"))).unwrap();
    let data = dir.path().join("data");
    let args = [
        "127.0.0.1",
        "0",
        "--config",
        config.to_str().unwrap(),
        "--users",
        users.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    // Generous: a refused configuration exits at once; the bound only
    // matters when chatd wrongly accepts the value and starts serving.
    run_chatd(&args, "", Duration::from_secs(20))
}

#[test]
fn values_just_outside_each_range_exit_2_naming_the_key_and_range() {
    let cases: Vec<(String, String)> = ROWS
        .iter()
        .flat_map(|r| {
            [r.below, r.above].map(|bad| {
                (
                    format!("{} = {bad}", r.key),
                    format!(
                        "chatd: config: {} must be between {} and {}{}, got {bad}",
                        r.key, r.min, r.max, r.unit
                    ),
                )
            })
        })
        .chain(
            [
                (
                    "confirm_delay = nan",
                    "confirm_delay",
                    "0.001",
                    "1 s",
                    "NaN",
                ),
                ("time_out = inf", "time_out", "0.001", "604800 s", "inf"),
                (
                    "block_time = 1e300",
                    "block_time",
                    "0.001",
                    "604800 s",
                    "1e300",
                ),
                (
                    "flood_per_second = 2.5",
                    "flood_per_second",
                    "1",
                    "1000000",
                    "2.5",
                ),
            ]
            .map(|(line, key, min, max, got)| {
                let whole = if key == "flood_per_second" {
                    "a whole number "
                } else {
                    ""
                };
                (
                    line.to_string(),
                    format!(
                        "chatd: config: {key} must be {whole}between {min} and {max}, got {got}"
                    ),
                )
            }),
        )
        .collect();
    // In parallel: each case is a process start.
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(line, expected)| {
                s.spawn(move || {
                    let out = run_with(std::slice::from_ref(line));
                    let code = out.status.and_then(|s| s.code());
                    let ok = code == Some(2) && out.stderr.trim_end().ends_with(expected.as_str());
                    (!ok).then(|| {
                        format!(
                            "`{line}`: status {code:?}, stderr {:?}; wanted status 2 and {expected:?}",
                            out.stderr.trim_end()
                        )
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_boundary_values_are_accepted() {
    for r in ROWS {
        for (value, with) in [(r.min, r.with_min), (r.max, r.with_max)] {
            let mut lines: Vec<&str> = with.to_vec();
            let line = format!("{} = {value}", r.key);
            lines.push(&line);
            // Panics with chatd's stderr unless it reaches its listening line.
            let mut server = TestServer::with(&[("alice", "pw-a")], &lines);
            let status = server.terminate();
            assert_eq!(status.code(), Some(0), "{lines:?}: {status:?}");
        }
    }
}

#[test]
fn keys_that_only_make_sense_together_are_checked_together() {
    for (lines, expected) in [
        (
            &["heartbeat = 30", "heartbeat_timeout = 30"][..],
            "chatd: config: heartbeat_timeout must be longer than heartbeat (30 s), got 30",
        ),
        (
            &[
                "heartbeat = 0.1",
                "heartbeat_timeout = 0.5",
                "confirm_delay = 0.5",
            ],
            "chatd: config: confirm_delay must be shorter than heartbeat_timeout (0.5 s), got 0.5",
        ),
        (
            &["max_outbound_bytes = 4095"],
            "chatd: config: max_outbound_bytes must be at least max_line_bytes (4096), got 4095",
        ),
        (
            // 16000 pages of 4224-byte lines are more than 64 × 1 MiB.
            &["held_page_size = 16000"],
            "chatd: config: held_page_size must be at most 15887",
        ),
    ] {
        let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let out = run_with(&lines);
        let code = out.status.and_then(|s| s.code());
        assert_eq!(code, Some(2), "{lines:?}: {out:?}");
        assert!(out.stderr.contains(expected), "{lines:?}: {:?}", out.stderr);
    }
}

#[test]
fn the_table_covers_every_numeric_key() {
    let tested: BTreeSet<&str> = ROWS.iter().map(|r| r.key).collect();
    let ranged: BTreeSet<&str> = chatd::config::RANGES.iter().map(|r| r.key).collect();
    assert_eq!(tested, ranged);
}
