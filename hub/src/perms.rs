//! The hub's data folder is private to the hub's user: folders 0700, files 0600.
//!
//! `edge-hub serve` and `edge-hub ingest` create the data folder 0700 before opening the store
//! and then narrow everything under it ([`secure_data_dir`]); `serve` repeats it on every CRL
//! reload tick, so files sled creates later (snapshots, blobs) are narrowed too, and the
//! folder's own 0700 keeps other users out of them in between. Nothing outside the data folder
//! is touched. On other platforms this does nothing.

use std::io;
use std::path::Path;

/// Create `dir` (0700) when missing.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Set `dir` and every folder under it to 0700 and every file to 0600 (symbolic links are
/// left alone, never followed). Returns how many modes were changed.
pub fn secure_data_dir(dir: &Path) -> io::Result<usize> {
    #[cfg(unix)]
    {
        narrow(dir, 0)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(0)
    }
}

#[cfg(unix)]
fn narrow(path: &Path, depth: usize) -> io::Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    let ft = meta.file_type();
    let want = if ft.is_dir() {
        0o700
    } else if ft.is_file() {
        0o600
    } else {
        return Ok(0);
    };
    let mut changed = 0;
    if meta.permissions().mode() & 0o7777 != want {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))?;
        changed += 1;
    }
    if ft.is_dir() && depth < 16 {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            match narrow(&entry.path(), depth + 1) {
                Ok(n) => changed += n,
                // A file sled removed between the listing and the chmod.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(changed)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn folders_become_0700_and_files_0600() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("data");
        create_private_dir(&d).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(d.join("sub/db"), b"x").unwrap();
        std::fs::set_permissions(d.join("sub/db"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(secure_data_dir(&d).unwrap() >= 2);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("sub")), 0o700);
        assert_eq!(mode(&d.join("sub/db")), 0o600);
        assert_eq!(secure_data_dir(&d).unwrap(), 0);
    }
}
