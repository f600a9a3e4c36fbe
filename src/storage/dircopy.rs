//! Copying a data directory: `checkpoint-dump` reads a private copy (sled
//! has no read-only open), `checkpoint-dump backup` writes one, and a
//! migration first keeps a backup.
//!
//! Only the source is read; nothing in it is created, changed or removed.

use super::segments::{self, SEGMENTS_DIR};
use std::fs;
use std::io;
use std::path::Path;

/// A sled data directory is two levels deep (`blobs/`); anything deeper than
/// this is not one.
const MAX_DEPTH: usize = 8;

/// Copies the regular files and directories under `from` into `to` (created
/// when missing) and returns the bytes copied. With `sync`, every copied file
/// and directory is fsynced, so the copy survives a power loss.
pub fn copy_dir(from: &Path, to: &Path, sync: bool) -> io::Result<u64> {
    copy_level(from, to, Mode::Fresh { sync }, false, 0)
}

/// Brings an earlier copy of `from` in `to` up to date and returns the bytes
/// the copy now holds: every file is copied again, except blob files
/// (`blobs/N`) and sealed state segments already copied whole. sled writes a
/// blob file once, in order, under a name it never reuses, so a copy of the
/// same length has the same bytes; so does a state segment older than the
/// newest one the earlier copy holds (it was sealed: cut to its last entry,
/// never written again). That newest one and any later are copied again:
/// the active segment's small appends overwrite zeros written ahead of
/// them, which leaves its length unchanged (`storage::segments`). Files and
/// directories no longer in `from` are removed from `to`.
/// A copy taken while sled was writing, then refreshed while it is not,
/// equals a copy taken while it is not, for a fraction of the work.
pub fn refresh_copy(from: &Path, to: &Path) -> io::Result<u64> {
    copy_level(from, to, Mode::Refresh, false, 0)
}

#[derive(Clone, Copy)]
enum Mode {
    /// Into a new copy; with `sync`, fsync what is copied.
    Fresh { sync: bool },
    /// Over an earlier copy (see [`refresh_copy`]).
    Refresh,
}

/// One directory of [`copy_dir`] or [`refresh_copy`]; `write_once` for
/// `blobs/`, whose files sled never rewrites.
fn copy_level(from: &Path, to: &Path, mode: Mode, write_once: bool, depth: usize) -> io::Result<u64> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other(format!("{} is nested too deeply for a data directory", from.display())));
    }
    fs::create_dir_all(to)?;
    let sync = matches!(mode, Mode::Fresh { sync: true });
    let mut bytes = 0;
    let mut names = std::collections::HashSet::new();
    // Segments from this id on may have changed at the same length.
    let changing_segments = match (mode, write_once && from.file_name().is_some_and(|n| n == SEGMENTS_DIR)) {
        (Mode::Refresh, true) => newest_segment(to)?,
        _ => None,
    };
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            // State segments are append-only too (`storage::segments`).
            let blobs = depth == 0 && (entry.file_name() == "blobs" || entry.file_name() == "segments");
            bytes += copy_level(&entry.path(), &dest, mode, blobs, depth + 1)?;
        } else if kind.is_file() {
            if redundant_link(from, &entry.file_name(), depth) {
                continue;
            }
            let may_change = changing_segments.is_some_and(|newest| {
                entry.file_name().to_str().and_then(segments::id_of).is_none_or(|id| id >= newest)
            });
            if let (Mode::Refresh, true, false) = (mode, write_once, may_change) {
                let len = match entry.metadata() {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if fs::metadata(&dest).ok().filter(|m| m.is_file()).map(|m| m.len()) == Some(len) {
                    bytes += len;
                    names.insert(entry.file_name());
                    continue;
                }
            }
            match fs::copy(entry.path(), &dest) {
                Ok(n) => bytes += n,
                // Removed since it was listed: sled deletes obsolete blob
                // files lazily (also while a server's writes are paused for
                // a snapshot). Such a file is garbage to the data being
                // copied, and sled's recovery passes over a pointer to one.
                Err(e) if e.kind() == io::ErrorKind::NotFound && !entry.path().exists() => continue,
                Err(e) => return Err(e),
            }
            if sync {
                fs::File::open(&dest)?.sync_all()?;
            }
        } else {
            // sled makes no symlinks or special files.
            continue;
        }
        names.insert(entry.file_name());
    }
    if let Mode::Refresh = mode {
        for entry in fs::read_dir(to)? {
            let entry = entry?;
            if !names.contains(&entry.file_name()) {
                if entry.file_type()?.is_dir() {
                    fs::remove_dir_all(entry.path())?;
                } else {
                    fs::remove_file(entry.path())?;
                }
            }
        }
    }
    if sync {
        fs::File::open(to)?.sync_all()?;
    }
    Ok(bytes)
}

