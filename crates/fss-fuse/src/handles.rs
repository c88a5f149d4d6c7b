//! Open files: the kernel's file handles, each bound to the export it was opened on, with a
//! count of open handles per name and the daemon's open/close hook.
//!
//! The table is persisted with the session (see [`crate::persist`]): a process that resumes a
//! connection restores it, binds each handle to its export again by name, and reports every
//! open name to the hook, so the daemon's open counts (which refuse deleting an open
//! snapshot) are what they were.

use crate::persist::HandleRecord;
use fss_core::export::Export;
use rustix::io::Errno;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// Called with `(name, true)` when a name goes from no open handle to one, and with
/// `(name, false)` when its last handle is released. Calls are serialised and come in order
/// for each name. The hook runs on a FUSE serving thread: it must return quickly and must not
/// touch files of the FUSE directory (it may call [`crate::FuseFrontEnd::open_files`]).
pub type OpenHook = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// One open file.
#[derive(Debug)]
pub struct OpenFile {
    /// The export's name when it was opened.
    pub name: String,
    /// The export itself: reads and writes go here without asking the catalog again. `None`
    /// for a handle restored from an earlier process whose export the catalog no longer has.
    pub export: Option<Export>,
    /// Whether it was opened for writing.
    pub writable: bool,
    /// The OPEN request's id, without the resend bit.
    pub unique: u64,
}

impl OpenFile {
    /// The export, or EIO for a restored handle whose export is gone.
    pub fn export(&self) -> Result<&Export, Errno> {
        self.export.as_ref().ok_or(Errno::IO)
    }
}

#[derive(Default)]
struct Table {
    files: HashMap<u64, Arc<OpenFile>>,
    counts: BTreeMap<String, usize>,
    last_fh: u64,
}

/// The open-file table. Lookups by handle take a read lock only.
#[derive(Default)]
pub struct Handles {
    table: RwLock<Table>,
    /// Held around a count change and its hook call, so hook calls are ordered per name
    /// (and never made with `table` locked, so the hook may read the table).
    events: Mutex<()>,
    hook: Option<OpenHook>,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles")
            .field("open", &self.open_files())
            .field("hook", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

impl Handles {
    /// An empty table that reports open/close transitions to `hook`.
    pub fn new(hook: Option<OpenHook>) -> Self {
        Handles {
            hook,
            ..Handles::default()
        }
    }

    /// The table an earlier process persisted, each handle bound to `resolve(name)`. Every
    /// name with open handles is reported to `hook` as opened.
    pub fn restore(
        hook: Option<OpenHook>,
        last_fh: u64,
        records: &[HandleRecord],
        resolve: impl Fn(&str) -> Option<Export>,
    ) -> Self {
        let mut t = Table {
            last_fh,
            ..Table::default()
        };
        for r in records {
            let export = resolve(&r.name);
            if export.is_none() {
                tracing::warn!(name = %r.name, fh = r.fh,
                    "a file open before the restart is gone from the catalog: its I/O fails with EIO");
            }
            let file = OpenFile {
                name: r.name.clone(),
                export,
                writable: r.writable,
                unique: r.unique,
            };
            if t.files.insert(r.fh, Arc::new(file)).is_none() {
                *t.counts.entry(r.name.clone()).or_insert(0) += 1;
            }
            t.last_fh = t.last_fh.max(r.fh);
        }
        let names: Vec<String> = t.counts.keys().cloned().collect();
        let handles = Handles {
            table: RwLock::new(t),
            events: Mutex::new(()),
            hook,
        };
        if let Some(h) = &handles.hook {
            for name in &names {
                h(name, true);
            }
        }
        handles
    }

    /// The last handle given out and every open handle, for the table file.
    pub fn records(&self) -> (u64, Vec<HandleRecord>) {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<HandleRecord> = t
            .files
            .iter()
            .map(|(&fh, f)| HandleRecord {
                fh,
                name: f.name.clone(),
                writable: f.writable,
                unique: f.unique,
            })
            .collect();
        v.sort_by_key(|r| r.fh);
        (t.last_fh, v)
    }

    /// Register an open file and return its handle.
    pub fn open(&self, file: OpenFile) -> u64 {
        let _order = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let name = file.name.clone();
        let (fh, first) = {
            let mut t = self.table.write().unwrap_or_else(PoisonError::into_inner);
            t.last_fh += 1;
            let fh = t.last_fh;
            t.files.insert(fh, Arc::new(file));
            let n = t.counts.entry(name.clone()).or_insert(0);
            *n += 1;
            (fh, *n == 1)
        };
        if first {
            if let Some(h) = &self.hook {
                h(&name, true);
            }
        }
        fh
    }

    /// The handle an OPEN request with id `unique` (without the resend bit) got, if any: a
    /// resent OPEN that an earlier process answered too late gets the same handle.
    pub fn opened_by(&self, unique: u64) -> Option<u64> {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        t.files
            .iter()
            .find(|(_, f)| f.unique == unique)
            .map(|(&fh, _)| fh)
    }

    /// The open file of handle `fh`.
    pub fn get(&self, fh: u64) -> Option<Arc<OpenFile>> {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        t.files.get(&fh).cloned()
    }

    /// Forget handle `fh` (the kernel released it). Unknown handles are ignored; returns
    /// whether it was known.
    pub fn release(&self, fh: u64) -> bool {
        let _order = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let last = {
            let mut t = self.table.write().unwrap_or_else(PoisonError::into_inner);
            let Some(file) = t.files.remove(&fh) else {
                return false;
            };
            let name = file.name.clone();
            match t.counts.get_mut(&name) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    None
                }
                _ => {
                    t.counts.remove(&name);
                    Some(name)
                }
            }
        };
        if let (Some(name), Some(h)) = (last, &self.hook) {
            h(&name, false);
        }
        true
    }

