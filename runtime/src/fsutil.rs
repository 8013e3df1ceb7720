//! Careful file handling: nothing `edge-provision` writes is ever half-written.
//!
//! - [`write_atomic`]: one file, written to a temporary sibling with its final mode, synced,
//!   renamed over the target, and the directory synced.
//! - [`write_bundle`]: a set of files. A new directory is built whole in a hidden staging
//!   sibling and renamed into place, so it either appears complete or not at all; in an existing
//!   directory each file is replaced atomically.
//! - [`read_limited`]: read a file with an upper bound on its size (files are outside input).
//! - [`DirLock`]: one `edge-provision` at a time per fleet directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

/// Mode for private keys.
pub const MODE_PRIVATE: u32 = 0o600;
/// Mode for files meant to be world-readable. `edge-provision` no longer uses it: every file it
/// writes into a fleet or bundle directory is [`MODE_PRIVATE`] (a bundle is read by one service
/// account; nothing in it needs to be readable by others).
pub const MODE_PUBLIC: u32 = 0o644;
/// Mode for bundle and fleet directories (they hold private keys).
pub const MODE_DIR: u32 = 0o700;
/// The largest file any loader in this crate reads (configs, PEM files, inventory).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// One file of a bundle: a name inside the bundle directory, its bytes and its mode.
#[derive(Debug, Clone)]
pub struct BundleFile {
    /// File name (no directories).
    pub name: String,
    /// Contents.
    pub bytes: Vec<u8>,
    /// Unix mode, e.g. [`MODE_PRIVATE`].
    pub mode: u32,
}

impl BundleFile {
    /// A private file (mode 0600).
    pub fn private(name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        BundleFile {
            name: name.to_owned(),
            bytes: bytes.into(),
            mode: MODE_PRIVATE,
        }
    }
    /// A public file (mode 0644).
    pub fn public(name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        BundleFile {
            name: name.to_owned(),
            bytes: bytes.into(),
            mode: MODE_PUBLIC,
        }
    }
}

/// A short random hex suffix for temporary names.
fn random_suffix() -> String {
    let mut b = [0u8; 8];
    // SystemRandom only fails if the OS RNG is unavailable; fall back to the pid, which is
    // still unique enough for a temporary name (create_new refuses collisions anyway).
    if SystemRandom::new().fill(&mut b).is_err() {
        return format!("p{}", std::process::id());
    }
    hex::encode(b)
}

fn file_name(path: &Path) -> io::Result<&str> {
    path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Sync a directory so a rename inside it survives power loss.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Write `bytes` to `path` atomically with `mode`: temp sibling, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent(path);
    let tmp = dir.join(format!(".{}.tmp-{}", file_name(path)?, random_suffix()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Write a set of files into `dir`, never leaving a half-written bundle.
///
/// When `dir` does not exist (or is empty) the bundle is built in a hidden staging directory
/// beside it and renamed into place. When it exists and has contents, each file is replaced
/// atomically (callers check for files they must not overwrite before calling), and the
/// directory's mode is narrowed to [`MODE_DIR`]: a bundle folder is never left group- or
/// world-readable.
pub fn write_bundle(dir: &Path, files: &[BundleFile]) -> io::Result<()> {
    for f in files {
        if f.name.is_empty() || f.name.contains('/') || f.name.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad bundle file name {:?}", f.name),
            ));
        }
    }
    let is_empty_dir = dir.is_dir() && fs::read_dir(dir)?.next().is_none();
    if dir.exists() && !is_empty_dir {
        fs::set_permissions(dir, fs::Permissions::from_mode(MODE_DIR))?;
        for f in files {
            write_atomic(&dir.join(&f.name), &f.bytes, f.mode)?;
        }
        return Ok(());
    }
    let up = parent(dir);
    fs::create_dir_all(up)?;
    let staging = up.join(format!(".{}.staging-{}", file_name(dir)?, random_suffix()));
    let result = (|| {
        fs::create_dir(&staging)?;
        fs::set_permissions(&staging, fs::Permissions::from_mode(MODE_DIR))?;
        for f in files {
            let p = staging.join(&f.name);
            let mut h = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(f.mode)
                .open(&p)?;
            h.set_permissions(fs::Permissions::from_mode(f.mode))?;
            h.write_all(&f.bytes)?;
            h.sync_all()?;
        }
        sync_dir(&staging)?;
        // rename(2) replaces an empty directory.
        fs::rename(&staging, dir)?;
        sync_dir(up)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Read a whole file, refusing files larger than `max` bytes.
pub fn read_limited(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is {len} bytes, more than the {max}-byte limit"),
        ));
    }
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file grew past the size limit",
        ));
    }
    Ok(buf)
}

/// An exclusive lock on a directory, held while an `edge-provision` command changes it.
///
/// The lock is a file (`.edge-provision.lock`) holding the owner's pid, created with
/// `O_EXCL` and removed on drop. A lock whose process no longer exists is taken over.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
}

/// The lock file's name inside a locked directory.
pub const LOCK_FILE: &str = ".edge-provision.lock";

impl DirLock {
    /// Take the lock on `dir`, or fail naming the process that holds it.
    pub fn acquire(dir: &Path) -> io::Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        for _ in 0..2 {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(MODE_PRIVATE)
                .open(&path)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(DirLock { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&path).unwrap_or_default();
                    let pid = holder.trim().parse::<u32>().ok();
                    let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
                    if alive {
                        return Err(io::Error::new(
                            io::ErrorKind::WouldBlock,
                            format!(
                                "{} is locked by another edge-provision (pid {}); wait for it to finish",
                                dir.display(),
                                holder.trim()
                            ),
                        ));
                    }
                    // Stale: its owner is gone.
                    let _ = fs::remove_file(&path);
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("could not take the lock {}", path.display()),
        ))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.key");
        write_atomic(&p, b"one", MODE_PRIVATE).unwrap();
        write_atomic(&p, b"two", MODE_PRIVATE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn bundle_appears_whole() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("a/b/unit");
        let files = [
            BundleFile::private("x.key", "k"),
            BundleFile::public("x.crt", "c"),
        ];
        write_bundle(&out, &files).unwrap();
        assert_eq!(fs::read_dir(&out).unwrap().count(), 2);
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            MODE_DIR
        );
        // Writing into an existing, open directory narrows it to 0700.
        fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).unwrap();
        write_bundle(&out, &[BundleFile::private("y.crt", "c")]).unwrap();
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            MODE_DIR
        );
        assert_eq!(
            fs::read_dir(d.path().join("a/b")).unwrap().count(),
            1,
            "no staging left"
        );
        // A bad name fails before anything is written.
        let out2 = d.path().join("u2");
        assert!(write_bundle(&out2, &[BundleFile::public("../x", "")]).is_err());
        assert!(!out2.exists());
    }

    #[test]
    fn lock_is_exclusive_and_stale_locks_are_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let l = DirLock::acquire(d.path()).unwrap();
        assert!(DirLock::acquire(d.path()).is_err());
        drop(l);
        fs::write(d.path().join(LOCK_FILE), "999999999\n").unwrap();
        let _l = DirLock::acquire(d.path()).unwrap();
    }

    #[test]
    fn read_limited_refuses_big_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big");
        fs::write(&p, vec![0u8; 100]).unwrap();
        assert!(read_limited(&p, 99).is_err());
        assert_eq!(read_limited(&p, 100).unwrap().len(), 100);
    }
}
