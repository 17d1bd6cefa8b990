//! The cost of one request: hosted models by their price per token, local models by measured
//! throughput turned into machine time, energy and carbon. Every result keeps its inputs so
//! `--explain` can print the formula behind the number.

use crate::catalog::ModelPrice;
use crate::hardware::Energy;
use serde::Serialize;

/// Tokens in and out of one request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tokens {
    pub input: usize,
    pub output: usize,
}

/// A hosted model's cost for one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostedCost {
    pub usd: f64,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

impl HostedCost {
    /// USD = input tokens × input price / 1M + output tokens × output price / 1M.
    pub fn of(price: &ModelPrice, t: Tokens) -> Option<HostedCost> {
        let (i, o) = (price.input_usd_per_mtok?, price.output_usd_per_mtok?);
        Some(HostedCost {
            usd: t.input as f64 * i / 1e6 + t.output as f64 * o / 1e6,
            input_usd_per_mtok: i,
            output_usd_per_mtok: o,
        })
    }

    /// The formula with its numbers.
    pub fn explain(&self, t: Tokens) -> String {
        format!(
            "{} in × ${}/1M + {} out × ${}/1M = ${:.6}",
            t.input, self.input_usd_per_mtok, t.output, self.output_usd_per_mtok, self.usd
        )
    }
}

/// Measured speed of a local model on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Speed {
    pub prompt_tokens_per_s: f64,
    pub tokens_per_s: f64,
}

/// A local model's cost for one request on a machine of `usd_per_hour` drawing `watts`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalCost {
    pub seconds: f64,
    pub machine_usd: f64,
    pub kwh: f64,
    pub energy_usd: f64,
    pub kg_co2: f64,
    pub usd: f64,
    pub usd_per_hour: f64,
    pub watts: f64,
    /// True when `watts` was measured (RAPL counters) rather than taken from a profile.
    pub measured_energy: bool,
}

impl LocalCost {
    /// seconds = input / prompt speed + output / generation speed; machine USD = seconds ×
    /// $/hour / 3600; kWh = watts × seconds × PUE / 3.6e6; USD = machine + kWh × $/kWh.
    /// `measured` says whether `watts` came from energy counters or from a profile.
    pub fn of(
        speed: Speed,
        t: Tokens,
        usd_per_hour: f64,
        watts: f64,
        energy: &Energy,
        measured: bool,
    ) -> LocalCost {
        let seconds = t.input as f64 / speed.prompt_tokens_per_s.max(1e-9)
            + t.output as f64 / speed.tokens_per_s.max(1e-9);
        let machine_usd = seconds * usd_per_hour / 3600.0;
        let kwh = watts * seconds * energy.pue / 3.6e6;
        let energy_usd = kwh * energy.usd_per_kwh;
        LocalCost {
            seconds,
            machine_usd,
            kwh,
            energy_usd,
            kg_co2: kwh * energy.kg_co2_per_kwh,
            usd: machine_usd + energy_usd,
            usd_per_hour,
            watts,
            measured_energy: measured,
        }
    }

    /// The formula with its numbers.
    pub fn explain(&self, t: Tokens, speed: Speed, pue: f64, usd_per_kwh: f64) -> String {
        let how = if self.measured_energy {
            "measured, RAPL"
        } else {
            "estimated, profile"
        };
        format!(
            "time {} in / {:.1} tok/s + {} out / {:.1} tok/s = {:.4} s; machine {:.4} s × ${}/h / 3600 = ${:.8}; energy {:.1} W ({how}) × {:.4} s × PUE {pue} = {:.3e} kWh × ${usd_per_kwh}/kWh = ${:.8}; total ${:.8}",
            t.input,
            speed.prompt_tokens_per_s,
            t.output,
            speed.tokens_per_s,
            self.seconds,
            self.seconds,
            self.usd_per_hour,
            self.machine_usd,
            self.watts,
            self.seconds,
            self.kwh,
            self.energy_usd,
            self.usd
        )
    }
}

/// Savings of `cost` against `reference`: 1 − cost / reference (0.95 = 95% cheaper).
pub fn savings(cost: f64, reference: f64) -> Option<f64> {
    (reference > 0.0).then(|| 1.0 - cost / reference)
}

