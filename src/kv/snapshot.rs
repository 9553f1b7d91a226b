//! Snapshots of a [`KvStore`]: a view of the state in O(1), its bytes written as a stream on any
//! thread, the stream read back into a new store, and the store's hash for `etcdctl endpoint
//! hashkv`.
//!
//! The byte layout of the payload and the definition of the hash are in `docs/FORMAT.md`,
//! section "Key-value snapshot payload"; the constants below are tied to it by assertions.
//!
//! # How a snapshot avoids stalling the node
//! [`KvStore::snapshot_view`] clones the store's persistent map (one reference count: see
//! `store.rs`) and its three scalars. The [`KvSnapshotView`] is `Send + 'static` and immutable:
//! the writes the store applies afterwards copy the map nodes and histories they change instead of
//! changing the shared ones, so the view keeps describing the moment it was taken. Writing the
//! bytes ([`KvSnapshotView::write_to`]) and hashing them run on whatever thread holds the view.
//!
//! Measured with `examples/kv_snapshot_cost.rs` (8-byte keys, 256-byte values, mimalloc, a 2-core
//! machine shared with other work): `snapshot_view` takes 30 ns (p50; max under 0.5 µs) at 10,000
//! and at 1,000,000 keys; `write_to` runs at about 4 GB/s into a sink and 1.7 GB/s into a file
//! (page cache), 0.18 s for the 301 MB of 1M keys; `restore_from` at 700 to 780 MB/s (170 MB/s for
//! the first store a process builds, which takes fresh pages from the kernel). While another
//! thread wrote a 330 MB view, puts into the 1M-key store cost p50 4.4 µs against 3.6 µs without
//! it, p99 7.9 against 5.7 µs (the copies on write, and the two threads sharing the machine).
//!
//! # Invariants
//! - A view's bytes are exactly those of a store that stopped at the moment the view was taken
//!   (tests compare them byte for byte).
//! - Restoring never allocates from an unchecked length: a key or value longer than
//!   [`SNAPSHOT_FIELD_BYTES_MAX`] is refused before anything is allocated for it, and a shorter
//!   one is gathered in pieces of at most [`SNAPSHOT_BUFFER_BYTES`] as the bytes arrive; counts
//!   (keys, versions) are never used to reserve memory.
//! - Restoring builds the new store aside and hands it out only after the checksum matched and
//!   every invariant of the store held; the change queue and `size_bytes` are derived, rebuilt.
//! - The hash depends only on the kept versions at or below the hashed revision, not on how the
//!   store got them (applied from the log, or restored).

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

use super::sink::SinkSlot;
use super::store::{
    version_size_bytes, History, Key, KeyMap, LeaseMap, LeaseState, Live, Version, LEASE_TTL_MAX_S,
    REVISION_INITIAL,
};
use super::{KvError, KvStore};
use crate::state_machine::{Snapshot, SnapshotError, SnapshotSource};

/// The payload's first bytes.
pub(super) const MAGIC: &[u8; 8] = b"RRLKVSN1";
/// The layout this code writes. Version 2 added leases (a live version's lease, and the lease
/// table after the key records); version 1 payloads, written before leases existed, still load
/// (as a store without leases). Version 3 added the member table (`super::members`) after the
/// lease table; older payloads load with an empty one.
pub(super) const FORMAT_VERSION: u32 = 3;
/// The oldest layout this code reads.
pub(super) const FORMAT_VERSION_MIN: u32 = 1;
/// Live flag of a live version without a lease (the only live flag of version 1).
const LIVE: u8 = 1;
/// Live flag of a live version attached to a lease: its lease ID follows its `version`.
const LIVE_LEASED: u8 = 2;
/// Bytes before the first key record: magic, version, revision, compact_revision,
/// history_revisions, key count.
pub(super) const HEADER_BYTES: usize = 44;
const _: () = assert!(HEADER_BYTES == MAGIC.len() + 4 + 8 + 8 + 8 + 8);
/// The trailing CRC-32C.
pub(super) const CHECKSUM_BYTES: usize = 4;

