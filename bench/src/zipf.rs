//! Zipf sampler: precomputed CDF over `n` ranks (weight of rank k is
//! 1 / k^s), sampled by binary search.

use rand::Rng;

pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// A 0-based rank: 0 is the most popular.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.random();
        self.cdf
            .partition_point(|&c| c < u)
            .min(self.cdf.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn rank_zero_has_its_share() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 200_000;
        let zeros = (0..n).filter(|_| z.sample(&mut rng) == 0).count();
        // H(1000) is about 7.485, so rank 0 has about 13.4 %.
        let share = zeros as f64 / n as f64;
        assert!((0.12..0.15).contains(&share), "share {share}");
        assert!((0..1000).all(|_| z.sample(&mut rng) < 1000));
    }
}
