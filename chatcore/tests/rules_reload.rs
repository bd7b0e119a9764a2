//! Accounts replaced while the server runs ([`Server::set_accounts`], what
//! chatd does on SIGHUP): new accounts can log in, a changed password
//! applies at the next login, a removed account can no longer log in, and
//! open sessions run on whatever happened to their account.

mod common;

use chatcore::testing::{accounts, Harness};
use chatcore::AccountsChange;
use common::harness;

/// Replaces the harness server's accounts with these plain-text ones.
fn reload(h: &mut Harness, users: &[(&str, &str)]) -> AccountsChange {
    let now = h.now();
    h.server.set_accounts(now, accounts(users))
}

fn login(h: &mut Harness, user: &str, pw: &str) -> Vec<String> {
    let s = h.connect();
    h.take(s);
    h.send(s, user);
    h.send(s, pw);
    h.take_text(s)
}

#[test]
fn a_new_account_can_log_in() {
    let mut h = harness();
    assert_eq!(
        login(&mut h, "erin", "e-pw"),
        ["ASK password", "ERR bad-credentials", "ASK username"]
    );
    let change = reload(&mut h, &[("alice", "a-pw"), ("erin", "e-pw")]);
    assert_eq!(
        change,
        AccountsChange {
            added: 1,
            removed: 3,
            changed: 0
        }
    );
    assert_eq!(
        login(&mut h, "erin", "e-pw"),
        ["ASK password", "OK login erin"]
    );
    assert!(h.server.accounts().contains("erin"));
}

#[test]
fn a_changed_password_applies_at_the_next_login_only() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let change = reload(
        &mut h,
        &[
            ("alice", "new-pw"),
            ("bob", "b-pw"),
            ("carol", "c-pw"),
            ("dave", "d-pw"),
        ],
    );
    assert_eq!(
        change,
        AccountsChange {
            added: 0,
            removed: 0,
            changed: 1
        }
    );
    // The open session is not touched.
    h.send(a, "whoelse");
    assert_eq!(h.take_replies(a), ["WHO"]);
    h.send(a, "logout");
    h.take(a);
    assert_eq!(
        login(&mut h, "alice", "a-pw"),
        ["ASK password", "ERR bad-credentials", "ASK username"]
    );
    assert_eq!(
        login(&mut h, "alice", "new-pw"),
        ["ASK password", "OK login alice"]
    );
}

#[test]
fn a_removed_account_cannot_log_in_but_its_session_runs_on() {
    let mut h = harness();
    let b = h.connect_logged_in("bob", "b-pw");
    let a = h.connect_logged_in("alice", "a-pw");
    reload(&mut h, &[("alice", "a-pw")]);
    // bob's session runs on: it is still online and can talk.
    h.send(a, "whoelse");
    assert_eq!(h.take_replies(a), ["WHO bob"]);
    h.send(b, "message alice still here");
    assert_eq!(h.take_replies(b), ["OK message alice delivered"]);
    assert!(h.take_text(a)[0].ends_with(" bob still here"));
    h.send(b, "logout");
    h.take(b);
    assert_eq!(
        login(&mut h, "bob", "b-pw"),
        ["ASK password", "ERR bad-credentials", "ASK username"]
    );
}

/// A check started before the reload ran against the old credential: its
/// "yes" must not log in an account that is gone or whose password changed
/// meanwhile.
#[test]
fn a_check_in_flight_across_a_reload_is_refused_if_the_account_changed() {
    let mut h = harness();
    h.hold_password_checks();
    let gone = h.connect();
    let changed = h.connect();
    let kept = h.connect();
    for (s, user, pw) in [
        (gone, "bob", "b-pw"),
        (changed, "alice", "a-pw"),
        (kept, "carol", "c-pw"),
    ] {
        h.take(s);
        h.send(s, user);
        h.send(s, pw);
        assert_eq!(h.take_text(s), ["ASK password"]);
    }
    reload(&mut h, &[("alice", "other"), ("carol", "c-pw")]);
    // The old credentials matched: the driver answers yes for all three.
    for _ in 0..3 {
        h.answer_password_check(true).expect("a check is pending");
    }
    assert_eq!(h.take_text(gone), ["ERR bad-credentials", "ASK username"]);
    assert_eq!(
        h.take_text(changed),
        ["ERR bad-credentials", "ASK username"]
    );
    assert_eq!(h.take_text(kept), ["OK login carol"]);
}

#[test]
fn the_same_accounts_again_change_nothing() {
    let mut h = harness();
    let a = h.connect_logged_in("alice", "a-pw");
    let change = reload(&mut h, common::USERS);
    assert_eq!(change, AccountsChange::default());
    assert!(change.is_empty());
    h.send(a, "whoelse");
    assert_eq!(h.take_replies(a), ["WHO"]);
}
