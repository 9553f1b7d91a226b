//! The production file: durable writes through io_uring, reads through a shared mmap.
//!
//! This module holds the two places where a durable write is submitted, and `check_linked`
//! judges their completions:
//! - [`LogFile::write_durable`] (the rare writes of the log: headers, seals, truncations,
//!   recovery; and tools) blocks the calling thread (`io_uring_enter` with a wait) on
//!   `push_linked`'s submission: the batch's writes and one `IORING_OP_FSYNC` with
//!   `IORING_FSYNC_DATASYNC`, each write carrying `IOSQE_IO_LINK`. The link is what orders them:
//!   without it the kernel may start the fdatasync before the writes completed, and the sync
//!   would not cover them. With it, a failed or short write breaks the chain and the kernel
//!   completes the linked fsync with `-ECANCELED` instead of running it.
//! - [`LogFile::start_durable_write`] (every append of the append engine,
//!   [`crate::storage::engine`]) returns a future for `push_dsync_write`'s submission: ONE write
//!   with `RWF_DSYNC`, which the kernel completes only after the written range is as durable as
//!   `fdatasync` makes it (the same `->fsync(datasync)` call, `generic_write_sync`). One request
//!   instead of a two-request chain, because every request io-wq completes wakes the submitting
//!   thread: the chain cost the append engine's thread two wake-ups per group and a hop from
//!   io-wq to that thread and back between the write and the sync. The ring's fd is registered
//!   with the current tokio runtime's reactor (`AsyncFd`), so the thread that submitted the write
//!   goes on and is woken by the completion. Outside a runtime it falls back to the blocking
//!   linked chain.
//!
//! Either way a write is never reported durable when it did not happen, or when its sync did not.
//!
//! Any failure is returned to the caller, who must treat it as fatal (no retry: after a failed
//! fdatasync the kernel may already have dropped the dirty pages — the 2018 "fsyncgate").
//!
//! Snapshot files, whose size is not known up front and which are written and read once off the
//! node's event loop, do not go through io_uring or a mapping: [`StdAppendFile`] writes them
//! with plain `write(2)` and `fdatasync(2)`, [`StdReadFile`] reads them with `pread(2)`.
//!
//! Invariants: the mapping covers exactly the file's length, which never changes through this
//! handle (touching a page wholly past EOF raises SIGBUS); the ring is created lazily, so sealed
//! segments that are only read cost no ring; a buffer handed to the kernel is never freed or
//! reused before both completions of its submission were reaped (a future dropped mid-write
//! waits for them in its `Drop`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use io_uring::{opcode, squeue, types, IoUring};
use memmap2::{Mmap, MmapOptions};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::storage::file::{AppendFile, DurableWrite, LogFile, Prepare, ReadFile, Vfs, WriteAt};

/// Submission queue size of a file's ring; a batch with more writes is split into several linked
/// submissions, only the last of which carries the fdatasync.
const RING_ENTRIES: u32 = 16;

/// Idle rings kept for reuse ([`spare_ring`]), at most [`SPARE_RINGS_MAX`].
static SPARE_RINGS: Mutex<Vec<IoUring>> = Mutex::new(Vec::new());

/// At most this many idle rings are kept: a rotation releases two (the sealed segment's, the
/// next file's header writer's) and the new segment's first append takes one back.
const SPARE_RINGS_MAX: usize = 4;

/// A ring for a file's write side: an idle one a released file left ([`WriteSide::retire`]),
/// or a new one. A ring is not bound to a file (each request names its descriptor); reusing one
/// saves an `io_uring_setup` and a teardown (its mappings, its context) per file, which a
/// rotation did twice on the append path.
fn spare_ring() -> io::Result<IoUring> {
    let spare = SPARE_RINGS.lock().unwrap_or_else(|e| e.into_inner()).pop();
    match spare {
        Some(ring) => Ok(ring),
        None => IoUring::new(RING_ENTRIES),
    }
}

/// Keeps `ring` among `spares` if it is idle (nothing submitted, nothing left to reap: a ring
/// with a completion nobody reaped would hand it to the next file's write as its own) and there
/// is room; otherwise drops it.
fn keep_spare(spares: &mut Vec<IoUring>, mut ring: IoUring) {
    if ring.submission().is_empty()
        && ring.completion().is_empty()
        && spares.len() < SPARE_RINGS_MAX
    {
        spares.push(ring);
    }
}

/// Largest single write submitted (an SQE's length is a u32).
const WRITE_BYTES_MAX: usize = 1 << 30;

/// A segment (or state) file opened for io_uring writes and mmap reads.
///
/// Only the mapping is kept for reading; the descriptor and the ring that writes need are opened
/// on the first write and dropped by [`LogFile::release_io`] (the log calls it when it seals a
/// segment, the append engine when it stops), so a log of many sealed segments holds no
/// descriptor per segment.
pub struct UringFile {
    path: PathBuf,
    len_bytes: u64,
    map: Option<Mmap>,
    /// The write side, created on the first write; the mutex also serialises writers. An async
    /// write takes it out for its duration and puts it back when done.
    io: Mutex<Option<WriteSide>>,
}

/// A ring, either waited on by blocking in `io_uring_enter`, or registered with the reactor of
/// the tokio runtime that made the first async write (it can still be waited on by blocking).
enum Ring {
    Plain(IoUring),
    Reactor(AsyncFd<IoUring>),
}

impl Ring {
    fn get_mut(&mut self) -> &mut IoUring {
        match self {
            Ring::Plain(r) => r,
            Ring::Reactor(r) => r.get_mut(),
        }
    }
}

struct WriteSide {
    file: File,
    ring: Ring,
}

impl WriteSide {
    fn open(path: &Path) -> io::Result<WriteSide> {
        Ok(WriteSide {
            file: OpenOptions::new().read(true).write(true).open(path)?,
            ring: Ring::Plain(spare_ring()?),
        })
    }

    /// Gives the ring back to the spares, if it is idle (nothing submitted, nothing left to
    /// reap); the file is closed.
    fn retire(self) {
        let ring = match self.ring {
            Ring::Plain(ring) => ring,
            // Deregisters it from the reactor it was registered with.
            Ring::Reactor(registered) => registered.into_inner(),
        };
        keep_spare(
            &mut SPARE_RINGS.lock().unwrap_or_else(|e| e.into_inner()),
            ring,
        );
    }

