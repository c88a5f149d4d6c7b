//! Giving freed heap memory back to the system after a burst of short-lived allocations
//! (replaying store logs at start, deleting a snapshot), so that resident memory reflects what
//! the daemon keeps rather than what it once used. glibc keeps freed small chunks in its
//! arenas; `malloc_trim` returns their whole pages to the kernel.

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
}
