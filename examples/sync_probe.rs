//! `cargo run --release --example sync_probe [-- <write bytes> <cycles>]`: what one durable
//! write costs through each way of submitting it, on a zero-filled, synced file (what a prepared
//! segment is). Variants run interleaved in blocks of 50 cycles so outside load hits them alike.
//! Then it times what the log does before such a write: encoding the batch's frames (a copy and
//! CRC32C per frame). BENCHMARKS.md quotes it for the floor of the 64 KiB x 8 append cell.
//!
//! Variants: `UringLinked` (the log's: write `IO_LINK`ed to `IORING_OP_FSYNC` + `DATASYNC`,
//! waiting in `io_uring_enter`), the same on rings set up with `COOP_TASKRUN` + `TASKRUN_FLAG`
//! and with `SINGLE_ISSUER` + `DEFER_TASKRUN`, one write with `RWF_DSYNC`, `pwrite` + an
//! io_uring fsync, `pwrite` + `fdatasync` (the baseline), and `UringLinkedReactor` (the node's:
//! waiting in the runtime's epoll for the ring's fd). Environment: `PROBE_DIR` (default: the
//! temp dir; must be on the disk under test), `PROBE_MMAP=1` (map the file and fault every page
//! in first, as a read segment is), `PROBE_PEER=1` (wake another thread after every cycle),
//! `PROBE_TIMER=<ms>` (a task sleeping in a loop on the runtime's timer, as the node's tick).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use io_uring::{opcode, squeue, types, IoUring};
use rust_raft_log::storage::format::{encode_frame, FrameFields, FrameSeed};
use rust_raft_log::types::{EntryType, LogIndex, Term};

const FILE_BYTES: u64 = 256 << 20;
const BLOCK: usize = 50;

#[derive(Clone, Copy, Debug)]
enum How {
    UringLinked,
    UringLinkedCoop,
    UringLinkedDefer,
    UringDsyncWrite,
    PwriteUringFsync,
    /// The baseline of `cargo bench --bench log_append`.
    PwriteFdatasync,
    /// As UringLinked, with the ring's io-wq workers kept on the CPU the submitting thread runs
    /// on (`IORING_REGISTER_IOWQ_AFF`, re-registered when the thread moved).
    UringLinkedLocalWq,
    /// As UringLinked, but the thread waits in the runtime's reactor (epoll) for the ring's fd to
    /// become readable, as the node's event loop does (tokio-uring runtime, `AsyncFd`).
    UringLinkedReactor,
}

async fn one_reactor(
    ring: &mut tokio::io::unix::AsyncFd<IoUring>,
    f: &File,
    buf: &[u8],
    at: u64,
) -> io::Result<()> {
    let fd = types::Fd(f.as_raw_fd());
    let w = opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
        .offset(at)
        .build()
        .flags(squeue::Flags::IO_LINK);
    let s = opcode::Fsync::new(fd)
        .flags(types::FsyncFlags::DATASYNC)
        .build();
    // SAFETY: buf outlives the wait below.
    unsafe {
        let r = ring.get_mut();
        let mut sq = r.submission();
        sq.push(&w).map_err(|_| io::Error::other("sq full"))?;
        sq.push(&s).map_err(|_| io::Error::other("sq full"))?;
    }
    ring.get_ref().submit()?;
    let mut seen = 0;
    while seen < 2 {
        let mut ready = ring.readable_mut().await?;
        let mut n = 0;
        for c in ready.get_inner_mut().completion() {
            if c.result() < 0 {
                return Err(io::Error::from_raw_os_error(-c.result()));
            }
            n += 1;
        }
        seen += n;
        if n == 0 {
            ready.clear_ready();
        }
    }
    Ok(())
}

/// Submits `sqes` and waits for all their completions.
///
/// # Safety
/// Every buffer an SQE references must stay alive until this returns.
unsafe fn run_all(ring: &mut IoUring, sqes: &[squeue::Entry]) -> io::Result<()> {
    {
        let mut sq = ring.submission();
        for sqe in sqes {
            // SAFETY: the caller keeps the buffers alive; we wait for completions below.
            unsafe { sq.push(sqe) }.map_err(|_| io::Error::other("sq full"))?;
        }
    }
    wait_all(ring, sqes.len())
}

