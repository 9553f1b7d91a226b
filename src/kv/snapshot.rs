//! The snapshot of a [`KvStore`]: its whole state as bytes, and back.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "RRLKVSN1"
//!      8     4  format version (u32 LE) = 1
//!     12     8  revision (i64 LE)
//!     20     8  compact_revision (i64 LE)
//!     28     8  history_revisions (i64 LE)
//!     36     8  key count (u64 LE)
//!     44     …  per key, in increasing key order:
//!                 key length (u32 LE), key bytes, version count (u32 LE), then per version:
//!                 mod_revision (i64 LE), live flag (u8: 0 tombstone, 1 live), and if live:
//!                 create_revision (i64 LE), version (i64 LE), value length (u32 LE), value bytes
//!   end-4     4  CRC-32C (Castagnoli) of every byte before it (u32 LE)
//! ```
//!
//! Restoring checks the checksum, every length against the bytes that remain (nothing is
//! allocated from an unchecked length) and the store's invariants (keys strictly increasing,
//! revisions in range, histories strictly increasing); bad bytes give a [`SnapshotError`] naming the
//! offset, and the store is left as it was. The change queue and `size_bytes` are derived data,
//! rebuilt on restore.

use std::collections::{BTreeMap, VecDeque};

use super::store::{version_size_bytes, Live, Version, REVISION_INITIAL};
use super::KvStore;
use crate::state_machine::{Snapshot, SnapshotError};

const MAGIC: &[u8; 8] = b"RRLKVSN1";
const FORMAT_VERSION: u32 = 1;
const CHECKSUM_BYTES: usize = 4;

impl Snapshot for KvStore {
    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + usize::try_from(self.size_bytes).unwrap_or(0));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(&self.compact_revision.to_le_bytes());
        out.extend_from_slice(&self.history_revisions.to_le_bytes());
        out.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
        for (key, history) in &self.keys {
            put_bytes(&mut out, key);
            put_len(&mut out, history.len());
            for version in history {
                out.extend_from_slice(&version.mod_revision.to_le_bytes());
                match &version.live {
                    None => out.push(0),
                    Some(live) => {
                        out.push(1);
                        out.extend_from_slice(&live.create_revision.to_le_bytes());
                        out.extend_from_slice(&live.version.to_le_bytes());
                        put_bytes(&mut out, &live.value);
                    }
                }
            }
        }
        let checksum = crc32c::crc32c(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        *self = decode(bytes)?;
        Ok(())
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len)
        .unwrap_or_else(|_| panic!("snapshot field of {len} bytes/items exceeds u32"));
    out.extend_from_slice(&len.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, what: impl Into<String>) -> SnapshotError {
        SnapshotError::Corrupt {
            offset: self.offset,
            what: what.into(),
        }
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], SnapshotError> {
        if self.bytes.len() - self.offset < len {
            return Err(self.corrupt(format!(
                "{what}: {len} bytes needed, {} left",
                self.bytes.len() - self.offset
            )));
        }
        let taken = &self.bytes[self.offset..self.offset + len];
        self.offset += len;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], SnapshotError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N, what)?);
        Ok(array)
    }

    fn i64(&mut self, what: &str) -> Result<i64, SnapshotError> {
        self.array(what).map(i64::from_le_bytes)
    }

    fn u32(&mut self, what: &str) -> Result<u32, SnapshotError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u8(&mut self, what: &str) -> Result<u8, SnapshotError> {
        self.array::<1>(what).map(|[byte]| byte)
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], SnapshotError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }
}

