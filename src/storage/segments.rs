//! State segments: a value log for large values (format 3).
//!
//! A state or pending-write value longer than [`VALUE_THRESHOLD`] is not
//! stored in sled (sled 0.34 would make it a blob file, which it does not
//! reliably delete: its issue #786, and every change would write it twice,
//! once in the intent and once in its tree). It is appended to the active
//! segment file, `segments/<id>.seg` (an 8-digit decimal id), and sled stores
//! a [`Pointer`] to it instead. A segment is sealed once it holds
//! [`SEGMENT_BYTES`]; the next append opens the next id. Each entry is
//!
//! ```text
//! magic "CKSE" · len u32 · crc32(value) u32 · owner len u16 · owner · crc32(header) u32 · value
//! ```
//!
//! (integers big-endian) where the owner is the sled tree number and key
//! that pointed to the value when it was written: compaction and `verify`
//! walk a segment and ask sled whether that key still points there.
//!
//! **Durability.** An append only writes; [`Segments::sync`] fdatasyncs
//! every file written since the last sync (and the directories, when a file
//! was created). The group commit calls it before flushing sled, so one
//! fsync serves every writer of the group. sled may also write and sync its
//! log on its own (a writer that fills an I/O buffer): the vendored sled
//! calls [`Segments::sync`] first through a hook registered for its
//! directory ([`sled::register_pre_log_sync`]), so no sled log that holds a
//! pointer can be durable before the bytes it points to. An append whose
//! change never became durable is dead space.
//!
//! **Preallocation.** An append that makes the file longer costs its
//! fdatasync a second synchronous write, of the inode's new size (measured
//! here on ext4: 0.22 ms per 1 KiB append + fdatasync against 0.15 ms for
//! the same write into space already written). So a run of small appends
//! (at most [`PREALLOCATE_BELOW`] each: the intents of small changes) goes
//! into space the active segment zero-filled ahead of it,
//! [`PREALLOCATE_BYTES`] at a time, as PostgreSQL does for its WAL. Large
//! appends, and the small one right after a large one (the intent after a
//! large state), just extend the file: zero-filling would double the bytes
//! a stream of large states writes, and the inode is a small part of their
//! sync. A walk ends at the first bytes that are not a
//! whole entry, so zeros after the last entry read as its end. A segment is
//! cut to its last entry when it is sealed and when the store closes; the
//! newest segment after a crash keeps its zeros (dead bytes) until
//! compaction removes it.
//!
//! **Space.** The bytes of live values per segment are counted in memory:
//! recounted at open from the `segment_pointers` tree (format 4: one entry
//! per value in a segment, kept by every change, see `keys`), then kept up
//! to date as each change replaces or removes a pointer (`change::apply`). A sealed
//! segment more than half dead is compacted (`store`): its live values are
//! copied to the active segment and repointed in ordinary changes, and the
//! file is removed once those changes are durable. At open, a segment no
//! pointer refers to is removed.

use crc32fast::Hasher;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// The owner of an entry that is a change's intent (format 4; see
/// `change`), not a value: no tree has this number.
pub const INTENT_OWNER: &[u8] = &[0xff];

/// The directory of segment files inside a data directory.
pub const SEGMENTS_DIR: &str = "segments";
/// Values longer than this go to a segment; shorter ones stay in sled.
pub const VALUE_THRESHOLD: usize = 8 * 1024;
/// A segment is sealed once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Appends of at most this many bytes go into space zero-filled ahead of
/// them (see "Preallocation" above), [`PREALLOCATE_BYTES`] at a time.
pub const PREALLOCATE_BELOW: u64 = 16 * 1024;
/// How far ahead of small appends the active segment is zero-filled: at
/// most this much of a segment is zeros no entry uses yet.
pub const PREALLOCATE_BYTES: u64 = 1 << 20;

const MAGIC: &[u8; 4] = b"CKSE";
/// magic, len, crc, owner len; then the owner and the header's crc.
const FIXED_HEADER: usize = 4 + 4 + 4 + 2;
/// A stored pointer starts with a byte no JSON text starts with.
const POINTER_TAG: [u8; 2] = [0x00, b'S'];
pub const POINTER_LEN: usize = 2 + 4 + 8 + 4 + 4;

