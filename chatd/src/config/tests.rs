//! The configuration's tests: the command line, the file, the ranges, and
//! how they merge.

use std::path::Path;

use clap::Parser;

use super::*;

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("chatd").chain(args.iter().copied())).unwrap()
}

fn parse(text: &str) -> Result<FileConfig, ConfigError> {
    FileConfig::parse(text, Path::new("test.toml"))
}

fn settings(text: &str, args: &[&str]) -> Result<Settings, ConfigError> {
    Settings::merge(parse(text)?, &cli(args))
}

#[test]
fn defaults_are_protocol_md() {
    let s = settings("", &[]).unwrap();
    assert_eq!(s.host, "127.0.0.1");
    assert_eq!(s.port, 4119);
    assert_eq!(s.users_file, PathBuf::from("user_pass.txt"));
    assert_eq!(s.data_dir, PathBuf::from("chatd-data"));
    assert_eq!(
        s.core,
        chatcore::Config::default().with_held_page_size(Some(DEFAULT_HELD_PAGE_SIZE))
    );
    assert_eq!(s.max_outbound_bytes, 1 << 20);
    assert_eq!(s.password_check_concurrency, 2);
    assert_eq!(s.max_connections, 10_000);
    assert_eq!(s.max_connections_per_ip, 64);
}

#[test]
fn every_documented_key_is_accepted() {
    let text = r#"
host = "0.0.0.0"
port = 5000
users_file = "u.txt"
data_dir = "d"
block_time = 61
block_after = 4
time_out = 1801
heartbeat = 31
heartbeat_timeout = 91
confirm_delay = 0.5
login_timeout = 62
last_hour_minutes = 30
max_login_attempts = 5
max_line_bytes = 8192
max_held_per_user = 7
max_pending_lines = 9
max_unconfirmed = 11
held_page_size = 12
max_connections = 100
max_connections_per_ip = 3
max_outbound_bytes = 65536
max_unwritten_bytes = 2097152
journal_size = 3145728
journal_memory = 4194304
password_check_concurrency = 4
flood_burst = 20
flood_per_second = 7
flood_backlog = 30
failure_memory = 3600
max_failure_records = 500
persist_deliveries = false
log_format = "json"
"#;
    let s = settings(text, &[]).unwrap();
    assert_eq!(s.log_format, crate::config::LogFormat::Json);
    let c = &s.core;
    assert_eq!(s.host, "0.0.0.0");
    assert_eq!(s.port, 5000);
    assert_eq!(s.users_file, PathBuf::from("u.txt"));
    assert_eq!(s.data_dir, PathBuf::from("d"));
    assert_eq!(c.block_time, Duration::from_secs(61));
    assert_eq!(c.block_after, 4);
    assert_eq!(c.time_out, Duration::from_secs(1801));
    assert_eq!(c.heartbeat, Duration::from_secs(31));
    assert_eq!(c.heartbeat_timeout, Duration::from_secs(91));
    assert_eq!(c.confirm_delay, Duration::from_millis(500));
    assert_eq!(c.login_timeout, Duration::from_secs(62));
    assert_eq!(c.last_hour_minutes, 30);
    assert_eq!(c.max_login_attempts, 5);
    assert_eq!(c.max_line_bytes, 8192);
    assert_eq!(c.max_held_per_user, 7);
    assert_eq!(c.max_pending_lines, 9);
    assert_eq!(c.max_unconfirmed, 11);
    assert_eq!(c.held_page_size, Some(12));
    assert_eq!(s.max_connections, 100);
    assert_eq!(s.max_connections_per_ip, 3);
    assert_eq!(s.max_outbound_bytes, 65536);
    assert_eq!(s.max_unwritten_bytes, 2 << 20);
    assert_eq!(s.journal.size, 3 << 20);
    assert_eq!(s.journal.memory, 4 << 20);
    assert_eq!(s.password_check_concurrency, 4);
    assert_eq!(
        c.flood,
        Some(chatcore::config::FloodLimit {
            burst: 20,
            per_second: 7,
            backlog: 30
        })
    );
    assert_eq!(c.failure_memory, Duration::from_secs(3600));
    assert_eq!(c.max_failure_records, 500);
    assert!(!c.persist_deliveries);
}

#[test]
fn flood_keys_set_the_core_flood_limit() {
    let s = settings("flood_per_second = 100.0", &[]).unwrap();
    let f = s.core.flood.unwrap();
    assert_eq!(f.per_second, 100);
    assert_eq!(f.burst, chatcore::config::FloodLimit::default().burst);
    for bad in [
        "flood_per_second = 0.5",
        "flood_per_second = 0",
        "flood_burst = 0",
    ] {
        let e = settings(bad, &[]).unwrap_err().to_string();
        assert!(e.contains(&bad[..bad.find(' ').unwrap()]), "{bad}: {e}");
    }
}

