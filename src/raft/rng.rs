//! A small deterministic pseudo-random number generator.
//!
//! The core draws its randomized election timeouts (Raft §5.2) from this generator, and the
//! simulator reuses it so that every random choice of a run derives from one `u64` seed. It owns no
//! global state and never reads the clock: the same seed always yields the same sequence, on every
//! platform.
//!
//! The generator is xoshiro256** (Blackman and Vigna), seeded by expanding the `u64` through
//! SplitMix64 as its authors recommend, so that nearby seeds (0, 1, 2, ...) give unrelated streams.
//! It is not cryptographically secure and must never be used where an adversary could profit from
//! predicting it.

use std::ops::RangeInclusive;

/// A seeded xoshiro256** generator. Cloning it forks an identical stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

/// One step of SplitMix64: advances `state` and returns a well-mixed output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose whole output is decided by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        // SplitMix64 is a bijection on its counter, so four consecutive outputs are never all
        // zero (the one state xoshiro cannot leave); assert it anyway since the cost is nil.
        assert!(s != [0; 4], "Rng::new({seed}): all-zero xoshiro state");
        Rng { s }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniformly distributed value in `range` (both ends included), without modulo bias.
    ///
    /// # Panics
    /// If the range is empty (`start > end`): that is a caller's bug.
    pub fn gen_range(&mut self, range: RangeInclusive<u64>) -> u64 {
        let (lo, hi) = (*range.start(), *range.end());
        assert!(lo <= hi, "Rng::gen_range: empty range {lo}..={hi}");
        let span = (hi - lo).wrapping_add(1);
        if span == 0 {
            // The range covers all of u64.
            return self.next_u64();
        }
        // Lemire's multiply-and-reject: the high half of x * span is uniform in [0, span) once
        // the few low halves that would over-represent some values are rejected.
        let threshold = span.wrapping_neg() % span;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(span);
            if (m as u64) >= threshold {
                return lo + (m >> 64) as u64;
            }
        }
    }

    /// A uniformly distributed `f64` in `[0, 1)` (53 random bits).
    pub fn gen_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `true` with probability `p` (clamped to `[0, 1]`).
    pub fn gen_bool(&mut self, p: f64) -> bool {
        self.gen_f64() < p
    }

    /// A new generator seeded from this one's next output: an independent stream for a
    /// sub-component (one per simulated node, say) that stays reproducible from the parent seed.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let mut c = Rng::new(8);
        let xs: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..16).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn gen_range_stays_inside_and_hits_both_ends() {
        let mut rng = Rng::new(42);
        let mut seen = [false; 6];
        for _ in 0..10_000 {
            let v = rng.gen_range(150..=155);
            assert!(
                (150..=155).contains(&v),
                "gen_range(150..=155) returned {v}"
            );
            seen[(v - 150) as usize] = true;
        }
        assert!(
            seen.iter().all(|&s| s),
            "some value of 150..=155 never drawn: {seen:?}"
        );
        assert_eq!(rng.gen_range(9..=9), 9);
        let _ = rng.gen_range(0..=u64::MAX);
    }

    #[test]
    fn gen_range_is_roughly_uniform() {
        // Chi-square-like sanity check: each of 10 buckets within 10% of the expected count.
        let mut rng = Rng::new(1);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            buckets[rng.gen_range(0..=9) as usize] += 1;
        }
        for (i, &n) in buckets.iter().enumerate() {
            assert!(
                (9_000..=11_000).contains(&n),
                "bucket {i} has {n} of 100000 draws"
            );
        }
    }

    #[test]
    fn gen_f64_in_unit_interval() {
        let mut rng = Rng::new(3);
        for _ in 0..10_000 {
            let x = rng.gen_f64();
            assert!((0.0..1.0).contains(&x), "gen_f64 returned {x}");
        }
    }
}