/// Where a value lives: segment, offset of its first byte, length, CRC-32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pointer {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

impl Pointer {
    pub fn encode(&self) -> [u8; POINTER_LEN] {
        let mut out = [0; POINTER_LEN];
        out[..2].copy_from_slice(&POINTER_TAG);
        out[2..6].copy_from_slice(&self.segment.to_be_bytes());
        out[6..14].copy_from_slice(&self.offset.to_be_bytes());
        out[14..18].copy_from_slice(&self.len.to_be_bytes());
        out[18..22].copy_from_slice(&self.crc.to_be_bytes());
        out
    }

    /// A stored value that is a pointer; `None` for an inline value (JSON
    /// text never starts with a NUL byte).
    pub fn decode(stored: &[u8]) -> Option<Pointer> {
        if stored.len() != POINTER_LEN || stored[..2] != POINTER_TAG {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes(stored[i..i + 4].try_into().expect("4 bytes"));
        Some(Pointer {
            segment: u32_at(2),
            offset: u64::from_be_bytes(stored[6..14].try_into().expect("8 bytes")),
            len: u32_at(14),
            crc: u32_at(18),
        })
    }

    /// Whether a stored value is a pointer (a value stored inline is JSON).
    pub fn is_pointer(stored: &[u8]) -> bool {
        stored.first() == Some(&0)
    }

    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// The file name of segment `id`.
pub fn file_name(id: u32) -> String {
    format!("{id:08}.seg")
}

/// The id of the segment file named `name`, if it is one.
pub fn id_of(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One entry of a segment, as [`Segments::entries`] walks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where the entry's header starts.
    pub start: u64,
    pub owner: Vec<u8>,
    pub pointer: Pointer,
}

/// How a walk of a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The last entry ends at the end of the file, or only zeros follow it
    /// (preallocated space).
    Clean,
    /// From this offset on the file holds no whole entry: an append a crash
    /// cut short (or damage).
    Torn(u64),
}

/// Bytes per segment: live (pointed to) and on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub live: u64,
    pub size: u64,
}

/// The totals `health` and `checkpoint-dump summary` show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceUsage {
    pub segments: u64,
    pub live_bytes: u64,
    pub dead_bytes: u64,
    pub bytes_on_disk: u64,
}

struct Active {
    id: u32,
    file: Arc<File>,
    /// Where the next entry goes: the end of the last one.
    len: u64,
    /// The file's length: `len` and the zeros after it.
    allocated: u64,
    /// Whether the last append was small (see "Preallocation").
    last_small: bool,
    max_bytes: u64,
}

impl Active {
    /// Zero-fills the file from `allocated` on, so that `need` more bytes
    /// fit without making the file longer.
    fn preallocate(&mut self, need: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let end = (self.len + need).max(self.allocated + PREALLOCATE_BYTES).min(self.max_bytes.max(self.len + need));
        while self.allocated < end {
            let n = (end - self.allocated).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], self.allocated)?;
            self.allocated += n as u64;
        }
        Ok(())
    }

    /// Cuts the zeros after the last entry and syncs the file.
    fn trim_and_sync(&mut self) -> io::Result<()> {
        if self.allocated > self.len {
            self.file.set_len(self.len)?;
            self.allocated = self.len;
        }
        self.file.sync_data()
    }
}

struct Unsynced {
    /// Files appended to since the last sync.
    files: Vec<Arc<File>>,
    /// A file was created: its directory entry must be synced too.
    created: bool,
}

/// The segment files of one data directory.
pub struct Segments {
    dir: PathBuf,
    data_dir: PathBuf,
    writable: bool,
    max_bytes: u64,
    active: Mutex<Option<Active>>,
    unsynced: Mutex<Unsynced>,
    /// Held across a whole sync, so a second syncer returns only once what
    /// the first took on is durable.
    sync_lock: Mutex<()>,
    /// Read handles, and every segment's size.
    files: RwLock<HashMap<u32, Arc<File>>>,
    usage: Mutex<BTreeMap<u32, Usage>>,
}

impl Segments {
    /// The segments of the data directory `data_dir`. Nothing is created
    /// until the first append; `writable` is false for a read-only view.
    pub fn open(data_dir: &Path, writable: bool) -> io::Result<Segments> {
        Segments::open_sized(data_dir, writable, SEGMENT_BYTES)
    }

