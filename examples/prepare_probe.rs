//! `cargo run --release --example prepare_probe [-- <write bytes> <cycles>]`: how the way a
//! file's zeros got into the page cache changes the cost of later appends into it.
//!
//! For each preparation it builds a 256 MiB file in `$PROBE_DIR` (default: the temp dir, which
//! must be on the disk under test), writes it once through with the measured write size (so
//! unwritten extents are converted and every variant measures the *second* life of its
//! page-cache pages, as a recycled segment would), then times `cycles` write + fdatasync cycles
//! (one io_uring submission: the write linked to the fdatasync) at consecutive, unaligned
//! offsets, and prints p50 / p90 / p99 in µs. The variants run interleaved in rounds so a burst
//! of outside load hits them alike. `docs/FORMAT.md` ("Preparation") quotes its output.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use io_uring::{opcode, squeue, types, IoUring};

const FILE_BYTES: u64 = 256 << 20;
const CHUNK: usize = 1 << 20;
const ROUNDS: usize = 3;

#[derive(Clone, Copy, Debug)]
enum Prep {
    /// Buffered 1 MiB writes of zeros, then fdatasync (what the log does, plus sync_file_range).
    Buffered1MiB,
    /// Buffered 64 KiB writes of zeros, then fdatasync.
    Buffered64KiB,
    /// Buffered 4 KiB writes of zeros, then fdatasync.
    Buffered4KiB,
    /// O_DIRECT 1 MiB writes of zeros, then readahead(2) (what the log did before).
    DirectThenReadahead,
    /// fallocate, then readahead(2).
    FallocateReadahead,
    /// fallocate, then MADV_POPULATE_READ through a mapping.
    FallocatePopulate,
}

/// Zeros with room to slice a 4 KiB-aligned `len` out of them (a `Vec<u8>` is not aligned).
fn zeros_aligned(len: usize) -> Vec<u8> {
    vec![0u8; len + 4096]
}

fn prepare(path: &Path, how: Prep) -> io::Result<File> {
    let _ = std::fs::remove_file(path);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let fd = f.as_raw_fd();
    let readahead = |f: &File| {
        for at in (0..FILE_BYTES).step_by(CHUNK) {
            // SAFETY: readahead on a descriptor we own; no user memory is involved.
            unsafe { libc::readahead(f.as_raw_fd(), at as libc::off64_t, CHUNK) };
        }
    };
    match how {
        Prep::Buffered1MiB | Prep::Buffered64KiB | Prep::Buffered4KiB => {
            let chunk = match how {
                Prep::Buffered1MiB => CHUNK,
                Prep::Buffered64KiB => 64 << 10,
                _ => 4096,
            };
            let z = vec![0u8; chunk];
            for at in (0..FILE_BYTES).step_by(chunk) {
                f.write_all_at(&z, at)?;
            }
            f.sync_data()?;
        }
        Prep::DirectThenReadahead => {
            let d = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)?;
            let buf = zeros_aligned(CHUNK);
            let skip = buf.as_ptr().align_offset(4096);
            let z = &buf[skip..skip + CHUNK];
            for at in (0..FILE_BYTES).step_by(CHUNK) {
                d.write_all_at(z, at)?;
            }
            d.sync_data()?;
            readahead(&f);
        }
        Prep::FallocateReadahead | Prep::FallocatePopulate => {
            // SAFETY: fallocate on a descriptor we own; no memory is involved.
            if unsafe { libc::fallocate(fd, 0, 0, FILE_BYTES as libc::off_t) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f.sync_all()?;
            if matches!(how, Prep::FallocateReadahead) {
                readahead(&f);
            } else {
                // SAFETY: a read-only mapping of a file this function owns, dropped at the end of
                // the block; nothing else changes the file meanwhile.
                let map = unsafe {
                    memmap2::MmapOptions::new()
                        .len(FILE_BYTES as usize)
                        .map(&f)?
                };
                // SAFETY: the range is the whole mapping; populating reads no user memory.
                let r = unsafe { libc::madvise(map.as_ptr() as *mut libc::c_void, map.len(), 22) };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
    }
    Ok(f)
}

/// `cycles` linked write + fdatasync submissions of `size` bytes from offset `*at` on; returns
/// each cycle's µs.
fn cycles(
    ring: &mut IoUring,
    f: &File,
    size: usize,
    n: usize,
    at: &mut u64,
) -> io::Result<Vec<u64>> {
    let buf = vec![0x5au8; size];
    let fd = f.as_raw_fd();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if *at + size as u64 > FILE_BYTES {
            *at = 0;
        }
        let t = Instant::now();
        let w = opcode::Write::new(types::Fd(fd), buf.as_ptr(), size as u32)
            .offset(*at)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(0);
        let s = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(1);
        // SAFETY: `buf` outlives the submission: we wait for both completions below.
        unsafe {
            let mut sq = ring.submission();
            sq.push(&w)
                .map_err(|_| io::Error::other("submission queue full"))?;
            sq.push(&s)
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        let mut seen = 0;
        while seen < 2 {
            ring.submit_and_wait(2 - seen)?;
            for c in ring.completion() {
                if c.result() < 0 {
                    return Err(io::Error::from_raw_os_error(-c.result()));
                }
                seen += 1;
            }
        }
        out.push(t.elapsed().as_micros() as u64);
        *at += size as u64;
    }
    Ok(out)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let size: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(512 << 10);
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(500);
    let dir = std::env::var_os("PROBE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let all = [
        Prep::Buffered1MiB,
        Prep::Buffered64KiB,
        Prep::Buffered4KiB,
        Prep::DirectThenReadahead,
        Prep::FallocateReadahead,
        Prep::FallocatePopulate,
    ];
    let mut ring = IoUring::new(8)?;
    let mut results: Vec<Vec<u64>> = vec![Vec::new(); all.len()];
    for _ in 0..ROUNDS {
        for (i, how) in all.iter().enumerate() {
            let path = dir.join(format!("prepare_probe_{i}.dat"));
            let f = prepare(&path, *how)?;
            let mut at = 0;
            // First life: convert extents, touch every page once.
            let first = FILE_BYTES as usize / size.max(1);
            cycles(&mut ring, &f, size, first.min(4 * n), &mut at)?;
            at = 0;
            results[i].extend(cycles(&mut ring, &f, size, n, &mut at)?);
            drop(f);
            std::fs::remove_file(&path)?;
        }
    }
    println!(
        "write + fdatasync of {size} B, {} cycles per variant ({ROUNDS} rounds), µs:",
        n * ROUNDS
    );
    for (how, v) in all.iter().zip(results.iter_mut()) {
        v.sort_unstable();
        let q = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
        println!(
            "{:<22} p50 {:>5}  p90 {:>5}  p99 {:>5}",
            format!("{how:?}"),
            q(0.5),
            q(0.9),
            q(0.99)
        );
    }
    Ok(())
}
