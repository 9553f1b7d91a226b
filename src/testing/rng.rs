//! The simulator's random source: one `u64` seed decides every choice a run makes.
//!
//! Every random decision of a simulation (fault times, latencies, which node crashes, each core's
//! own election-jitter seed) is drawn from one [`SimRng`] seeded with the run's seed, in a fixed
//! order, so the same seed replays the same run bit for bit. Nothing here may consult the clock,
//! the OS or a `HashMap`'s random state.

use crate::raft::Rng;

/// The core's own generator ([`crate::raft::Rng`], xoshiro256**) with the helpers the simulator
/// needs, so the simulator and the cores it seeds share one reproducible algorithm.
#[derive(Clone, Debug)]
pub struct SimRng {
    inner: Rng,
}

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng {
            inner: Rng::new(seed),
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// A value uniform in `[0, n)`. Panics if `n == 0` (a programmer error).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SimRng::below(0)");
        self.inner.gen_range(0..=n - 1)
    }

    /// A value uniform in `[lo, hi]` (inclusive). Panics if `lo > hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "SimRng::range({lo}, {hi})");
        self.inner.gen_range(lo..=hi)
    }

    /// A float uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (clamped to `[0, 1]`).
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// An index uniform in `[0, len)`.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// A seed for an independent sub-stream (e.g. one core's election jitter).
    pub fn fork(&mut self) -> u64 {
        self.next_u64()
    }
}

/// The SplitMix64 finaliser: a good 64-bit mixing function, also used for the checkers' hashes.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_different_seeds_differ() {
        let mut a = SimRng::new(42);
        let mut b = SimRng::new(42);
        let mut c = SimRng::new(43);
        let xs: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..16).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn range_stays_inside_and_reaches_both_ends() {
        let mut r = SimRng::new(7);
        let (mut lo_seen, mut hi_seen) = (false, false);
        for _ in 0..10_000 {
            let v = r.range(150, 155);
            assert!((150..=155).contains(&v), "range gave {v}");
            lo_seen |= v == 150;
            hi_seen |= v == 155;
        }
        assert!(lo_seen && hi_seen);
        assert_eq!(r.range(9, 9), 9);
    }

    #[test]
    fn chance_matches_its_probability_roughly() {
        let mut r = SimRng::new(1);
        let hits = (0..100_000).filter(|_| r.chance(0.25)).count();
        assert!(
            (23_000..27_000).contains(&hits),
            "chance(0.25) hit {hits} of 100000"
        );
        assert!(!(0..1000).any(|_| r.chance(0.0)));
        assert!((0..1000).all(|_| r.chance(1.0)));
    }
}
