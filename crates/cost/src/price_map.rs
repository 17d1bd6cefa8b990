//! LiteLLM's public price map (`model_prices_and_context_window.json`), read as a catalog layer
//! under frugal's own entries: per-token input, output, cached-input and batch prices, reasoning
//! billing, context windows and providers for thousands of hosted models. Every imported price
//! names its origin (the map, its version and release date) and the provider page the map cites.

use crate::catalog::{Kind, Layer, ModelPrice, TokenizerSpec};
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The modes of entries priced per text token; others (images, audio, video…) are not.
const TEXT_MODES: [&str; 4] = ["chat", "completion", "responses", "embedding"];

/// A parsed price map: its entries as catalog entries, and what was left out.
#[derive(Debug, Clone)]
pub struct PriceMap {
    pub models: BTreeMap<String, ModelPrice>,
    /// e.g. "LiteLLM price map, litellm 1.110.2, released 2026-11-20".
    pub origin: String,
    /// The date its prices are taken as in force (the map's release).
    pub as_of: String,
    /// Entries not priced per text token (images, audio, video, rerank…): not imported.
    pub other_modes: usize,
    /// Text entries without a per-token price: skipped.
    pub unpriced: Vec<String>,
    /// Entries whose prices are negative, not numbers or not finite: skipped, with the reason.
    pub invalid: Vec<(String, String)>,
}

impl PriceMap {
    /// One line on what was imported and skipped, for notices and `--list --check`.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} models priced per token; skipped {} without a per-token price and {} with invalid prices; {} image/audio/other entries not priced per token",
            self.origin,
            self.models.len(),
            self.unpriced.len(),
            self.invalid.len(),
            self.other_modes
        )
    }
}

/// The civil date (YYYY-MM-DD, UTC) of a Unix time in seconds (H. Hinnant's days-from-civil
/// inverse), for dating a user's map file by its modification time.
pub fn civil_date(unix_secs: u64) -> String {
    let z = (unix_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// USD per token -> USD per 1M tokens, rounded to a billionth of a dollar so that 1.25e-6
/// reads as 1.25.
fn per_mtok(usd_per_token: f64) -> f64 {
    (usd_per_token * 1e6 * 1e9).round() / 1e9
}

/// Reads a price field: absent is `None`; anything but a finite number ≥ 0 is an error.
fn price(e: &Map<String, Value>, key: &str) -> std::result::Result<Option<f64>, String> {
    match e.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && v >= 0.0 => Ok(Some(v)),
            _ => Err(format!("{key} = {n} is not a price of 0 or more")),
        },
        Some(other) => Err(format!("{key} = {other} is not a number")),
    }
}

/// The tokenizer a provider's model counts with: OpenAI's public encodings where they apply,
/// else the stated words ratio frugal's own catalog uses for that provider.
fn tokenizer_for(name: &str, provider: &str) -> TokenizerSpec {
    let base = name.rsplit('/').next().unwrap_or(name);
    if matches!(provider, "openai" | "azure" | "text-completion-openai") {
        let o200k = [
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "gpt-6",
            "o1",
            "o3",
            "o4",
            "chatgpt-4o",
            "gpt-oss",
            "codex",
        ];
        let cl100k = [
            "gpt-4",
            "gpt-3.5",
            "gpt-35",
            "text-embedding-3",
            "text-embedding-ada",
        ];
        if o200k.iter().any(|p| base.starts_with(p)) {
            return TokenizerSpec::O200kBase;
        }
        if cl100k.iter().any(|p| base.starts_with(p)) {
            return TokenizerSpec::Cl100kBase;
        }
    }
    if crate::catalog::provider_family(provider) == "google" {
        // Google: "100 tokens is about 60-80 English words".
        return TokenizerSpec::Ratio(1.429);
    }
    // No public tokenizer: OpenAI's rule of thumb, 1 token ~ 0.75 English words.
    TokenizerSpec::Ratio(1.333)
}

