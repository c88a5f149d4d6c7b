//! Open files: the kernel's file handles, each bound to the export it was opened on, with a
//! count of open handles per name and the daemon's open/close hook.

use fss_core::export::Export;
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
    /// The export itself: reads and writes go here without asking the catalog again.
    pub export: Export,
    /// Whether it was opened for writing.
    pub writable: bool,
}

#[derive(Default)]
struct Table {
    files: HashMap<u64, Arc<OpenFile>>,
    counts: BTreeMap<String, usize>,
    next_fh: u64,
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

    /// Register an open file and return its handle.
    pub fn open(&self, file: OpenFile) -> u64 {
        let _order = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let name = file.name.clone();
        let (fh, first) = {
            let mut t = self.table.write().unwrap_or_else(PoisonError::into_inner);
            t.next_fh += 1;
            let fh = t.next_fh;
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

    /// The open file of handle `fh`.
    pub fn get(&self, fh: u64) -> Option<Arc<OpenFile>> {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        t.files.get(&fh).cloned()
    }

    /// Forget handle `fh` (the kernel released it). Unknown handles are ignored.
    pub fn release(&self, fh: u64) {
        let _order = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let last = {
            let mut t = self.table.write().unwrap_or_else(PoisonError::into_inner);
            let Some(file) = t.files.remove(&fh) else {
                return;
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
    }

    /// The names with open handles, and how many each has.
    pub fn open_files(&self) -> Vec<(String, usize)> {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        t.counts.iter().map(|(n, c)| (n.clone(), *c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_core::device::MemDevice;
    use fss_core::Volume;

    #[test]
    fn hook_sees_first_open_and_last_close_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let hook: OpenHook = Arc::new(move |name: &str, open: bool| {
            s.lock().unwrap().push((name.to_string(), open));
        });
        let h = Handles::new(Some(hook));
        let vol = Volume::new("v", Arc::new(MemDevice::new(4096)));
        let file = || OpenFile {
            name: "v".into(),
            export: Export::Volume(vol.clone()),
            writable: true,
        };
        let a = h.open(file());
        let b = h.open(file());
        assert_ne!(a, b);
        assert_eq!(h.open_files(), vec![("v".to_string(), 2)]);
        assert!(h.get(a).is_some());
        h.release(a);
        h.release(a); // a second release of the same handle is ignored
        assert_eq!(h.open_files(), vec![("v".to_string(), 1)]);
        h.release(b);
        assert!(h.open_files().is_empty());
        assert!(h.get(b).is_none());
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("v".to_string(), true), ("v".to_string(), false)]
        );
    }
}