    /// With segments sealed at `max_bytes` (tests use small ones).
    pub fn open_sized(data_dir: &Path, writable: bool, max_bytes: u64) -> io::Result<Segments> {
        let dir = data_dir.join(SEGMENTS_DIR);
        let mut usage = BTreeMap::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(id) = name.to_str().and_then(id_of) else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("`{SEGMENTS_DIR}` holds {name:?}, which is not a segment file"),
                        ));
                    };
                    let meta = entry.metadata()?;
                    if !meta.is_file() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("`{SEGMENTS_DIR}/{}` is not a regular file", file_name(id)),
                        ));
                    }
                    usage.insert(id, Usage { live: 0, size: meta.len() });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Segments {
            dir,
            data_dir: data_dir.to_path_buf(),
            writable,
            max_bytes,
            active: Mutex::new(None),
            unsynced: Mutex::new(Unsynced { files: Vec::new(), created: false }),
            sync_lock: Mutex::new(()),
            files: RwLock::new(HashMap::new()),
            usage: Mutex::new(usage),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `value`, owned by `owner` (tree number and key), to the active
    /// segment; durable only after the next [`Segments::sync`].
    pub fn append(&self, owner: &[u8], value: &[u8]) -> io::Result<Pointer> {
        if !self.writable {
            return Err(io::Error::other("segments opened read-only"));
        }
        let len = u32::try_from(value.len()).map_err(|_| io::Error::other("value too large for a segment"))?;
        let owner_len = u16::try_from(owner.len()).map_err(|_| io::Error::other("owner key too long"))?;
        let crc = crc32fast::hash(value);
        let mut header = Vec::with_capacity(FIXED_HEADER + owner.len() + 4);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&crc.to_be_bytes());
        header.extend_from_slice(&owner_len.to_be_bytes());
        header.extend_from_slice(owner);
        let header_crc = crc32fast::hash(&header);
        header.extend_from_slice(&header_crc.to_be_bytes());
        let header_len = header.len() as u64;
        let entry_len = header_len + value.len() as u64;

        let mut active = self.active.lock().expect("segments lock");
        if active.as_ref().is_none_or(|a| a.len > 0 && a.len + entry_len > a.max_bytes) {
            *active = Some(self.create_next(active.as_mut())?);
        }
        let a = active.as_mut().expect("an active segment");
        let small = entry_len <= PREALLOCATE_BELOW;
        if small && a.last_small && a.len + entry_len > a.allocated {
            a.preallocate(entry_len)?;
        }
        a.last_small = small;
        // Header and value in one `pwritev`: the value is not copied.
        write_all_vectored_at(&a.file, &header, value, a.len)?;
        let pointer = Pointer { segment: a.id, offset: a.len + header_len, len, crc };
        a.len += entry_len;
        a.allocated = a.allocated.max(a.len);
        let size = a.allocated;
        let file = Arc::clone(&a.file);
        {
            let mut u = self.unsynced.lock().expect("segments lock");
            if !u.files.iter().any(|f| Arc::ptr_eq(f, &file)) {
                u.files.push(file);
            }
        }
        self.usage.lock().expect("segments lock").entry(pointer.segment).or_default().size = size;
        Ok(pointer)
    }

    /// Opens the segment after the newest one (the newest present may have
    /// a torn tail from before a crash: it is never appended to again).
    ///
    /// The segment being sealed is cut to its last entry and fdatasynced
    /// first: no byte of the next one can reach the disk before every byte
    /// of this one has, so only the newest segment at a crash can have a
    /// torn tail, and an intent found after a torn tail (in a later
    /// segment) was written after a restart.
    fn create_next(&self, sealed: Option<&mut Active>) -> io::Result<Active> {
        if let Some(sealed) = sealed {
            sealed.trim_and_sync()?;
            if let Some(u) = self.usage.lock().expect("segments lock").get_mut(&sealed.id) {
                u.size = sealed.len;
            }
        }
        fs::create_dir_all(&self.dir)?;
        let id = {
            let usage = self.usage.lock().expect("segments lock");
            usage.keys().next_back().map_or(1, |id| id + 1)
        };
        let path = self.dir.join(file_name(id));
        let file = Arc::new(OpenOptions::new().read(true).write(true).create_new(true).open(&path)?);
        self.usage.lock().expect("segments lock").insert(id, Usage::default());
        self.files.write().expect("segments lock").insert(id, Arc::clone(&file));
        self.unsynced.lock().expect("segments lock").created = true;
        Ok(Active { id, file, len: 0, allocated: 0, last_small: true, max_bytes: self.max_bytes })
    }

    /// Cuts the active segment's zeros after its last entry and syncs it
    /// (at close, once nothing more is appended).
    pub fn trim_active(&self) -> io::Result<()> {
        let mut active = self.active.lock().expect("segments lock");
        let Some(a) = active.as_mut() else { return Ok(()) };
        a.trim_and_sync()?;
        if let Some(u) = self.usage.lock().expect("segments lock").get_mut(&a.id) {
            u.size = a.len;
        }
        Ok(())
    }

    /// Cuts the zeros a crash left after the newest segment's last entry
    /// (at open, before anything is appended: no entry is ever written
    /// there again, see `create_next`).
    pub fn trim_newest(&self) -> io::Result<()> {
        let Some(id) = self.ids().last().copied() else { return Ok(()) };
        let (entries, tail) = self.entries(id)?;
        let end = entries.last().map_or(0, |e| e.pointer.end());
        let size = self.usage.lock().expect("segments lock").get(&id).map_or(0, |u| u.size);
        if tail != Tail::Clean || size <= end {
            return Ok(());
        }
        let file = OpenOptions::new().write(true).open(self.dir.join(file_name(id)))?;
        file.set_len(end)?;
        file.sync_data()?;
        if let Some(u) = self.usage.lock().expect("segments lock").get_mut(&id) {
            u.size = end;
        }
        Ok(())
    }

    /// The segment appends go to now, if one was opened.
    pub fn active_id(&self) -> Option<u32> {
        self.active.lock().expect("segments lock").as_ref().map(|a| a.id)
    }

    /// Makes every append so far durable: fdatasyncs each file appended to
    /// since the last sync, and the directories when a file was created.
    /// Returns only once every append made before the call is durable, also
    /// when another thread's sync took it on.
    pub fn sync(&self) -> io::Result<()> {
        let _syncing = self.sync_lock.lock().expect("segments sync lock");
        let (files, created) = {
            let mut u = self.unsynced.lock().expect("segments lock");
            (std::mem::take(&mut u.files), std::mem::replace(&mut u.created, false))
        };
        let result = (|| {
            for f in &files {
                f.sync_data()?;
            }
            if created {
                File::open(&self.dir)?.sync_all()?;
                File::open(&self.data_dir)?.sync_all()?;
            }
            Ok(())
        })();
        if result.is_err() {
            // Not synced: the next attempt takes them on again.
            let mut u = self.unsynced.lock().expect("segments lock");
            u.files.extend(files);
            u.created |= created;
        }
        result
    }

    /// fdatasyncs segment `id` as it is on disk now, whoever wrote it (at
    /// open: what a crash left in the page cache is replayed from it).
    pub fn sync_file(&self, id: u32) -> io::Result<()> {
        OpenOptions::new().write(true).open(self.dir.join(file_name(id)))?.sync_data()
    }

    fn file(&self, id: u32) -> io::Result<Arc<File>> {
        if let Some(f) = self.files.read().expect("segments lock").get(&id) {
            return Ok(Arc::clone(f));
        }
        let file = Arc::new(File::open(self.dir.join(file_name(id)))?);
        Ok(Arc::clone(self.files.write().expect("segments lock").entry(id).or_insert(file)))
    }

    /// The value `p` points to, checked against its CRC.
    pub fn read(&self, p: &Pointer) -> Result<Vec<u8>, ReadError> {
        let file = self.file(p.segment).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ReadError::Missing(format!("segment {} does not exist", file_name(p.segment))),
            _ => ReadError::Io(e),
        })?;
        let size = file.metadata().map_err(ReadError::Io)?.len();
        if p.end() > size {
            return Err(ReadError::Missing(format!(
                "a pointer to bytes {}..{} of segment {} reaches past its end ({size} bytes)",
                p.offset,
                p.end(),
                file_name(p.segment)
            )));
        }
        let mut buf = vec![0; p.len as usize];
        file.read_exact_at(&mut buf, p.offset).map_err(ReadError::Io)?;
        if crc32fast::hash(&buf) != p.crc {
            return Err(ReadError::Checksum(format!(
                "bytes {}..{} of segment {} fail their checksum",
                p.offset,
                p.end(),
                file_name(p.segment)
            )));
        }
        Ok(buf)
    }

    /// Walks segment `id` entry by entry, until its end or the first bytes
    /// that are not a whole entry (headers are checked; values are not read).
    pub fn entries(&self, id: u32) -> io::Result<(Vec<Entry>, Tail)> {
        self.entries_from(id, 0)
    }

    /// [`Segments::entries`] from offset `at`, where an entry starts.
    pub fn entries_from(&self, id: u32, mut at: u64) -> io::Result<(Vec<Entry>, Tail)> {
        let file = self.file(id)?;
        let size = file.metadata()?.len();
        let mut out = Vec::new();
        // Bytes from `at` on that are not a whole entry: zeros to the end
        // of the file are preallocated space, anything else a torn append.
        let torn = |at: u64| -> io::Result<Tail> {
            Ok(if zeros_from(&file, at, size)? { Tail::Clean } else { Tail::Torn(at) })
        };
        while at < size {
            let mut fixed = [0u8; FIXED_HEADER];
            if at + FIXED_HEADER as u64 > size {
                return Ok((out, torn(at)?));
            }
            file.read_exact_at(&mut fixed, at)?;
            if &fixed[..4] != MAGIC {
                return Ok((out, torn(at)?));
            }
            let len = u32::from_be_bytes(fixed[4..8].try_into().expect("4"));
            let crc = u32::from_be_bytes(fixed[8..12].try_into().expect("4"));
            let owner_len = u16::from_be_bytes(fixed[12..14].try_into().expect("2")) as u64;
            let header_end = at + FIXED_HEADER as u64 + owner_len + 4;
            if header_end + u64::from(len) > size {
                return Ok((out, torn(at)?));
            }
            let mut rest = vec![0u8; owner_len as usize + 4];
            file.read_exact_at(&mut rest, at + FIXED_HEADER as u64)?;
            let (owner, stored_crc) = rest.split_at(owner_len as usize);
            let mut h = Hasher::new();
            h.update(&fixed);
            h.update(owner);
            if h.finalize().to_be_bytes() != stored_crc {
                return Ok((out, torn(at)?));
            }
            out.push(Entry {
                start: at,
                owner: owner.to_vec(),
                pointer: Pointer { segment: id, offset: header_end, len, crc },
            });
            at = header_end + u64::from(len);
        }
        Ok((out, Tail::Clean))
    }

    /// Every segment present, by id.
    pub fn ids(&self) -> Vec<u32> {
        self.usage.lock().expect("segments lock").keys().copied().collect()
    }

    /// Counts `p`'s bytes as live.
    pub fn acquire(&self, p: &Pointer) {
        self.usage.lock().expect("segments lock").entry(p.segment).or_default().live += u64::from(p.len);
    }

    /// `p` is no longer pointed to.
    pub fn release(&self, p: &Pointer) {
        if let Some(u) = self.usage.lock().expect("segments lock").get_mut(&p.segment) {
            u.live = u.live.saturating_sub(u64::from(p.len));
        }
    }

    /// Sets every live count from the pointers sled holds (at open), after
    /// listing the directory again (a migration may have added segments).
    pub fn recount(&self, pointers: impl IntoIterator<Item = Pointer>) -> io::Result<()> {
        let listed = Segments::open_sized(&self.data_dir, false, self.max_bytes)?.usage();
        let mut usage = self.usage.lock().expect("segments lock");
        for (id, u) in listed {
            usage.entry(id).or_insert(u);
        }
        for u in usage.values_mut() {
            u.live = 0;
        }
        for p in pointers {
            if let Some(u) = usage.get_mut(&p.segment) {
                u.live += u64::from(p.len);
            }
        }
        Ok(())
    }

    pub fn usage(&self) -> BTreeMap<u32, Usage> {
        self.usage.lock().expect("segments lock").clone()
    }

    pub fn space(&self) -> SpaceUsage {
        let usage = self.usage.lock().expect("segments lock");
        let mut s = SpaceUsage::default();
        for u in usage.values() {
            s.segments += 1;
            s.live_bytes += u.live;
            s.bytes_on_disk += u.size;
            s.dead_bytes += u.size.saturating_sub(u.live);
        }
        s
    }

    /// Sealed segments more than half dead, most dead first: compaction's
    /// work. The newest segment is never one: it is the active one, or (before
    /// the first append) the one whose id the next segment must exceed, so
    /// that no id is ever used twice in a directory (`dircopy` keeps a copied
    /// segment whose name and length match).
    pub fn compactable(&self) -> Vec<u32> {
        let active = self.active_id();
        let usage = self.usage.lock().expect("segments lock");
        let newest = usage.keys().next_back().copied();
        let mut out: Vec<(u64, u32)> = usage
            .iter()
            .filter(|(id, u)| Some(**id) != active && Some(**id) != newest && u.size > 0 && u.live * 2 < u.size)
            .map(|(id, u)| (u.size - u.live, *id))
            .collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out.into_iter().map(|(_, id)| id).collect()
    }

    /// Removes segment `id`, which no durable record points into, and
    /// syncs its directory.
    pub fn remove(&self, id: u32) -> io::Result<()> {
        if self.active_id() == Some(id) {
            return Err(io::Error::other("the active segment cannot be removed"));
        }
        self.files.write().expect("segments lock").remove(&id);
        match fs::remove_file(self.dir.join(file_name(id))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.usage.lock().expect("segments lock").remove(&id);
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Removes every segment with no live byte but the newest and `keep`
    /// (at open, after [`Segments::recount`], before anything is appended;
    /// the newest stays so that its id is never used again, see
    /// [`Segments::compactable`]; `keep` holds the newest applied change's
    /// intent, see `change`). Returns how many.
    pub fn remove_unreferenced(&self, keep: Option<u32>) -> io::Result<usize> {
        let dead = self.unreferenced(keep);
        for &id in &dead {
            self.remove(id)?;
        }
        Ok(dead.len())
    }

    /// The segments [`Segments::remove_unreferenced`] would remove.
    pub fn unreferenced(&self, keep: Option<u32>) -> Vec<u32> {
        let usage = self.usage();
        let newest = usage.keys().next_back().copied();
        usage
            .iter()
            .filter(|(id, u)| u.live == 0 && Some(**id) != newest && Some(**id) != keep)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Whether `file` holds only zero bytes from `at` to `size`.
fn zeros_from(file: &File, mut at: u64, size: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Writes `head` then `tail` at `offset`, with `pwritev` (a short write
/// continues where it stopped).
fn write_all_vectored_at(file: &File, head: &[u8], tail: &[u8], offset: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut done = 0usize;
    let total = head.len() + tail.len();
    while done < total {
        let (h, t) = if done < head.len() { (&head[done..], tail) } else { (&[][..], &tail[done - head.len()..]) };
        let iov = [
            libc::iovec { iov_base: h.as_ptr() as *mut libc::c_void, iov_len: h.len() },
            libc::iovec { iov_base: t.as_ptr() as *mut libc::c_void, iov_len: t.len() },
        ];
        let at =
            libc::off_t::try_from(offset + done as u64).map_err(|_| io::Error::other("segment offset too large"))?;
        // SAFETY: both buffers outlive the call and the lengths are theirs;
        // the descriptor is open for writing.
        let n = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), 2, at) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing")),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Why a value could not be read from its segment.
#[derive(Debug)]
pub enum ReadError {
    /// The segment or the bytes are not there.
    Missing(String),
    Checksum(String),
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Missing(s) | ReadError::Checksum(s) => f.write_str(s),
            ReadError::Io(e) => write!(f, "cannot read a segment: {e}"),
        }
    }
}

/// The owner of a value: its tree number and key.
pub fn owner(tree: u8, key: &[u8]) -> Vec<u8> {
    let mut o = Vec::with_capacity(1 + key.len());
    o.push(tree);
    o.extend_from_slice(key);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn pointers_round_trip_and_json_is_never_a_pointer() {
        let p = Pointer { segment: 7, offset: 1 << 40, len: 65536, crc: 0xdead_beef };
        assert_eq!(Pointer::decode(&p.encode()), Some(p));
        assert!(Pointer::is_pointer(&p.encode()));
        for json in [&b"{}"[..], b"null", b" [1]", b"\"x\"", b"0"] {
            assert_eq!(Pointer::decode(json), None);
            assert!(!Pointer::is_pointer(json));
        }
        assert_eq!(Pointer::decode(&p.encode()[..POINTER_LEN - 1]), None);
    }

    #[test]
    fn appends_read_back_and_walk_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(dir.path(), true).unwrap();
        let a = segs.append(&owner(4, b"key-a"), &value(100_000, 1)).unwrap();
        let b = segs.append(&owner(13, b"key-b"), &value(10, 2)).unwrap();
        segs.sync().unwrap();
        assert_eq!(segs.read(&a).unwrap(), value(100_000, 1));
        assert_eq!(segs.read(&b).unwrap(), value(10, 2));
        let (entries, tail) = segs.entries(a.segment).unwrap();
        assert_eq!(tail, Tail::Clean);
        assert_eq!(
            entries.iter().map(|e| (e.owner.clone(), e.pointer)).collect::<Vec<_>>(),
            vec![(owner(4, b"key-a"), a), (owner(13, b"key-b"), b)]
        );
        // A second view of the directory reads the same.
        let again = Segments::open(dir.path(), false).unwrap();
        assert_eq!(again.read(&a).unwrap(), value(100_000, 1));
        assert!(again.append(b"x", b"y").is_err());
    }

    #[test]
    fn small_appends_go_into_zeros_written_ahead_and_the_zeros_are_cut_at_seal_and_close() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open_sized(dir.path(), true, 4 * PREALLOCATE_BYTES).unwrap();
        let path = |id| dir.path().join(SEGMENTS_DIR).join(file_name(id));
        let size = |id| fs::metadata(path(id)).unwrap().len();
        let a = segs.append(&owner(4, b"a"), &value(1000, 1)).unwrap();
        assert_eq!(size(1), PREALLOCATE_BYTES);
        // Appends within the zeros do not make the file longer.
        let small: Vec<Pointer> = (0..100).map(|i| segs.append(&owner(4, &[i]), &value(1000, i)).unwrap()).collect();
        assert_eq!(size(1), PREALLOCATE_BYTES);
        assert_eq!(segs.space().bytes_on_disk, PREALLOCATE_BYTES);
        let (entries, tail) = segs.entries(1).unwrap();
        assert_eq!((entries.len(), tail), (101, Tail::Clean));
        // A large append just extends the file.
        let big = segs.append(&owner(4, b"big"), &value(2 * PREALLOCATE_BYTES as usize, 9)).unwrap();
        assert_eq!(size(1), big.end());
        // Sealing cuts nothing more (no zeros after a large append)...
        let next = segs.append(&owner(4, b"next"), &value(2 * PREALLOCATE_BYTES as usize, 8)).unwrap();
        assert_eq!((next.segment, size(1)), (2, big.end()));
        // ...but does cut the zeros after small ones. (A small append right
        // after a large one, the intent after a large state, zero-fills
        // nothing.)
        let c0 = segs.append(&owner(4, b"c0"), &value(1000, 7)).unwrap();
        assert_eq!(size(2), c0.end());
        let c = segs.append(&owner(4, b"c"), &value(1000, 7)).unwrap();
        assert_eq!(size(2), c0.end() + PREALLOCATE_BYTES);
        let d = segs.append(&owner(4, b"d"), &value(3 * PREALLOCATE_BYTES as usize, 6)).unwrap();
        assert_eq!((d.segment, size(2)), (3, c.end()));
        segs.append(&owner(4, b"e0"), &value(10, 5)).unwrap();
        let e = segs.append(&owner(4, b"e"), &value(10, 5)).unwrap();
        assert!(size(3) > e.end());
        segs.trim_active().unwrap();
        assert_eq!(size(3), e.end());
        assert_eq!(segs.space().bytes_on_disk, size(1) + size(2) + size(3));
        for (p, v) in [(a, value(1000, 1)), (c, value(1000, 7)), (e, value(10, 5))] {
            assert_eq!(segs.read(&p).unwrap(), v);
        }
        for (i, p) in small.iter().enumerate() {
            assert_eq!(segs.read(p).unwrap(), value(1000, i as u8));
        }
    }

    #[test]
    fn damage_is_told_apart_from_data() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(dir.path(), true).unwrap();
        let a = segs.append(&owner(4, b"k"), &value(5000, 3)).unwrap();
        segs.sync().unwrap();
        let path = dir.path().join(SEGMENTS_DIR).join(file_name(a.segment));
        // Into the preallocated zeros, then (once they are cut) past the end.
        let long = Pointer { len: a.len + 1, ..a };
        assert!(matches!(segs.read(&long), Err(ReadError::Checksum(_))));
        segs.trim_active().unwrap();
        assert!(matches!(segs.read(&long), Err(ReadError::Missing(_))));
        // A missing segment.
        let other = Pointer { segment: a.segment + 5, ..a };
        assert!(matches!(segs.read(&other), Err(ReadError::Missing(_))));
        // A flipped byte in the value.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff ^ value(5000, 3)[10]], a.offset + 10).unwrap();
        assert!(matches!(segs.read(&a), Err(ReadError::Checksum(_))));
        // A torn append after the entry: the walk stops there.
        let size = fs::metadata(&path).unwrap().len();
        f.write_all_at(b"CKSE\0\0", size).unwrap();
        let (entries, tail) = segs.entries(a.segment).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(tail, Tail::Torn(size));
        // A flipped byte in the owner fails the header's checksum.
        f.write_all_at(b"X", FIXED_HEADER as u64).unwrap();
        assert_eq!(segs.entries(a.segment).unwrap(), (vec![], Tail::Torn(0)));
    }

    #[test]
    fn segments_seal_at_their_size_and_a_new_view_never_appends_to_an_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open_sized(dir.path(), true, 64 * 1024).unwrap();
        let ptrs: Vec<Pointer> = (0..10).map(|i| segs.append(&owner(4, &[i]), &value(20_000, i)).unwrap()).collect();
        segs.sync().unwrap();
        // Three entries fit in 64 KiB: ids 1..=4.
        assert_eq!(segs.ids(), vec![1, 2, 3, 4]);
        for (i, p) in ptrs.iter().enumerate() {
            assert_eq!(segs.read(p).unwrap(), value(20_000, i as u8));
        }
        drop(segs);
        let segs = Segments::open_sized(dir.path(), true, 64 * 1024).unwrap();
        let p = segs.append(&owner(4, b"new"), b"[1]").unwrap();
        assert_eq!(p.segment, 5);
    }

    #[test]
    fn usage_counts_live_and_dead_bytes_and_picks_half_dead_sealed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open_sized(dir.path(), true, 64 * 1024).unwrap();
        let ptrs: Vec<Pointer> = (0..6).map(|i| segs.append(&owner(4, &[i]), &value(20_000, i)).unwrap()).collect();
        segs.recount(ptrs.iter().copied()).unwrap();
        let space = segs.space();
        assert_eq!(space.live_bytes, 120_000);
        assert_eq!(space.bytes_on_disk, space.live_bytes + space.dead_bytes);
        assert!(segs.compactable().is_empty());
        // Two of segment 1's three values die: it is more than half dead.
        segs.release(&ptrs[0]);
        segs.release(&ptrs[1]);
        assert_eq!(segs.compactable(), vec![1]);
        // The active (and newest) segment is never picked.
        segs.release(&ptrs[3]);
        segs.release(&ptrs[4]);
        segs.release(&ptrs[5]);
        assert_eq!(segs.active_id(), Some(2));
        assert_eq!(segs.compactable(), vec![1]);
        segs.release(&ptrs[2]);
        drop(segs);
        // At open nothing is live: every segment goes.
        let segs = Segments::open_sized(dir.path(), true, 64 * 1024).unwrap();
        segs.recount([ptrs[3]]).unwrap();
        assert_eq!(segs.remove_unreferenced(None).unwrap(), 1);
        assert_eq!(segs.ids(), vec![2]);
        assert!(!dir.path().join(SEGMENTS_DIR).join(file_name(1)).exists());
        // With nothing live, the newest stays: the next id is never reused.
        segs.recount([]).unwrap();
        assert_eq!(segs.remove_unreferenced(None).unwrap(), 0);
        assert_eq!(segs.append(&owner(4, b"k"), b"[]").unwrap().segment, 3);
    }
}
