//! Concurrency: an in-flight budget (requests and buffer bytes) per connection, inside a
//! daemon-wide budget of bytes, that the reader takes before it reads a payload or queues a
//! request; and a small pool of worker threads per connection, started on demand, that run the
//! queued requests.
//!
//! The budgets are what bound memory whatever clients send: when either is spent, the reader
//! stops reading its socket until replies go out, and the client's sends block.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the state consistent; a panic elsewhere must not
    // wedge the connection.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Each connection may have this many bytes of small requests in flight outside the
/// [`SharedBudget`]: a client that sends small requests one at a time (or a few) is served even
/// while stalled clients hold the whole shared budget. Bounded by the connection limit
/// (256 connections x 256 KiB = 64 MiB).
pub(crate) const UNSHARED_MAX: usize = 256 << 10;

/// How often a small request that fits neither its connection's unshared allowance nor the
/// shared budget looks at both again (it waits on its connection, not on the shared budget).
const RETRY_SHARED: std::time::Duration = std::time::Duration::from_millis(10);

/// The daemon-wide budget of buffer bytes (write payloads read, read buffers), shared by every
/// connection: what bounds the memory of many clients that pipeline large requests and never
/// read the replies.
#[derive(Debug)]
pub(crate) struct SharedBudget {
    max_bytes: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

impl SharedBudget {
    /// At most `max_bytes` at once (a request larger than that runs alone).
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(SharedBudget {
            max_bytes: max_bytes.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    fn fits(&self, used: usize, bytes: usize) -> bool {
        used == 0 || used.saturating_add(bytes) <= self.max_bytes
    }

    /// Wait until `bytes` more fit (or nothing is in use), and take them.
    fn acquire(&self, bytes: usize) {
        let mut used = lock(&self.used);
        while !self.fits(*used, bytes) {
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *used += bytes;
    }

    /// Take `bytes` if they fit now.
    fn try_acquire(&self, bytes: usize) -> bool {
        let mut used = lock(&self.used);
        let fits = self.fits(*used, bytes);
        if fits {
            *used += bytes;
        }
        fits
    }

    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut used = lock(&self.used);
        *used = used.saturating_sub(bytes);
        drop(used);
        self.freed.notify_all();
    }

    /// Bytes in use now, across every connection.
    pub fn in_use(&self) -> usize {
        *lock(&self.used)
    }
}

/// Limits on what one connection may have in flight; its bytes also come out of the
/// [`SharedBudget`]. The per-connection cap, below the shared one, keeps one stalled client
/// from taking the whole shared budget.
#[derive(Debug)]
pub(crate) struct Budget {
    max_requests: usize,
    max_bytes: usize,
    used: Mutex<Used>,
    freed: Condvar,
    shared: Arc<SharedBudget>,
}

/// What one connection has in flight.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Used {
    requests: usize,
    bytes: usize,
    /// The part of `bytes` not taken from the shared budget (at most [`UNSHARED_MAX`]).
    unshared: usize,
}

/// A share of a [`Budget`] (and of its [`SharedBudget`]), returned when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    budget: Arc<Budget>,
    bytes: usize,
    shared_bytes: usize,
}

impl Budget {
    /// At most `max_requests` requests and `max_bytes` buffer bytes at once, the bytes also
    /// taken from `shared`.
    pub fn new(max_requests: usize, max_bytes: usize, shared: Arc<SharedBudget>) -> Arc<Self> {
        Arc::new(Budget {
            max_requests: max_requests.max(1),
            max_bytes: max_bytes.max(1),
            used: Mutex::new(Used::default()),
            freed: Condvar::new(),
            shared,
        })
    }

