//! How the process's allocator treats memory freed by blob transfers.
//!
//! A transfer's buffers come and go by the megabyte: HTTP/2 receive buffers (a new one each
//! time frames still held fill the last), parts of blobs, files read for upload. glibc's
//! allocator by default hands the free memory at the top of each arena back to the kernel once
//! it passes twice its (adaptive) mapping threshold, a few megabytes after such buffers, so
//! the next buffer is fresh pages again, each faulted in and zeroed by the kernel: measured on
//! a BLAKE3 256 MiB download through the `cas` benchmark, 10,000 to 150,000 page faults per
//! GB. [`keep_freed_memory`] fixes the thresholds instead: blocks of 32 MiB and more are
//! mapped on their own and returned when freed (the large download buffers, advised for huge
//! pages), and each arena keeps up to 32 MiB free at its top for the next buffer.
//!
//! The cost is memory held: a process's resident memory stays nearer its high-water mark
//! instead of falling back after each burst, by at most 32 MiB per arena at its top (glibc
//! makes up to eight arenas per core; a busy process uses a few). An operator who sets
//! glibc's own knobs (`GLIBC_TUNABLES`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`)
//! keeps them: then nothing is changed.

/// Fixes glibc's mapping and trimming thresholds (see the module docs), unless the environment
/// sets glibc's allocator options; with another C library, does nothing. Call it once, early
/// in `main`.
pub fn keep_freed_memory() {
    let operator_set = [
        "GLIBC_TUNABLES",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_MMAP_THRESHOLD_",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some());
    if !operator_set {
        imp::keep_freed_memory();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    /// Allocations this large are mapped on their own (glibc's largest adaptive threshold).
    const MMAP_THRESHOLD: i32 = 32 * 1024 * 1024;
    /// Free memory an arena keeps at its top before giving it back: no more than the mapping
    /// threshold, so that the arenas rarely hold a free block large enough to serve an
    /// allocation meant to be mapped on its own.
    const TRIM_THRESHOLD: i32 = 32 * 1024 * 1024;

    #[expect(
        unsafe_code,
        reason = "mallopt only sets two of glibc's allocator parameters; it touches no memory \
                  of ours"
    )]
    pub(super) fn keep_freed_memory() {
        // SAFETY: plain calls into glibc with valid parameters. A refusal (0) leaves the
        // defaults, which are correct, only slower; nothing could report it yet (this runs
        // before logging is set up).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn keep_freed_memory() {}
}
