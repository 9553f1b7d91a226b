//! Keys and the random choice of them.
//!
//! A key is the lowercase hex of its number, zero padded on the left to the key size, so keys
//! are printable (`etcdctl get 000003e8` reads one back), sort in number order and are all of
//! exactly `key_size` bytes. Keys longer than 16 bytes are padded with more `0`s.

/// How many distinct keys `key_size` hex digits can name; `None` when more than `u64` holds.
pub fn key_space_max(key_size: usize) -> Option<u64> {
    if key_size >= 16 {
        None
    } else {
        Some(1u64 << (4 * key_size))
    }
}

/// Writes key number `index` into `out` (cleared first).
///
/// # Panics
/// If `index` does not fit in `key_size` hex digits: the plan checks `key_space` against
/// [`key_space_max`], so this is a programmer error.
pub fn encode_key(index: u64, key_size: usize, out: &mut Vec<u8>) {
    if let Some(max) = key_space_max(key_size) {
        assert!(
            index < max,
            "key number {index} does not fit in {key_size} hex digits"
        );
    }
    out.clear();
    let digits = 16usize.min(key_size);
    out.resize(key_size - digits, b'0');
    for shift in (0..digits).rev() {
        let nibble = ((index >> (4 * shift)) & 0xf) as usize;
        out.push(b"0123456789abcdef"[nibble]);
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast generator, good enough to spread keys, and
/// seeded so a run's key sequence can be repeated.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (Lemire's multiply-shift; the bias for bounds far below 2^64 is
    /// negligible for choosing keys).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_zero_padded_hex_of_exactly_key_size_bytes() {
        let mut key = Vec::new();
        encode_key(0x3e8, 8, &mut key);
        assert_eq!(key, b"000003e8");
        encode_key(0xf, 1, &mut key);
        assert_eq!(key, b"f");
        encode_key(u64::MAX, 20, &mut key);
        assert_eq!(key, b"0000ffffffffffffffff");
        assert_eq!(key_space_max(2), Some(256));
        assert_eq!(key_space_max(16), None);
    }

    #[test]
    #[should_panic(expected = "does not fit in 2 hex digits")]
    fn a_key_number_too_large_for_the_size_is_a_programmer_error() {
        encode_key(256, 2, &mut Vec::new());
    }

    #[test]
    fn random_keys_stay_in_the_key_space_and_cover_it() {
        let mut rng = SplitMix64::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let k = rng.below(10);
            assert!(k < 10, "{k} out of 0..10");
            seen[k as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "1000 draws cover 0..10: {seen:?}");
    }
}