fn decode(bytes: &[u8]) -> Result<KvStore, SnapshotError> {
    if bytes.len() < MAGIC.len() + 4 + CHECKSUM_BYTES {
        return Err(SnapshotError::Corrupt {
            offset: 0,
            what: format!("{} bytes is too short for a snapshot", bytes.len()),
        });
    }
    let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    let mut stored = [0u8; CHECKSUM_BYTES];
    stored.copy_from_slice(checksum);
    let computed = crc32c::crc32c(body);
    if u32::from_le_bytes(stored) != computed {
        return Err(SnapshotError::Corrupt {
            offset: body.len(),
            what: format!(
                "checksum {:#010x} does not match the content's {computed:#010x}",
                u32::from_le_bytes(stored)
            ),
        });
    }
    let mut reader = Reader {
        bytes: body,
        offset: 0,
    };
    if reader.take(MAGIC.len(), "magic")? != MAGIC {
        return Err(SnapshotError::Corrupt {
            offset: 0,
            what: "not a key-value store snapshot (bad magic)".to_owned(),
        });
    }
    let format = reader.u32("format version")?;
    if format != FORMAT_VERSION {
        return Err(reader.corrupt(format!("unknown format version {format}")));
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
    let key_count = u64::from_le_bytes(reader.array("key count")?);
    let mut keys: BTreeMap<Vec<u8>, Vec<Version>> = BTreeMap::new();
    let mut size_bytes = 0i64;
    let mut previous_key: Option<&[u8]> = None;
    for _ in 0..key_count {
        let key = reader.bytes("key")?;
        if key.is_empty() || previous_key.is_some_and(|previous| previous >= key) {
            return Err(reader.corrupt("keys must be non-empty and strictly increasing"));
        }
        previous_key = Some(key);
        let count = reader.u32("version count")?;
        if count == 0 {
            return Err(reader.corrupt("a key without versions"));
        }
        let mut history: Vec<Version> = Vec::new();
        for _ in 0..count {
            let mod_revision = reader.i64("mod_revision")?;
            let live = match reader.u8("live flag")? {
                0 => None,
                1 => {
                    let create_revision = reader.i64("create_revision")?;
                    let version = reader.i64("version")?;
                    let value = reader.bytes("value")?.to_vec();
                    if version < 1 || create_revision < 1 || create_revision > mod_revision {
                        return Err(reader.corrupt(format!(
                            "version {version} created at {create_revision}, modified at {mod_revision}"
                        )));
                    }
                    Some(Live {
                        create_revision,
                        version,
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
            size_bytes += version_size_bytes(key, &version);
            history.push(version);
        }
        keys.insert(key.to_vec(), history);
    }
    if reader.remaining() != 0 {
        return Err(reader.corrupt(format!("{} bytes after the last key", reader.remaining())));
    }
    // The compaction queue: every version above the compaction point, in revision order (order
    // within one revision does not matter to compaction).
    let mut changes: Vec<(i64, Vec<u8>)> = keys
        .iter()
        .flat_map(|(key, history)| {
            history
                .iter()
                .filter(|version| version.mod_revision > compact_revision)
                .map(move |version| (version.mod_revision, key.clone()))
        })
        .collect();
    changes.sort();
    Ok(KvStore {
        revision,
        compact_revision,
        history_revisions,
        keys,
        changes: VecDeque::from(changes),
        size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdpb::etcdserverpb::{
        request_op::Request, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    };

    fn sample() -> KvStore {
        let mut store = KvStore::with_history_revisions(4);
        for (i, key) in ["a", "b", "c", "a", "b", "d", "a"].iter().enumerate() {
            let op = RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: vec![i as u8; i],
                    ..PutRequest::default()
                })),
            };
            store.apply(&op).expect("put");
        }
        let delete = RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: b"c".to_vec(),
                range_end: Vec::new(),
                prev_kv: false,
            })),
        };
        store.apply(&delete).expect("delete");
        store
    }

    #[test]
    fn a_restored_store_reads_and_writes_like_the_original() {
        let original = sample();
        let bytes = original.snapshot();
        let mut restored = KvStore::new();
        restored.restore(&bytes).expect("restore");
        restored.check_invariants();
        assert_eq!(restored.snapshot(), bytes);
        assert_eq!(restored.revision(), original.revision());
        assert_eq!(restored.size_bytes(), original.size_bytes());
        for revision in original.compact_revision()..=original.revision() {
            let request = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision,
                ..RangeRequest::default()
            };
            assert_eq!(
                restored.range(&request),
                original.range(&request),
                "at {revision}"
            );
        }
        // Both go on identically, automatic compaction included.
        let mut original = original;
        for i in 0..6u8 {
            let op = RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: vec![b'a' + i % 3],
                    value: vec![i],
                    ..PutRequest::default()
                })),
            };
            assert_eq!(restored.apply(&op), original.apply(&op));
            restored.check_invariants();
        }
        assert_eq!(restored.snapshot(), original.snapshot());
    }

    #[test]
    fn every_damaged_byte_is_refused_and_leaves_the_store_alone() {
        let bytes = sample().snapshot();
        let mut store = sample();
        let before = store.clone();
        for offset in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[offset] ^= 0x40;
            let error = store
                .restore(&damaged)
                .expect_err("a flipped bit must be detected");
            assert!(matches!(error, SnapshotError::Corrupt { .. }), "{error}");
            assert_eq!(
                store, before,
                "a failed restore changed the store (offset {offset})"
            );
        }
        for len in 0..bytes.len() {
            assert!(
                store.restore(&bytes[..len]).is_err(),
                "truncated to {len} bytes"
            );
        }
    }

    #[test]
    fn lengths_are_checked_before_allocating() {
        // A well-checksummed snapshot claiming a 4 GiB key: refused by length, not by allocation.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        for field in [1i64, -1, 0] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let checksum = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        let error = KvStore::new().restore(&bytes).expect_err("bogus length");
        assert!(error.to_string().contains("key"), "{error}");
    }
}
