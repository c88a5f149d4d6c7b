//! What front-ends see of the registry: the exports by name ([`Catalog`]), and how many
//! users each has. One mechanism counts opens for every front-end: each registers a
//! [`UsageSource`] that the registry polls (NBD counts its connections; FUSE, which is told of
//! opens as they happen, keeps them in an [`OpenCounter`]).

use crate::names::human_size;
use crate::registry::Registry;
use fss_core::export::{Catalog, Export, ExportInfo};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

/// A front-end's count of users per export name.
pub type UsageSource = Box<dyn Fn() -> BTreeMap<String, usize> + Send + Sync>;

/// Which front-end a [`UsageSource`] counts for (metrics report them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageKind {
    /// NBD connections, per export.
    Nbd,
    /// Open FUSE files, per name.
    Fuse,
}

impl Registry {
    /// Open count of `name` by front-ends.
    pub(crate) fn opens_of(&self, name: &str) -> u64 {
        self.open_counts().get(name).copied().unwrap_or(0)
    }

    /// Every front-end's users, summed per name.
    fn open_counts(&self) -> BTreeMap<String, u64> {
        let mut all: BTreeMap<String, u64> = BTreeMap::new();
        for (_, source) in self
            .usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for (k, n) in source() {
                *all.entry(k).or_insert(0) += n as u64;
            }
        }
        all
    }

    /// Names open by front-ends, with counts.
    #[must_use]
    pub fn open_devices(&self) -> Vec<(String, u64)> {
        self.open_counts()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Let a front-end report its users per export (checked before deletes and at stop).
    pub fn add_usage_source(&self, kind: UsageKind, source: UsageSource) {
        self.usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((kind, source));
    }

    /// The users of every export by front-ends of one kind, summed (for metrics).
    pub(crate) fn users_of_kind(&self, kind: UsageKind) -> u64 {
        self.usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(k, _)| *k == kind)
            .flat_map(|(_, source)| source().into_values())
            .map(|n| n as u64)
            .sum()
    }

    /// A one-line description of an export, for NBD and listings.
    fn describe(e: &Export) -> String {
        match e {
            Export::Volume(v) => format!("fss volume, {}", human_size(v.len())),
            Export::Snapshot(s) => {
                let i = s.info();
                format!(
                    "fss snapshot of volume '{}' ({}), read-only",
                    i.volume,
                    human_size(i.len)
                )
            }
        }
    }
}

impl Catalog for Registry {
    fn lookup(&self, name: &str) -> Option<Export> {
        self.exports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn list(&self) -> Vec<ExportInfo> {
        let exports = self
            .exports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        exports
            .iter()
            .map(|(name, e)| ExportInfo {
                name: name.clone(),
                description: Self::describe(e),
                read_only: e.is_read_only(),
                len: e.len(),
            })
            .collect()
    }
}

/// Opens pushed by a front-end as they happen (FUSE), seen by the registry as a
/// [`UsageSource`] ([`OpenCounter::source`]).
#[derive(Debug, Default)]
pub struct OpenCounter(Mutex<HashMap<String, usize>>);

impl OpenCounter {
    /// A front-end opened (`open = true`) or closed an export.
    pub fn note(&self, name: &str, open: bool) {
        let mut o = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = o.entry(name.to_string()).or_insert(0);
        *n = if open { *n + 1 } else { n.saturating_sub(1) };
    }

    /// The counts now.
    #[must_use]
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, &n)| (k.clone(), n))
            .collect()
    }

    /// This counter as a source for [`Registry::add_usage_source`].
    #[must_use]
    pub fn source(self: &std::sync::Arc<Self>) -> UsageSource {
        let me = std::sync::Arc::clone(self);
        Box::new(move || me.counts())
    }
}