fn wait_all(ring: &mut IoUring, want: usize) -> io::Result<()> {
    let mut seen = 0;
    while seen < want {
        ring.submit_and_wait(want - seen)?;
        for c in ring.completion() {
            if c.result() < 0 {
                return Err(io::Error::from_raw_os_error(-c.result()));
            }
            seen += 1;
        }
    }
    Ok(())
}

/// Keeps `ring`'s io-wq workers on the CPU this thread runs on; `last` is the CPU registered.
fn follow_cpu(ring: &IoUring, last: &mut i32) -> io::Result<()> {
    // SAFETY: sched_getcpu takes no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu >= 0 && cpu != *last {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
        ring.submitter().register_iowq_aff(&set)?;
        *last = cpu;
    }
    Ok(())
}

fn one(
    how: How,
    ring: &mut IoUring,
    coop: &mut IoUring,
    defer: &mut IoUring,
    f: &File,
    buf: &[u8],
    at: u64,
) -> io::Result<()> {
    let fd = types::Fd(f.as_raw_fd());
    match how {
        How::UringLinked | How::UringLinkedCoop | How::UringLinkedDefer => {
            let r = match how {
                How::UringLinked => ring,
                How::UringLinkedCoop => coop,
                _ => defer,
            };
            let w = opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
                .offset(at)
                .build()
                .flags(squeue::Flags::IO_LINK);
            let s = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            // SAFETY: buf outlives the call, which waits for both completions.
            unsafe { run_all(r, &[w, s]) }
        }
        How::UringDsyncWrite => {
            let w = opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
                .offset(at)
                .rw_flags(libc::RWF_DSYNC)
                .build();
            // SAFETY: buf outlives the call, which waits for the completion.
            unsafe { run_all(ring, &[w]) }
        }
        How::PwriteUringFsync => {
            f.write_all_at(buf, at)?;
            let s = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            // SAFETY: fsync references no user memory.
            unsafe { run_all(ring, &[s]) }
        }
        How::PwriteFdatasync => {
            f.write_all_at(buf, at)?;
            f.sync_data()
        }
        How::UringLinkedReactor | How::UringLinkedLocalWq => {
            unreachable!("driven by the caller")
        }
    }
}

fn main() -> io::Result<()> {
    tokio_uring::start(probe())
}

