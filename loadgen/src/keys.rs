//! Random numbers, key distributions and the key byte layout.
//!
//! Everything random in a run comes from [`Rng`] seeded from the run's `--seed`, so a run's
//! sequence of keys can be replayed.
//!
//! Key layout: `k` followed by the key's index in decimal, zero-padded so the key is exactly
//! `key_bytes` long (16 bytes: `k000000000012345`). Keys sort in index order, so a range scan
//! over indices `[i, i + n)` is the byte range `[key(i), key(i + n))`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// xoshiro256** (Blackman and Vigna), seeded through splitmix64. Small, fast, and replayable;
/// not for cryptography.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose whole sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            // splitmix64
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
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

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)` (multiply-shift; the bias is below 2^-64 * n). `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Which key distribution to draw from (the command-line choice).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Zipfian: a few keys are hot (see [`Zipfian`]).
    Zipfian,
    /// Keys in order 0, 1, 2, ... (wrapping), shared by all workers of a run.
    Sequential,
}

/// Errors in a key-space or distribution specification.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeyError {
    /// The key space is empty.
    #[error("the key space must hold at least one key")]
    EmptyKeySpace,
    /// Zipfian theta must lie strictly between 0 and 1 for Gray et al.'s method.
    #[error("zipfian theta must be in (0, 1), got {0}")]
    BadTheta(f64),
    /// Keys of this length cannot number every key of the space.
    #[error("keys of {key_bytes} bytes cannot hold {keys} distinct indices (need {needed} bytes)")]
    KeyTooShort {
        /// Requested key length.
        key_bytes: usize,
        /// Key-space size.
        keys: u64,
        /// Minimum key length for that space.
        needed: usize,
    },
}

/// Zipfian ranks over `[0, n)` with exponent `theta`, by the method of Gray et al., "Quickly
/// Generating Billion-Record Synthetic Databases" (SIGMOD 1994), the one YCSB uses.
///
/// P(rank i) = 1 / ((i + 1)^theta * zeta(n, theta)) where zeta(n, theta) = sum_{j=1..n} j^-theta.
/// Ranks 0 and 1 are drawn exactly with these probabilities; higher ranks come from the
/// closed-form inverse of the continuous approximation of the distribution, which is what makes
/// each draw O(1) after an O(n) set-up.
#[derive(Debug, Clone)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    zeta_n: f64,
    alpha: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl Zipfian {
    /// Set up for `n` items; costs one pass over `n` terms to compute zeta(n, theta).
    pub fn new(n: u64, theta: f64) -> Result<Self, KeyError> {
        if n == 0 {
            return Err(KeyError::EmptyKeySpace);
        }
        if !(theta > 0.0 && theta < 1.0) {
            return Err(KeyError::BadTheta(theta));
        }
        let zeta_n = zeta(n, theta);
        let zeta_2 = zeta(2.min(n), theta);
        let alpha = 1.0 / (1.0 - theta);
        // eta = (1 - (2/n)^(1-theta)) / (1 - zeta(2)/zeta(n)); with n <= 2 the formula's branch
        // that uses eta is never reached (ranks 0 and 1 cover everything), so any value works.
        let eta = if n > 2 {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n)
        } else {
            0.0
        };
        Ok(Zipfian {
            n,
            theta,
            zeta_n,
            alpha,
            eta,
            half_pow_theta: 0.5f64.powf(theta),
        })
    }

    /// zeta(n, theta): the normalising constant.
    pub fn zeta_n(&self) -> f64 {
        self.zeta_n
    }

    /// The exact probability of rank `i` (0-based).
    pub fn probability(&self, i: u64) -> f64 {
        1.0 / ((i + 1) as f64).powf(self.theta) / self.zeta_n
    }

    /// Draws a rank in `[0, n)`; rank 0 is the most popular.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1.min(self.n - 1);
        }
        let r = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n - 1)
    }
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// The key generator of one run: a distribution over `[0, keys)` plus the key layout.
/// Clones share the sequential counter.
#[derive(Debug, Clone)]
pub struct KeySpace {
    keys: u64,
    key_bytes: usize,
    dist: Dist,
}