    /// The same side with its ring registered with the current runtime's reactor (a no-op if it
    /// already is). On failure the side comes back unregistered with the error. (It used to
    /// swap a freshly created placeholder ring in while it registered: one `io_uring_setup` and
    /// one teardown more per file, four per rotation in all.)
    fn registered(self) -> Result<WriteSide, Box<(WriteSide, io::Error)>> {
        let WriteSide { file, ring } = self;
        match ring {
            Ring::Reactor(_) => Ok(WriteSide { file, ring }),
            // SAFETY: the IoUring owns its fd and keeps it open until it is dropped, which
            // happens only when the AsyncFd (which deregisters first) is dropped.
            Ring::Plain(ring) => {
                match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
                    Ok(registered) => Ok(WriteSide {
                        file,
                        ring: Ring::Reactor(registered),
                    }),
                    Err(e) => {
                        let (ring, e) = e.into_parts();
                        Err(Box::new((
                            WriteSide {
                                file,
                                ring: Ring::Plain(ring),
                            },
                            e,
                        )))
                    }
                }
            }
        }
    }
}

impl UringFile {
    /// Opens an existing file and maps all of it (checking it can be opened for writing).
    pub fn open(path: &Path) -> io::Result<UringFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len_bytes = file.metadata()?.len();
        let map = if len_bytes == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only and covers exactly the file's current length. The
            // log directory belongs to this process (docs/FORMAT.md, "Assumptions"): nobody else
            // truncates or rewrites a segment while it is open, and this handle never changes the
            // file's length, so the mapped pages stay backed by the file.
            Some(unsafe { MmapOptions::new().len(len_bytes as usize).map(&file)? })
        };
        Ok(UringFile {
            path: path.to_path_buf(),
            len_bytes,
            map,
            io: Mutex::new(None),
        })
    }

    fn check_bounds(&self, offset: u64, len: usize) {
        let end = offset + len as u64;
        assert!(
            end <= self.len_bytes,
            "write [{offset}, {end}) past the end ({}) of {}: files never grow here",
            self.len_bytes,
            self.path.display()
        );
    }

    /// The write side, opened if needed, taken out of its slot (put it back with `put_back`).
    fn take_side(&self) -> io::Result<WriteSide> {
        let taken = self.io.lock().unwrap_or_else(|e| e.into_inner()).take();
        match taken {
            Some(side) => Ok(side),
            None => WriteSide::open(&self.path),
        }
    }

    fn put_back(&self, side: WriteSide) {
        *self.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(side);
    }

    /// The async write of [`LogFile::start_durable_write`].
    async fn write_async(
        self: Arc<Self>,
        offset: u64,
        bytes: Vec<u8>,
    ) -> (io::Result<()>, Vec<u8>) {
        self.check_bounds(offset, bytes.len());
        let mut side = match self.take_side() {
            Ok(side) => side,
            Err(e) => return (Err(error_at(&self.path, "open for writing", 0, e)), bytes),
        };
        if tokio::runtime::Handle::try_current().is_err() {
            // No reactor to wait in: wait by blocking (tools, tests without a runtime).
            let writes = [WriteAt {
                offset,
                bytes: &bytes,
            }];
            let r = submit_linked(
                side.ring.get_mut(),
                &self.path,
                side.file.as_raw_fd(),
                &writes,
                true,
            );
            if r.is_ok() {
                self.put_back(side);
            }
            return (r, bytes);
        }
        let side = match side.registered() {
            Ok(side) => side,
            Err(failed) => {
                let (side, e) = *failed;
                self.put_back(side);
                return (
                    Err(error_at(&self.path, "register the io_uring", 0, e)),
                    bytes,
                );
            }
        };
        let mut flight = InFlight {
            side: Some(side),
            buffer: bytes,
            in_flight: 0,
        };
        let result = flight.run(&self.path, offset).await;
        let (side, buffer) = flight.finish();
        if result.is_ok() {
            if let Some(side) = side {
                self.put_back(side);
            }
        }
        // After an error the side is dropped: a ring that saw an error may hold unsubmitted SQEs
        // (the caller is poisoned anyway; this only keeps the handle sane).
        (result, buffer)
    }
}

/// One async durable write in the kernel's hands: owns the buffer and the ring until its
/// completion was reaped. Dropped early (the waiting task was cancelled), it waits for it by
/// blocking, so the kernel never writes from freed memory.
struct InFlight {
    side: Option<WriteSide>,
    buffer: Vec<u8>,
    in_flight: usize,
}

impl InFlight {
    async fn run(&mut self, path: &Path, offset: u64) -> io::Result<()> {
        let side = self.side.as_mut().expect("the side is held until finish");
        let fd = side.file.as_raw_fd();
        let Ring::Reactor(ring) = &mut side.ring else {
            unreachable!("registered before the write");
        };
        let write = WriteAt {
            offset,
            bytes: &self.buffer,
        };
        // One `RWF_DSYNC` write, not a write linked to an fsync (see `push_dsync_write`): each
        // request io-wq completes wakes this thread to run the completion's task work, so a
        // two-request chain woke it twice per group and handed the chain from io-wq to this
        // thread and back in between; one request is one hop and one wake-up.
        let expects = [push_dsync_write(ring.get_mut(), fd, &write)?];
        let want = expects.len();
        self.in_flight = want;
        // etcd_disk_wal_fsync_duration_seconds: submission to the completion of the chain. The
        // write and its fdatasync are one linked chain, so this is both (the write only copies
        // into the page cache; the fdatasync is what a slow disk makes long).
        let submitted = std::time::Instant::now();
        if let Err(e) = ring.get_ref().submit() {
            if !ring.get_mut().submission().is_empty() {
                // The kernel took nothing; forget the SQEs (no buffer is referenced).
                ring.get_mut().submission().sync();
                self.in_flight = 0;
            }
            return Err(error_at(path, "io_uring_enter", 0, e));
        }
        crate::timeline::mark("write_submitted", offset);
        let mut results: Vec<Option<i32>> = vec![None; want];
        while self.in_flight > 0 {
            let mut ready = ring
                .readable_mut()
                .await
                .map_err(|e| error_at(path, "poll the io_uring", 0, e))?;
            let reaped = reap(ready.get_inner_mut(), &mut results);
            self.in_flight -= reaped;
            if reaped == 0 {
                ready.clear_ready();
            }
        }
        crate::timeline::mark("write_reaped", offset);
        check_linked(path, &expects, &results)?;
        crate::metrics::observe_wal_fsync(submitted.elapsed());
        Ok(())
    }

    fn finish(mut self) -> (Option<WriteSide>, Vec<u8>) {
        (self.side.take(), std::mem::take(&mut self.buffer))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(side) = self.side.as_mut() else {
            return;
        };
        let ring = side.ring.get_mut();
        while self.in_flight > 0 {
            match ring.submit_and_wait(self.in_flight) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
            let reaped = ring.completion().count();
            self.in_flight = self.in_flight.saturating_sub(reaped);
        }
    }
}

/// One SQE of a submission and what its completion must say.
#[derive(Clone, Copy)]
struct Expect {
    /// Bytes the write must report; `None` for the fsync.
    write_len: Option<usize>,
    offset: u64,
}