/// The longest key or value a snapshot holds: every key and value reached the store inside one
/// committed log entry, and no entry carries more than this (16 MiB). The writer refuses a longer
/// one (a store fed directly through `KvStore::apply`), so that it never writes a payload the
/// reader would refuse.
pub const SNAPSHOT_FIELD_BYTES_MAX: usize = crate::storage::format::ENTRY_PAYLOAD_MAX;
// docs/FORMAT.md states the limit as 16 MiB; the lengths are u32.
const _: () = assert!(SNAPSHOT_FIELD_BYTES_MAX == 16 << 20);
const _: () = assert!(SNAPSHOT_FIELD_BYTES_MAX <= u32::MAX as usize);

/// The writer's and the reader's buffer: the unit of the writer's `write` calls and of the CRC
/// computation, and the largest piece a long key or value is read in.
pub const SNAPSHOT_BUFFER_BYTES: usize = 64 * 1024;
// docs/FORMAT.md: "in pieces of 64 KiB".
const _: () = assert!(SNAPSHOT_BUFFER_BYTES == 64 << 10);

/// The store's state at one moment, to write out or hash on any thread. Cheap to clone.
///
/// Taken with [`KvStore::snapshot_view`]; later writes to the store do not change it.
#[derive(Clone)]
pub struct KvSnapshotView {
    revision: i64,
    compact_revision: i64,
    history_revisions: i64,
    keys: KeyMap,
    leases: LeaseMap,
    /// A handful of members: cloned whole.
    members: super::MemberTable,
    /// The store's view token (`KvStore::views`), held while the view lives.
    _token: Arc<()>,
}

// The node hands a view to another thread and keeps applying: it must own what it reads.
const _: fn() = || {
    fn send_sync_static<T: Send + Sync + 'static>() {}
    send_sync_static::<KvSnapshotView>();
};

impl fmt::Debug for KvSnapshotView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvSnapshotView")
            .field("revision", &self.revision)
            .field("compact_revision", &self.compact_revision)
            .field("history_revisions", &self.history_revisions)
            .field("keys", &self.keys.len())
            .field("leases", &self.leases.len())
            .finish()
    }
}

/// The result of [`KvStore::hash_kv`]: etcd's `HashKVResponse` fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32C of the kept versions at or below `revision` (`docs/FORMAT.md`, "HashKV").
    pub hash: u32,
    /// The revision hashed up to: the one asked for, or the current one for 0.
    pub revision: i64,
    /// The store's compaction point when hashed (-1 before any compaction).
    pub compact_revision: i64,
}

impl KvStore {
    /// A consistent view of the store as it is now, in O(1) whatever its size (a clone of the
    /// persistent map's root and three integers). Writes applied afterwards are not in it; while
    /// it is alive, each later write copies the few map nodes on its path that the view still
    /// shares (see the cost figures in `examples/kv_snapshot_cost.rs`).
    pub fn snapshot_view(&self) -> KvSnapshotView {
        KvSnapshotView {
            revision: self.revision,
            compact_revision: self.compact_revision,
            history_revisions: self.history_revisions,
            keys: self.keys.clone(),
            leases: self.leases.clone(),
            members: self.members.clone(),
            _token: Arc::clone(&self.views),
        }
    }

    /// Reads a payload written by [`KvSnapshotView::write_to`] into a new store. `r` must yield
    /// the payload and nothing after it (it is read to its end); it is read through a buffer of
    /// [`SNAPSHOT_BUFFER_BYTES`], so an unbuffered file is fine.
    ///
    /// # Errors
    /// `Corrupt` naming the payload offset for a checksum mismatch, a length beyond
    /// [`SNAPSHOT_FIELD_BYTES_MAX`], bytes missing or left over, or a broken invariant of the
    /// store; `Io` when `r` fails. Nothing is returned until the whole payload has been read and
    /// checked.
    pub fn restore_from(r: &mut dyn Read) -> Result<KvStore, SnapshotError> {
        decode(&mut PayloadReader::new(r))
    }

    /// etcd's `HashKV`: the hash of the kept versions at or below `revision` (0: the current
    /// revision). O(size of the store): a server should take a view ([`KvStore::snapshot_view`])
    /// and call [`KvSnapshotView::hash_kv`] on another thread.
    ///
    /// # Errors
    /// `Compacted` for a revision below the compaction point, `FutureRevision` above the current
    /// one (etcd's checks and order; hashing at the compaction point itself is allowed, as reads
    /// there are).
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash, KvError> {
        self.snapshot_view().hash_kv(revision)
    }
}

