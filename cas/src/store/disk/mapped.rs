//! Blob files read through a shared read-only mapping instead of `read` (see
//! [`super::DiskStoreOptions::map_reads`]): the bytes handed out are the page cache's own
//! pages, so a read costs no copy into a buffer of ours and no fresh memory for one; over
//! plain TCP the socket write (a `writev` of the mapped pages) is the only copy left on the
//! server, and under TLS the encryption reads them in place.
//!
//! A page of a mapping is faulted in from disk when first touched, and a fault that cannot
//! read its page raises `SIGBUS` in user space (a system call touching it fails with `EFAULT`
//! instead), which would end the process. So every range is populated
//! (`madvise(MADV_POPULATE_READ)`, on the reader's blocking thread) before it is handed out:
//! that reads the pages in and reports a disk error as an error instead. What remains is a
//! clean page the kernel reclaims after that, while the chunk waits to be sent (as long as a
//! slow client keeps its flow-control window shut), and then fails to read again when TLS
//! encrypts it; or a file truncated while mapped. The store's files are written once, renamed
//! into place and never changed, and only stores whose files no one else holds (the
//! coordinator's, not an agent's, whose files are hard-linked into actions' inputs) map their
//! reads.

use std::fs::File;
use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags};

/// A file's bytes `[offset, offset + len)` mapped read-only and shared.
pub(super) struct Mapping {
    /// Start of the mapping (page aligned, at or before the first byte wanted).
    base: NonNull<std::ffi::c_void>,
    /// Bytes mapped from `base`.
    mapped: usize,
    /// Where the wanted bytes start within the mapping.
    skip: usize,
}

// SAFETY: the mapping is read-only and this value is its only owner; sharing `&[u8]` views of
// it across threads is as safe as sharing any immutable buffer.
#[expect(
    unsafe_code,
    reason = "a read-only mapping is immutable memory: Send and Sync as a Box<[u8]> would be"
)]
unsafe impl Send for Mapping {}
#[expect(
    unsafe_code,
    reason = "a read-only mapping is immutable memory: Send and Sync as a Box<[u8]> would be"
)]
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` from `offset`. The file must be at least `offset + len`
    /// bytes long (a mapping past a file's end raises `SIGBUS` when touched); the caller
    /// checks its size.
    #[expect(
        unsafe_code,
        reason = "mmap of a file this process opened, read-only and shared; the pointer is \
                  kept only in the Mapping that unmaps it"
    )]
    pub(super) fn map(file: &File, offset: u64, len: usize) -> std::io::Result<Mapping> {
        let page = page_size();
        let aligned = offset / page as u64 * page as u64;
        let skip = usize::try_from(offset - aligned).map_err(std::io::Error::other)?;
        let mapped = len
            .checked_add(skip)
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| std::io::Error::other("nothing to map, or too much"))?;
        let aligned = i64::try_from(aligned).map_err(std::io::Error::other)?;
        // SAFETY: a new mapping chosen by the kernel (no address given), read-only, backed by
        // `file`; it aliases no memory of ours and is unmapped only by `Drop`.
        let base = unsafe {
            nix::sys::mman::mmap(
                None,
                mapped,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                file,
                aligned,
            )
        }?;
        Ok(Mapping {
            base,
            mapped: mapped.get(),
            skip,
        })
    }

    /// Reads the pages of `range` (within [`Mapping::bytes`]) in, so that touching them
    /// faults no page from disk; an error if any cannot be read.
    #[expect(
        unsafe_code,
        reason = "madvise(MADV_POPULATE_READ) on pages of this mapping: it only faults them in \
                  and never changes their contents"
    )]
    pub(super) fn populate(&self, range: std::ops::Range<usize>) -> std::io::Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let page = page_size();
        let start = (self.skip + range.start) / page * page;
        let end = (self.skip + range.end).min(self.mapped);
        let mut attempts = 0;
        loop {
            // SAFETY: [start, end) lies within the mapping; MADV_POPULATE_READ only reads
            // pages in.
            let populated = unsafe {
                nix::sys::mman::madvise(
                    self.base.byte_add(start),
                    end - start,
                    MmapAdvise::MADV_POPULATE_READ,
                )
            };
            match populated {
                Ok(()) => return Ok(()),
                // Memory briefly short: the pages read so far stay in. (EINTR here means a
                // fatal signal is pending: the caller reports it.)
                Err(Errno::EAGAIN) if attempts < 16 => attempts += 1,
                // EFAULT: a page lies past the file's end, where touching it would raise
                // SIGBUS; EIO: the disk could not read one.
                Err(errno) => return Err(std::io::Error::from(errno)),
            }
        }
    }
}

impl AsRef<[u8]> for Mapping {
    /// The bytes asked for (the mapping from the first wanted byte on).
    #[expect(
        unsafe_code,
        reason = "a slice over this mapping's readable bytes, living as long as the borrow of \
                  the Mapping, which unmaps only when dropped"
    )]
    fn as_ref(&self) -> &[u8] {
        // SAFETY: [base + skip, base + mapped) is mapped readable for as long as `self` lives,
        // and nothing writes through the mapping.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().cast::<u8>().add(self.skip),
                self.mapped - self.skip,
            )
        }
    }
}

impl Drop for Mapping {
    #[expect(
        unsafe_code,
        reason = "munmap of the mapping this value owns, once no slice of it is left"
    )]
    fn drop(&mut self) {
        // SAFETY: `base`/`mapped` are exactly what mmap returned, unmapped once; every slice
        // handed out borrowed `self` (or the `Bytes` owning it), so none outlives this.
        let _ = unsafe { nix::sys::mman::munmap(self.base, self.mapped) };
    }
}

/// Whether this kernel populates mappings on request (`MADV_POPULATE_READ`, Linux 5.14):
/// without it no read is mapped.
#[expect(
    unsafe_code,
    reason = "an anonymous one-page mapping made, populated and unmapped here, never touched"
)]
pub(super) fn supported() -> bool {
    let page = page_size();
    let Some(len) = NonZeroUsize::new(page) else {
        return false;
    };
    // SAFETY: a new private anonymous mapping that nothing else refers to.
    let Ok(base) = (unsafe {
        nix::sys::mman::mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_ANONYMOUS,
        )
    }) else {
        return false;
    };
    // SAFETY: the page just mapped; populating it reads nothing of ours.
    let populated = unsafe { nix::sys::mman::madvise(base, page, MmapAdvise::MADV_POPULATE_READ) };
    // SAFETY: unmapping the page mapped above, to which no reference was made.
    let _ = unsafe { nix::sys::mman::munmap(base, page) };
    if let Err(errno) = populated {
        tracing::info!(%errno, "this kernel cannot populate mappings; blob reads are not mapped");
        return false;
    }
    true
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| usize::try_from(size).ok())
        .filter(|&size| size > 0)
        .unwrap_or(4096)
}