    /// Wait until one more request of `bytes` fits on this connection, then take its bytes
    /// from the connection's unshared allowance (small requests) or from the shared budget. A
    /// request larger than a whole byte budget waits until nothing else is in flight there,
    /// then goes alone. Only the connection's reader calls this, so while it waits the socket
    /// is not read: the client's sends block (back-pressure).
    pub fn acquire(self: &Arc<Self>, bytes: usize) -> Permit {
        let mut used = lock(&self.used);
        while used.requests >= self.max_requests
            || (used.bytes != 0 && used.bytes.saturating_add(bytes) > self.max_bytes)
        {
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(PoisonError::into_inner);
        }
        used.requests += 1;
        used.bytes += bytes;
        let permit = |shared_bytes| Permit {
            budget: Arc::clone(self),
            bytes,
            shared_bytes,
        };
        if bytes > UNSHARED_MAX {
            drop(used);
            self.shared.acquire(bytes);
            return permit(bytes);
        }
        loop {
            if used.unshared + bytes <= UNSHARED_MAX {
                used.unshared += bytes;
                return permit(0);
            }
            if self.shared.try_acquire(bytes) {
                return permit(bytes);
            }
            // This connection's own small requests free the allowance: wait for those (and
            // look at the shared budget again now and then).
            used = self
                .freed
                .wait_timeout(used, RETRY_SHARED)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// A permit for one more request of `bytes` if it fits now, without waiting.
    pub fn try_acquire(self: &Arc<Self>, bytes: usize) -> Option<Permit> {
        let mut used = lock(&self.used);
        if used.requests >= self.max_requests
            || (used.bytes != 0 && used.bytes.saturating_add(bytes) > self.max_bytes)
        {
            return None;
        }
        let shared_bytes = if bytes <= UNSHARED_MAX && used.unshared + bytes <= UNSHARED_MAX {
            used.unshared += bytes;
            0
        } else if self.shared.try_acquire(bytes) {
            bytes
        } else {
            return None;
        };
        used.requests += 1;
        used.bytes += bytes;
        Some(Permit {
            budget: Arc::clone(self),
            bytes,
            shared_bytes,
        })
    }

    /// Requests in flight now (the reader's own included once it holds a permit).
    pub fn requests_in_flight(&self) -> usize {
        lock(&self.used).requests
    }

    /// Requests and bytes in flight now.
    #[cfg(test)]
    pub fn in_use(&self) -> (usize, usize) {
        let u = *lock(&self.used);
        (u.requests, u.bytes)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut used = lock(&self.budget.used);
        used.requests = used.requests.saturating_sub(1);
        used.bytes = used.bytes.saturating_sub(self.bytes);
        if self.shared_bytes == 0 {
            used.unshared = used.unshared.saturating_sub(self.bytes);
        }
        drop(used);
        self.budget.shared.release(self.shared_bytes);
        self.budget.freed.notify_all();
    }
}

/// A unit of work for the pool.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    closed: bool,
    idle: usize,
    workers: usize,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

/// Worker threads for one connection, started as needed up to a maximum, joined on
/// [`Pool::finish`].
pub(crate) struct Pool {
    shared: Arc<Shared>,
    max_workers: usize,
    name: String,
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool of at most `max_workers` threads named `name`.
    pub fn new(max_workers: usize, name: String) -> Self {
        Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                ready: Condvar::new(),
            }),
            max_workers: max_workers.max(1),
            name,
            handles: Vec::new(),
        }
    }

    /// Queue `job`, starting a worker if none is idle and the maximum allows. If no thread can
    /// be started and none exists, run the job on the calling thread.
    pub fn submit(&mut self, job: Job) {
        let mut st = lock(&self.shared.state);
        st.jobs.push_back(job);
        let start = st.idle == 0 && st.workers < self.max_workers;
        if start {
            st.workers += 1;
        }
        drop(st);
        self.shared.ready.notify_one();
        if !start {
            return;
        }
        let shared = Arc::clone(&self.shared);
        match std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || worker(&shared))
        {
            Ok(h) => self.handles.push(h),
            Err(e) => {
                tracing::warn!(error = %e, "could not start an NBD worker thread");
                let mut st = lock(&self.shared.state);
                st.workers -= 1;
                if st.workers == 0 {
                    let jobs: Vec<Job> = st.jobs.drain(..).collect();
                    drop(st);
                    for j in jobs {
                        j();
                    }
                }
            }
        }
    }

    /// Run every queued job, then stop and join the workers.
    pub fn finish(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.ready.notify_all();
        for h in self.handles.drain(..) {
            if h.join().is_err() {
                tracing::error!("an NBD worker thread panicked");
            }
        }
        // Jobs left if every worker died: run them here so their replies and permits go.
        let jobs: Vec<Job> = lock(&self.shared.state).jobs.drain(..).collect();
        for j in jobs {
            j();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.finish();
    }
}

