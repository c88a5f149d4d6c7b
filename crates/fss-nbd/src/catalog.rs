//! A fixed catalog, for tests, examples and simple embeddings (the daemon has its own).

use fss_core::export::{Catalog, Export, ExportInfo};
use std::sync::{PoisonError, RwLock};

/// A catalog of exports added by hand, listed in the order they were added.
#[derive(Debug, Default)]
pub struct StaticCatalog {
    exports: RwLock<Vec<Export>>,
}

impl StaticCatalog {
    /// An empty catalog.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace, by name) an export.
    pub fn insert(&self, export: Export) {
        let mut v = self.exports.write().unwrap_or_else(PoisonError::into_inner);
        v.retain(|e| e.name() != export.name());
        v.push(export);
    }

    /// Remove an export by name; whether it was there.
    pub fn remove(&self, name: &str) -> bool {
        let mut v = self.exports.write().unwrap_or_else(PoisonError::into_inner);
        let before = v.len();
        v.retain(|e| e.name() != name);
        v.len() != before
    }
}

impl Catalog for StaticCatalog {
    fn lookup(&self, name: &str) -> Option<Export> {
        let v = self.exports.read().unwrap_or_else(PoisonError::into_inner);
        v.iter().find(|e| e.name() == name).cloned()
    }

    fn list(&self) -> Vec<ExportInfo> {
        let v = self.exports.read().unwrap_or_else(PoisonError::into_inner);
        v.iter()
            .map(|e| ExportInfo {
                name: e.name().to_string(),
                description: match e {
                    Export::Volume(_) => format!("volume, {} bytes", e.len()),
                    Export::Snapshot(_) => format!("snapshot, {} bytes, read-only", e.len()),
                },
                read_only: e.is_read_only(),
                len: e.len(),
            })
            .collect()
    }
}