impl KvSnapshotView {
    /// The store revision the view was taken at.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Writes the snapshot payload (`docs/FORMAT.md`, "Key-value snapshot payload") to `w` in
    /// pieces of [`SNAPSHOT_BUFFER_BYTES`] and flushes it; returns the number of bytes written.
    ///
    /// # Errors
    /// The errors of `w`; `InvalidData` for a key or value longer than
    /// [`SNAPSHOT_FIELD_BYTES_MAX`] or a history of more than `u32::MAX` versions, which no store
    /// fed from the log holds.
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<u64> {
        let mut out = PayloadWriter::new(w);
        out.put(MAGIC)?;
        out.put(&FORMAT_VERSION.to_le_bytes())?;
        out.put(&self.revision.to_le_bytes())?;
        out.put(&self.compact_revision.to_le_bytes())?;
        out.put(&self.history_revisions.to_le_bytes())?;
        out.put(&(self.keys.len() as u64).to_le_bytes())?;
        // The walk is bound by memory latency, not by copying: each key's bytes, its history's
        // vector and each value are separate heap blocks, cold in the cache, and reached one
        // after the other. Two iterators run ahead of the one that writes and ask the CPU for
        // those blocks early, so that their misses overlap instead of queueing up
        // (`prefetch_record`: the key and the vector `PREFETCH_KEYS_AHEAD` keys ahead, the values
        // half as far ahead, by when their vector has arrived).
        let mut far = self.keys.iter();
        let mut near = self.keys.iter();
        for (key, history) in far.by_ref().take(PREFETCH_KEYS_AHEAD) {
            prefetch_record(key, history);
        }
        for (_, history) in near.by_ref().take(PREFETCH_KEYS_AHEAD / 2) {
            prefetch_values(history);
        }
        for (key, history) in &self.keys {
            if let Some((key, history)) = far.next() {
                prefetch_record(key, history);
            }
            if let Some((_, history)) = near.next() {
                prefetch_values(history);
            }
            put_key_record(&mut out, key, history)?;
        }
        out.put(&(self.leases.len() as u64).to_le_bytes())?;
        for (id, lease) in &self.leases {
            out.put(&id.to_le_bytes())?;
            out.put(&lease.ttl_s.to_le_bytes())?;
        }
        out.put(&(self.members.len() as u32).to_le_bytes())?;
        for (node, record) in &self.members {
            out.put(&node.to_le_bytes())?;
            out.put(&(record.peer_urls.len() as u32).to_le_bytes())?;
            for url in &record.peer_urls {
                out.put(&(url.len() as u32).to_le_bytes())?;
                out.put(url.as_bytes())?;
            }
        }
        out.finish()
    }

    /// [`KvStore::hash_kv`] of the state the view holds.
    ///
    /// # Errors
    /// As [`KvStore::hash_kv`].
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash, KvError> {
        if revision > 0 && revision < self.compact_revision {
            return Err(KvError::Compacted);
        }
        if revision > self.revision {
            return Err(KvError::FutureRevision);
        }
        let revision = if revision <= 0 {
            self.revision
        } else {
            revision
        };
        // The records go through the payload writer into a sink: the hash is the writer's CRC.
        let mut sink = io::sink();
        let mut out = PayloadWriter::new(&mut sink);
        for (key, history) in &self.keys {
            let at_or_below = history.partition_point(|version| version.mod_revision <= revision);
            if at_or_below > 0 {
                put_key_record(&mut out, key, &history[..at_or_below])
                    .unwrap_or_else(|error| panic!("hashing key {key:?}: {error}"));
            }
        }
        let hash = out
            .checksum()
            .unwrap_or_else(|error| panic!("hashing into a sink: {error}"));
        Ok(KvHash {
            hash,
            revision,
            compact_revision: self.compact_revision,
        })
    }
}

impl SnapshotSource for KvSnapshotView {
    fn write_to(&self, w: &mut dyn Write) -> io::Result<u64> {
        KvSnapshotView::write_to(self, w)
    }
}

impl Snapshot for KvStore {
    fn snapshot_view(&self) -> Box<dyn SnapshotSource> {
        Box::new(KvStore::snapshot_view(self))
    }

    fn restore_from(&mut self, r: &mut dyn Read) -> Result<(), SnapshotError> {
        let restored = KvStore::restore_from(r)?;
        self.replace_keeping_sink(restored);
        Ok(())
    }
}

