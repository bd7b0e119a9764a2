//! The `serde` feature: every persisted type (and `HeldRequest`) goes
//! through JSON and back unchanged, and each has one pinned form, since
//! embedders write these forms to disk and read them back after an
//! upgrade: a change of representation must be a deliberate one.
#![cfg(feature = "serde")]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use chatcore::testing::store_check;
use chatcore::{
    BoxSummary, HeldRequest, LoginFailures, Message, MessageKind, Restored, StoreModel, StoreOp,
    Time,
};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `value` is written as `json` exactly, and `json` reads back as `value`.
fn pinned<T>(value: &T, json: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    assert_eq!(serde_json::to_string(value).unwrap(), json);
    assert_eq!(&serde_json::from_str::<T>(json).unwrap(), value);
}

fn message() -> Arc<Message> {
    Arc::new(Message {
        id: 7,
        at: Time::from_unix_secs(1_795_540_321),
        from: "alice".into(),
        kind: MessageKind::Broadcast,
        text: "tab\there é ✓".into(),
    })
}

const MESSAGE: &str =
    r#"{"id":7,"at":1795540321000,"from":"alice","kind":"broadcast","text":"tab\there é ✓"}"#;

fn failures() -> LoginFailures {
    LoginFailures {
        user: "nobody".into(),
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
        count: 3,
        last: Time::from_unix_millis(9),
        blocked_until: Some(Time::from_unix_millis(60_009)),
    }
}

const FAILURES: &str =
    r#"{"user":"nobody","ip":"10.0.0.7","count":3,"last":9,"blocked_until":60009}"#;

#[test]
fn time_is_unix_milliseconds() {
    pinned(&Time::from_unix_millis(1_795_540_321_123), "1795540321123");
    pinned(&Time::EPOCH, "0");
    pinned(&Time::from_unix_millis(u64::MAX), "18446744073709551615");
}

#[test]
fn message_kind_is_a_lowercase_word() {
    pinned(&MessageKind::Private, r#""private""#);
    pinned(&MessageKind::Broadcast, r#""broadcast""#);
}

#[test]
fn message_is_an_object_of_its_fields() {
    pinned(&*message(), MESSAGE);
    pinned(&message(), MESSAGE);
}

#[test]
fn login_failures_name_the_address_as_text() {
    pinned(&failures(), FAILURES);
    let unblocked = LoginFailures {
        ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
        blocked_until: None,
        ..failures()
    };
    pinned(
        &unblocked,
        r#"{"user":"nobody","ip":"::1","count":3,"last":9,"blocked_until":null}"#,
    );
}

#[test]
fn store_ops_are_tagged_by_a_snake_case_name() {
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
    let forms = [
        (
            StoreOp::Hold {
                user: "bob".into(),
                message: message(),
            },
            format!(r#"{{"hold":{{"user":"bob","message":{MESSAGE}}}}}"#),
        ),
        (
            StoreOp::Release {
                user: "bob".into(),
                upto: 7,
            },
            r#"{"release":{"user":"bob","upto":7}}"#.to_string(),
        ),
        (
            StoreOp::ReserveIds { next: 100 },
            r#"{"reserve_ids":{"next":100}}"#.to_string(),
        ),
        (
            StoreOp::Seen {
                user: "alice".into(),
                at: Time::from_unix_millis(5_000),
            },
            r#"{"seen":{"user":"alice","at":5000}}"#.to_string(),
        ),
        (
            StoreOp::LoginFailures(failures()),
            format!(r#"{{"login_failures":{FAILURES}}}"#),
        ),
        (
            StoreOp::ClearLoginFailures {
                user: "nobody".into(),
                ip,
            },
            r#"{"clear_login_failures":{"user":"nobody","ip":"10.0.0.7"}}"#.to_string(),
        ),
    ];
    for (op, json) in &forms {
        pinned(op, json);
    }
}

#[test]
fn restored_keys_boxes_and_last_seen_by_user() {
    let restored = Restored {
        next_id: 100,
        held: BTreeMap::from([("bob".to_string(), BoxSummary { count: 2, last: 7 })]),
        last_seen: BTreeMap::from([("alice".to_string(), Time::from_unix_millis(5_000))]),
        login_failures: vec![failures()],
    };
    pinned(&BoxSummary { count: 2, last: 7 }, r#"{"count":2,"last":7}"#);
    pinned(
        &restored,
        &format!(
            r#"{{"next_id":100,"held":{{"bob":{{"count":2,"last":7}}}},"last_seen":{{"alice":5000}},"login_failures":[{FAILURES}]}}"#
        ),
    );
}

#[test]
fn a_store_model_snapshot_keeps_whole_boxes() {
    let mut model = StoreModel::default();
    model.apply(&StoreOp::ReserveIds { next: 100 });
    model.apply(&StoreOp::Hold {
        user: "bob".into(),
        message: message(),
    });
    pinned(
        &model,
        &format!(
            r#"{{"next_id":100,"held":{{"bob":[{MESSAGE}]}},"last_seen":{{}},"login_failures":[]}}"#
        ),
    );
}

#[test]
fn held_request_ids_are_plain_numbers() {
    let json = r#"{"session":3,"load":9,"user":"bob","after":4,"upto":7,"max":64}"#;
    let request: HeldRequest = serde_json::from_str(json).unwrap();
    assert_eq!(request.session.get(), 3);
    assert_eq!(
        (
            request.user.as_str(),
            request.after,
            request.upto,
            request.max
        ),
        ("bob", 4, 7, 64)
    );
    pinned(&request, json);
}

proptest! {
    /// Whatever the core may ask a store to keep comes back equal.
    #[test]
    fn every_store_op_round_trips(batches in store_check::arb_batches()) {
        let mut model = StoreModel::default();
        for op in batches.iter().flatten() {
            let json = serde_json::to_string(op).unwrap();
            prop_assert_eq!(&serde_json::from_str::<StoreOp>(&json).unwrap(), op);
            model.apply(op);
        }
        let restored = model.restored();
        let json = serde_json::to_string(&restored).unwrap();
        prop_assert_eq!(serde_json::from_str::<Restored>(&json).unwrap(), restored);
        let json = serde_json::to_string(&model).unwrap();
        prop_assert_eq!(serde_json::from_str::<StoreModel>(&json).unwrap(), model);
    }
}
