//! Differential privacy for federated averaging (DP-FedAvg, McMahan et al. 2018): each node's
//! update is clipped to norm C and Gaussian noise of standard deviation σ·C is added, to the sum
//! on the server (central DP) or to each update on its node before it leaves (local DP). The
//! privacy spent is tracked with a Rényi-DP accountant for the subsampled Gaussian mechanism
//! (Mironov, Talwar & Zhang 2019), over integer orders, converted to (ε, δ).

use crate::weights::norm;
use crate::{Error, Result};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

/// Where the noise is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpKind {
    /// Once, to the sum of clipped updates, by the server.
    Central,
    /// By each node to its own clipped update, so the server never sees a clean one.
    Local,
}

/// Differential-privacy settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpConfig {
    /// Clipping norm C of each update.
    pub clip: f64,
    /// Noise multiplier σ: the noise's standard deviation is σ·C.
    pub noise: f64,
    pub kind: DpKind,
    /// δ of the (ε, δ) reported.
    pub delta: f64,
}

impl DpConfig {
    /// Checks the settings, naming the flag at fault.
    pub fn check(&self) -> Result<()> {
        if !(self.clip > 0.0 && self.clip.is_finite()) {
            return Err(Error::Invalid(format!(
                "--dp-clip {} must be above 0 (the largest update norm kept)",
                self.clip
            )));
        }
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return Err(Error::Invalid(format!(
                "--dp-noise {} must be 0 or more (the noise's standard deviation over the clip)",
                self.noise
            )));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(Error::Invalid(format!(
                "--dp-delta {} must be between 0 and 1 (e.g. 1e-5)",
                self.delta
            )));
        }
        Ok(())
    }
}

/// Scales `v` down to norm `c` if it is longer; returns whether it was clipped.
pub fn clip(v: &mut [f32], c: f64) -> bool {
    let n = norm(v);
    if n > c {
        let s = (c / n) as f32;
        v.iter_mut().for_each(|x| *x *= s);
        true
    } else {
        false
    }
}

/// Adds N(0, std²) to every value.
pub fn add_noise(v: &mut [f32], std: f64, rng: &mut impl Rng) {
    if std <= 0.0 {
        return;
    }
    let n = Normal::new(0.0, std).expect("finite std");
    v.iter_mut().for_each(|x| *x += n.sample(rng) as f32);
}

/// The Rényi orders the accountant tracks.
fn orders() -> Vec<u32> {
    (2..=64)
        .chain([80, 96, 128, 160, 192, 256, 384, 512])
        .collect()
}

fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        hi
    } else {
        hi + (lo - hi).exp().ln_1p()
    }
}

fn ln_binom(n: u32, k: u32) -> f64 {
    fn ln_fact(n: u32) -> f64 {
        (1..=n).map(|i| (i as f64).ln()).sum()
    }
    ln_fact(n) - ln_fact(k) - ln_fact(n - k)
}

/// RDP of one step of the Gaussian mechanism with noise multiplier `sigma`, applied to a
/// Poisson subsample with rate `q`, at integer order `alpha` (Mironov et al. 2019, eq. for
/// integer α).
pub fn rdp_step(q: f64, sigma: f64, alpha: u32) -> f64 {
    if sigma == 0.0 {
        return f64::INFINITY;
    }
    let a = alpha as f64;
    if q >= 1.0 {
        return a / (2.0 * sigma * sigma);
    }
    if q <= 0.0 {
        return 0.0;
    }
    let mut log_a = f64::NEG_INFINITY;
    for i in 0..=alpha {
        let fi = i as f64;
        let term = ln_binom(alpha, i)
            + fi * q.ln()
            + (a - fi) * (1.0 - q).ln()
            + (fi * fi - fi) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, term);
    }
    log_a / (a - 1.0)
}

/// (ε, δ) after `steps` rounds at sampling rate `q` and noise multiplier `sigma`: the best over
/// the tracked orders of RDP·steps + ln(1/δ)/(α − 1). Infinite without noise.
pub fn epsilon(q: f64, sigma: f64, steps: usize, delta: f64) -> f64 {
    if sigma == 0.0 || steps == 0 {
        return if steps == 0 { 0.0 } else { f64::INFINITY };
    }
    orders()
        .into_iter()
        .map(|a| steps as f64 * rdp_step(q, sigma, a) + (1.0 / delta).ln() / (a as f64 - 1.0))
        .fold(f64::INFINITY, f64::min)
}

/// The smallest noise multiplier whose ε after `steps` rounds is at most `target` (bisection:
/// ε falls as σ grows).
pub fn noise_for_epsilon(target: f64, q: f64, steps: usize, delta: f64) -> Result<f64> {
    if target.is_nan() || target <= 0.0 {
        return Err(Error::Invalid(format!("ε {target} must be above 0")));
    }
    if target.is_infinite() {
        return Ok(0.0);
    }
    let (mut lo, mut hi) = (1e-3, 1e4);
    if epsilon(q, hi, steps, delta) > target {
        return Err(Error::Invalid(format!(
            "ε {target} cannot be reached in {steps} rounds even with noise {hi}"
        )));
    }
    for _ in 0..100 {
        let mid = (lo * hi).sqrt();
        if epsilon(q, mid, steps, delta) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_bounds_the_norm() {
        let mut v = vec![3.0, 4.0];
        assert!(clip(&mut v, 1.0));
        assert!((norm(&v) - 1.0).abs() < 1e-6);
        let mut w = vec![0.3, 0.4];
        assert!(!clip(&mut w, 1.0));
        assert_eq!(w, vec![0.3, 0.4]);
    }

    #[test]
    fn the_accountant_matches_known_values_and_behaves() {
        // Full participation: one Gaussian step has RDP α/(2σ²) exactly.
        assert!((rdp_step(1.0, 2.0, 4) - 0.5).abs() < 1e-12);
        // Subsampling amplifies privacy: less RDP than without it.
        assert!(rdp_step(0.1, 1.0, 8) < rdp_step(1.0, 1.0, 8));
        assert!(rdp_step(0.01, 2.0, 4) < 0.01 * rdp_step(1.0, 2.0, 4));
        // ε grows with rounds and falls with noise.
        let e = |s, t| epsilon(0.3, s, t, 1e-5);
        assert!(e(1.0, 10) < e(1.0, 20));
        assert!(e(2.0, 20) < e(1.0, 20));
        assert_eq!(e(0.0, 20), f64::INFINITY);
        // A published value: DP-SGD on MNIST (batch 256 of 60,000, σ = 1.1, 60 epochs,
        // δ = 1e-5) spends ε ≈ 3 by the TF-Privacy accountant (Abadi et al. report 2.9).
        let known = epsilon(256.0 / 60_000.0, 1.1, 60 * 60_000 / 256, 1e-5);
        assert!(known > 2.5 && known < 3.6, "{known}");
        // The inverse finds a σ that meets the target.
        let s = noise_for_epsilon(4.0, 0.3, 20, 1e-5).unwrap();
        assert!(epsilon(0.3, s, 20, 1e-5) <= 4.0 + 1e-9);
        assert!(epsilon(0.3, s * 0.95, 20, 1e-5) > 4.0);
    }

    #[test]
    fn noise_has_the_asked_spread() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut v = vec![0f32; 20_000];
        add_noise(&mut v, 0.5, &mut rng);
        let sd = (v.iter().map(|x| (x * x) as f64).sum::<f64>() / v.len() as f64).sqrt();
        assert!((sd - 0.5).abs() < 0.02, "{sd}");
    }
}
