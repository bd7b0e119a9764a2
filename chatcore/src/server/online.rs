//! Who is logged in, by name.

use std::collections::BTreeMap;

use crate::names::NameMap;
use crate::SessionId;

/// Logged-in users and their sessions: looked up by name for every private
/// message, and listed in name order (the order of `WHO`, and of a
/// broadcast's deliveries).
///
/// The lookups go to a hash map kept beside the ordered one. A search of
/// the ordered map compares the name with about eight others, and with the
/// account check those compares were a fifteenth of a private message's
/// instructions; a hash lookup compares it with one. The cost is a second
/// copy of each online name.
#[derive(Debug, Default)]
pub(super) struct Online {
    ordered: BTreeMap<String, SessionId>,
    by_name: NameMap<SessionId>,
}

impl Online {
    /// The session `user` is logged in on.
    pub(super) fn get(&self, user: &str) -> Option<SessionId> {
        self.by_name.get(user).copied()
    }

    /// Whether `user` is logged in.
    pub(super) fn contains(&self, user: &str) -> bool {
        self.by_name.contains_key(user)
    }

    /// `user` is logged in on `session`.
    pub(super) fn insert(&mut self, user: String, session: SessionId) {
        self.by_name.insert(user.clone(), session);
        self.ordered.insert(user, session);
    }

    /// `user` is no longer logged in.
    pub(super) fn remove(&mut self, user: &str) {
        self.by_name.remove(user);
        self.ordered.remove(user);
    }

    /// The users logged in, in name order.
    pub(super) fn names(&self) -> impl Iterator<Item = &String> {
        self.ordered.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_the_listing_agree_through_logins_and_logouts() {
        let mut online = Online::default();
        online.insert("carol".into(), SessionId(3));
        online.insert("alice".into(), SessionId(1));
        online.insert("bob".into(), SessionId(2));
        online.remove("carol");
        online.insert("carol".into(), SessionId(4));
        online.remove("alice");
        assert_eq!(online.get("carol"), Some(SessionId(4)));
        assert_eq!(online.get("alice"), None);
        assert!(online.contains("bob") && !online.contains("alice"));
        let names: Vec<&String> = online.names().collect();
        assert_eq!(names, ["bob", "carol"]);
    }
}
