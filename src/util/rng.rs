//! A tiny per-core pseudo-random generator (xorshift64*) for picking queue-group members;
//! statistical quality is enough, and it needs no shared state.

use std::cell::Cell;

pub struct Rng(Cell<u64>);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(Cell::new(seed | 1))
    }

    pub fn next_u64(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_over_range() {
        let rng = Rng::new(42);
        let mut seen = [0u32; 4];
        for _ in 0..4000 {
            seen[rng.below(4)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 800), "{seen:?}");
    }
}
