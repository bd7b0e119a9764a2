//! The defaults each field's doc states are the ones `Config::default()`
//! has, and the ones the protocol text lists ([PROTOCOL.md §9](crate::protocol#9-chatd-command-line-and-configuration) configuration keys).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Config, FloodLimit};

/// `Type.field` → the value in backticks after `Default: ` in the field's
/// doc, read from the source the docs are rendered from.
fn documented_defaults() -> BTreeMap<String, String> {
    let source = include_str!("../config.rs");
    let mut defaults = BTreeMap::new();
    let mut owner = None;
    let mut doc = String::new();
    for line in source.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("pub struct ") {
            owner = name.split_whitespace().next();
            doc.clear();
        } else if let Some(text) = line.strip_prefix("///") {
            doc.push_str(text);
            doc.push(' ');
        } else if let (Some(owner), Some(field)) = (owner, line.strip_prefix("pub ")) {
            let field = field.split(':').next().unwrap();
            let value = doc
                .split_once("Default: `")
                .and_then(|(_, rest)| rest.split_once('`'))
                .map(|(value, _)| value.to_string())
                .unwrap_or_else(|| panic!("{owner}.{field} does not state its default"));
            defaults.insert(format!("{owner}.{field}"), value);
            doc.clear();
        } else if line == "}" {
            owner = None;
        } else {
            doc.clear();
        }
    }
    defaults
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// The defaults as the docs write them. The destructuring names every
/// field, so a new field does not compile until it is added here.
fn actual_defaults() -> BTreeMap<String, String> {
    let Config {
        block_time,
        block_after,
        failure_memory,
        max_failure_records,
        time_out,
        heartbeat,
        heartbeat_timeout,
        confirm_delay,
        login_timeout,
        last_hour_minutes,
        max_login_attempts,
        max_line_bytes,
        max_held_per_user,
        persist_deliveries,
        held_page_size,
        max_unconfirmed,
        flood,
        max_pending_lines,
    } = Config::default();
    let FloodLimit {
        burst,
        per_second,
        backlog,
    } = FloodLimit::default();
    let flood = match flood {
        None => "None".to_string(),
        Some(f) if f == FloodLimit::default() => "Some(FloodLimit::default())".to_string(),
        Some(f) => format!("Some({f:?})"),
    };
    [
        ("Config.block_time", secs(block_time)),
        ("Config.block_after", block_after.to_string()),
        ("Config.failure_memory", secs(failure_memory)),
        (
            "Config.max_failure_records",
            max_failure_records.to_string(),
        ),
        ("Config.time_out", secs(time_out)),
        ("Config.heartbeat", secs(heartbeat)),
        ("Config.heartbeat_timeout", secs(heartbeat_timeout)),
        ("Config.confirm_delay", secs(confirm_delay)),
        ("Config.login_timeout", secs(login_timeout)),
        ("Config.last_hour_minutes", last_hour_minutes.to_string()),
        ("Config.max_login_attempts", max_login_attempts.to_string()),
        ("Config.max_line_bytes", max_line_bytes.to_string()),
        ("Config.max_held_per_user", max_held_per_user.to_string()),
        ("Config.persist_deliveries", persist_deliveries.to_string()),
        ("Config.held_page_size", format!("{held_page_size:?}")),
        ("Config.max_unconfirmed", max_unconfirmed.to_string()),
        ("Config.flood", flood),
        ("Config.max_pending_lines", max_pending_lines.to_string()),
        ("FloodLimit.burst", burst.to_string()),
        ("FloodLimit.per_second", per_second.to_string()),
        ("FloodLimit.backlog", backlog.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `key = value` of the configuration example in [PROTOCOL.md §9](crate::protocol#9-chatd-command-line-and-configuration).
fn protocol_keys() -> BTreeMap<String, String> {
    let text = include_str!("../../PROTOCOL.md");
    let (_, rest) = text
        .split_once("```toml\n")
        .expect("PROTOCOL.md §9 has a toml block");
    let (block, _) = rest.split_once("```").unwrap();
    block
        .lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap();
            let (key, value) = line.split_once('=')?;
            Some((key.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

#[test]
fn every_field_states_its_default_and_it_is_the_default() {
    assert_eq!(documented_defaults(), actual_defaults());
}

#[test]
fn the_defaults_are_the_protocols() {
    let keys = protocol_keys();
    for (field, value) in documented_defaults() {
        let key = match field.split_once('.').unwrap() {
            // chatd's own default, which its doc explains; the core's pages
            // only for drivers that answer `NotifyWritten`.
            ("Config", "held_page_size") => continue,
            // On by default; the limits are FloodLimit's fields.
            ("Config", "flood") => continue,
            ("Config", name) => name.to_string(),
            ("FloodLimit", name) => format!("flood_{name}"),
            (owner, _) => panic!("unexpected struct {owner}"),
        };
        let listed = keys
            .get(&key)
            .unwrap_or_else(|| panic!("PROTOCOL.md §9 does not list `{key}` ({field})"));
        let value = value.strip_suffix(" s").unwrap_or(&value);
        assert_eq!(
            listed, value,
            "{field}: PROTOCOL.md §9 says `{key} = {listed}`"
        );
    }
}