fn error_at(path: &Path, what: &str, offset: u64, err: io::Error) -> io::Error {
    io::Error::new(
        err.kind(),
        format!("{what} at offset {offset} of {}: {err}", path.display()),
    )
}

/// Pushes `writes` (and the fdatasync if `with_sync`) as one linked chain: every write links to
/// the next SQE, the last one to the fsync. The user data of SQE `i` is `i`. Returns what each
/// completion must say.
///
/// # Safety contract (kept by the caller)
/// The buffers stay alive and unmoved until every completion of this chain was reaped.
fn push_linked(
    ring: &mut IoUring,
    fd: i32,
    writes: &[WriteAt<'_>],
    with_sync: bool,
) -> io::Result<Vec<Expect>> {
    let mut expects = Vec::with_capacity(writes.len() + 1);
    let mut sq = ring.submission();
    for (i, w) in writes.iter().enumerate() {
        assert!(
            w.bytes.len() <= WRITE_BYTES_MAX,
            "write of {} bytes exceeds WRITE_BYTES_MAX {WRITE_BYTES_MAX}",
            w.bytes.len()
        );
        let last = i + 1 == writes.len();
        let mut flags = squeue::Flags::empty();
        if !last || with_sync {
            flags |= squeue::Flags::IO_LINK;
        }
        let sqe = opcode::Write::new(types::Fd(fd), w.bytes.as_ptr(), w.bytes.len() as u32)
            .offset(w.offset)
            .build()
            .flags(flags)
            .user_data(expects.len() as u64);
        // SAFETY: the caller keeps the buffer alive and unmoved until this SQE's completion was
        // reaped (see the function's contract).
        unsafe { sq.push(&sqe) }.map_err(|_| io::Error::other("io_uring submission queue full"))?;
        expects.push(Expect {
            write_len: Some(w.bytes.len()),
            offset: w.offset,
        });
    }
    if with_sync {
        let sqe = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(expects.len() as u64);
        // SAFETY: fsync references no user memory.
        unsafe { sq.push(&sqe) }.map_err(|_| io::Error::other("io_uring submission queue full"))?;
        expects.push(Expect {
            write_len: None,
            offset: 0,
        });
    }
    Ok(expects)
}

/// Pushes one write with `RWF_DSYNC` and `IOSQE_ASYNC`: the kernel (io-wq, as `ASYNC` hands it
/// there at once instead of copying into the page cache inside `io_uring_enter` on this thread)
/// writes the bytes and then makes that range durable as `fdatasync` would
/// (`generic_write_sync`: the same `->fsync(datasync)` call, limited to the written range), and
/// completes only after both. A failed or short write, or a failed sync, is the completion's
/// result; nothing reports it durable unless both happened. The user data is 0.
///
/// # Safety contract (kept by the caller)
/// The buffer stays alive and unmoved until the completion was reaped.
fn push_dsync_write(ring: &mut IoUring, fd: i32, write: &WriteAt<'_>) -> io::Result<Expect> {
    assert!(
        write.bytes.len() <= WRITE_BYTES_MAX,
        "write of {} bytes exceeds WRITE_BYTES_MAX {WRITE_BYTES_MAX}",
        write.bytes.len()
    );
    let sqe = opcode::Write::new(
        types::Fd(fd),
        write.bytes.as_ptr(),
        write.bytes.len() as u32,
    )
    .offset(write.offset)
    .rw_flags(libc::RWF_DSYNC)
    .build()
    .flags(squeue::Flags::ASYNC)
    .user_data(0);
    // SAFETY: the caller keeps the buffer alive and unmoved until this SQE's completion was
    // reaped (see the function's contract).
    unsafe { ring.submission().push(&sqe) }
        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
    Ok(Expect {
        write_len: Some(write.bytes.len()),
        offset: write.offset,
    })
}

/// Reaps the ring's completions into `results` (by user data); returns how many were new.
fn reap(ring: &mut IoUring, results: &mut [Option<i32>]) -> usize {
    let mut new = 0;
    for cqe in ring.completion() {
        let i = cqe.user_data() as usize;
        assert!(
            i < results.len(),
            "unexpected io_uring completion {i} (want {})",
            results.len()
        );
        if results[i].is_none() {
            new += 1;
        }
        results[i] = Some(cqe.result());
    }
    new
}

/// Judges the completions of one chain: the first failure in submission order is the error (a
/// failed write is the cause; the fsync's `-ECANCELED` after it is only the link's consequence,
/// said in the message).
fn check_linked(path: &Path, expects: &[Expect], results: &[Option<i32>]) -> io::Result<()> {
    let with_sync = expects.last().is_some_and(|e| e.write_len.is_none());
    let sync_cancelled = with_sync && results.last() == Some(&Some(-libc::ECANCELED));
    let what = if sync_cancelled {
        "write (the linked fdatasync was cancelled)"
    } else {
        "write"
    };
    for (e, r) in expects.iter().zip(results) {
        let r = r.unwrap_or(-libc::EIO);
        match e.write_len {
            Some(len) => {
                if r < 0 {
                    return Err(error_at(
                        path,
                        what,
                        e.offset,
                        io::Error::from_raw_os_error(-r),
                    ));
                }
                if r as usize != len {
                    return Err(error_at(
                        path,
                        "short write",
                        e.offset,
                        io::Error::new(
                            io::ErrorKind::WriteZero,
                            format!("wrote {r} of {len} bytes"),
                        ),
                    ));
                }
            }
            None => {
                if r < 0 {
                    return Err(error_at(
                        path,
                        "fdatasync",
                        0,
                        io::Error::from_raw_os_error(-r),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Pushes `chunk` (and the fsync if `with_sync`) as one linked submission, waits for every
/// completion by blocking, and checks them. On return no SQE of this submission is still in
/// flight, so the borrowed buffers may be released.
fn submit_linked(
    ring: &mut IoUring,
    path: &Path,
    fd: i32,
    chunk: &[WriteAt<'_>],
    with_sync: bool,
) -> io::Result<()> {
    let expects = push_linked(ring, fd, chunk, with_sync)?;
    let want = expects.len();
    let mut results: Vec<Option<i32>> = vec![None; want];
    let mut done = 0;
    while done < want {
        match ring.submit_and_wait(want - done) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if !ring.submission().is_empty() {
                    // The kernel took nothing: no buffer is referenced, so the error can be
                    // returned. The caller drops this ring, and with it the unsubmitted SQEs.
                    return Err(error_at(path, "io_uring_enter", 0, e));
                }
                // The SQEs are in the kernel's hands and reference our buffers: we must see their
                // completions before returning, whatever the wait says.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        done += reap(ring, &mut results);
    }
    check_linked(path, &expects, &results)
}

impl Drop for UringFile {
    /// A dropped file's ring goes to the spares like a released one.
    fn drop(&mut self) {
        let side = self.io.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(side) = side {
            side.retire();
        }
    }
}

impl LogFile for UringFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn bytes(&self) -> &[u8] {
        match &self.map {
            Some(m) => m,
            None => &[],
        }
    }

    fn release_io(&self) {
        let side = self.io.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(side) = side {
            side.retire();
        }
    }

    fn write_durable(&self, writes: &[WriteAt<'_>]) -> io::Result<()> {
        for w in writes {
            self.check_bounds(w.offset, w.bytes.len());
        }
        let mut side = self.take_side()?;
        let fd = side.file.as_raw_fd();
        let ring = side.ring.get_mut();
        let per_submission = (RING_ENTRIES - 1) as usize;
        let result = if writes.is_empty() {
            submit_linked(ring, &self.path, fd, &[], true)
        } else {
            let chunks: Vec<&[WriteAt<'_>]> = writes.chunks(per_submission).collect();
            (|| {
                for (i, chunk) in chunks.iter().enumerate() {
                    // Earlier chunks complete before the last one (with the fsync) is submitted,
                    // so the fsync still follows every write.
                    submit_linked(ring, &self.path, fd, chunk, i + 1 == chunks.len())?;
                }
                Ok(())
            })()
        };
        if result.is_ok() {
            // A ring that saw an error may hold unsubmitted SQEs: it is dropped instead (the log
            // is poisoned anyway, this only keeps the handle sane).
            self.put_back(side);
        }
        result
    }

    fn start_durable_write(self: Arc<Self>, offset: u64, bytes: Vec<u8>) -> DurableWrite {
        Box::pin(self.write_async(offset, bytes))
    }
}

/// The production [`Vfs`]: std for directory operations (each followed by a directory fsync),
/// [`UringFile`] for segment files, [`StdAppendFile`] / [`StdReadFile`] for snapshot files.
#[derive(Clone, Copy, Debug, Default)]
pub struct UringVfs;

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Chunk of the background zero-fill's writeback and of [`read_into_cache`].
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// Size of one buffered write of the zero-fill: the page-cache folios it creates are this large
/// (see [`zero_fill`]).
const ZERO_WRITE_BYTES: usize = 64 << 10;

/// The zero-fill waits for its writeback every this many bytes (the most it leaves dirty).
const ZERO_WINDOW_BYTES: u64 = 8 << 20;

/// The most bytes per second a paced zero-fill ([`Prepare::ZeroedPaced`], the background
/// preparation of the next segment) writes: a 64 MiB segment in about 1 s, a few times less
/// than this disk's buffered write rate (340-560 MB/s, FACTS.md), so that appends keep most of
/// the disk. The log falls back to `fallocate` when segments fill faster than 1.5 fills take
/// (`RaftLog::start_preparing`), so pacing never leaves a rotation without its file.
pub const ZERO_FILL_PACED_BYTES_PER_SEC: u64 = 64 << 20;

/// A paced zero-fill waits for its writeback every this many bytes (instead of
/// [`ZERO_WINDOW_BYTES`]), so that at most this much of it is queued at the disk ahead of an
/// append's write and fdatasync.
const ZERO_WINDOW_PACED_BYTES: u64 = 1 << 20;

/// Writes `len_bytes` zeros into the new, empty file `f`; `Ok(false)` if cancelled.
///
/// How: buffered writes of [`ZERO_WRITE_BYTES`], sent to the disk [`ZERO_CHUNK_BYTES`] at a
/// time with `sync_file_range` (and waited for window by window), so the file ends up fully
/// written on disk and fully cached in *clean* pages.
///
/// - Buffered, in 64 KiB writes, because the page-cache folios a write creates keep their size
///   while the pages stay cached, and the appends later go through those folios
///   (`cargo run --release --example prepare_probe`, quoted in `docs/FORMAT.md`,
///   "Preparation"). 512 KiB write + fdatasync cycles into a file zero-filled with 64 KiB or
///   1 MiB buffered writes took 260 / 234 µs (p50); into a file filled with 4 KiB writes, or
///   with `O_DIRECT` and then read back with `readahead(2)`, ~445 µs. 256 B appends were as
///   fast through 64 KiB folios as through single pages (101 vs 100 µs), and a few µs slower
///   through 1 MiB folios (104 µs; ~5% in the log's own single-appender bench), hence 64 KiB.
/// - Written out chunk by chunk rather than left dirty: tens of MiB of dirty zeros in newly
///   allocated blocks would have to be written out by every ext4 (data=ordered) journal commit,
///   including the ones the appends, seals and renames trigger, stalling them for hundreds of
///   ms. At most [`ZERO_WINDOW_BYTES`] are dirty or under writeback at a time.
/// - Cached as a whole: an append that writes part of an uncached page makes the kernel read
///   that block from disk first, inside the append's latency.
///
/// Paced (`paced`): every chunk is waited for ([`ZERO_WINDOW_PACED_BYTES`]), and the thread
/// sleeps as long as it is ahead of [`ZERO_FILL_PACED_BYTES_PER_SEC`].
fn zero_fill(f: &File, len_bytes: u64, paced: bool, cancel: &AtomicBool) -> io::Result<bool> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut writeback = if paced {
        Writeback::new(
            ZERO_CHUNK_BYTES as u64,
            ZERO_WINDOW_PACED_BYTES,
            Some(ZERO_FILL_PACED_BYTES_PER_SEC),
        )
    } else {
        Writeback::new(ZERO_CHUNK_BYTES as u64, ZERO_WINDOW_BYTES, None)
    };
    let mut at = 0u64;
    while at < len_bytes {
        if cancel.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let n = (len_bytes - at).min(ZERO_CHUNK_BYTES as u64);
        for (i, piece) in zeros[..n as usize].chunks(ZERO_WRITE_BYTES).enumerate() {
            f.write_all_at(piece, at + (i * ZERO_WRITE_BYTES) as u64)?;
        }
        at += n;
        writeback.wrote(f, at, at == len_bytes)?;
    }
    Ok(true)
}

/// Sends a file's bytes to the disk while the file is being written, so that they never pile up
/// as tens of MiB of dirty pages for a later fdatasync to wait behind: this file's own, and,
/// through the ext4 journal (data=ordered) and the disk's cache flush, the log's.
///
/// Every `chunk_bytes` written, writeback of the new bytes is started
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, no wait); every `window_bytes`, everything started
/// so far is waited for, so at most about a window is dirty or in flight at a time. Paced
/// (`bytes_per_sec`), the writer also sleeps while it is ahead of that rate since its start.
/// Where `sync_file_range` is not supported, a window is settled with fdatasync instead.
/// Writeback promises nothing about durability: the writer's own fdatasync still does that.
struct Writeback {
    chunk_bytes: u64,
    window_bytes: u64,
    bytes_per_sec: Option<u64>,
    started: std::time::Instant,
    /// Writeback was started for every byte below this offset.
    sent_to: u64,
    /// ... and waited for below this one.
    settled_to: u64,
}

impl Writeback {
    fn new(chunk_bytes: u64, window_bytes: u64, bytes_per_sec: Option<u64>) -> Writeback {
        Writeback {
            chunk_bytes,
            window_bytes,
            bytes_per_sec,
            started: std::time::Instant::now(),
            sent_to: 0,
            settled_to: 0,
        }
    }

    /// Every byte of `f` below `end` is written; `last`: no more will be, settle them all.
    fn wrote(&mut self, f: &File, end: u64, last: bool) -> io::Result<()> {
        if end - self.sent_to < self.chunk_bytes && !(last && end > self.settled_to) {
            return Ok(());
        }
        let settle = last || end - self.settled_to >= self.window_bytes;
        let (from, flags) = if settle {
            (
                self.settled_to,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        } else {
            (self.sent_to, libc::SYNC_FILE_RANGE_WRITE)
        };
        let (Ok(offset), Ok(len)) = (
            libc::off64_t::try_from(from),
            libc::off64_t::try_from(end - from),
        ) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "file offset beyond off64_t",
            ));
        };
        // SAFETY: sync_file_range on a descriptor the caller owns; no user memory is involved.
        let r = unsafe { libc::sync_file_range(f.as_raw_fd(), offset, len, flags) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOSYS) && e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
            if settle {
                f.sync_data()?;
            }
        }
        self.sent_to = end;
        if settle {
            self.settled_to = end;
        }
        if let Some(rate) = self.bytes_per_sec {
            let due = std::time::Duration::from_secs_f64(end as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        Ok(())
    }
}

/// `madvise(MADV_POPULATE_READ)` (Linux 5.14), spelled out because not every libc release
/// names it.
const MADV_POPULATE_READ: libc::c_int = 22;

/// Brings `[0, len_bytes)` of `f` into the page cache (clean pages); `Ok(false)` if cancelled.
///
/// Faults the file in through a temporary mapping with `MADV_POPULATE_READ`, chunk by chunk (no
/// copy to user space), and falls back to `read` where that is refused. Not `readahead(2)`:
/// it fills the cache with single-page folios, and the appends that later go through them were
/// measured here at ~2x the cost of appends through the large folios a fault or a `read`
/// creates (512 KiB write + fdatasync: ~400 vs ~220 µs, `docs/FORMAT.md`, "Preparation").
fn read_into_cache(f: &File, len_bytes: u64, cancel: &AtomicBool) -> io::Result<bool> {
    // SAFETY: a read-only mapping of a file this thread created and owns (it is not yet part of
    // the log, nobody else writes or truncates it); it is dropped before the function returns
    // and no reference into it escapes.
    let map = unsafe { MmapOptions::new().len(len_bytes as usize).map(f) };
    let mut populate = map.is_ok();
    let mut scratch: Vec<u8> = Vec::new();
    let mut at = 0u64;
    while at < len_bytes {
        if cancel.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let n = (len_bytes - at).min(ZERO_CHUNK_BYTES as u64) as usize;
        if let (true, Ok(m)) = (populate, &map) {
            // SAFETY: the range lies inside the mapping; populating reads no user memory.
            let r = unsafe {
                libc::madvise(
                    m.as_ptr().add(at as usize) as *mut libc::c_void,
                    n,
                    MADV_POPULATE_READ,
                )
            };
            populate = r == 0;
        }
        if !populate {
            scratch.resize(ZERO_CHUNK_BYTES, 0);
            f.read_exact_at(&mut scratch[..n], at)?;
        }
        at += n as u64;
    }
    Ok(true)
}

/// Creates `tmp` and makes its `len_bytes` bytes read as zero as `how` says, synced; `Ok(false)`
/// if it saw `cancel`. Leaves whatever it wrote on failure: the caller removes `tmp`.
fn fill_prepared(
    tmp: &Path,
    len_bytes: u64,
    how: Prepare,
    cancel: &AtomicBool,
) -> io::Result<bool> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    match how {
        Prepare::Zeroed | Prepare::ZeroedPaced => {
            // Really write the zeros (not fallocate, not set_len): appends then overwrite
            // blocks that are allocated and written, whose fdatasync is ~1.7x cheaper.
            if !zero_fill(&f, len_bytes, how == Prepare::ZeroedPaced, cancel)? {
                return Ok(false);
            }
        }
        Prepare::Allocated | Prepare::AllocatedCached => {
            // SAFETY: fallocate on a descriptor we own; no memory is involved.
            let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len_bytes as libc::off_t) };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return Err(e);
                }
                // No fallocate here: a sparse file reads as zero just the same.
                f.set_len(len_bytes)?;
            }
            if how == Prepare::AllocatedCached && !read_into_cache(&f, len_bytes, cancel)? {
                return Ok(false);
            }
        }
    }
    f.sync_all()?;
    Ok(true)
}

impl Vfs for UringVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Every directory this call creates is a new entry in its parent, durable only once the
        // parent is fsynced: fsync the parent of each, from the deepest up to the first ancestor
        // that already existed (whose entry was durable before).
        let missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .collect();
        std::fs::create_dir_all(dir)?;
        for created in &missing {
            sync_dir(parent_of(created))?;
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                if let Some(n) = e.file_name().to_str() {
                    names.push(n.to_owned());
                }
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        Ok(Arc::new(UringFile::open(path)?))
    }

    fn create_zeroed(&self, path: &Path, len_bytes: u64) -> io::Result<()> {
        let never = AtomicBool::new(false);
        self.prepare_file(path, len_bytes, Prepare::Zeroed, &never)
            .map(|_| ())
    }

    fn prepare_file(
        &self,
        path: &Path,
        len_bytes: u64,
        how: Prepare,
        cancel: &AtomicBool,
    ) -> io::Result<bool> {
        // Written under a temporary name and renamed, so a crash never leaves a half-prepared
        // file under the final name.
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".zeroing");
        let tmp = PathBuf::from(tmp_name);
        let filled = fill_prepared(&tmp, len_bytes, how, cancel).and_then(|done| {
            if done {
                std::fs::rename(&tmp, path).map(|()| true)
            } else {
                Ok(false)
            }
        });
        match filled {
            Ok(true) => {
                sync_dir(parent_of(path))?;
                Ok(true)
            }
            Ok(false) | Err(_) => {
                // Cancelled or failed (typically ENOSPC halfway through the zeros): remove the
                // partial file now, or a full disk would stay full of it until the next open.
                // Best effort: the error that matters is the preparation's.
                let _ = std::fs::remove_file(&tmp);
                filled
            }
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        sync_dir(dir)
    }

    /// Inside a tokio runtime the rename and the directory fsync (1-3 ms, tens when the disk is
    /// busy: issue 18) run on the process's directory helper thread ([`dir_helper`]), so that the
    /// runtime's thread (the node's one thread) keeps serving while they wait for the disk; it
    /// reports the rename and then the fsync. Outside a runtime, or if the helper cannot be
    /// started, both run on the calling thread.
    fn start_rename_durably(
        &self,
        from: &Path,
        to: &Path,
    ) -> crate::storage::file::RenameInProgress {
        use crate::storage::file::{parent_dir, RenameInProgress};
        fn inline(from: &Path, to: &Path) -> RenameInProgress {
            let renamed = std::fs::rename(from, to);
            let durable = match &renamed {
                Ok(()) => sync_dir(parent_dir(to)),
                Err(e) => Err(io::Error::new(e.kind(), "the rename failed")),
            };
            RenameInProgress {
                renamed: Box::pin(std::future::ready(renamed)),
                durable: Box::pin(std::future::ready(durable)),
            }
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return inline(from, to);
        }
        let Some(helper) = dir_helper() else {
            return inline(from, to);
        };
        let (renamed_tx, renamed_rx) = tokio::sync::oneshot::channel();
        let (durable_tx, durable_rx) = tokio::sync::oneshot::channel();
        let (f, t) = (from.to_path_buf(), to.to_path_buf());
        let job: DirJob = Box::new(move || {
            // A receiver is gone only if the caller dropped its future: nobody to tell.
            let renamed = std::fs::rename(&f, &t);
            let ok = renamed.is_ok();
            let _ = renamed_tx.send(renamed);
            let durable = if ok {
                sync_dir(parent_dir(&t))
            } else {
                Err(io::Error::other("the rename failed"))
            };
            let _ = durable_tx.send(durable);
        });
        if helper.send(job).is_err() {
            // The helper is gone (it never panics: every outcome is sent as a value); the job
            // came back unrun, so doing it here is doing it once.
            return inline(from, to);
        }
        let gone = || io::Error::other("the directory helper thread died");
        RenameInProgress {
            renamed: Box::pin(async move { renamed_rx.await.unwrap_or_else(|_| Err(gone())) }),
            durable: Box::pin(async move { durable_rx.await.unwrap_or_else(|_| Err(gone())) }),
        }
    }

    fn create_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(StdAppendFile::new(file, path.to_path_buf())))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        let file = File::open(path)?;
        let len_bytes = file.metadata()?.len();
        Ok(Box::new(StdReadFile {
            file,
            path: path.to_path_buf(),
            len_bytes,
        }))
    }
}