/// The newest state segment in a copy's `segments/` (none when missing).
fn newest_segment(dir: &Path) -> io::Result<Option<u32>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut newest = None;
    for entry in entries {
        if let Some(id) = entry?.file_name().to_str().and_then(segments::id_of) {
            newest = newest.max(Some(id));
        }
    }
    Ok(newest)
}

/// A kept link (`blobs.keep/N`) whose blob (`blobs/N`) is still there: the
/// same bytes, which a copy need not hold twice. Only a kept blob that sled
/// has deleted is copied (`super::commit::KEPT_BLOBS`).
fn redundant_link(from: &Path, name: &std::ffi::OsStr, depth: usize) -> bool {
    depth == 1
        && from.file_name().is_some_and(|n| n == super::commit::KEPT_BLOBS)
        && from.parent().is_some_and(|data| data.join("blobs").join(name).exists())
}

/// fsyncs every regular file and directory under `dir`, and `dir` itself.
pub fn sync_tree(dir: &Path) -> io::Result<()> {
    sync_level(dir, 0)
}

fn sync_level(dir: &Path, depth: usize) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other(format!("{} is nested too deeply for a data directory", dir.display())));
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_level(&entry.path(), depth + 1)?;
        } else if kind.is_file() {
            fs::File::open(entry.path())?.sync_all()?;
        }
    }
    fs::File::open(dir)?.sync_all()
}

/// Total size of the regular files under `dir`.
pub fn dir_size(dir: &Path) -> io::Result<u64> {
    size_level(dir, 0)
}

fn size_level(dir: &Path, depth: usize) -> io::Result<u64> {
    if depth > MAX_DEPTH {
        return Ok(0);
    }
    let mut bytes = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            bytes += size_level(&entry.path(), depth + 1)?;
        } else if kind.is_file() && !redundant_link(dir, &entry.file_name(), depth) {
            bytes += entry.metadata()?.len();
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_copies_the_newest_segments_again_even_at_the_same_length() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        let segs = from.join(SEGMENTS_DIR);
        fs::create_dir_all(&segs).unwrap();
        let seg = |id| segs.join(segments::file_name(id));
        fs::write(seg(1), b"sealed").unwrap();
        // The active segment: an entry, then zeros written ahead.
        fs::write(seg(2), [&b"entry"[..], &[0; 59]].concat()).unwrap();
        copy_dir(&from, &to, false).unwrap();
        // Appends overwrite the zeros; the length stays.
        fs::write(seg(2), [&b"entry-more"[..], &[0; 54]].concat()).unwrap();
        fs::write(seg(3), b"next").unwrap();
        refresh_copy(&from, &to).unwrap();
        let copied = |id| fs::read(to.join(SEGMENTS_DIR).join(segments::file_name(id))).unwrap();
        assert_eq!(copied(2), fs::read(seg(2)).unwrap());
        assert_eq!(copied(3), b"next");
        // A sealed segment of the same length is not read again (it never
        // changes; this one is changed only to show it was skipped).
        fs::write(seg(1), b"SEALED").unwrap();
        refresh_copy(&from, &to).unwrap();
        assert_eq!(copied(1), b"sealed");
    }
}