/// How far ahead of the key being written [`KvSnapshotView::write_to`] asks for the next keys'
/// heap blocks. Measured with `kv::cost_tests::cost_of_snapshot_payload` (2 cores, load ~10,
/// interleaved runs): 32 keys ahead with whole values of up to 512 bytes asked for took 0.77 to
/// 0.94x the CPU of 16 keys ahead with a value's first two lines, which took 0.42 to 0.53x the
/// CPU of no prefetching.
const PREFETCH_KEYS_AHEAD: usize = 32;

/// The most of one value asked for ahead: a longer value is copied sequentially, which the
/// hardware prefetcher follows by itself.
const VALUE_PREFETCH_BYTES_MAX: usize = 512;

/// Asks the CPU to bring a cache line into its caches, without waiting for it (a hint: it never
/// faults, whatever the address). A no-op where there is no such instruction.
#[inline(always)]
fn prefetch(address: *const u8) {
    // SAFETY: `_mm_prefetch` needs SSE, which is part of the x86_64 baseline (every x86_64 CPU
    // has it), and a prefetch only hints: it reads nothing and never faults, whatever `address`.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// The first cache lines of a key's bytes and of its history's vector.
fn prefetch_record(key: &Key, history: &History) {
    prefetch(key.as_ptr());
    prefetch(history.as_ptr().cast());
    // A history of a few versions spans more than one line (40 bytes a version).
    if history.len() > 1 {
        prefetch(history[..].as_ptr().wrapping_add(history.len() - 1).cast());
    }
}

/// The values of a history (reads the vector: it should be in the cache by now), each up to
/// [`VALUE_PREFETCH_BYTES_MAX`].
fn prefetch_values(history: &History) {
    for version in history {
        if let Some(live) = &version.live {
            let value = live.value.as_ptr();
            for offset in (0..live.value.len().min(VALUE_PREFETCH_BYTES_MAX)).step_by(64) {
                prefetch(value.wrapping_add(offset));
            }
        }
    }
}

/// One key's record: key length, key, version count, then each version.
fn put_key_record(out: &mut PayloadWriter<'_>, key: &[u8], versions: &[Version]) -> io::Result<()> {
    out.put_field(key, "key")?;
    let count = u32::try_from(versions.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("key {key:?} has {} versions, beyond u32", versions.len()),
        )
    })?;
    out.put(&count.to_le_bytes())?;
    for version in versions {
        // The fixed fields of a version are gathered on the stack and handed over in one piece
        // (one bounds check instead of five).
        let mut fixed = [0u8; VERSION_FIXED_BYTES_MAX];
        fixed[..8].copy_from_slice(&version.mod_revision.to_le_bytes());
        match &version.live {
            None => out.put(&fixed[..9])?,
            Some(live) => {
                // A version without a lease is written as in format 1, so the HashKV of a store
                // that never used leases is what it was.
                fixed[8] = if live.lease == 0 { LIVE } else { LIVE_LEASED };
                fixed[9..17].copy_from_slice(&live.create_revision.to_le_bytes());
                fixed[17..25].copy_from_slice(&live.version.to_le_bytes());
                let mut end = 25;
                if live.lease != 0 {
                    fixed[25..33].copy_from_slice(&live.lease.to_le_bytes());
                    end = 33;
                }
                let value = &live.value;
                check_field_len(value, "value")?;
                fixed[end..end + 4].copy_from_slice(&(value.len() as u32).to_le_bytes());
                out.put(&fixed[..end + 4])?;
                out.put(value)?;
            }
        }
    }
    Ok(())
}

/// A live version's fields before its value bytes, at most: mod_revision, live flag,
/// create_revision, version, lease, value length (`docs/FORMAT.md`, a key record).
const VERSION_FIXED_BYTES_MAX: usize = 8 + 1 + 8 + 8 + 8 + 4;

/// Refuses a key or value the reader would refuse.
fn check_field_len(bytes: &[u8], what: &str) -> io::Result<()> {
    if bytes.len() > SNAPSHOT_FIELD_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "a {what} of {} bytes is beyond the snapshot's {SNAPSHOT_FIELD_BYTES_MAX}",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

/// Writes through a buffer of [`SNAPSHOT_BUFFER_BYTES`], keeping the CRC-32C of everything written.
struct PayloadWriter<'a> {
    out: &'a mut dyn Write,
    buffer: Vec<u8>,
    /// CRC-32C of the bytes already handed to `out`.
    crc: u32,
    written_bytes: u64,
}