async fn probe() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let size: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(256);
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let dir = std::env::var_os("PROBE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join("sync_probe.dat");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let z = vec![0u8; 64 << 10];
    for at in (0..FILE_BYTES).step_by(z.len()) {
        f.write_all_at(&z, at)?;
    }
    f.sync_data()?;
    let map = if std::env::var("PROBE_MMAP").is_ok() {
        // SAFETY: read-only map of a file this probe owns.
        let m = unsafe {
            memmap2::MmapOptions::new()
                .len(FILE_BYTES as usize)
                .map(&f)?
        };
        let mut x = 0u8;
        for i in (0..m.len()).step_by(4096) {
            x ^= m[i];
        }
        std::hint::black_box(x);
        Some(m)
    } else {
        None
    };
    let all = [
        How::UringLinked,
        How::UringLinkedCoop,
        How::UringLinkedDefer,
        How::UringDsyncWrite,
        How::PwriteUringFsync,
        How::PwriteFdatasync,
        How::UringLinkedReactor,
        How::UringLinkedLocalWq,
    ];
    let mut local = IoUring::new(8)?;
    let mut local_cpu = -1;
    let mut ring = IoUring::new(8)?;
    let mut coop = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(8)?;
    let mut defer = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)?;
    // PROBE_TIMER=<ms>: a task that sleeps in a loop on the runtime's timer (as the node's tick).
    if let Some(ms) = std::env::var("PROBE_TIMER")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
        });
    }
    let mut reactor =
        // SAFETY: the IoUring owns its fd and keeps it open until it is dropped, which happens
        // only when the AsyncFd (which deregisters first) is dropped.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                IoUring::new(8)?,
                tokio::io::Interest::READABLE,
            )
        }
        .map_err(|e| e.into_parts().1)?;
    let buf = vec![0x5au8; size];
    let mut at = 0u64;
    let mut res: Vec<Vec<u64>> = vec![Vec::new(); all.len()];
    // PROBE_PEER=1: after every cycle, wake a second thread (as a completed append wakes its
    // appender's thread) that does a little work and sleeps again.
    let peer = std::env::var_os("PROBE_PEER").map(|_| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut x = 0u64;
            for () in rx {
                for i in 0..2000u64 {
                    x = x.wrapping_mul(31).wrapping_add(i);
                }
                std::hint::black_box(x);
            }
        });
        tx
    });
    let mut done = 0;
    while done < n {
        for (i, how) in all.iter().enumerate() {
            for _ in 0..BLOCK {
                if at + size as u64 > FILE_BYTES {
                    at = 0;
                }
                let t = Instant::now();
                if matches!(how, How::UringLinkedReactor) {
                    one_reactor(&mut reactor, &f, &buf, at).await?;
                } else if matches!(how, How::UringLinkedLocalWq) {
                    follow_cpu(&local, &mut local_cpu)?;
                    one(
                        How::UringLinked,
                        &mut local,
                        &mut coop,
                        &mut defer,
                        &f,
                        &buf,
                        at,
                    )?;
                } else {
                    one(*how, &mut ring, &mut coop, &mut defer, &f, &buf, at)?;
                }
                res[i].push(t.elapsed().as_nanos() as u64);
                if let Some(p) = &peer {
                    let _ = p.send(());
                }
                at += size as u64;
            }
        }
        done += BLOCK;
    }
    drop(map);
    drop(f);
    std::fs::remove_file(&path)?;
    // What the log adds before its write: encoding the batch (copy + CRC32C of every frame), for a
    // batch of `size` bytes in entries of min(size, 64 KiB).
    let entry = size.clamp(1, 64 << 10);
    let payload = vec![0x5au8; entry];
    let seed = FrameSeed::new(0x1234_5678, LogIndex(1));
    let mut frames = Vec::with_capacity(size + 64 * (size / entry + 1));
    let mut enc = Vec::with_capacity(n);
    for _ in 0..n {
        frames.clear();
        let t = Instant::now();
        for i in 0..size / entry {
            let fields = FrameFields {
                term: Term(1),
                index: LogIndex(1 + i as u64),
                batch_start_index: LogIndex(1),
                entry_type: EntryType::Normal,
            };
            encode_frame(&mut frames, seed, fields, &payload);
        }
        enc.push(t.elapsed().as_nanos() as u64);
        std::hint::black_box(&frames);
    }
    enc.sort_unstable();
    println!("durable write of {size} B, {done} cycles per variant, interleaved in blocks of {BLOCK}; µs:");
    for (how, v) in all.iter().zip(res.iter_mut()) {
        v.sort_unstable();
        let q = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1e3;
        let mean = v.iter().sum::<u64>() as f64 / v.len() as f64 / 1e3;
        println!(
            "{:<18} p50 {:>7.1}  p90 {:>7.1}  p99 {:>7.1}  mean {:>7.1}",
            format!("{how:?}"),
            q(0.5),
            q(0.9),
            q(0.99),
            mean
        );
    }
    println!(
        "encode {} frames of {entry} B (copy + CRC32C, as the log stages them): p50 {:.1} µs",
        size / entry,
        enc[enc.len() / 2] as f64 / 1e3
    );
    // The part of that no encoding can avoid: the CRC32C over every payload byte.
    let mut crc_only = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut c = 0u32;
        for _ in 0..size / entry {
            c = crc32c::crc32c_append(c, &payload);
        }
        crc_only.push(t.elapsed().as_nanos() as u64);
        std::hint::black_box(c);
    }
    crc_only.sort_unstable();
    println!(
        "CRC32C alone over the same payload bytes: p50 {:.1} µs",
        crc_only[crc_only.len() / 2] as f64 / 1e3
    );
    Ok(())
}