/// A rename and directory fsync handed to the directory helper thread.
type DirJob = Box<dyn FnOnce() + Send>;

/// The process's directory helper: one long-lived thread that runs the renames and directory
/// fsyncs of [`UringVfs::start_rename_durably`], one after the other, in the order they were
/// handed over. Started on first use; `None` if it could not be started.
///
/// One thread for the process rather than one per rotation: starting a thread (and waking the
/// runtime from it) was about 0.2 ms of a rotation's 0.7 ms on the append path (BENCHMARKS.md,
/// "Rotation awaited off the node's thread"); handing a job to a thread that waits on a channel
/// costs one wake-up. Jobs of several logs in one process (in-process test clusters) queue
/// behind each other; each is a metadata change and one directory fsync.
fn dir_helper() -> Option<&'static std::sync::mpsc::Sender<DirJob>> {
    static HELPER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<DirJob>>> =
        std::sync::OnceLock::new();
    HELPER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<DirJob>();
            std::thread::Builder::new()
                .name("segment-rename".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// A file written front to back with `write(2)`, made durable with `fdatasync(2)`
/// ([`Vfs::create_append`]).
///
/// Every [`APPEND_WRITEBACK_BYTES`] appended, it asks the kernel to start writing the new range
/// out (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait for the disk and promises
/// nothing about durability), so that a snapshot of tens of MiB does not reach the disk all at
/// once in the final fdatasync, where it would queue ahead of the log's own small fdatasyncs
/// for tens of milliseconds. That alone still lets the kernel queue the whole file within the
/// few tens of ms the serializer takes; a background writer ([`AppendFile::pace_writeback`]:
/// the node's own snapshots) therefore writes out each [`PACED_WINDOW_BYTES`] and waits for it
/// before it goes on, so that no more than that is queued at the disk ahead of the log.
pub struct StdAppendFile {
    file: File,
    path: PathBuf,
    len_bytes: u64,
    writeback: Writeback,
}

/// How much [`StdAppendFile`] appends between two writeback starts (unpaced).
pub const APPEND_WRITEBACK_BYTES: u64 = 4 << 20;

/// A paced [`StdAppendFile`] writes out and waits for every this many bytes: at most this much
/// of a snapshot is queued at the disk ahead of an append's write and fdatasync (as for the
/// paced zero-fill, [`ZERO_WINDOW_PACED_BYTES`]). No rate limit on top: in
/// `benches/snapshot_cost.sh` the window alone gave the log's put p99 as much as the window plus
/// 64 MiB/s did, and a snapshot written at a fixed rate takes time in proportion to the store
/// (a 300 MB store: ~5 s), during which the log grows and a restart replays more of it.
pub const PACED_WINDOW_BYTES: u64 = 1 << 20;

impl StdAppendFile {
    fn new(file: File, path: PathBuf) -> StdAppendFile {
        StdAppendFile {
            file,
            path,
            len_bytes: 0,
            writeback: Writeback::new(APPEND_WRITEBACK_BYTES, u64::MAX, None),
        }
    }
}

impl AppendFile for StdAppendFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        // Positioned writes at our own count: the file was created empty by this handle and
        // has no other writer, so the count is the end of the file.
        self.file
            .write_all_at(bytes, self.len_bytes)
            .map_err(|e| error_at(&self.path, "append", self.len_bytes, e))?;
        self.len_bytes += bytes.len() as u64;
        // A failure to start or wait for writeback (EIO) leaves these pages' fate unknown, as a
        // failed fdatasync would: the caller abandons the file.
        let at = self.writeback.sent_to;
        self.writeback
            .wrote(&self.file, self.len_bytes, false)
            .map_err(|e| error_at(&self.path, "sync_file_range", at, e))
    }

    fn pace_writeback(&mut self) {
        // The few bytes appended before (a snapshot's header) are waited for with the first
        // window.
        self.writeback = Writeback::new(PACED_WINDOW_BYTES, PACED_WINDOW_BYTES, None);
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file
            .sync_data()
            .map_err(|e| error_at(&self.path, "fdatasync", self.len_bytes, e))
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }
}