impl<'a> PayloadWriter<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        PayloadWriter {
            out,
            buffer: Vec::with_capacity(SNAPSHOT_BUFFER_BYTES),
            crc: 0,
            written_bytes: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.buffer.len() + bytes.len() > SNAPSHOT_BUFFER_BYTES {
            self.drain()?;
            if bytes.len() >= SNAPSHOT_BUFFER_BYTES {
                // A long value goes out as it is rather than through the buffer.
                self.crc = crc32c::crc32c_append(self.crc, bytes);
                self.out.write_all(bytes)?;
                self.written_bytes += bytes.len() as u64;
                return Ok(());
            }
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    /// A length-prefixed key or value.
    fn put_field(&mut self, bytes: &[u8], what: &str) -> io::Result<()> {
        check_field_len(bytes, what)?;
        self.put(&(bytes.len() as u32).to_le_bytes())?;
        self.put(bytes)
    }

    fn drain(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            self.crc = crc32c::crc32c_append(self.crc, &self.buffer);
            self.out.write_all(&self.buffer)?;
            self.written_bytes += self.buffer.len() as u64;
            self.buffer.clear();
        }
        Ok(())
    }

    /// The CRC-32C of everything put so far.
    fn checksum(&mut self) -> io::Result<u32> {
        self.drain()?;
        Ok(self.crc)
    }

    /// Appends the checksum and flushes; returns the payload's length.
    fn finish(mut self) -> io::Result<u64> {
        let crc = self.checksum()?;
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.written_bytes + CHECKSUM_BYTES as u64)
    }
}

/// Reads a payload through a buffer of [`SNAPSHOT_BUFFER_BYTES`], keeping the CRC-32C of what it
/// consumed and the offset, for errors.
struct PayloadReader<'a> {
    input: &'a mut dyn Read,
    buffer: Box<[u8]>,
    /// `buffer[start..end]` is read from `input` and not consumed yet.
    start: usize,
    end: usize,
    /// `buffer[..checked]` is in `crc` already.
    checked: usize,
    crc: u32,
    /// Bytes consumed since the start of the payload.
    offset: u64,
    /// Where a key or value longer than what the buffer holds is assembled.
    scratch: Vec<u8>,
}

