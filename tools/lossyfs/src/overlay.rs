//! One file's volatile state: the bytes written since its last `fsync` and its size, kept over
//! the durable bytes of its backing file.
//!
//! Owns: the dirty extents of one file (non-overlapping, keyed by offset), the file's live size,
//! and what the backing file holds durably (its size, and from where on a not yet synced
//! truncation hides it).
//!
//! Invariants:
//! - Dirty extents never overlap, are never empty, and never reach past the live size.
//! - Backing bytes are visible only below [`FileOverlay::backing_visible_end`]; every backing
//!   byte at or past the live size is hidden (a shrink below the durable size records the
//!   cut in `zero_from`), so growing the file again reads zeros, as on a real file system.
//! - Nothing here touches the backing file except [`FileOverlay::flush`], which is the only
//!   way volatile state becomes durable.

use std::collections::BTreeMap;
use std::io;

/// What a [`FileOverlay`] needs from the file that holds its durable bytes (a real file in
/// the daemon; a `Vec<u8>` in the unit tests).
pub trait Backing {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `data` at `offset`.
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Sets the file's size.
    fn set_len(&self, len_bytes: u64) -> io::Result<()>;
    /// Makes the file's data and size durable.
    fn sync(&self) -> io::Result<()>;
}

impl Backing for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }
    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len_bytes)
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_all()
    }
}

/// The volatile state of one regular file (see the module docs).
#[derive(Debug, Default)]
pub struct FileOverlay {
    /// The size readers see now.
    size_bytes: u64,
    /// The backing file's size (what survives a power loss).
    durable_size_bytes: u64,
    /// A shrink not yet synced: backing bytes at or past this offset read as zeros.
    zero_from: Option<u64>,
    /// Written but not yet synced: offset -> bytes.
    dirty: BTreeMap<u64, Vec<u8>>,
}

impl FileOverlay {
    /// A clean file whose backing file holds `durable_size_bytes` bytes.
    pub fn new(durable_size_bytes: u64) -> FileOverlay {
        FileOverlay {
            size_bytes: durable_size_bytes,
            durable_size_bytes,
            zero_from: None,
            dirty: BTreeMap::new(),
        }
    }

