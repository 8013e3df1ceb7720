//! An external sort of fixed-length keys: read unsorted from a spill file, sorted in runs of a
//! bounded size, the runs merged, handed to a sink in ascending order. What a cold fill uses to
//! build its sorted files (search postings, search cards' index) without inserting millions of
//! keys into sled one random leaf at a time, and without holding them in memory.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Keys handed to the sink at a time.
pub const SINK_KEYS: usize = 4096;

/// Read buffer per run in a merge (and per source in the record index's merge).
pub const MERGE_READ_BUF: usize = 64 * 1024;

/// Sort the `N`-byte keys in `spill` (a whole number of keys; a trailing partial key is an
/// error) and hand them to `sink` in ascending order, [`SINK_KEYS`] at a time, identical keys
/// once. Runs of `run_keys` keys (the memory bound: `run_keys × N` bytes) are written as
/// `tag-run-<i>` files in `dir` and removed afterwards.
pub fn sort_keys<const N: usize>(
    dir: &Path,
    spill: &Path,
    tag: &str,
    run_keys: usize,
    mut sink: impl FnMut(&[[u8; N]]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let run_keys = run_keys.max(1);
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(spill)?);
    let mut runs: Vec<PathBuf> = Vec::new();
    let mut chunk: Vec<[u8; N]> = Vec::new();
    let mut eof = false;
    let result = (|| {
        while !eof {
            chunk.clear();
            let mut key = [0u8; N];
            while chunk.len() < run_keys {
                if read_key(&mut reader, &mut key)? {
                    chunk.push(key);
                } else {
                    eof = true;
                    break;
                }
            }
            chunk.sort_unstable();
            chunk.dedup();
            if eof && runs.is_empty() {
                // Everything fitted in one run: no merge needed.
                for part in chunk.chunks(SINK_KEYS) {
                    sink(part)?;
                }
                return Ok(());
            }
            let path = dir.join(format!("{tag}-run-{}", runs.len()));
            let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
            runs.push(path);
            for k in &chunk {
                w.write_all(k)?;
            }
            w.flush()?;
        }
        chunk = Vec::new();
        let mut readers = Vec::with_capacity(runs.len());
        let mut heap = std::collections::BinaryHeap::new();
        for (i, path) in runs.iter().enumerate() {
            // One reader per run: the merge's memory grows with the run count (14 runs of
            // postings at 909,090), so each buffer is small; the kernel reads ahead anyway.
            let mut r = BufReader::with_capacity(MERGE_READ_BUF, std::fs::File::open(path)?);
            let mut key = [0u8; N];
            if read_key(&mut r, &mut key)? {
                heap.push(std::cmp::Reverse((key, i)));
            }
            readers.push(r);
        }
        let mut out: Vec<[u8; N]> = Vec::with_capacity(SINK_KEYS);
        while let Some(std::cmp::Reverse((key, i))) = heap.pop() {
            if out.last() != Some(&key) {
                out.push(key);
                if out.len() == SINK_KEYS {
                    sink(&out)?;
                    out.clear();
                }
            }
            let mut next = [0u8; N];
            if read_key(&mut readers[i], &mut next)? {
                heap.push(std::cmp::Reverse((next, i)));
            }
        }
        if !out.is_empty() {
            sink(&out)?;
        }
        Ok(())
    })();
    for r in &runs {
        let _ = std::fs::remove_file(r);
    }
    result
}

/// Read one key; `false` at a clean end of the file, an error on a partial key.
fn read_key<const N: usize>(r: &mut impl Read, key: &mut [u8; N]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < N {
        match r.read(&mut key[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "a spill file ends part-way through a key",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sorted_via_runs(keys: &[[u8; 3]], run: usize) -> Vec<[u8; 3]> {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("spill");
        std::fs::write(&spill, keys.concat()).unwrap();
        let mut out = Vec::new();
        sort_keys::<3>(dir.path(), &spill, "t", run, |c| {
            out.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        // Runs are removed afterwards.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the spill is left");
        out
    }

    #[test]
    fn sorts_and_dedups_in_one_run_or_many() {
        let mut keys = Vec::new();
        let mut x: u32 = 12345;
        for _ in 0..10_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let b = x.to_be_bytes();
            keys.push([b[0], b[1] & 0x0f, b[2]]);
        }
        let mut want = keys.clone();
        want.sort_unstable();
        want.dedup();
        for run in [1, 7, 500, 100_000] {
            assert_eq!(sorted_via_runs(&keys, run), want, "runs of {run}");
        }
        assert!(sorted_via_runs(&[], 5).is_empty());
    }

    #[test]
    fn a_partial_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("spill");
        std::fs::write(&spill, [1u8, 2, 3, 4]).unwrap();
        let r = sort_keys::<3>(dir.path(), &spill, "t", 10, |_| Ok(()));
        assert!(r.is_err());
    }
}
