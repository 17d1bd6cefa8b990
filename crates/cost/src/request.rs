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

/// How hidden reasoning ("thinking") tokens are added to a request, for models that bill them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reasoning {
    /// None counted (the default).
    #[default]
    None,
    /// This many reasoning tokens per request.
    Tokens(usize),
    /// This many reasoning tokens per visible output token.
    PerOutputToken(f64),
}

/// How a hosted request is billed beyond plain tokens in and out: the share of the prompt read
/// from the provider's cache, the batch API, hidden reasoning tokens. One value serves `cost`,
/// `report`, `serve` and `tco`, so every command prices a request the same way.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Billing {
    /// Share of input tokens read from the provider's prompt cache, 0–1.
    pub cached_share: f64,
    /// Sent through the provider's batch API (its discounted prices).
    pub batch: bool,
    pub reasoning: Reasoning,
}

impl Billing {
    /// Checks the values: a share outside 0–1 or a negative or non-finite ratio is an error
    /// naming the field.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.cached_share) {
            return Err(format!(
                "cached_share {} must be a share of the input tokens between 0 and 1",
                self.cached_share
            ));
        }
        if let Reasoning::PerOutputToken(r) = self.reasoning {
            if !(r.is_finite() && r >= 0.0) {
                return Err(format!(
                    "reasoning ratio {r} must be 0 or more reasoning tokens per output token"
                ));
            }
        }
        Ok(())
    }

    /// The tokens `price` bills for `t` visible tokens in and out under this billing: cached
    /// input as the share says, reasoning tokens only for models that bill them.
    pub fn usage(&self, price: &ModelPrice, t: Tokens) -> Usage {
        let reasoning = match (price.reasoning_usd_per_mtok, self.reasoning) {
            (None, _) | (_, Reasoning::None) => 0,
            (Some(_), Reasoning::Tokens(n)) => n,
            (Some(_), Reasoning::PerOutputToken(r)) => (t.output as f64 * r).round() as usize,
        };
        Usage {
            input: t.input,
            cached_input: (t.input as f64 * self.cached_share).round() as usize,
            output: t.output,
            reasoning,
        }
    }

    /// What `price` charges for `t` under this billing.
    pub fn cost(&self, price: &ModelPrice, t: Tokens) -> Option<HostedCost> {
        HostedCost::bill(price, self.usage(price, t), self.batch)
    }

    /// A short description, e.g. "batch API, 50% of input cached, 2000 reasoning tokens".
    pub fn describe(&self) -> String {
        let mut parts = vec![if self.batch {
            "batch API"
        } else {
            "standard API"
        }
        .to_string()];
        if self.cached_share > 0.0 {
            parts.push(format!(
                "{:.0}% of input read from the prompt cache",
                self.cached_share * 100.0
            ));
        }
        match self.reasoning {
            Reasoning::None => {}
            Reasoning::Tokens(n) => parts.push(format!(
                "{n} reasoning tokens a request (models that bill them)"
            )),
            Reasoning::PerOutputToken(r) => parts.push(format!(
                "{r} reasoning tokens per output token (models that bill them)"
            )),
        }
        parts.join(", ")
    }
}

/// Tokens of one request as a provider bills them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Usage {
    /// All input tokens, cached ones included.
    pub input: usize,
    /// Of `input`, the tokens read from the prompt cache.
    pub cached_input: usize,
    /// Output tokens (as a usage export reports them, reasoning included).
    pub output: usize,
    /// Hidden reasoning tokens billed on top of `output`.
    pub reasoning: usize,
}

/// A hosted model's cost for one request, with the rates applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostedCost {
    pub usd: f64,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    /// Rate applied to cached input tokens.
    pub cached_input_usd_per_mtok: f64,
    /// Rate applied to reasoning tokens.
    pub reasoning_usd_per_mtok: f64,
    /// Fixed charge per request.
    pub request_usd: f64,
    pub usage: Usage,
    pub batch: bool,
    /// Where a price was missing and a fallback used, said in words.
    pub notes: Vec<String>,
}

impl HostedCost {
    /// USD = input tokens × input price / 1M + output tokens × output price / 1M.
    pub fn of(price: &ModelPrice, t: Tokens) -> Option<HostedCost> {
        Billing::default().cost(price, t)
    }

