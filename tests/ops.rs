//! Running chatd on a real host (issue 14 item 6), what can be tested
//! without systemd: the sample config in `contrib/` is every key at its
//! default, `chatd check-config` answers 0 or 2 without starting, and
//! `log_format = "json"` makes every log line a JSON object. (Readiness
//! notifications: tests/notify.rs; reload: tests/reload.rs.)

mod common;

use std::path::{Path, PathBuf};

use chatd::config::{FileConfig, Settings};
use chatd::Cli;
use common::*;

fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(name)
}

/// The keys a sample config may leave commented out: those whose default is
/// "not set".
const UNSET_BY_DEFAULT: &[&str] = &["tls_cert", "tls_key"];

#[test]
fn the_sample_config_is_every_key_at_its_default() {
    let file = FileConfig::load(&contrib("chatd.toml")).unwrap();
    // Every key is written out (a key added to chatd but not to the sample
    // shows here by name).
    let missing: Vec<String> = format!("{file:#?}")
        .lines()
        .filter_map(|l| l.trim().strip_suffix(": None,"))
        .filter(|key| !UNSET_BY_DEFAULT.contains(key))
        .map(str::to_owned)
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from contrib/chatd.toml: {missing:?}"
    );
    let settings = Settings::merge(file, &Cli::default()).unwrap();
    assert_eq!(settings, Settings::default());
    // The commented TLS keys are the real key names.
    let text = std::fs::read_to_string(contrib("chatd.toml")).unwrap();
    for key in UNSET_BY_DEFAULT {
        assert!(text.contains(&format!("# {key} = ")), "{key}");
    }
}

fn check_config(dir: &Path, config: Option<&Path>) -> RunOutput {
    let mut args = vec!["check-config".to_owned()];
    if let Some(config) = config {
        args.push("--config".to_owned());
        args.push(config.to_str().unwrap().to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // check-config reads the users file relative to the working directory,
    // as chatd does.
    run_chatd_in(dir, &args)
}

/// `run_chatd` in a given working directory: killed after 60 s (a build
/// without `check-config` would take it for a host name and serve).
fn run_chatd_in(dir: &Path, args: &[&str]) -> RunOutput {
    let mut child = std::process::Command::new(chatd_bin())
        .current_dir(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run chatd");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        // Polling a process for exit: bounded, not a synchronisation sleep.
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let read = |r: Option<&mut dyn std::io::Read>| {
        let mut s = String::new();
        if let Some(r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s
    };
    RunOutput {
        status,
        stdout: read(child.stdout.as_mut().map(|r| r as &mut dyn std::io::Read)),
        stderr: read(child.stderr.as_mut().map(|r| r as &mut dyn std::io::Read)),
    }
}

fn code(out: &RunOutput) -> Option<i32> {
    out.status.and_then(|s| s.code())
}

#[test]
fn check_config_accepts_the_sample_config_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("user_pass.txt"), "alice a\nbob b\n").unwrap();
    let out = check_config(dir.path(), Some(&contrib("chatd.toml")));
    assert_eq!(code(&out), Some(0), "{out:?}");
    assert!(out.stdout.contains("2 accounts"), "{out:?}");
    assert!(!out.stdout.contains("listening on"), "{out:?}");
    assert!(
        !dir.path().join("chatd-data").exists(),
        "check-config must not create the data directory"
    );
    // No config file at all: the defaults.
    let out = check_config(dir.path(), None);
    assert_eq!(code(&out), Some(0), "{out:?}");
}

#[test]
fn check_config_refuses_with_2_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("user_pass.txt"), "alice a\n").unwrap();
    std::fs::write(d.join("bad-users.txt"), "alice a\nbob\n").unwrap();
    let cases: &[(&str, &str)] = &[
        ("heartbeat = 0\n", "heartbeat"),
        ("log_format = \"xml\"\n", "log_format"),
        ("no_such_key = 1\n", "no_such_key"),
        ("port = \"x\"\n", "port"),
        ("users_file = \"bad-users.txt\"\n", "line 2"),
        ("users_file = \"missing.txt\"\n", "missing.txt"),
        ("tls_cert = \"c.pem\"\n", "tls_key"),
        ("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n", "c.pem"),
    ];
    for (text, reason) in cases {
        let config = d.join("chatd.toml");
        std::fs::write(&config, text).unwrap();
        let out = check_config(d, Some(&config));
        assert_eq!(code(&out), Some(2), "{text:?}: {out:?}");
        assert!(out.stderr.contains(reason), "{text:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
    }
    let out = check_config(d, Some(&d.join("nowhere.toml")));
    assert_eq!(code(&out), Some(2), "{out:?}");
    assert!(out.stderr.contains("nowhere.toml"), "{out:?}");
}

#[test]
fn json_logs_are_one_object_a_line() {
    let mut server = TestServer::with(&[("alice", "a-pw")], &["log_format = \"json\""]);
    let alice = server.login("alice", "a-pw");
    assert_eq!(
        server.client().login_attempt("alice", "wrong"),
        "ERR bad-credentials"
    );
    alice.logout();
    assert!(server.terminate().success());
    let stderr = server.stderr();
    let mut messages = Vec::new();
    for line in stderr.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{stderr}"));
        let fields = &value["fields"];
        assert!(value["level"].is_string(), "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
        messages.push(fields["message"].as_str().unwrap_or_default().to_owned());
        if fields["message"] == "failed login" {
            assert_eq!(fields["user"], "alice", "{line}");
            assert_eq!(fields["reason"], "bad credentials", "{line}");
        }
    }
    for expected in ["login", "failed login", "shutting down", "stopped"] {
        assert!(
            messages.iter().any(|m| m == expected),
            "{expected}: {messages:?}"
        );
    }
}