/// A figure people quote for what LLM text costs, to check against computed prices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quote {
    pub words: usize,
    pub text: &'static str,
    pub low_usd: f64,
    pub high_usd: f64,
}

/// The folklore frugal checks: per 100 words "1 to 10 cents, up to 50 cents for GPT-4"; per
/// 1,000 words "10 cents to $5".
pub const QUOTES: [Quote; 2] = [
    Quote {
        words: 100,
        text: "1 to 10 cents per 100 words, up to 50 cents for GPT-4",
        low_usd: 0.01,
        high_usd: 0.50,
    },
    Quote {
        words: 1000,
        text: "10 cents to $5 per 1,000 words",
        low_usd: 0.10,
        high_usd: 5.0,
    },
];

/// Whether a quote holds for computed per-request costs ranging over `[lo, hi]` USD.
pub fn verdict(q: &Quote, lo: f64, hi: f64) -> String {
    let range = format!("${lo:.5}–${hi:.4}");
    if hi < q.low_usd {
        format!(
            "does not hold today: catalog prices give {range}, all below the quote's low end of ${} (the cheapest {:.0}× below it)",
            q.low_usd,
            q.low_usd / lo.max(1e-12)
        )
    } else if lo > q.high_usd {
        format!("does not hold: catalog prices give {range}, above the quote")
    } else if lo >= q.low_usd && hi <= q.high_usd {
        format!("holds: catalog prices give {range}, inside the quote")
    } else {
        format!("holds in part: catalog prices give {range}, overlapping the quote")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::hardware::Profiles;

    #[test]
    fn hosted_arithmetic() {
        let c = Catalog::builtin();
        // gpt-4 (8k): $30 in, $60 out per 1M; 1,000 in + 500 out = 0.03 + 0.03 = $0.06.
        let cost = HostedCost::of(
            c.get("gpt-4").unwrap(),
            Tokens {
                input: 1000,
                output: 500,
            },
        )
        .unwrap();
        assert!((cost.usd - 0.06).abs() < 1e-12);
        assert!(cost
            .explain(Tokens {
                input: 1000,
                output: 500
            })
            .contains("$0.060000"));
        assert!(HostedCost::of(
            c.get("smollm2").unwrap(),
            Tokens {
                input: 1,
                output: 1
            }
        )
        .is_none());
    }

    #[test]
    fn local_arithmetic() {
        let e = Profiles::builtin().energy;
        // 100 in at 400 tok/s + 200 out at 100 tok/s = 2.25 s; at $3.6/h that is $0.00225.
        let speed = Speed {
            prompt_tokens_per_s: 400.0,
            tokens_per_s: 100.0,
        };
        let c = LocalCost::of(
            speed,
            Tokens {
                input: 100,
                output: 200,
            },
            3.6,
            100.0,
            &e,
            false,
        );
        assert!((c.seconds - 2.25).abs() < 1e-12);
        assert!((c.machine_usd - 0.00225).abs() < 1e-12);
        // 100 W × 2.25 s = 225 J; × PUE / 3.6e6 J/kWh.
        assert!((c.kwh - 225.0 * e.pue / 3.6e6).abs() < 1e-15);
        assert!((c.usd - c.machine_usd - c.kwh * e.usd_per_kwh).abs() < 1e-15);
        let measured = LocalCost::of(
            speed,
            Tokens {
                input: 100,
                output: 200,
            },
            3.6,
            50.0,
            &e,
            true,
        );
        // 50 W × 2.25 s = 112.5 J.
        assert!((measured.kwh - 112.5 * e.pue / 3.6e6).abs() < 1e-15 && measured.measured_energy);
    }

    #[test]
    fn savings_and_verdicts() {
        assert!((savings(1.0, 20.0).unwrap() - 0.95).abs() < 1e-12);
        assert_eq!(savings(1.0, 0.0), None);
        let q = &QUOTES[0];
        assert!(verdict(q, 0.0001, 0.001).starts_with("does not hold today"));
        assert!(verdict(q, 0.02, 0.3).starts_with("holds:"));
        assert!(verdict(q, 0.001, 0.3).starts_with("holds in part"));
        assert!(verdict(q, 0.6, 0.9).starts_with("does not hold:"));
    }
}