    /// USD = uncached input × input price + cached input × cached price + output × output
    /// price + reasoning × reasoning price (all per 1M tokens) + the per-request charge, at the
    /// batch prices when `batch`. A price the catalog lacks falls back to the standard one, said
    /// in `notes`. `None` for a model not billed per token.
    pub fn bill(price: &ModelPrice, u: Usage, batch: bool) -> Option<HostedCost> {
        let (i, o) = (price.input_usd_per_mtok?, price.output_usd_per_mtok?);
        let mut notes = vec![];
        let (bi, bo) = match (
            batch,
            price.batch_input_usd_per_mtok,
            price.batch_output_usd_per_mtok,
        ) {
            (true, Some(bi), Some(bo)) => (bi, bo),
            (true, _, _) => {
                notes.push(format!(
                    "no batch price known for {}: priced at its standard rates",
                    price.name
                ));
                (i, o)
            }
            (false, _, _) => (i, o),
        };
        let cached_rate = if u.cached_input == 0 {
            bi
        } else {
            let batch_cached = price.batch_cached_input_usd_per_mtok.filter(|_| batch);
            match (batch_cached, price.cached_input_usd_per_mtok) {
                (Some(c), _) => c,
                (None, Some(c)) => {
                    if batch && bi != i {
                        notes.push(format!(
                            "no batch price for cached input known for {}: its standard cached rate",
                            price.name
                        ));
                    }
                    c
                }
                (None, None) => {
                    notes.push(format!(
                        "no cached-input price known for {}: cached tokens priced as input",
                        price.name
                    ));
                    bi
                }
            }
        };
        // Reasoning tokens are output tokens: at the model's reasoning rate, or its (batch)
        // output rate where that rate is the output rate.
        let reasoning_rate = match price.reasoning_usd_per_mtok {
            Some(r) if r != o => r,
            _ => bo,
        };
        let request_usd = price.usd_per_request.unwrap_or(0.0);
        let uncached = u.input.saturating_sub(u.cached_input);
        let usd = (uncached as f64 * bi
            + u.cached_input.min(u.input) as f64 * cached_rate
            + u.output as f64 * bo
            + u.reasoning as f64 * reasoning_rate)
            / 1e6
            + request_usd;
        Some(HostedCost {
            usd,
            input_usd_per_mtok: bi,
            output_usd_per_mtok: bo,
            cached_input_usd_per_mtok: cached_rate,
            reasoning_usd_per_mtok: reasoning_rate,
            request_usd,
            usage: u,
            batch,
            notes,
        })
    }

