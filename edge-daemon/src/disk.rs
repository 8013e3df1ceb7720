//! The unit's disk: free space, "disk full" errors, and space reserved ahead for the audit
//! journal.
//!
//! A unit whose disk fills (a runaway log, a cohort grown past the unit's storage) must keep
//! answering lookups from what it holds, and the audit rule still holds: no answer without a
//! durable event. So the journal reserves its current segment's blocks when it starts one
//! ([`reserve`], `fallocate` with `KEEP_SIZE`: the file's length is unchanged, recovery reads it
//! as before), and appends land in space that is already the journal's. The sync stops on a full
//! disk (nothing is half-applied: the value log's append is undone and sled's batch never
//! starts), reports it in `/v1/status`, and resumes by itself once [`free_bytes`] shows room
//! again.

use std::fs::File;
use std::io;
use std::path::Path;

/// The sync tries again once this much is free (a batch, its index entries and sled's log).
pub const RESUME_FREE_BYTES: u64 = 16 * 1024 * 1024;

/// Bytes free to this (unprivileged) process on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Reserve `len` bytes of blocks for `file` from offset 0 without changing its length.
pub fn reserve(file: &File, len: u64) -> io::Result<()> {
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, len)
        .map_err(io::Error::from)
}

/// The error means the disk (or the unit's quota on it) is full.
pub fn is_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || matches!(e.raw_os_error(), Some(c) if c == rustix::io::Errno::NOSPC.raw_os_error() || c == rustix::io::Errno::DQUOT.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserving_keeps_the_length_and_free_space_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("seg")).unwrap();
        let before = free_bytes(dir.path()).unwrap();
        assert!(before > 0);
        match reserve(&f, 1 << 20) {
            Ok(()) => assert_eq!(f.metadata().unwrap().len(), 0),
            // Filesystems without fallocate (some overlay setups) answer "not supported".
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(rustix::io::Errno::OPNOTSUPP.raw_os_error())
            ),
        }
        assert!(is_full(&io::Error::from_raw_os_error(
            rustix::io::Errno::NOSPC.raw_os_error()
        )));
        assert!(!is_full(&io::Error::from(io::ErrorKind::NotFound)));
    }
}
