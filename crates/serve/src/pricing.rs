//! The two costs every response carries: what it cost here (measured compute seconds × this
//! machine's price per hour, plus energy) and what the reference hosted model would have charged
//! for the same text (its catalog price × tokens counted with its own tokenizer).

use crate::error::ApiError;
use frugal_cost::catalog::{Catalog, ModelPrice};
use frugal_cost::hardware::{Energy, Profiles};
use frugal_cost::request::{Billing, HostedCost, Tokens};

/// Prices in force for this server.
pub struct Pricing {
    /// Hosted model that chat and text completions are compared with.
    pub reference: ModelPrice,
    /// Hosted model that embeddings are compared with.
    pub embed_reference: ModelPrice,
    pub usd_per_hour: f64,
    pub watts: f64,
    pub energy: Energy,
    /// How the machine's price was obtained, for `/metrics` and the logs.
    pub price_basis: String,
    /// What prices the cascade's upstream answers (its `price_as`), when not the reference.
    pub upstream: Option<ModelPrice>,
    /// How hosted requests are billed (cached input, batch API, reasoning tokens).
    pub billing: Billing,
}

impl Pricing {
    /// Looks the references up in the catalog; an unknown name is an error with near matches.
    pub fn new(
        catalog: &Catalog,
        profiles: &Profiles,
        reference: &str,
        embed_reference: &str,
        usd_per_hour: Option<f64>,
        billing: Billing,
    ) -> Result<Pricing, String> {
        billing.check()?;
        let get = |name: &str, flag: &str| -> Result<ModelPrice, String> {
            let p = catalog.get(name).map_err(|e| format!("{flag}: {e}"))?;
            if !p.per_token() {
                return Err(format!(
                    "{flag} {name}: a local model has no hosted price; name a hosted model (frugal tokens --list)"
                ));
            }
            Ok(p.clone())
        };
        let me = profiles.this_machine(usd_per_hour);
        Ok(Pricing {
            reference: get(reference, "--reference")?,
            embed_reference: get(embed_reference, "--embed-reference")?,
            usd_per_hour: me.usd_per_hour,
            watts: me.watts,
            energy: profiles.energy.clone(),
            price_basis: me.price_basis,
            upstream: None,
            billing,
        })
    }

    /// Prices the router's upstream answers as `name` (a hosted catalog model).
    pub fn set_upstream(&mut self, catalog: &Catalog, name: &str) -> Result<(), String> {
        let p = catalog
            .get(name)
            .map_err(|e| format!("--route: upstream.price_as: {e}"))?;
        if !p.per_token() {
            return Err(format!(
                "--route: upstream.price_as `{name}` is a local model; name a hosted model (frugal tokens --list)"
            ));
        }
        self.upstream = Some(p.clone());
        Ok(())
    }

    /// What `price` charges for a response whose `usage` the provider reported (any shape
    /// `frugal_cost::usage::response_usage` reads; its cached tokens win over this server's
    /// cached share); `None` when it reported no tokens.
    pub fn reported_usd(&self, price: &ModelPrice, usage: &serde_json::Value) -> Option<f64> {
        let (mut u, _) = frugal_cost::usage::response_usage(usage).ok()?;
        if u.input + u.output == 0 {
            return None;
        }
        if u.cached_input == 0 {
            u.cached_input = self
                .billing
                .usage(
                    price,
                    Tokens {
                        input: u.input,
                        output: u.output,
                    },
                )
                .cached_input;
        }
        u.cached_input = u.cached_input.min(u.input);
        HostedCost::bill(price, u, self.billing.batch).map(|c| c.usd)
    }

    /// USD for `secs` of this machine: its hourly price plus the energy drawn.
    pub fn local_usd(&self, secs: f64) -> f64 {
        let kwh = self.watts * secs * self.energy.pue / 3.6e6;
        secs * self.usd_per_hour / 3600.0 + kwh * self.energy.usd_per_kwh
    }

    /// What `price` charges for `input` text in and `output` text out, billed as this server's
    /// billing says.
    pub fn hosted_usd(
        &self,
        price: &ModelPrice,
        input: &str,
        output: &str,
    ) -> Result<f64, ApiError> {
        let count = |t: &str| {
            frugal_cost::text::count_tokens(&price.tokenizer, t)
                .map(|(n, _)| n)
                .map_err(|e| ApiError::internal(format!("counting reference tokens: {e}")))
        };
        let t = Tokens {
            input: count(input)?,
            output: count(output)?,
        };
        Ok(self.billing.cost(price, t).map_or(0.0, |c| c.usd))
    }
}

/// Chat messages as the reference tokenizer sees them: OpenAI's documented accounting of 3 tokens
/// of framing per message and 3 to prime the reply is approximated by the role names and
/// separators in the text.
pub fn chat_text(messages: &[(String, String)]) -> String {
    let mut s = String::new();
    for (role, content) in messages {
        s.push_str(role);
        s.push('\n');
        s.push_str(content);
        s.push('\n');
    }
    s.push_str("assistant\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstreams_reported_usage_is_billed_as_reported() {
        let p = Pricing::new(
            &Catalog::builtin(),
            &Profiles::builtin(),
            "gpt-4o",
            "text-embedding-3-small",
            None,
            Billing::default(),
        )
        .unwrap();
        let usage = serde_json::json!({"prompt_tokens": 1000, "completion_tokens": 100,
            "completion_tokens_details": {"reasoning_tokens": 40}});
        let usd = p.reported_usd(&p.reference, &usage).unwrap();
        // Completion tokens already include reasoning: 1000 × $2.5 + 100 × $10, per 1M.
        assert!((usd - (2500.0 + 1000.0) / 1e6).abs() < 1e-15);
        assert_eq!(p.reported_usd(&p.reference, &serde_json::Value::Null), None);
        assert!(p
            .reported_usd(&p.reference, &serde_json::json!({"prompt_tokens": -1}))
            .is_none());
    }
}