    /// The formula with its numbers.
    pub fn explain(&self) -> String {
        let u = &self.usage;
        let mut parts = vec![format!(
            "{} in × ${}/1M",
            u.input.saturating_sub(u.cached_input),
            self.input_usd_per_mtok
        )];
        if u.cached_input > 0 {
            parts.push(format!(
                "{} cached in × ${}/1M",
                u.cached_input, self.cached_input_usd_per_mtok
            ));
        }
        parts.push(format!(
            "{} out × ${}/1M",
            u.output, self.output_usd_per_mtok
        ));
        if u.reasoning > 0 {
            parts.push(format!(
                "{} reasoning × ${}/1M",
                u.reasoning, self.reasoning_usd_per_mtok
            ));
        }
        if self.request_usd > 0.0 {
            parts.push(format!("${} per request", self.request_usd));
        }
        let mut s = format!(
            "{}{} = ${:.6}",
            parts.join(" + "),
            if self.batch { " (batch prices)" } else { "" },
            self.usd
        );
        for n in &self.notes {
            s.push_str(&format!("; {n}"));
        }
        s
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

/// Hosted models people pay for today, priced by `frugal cost` beside frugal's own catalog when
/// the price map is loaded: the 2025 flagships the folklore is checked against again, their
/// smaller siblings, and each provider's newest model in the pinned map.
pub const FEATURED: [&str; 11] = [
    "gpt-5",
    "gpt-5-mini",
    "gpt-4.1",
    "o3",
    "gpt-5.6-sol",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "claude-sonnet-5-5",
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-3.8-flash",
];

/// A dollar amount with three significant figures ($0.00123, $0.0241, $1.50).
pub fn usd(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("${x}");
    }
    let decimals = (2 - x.abs().log10().floor() as i32).clamp(2, 12) as usize;
    format!("${x:.decimals$}")
}

/// Whether a quote holds for computed per-request costs ranging over `[lo, hi]` USD.
pub fn verdict(q: &Quote, lo: f64, hi: f64) -> String {
    let range = format!("{}–{}", usd(lo), usd(hi));
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
        assert!(cost.explain().contains("$0.060000"), "{}", cost.explain());
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
    fn dollars_keep_three_significant_figures() {
        assert_eq!(usd(0.00122625), "$0.00123");
        assert_eq!(usd(0.0024), "$0.00240");
        assert_eq!(usd(1.5), "$1.50");
        assert_eq!(usd(123.456), "$123.46");
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

    fn map_catalog() -> Catalog {
        Catalog::builtin().with_price_map(crate::price_map::tests::fixture())
    }

    #[test]
    fn cached_batch_and_reasoning_tokens_by_hand() {
        let c = map_catalog();
        let gpt5 = c.get("gpt-5").unwrap();
        let t = Tokens {
            input: 1000,
            output: 500,
        };
        // Plain: 1000 × $1.25/1M + 500 × $10/1M = 0.00125 + 0.005.
        assert!((HostedCost::of(gpt5, t).unwrap().usd - 0.00625).abs() < 1e-15);
        // 40% cached: 600 × 1.25 + 400 × 0.125 + 500 × 10, per 1M.
        let cached = Billing {
            cached_share: 0.4,
            ..Billing::default()
        };
        let cost = cached.cost(gpt5, t).unwrap();
        assert!((cost.usd - (600.0 * 1.25 + 400.0 * 0.125 + 5000.0) / 1e6).abs() < 1e-15);
        assert!(
            cost.explain().contains("400 cached in × $0.125/1M"),
            "{}",
            cost.explain()
        );
        // Batch: the batch prices, 1000 × 0.625 + 500 × 5.
        let batch = Billing {
            batch: true,
            ..Billing::default()
        };
        assert!((batch.cost(gpt5, t).unwrap().usd - (625.0 + 2500.0) / 1e6).abs() < 1e-15);
        // Reasoning: 2000 hidden tokens billed at the output rate; a model that bills none
        // (gpt-4o) is not charged for them.
        let thinking = Billing {
            reasoning: Reasoning::Tokens(2000),
            ..Billing::default()
        };
        let r = thinking.cost(gpt5, t).unwrap();
        assert!((r.usd - (1250.0 + 5000.0 + 20000.0) / 1e6).abs() < 1e-15);
        assert!(
            r.explain().contains("2000 reasoning × $10/1M"),
            "{}",
            r.explain()
        );
        let gpt4o = c.get("gpt-4o").unwrap();
        assert_eq!(thinking.usage(gpt4o, t).reasoning, 0);
        // A ratio: 1.5 reasoning tokens per output token; gemini's own reasoning rate ($12).
        let ratio = Billing {
            reasoning: Reasoning::PerOutputToken(1.5),
            ..Billing::default()
        };
        let g = ratio.cost(c.get("gemini-2.5-pro").unwrap(), t).unwrap();
        assert_eq!(g.usage.reasoning, 750);
        assert!((g.usd - (1250.0 + 5000.0 + 750.0 * 12.0) / 1e6).abs() < 1e-15);
        // A fixed charge per request.
        let p = HostedCost::of(c.get("perplexity/sonar").unwrap(), t).unwrap();
        assert!((p.usd - (1000.0 + 500.0) / 1e6 - 0.005).abs() < 1e-15);
    }

    #[test]
    fn missing_prices_fall_back_to_standard_rates_and_say_so() {
        let c = map_catalog();
        // claude-sonnet-4-5 in the fixture has a cached price but no batch prices.
        let m = c.get("claude-sonnet-4-5").unwrap();
        let t = Tokens {
            input: 1000,
            output: 100,
        };
        let b = Billing {
            batch: true,
            ..Billing::default()
        }
        .cost(m, t)
        .unwrap();
        assert_eq!(b.usd, HostedCost::of(m, t).unwrap().usd);
        assert!(b.notes[0].contains("no batch price"), "{:?}", b.notes);
        // gpt-4 (frugal's own, disagreeing with the map) has no cached price.
        let g = Billing {
            cached_share: 0.5,
            ..Billing::default()
        }
        .cost(c.get("gpt-4").unwrap(), t)
        .unwrap();
        assert!((g.usd - (1000.0 * 30.0 + 100.0 * 60.0) / 1e6).abs() < 1e-15);
        assert!(g.explain().contains("cached tokens priced as input"));
        assert!(Billing {
            cached_share: 1.5,
            ..Billing::default()
        }
        .check()
        .is_err());
        assert!(Billing {
            reasoning: Reasoning::PerOutputToken(f64::NAN),
            ..Billing::default()
        }
        .check()
        .is_err());
    }
}