#[test]
fn command_line_wins_over_the_file() {
    let text = "host = \"10.0.0.1\"\nport = 5000\nusers_file = \"a\"\ndata_dir = \"b\"\n";
    let s = settings(text, &["::1", "0", "--users", "u2", "--data-dir", "d2"]).unwrap();
    assert_eq!(s.host, "::1");
    assert_eq!(s.port, 0);
    assert_eq!(s.users_file, PathBuf::from("u2"));
    assert_eq!(s.data_dir, PathBuf::from("d2"));
    // Only what the command line gives wins.
    let s = settings(text, &["127.0.0.2"]).unwrap();
    assert_eq!(s.host, "127.0.0.2");
    assert_eq!(s.port, 5000);
    assert_eq!(s.users_file, PathBuf::from("a"));
}

#[test]
fn durations_take_integers_and_floats() {
    let s = settings(
        "heartbeat = 0.2\nheartbeat_timeout = 1\ntime_out = 2.5",
        &[],
    )
    .unwrap();
    assert_eq!(s.core.heartbeat, Duration::from_millis(200));
    assert_eq!(s.core.heartbeat_timeout, Duration::from_secs(1));
    assert_eq!(s.core.time_out, Duration::from_millis(2500));
}

#[test]
fn unknown_key_is_named() {
    let e = parse("port = 1\nheartbeet = 3\n").unwrap_err().to_string();
    assert!(e.contains("heartbeet"), "{e}");
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn wrong_type_is_named() {
    for (text, key) in [
        ("heartbeat = \"often\"", "heartbeat"),
        ("port = \"x\"", "port"),
        ("port = 70000", "port"),
        ("host = 3", "host"),
        ("\n\nmax_connections = true", "max_connections"),
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn bad_toml_is_an_error_with_a_line() {
    let e = parse("port = 1\nthis is not toml\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn bad_port_on_the_command_line_names_the_value() {
    for bad in ["70000", "-1", "http", "4119x"] {
        let e = Cli::try_parse_from(["chatd", "127.0.0.1", bad]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains(bad), "{e}");
    }
    assert_eq!(cli(&["localhost", "65535"]).port, Some(65535));
}

#[test]
fn hash_password_is_a_subcommand() {
    let c = cli(&["hash-password"]);
    assert!(matches!(c.command, Some(Command::HashPassword)));
    assert_eq!(c.host, None);
}

#[test]
fn tls_keys_come_in_pairs() {
    assert_eq!(settings("", &[]).unwrap().tls, None);
    let s = settings("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"", &[]).unwrap();
    assert_eq!(
        s.tls,
        Some(TlsFiles {
            cert: "c.pem".into(),
            key: "k.pem".into()
        })
    );
    for (text, missing) in [
        ("tls_cert = \"c.pem\"", "tls_key"),
        ("tls_key = \"k.pem\"", "tls_cert"),
    ] {
        let e = settings(text, &[]).unwrap_err();
        assert!(matches!(e, ConfigError::Missing { key, .. } if key == missing));
        let e = e.to_string();
        assert!(e.contains(&format!("`{missing}` is missing")), "{e}");
    }
}

#[test]
fn bad_values_are_named() {
    for (text, key) in [
        (
            "heartbeat = 30\nheartbeat_timeout = 30",
            "heartbeat_timeout",
        ),
        ("heartbeat = 0", "heartbeat"),
        ("max_line_bytes = 63", "max_line_bytes"),
        ("max_connections = 0", "max_connections"),
        ("max_connections_per_ip = 0", "max_connections_per_ip"),
        (
            "password_check_concurrency = 0",
            "password_check_concurrency",
        ),
        ("max_login_attempts = 0", "max_login_attempts"),
        ("max_held_per_user = 0", "max_held_per_user"),
        ("last_hour_minutes = 0", "last_hour_minutes"),
        ("max_outbound_bytes = 100", "max_outbound_bytes"),
        ("login_timeout = 0.0", "login_timeout"),
    ] {
        let e = settings(text, &[]).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("config: {key} must ")),
            "{text}: {e}"
        );
    }
}

/// Lines a boundary value of `key` needs beside it to make a
/// consistent configuration.
fn companions(key: &str, at_max: bool) -> &'static str {
    match (key, at_max) {
        ("heartbeat", true) => "heartbeat_timeout = 10800\n",
        ("heartbeat_timeout", false) => "heartbeat = 0.01\nconfirm_delay = 0.01\n",
        ("held_page_size", true) => "max_line_bytes = 64\n",
        ("max_outbound_bytes", false) => "max_line_bytes = 64\n",
        _ => "",
    }
}

#[test]
fn every_range_takes_its_bounds_and_refuses_just_outside() {
    for range in RANGES {
        let step = match range.unit {
            // A range from zero: just below it is negative.
            Unit::Seconds if range.min == 0.0 => 0.001,
            Unit::Seconds => range.min / 2.0,
            Unit::Count => 1.0,
        };
        for (v, at_max) in [(range.min, false), (range.max, true)] {
            let text = format!("{}{} = {v}\n", companions(range.key, at_max), range.key);
            if let Err(e) = settings(&text, &[]) {
                panic!("{text}: {e}");
            }
        }
        for bad in [range.min - step, range.max + step] {
            let text = format!("{} = {bad}", range.key);
            let e = settings(&text, &[]).unwrap_err();
            assert!(
                matches!(e, ConfigError::OutOfRange { key, .. } if key == range.key),
                "{text}: {e}"
            );
            let e = e.to_string();
            let unit = if range.unit == Unit::Seconds {
                " s"
            } else {
                ""
            };
            let between = format!("between {} and {}{unit}, got ", range.min, range.max);
            assert!(e.contains(&between), "{text}: {e}");
        }
    }
}

#[test]
fn nan_infinities_negatives_and_huge_durations_name_the_range() {
    for (text, got) in [
        ("confirm_delay = nan", "NaN"),
        ("heartbeat = -nan", "NaN"),
        ("time_out = inf", "inf"),
        ("block_time = -inf", "-inf"),
        ("login_timeout = -1", "-1"),
        ("failure_memory = -0.5", "-0.5"),
        ("heartbeat_timeout = 1e300", "1e300"),
        ("time_out = 18446744073709551615.0", "1.8446744073709552e19"),
    ] {
        let e = settings(text, &[]).unwrap_err().to_string();
        let key = &text[..text.find(' ').unwrap()];
        assert!(
            e.starts_with(&format!("config: {key} must be between ")),
            "{text}: {e}"
        );
        assert!(e.ends_with(&format!(", got {got}")), "{text}: {e}");
    }
}

#[test]
fn counts_must_be_whole() {
    let e = settings("max_held_per_user = 2.5", &[])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "config: max_held_per_user must be a whole number between 1 and 1000000, got 2.5"
    );
    let s = settings("max_held_per_user = 2.0\nmax_line_bytes = -0", &[]);
    let e = s.unwrap_err().to_string();
    assert!(
        e.starts_with("config: max_line_bytes must be between 64"),
        "{e}"
    );
    let s = settings("max_held_per_user = 2.0", &[]).unwrap();
    assert_eq!(s.core.max_held_per_user, 2);
}

#[test]
fn keys_that_depend_on_each_other() {
    for (text, want) in [
        (
            "heartbeat = 0.5\nheartbeat_timeout = 0.25",
            "config: heartbeat_timeout must be longer than heartbeat (0.5 s), got 0.25",
        ),
        (
            "heartbeat = 0.1\nheartbeat_timeout = 0.5\nconfirm_delay = 0.5",
            "config: confirm_delay must be shorter than heartbeat_timeout (0.5 s), got 0.5",
        ),
        (
            "max_line_bytes = 8192\nmax_outbound_bytes = 8191",
            "config: max_outbound_bytes must be at least max_line_bytes (8192), got 8191",
        ),
    ] {
        assert_eq!(settings(text, &[]).unwrap_err().to_string(), want);
    }
    // The largest page that fits the hard cap with the longest lines.
    let page_max = (1 << 20) * OUTBOUND_HARD_FACTOR / (4096 + DELIVERY_OVERHEAD);
    assert!(settings(&format!("held_page_size = {page_max}"), &[]).is_ok());
    let e = settings(&format!("held_page_size = {}", page_max + 1), &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "config: held_page_size must be at most {page_max} "
        )),
        "{e}"
    );
}

