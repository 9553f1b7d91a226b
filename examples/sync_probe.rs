//! `cargo run --release --example sync_probe [-- <write bytes> <cycles>]`: what one durable
//! write costs through each way of submitting it, on a zero-filled, synced file (what a prepared
//! segment is). Variants run interleaved in blocks of 50 cycles so outside load hits them alike.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use io_uring::{opcode, squeue, types, IoUring};

const FILE_BYTES: u64 = 256 << 20;
const BLOCK: usize = 50;

#[derive(Clone, Copy, Debug)]
enum How {
    UringLinked,
    UringLinkedCoop,
    UringLinkedDefer,
    UringDsyncWrite,
    PwriteUringFsync,
    PwriteFdatasync,
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
            // SAFETY: buf outlives the wait below.
            unsafe {
                let mut sq = r.submission();
                sq.push(&w).map_err(|_| io::Error::other("sq full"))?;
                sq.push(&s).map_err(|_| io::Error::other("sq full"))?;
            }
            wait_all(r, 2)
        }
        How::UringDsyncWrite => {
            let w = opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
                .offset(at)
                .rw_flags(libc::RWF_DSYNC)
                .build();
            // SAFETY: buf outlives the wait below.
            unsafe {
                ring.submission()
                    .push(&w)
                    .map_err(|_| io::Error::other("sq full"))?
            };
            wait_all(ring, 1)
        }
        How::PwriteUringFsync => {
            f.write_all_at(buf, at)?;
            let s = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            // SAFETY: no user memory.
            unsafe {
                ring.submission()
                    .push(&s)
                    .map_err(|_| io::Error::other("sq full"))?
            };
            wait_all(ring, 1)
        }
        How::PwriteFdatasync => {
            f.write_all_at(buf, at)?;
            f.sync_data()
        }
    }
}

fn main() -> io::Result<()> {
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
    ];
    let mut ring = IoUring::new(8)?;
    let mut coop = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(8)?;
    let mut defer = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)?;
    let buf = vec![0x5au8; size];
    let mut at = 0u64;
    let mut res: Vec<Vec<u64>> = vec![Vec::new(); all.len()];
    let mut done = 0;
    while done < n {
        for (i, how) in all.iter().enumerate() {
            for _ in 0..BLOCK {
                if at + size as u64 > FILE_BYTES {
                    at = 0;
                }
                let t = Instant::now();
                one(*how, &mut ring, &mut coop, &mut defer, &f, &buf, at)?;
                res[i].push(t.elapsed().as_nanos() as u64);
                at += size as u64;
            }
        }
        done += BLOCK;
    }
    drop(map);
    drop(f);
    std::fs::remove_file(&path)?;
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
    Ok(())
}