/// Parses the map's JSON. `origin` names the map in every imported entry's source; `as_of` is
/// the date its prices are taken to be in force. A file that is not a JSON object is an error;
/// individual bad entries are skipped and counted.
pub fn parse(text: &str, file: &str, origin: &str, as_of: &str) -> Result<PriceMap> {
    let root: Value = serde_json::from_str(text).map_err(|e| Error::Catalog {
        file: file.to_string(),
        message: format!("not a LiteLLM price map (invalid JSON: {e})"),
    })?;
    let Value::Object(root) = root else {
        return Err(Error::Catalog {
            file: file.to_string(),
            message: "not a LiteLLM price map: expected a JSON object of model -> prices".into(),
        });
    };
    let mut map = PriceMap {
        models: BTreeMap::new(),
        origin: origin.to_string(),
        as_of: as_of.to_string(),
        other_modes: 0,
        unpriced: vec![],
        invalid: vec![],
    };
    let mut aliases: Vec<(String, String)> = vec![];
    for (name, entry) in &root {
        if name == "sample_spec" {
            continue;
        }
        let Value::Object(e) = entry else {
            map.invalid
                .push((name.clone(), "the entry is not a JSON object".into()));
            continue;
        };
        if let Some(target) = e.get("alias_of").and_then(Value::as_str) {
            aliases.push((name.clone(), target.to_string()));
            continue;
        }
        let mode = e.get("mode").and_then(Value::as_str).unwrap_or("chat");
        if !TEXT_MODES.contains(&mode) {
            map.other_modes += 1;
            continue;
        }
        match entry_price(name, e, mode, origin, as_of) {
            Ok(Some(m)) => {
                map.models.insert(name.clone(), m);
            }
            Ok(None) => map.unpriced.push(name.clone()),
            Err(why) => map.invalid.push((name.clone(), why)),
        }
    }
    // `alias_of` entries (e.g. "claude-sonnet-latest") take their target's prices.
    for (alias, target) in aliases {
        match map.models.get(&target).cloned() {
            Some(mut m) => {
                m.source = format!("{} (alias of {target})", m.source);
                m.name = alias.clone();
                map.models.insert(alias, m);
            }
            None => map.unpriced.push(alias),
        }
    }
    Ok(map)
}