#[test]
fn the_defaults_are_inside_every_range() {
    Settings::default().validate().unwrap();
}

#[test]
fn web_keys_default_and_parse() {
    let s = settings("", &["0.0.0.0", "4000"]).unwrap();
    assert!(s.web.enabled);
    assert_eq!(s.web.host, "0.0.0.0", "http_host follows host");
    assert_eq!(s.web.port, 4180);
    assert!(s.web.allowed_origins.is_empty());
    assert!(s.web.trusted_proxies.is_empty());
    let s = settings(
        r#"
http = false
http_host = "::1"
http_port = 0
allowed_origins = ["HTTPS://Chat.Example.org/"]
trusted_proxies = ["10.0.0.0/8", "::1"]
"#,
        &[],
    )
    .unwrap();
    assert!(!s.web.enabled);
    assert_eq!(s.web.host, "::1");
    assert_eq!(s.web.port, 0);
    assert_eq!(s.web.allowed_origins, ["https://chat.example.org"]);
    assert!(s.web.trusted_proxies[0].contains("10.9.9.9".parse().unwrap()));
    assert!(s.web.trusted_proxies[1].contains("::1".parse().unwrap()));
}

#[test]
fn bad_web_keys_are_named() {
    for (text, key) in [
        ("trusted_proxies = [\"10.0.0.0/40\"]", "trusted_proxies"),
        ("trusted_proxies = [\"proxy.example\"]", "trusted_proxies"),
        (
            "allowed_origins = [\"chat.example.org\"]",
            "allowed_origins",
        ),
        ("http_host = \" \"", "http_host"),
        ("http_port = 70000", "http_port"),
        ("http = 1", "http"),
    ] {
        let e = settings(text, &[]).unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
}