    /// The size readers see.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Bytes held in memory, not yet durable.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty.values().map(|v| v.len() as u64).sum()
    }

    /// True when a power loss would lose nothing of this file's data or size.
    pub fn is_clean(&self) -> bool {
        self.dirty.is_empty()
            && self.zero_from.is_none()
            && self.size_bytes == self.durable_size_bytes
    }

    /// Backing bytes at or past this offset are not part of the live file.
    fn backing_visible_end(&self) -> u64 {
        self.durable_size_bytes
            .min(self.zero_from.unwrap_or(u64::MAX))
            .min(self.size_bytes)
    }

    /// Removes `[from, to)` from the dirty extents, keeping the parts of extents outside it.
    fn cut(&mut self, from: u64, to: u64) {
        if from >= to {
            return;
        }
        let mut hit: Vec<u64> = Vec::new();
        if let Some((&start, bytes)) = self.dirty.range(..from).next_back() {
            if start + bytes.len() as u64 > from {
                hit.push(start);
            }
        }
        hit.extend(self.dirty.range(from..to).map(|(&start, _)| start));
        for start in hit {
            let Some(bytes) = self.dirty.remove(&start) else {
                continue;
            };
            let end = start + bytes.len() as u64;
            if start < from {
                self.dirty
                    .insert(start, bytes[..(from - start) as usize].to_vec());
            }
            if end > to {
                self.dirty
                    .insert(to, bytes[(to - start) as usize..].to_vec());
            }
        }
    }

    /// Records a write of `data` at `offset` (volatile until [`FileOverlay::flush`]).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        self.cut(offset, end);
        self.dirty.insert(offset, data.to_vec());
        if end > self.size_bytes {
            self.size_bytes = end;
        }
    }

    /// Changes the live size (`ftruncate`, or `fallocate` mode 0 growing the file).
    pub fn set_size(&mut self, size_bytes: u64) {
        if size_bytes < self.size_bytes {
            self.cut(size_bytes, self.size_bytes);
            if size_bytes < self.durable_size_bytes {
                // The backing bytes past the cut must read as zeros if the file grows again.
                let z = self.zero_from.map_or(size_bytes, |z| z.min(size_bytes));
                self.zero_from = Some(z);
            }
        }
        self.size_bytes = size_bytes;
    }

    /// The live bytes `[offset, offset + len)`, cut at the live size: backing bytes with the
    /// dirty extents laid over them, zeros where neither has any.
    pub fn read(&self, backing: &dyn Backing, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if offset >= self.size_bytes {
            return Ok(Vec::new());
        }
        let end = self.size_bytes.min(offset + len as u64);
        let mut buf = vec![0u8; (end - offset) as usize];
        let visible_end = self.backing_visible_end().min(end);
        let mut at = offset;
        while at < visible_end {
            let from = (at - offset) as usize;
            let to = (visible_end - offset) as usize;
            let n = backing.read_at(&mut buf[from..to], at)?;
            if n == 0 {
                // The backing file is shorter than we believed: the rest reads as zeros.
                break;
            }
            at += n as u64;
        }
        let mut lay = |start: u64, bytes: &[u8]| {
            let s = start.max(offset);
            let e = (start + bytes.len() as u64).min(end);
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&bytes[(s - start) as usize..(e - start) as usize]);
            }
        };
        if let Some((&start, bytes)) = self.dirty.range(..offset).next_back() {
            lay(start, bytes);
        }
        for (&start, bytes) in self.dirty.range(offset..end) {
            lay(start, bytes);
        }
        Ok(buf)
    }

    /// Makes the live state durable in `backing` (an `fsync`): the pending shrink, then every
    /// dirty extent, then the live size, then a sync of the backing file. On error the volatile
    /// state is kept (the caller reports the error; nothing claims durability).
    pub fn flush(&mut self, backing: &dyn Backing) -> io::Result<()> {
        if let Some(z) = self.zero_from {
            backing.set_len(z)?;
        }
        for (&start, bytes) in &self.dirty {
            backing.write_all_at(bytes, start)?;
        }
        backing.set_len(self.size_bytes)?;
        backing.sync()?;
        self.dirty.clear();
        self.zero_from = None;
        self.durable_size_bytes = self.size_bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A backing file in memory that counts syncs.
    #[derive(Default)]
    struct MemBacking {
        bytes: RefCell<Vec<u8>>,
        syncs: RefCell<u32>,
    }

    impl Backing for MemBacking {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let b = self.bytes.borrow();
            let off = offset as usize;
            if off >= b.len() {
                return Ok(0);
            }
            let n = buf.len().min(b.len() - off);
            buf[..n].copy_from_slice(&b[off..off + n]);
            Ok(n)
        }
        fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
            let mut b = self.bytes.borrow_mut();
            let end = offset as usize + data.len();
            if b.len() < end {
                b.resize(end, 0);
            }
            b[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
        fn set_len(&self, len_bytes: u64) -> io::Result<()> {
            self.bytes.borrow_mut().resize(len_bytes as usize, 0);
            Ok(())
        }
        fn sync(&self) -> io::Result<()> {
            *self.syncs.borrow_mut() += 1;
            Ok(())
        }
    }

    fn backing(bytes: &[u8]) -> MemBacking {
        MemBacking {
            bytes: RefCell::new(bytes.to_vec()),
            syncs: RefCell::new(0),
        }
    }

    #[test]
    fn unsynced_writes_are_read_back_but_do_not_reach_the_backing_file() {
        let b = backing(b"aaaaaaaaaa");
        let mut f = FileOverlay::new(10);
        f.write(2, b"XYZ");
        f.write(8, b"1234");
        assert_eq!(f.read(&b, 0, 100).unwrap(), b"aaXYZaaa1234");
        assert_eq!(f.size_bytes(), 12);
        assert_eq!(&*b.bytes.borrow(), b"aaaaaaaaaa");
        assert!(!f.is_clean());
    }

    #[test]
    fn overlapping_writes_keep_the_newest_bytes() {
        let b = backing(b"");
        let mut f = FileOverlay::new(0);
        f.write(0, b"0123456789");
        f.write(3, b"ab");
        f.write(8, b"cdef");
        f.write(1, b"Z");
        assert_eq!(f.read(&b, 0, 100).unwrap(), b"0Z2ab567cdef");
        assert_eq!(f.read(&b, 4, 5).unwrap(), b"b567c");
        // Four extents at most: the overlaps were cut, not stacked.
        assert!(f.dirty.len() <= 6, "{:?}", f.dirty.keys());
        assert_eq!(f.dirty_bytes(), 12);
    }

    #[test]
    fn flush_makes_the_live_bytes_durable_and_syncs_once() {
        let b = backing(b"aaaaaaaaaa");
        let mut f = FileOverlay::new(10);
        f.write(8, b"1234");
        f.flush(&b).unwrap();
        assert_eq!(&*b.bytes.borrow(), b"aaaaaaaa1234");
        assert_eq!(*b.syncs.borrow(), 1);
        assert!(f.is_clean());
    }

    #[test]
    fn a_shrink_then_a_grow_reads_zeros_where_the_old_bytes_were() {
        let b = backing(b"abcdefgh");
        let mut f = FileOverlay::new(8);
        f.set_size(3);
        assert_eq!(f.read(&b, 0, 100).unwrap(), b"abc");
        f.set_size(6);
        assert_eq!(f.read(&b, 0, 100).unwrap(), b"abc\0\0\0");
        // Not synced: the backing file is untouched.
        assert_eq!(&*b.bytes.borrow(), b"abcdefgh");
        f.flush(&b).unwrap();
        assert_eq!(&*b.bytes.borrow(), b"abc\0\0\0");
        assert!(f.is_clean());
    }

    #[test]
    fn a_shrink_drops_dirty_bytes_past_the_new_size() {
        let b = backing(b"");
        let mut f = FileOverlay::new(0);
        f.write(0, b"0123456789");
        f.set_size(4);
        f.set_size(10);
        assert_eq!(f.read(&b, 0, 100).unwrap(), b"0123\0\0\0\0\0\0");
    }

    #[test]
    fn growing_without_writing_reads_zeros_and_survives_only_a_flush() {
        let b = backing(b"ab");
        let mut f = FileOverlay::new(2);
        f.set_size(5);
        assert_eq!(f.read(&b, 0, 100).unwrap(), b"ab\0\0\0");
        assert!(!f.is_clean());
        f.flush(&b).unwrap();
        assert_eq!(b.bytes.borrow().len(), 5);
    }
}