fn entry_price(
    name: &str,
    e: &Map<String, Value>,
    mode: &str,
    origin: &str,
    as_of: &str,
) -> std::result::Result<Option<ModelPrice>, String> {
    let input = price(e, "input_cost_per_token")?;
    let mut output = price(e, "output_cost_per_token")?;
    if mode == "embedding" && input.is_some() && output.is_none() {
        output = Some(0.0);
    }
    let (Some(input), Some(output)) = (input, output) else {
        return Ok(None);
    };
    let opt = |k: &str| price(e, k).map(|p| p.map(per_mtok));
    let supports_reasoning = e.get("supports_reasoning").and_then(Value::as_bool) == Some(true);
    let reasoning = match opt("output_cost_per_reasoning_token")? {
        Some(r) => Some(r),
        None if supports_reasoning => Some(per_mtok(output)),
        None => None,
    };
    let provider = e
        .get("litellm_provider")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let context = ["max_input_tokens", "max_tokens"]
        .iter()
        .find_map(|k| e.get(*k).and_then(Value::as_u64))
        .filter(|&c| c > 0);
    let source = match e.get("source").and_then(Value::as_str) {
        Some(s) => format!("{origin}; the map cites {s}"),
        None => origin.to_string(),
    };
    let deprecation = e.get("deprecation_date").and_then(Value::as_str).map(|d| {
        match e.get("successor_model").and_then(Value::as_str) {
            Some(s) => format!("{d} (successor: {s})"),
            None => d.to_string(),
        }
    });
    Ok(Some(ModelPrice {
        name: name.to_string(),
        tokenizer: tokenizer_for(name, &provider),
        provider,
        kind: Kind::Hosted,
        input_usd_per_mtok: Some(per_mtok(input)),
        output_usd_per_mtok: Some(per_mtok(output)),
        cached_input_usd_per_mtok: opt("cache_read_input_token_cost")?,
        batch_input_usd_per_mtok: opt("input_cost_per_token_batches")?,
        batch_output_usd_per_mtok: opt("output_cost_per_token_batches")?,
        batch_cached_input_usd_per_mtok: opt("cache_read_input_token_cost_batches")?,
        reasoning_usd_per_mtok: reasoning,
        usd_per_request: price(e, "input_cost_per_request")?,
        context_window: context,
        source,
        as_of: as_of.to_string(),
        from: origin.to_string(),
        layer: Layer::PriceMap,
        aliases: vec![],
        deprecation,
        filled_from_map: vec![],
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::Catalog;

    /// A small map in LiteLLM's shape: real field names, made-up models and prices.
    pub(crate) const FIXTURE: &str = r#"{
      "sample_spec": {"input_cost_per_token": 0.0, "mode": "one of: chat, embedding"},
      "gpt-5": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1.25e-06,
                "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-07,
                "input_cost_per_token_batches": 6.25e-07, "output_cost_per_token_batches": 5e-06,
                "supports_reasoning": true, "max_input_tokens": 272000,
                "deprecation_date": "2026-12-11", "successor_model": "gpt-5.6-sol",
                "source": "https://developers.openai.com/api/docs/pricing"},
      "gpt-4o": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2.5e-06,
                 "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-06,
                 "input_cost_per_token_batches": 1.25e-06, "output_cost_per_token_batches": 5e-06},
      "gpt-4": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 3.1e-05,
                "output_cost_per_token": 6e-05},
      "claude-sonnet-4-5": {"litellm_provider": "anthropic", "mode": "chat",
                "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                "cache_read_input_token_cost": 3e-07, "supports_reasoning": true},
      "claude-sonnet-latest": {"alias_of": "claude-sonnet-4-5"},
      "gemini-2.5-pro": {"litellm_provider": "vertex_ai-language-models", "mode": "chat",
                "input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
                "output_cost_per_reasoning_token": 1.2e-05},
      "perplexity/sonar": {"litellm_provider": "perplexity", "input_cost_per_token": 1e-06,
                "output_cost_per_token": 1e-06, "input_cost_per_request": 0.005},
      "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04},
      "no-price": {"litellm_provider": "x", "mode": "chat", "max_input_tokens": 100},
      "half-price": {"litellm_provider": "x", "mode": "chat", "input_cost_per_token": 1e-06},
      "negative": {"litellm_provider": "x", "mode": "chat", "input_cost_per_token": -1e-06,
                "output_cost_per_token": 1e-06},
      "text-price": {"litellm_provider": "x", "mode": "chat", "input_cost_per_token": "cheap",
                "output_cost_per_token": 1e-06},
      "embed": {"litellm_provider": "openai", "mode": "embedding", "input_cost_per_token": 2e-08}
    }"#;

    pub(crate) fn fixture() -> PriceMap {
        parse(FIXTURE, "fixture.json", "test map", "2026-11-20").unwrap()
    }

    #[test]
    fn imports_per_token_prices_and_counts_what_it_skips() {
        let m = fixture();
        let gpt5 = &m.models["gpt-5"];
        assert_eq!(gpt5.input_usd_per_mtok, Some(1.25));
        assert_eq!(gpt5.output_usd_per_mtok, Some(10.0));
        assert_eq!(gpt5.cached_input_usd_per_mtok, Some(0.125));
        assert_eq!(gpt5.batch_output_usd_per_mtok, Some(5.0));
        assert_eq!(gpt5.reasoning_usd_per_mtok, Some(10.0));
        assert_eq!(gpt5.context_window, Some(272000));
        assert_eq!(gpt5.tokenizer, TokenizerSpec::O200kBase);
        assert_eq!(gpt5.layer, Layer::PriceMap);
        assert!(gpt5.source.contains("test map") && gpt5.source.contains("developers.openai.com"));
        assert_eq!(gpt5.as_of, "2026-11-20");
        assert!(gpt5.deprecation.as_deref().unwrap().contains("gpt-5.6-sol"));
        assert_eq!(
            m.models["gemini-2.5-pro"].reasoning_usd_per_mtok,
            Some(12.0)
        );
        assert_eq!(
            m.models["gemini-2.5-pro"].tokenizer,
            TokenizerSpec::Ratio(1.429)
        );
        assert_eq!(
            m.models["claude-sonnet-4-5"].tokenizer,
            TokenizerSpec::Ratio(1.333)
        );
        assert_eq!(m.models["gpt-4o"].reasoning_usd_per_mtok, None);
        assert_eq!(m.models["perplexity/sonar"].usd_per_request, Some(0.005));
        assert_eq!(m.models["embed"].output_usd_per_mtok, Some(0.0));
        assert_eq!(
            m.models["claude-sonnet-latest"].input_usd_per_mtok,
            Some(3.0)
        );
        assert_eq!(m.other_modes, 1);
        let mut unpriced = m.unpriced.clone();
        unpriced.sort();
        assert_eq!(unpriced, ["half-price", "no-price"]);
        let invalid: Vec<&str> = m.invalid.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(invalid, ["negative", "text-price"]);
        assert!(m.invalid[0].1.contains("input_cost_per_token"));
        assert!(m
            .summary()
            .contains("skipped 2 without a per-token price and 2 with invalid"));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        // 2026-11-20T04:05:34Z, the pinned map's upload time.
        assert_eq!(civil_date(1_795_147_534), "2026-11-20");
        assert_eq!(civil_date(951_782_400), "2000-02-29");
    }

    #[test]
    fn not_a_map_is_an_error_naming_the_file() {
        for bad in ["[1, 2]", "{not json", ""] {
            let e = parse(bad, "prices.json", "o", "2026-01-01")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("prices.json") && e.contains("LiteLLM price map"),
                "{e}"
            );
        }
    }

    #[test]
    fn frugal_entries_win_and_the_map_prices_the_rest() {
        let c = Catalog::builtin().with_price_map(fixture());
        // frugal's own gpt-4 ($30 in) wins over the map's (a made-up $31).
        let gpt4 = c.get("gpt-4").unwrap();
        assert_eq!(
            (gpt4.input_usd_per_mtok, gpt4.layer),
            (Some(30.0), Layer::Own)
        );
        // ... and the map does not fill it in, since the two disagree.
        assert!(gpt4.filled_from_map.is_empty());
        // Where both agree (gpt-4o), the map fills in cached and batch prices.
        let gpt4o = c.get("gpt-4o").unwrap();
        assert_eq!(gpt4o.layer, Layer::Own);
        assert_eq!(gpt4o.cached_input_usd_per_mtok, Some(1.25));
        assert!(gpt4o.filled_from_map.contains(&"batch_output_usd_per_mtok"));
        // The map's own models resolve, also provider-prefixed and as dated snapshots.
        for name in [
            "gpt-5",
            "openai/gpt-5",
            "GPT-5",
            "gpt-5-2099-01-01",
            "gpt-5@20990101",
        ] {
            assert_eq!(c.get(name).unwrap().name, "gpt-5", "{name}");
        }
        assert_eq!(
            c.get("anthropic/claude-sonnet-4-5").unwrap().name,
            "claude-sonnet-4-5"
        );
        assert_eq!(
            c.get("google/gemini-2.5-pro").unwrap().name,
            "gemini-2.5-pro"
        );
        // A prefix naming another provider does not resolve to this one.
        assert!(c.get("anthropic/gpt-5").is_err());
        // Unknown names are errors with near matches from both layers, never $0.
        let e = c.get("gpt-5x").unwrap_err().to_string();
        assert!(e.contains("did you mean") && e.contains("gpt-5"), "{e}");
        let e = c.get("claude-sonet-4-5").unwrap_err().to_string();
        assert!(e.contains("claude-sonnet-4-5"), "{e}");
        // Overlaps: frugal's entries the map also prices.
        let names: Vec<&str> = c.overlaps().iter().map(|(a, _)| a.name.as_str()).collect();
        assert!(
            names.contains(&"gpt-4") && names.contains(&"gpt-4o"),
            "{names:?}"
        );
    }

    #[test]
    fn without_a_map_the_error_says_only_frugals_catalog_was_searched() {
        let e = Catalog::builtin().get("gpt-5").unwrap_err().to_string();
        assert!(e.contains("price map is not loaded"), "{e}");
    }
}
