//! Inode numbers for export names: stable for a name while it exists in the catalog, fresh
//! when a name comes back after it was seen gone (so a kernel inode of the old export never
//! aliases the new one).

use std::collections::HashMap;
use std::time::SystemTime;

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
    /// The entry of `name`, allocating an inode number on first sight.
    pub fn entry(&mut self, name: &str) -> Entry {
        if let Some(e) = self.by_name.get(name) {
            return *e;
        }
        let e = Entry {
            ino: self.next,
            born: SystemTime::now(),
        };
        self.next += 1;
        self.by_name.insert(name.to_string(), e);
        self.by_ino.insert(e.ino, name.to_string());
        e
    }

    /// The name of inode `ino`, if it is still known.
    pub fn name(&self, ino: u64) -> Option<&str> {
        self.by_ino.get(&ino).map(String::as_str)
    }

    /// Forget `name`: it is gone from the catalog; if it comes back it gets a new number.
    pub fn remove(&mut self, name: &str) {
        if let Some(e) = self.by_name.remove(name) {
            self.by_ino.remove(&e.ino);
        }
    }

    /// Forget every name not in `present` (after a full listing of the catalog).
    pub fn retain<'a>(&mut self, present: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::HashSet<&str> = present.into_iter().collect();
        let gone: Vec<String> = self
            .by_name
            .keys()
            .filter(|n| !keep.contains(n.as_str()))
            .cloned()
            .collect();
        for n in gone {
            self.remove(&n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_while_present_fresh_after_removal() {
        let mut t = InodeTable::default();
        let a = t.entry("a").ino;
        let b = t.entry("b").ino;
        assert_ne!(a, b);
        assert!(a > ROOT_INO && b > ROOT_INO);
        assert_eq!(t.entry("a").ino, a);
        assert_eq!(t.name(a), Some("a"));
        t.remove("a");
        assert_eq!(t.name(a), None);
        let a2 = t.entry("a").ino;
        assert_ne!(a2, a);
        t.retain(["b"]);
        assert_eq!(t.name(a2), None);
        assert_eq!(t.name(b), Some("b"));
    }
}