#[derive(Debug, Clone)]
enum Dist {
    Uniform,
    Zipfian {
        z: Arc<Zipfian>,
        /// Multiplier of the rank -> key permutation (coprime with `keys`).
        scramble: u64,
    },
    Sequential(Arc<AtomicU64>),
}

impl KeySpace {
    /// A key space of `keys` keys of `key_bytes` bytes each. `theta` is used by the zipfian
    /// distribution only. Zipfian ranks are spread over the key space by the permutation
    /// `rank -> rank * p mod keys` (p a large prime coprime with `keys`), so that hot keys are
    /// not neighbours (YCSB scrambles its zipfian for the same reason).
    pub fn new(
        keys: u64,
        key_bytes: usize,
        dist: Distribution,
        theta: f64,
    ) -> Result<Self, KeyError> {
        if keys == 0 {
            return Err(KeyError::EmptyKeySpace);
        }
        let needed = 1 + decimal_digits(keys - 1);
        if key_bytes < needed {
            return Err(KeyError::KeyTooShort {
                key_bytes,
                keys,
                needed,
            });
        }
        let dist = match dist {
            Distribution::Uniform => Dist::Uniform,
            Distribution::Sequential => Dist::Sequential(Arc::new(AtomicU64::new(0))),
            Distribution::Zipfian => {
                let z = Arc::new(Zipfian::new(keys, theta)?);
                // Primes near 2^61; at least one is coprime with any keys < 2^61 * 2^61.
                let scramble = [2_305_843_009_213_693_951u64, 2_305_843_009_213_693_921]
                    .into_iter()
                    .find(|p| keys % p != 0)
                    .unwrap_or(1);
                Dist::Zipfian { z, scramble }
            }
        };
        Ok(KeySpace {
            keys,
            key_bytes,
            dist,
        })
    }

    /// Number of keys in the space.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Key length in bytes.
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// Draws the next key index.
    pub fn next_index(&self, rng: &mut Rng) -> u64 {
        match &self.dist {
            Dist::Uniform => rng.below(self.keys),
            Dist::Zipfian { z, scramble } => {
                let rank = z.sample(rng);
                ((rank as u128 * *scramble as u128) % self.keys as u128) as u64
            }
            Dist::Sequential(c) => c.fetch_add(1, Ordering::Relaxed) % self.keys,
        }
    }

    /// The bytes of key `index` (see the module documentation for the layout).
    pub fn key(&self, index: u64) -> Vec<u8> {
        format_key(index, self.key_bytes)
    }
}

/// `k` + `index` zero-padded to `key_bytes` bytes in total. Indices wider than the padding
/// produce a longer key (the caller checks the space fits, see [`KeySpace::new`]).
pub fn format_key(index: u64, key_bytes: usize) -> Vec<u8> {
    let width = key_bytes.saturating_sub(1);
    format!("k{index:0width$}").into_bytes()
}

fn decimal_digits(mut v: u64) -> usize {
    let mut d = 1;
    while v >= 10 {
        v /= 10;
        d += 1;
    }
    d
}

/// Values: slices of a pre-generated pool of printable random bytes, at a random offset per
/// request, so values differ without costing a generator call per byte.
#[derive(Debug, Clone)]
pub struct ValuePool {
    pool: Arc<Vec<u8>>,
    value_bytes: usize,
}