impl<'a> PayloadReader<'a> {
    fn new(input: &'a mut dyn Read) -> Self {
        PayloadReader {
            input,
            buffer: vec![0; SNAPSHOT_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            checked: 0,
            crc: 0,
            offset: 0,
            scratch: Vec::new(),
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> SnapshotError {
        SnapshotError::Corrupt {
            offset: self.offset,
            what: what.into(),
        }
    }

    /// Reads the next bytes from `input` into the buffer, whose bytes are all consumed; `what`
    /// and `missing` name what the payload ends in the middle of.
    fn refill(&mut self, what: &str, missing: usize) -> Result<(), SnapshotError> {
        debug_assert_eq!(self.start, self.end, "refill with unconsumed bytes");
        self.crc = crc32c::crc32c_append(self.crc, &self.buffer[self.checked..self.end]);
        (self.start, self.end, self.checked) = (0, 0, 0);
        loop {
            match self.input.read(&mut self.buffer) {
                Ok(0) => {
                    return Err(self.corrupt(format!(
                        "{what}: {missing} more bytes needed, the payload ends"
                    )))
                }
                Ok(read) => {
                    self.end = read;
                    return Ok(());
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SnapshotError::Io {
                        offset: self.offset,
                        source,
                    })
                }
            }
        }
    }

    /// Consumes up to `len` buffered bytes (refilling an empty buffer first).
    fn take(&mut self, len: usize, what: &str) -> Result<&[u8], SnapshotError> {
        if self.start == self.end {
            self.refill(what, len)?;
        }
        let taken = len.min(self.end - self.start);
        let from = self.start;
        self.start += taken;
        self.offset += taken as u64;
        Ok(&self.buffer[from..from + taken])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], SnapshotError> {
        let mut array = [0u8; N];
        let mut filled = 0;
        while filled < N {
            let piece = self.take(N - filled, what)?;
            array[filled..filled + piece.len()].copy_from_slice(piece);
            filled += piece.len();
        }
        Ok(array)
    }

    fn i64(&mut self, what: &str) -> Result<i64, SnapshotError> {
        self.array(what).map(i64::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, SnapshotError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn u32(&mut self, what: &str) -> Result<u32, SnapshotError> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// Fills `out` with the next bytes (the caller bounded its length).
    fn read_exact_into(&mut self, out: &mut [u8], what: &str) -> Result<(), SnapshotError> {
        let mut filled = 0;
        while filled < out.len() {
            let piece = self.take(out.len() - filled, what)?;
            out[filled..filled + piece.len()].copy_from_slice(piece);
            filled += piece.len();
        }
        Ok(())
    }

    fn u8(&mut self, what: &str) -> Result<u8, SnapshotError> {
        self.array::<1>(what).map(|[byte]| byte)
    }

    /// A length-prefixed key or value. The length is checked against [`SNAPSHOT_FIELD_BYTES_MAX`]
    /// before anything is allocated, and the bytes are gathered piece by piece as they arrive.
    fn field(&mut self, what: &str) -> Result<Arc<[u8]>, SnapshotError> {
        let len = self.u32(what)? as usize;
        if len > SNAPSHOT_FIELD_BYTES_MAX {
            return Err(self.corrupt(format!(
                "{what} length {len} is beyond the snapshot's {SNAPSHOT_FIELD_BYTES_MAX}"
            )));
        }
        if self.end - self.start >= len {
            return Ok(Arc::from(self.take(len, what)?));
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        while scratch.len() < len {
            let piece = self.take(len - scratch.len(), what)?;
            scratch.extend_from_slice(piece);
        }
        let field = Arc::from(scratch.as_slice());
        self.scratch = scratch;
        Ok(field)
    }

    /// The CRC-32C of every byte consumed so far.
    fn checksum(&mut self) -> u32 {
        self.crc = crc32c::crc32c_append(self.crc, &self.buffer[self.checked..self.start]);
        self.checked = self.start;
        self.crc
    }

    /// Checks that the input ends here.
    fn expect_end(&mut self) -> Result<(), SnapshotError> {
        let mut extra = self.end - self.start;
        if extra == 0 {
            loop {
                match self.input.read(&mut self.buffer) {
                    Ok(read) => {
                        extra = read;
                        break;
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(SnapshotError::Io {
                            offset: self.offset,
                            source,
                        })
                    }
                }
            }
        }
        if extra == 0 {
            Ok(())
        } else {
            Err(self.corrupt("bytes after the checksum"))
        }
    }
}

fn decode(reader: &mut PayloadReader<'_>) -> Result<KvStore, SnapshotError> {
    let magic: [u8; 8] = reader.array("magic")?;
    if &magic != MAGIC {
        return Err(SnapshotError::Corrupt {
            offset: 0,
            what: "not a key-value store snapshot (bad magic)".to_owned(),
        });
    }
    let format = reader.u32("format version")?;
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&format) {
        return Err(reader.corrupt(format!(
            "unknown format version {format} (this build reads versions \
             {FORMAT_VERSION_MIN} to {FORMAT_VERSION}: written by a newer rust-raft-log?)"
        )));
    }
    let revision = reader.i64("revision")?;
    let compact_revision = reader.i64("compact_revision")?;
    let history_revisions = reader.i64("history_revisions")?;
    if revision < REVISION_INITIAL || compact_revision < -1 || compact_revision > revision {
        return Err(reader.corrupt(format!(
            "revision {revision} with compact_revision {compact_revision}"
        )));
    }
    if history_revisions < 0 {
        return Err(reader.corrupt(format!("history_revisions {history_revisions}")));
    }
    let key_count = reader.u64("key count")?;
    let mut keys = KeyMap::new();
    let mut size_bytes = 0i64;
    let mut previous_key: Option<Key> = None;
    for _ in 0..key_count {
        let key = reader.field("key")?;
        if key.is_empty()
            || previous_key
                .as_ref()
                .is_some_and(|previous| *previous >= key)
        {
            return Err(reader.corrupt("keys must be non-empty and strictly increasing"));
        }
        let history = decode_history(reader, &key, revision, compact_revision, format)?;
        size_bytes += history
            .iter()
            .map(|version| version_size_bytes(&key, version))
            .sum::<i64>();
        keys.insert(Arc::clone(&key), history);
        previous_key = Some(key);
    }
    let leases = if format >= 2 {
        decode_leases(reader, &keys)?
    } else {
        LeaseMap::new()
    };
    let members = if format >= 3 {
        decode_members(reader)?
    } else {
        super::MemberTable::new()
    };
    let computed = reader.checksum();
    let stored = reader.u32("checksum")?;
    if stored != computed {
        return Err(SnapshotError::Corrupt {
            offset: reader.offset - CHECKSUM_BYTES as u64,
            what: format!("checksum {stored:#010x} does not match the content's {computed:#010x}"),
        });
    }
    reader.expect_end()?;
    let changes = change_queue(&keys, compact_revision);
    Ok(KvStore {
        revision,
        compact_revision,
        history_revisions,
        keys,
        changes,
        size_bytes,
        leases,
        members,
        sink: SinkSlot::default(),
        views: Arc::default(),
    })
}

/// The member table (format 3): a count (u32), then per member in strictly increasing node id
/// order its id (u32, nonzero), its URL count (u32, 1..=`MEMBER_URLS_MAX`) and each URL as a
/// length (u32, <= `MEMBER_URL_BYTES_MAX`) and UTF-8 bytes.
fn decode_members(reader: &mut PayloadReader<'_>) -> Result<super::MemberTable, SnapshotError> {
    use super::members::{MEMBER_URLS_MAX, MEMBER_URL_BYTES_MAX};
    let count = reader.u32("member count")?;
    let mut members = super::MemberTable::new();
    let mut previous = 0u32;
    for _ in 0..count {
        let node = reader.u32("member node id")?;
        if node <= previous {
            return Err(reader.corrupt(format!(
                "member node ids must be nonzero and strictly increasing: {node} after {previous}"
            )));
        }
        previous = node;
        let urls = reader.u32("member URL count")? as usize;
        if urls == 0 || urls > MEMBER_URLS_MAX {
            return Err(reader.corrupt(format!(
                "member {node} has {urls} peer URLs (1..={MEMBER_URLS_MAX})"
            )));
        }
        let mut peer_urls = Vec::with_capacity(urls);
        for _ in 0..urls {
            let len = reader.u32("member URL length")? as usize;
            if len > MEMBER_URL_BYTES_MAX {
                return Err(reader.corrupt(format!(
                    "member {node} has a {len}-byte URL (max {MEMBER_URL_BYTES_MAX})"
                )));
            }
            let mut bytes = vec![0u8; len];
            reader.read_exact_into(&mut bytes, "member URL")?;
            let url = String::from_utf8(bytes).map_err(|_| {
                reader.corrupt(format!("member {node} has a URL that is not UTF-8"))
            })?;
            peer_urls.push(url);
        }
        members.insert(node, super::MemberRecord { peer_urls });
    }
    Ok(members)
}

/// The lease table (format 2): a count, then `(id, ttl)` in strictly increasing ID order. The
/// keys attached to each lease are not stored: they are the keys whose newest version is live and
/// names it, gathered here; such a key naming a lease missing from the table is corrupt.
fn decode_leases(reader: &mut PayloadReader<'_>, keys: &KeyMap) -> Result<LeaseMap, SnapshotError> {
    let count = reader.u64("lease count")?;
    let mut leases = LeaseMap::new();
    let mut previous: Option<i64> = None;
    for _ in 0..count {
        let id = reader.i64("lease id")?;
        let ttl_s = reader.i64("lease ttl")?;
        if id == 0 || previous.is_some_and(|previous| previous >= id) {
            return Err(reader.corrupt(format!(
                "lease ids must be nonzero and strictly increasing: {id} after {previous:?}"
            )));
        }
        if !(1..=LEASE_TTL_MAX_S).contains(&ttl_s) {
            return Err(reader.corrupt(format!("lease {id} with a TTL of {ttl_s} s")));
        }
        leases.insert(
            id,
            LeaseState {
                ttl_s,
                keys: imbl::OrdSet::new(),
            },
        );
        previous = Some(id);
    }
    for (key, history) in keys {
        let Some(live) = history.last().and_then(|version| version.live.as_ref()) else {
            continue;
        };
        if live.lease == 0 {
            continue;
        }
        let Some(lease) = leases.get_mut(&live.lease) else {
            return Err(reader.corrupt(format!(
                "key {key:?} is attached to lease {} which the lease table does not hold",
                live.lease
            )));
        };
        lease.keys.insert(Arc::clone(key));
    }
    Ok(leases)
}

/// One key's versions, checked against the store's invariants (`store.rs`).
fn decode_history(
    reader: &mut PayloadReader<'_>,
    key: &[u8],
    revision: i64,
    compact_revision: i64,
    format: u32,
) -> Result<Vec<Version>, SnapshotError> {
    let count = reader.u32("version count")?;
    if count == 0 {
        return Err(reader.corrupt(format!("key {key:?} without versions")));
    }
    let mut history: Vec<Version> = Vec::new();
    for _ in 0..count {
        let mod_revision = reader.i64("mod_revision")?;
        let live = match reader.u8("live flag")? {
            0 => None,
            flag @ (LIVE | LIVE_LEASED) if flag == LIVE || format >= 2 => {
                let create_revision = reader.i64("create_revision")?;
                let version = reader.i64("version")?;
                let lease = if flag == LIVE_LEASED {
                    let lease = reader.i64("lease")?;
                    if lease == 0 {
                        return Err(reader.corrupt("a leased version with lease 0"));
                    }
                    lease
                } else {
                    0
                };
                let value = reader.field("value")?;
                if version < 1 || create_revision < 1 || create_revision > mod_revision {
                    return Err(reader.corrupt(format!(
                        "version {version} created at {create_revision}, modified at {mod_revision}"
                    )));
                }
                Some(Live {
                    create_revision,
                    version,
                    lease,
                    value,
                })
            }
            flag => return Err(reader.corrupt(format!("live flag {flag}"))),
        };
        let increasing = history
            .last()
            .is_none_or(|last| last.mod_revision < mod_revision);
        if mod_revision < 1 || mod_revision > revision || !increasing {
            return Err(reader.corrupt(format!(
                "mod_revision {mod_revision} out of order or above revision {revision}"
            )));
        }
        let version = Version { mod_revision, live };
        if let Some(broken) = incarnation_error(history.last(), &version, compact_revision) {
            return Err(reader.corrupt(format!("key {key:?}: {broken}")));
        }
        history.push(version);
    }
    Ok(history)
}

/// What is wrong with `next` following `previous` in one history, if anything: a compacted
/// tombstone kept at the start, or versions that do not continue an incarnation (the same
/// `create_revision` with increasing versions) nor start a new one (created at its own revision).
fn incarnation_error(
    previous: Option<&Version>,
    next: &Version,
    compact_revision: i64,
) -> Option<String> {
    match (previous.map(|version| &version.live), &next.live) {
        (None, None) if next.mod_revision <= compact_revision => Some(format!(
            "starts with a tombstone at {} at or below the compaction point {compact_revision}",
            next.mod_revision
        )),
        (Some(Some(before)), Some(after)) if before.create_revision == after.create_revision => {
            (before.version >= after.version).then(|| {
                format!(
                    "version {} follows version {} of one incarnation",
                    after.version, before.version
                )
            })
        }
        (Some(_), Some(after)) => (after.create_revision != next.mod_revision).then(|| {
            format!(
                "a new incarnation at {} created at {}",
                next.mod_revision, after.create_revision
            )
        }),
        _ => None,
    }
}

/// The compaction queue of a restored store: every version above the compaction point, in
/// revision order (order within one revision does not matter to compaction; key order is used).
fn change_queue(keys: &KeyMap, compact_revision: i64) -> std::collections::VecDeque<(i64, Key)> {
    let mut changes: Vec<(i64, Key)> = keys
        .iter()
        .flat_map(|(key, history): (&Key, &History)| {
            history
                .iter()
                .filter(|version| version.mod_revision > compact_revision)
                .map(move |version| (version.mod_revision, Arc::clone(key)))
        })
        .collect();
    changes.sort_unstable();
    changes.into()
}

#[cfg(test)]
impl KvSnapshotView {
    /// Whether the view shares the store's whole map (no write since the view was taken).
    pub(super) fn shares_map_with(&self, store: &KvStore) -> bool {
        self.keys.ptr_eq(&store.keys)
    }

    /// Whether the view and the store hold the same allocation for the newest value of `key`.
    pub(super) fn shares_value_with(&self, store: &KvStore, key: &[u8]) -> bool {
        let newest = |keys: &KeyMap| {
            let version = keys.get(key)?.last()?;
            version.live.as_ref().map(|live| Arc::as_ptr(&live.value))
        };
        matches!((newest(&self.keys), newest(&store.keys)), (Some(a), Some(b)) if std::ptr::addr_eq(a, b))
    }
}