fn worker(shared: &Shared) {
    let mut st = lock(&shared.state);
    loop {
        if let Some(job) = st.jobs.pop_front() {
            drop(st);
            job();
            st = lock(&shared.state);
            continue;
        }
        if st.closed {
            st.workers -= 1;
            return;
        }
        st.idle += 1;
        st = shared
            .ready
            .wait(st)
            .unwrap_or_else(PoisonError::into_inner);
        st.idle -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn budget(max_requests: usize, max_bytes: usize) -> Arc<Budget> {
        Budget::new(max_requests, max_bytes, SharedBudget::new(usize::MAX))
    }

    #[test]
    fn budget_blocks_until_released() {
        let b = budget(2, 100);
        let p1 = b.acquire(60);
        let p2 = b.acquire(0);
        assert_eq!(b.in_use(), (2, 60));
        let b2 = Arc::clone(&b);
        let t = std::thread::spawn(move || {
            let _p = b2.acquire(50);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "a third request must wait");
        drop(p2);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "60 + 50 bytes must not fit in 100");
        drop(p1);
        t.join().unwrap();
        assert_eq!(b.in_use(), (0, 0));
    }

    #[test]
    fn oversized_request_goes_alone() {
        let b = budget(4, 10);
        let p = b.acquire(1000);
        assert_eq!(b.in_use(), (1, 1000));
        drop(p);
    }

    #[test]
    fn shared_budget_bounds_connections_together_but_not_small_requests() {
        const MIB: usize = 1 << 20;
        let shared = SharedBudget::new(2 * MIB);
        let a = Budget::new(8, 4 * MIB, Arc::clone(&shared));
        let b = Budget::new(8, 4 * MIB, Arc::clone(&shared));
        let c = Budget::new(8, 4 * MIB, Arc::clone(&shared));
        let pa = a.acquire(MIB);
        let pa2 = a.acquire(MIB);
        assert_eq!(shared.in_use(), 2 * MIB);
        let t = std::thread::spawn(move || drop(b.acquire(MIB)));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !t.is_finished(),
            "the shared budget is spent: another connection waits"
        );
        // Small requests use their connection's allowance, not the shared budget.
        let small = c.acquire(UNSHARED_MAX / 2);
        let small2 = c.acquire(UNSHARED_MAX / 2);
        assert_eq!(shared.in_use(), 2 * MIB);
        // Past the allowance a small request waits for either: here its own connection.
        let c2 = Arc::clone(&c);
        let t2 = std::thread::spawn(move || drop(c2.acquire(UNSHARED_MAX)));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t2.is_finished());
        drop((small, small2));
        t2.join().unwrap();
        // ... or the shared budget.
        let full = c.acquire(UNSHARED_MAX);
        let c2 = Arc::clone(&c);
        let t3 = std::thread::spawn(move || drop(c2.acquire(4096)));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t3.is_finished());
        drop((pa, pa2));
        t.join().unwrap();
        t3.join().unwrap();
        drop(full);
        assert_eq!(shared.in_use(), 0);
        assert_eq!(c.in_use(), (0, 0));
    }

    #[test]
    fn pool_runs_everything_and_bounds_threads() {
        let n = Arc::new(AtomicUsize::new(0));
        let mut pool = Pool::new(3, "test".into());
        for _ in 0..100 {
            let n = Arc::clone(&n);
            pool.submit(Box::new(move || {
                std::thread::sleep(Duration::from_micros(100));
                n.fetch_add(1, Ordering::SeqCst);
            }));
        }
        assert!(pool.handles.len() <= 3);
        pool.finish();
        assert_eq!(n.load(Ordering::SeqCst), 100);
    }
}
