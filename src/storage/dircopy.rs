//! Copying a data directory: `checkpoint-dump` reads a private copy (sled
//! has no read-only open), `checkpoint-dump backup` writes one, and a
//! migration first keeps a backup.
//!
//! Only the source is read; nothing in it is created, changed or removed.

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
    copy_level(from, to, sync, 0)
}

fn copy_level(from: &Path, to: &Path, sync: bool, depth: usize) -> io::Result<u64> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other(format!("{} is nested too deeply for a data directory", from.display())));
    }
    fs::create_dir_all(to)?;
    let mut bytes = 0;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            bytes += copy_level(&entry.path(), &dest, sync, depth + 1)?;
        } else if kind.is_file() {
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
        }
        // sled makes no symlinks or special files; anything else is skipped.
    }
    if sync {
        fs::File::open(to)?.sync_all()?;
    }
    Ok(bytes)
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
        } else if kind.is_file() {
            bytes += entry.metadata()?.len();
        }
    }
    Ok(bytes)
}
