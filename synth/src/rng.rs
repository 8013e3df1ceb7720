//! Randomness, fixed forever: a hand-rolled SplitMix64 stream per patient and the seed-keyed
//! Feistel permutation that hands out NHS numbers.
//!
//! The bytes written for a seed are part of the crate's contract, so neither may come from a
//! crate whose algorithm could change with a version bump, and neither may change here.

/// SplitMix64's output function applied to `z + γ`: a fast 64-bit mixer used to derive
/// streams, keys and ids from the seed.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One SplitMix64 stream (a patient's, or one of its side streams).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, index: u64) -> Rng {
        Rng(mix64(seed ^ mix64(index ^ 0x7061_7469_656e_7473))) // "patients"
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
    }
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    pub(crate) fn pick_str(&mut self, items: &[&'static str]) -> &'static str {
        self.pick::<&'static str>(items)
    }
    /// Index into `weights`, proportional to weight.
    pub(crate) fn weighted(&mut self, weights: impl Iterator<Item = u32> + Clone) -> usize {
        let total: u64 = weights.clone().map(u64::from).sum();
        let mut r = self.below(total);
        for (i, w) in weights.enumerate() {
            let w = u64::from(w);
            if r < w {
                return i;
            }
            r -= w;
        }
        0
    }
}

/// The seed-keyed permutation that hands out NHS numbers: a balanced Feistel network on 20 bits
/// (four rounds, each keyed from the seed), walked around its cycle until the value falls back
/// inside the range, so it is a bijection of `0..n` for any `n` up to 2^20.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NhsPermutation {
    keys: [u64; 4],
}

impl NhsPermutation {
    pub(crate) fn new(seed: u64) -> NhsPermutation {
        let k = mix64(seed ^ 0x6e68_735f_7065_726d); // "nhs_perm"
        NhsPermutation {
            keys: [mix64(k ^ 1), mix64(k ^ 2), mix64(k ^ 3), mix64(k ^ 4)],
        }
    }

    /// A bijection of `0..n` (`0 < n <= 2^20`) keyed by the seed: Feistel rounds on 20 bits,
    /// walking the cycle until the value falls back inside the range.
    pub(crate) fn permute(&self, x: u32, n: u32) -> u32 {
        let mut v = x;
        loop {
            v = self.feistel(v);
            if v < n {
                return v;
            }
        }
    }

    fn feistel(&self, v: u32) -> u32 {
        let (mut l, mut r) = (v >> 10, v & 0x3ff);
        for k in self.keys {
            let f = (mix64(r as u64 ^ k) & 0x3ff) as u32;
            (l, r) = (r, l ^ f);
        }
        (l << 10) | r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_stream() {
        // Vigna's splitmix64.c from state 0
        let mut r = Rng(0);
        assert_eq!(r.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next(), 0x06c4_5d18_8009_454f);
        assert_eq!(mix64(0), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn permutation_is_a_bijection_of_a_small_range() {
        let p = NhsPermutation::new(3);
        let n = 1000;
        let mut seen = vec![false; n as usize];
        for x in 0..n {
            let v = p.permute(x, n);
            assert!(v < n);
            assert!(!seen[v as usize], "{x} -> {v} twice");
            seen[v as usize] = true;
        }
        assert_ne!(NhsPermutation::new(3), NhsPermutation::new(4));
    }
}