/// A file read with `pread(2)` ([`Vfs::open_read`]): any length, read-only, no mapping.
pub struct StdReadFile {
    file: File,
    path: PathBuf,
    len_bytes: u64,
}

impl ReadFile for StdReadFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| error_at(&self.path, "read", offset, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh [`StdAppendFile`] named `snap` in `dir`, and its path.
    fn new_append_file(dir: &Path) -> (StdAppendFile, PathBuf) {
        let p = dir.join("snap");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        (StdAppendFile::new(file, p.clone()), p)
    }

    /// A released ring is kept for the next file only when it is idle and there is room: a ring
    /// holding a completion nobody reaped would hand that completion to the next file's write.
    #[test]
    fn only_an_idle_ring_is_kept_for_the_next_file() {
        let mut spares = Vec::new();
        keep_spare(&mut spares, IoUring::new(RING_ENTRIES).unwrap());
        assert_eq!(spares.len(), 1, "an idle ring is kept");

        // A NOP that completed but was never reaped.
        let mut busy = IoUring::new(RING_ENTRIES).unwrap();
        let nop = opcode::Nop::new().build().user_data(7);
        // SAFETY: a NOP references no memory.
        unsafe { busy.submission().push(&nop) }.unwrap();
        busy.submit_and_wait(1).unwrap();
        assert!(!busy.completion().is_empty());
        keep_spare(&mut spares, busy);
        assert_eq!(
            spares.len(),
            1,
            "a ring with an unreaped completion is dropped"
        );

        // One submitted but not yet handed to the kernel.
        let mut queued = IoUring::new(RING_ENTRIES).unwrap();
        // SAFETY: as above.
        unsafe { queued.submission().push(&nop) }.unwrap();
        keep_spare(&mut spares, queued);
        assert_eq!(spares.len(), 1, "a ring with a queued request is dropped");

        for _ in 0..SPARE_RINGS_MAX + 2 {
            keep_spare(&mut spares, IoUring::new(RING_ENTRIES).unwrap());
        }
        assert_eq!(
            spares.len(),
            SPARE_RINGS_MAX,
            "at most SPARE_RINGS_MAX are kept"
        );
    }

    #[test]
    fn an_append_file_starts_writeback_every_step_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, p) = new_append_file(dir.path());
        let chunk = 1 << 20;
        let mut expected = Vec::new();
        for i in 0..9u8 {
            let bytes = vec![i; chunk];
            f.append(&bytes).unwrap();
            expected.extend_from_slice(&bytes);
            // Handed to writeback at each whole step, never ahead of what was appended, and
            // never waited for (unpaced).
            let step = APPEND_WRITEBACK_BYTES;
            assert_eq!(
                f.writeback.sent_to,
                f.len_bytes / step * step,
                "after {} appends",
                i + 1
            );
            assert_eq!(f.writeback.settled_to, 0);
        }
        f.sync_data().unwrap();
        assert_eq!(f.len_bytes(), 9 * chunk as u64);
        assert!(std::fs::read(&p).unwrap() == expected);
    }

    #[test]
    fn a_paced_append_file_waits_for_each_window() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, p) = new_append_file(dir.path());
        f.append(b"header").unwrap();
        f.pace_writeback();
        let piece = 256 << 10;
        let mut expected = b"header".to_vec();
        for i in 0..24u8 {
            let bytes = vec![i; piece];
            f.append(&bytes).unwrap();
            expected.extend_from_slice(&bytes);
            // Everything up to the last whole window was written out and waited for, and
            // nothing was sent beyond it.
            let len = f.len_bytes();
            assert!(f.writeback.settled_to <= len);
            assert!(
                len - f.writeback.settled_to < PACED_WINDOW_BYTES,
                "after {} appends: {} bytes appended, settled to {}",
                i + 1,
                len,
                f.writeback.settled_to
            );
            assert_eq!(f.writeback.sent_to, f.writeback.settled_to);
        }
        f.sync_data().unwrap();
        assert!(std::fs::read(&p).unwrap() == expected);
    }

    #[test]
    fn linked_writes_and_datasync_land_and_are_visible_through_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        UringVfs.create_zeroed(&p, 8192).unwrap();
        let f = UringVfs.open(&p).unwrap();
        assert_eq!(f.len_bytes(), 8192);
        let writes: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i + 1; 7]).collect();
        let batch: Vec<WriteAt<'_>> = writes
            .iter()
            .enumerate()
            .map(|(i, b)| WriteAt {
                offset: i as u64 * 100,
                bytes: b,
            })
            .collect();
        f.write_durable(&batch).unwrap();
        for (i, b) in writes.iter().enumerate() {
            assert_eq!(&f.bytes()[i * 100..i * 100 + 7], &b[..]);
        }
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(&on_disk[3900..3907], &[40u8; 7]);
    }

    #[test]
    fn a_failed_write_cancels_the_linked_fsync_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        UringVfs.create_zeroed(&p, 4096).unwrap();
        let f = UringFile::open(&p).unwrap();
        // A read-only descriptor makes the write fail with EBADF inside the chain.
        *f.io.lock().unwrap() = Some(WriteSide {
            file: File::open(&p).unwrap(),
            ring: Ring::Plain(IoUring::new(RING_ENTRIES).unwrap()),
        });
        let err = f
            .write_durable(&[WriteAt {
                offset: 0,
                bytes: b"x",
            }])
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("write (the linked fdatasync was cancelled) at offset 0"),
            "{msg}"
        );
    }

    #[test]
    fn async_dsync_write_lands_and_returns_its_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        UringVfs.create_zeroed(&p, 8192).unwrap();
        let f = UringVfs.open(&p).unwrap();
        let (r, buf) = tokio_uring::start(Arc::clone(&f).start_durable_write(4096, vec![7u8; 100]));
        r.unwrap();
        assert_eq!(buf, vec![7u8; 100], "the buffer comes back unchanged");
        assert_eq!(&f.bytes()[4096..4196], &[7u8; 100][..]);
        assert_eq!(&std::fs::read(&p).unwrap()[4096..4196], &[7u8; 100][..]);
        // The write side is registered with that runtime's reactor: released (as the append
        // engine does when it stops), the next runtime's write opens a new one.
        f.release_io();
        let (r, _) = tokio_uring::start(Arc::clone(&f).start_durable_write(0, vec![9u8; 8]));
        r.unwrap();
        assert_eq!(&f.bytes()[..8], &[9u8; 8]);
        f.release_io();
    }

    #[test]
    fn a_failed_async_dsync_write_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        UringVfs.create_zeroed(&p, 4096).unwrap();
        let f = Arc::new(UringFile::open(&p).unwrap());
        // A read-only descriptor makes the write fail with EBADF.
        *f.io.lock().unwrap() = Some(WriteSide {
            file: File::open(&p).unwrap(),
            ring: Ring::Plain(IoUring::new(RING_ENTRIES).unwrap()),
        });
        let (r, buf) = tokio_uring::start(Arc::clone(&f).write_async(0, b"x".to_vec()));
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("write at offset 0"), "{msg}");
        assert_eq!(buf, b"x", "the buffer comes back after a failure too");
        assert_eq!(std::fs::read(&p).unwrap()[0], 0, "nothing was written");
    }

    #[test]
    fn append_files_grow_and_read_files_read_any_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let mut f = UringVfs.create_append(&p).unwrap();
        assert_eq!(
            UringVfs.create_append(&p).err().map(|e| e.kind()),
            Some(io::ErrorKind::AlreadyExists)
        );
        f.append(b"hello ").unwrap();
        f.append(b"world").unwrap();
        f.sync_data().unwrap();
        assert_eq!(f.len_bytes(), 11);
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), b"hello world");
        // Read-only files and empty files read as well.
        let mut perms = std::fs::metadata(&p).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&p, perms).unwrap();
        let r = UringVfs.open_read(&p).unwrap();
        assert_eq!(r.len_bytes(), 11);
        let mut buf = [0u8; 5];
        r.read_exact_at(6, &mut buf).unwrap();
        assert_eq!(&buf, b"world");
        let e = r.read_exact_at(7, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let empty = dir.path().join("e");
        drop(UringVfs.create_append(&empty).unwrap());
        assert_eq!(UringVfs.open_read(&empty).unwrap().len_bytes(), 0);
    }

    #[test]
    fn prepared_files_read_as_zero_and_a_cancelled_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let never = AtomicBool::new(false);
        for how in [
            Prepare::Zeroed,
            Prepare::ZeroedPaced,
            Prepare::Allocated,
            Prepare::AllocatedCached,
        ] {
            let p = dir.path().join(format!("{how:?}"));
            assert!(UringVfs.prepare_file(&p, 3 << 20, how, &never).unwrap());
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(bytes.len(), 3 << 20);
            assert!(bytes.iter().all(|&b| b == 0), "{how:?}");
        }
        let p = dir.path().join("cancelled");
        let cancel = AtomicBool::new(true);
        assert!(!UringVfs
            .prepare_file(&p, 3 << 20, Prepare::Zeroed, &cancel)
            .unwrap());
        assert_eq!(UringVfs.list_dir(dir.path()).unwrap().len(), 4);
    }

    #[test]
    fn a_paced_zero_fill_keeps_to_its_rate() {
        let dir = tempfile::tempdir().unwrap();
        let never = AtomicBool::new(false);
        let len = 8u64 << 20;
        let p = dir.path().join("paced");
        let t = std::time::Instant::now();
        assert!(UringVfs
            .prepare_file(&p, len, Prepare::ZeroedPaced, &never)
            .unwrap());
        let floor = len as f64 / ZERO_FILL_PACED_BYTES_PER_SEC as f64;
        let took = t.elapsed().as_secs_f64();
        // The last chunk is written at its due time, so the fill takes at least the time of all
        // chunks but one.
        let chunks = len / ZERO_CHUNK_BYTES as u64;
        assert!(
            took >= floor * (chunks - 1) as f64 / chunks as f64,
            "a paced fill of {len} bytes took {took:.3} s, less than its rate allows ({floor:.3} s)"
        );
        assert!(std::fs::read(&p).unwrap().iter().all(|&b| b == 0));
    }
}

