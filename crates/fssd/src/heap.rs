//! Giving freed heap memory back to the system after a burst of short-lived allocations
//! (replaying store logs at start, deleting a snapshot), so that resident memory reflects what
//! the daemon keeps rather than what it once used. glibc keeps freed small chunks in its
//! arenas; `malloc_trim` returns their whole pages to the kernel. And fewer arenas, so that
//! the serving threads do not each keep their own high-water mark of freed memory.

/// How many glibc arenas the daemon uses at most (glibc's default is 8 per core).
///
/// Each arena keeps the freed chunks of the threads that allocate in it. Over a 1M-cluster
/// fill through 4 NBD connections the default grew resident memory by 18 B per preserved
/// cluster, 4 arenas by 7 B (the map itself is about 7 B), with no loss in 4 KiB or 1 MiB
/// throughput (docs/PERFORMANCE.md, "Allocator arenas").
pub const MAX_ARENAS: i32 = 4;

/// Return free heap pages to the kernel (glibc `malloc_trim(0)`); a no-op elsewhere.
#[allow(unsafe_code)]
pub fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only walks the allocator's own free lists
    // under its locks; glibc documents it as safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Cap glibc's arenas at [`MAX_ARENAS`], unless `MALLOC_ARENA_MAX` is set in the
/// environment (the operator's choice wins); a no-op elsewhere. Call it before the daemon
/// starts any thread: glibc fixes its arena limit when the ninth arena would be made.
#[allow(unsafe_code)]
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only sets a field of the allocator's own
    // parameters under its lock; M_ARENA_MAX limits arenas made from now on.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MAX_ARENAS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_small_chunks_leave_resident_memory() {
        // 64 MiB in small chunks, then free all but the last (which pins the heap top, so
        // free() alone cannot shrink it).
        let mut chunks: Vec<Vec<u8>> = (0..256 * 1024).map(|i| vec![i as u8; 256]).collect();
        let last = chunks.pop();
        drop(chunks);
        let before = rss_kib();
        give_back_free_memory();
        let after = rss_kib();
        assert!(
            before.saturating_sub(after) > 32 * 1024,
            "RSS {before} KiB before the trim, {after} KiB after"
        );
        drop(last);
    }

    /// glibc's arenas other than the main one. glibc reserves each arena's heap as a 64 MiB
    /// region on a 64 MiB boundary and makes only its used part writable: an anonymous `rw-p`
    /// mapping starting on the boundary, that either spans 64 MiB or is followed by the
    /// region's `---p` rest (a thread stack's guard page lies below its stack, not above).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn thread_arenas() -> usize {
        const REGION: u64 = 64 << 20;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let anon: Vec<(u64, u64, String)> = maps
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (range, perms) = (f.first()?, f.get(1)?);
                if f.len() > 5 {
                    return None; // a file or a named region
                }
                let (a, b) = range.split_once('-')?;
                let a = u64::from_str_radix(a, 16).ok()?;
                let b = u64::from_str_radix(b, 16).ok()?;
                Some((a, b, (*perms).to_string()))
            })
            .collect();
        let is_heap = |i: usize| {
            let (start, end, perms) = &anon[i];
            let rest = anon.get(i + 1).filter(|n| n.0 == *end && n.2 == "---p");
            perms == "rw-p"
                && start % REGION == 0
                && (end - start == REGION || rest.is_some_and(|n| n.1 == start + REGION))
        };
        (0..anon.len()).filter(|&i| is_heap(i)).count()
    }

    /// In a child process (fresh allocator): maybe limit the arenas, then let 12 threads
    /// allocate at once; prints how many arenas exist.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn arenas_child() {
        let Ok(mode) = std::env::var("FSS_TEST_ARENAS_CHILD") else {
            return;
        };
        if mode == "limit" {
            limit_arenas();
        }
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(12));
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let b = std::sync::Arc::clone(&barrier);
                std::thread::spawn(move || {
                    b.wait();
                    let v: Vec<Vec<u8>> = (0..2000).map(|i| vec![i as u8; 512]).collect();
                    b.wait();
                    v.len()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().ok(), Some(2000));
        }
        println!("ARENAS={}", thread_arenas());
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn arenas_in_child(mode: &str) -> usize {
        let exe = std::env::current_exe().expect("test binary path");
        let out = std::process::Command::new(exe)
            .args(["--exact", "heap::tests::arenas_child", "--nocapture"])
            .args(["--test-threads", "1"])
            .env("FSS_TEST_ARENAS_CHILD", mode)
            .env_remove("MALLOC_ARENA_MAX")
            .output()
            .expect("run the child test");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {text}");
        // libtest prints the test's name on the same line, before its output.
        let n = text
            .split("ARENAS=")
            .nth(1)
            .and_then(|t| t.split_whitespace().next());
        n.and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no arena count from the child: {text}"))
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn limit_arenas_caps_the_threads_arenas() {
        // Without the limit, 12 threads allocating at once get more arenas than the cap (so
        // the count below can fail); with it, the main arena and at most MAX_ARENAS - 1 more.
        let free = arenas_in_child("default");
        let limited = arenas_in_child("limit");
        assert!(
            free >= MAX_ARENAS as usize,
            "{free} arenas without the limit"
        );
        assert!(
            limited < MAX_ARENAS as usize,
            "{limited} thread arenas with the limit"
        );
    }
}
