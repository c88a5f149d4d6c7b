//! Inode numbers for export names: stable for a name while it exists in the catalog, fresh
//! when a name comes back after it was seen gone (so a kernel inode of the old export never
//! aliases the new one). The table is persisted with the session (see [`crate::persist`]), so
//! the numbers the kernel holds stay valid in the next serving process.

use crate::persist::InodeRecord;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The root directory's inode number (FUSE's fixed root).
pub const ROOT_INO: u64 = 1;

/// What the table knows of one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its inode number.
    pub ino: u64,
    /// When this name was first seen (reported as its times).
    pub born: SystemTime,
}

/// Name <-> inode number, for the exports seen so far.
#[derive(Debug)]
pub struct InodeTable {
    by_name: HashMap<String, Entry>,
    by_ino: HashMap<u64, String>,
    next: u64,
}

impl Default for InodeTable {
    fn default() -> Self {
        InodeTable {
            by_name: HashMap::new(),
            by_ino: HashMap::new(),
            next: ROOT_INO + 1,
        }
    }
}

impl InodeTable {
    /// The table as persisted: the next number to give out and every entry.
    pub fn from_records(next: u64, records: &[InodeRecord]) -> Self {
        let mut t = InodeTable::default();
        for r in records {
            if r.ino <= ROOT_INO || t.by_ino.contains_key(&r.ino) {
                tracing::warn!(name = %r.name, ino = r.ino, "ignoring a bad inode record");
                continue;
            }
            let born = UNIX_EPOCH + Duration::new(r.born_secs, r.born_nanos.min(999_999_999));
            t.by_name.insert(r.name.clone(), Entry { ino: r.ino, born });
            t.by_ino.insert(r.ino, r.name.clone());
        }
        let highest = t.by_ino.keys().copied().max().unwrap_or(ROOT_INO);
        t.next = next.max(highest.saturating_add(1));
        t
    }

    /// The next number to give out and every entry, for the table file.
    pub fn records(&self) -> (u64, Vec<InodeRecord>) {
        let mut v: Vec<InodeRecord> = self
            .by_name
            .iter()
            .map(|(name, e)| {
                let since = e.born.duration_since(UNIX_EPOCH).unwrap_or_default();
                InodeRecord {
                    name: name.clone(),
                    ino: e.ino,
                    born_secs: since.as_secs(),
                    born_nanos: since.subsec_nanos(),
                }
            })
            .collect();
        v.sort_by_key(|r| r.ino);
        (self.next, v)
    }

    /// The entry of `name`, allocating an inode number on first sight; `true` if it did.
    pub fn entry(&mut self, name: &str) -> (Entry, bool) {
        if let Some(e) = self.by_name.get(name) {
            return (*e, false);
        }
        let e = Entry {
            ino: self.next,
            born: SystemTime::now(),
        };
        self.next += 1;
        self.by_name.insert(name.to_string(), e);
        self.by_ino.insert(e.ino, name.to_string());
        (e, true)
    }

    /// The name of inode `ino`, if it is still known.
    pub fn name(&self, ino: u64) -> Option<&str> {
        self.by_ino.get(&ino).map(String::as_str)
    }

    /// Forget `name`: it is gone from the catalog; if it comes back it gets a new number.
    /// Returns whether it was known.
    pub fn remove(&mut self, name: &str) -> bool {
        match self.by_name.remove(name) {
            Some(e) => {
                self.by_ino.remove(&e.ino);
                true
            }
            None => false,
        }
    }

    /// Forget every name not in `present` (after a full listing of the catalog). Returns
    /// whether any was forgotten.
    pub fn retain<'a>(&mut self, present: impl IntoIterator<Item = &'a str>) -> bool {
        let keep: std::collections::HashSet<&str> = present.into_iter().collect();
        let gone: Vec<String> = self
            .by_name
            .keys()
            .filter(|n| !keep.contains(n.as_str()))
            .cloned()
            .collect();
        for n in &gone {
            self.remove(n);
        }
        !gone.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_while_present_fresh_after_removal() {
        let mut t = InodeTable::default();
        let (a, new) = t.entry("a");
        assert!(new);
        let b = t.entry("b").0.ino;
        assert_ne!(a.ino, b);
        assert!(a.ino > ROOT_INO && b > ROOT_INO);
        assert_eq!(t.entry("a"), (a, false));
        assert_eq!(t.name(a.ino), Some("a"));
        assert!(t.remove("a"));
        assert!(!t.remove("a"));
        assert_eq!(t.name(a.ino), None);
        let a2 = t.entry("a").0.ino;
        assert_ne!(a2, a.ino);
        assert!(t.retain(["b"]));
        assert!(!t.retain(["b"]));
        assert_eq!(t.name(a2), None);
        assert_eq!(t.name(b), Some("b"));
    }

    #[test]
    fn records_restore_the_same_numbers_and_times() {
        let mut t = InodeTable::default();
        let a = t.entry("a").0;
        let b = t.entry("b").0;
        t.remove("a");
        let (next, records) = t.records();
        let mut back = InodeTable::from_records(next, &records);
        assert_eq!(back.entry("b"), (b, false));
        assert_eq!(back.name(a.ino), None);
        // A name seen for the first time after the restore never reuses a number.
        let c = back.entry("c").0;
        assert!(c.ino > b.ino && c.ino != a.ino);
        // A next number below a recorded inode is corrected; bad records are skipped.
        let bad = [
            InodeRecord {
                name: "x".into(),
                ino: 9,
                born_secs: 0,
                born_nanos: 0,
            },
            InodeRecord {
                name: "root".into(),
                ino: ROOT_INO,
                born_secs: 0,
                born_nanos: 0,
            },
        ];
        let mut t = InodeTable::from_records(3, &bad);
        assert_eq!(t.name(ROOT_INO), None);
        assert_eq!(t.entry("y").0.ino, 10);
    }
}
