//! The SQLite store against its model, `StoreModel`, on random ops: the
//! summaries `load` gives, every page `held_page` gives, and range releases.

use super::*;
use proptest::prelude::*;

fn arb_user() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["alice", "bob", "carol", "dave", "erin", "x.y-z_1"])
        .prop_map(String::from)
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

/// Values the store keeps below 2^63 (see [`SqliteStore`]).
const BIG: u64 = i64::MAX as u64;

/// A message with one of 20 ids (from 1: the core's first id, and a page
/// is asked for above an id). Two draws of one id usually differ in
/// content, which the core never does, but `StoreModel::apply` allows.
fn arb_message() -> impl Strategy<Value = Arc<Message>> {
    (
        1..21u64,
        0..BIG,
        arb_user(),
        any::<bool>(),
        "[ -~\té✓]{0,40}",
    )
        .prop_map(|(id, at, from, bcast, text)| {
            Arc::new(Message {
                id,
                at: Time::from_unix_millis(at),
                from,
                kind: if bcast {
                    MessageKind::Broadcast
                } else {
                    MessageKind::Private
                },
                text,
            })
        })
}

fn arb_op() -> impl Strategy<Value = StoreOp> {
    prop_oneof![
        4 => (arb_user(), arb_message()).prop_map(|(user, message)| StoreOp::Hold { user, message }),
        2 => (arb_user(), 0..22u64).prop_map(|(user, upto)| StoreOp::Release { user, upto }),
        1 => (0..BIG).prop_map(|next| StoreOp::ReserveIds { next }),
        1 => (arb_user(), 0..BIG).prop_map(|(user, at)| StoreOp::Seen { user, at: Time::from_unix_millis(at) }),
        2 => (arb_user(), arb_ip(), any::<u32>(), 0..BIG, prop::option::of(0..BIG)).prop_map(
            |(user, ip, count, last, until)| StoreOp::LoginFailures(LoginFailures {
                user,
                ip,
                count,
                last: Time::from_unix_millis(last),
                blocked_until: until.map(Time::from_unix_millis),
            })
        ),
        1 => (arb_user(), arb_ip()).prop_map(|(user, ip)| StoreOp::ClearLoginFailures { user, ip }),
    ]
}

/// A few ops that belong together: one op, a broadcast (one message
/// held for several users, sharing one `Arc` as the core does, then
/// some of them releasing it, maybe with other ops between, and maybe
/// held again, as a redelivery does), or several
/// users releasing one id (a broadcast of an earlier batch, usually).
fn arb_group() -> impl Strategy<Value = Vec<StoreOp>> {
    let broadcast = (
        arb_message(),
        prop::collection::vec((arb_user(), any::<bool>()), 1..7),
        prop::collection::vec(arb_op(), 0..3),
        prop::collection::vec(arb_user(), 0..3),
    )
        .prop_map(|(message, users, between, again)| {
            let mut ops: Vec<StoreOp> = users
                .iter()
                .map(|(user, _)| StoreOp::Hold {
                    user: user.clone(),
                    message: Arc::clone(&message),
                })
                .collect();
            ops.extend(between);
            ops.extend(
                users
                    .into_iter()
                    .filter(|(_, release)| *release)
                    .map(|(user, _)| StoreOp::Release {
                        user,
                        upto: message.id,
                    }),
            );
            ops.extend(again.into_iter().map(|user| StoreOp::Hold {
                user,
                message: Arc::clone(&message),
            }));
            ops
        });
    let releases = (0..20u64, prop::collection::vec(arb_user(), 1..7)).prop_map(|(id, users)| {
        users
            .into_iter()
            .map(|user| StoreOp::Release { user, upto: id })
            .collect()
    });
    prop_oneof![
        4 => arb_op().prop_map(|op| vec![op]),
        3 => broadcast,
        2 => releases,
    ]
}

/// Ops grouped into batches (one `apply` each).
fn arb_batches() -> impl Strategy<Value = Vec<Vec<StoreOp>>> {
    prop::collection::vec(
        prop::collection::vec(arb_group(), 0..6).prop_map(|groups| groups.concat()),
        0..6,
    )
}

/// Opens the migrated store in `dir`, checks it holds what `model` does
/// (summaries and contents), applies `after` to both, and checks again
/// after a reopen: a migrated store goes on like a new one.
fn migrated_goes_on(
    dir: &std::path::Path,
    mut model: StoreModel,
    after: &[Vec<StoreOp>],
) -> Result<(), TestCaseError> {
    let mut store = SqliteStore::open(dir).unwrap();
    prop_assert_eq!(store.load().unwrap(), model.restored());
    prop_assert_eq!(&contents(&mut store), &model);
    for batch in after {
        store.apply(batch).unwrap();
        for op in batch {
            model.apply(op);
        }
    }
    drop(store);
    let mut store = SqliteStore::open(dir).unwrap();
    prop_assert_eq!(store.load().unwrap(), model.restored());
    prop_assert_eq!(contents(&mut store), model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the ops and however they are grouped into commits, the
    /// store (and the store reopened) gives back what `StoreModel`
    /// computes: the same summaries at startup, and the same entries for
    /// any page of any box.
    #[test]
    fn sqlite_matches_the_model(
        batches in arb_batches(),
        page in 1..5usize,
        pages in prop::collection::vec((arb_user(), 0..22u64, 0..22u64, 0..5usize), 4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = StoreModel::default();
        {
            let mut store = SqliteStore::open(dir.path()).unwrap();
            for batch in &batches {
                store.apply(batch).unwrap();
                for op in batch {
                    model.apply(op);
                }
                prop_assert_eq!(&store.load().unwrap(), &model.restored());
                prop_assert_eq!(&contents_paged(&mut store, page), &model);
                for (user, after, upto, max) in &pages {
                    prop_assert_eq!(
                        store.held_page(user, *after, *upto, *max).unwrap(),
                        model.held_page(user, *after, *upto, *max)
                    );
                }
            }
            // A message row lives exactly as long as someone holds it.
            let orphans: i64 = store
                .conn
                .query_row(
                    "SELECT COUNT(*) FROM messages
                     WHERE id NOT IN (SELECT id FROM held)",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            prop_assert_eq!(orphans, 0);
        }
        let mut store = SqliteStore::open(dir.path()).unwrap();
        prop_assert_eq!(store.load().unwrap(), model.restored());
        prop_assert_eq!(contents(&mut store), model);
    }

    /// A database written by the version 1 layout opens, migrated, with
    /// the same content, and goes on matching `StoreModel`.
    #[test]
    fn v1_database_migrates(before in arb_batches(), after in arb_batches()) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = StoreModel::default();
        {
            let mut old = v1::open(dir.path());
            for batch in &before {
                v1::apply(&mut old, batch);
                for op in batch {
                    model.apply(op);
                }
            }
            prop_assert_eq!(v1::load(&old), model.clone());
        }
        migrated_goes_on(dir.path(), model, &after)?;
    }

    /// A version 3 database (boxes without summaries) opens, migrated,
    /// with the same content and summaries, and goes on matching
    /// `StoreModel`.
    #[test]
    fn v3_database_migrates(before in arb_batches(), after in arb_batches()) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = StoreModel::default();
        {
            let mut old = v3::open(dir.path());
            for batch in &before {
                v3::apply(&mut old, batch);
                for op in batch {
                    model.apply(op);
                }
            }
        }
        migrated_goes_on(dir.path(), model, &after)?;
    }
}