#[cfg(test)]
mod extent_tests {
    use super::*;

    /// `FS_IOC_FIEMAP` = `_IOWR('f', 11, struct fiemap)` (32-byte header).
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 1;
    const FIEMAP_EXTENT_LAST: u32 = 0x1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const EXTENTS_PER_CALL: usize = 64;

    #[repr(C)]
    struct FiemapExtent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }

    #[repr(C)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [FiemapExtent; EXTENTS_PER_CALL],
    }

    /// Bytes of `path` in unwritten (allocated but never written) extents and in all extents;
    /// `None` if the file system has no FIEMAP (tmpfs).
    fn unwritten_and_mapped_bytes(path: &Path) -> Option<(u64, u64)> {
        let f = File::open(path).unwrap();
        let (mut unwritten, mut mapped, mut start) = (0u64, 0u64, 0u64);
        loop {
            // SAFETY: a zeroed Fiemap is a valid request header and extent array.
            let mut m: Box<Fiemap> = Box::new(unsafe { std::mem::zeroed() });
            m.start = start;
            m.length = u64::MAX - start;
            m.flags = FIEMAP_FLAG_SYNC;
            m.extent_count = EXTENTS_PER_CALL as u32;
            // SAFETY: FS_IOC_FIEMAP reads the header and writes at most extent_count extents
            // into the struct we own.
            let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, &mut *m as *mut Fiemap) };
            if r != 0 {
                return None;
            }
            let n = m.mapped_extents as usize;
            if n == 0 {
                return Some((unwritten, mapped));
            }
            for e in &m.extents[..n] {
                mapped += e.length;
                if e.flags & FIEMAP_EXTENT_UNWRITTEN != 0 {
                    unwritten += e.length;
                }
                start = e.logical + e.length;
                if e.flags & FIEMAP_EXTENT_LAST != 0 {
                    return Some((unwritten, mapped));
                }
            }
        }
    }

    /// The claim the zero-fill exists for: a `Zeroed` file has no unwritten extent left when
    /// `prepare_file` returns (appends into it are plain overwrites, whose fdatasync commits no
    /// extent conversion), while an `Allocated` one is all unwritten (which this check detects).
    #[test]
    fn a_zeroed_file_is_fully_written_and_an_allocated_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let never = AtomicBool::new(false);
        let zeroed = dir.path().join("zeroed");
        let allocated = dir.path().join("allocated");
        let len = 8u64 << 20;
        assert!(UringVfs
            .prepare_file(&zeroed, len, Prepare::Zeroed, &never)
            .unwrap());
        assert!(UringVfs
            .prepare_file(&allocated, len, Prepare::Allocated, &never)
            .unwrap());
        let Some((z_unwritten, z_mapped)) = unwritten_and_mapped_bytes(&zeroed) else {
            eprintln!("no FIEMAP on this file system: extent check skipped");
            return;
        };
        assert_eq!(z_mapped, len, "every block of the zeroed file is allocated");
        assert_eq!(z_unwritten, 0, "the zeroed file has unwritten extents");
        let (a_unwritten, _) = unwritten_and_mapped_bytes(&allocated).unwrap();
        if a_unwritten == 0 {
            eprintln!("fallocate made no unwritten extents here (not ext4/xfs?)");
        } else {
            assert_eq!(a_unwritten, len);
        }
    }
}