    /// The names with open handles, and how many each has.
    pub fn open_files(&self) -> Vec<(String, usize)> {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        t.counts.iter().map(|(n, c)| (n.clone(), *c)).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fss_core::device::MemDevice;
    use fss_core::Volume;

    type Seen = Arc<Mutex<Vec<(String, bool)>>>;

    fn recording() -> (OpenHook, Seen) {
        let seen: Seen = Arc::default();
        let s = Arc::clone(&seen);
        let hook: OpenHook = Arc::new(move |name: &str, open: bool| {
            s.lock().unwrap().push((name.to_string(), open));
        });
        (hook, seen)
    }

    fn file(vol: &Volume, unique: u64) -> OpenFile {
        OpenFile {
            name: vol.name().into(),
            export: Some(Export::Volume(vol.clone())),
            writable: true,
            unique,
        }
    }

    #[test]
    fn hook_sees_first_open_and_last_close_in_order() {
        let (hook, seen) = recording();
        let h = Handles::new(Some(hook));
        let vol = Volume::new("v", Arc::new(MemDevice::new(4096)));
        let a = h.open(file(&vol, 10));
        let b = h.open(file(&vol, 12));
        assert_ne!(a, b);
        assert_eq!(h.opened_by(12), Some(b));
        assert_eq!(h.opened_by(14), None);
        assert_eq!(h.open_files(), vec![("v".to_string(), 2)]);
        assert!(h.get(a).is_some());
        assert!(h.release(a));
        assert!(!h.release(a)); // a second release of the same handle is ignored
        assert_eq!(h.open_files(), vec![("v".to_string(), 1)]);
        assert!(h.release(b));
        assert!(h.open_files().is_empty());
        assert!(h.get(b).is_none());
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("v".to_string(), true), ("v".to_string(), false)]
        );
    }

    #[test]
    fn a_restored_table_reports_opens_and_keeps_counting() {
        let vol = Volume::new("v", Arc::new(MemDevice::new(4096)));
        let h = Handles::new(None);
        let a = h.open(file(&vol, 10));
        let b = h.open(file(&vol, 12));
        let mut gone = file(&vol, 14);
        gone.name = "gone".into();
        let c = h.open(gone);
        let (last, records) = h.records();
        assert_eq!(last, c);

        let (hook, seen) = recording();
        let v2 = vol.clone();
        let back = Handles::restore(Some(hook), last, &records, move |name| {
            (name == "v").then(|| Export::Volume(v2.clone()))
        });
        assert_eq!(
            back.open_files(),
            vec![("gone".to_string(), 1), ("v".to_string(), 2)]
        );
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("gone".to_string(), true), ("v".to_string(), true)]
        );
        assert!(back.get(a).unwrap().export().is_ok());
        assert_eq!(back.get(c).unwrap().export().unwrap_err(), Errno::IO);
        assert_eq!(back.opened_by(12), Some(b));
        // New handles never reuse an old number.
        let d = back.open(file(&vol, 16));
        assert!(d > c);
        assert!(back.release(a) && back.release(b));
        assert!(back.release(c));
        assert_eq!(
            seen.lock().unwrap().last().unwrap(),
            &("gone".to_string(), false)
        );
        assert_eq!(back.open_files(), vec![("v".to_string(), 1)]);
    }
}