impl ValuePool {
    /// A pool for values of `value_bytes` bytes.
    pub fn new(value_bytes: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x005e_ed0f_7a1e);
        let len = value_bytes + 64 * 1024;
        let pool = (0..len).map(|_| b'a' + rng.below(26) as u8).collect();
        ValuePool {
            pool: Arc::new(pool),
            value_bytes,
        }
    }

    /// A value of the configured size.
    pub fn value(&self, rng: &mut Rng) -> Vec<u8> {
        let off = rng.below((self.pool.len() - self.value_bytes + 1) as u64) as usize;
        self.pool[off..off + self.value_bytes].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_is_fixed_width_and_ordered() {
        assert_eq!(format_key(12345, 16), b"k000000000012345".to_vec());
        assert!(format_key(9, 16) < format_key(10, 16));
        // Indices 0..=999_999 need 6 digits after the `k`.
        assert!(KeySpace::new(1_000_000, 6, Distribution::Uniform, 0.99).is_err());
        assert!(KeySpace::new(1_000_000, 7, Distribution::Uniform, 0.99).is_ok());
    }

    #[test]
    fn sequential_wraps_and_is_shared_by_clones() {
        let ks = KeySpace::new(3, 4, Distribution::Sequential, 0.5).unwrap();
        let ks2 = ks.clone();
        let mut rng = Rng::new(1);
        let got: Vec<u64> = (0..4)
            .map(|i| {
                if i % 2 == 0 {
                    ks.next_index(&mut rng)
                } else {
                    ks2.next_index(&mut rng)
                }
            })
            .collect();
        assert_eq!(got, vec![0, 1, 2, 0]);
    }

    #[test]
    fn uniform_stays_in_range_and_covers_it() {
        let ks = KeySpace::new(10, 4, Distribution::Uniform, 0.5).unwrap();
        let mut rng = Rng::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[ks.next_index(&mut rng) as usize] += 1;
        }
        // Each bucket expects 1000 with sd ~30; 850 is 5 sd out.
        assert!(seen.iter().all(|&c| c > 850 && c < 1150), "{seen:?}");
    }

    #[test]
    fn zipfian_rejects_bad_theta() {
        assert_eq!(Zipfian::new(10, 1.0).unwrap_err(), KeyError::BadTheta(1.0));
        assert!(Zipfian::new(10, 0.0).is_err());
        assert!(Zipfian::new(0, 0.5).is_err());
    }

    /// Ranks 0 and 1 are drawn with exactly their theoretical probabilities, so their observed
    /// frequencies must lie within a binomial tolerance of it: 5 standard deviations, a bound a
    /// correct generator misses with probability below 1e-6.
    #[test]
    fn zipfian_top_ranks_match_theory() {
        let n = 10_000;
        let z = Zipfian::new(n, 0.99).unwrap();
        let mut rng = Rng::new(42);
        let draws = 400_000u64;
        let mut counts = vec![0u64; n as usize];
        for _ in 0..draws {
            let r = z.sample(&mut rng);
            assert!(r < n);
            counts[r as usize] += 1;
        }
        for rank in 0..2u64 {
            let p = z.probability(rank);
            let expected = draws as f64 * p;
            let sd = (draws as f64 * p * (1.0 - p)).sqrt();
            let got = counts[rank as usize] as f64;
            assert!(
                (got - expected).abs() < 5.0 * sd,
                "rank {rank}: got {got}, expected {expected:.0} +- {:.0}",
                5.0 * sd
            );
        }
        // Higher ranks use the continuous approximation: check the mass of ranks 10..100 is
        // within 10% of theory (a loose bound for the approximation, far tighter than what a
        // uniform or wrong-theta generator would produce: uniform gives 0.9% instead of ~23%).
        let theory: f64 = (10..100).map(|i| z.probability(i)).sum();
        let got: f64 = counts[10..100].iter().sum::<u64>() as f64 / draws as f64;
        assert!(
            (got - theory).abs() < 0.1 * theory,
            "ranks 10..100: {got} vs {theory}"
        );
    }

    #[test]
    fn zipfian_keyspace_scramble_is_a_permutation() {
        let ks = KeySpace::new(1000, 5, Distribution::Zipfian, 0.99).unwrap();
        if let Dist::Zipfian { scramble, .. } = &ks.dist {
            let mut seen = vec![false; 1000];
            for r in 0..1000u128 {
                let k = ((r * *scramble as u128) % 1000) as usize;
                assert!(!seen[k]);
                seen[k] = true;
            }
        } else {
            panic!("not zipfian");
        }
    }

    #[test]
    fn rng_is_replayable() {
        let a: Vec<u64> = {
            let mut r = Rng::new(5);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(5);
            (0..5).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        let mut r = Rng::new(6);
        assert!((0..1000)
            .map(|_| r.next_f64())
            .all(|f| (0.0..1.0).contains(&f)));
    }
}
