//! The price catalog: per model the provider, USD per 1M input and output tokens, context window,
//! tokenizer, and where the price comes from and when it was in force. Data, not code: the
//! built-in `catalog.toml` plus the user's files layered on top.

use crate::price_map::PriceMap;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

const BUILTIN: &str = include_str!("../catalog.toml");

/// Hosted API (priced per token) or a local model (priced by measured throughput).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Hosted,
    Local,
}

/// How a model's tokens are counted.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerSpec {
    O200kBase,
    Cl100kBase,
    /// No public tokenizer: tokens = words × this ratio (an estimate, reported as such).
    Ratio(f64),
    /// A frugal asset, counted with its own tokenizer by the model runtime.
    Asset(String),
}

impl TokenizerSpec {
    fn parse(s: &str) -> std::result::Result<TokenizerSpec, String> {
        Ok(match s {
            "o200k_base" => TokenizerSpec::O200kBase,
            "cl100k_base" => TokenizerSpec::Cl100kBase,
            _ if s.starts_with("ratio:") => {
                let r: f64 = s[6..].parse().map_err(|_| format!("'{s}': the ratio is not a number"))?;
                if !(r.is_finite() && r > 0.0) {
                    return Err(format!("'{s}': the ratio must be a positive number of tokens per word"));
                }
                TokenizerSpec::Ratio(r)
            }
            _ if s.starts_with("asset:") && s.len() > 6 => TokenizerSpec::Asset(s[6..].to_string()),
            _ => {
                return Err(format!(
                    "unknown tokenizer '{s}'; use o200k_base, cl100k_base, ratio:<tokens per word> or asset:<name>"
                ))
            }
        })
    }

    /// The catalog spelling, e.g. `o200k_base` or `ratio:1.333`.
    pub fn name(&self) -> String {
        match self {
            TokenizerSpec::O200kBase => "o200k_base".into(),
            TokenizerSpec::Cl100kBase => "cl100k_base".into(),
            TokenizerSpec::Ratio(r) => format!("ratio:{r}"),
            TokenizerSpec::Asset(a) => format!("asset:{a}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    provider: String,
    kind: Kind,
    #[serde(default)]
    input_usd_per_mtok: Option<f64>,
    #[serde(default)]
    output_usd_per_mtok: Option<f64>,
    #[serde(default)]
    cached_input_usd_per_mtok: Option<f64>,
    #[serde(default)]
    batch_input_usd_per_mtok: Option<f64>,
    #[serde(default)]
    batch_output_usd_per_mtok: Option<f64>,
    #[serde(default)]
    batch_cached_input_usd_per_mtok: Option<f64>,
    #[serde(default)]
    reasoning_usd_per_mtok: Option<f64>,
    #[serde(default)]
    usd_per_request: Option<f64>,
    #[serde(default)]
    aliases: Vec<String>,
    context_window: u64,
    tokenizer: String,
    source: String,
    as_of: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    models: BTreeMap<String, RawModel>,
}

/// Which layer of the catalog an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// frugal's own sourced catalog, or the user's catalog files on top of it.
    Own,
    /// The imported price map (LiteLLM's), under frugal's own entries.
    PriceMap,
}

/// One catalog entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPrice {
    pub name: String,
    pub provider: String,
    pub kind: Kind,
    /// USD per 1M input tokens (hosted models).
    pub input_usd_per_mtok: Option<f64>,
    /// USD per 1M output tokens (hosted models).
    pub output_usd_per_mtok: Option<f64>,
    /// USD per 1M input tokens read from the provider's prompt cache.
    pub cached_input_usd_per_mtok: Option<f64>,
    /// Batch-API prices (USD per 1M input and output tokens).
    pub batch_input_usd_per_mtok: Option<f64>,
    pub batch_output_usd_per_mtok: Option<f64>,
    /// Batch-API price of cached input tokens.
    pub batch_cached_input_usd_per_mtok: Option<f64>,
    /// Set for models that bill hidden reasoning ("thinking") tokens: USD per 1M of them.
    pub reasoning_usd_per_mtok: Option<f64>,
    /// A fixed charge per request, on top of the tokens.
    pub usd_per_request: Option<f64>,
    /// The context window in tokens, when known.
    pub context_window: Option<u64>,
    pub tokenizer: TokenizerSpec,
    /// Where the price comes from.
    pub source: String,
    /// The date (YYYY-MM-DD) the price was in force.
    pub as_of: String,
    /// The catalog file the entry came from.
    pub from: String,
    pub layer: Layer,
    /// Other names of the same model (dated snapshots, the map's spelling).
    pub aliases: Vec<String>,
    /// "YYYY-MM-DD" the provider retires the model, and its successor, where the map says.
    pub deprecation: Option<String>,
    /// Fields of one of frugal's own entries filled in from the price map (whose base prices
    /// agree with frugal's), e.g. `cached_input_usd_per_mtok`.
    pub filled_from_map: Vec<&'static str>,
}

impl ModelPrice {
    /// Whether the provider bills per token (a hosted model with both prices).
    pub fn per_token(&self) -> bool {
        self.input_usd_per_mtok.is_some() && self.output_usd_per_mtok.is_some()
    }
}

/// All known models: frugal's own entries (built-in, overridden by later files), and under them
/// an optional imported price map.
#[derive(Debug, Clone)]
pub struct Catalog {
    models: BTreeMap<String, ModelPrice>,
    /// Alias -> own entry name.
    aliases: BTreeMap<String, String>,
    map: Option<PriceMap>,
}

impl Catalog {
    /// The catalog shipped with frugal.
    pub fn builtin() -> Catalog {
        let mut c = Catalog {
            models: BTreeMap::new(),
            aliases: BTreeMap::new(),
            map: None,
        };
        c.merge(BUILTIN, "built-in catalog.toml")
            .expect("the built-in catalog is valid");
        c
    }

    /// The built-in catalog, then `$FRUGAL_HOME/catalog.toml` if `home_file` exists, then
    /// `extra` (`--catalog FILE`), each overriding entries of the same name.
    pub fn load(home_file: Option<&Path>, extra: Option<&Path>) -> Result<Catalog> {
        let mut c = Catalog::builtin();
        if let Some(h) = home_file.filter(|h| h.is_file()) {
            c.merge_file(h)?;
        }
        if let Some(e) = extra {
            c.merge_file(e)?;
        }
        Ok(c)
    }

    fn merge_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Catalog {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        self.merge(&text, &path.display().to_string())
    }

    /// Adds or replaces the entries of one catalog file. Errors name the file, the line and
    /// column (TOML syntax), the model and the field.
    pub fn merge(&mut self, text: &str, file: &str) -> Result<()> {
        let bad = |message: String| Error::Catalog {
            file: file.to_string(),
            message,
        };
        let raw: RawCatalog =
            toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().to_string()))?;
        for (name, m) in raw.models {
            let field = |f: &str, msg: &str| bad(format!("model '{name}', field '{f}': {msg}"));
            let tokenizer =
                TokenizerSpec::parse(&m.tokenizer).map_err(|e| field("tokenizer", &e))?;
            for (f, v) in [
                ("input_usd_per_mtok", m.input_usd_per_mtok),
                ("output_usd_per_mtok", m.output_usd_per_mtok),
            ] {
                match v {
                    Some(p) if !(p.is_finite() && p >= 0.0) => {
                        return Err(field(f, "must be a price of 0 or more USD per 1M tokens"))
                    }
                    None if m.kind == Kind::Hosted => {
                        return Err(field(
                            f,
                            "is missing; a hosted model needs its price per 1M tokens",
                        ))
                    }
                    _ => {}
                }
            }
            for (f, v) in [
                ("cached_input_usd_per_mtok", m.cached_input_usd_per_mtok),
                ("batch_input_usd_per_mtok", m.batch_input_usd_per_mtok),
                ("batch_output_usd_per_mtok", m.batch_output_usd_per_mtok),
                (
                    "batch_cached_input_usd_per_mtok",
                    m.batch_cached_input_usd_per_mtok,
                ),
                ("reasoning_usd_per_mtok", m.reasoning_usd_per_mtok),
                ("usd_per_request", m.usd_per_request),
            ] {
                if v.is_some_and(|p| !(p.is_finite() && p >= 0.0)) {
                    return Err(field(f, "must be a price of 0 or more USD"));
                }
            }
            if m.context_window == 0 {
                return Err(field("context_window", "must be at least 1 token"));
            }
            if m.source.trim().is_empty() {
                return Err(field(
                    "source",
                    "is empty; every price names where it comes from",
                ));
            }
            if !is_date(&m.as_of) {
                return Err(field("as_of", "must be a date as YYYY-MM-DD"));
            }
            for a in &m.aliases {
                self.aliases.insert(a.clone(), name.clone());
            }
            self.models.insert(
                name.clone(),
                ModelPrice {
                    name,
                    provider: m.provider,
                    kind: m.kind,
                    input_usd_per_mtok: m.input_usd_per_mtok,
                    output_usd_per_mtok: m.output_usd_per_mtok,
                    cached_input_usd_per_mtok: m.cached_input_usd_per_mtok,
                    batch_input_usd_per_mtok: m.batch_input_usd_per_mtok,
                    batch_output_usd_per_mtok: m.batch_output_usd_per_mtok,
                    batch_cached_input_usd_per_mtok: m.batch_cached_input_usd_per_mtok,
                    reasoning_usd_per_mtok: m.reasoning_usd_per_mtok,
                    usd_per_request: m.usd_per_request,
                    context_window: Some(m.context_window),
                    tokenizer,
                    source: m.source,
                    as_of: m.as_of,
                    from: file.to_string(),
                    layer: Layer::Own,
                    aliases: m.aliases,
                    deprecation: None,
                    filled_from_map: vec![],
                },
            );
        }
        self.fill_from_map();
        Ok(())
    }

    /// Layers a price map under frugal's own entries: a name frugal's catalog knows keeps
    /// frugal's price; everything else the map prices becomes priceable. Where both know a model
    /// and agree on its base prices, the map fills in what frugal's entry leaves out (cached and
    /// batch prices, reasoning billing, deprecation).
    pub fn with_price_map(mut self, map: PriceMap) -> Catalog {
        self.map = Some(map);
        self.fill_from_map();
        self
    }

    /// The layered price map, if one was loaded.
    pub fn price_map(&self) -> Option<&PriceMap> {
        self.map.as_ref()
    }

    fn fill_from_map(&mut self) {
        let Some(map) = &self.map else { return };
        for m in self.models.values_mut() {
            let Some(p) = map_counterpart(map, m) else {
                continue;
            };
            if !same_base_prices(m, p) {
                continue;
            }
            let mut filled = std::mem::take(&mut m.filled_from_map);
            let mut fill = |name: &'static str, mine: &mut Option<f64>, theirs: Option<f64>| {
                if mine.is_none() && theirs.is_some() {
                    *mine = theirs;
                    if !filled.contains(&name) {
                        filled.push(name);
                    }
                }
            };
            fill(
                "cached_input_usd_per_mtok",
                &mut m.cached_input_usd_per_mtok,
                p.cached_input_usd_per_mtok,
            );
            fill(
                "batch_input_usd_per_mtok",
                &mut m.batch_input_usd_per_mtok,
                p.batch_input_usd_per_mtok,
            );
            fill(
                "batch_output_usd_per_mtok",
                &mut m.batch_output_usd_per_mtok,
                p.batch_output_usd_per_mtok,
            );
            fill(
                "batch_cached_input_usd_per_mtok",
                &mut m.batch_cached_input_usd_per_mtok,
                p.batch_cached_input_usd_per_mtok,
            );
            fill(
                "reasoning_usd_per_mtok",
                &mut m.reasoning_usd_per_mtok,
                p.reasoning_usd_per_mtok,
            );
            fill("usd_per_request", &mut m.usd_per_request, p.usd_per_request);
            m.filled_from_map = filled;
            if m.deprecation.is_none() {
                m.deprecation = p.deprecation.clone();
            }
        }
    }

    /// frugal's own entries, by name.
    pub fn iter(&self) -> impl Iterator<Item = &ModelPrice> {
        self.models.values()
    }

    /// The price map's entries, by name (empty without a map).
    pub fn map_iter(&self) -> impl Iterator<Item = &ModelPrice> {
        self.map.iter().flat_map(|m| m.models.values())
    }

    /// Every own entry that the price map also prices, with the map's entry: what `frugal
    /// tokens --list --check` compares.
    pub fn overlaps(&self) -> Vec<(&ModelPrice, &ModelPrice)> {
        let Some(map) = &self.map else { return vec![] };
        self.models
            .values()
            .filter_map(|m| map_counterpart(map, m).map(|p| (m, p)))
            .collect()
    }

    fn exact(&self, name: &str) -> Option<&ModelPrice> {
        if let Some(m) = self.models.get(name) {
            return Some(m);
        }
        if let Some(m) = self.aliases.get(name).and_then(|n| self.models.get(n)) {
            return Some(m);
        }
        self.map.as_ref().and_then(|m| m.models.get(name))
    }

    /// Resolves a name: exact (frugal's entries and aliases first, then the map), then
    /// case-insensitively, then without a provider prefix that matches the entry's provider
    /// (`openai/gpt-5`, `anthropic/claude-sonnet-4-5`), then a dated snapshot the map does not
    /// list as its undated model (`claude-sonnet-4-5-20991231`, `gpt-5@2099-01-01`).
    fn resolve(&self, name: &str) -> Option<&ModelPrice> {
        if let Some(m) = self
            .exact(name)
            .or_else(|| self.exact(&name.to_lowercase()))
        {
            return Some(m);
        }
        if let Some((prefix, rest)) = name.split_once('/') {
            if let Some(m) = self.resolve(rest) {
                if provider_family(prefix) == provider_family(&m.provider) {
                    return Some(m);
                }
            }
        }
        strip_date(name).and_then(|base| self.resolve(base))
    }

    /// Looks a model up; an unknown name is an error that suggests near matches (never a silent
    /// zero price).
    pub fn get(&self, name: &str) -> Result<&ModelPrice> {
        if let Some(m) = self.resolve(name) {
            return Ok(m);
        }
        let lower = name.to_lowercase();
        let names: Vec<&str> = self
            .models
            .keys()
            .chain(self.aliases.keys())
            .chain(self.map.iter().flat_map(|m| m.models.keys()))
            .map(String::as_str)
            .collect();
        let mut near: Vec<(f64, &str)> = names
            .iter()
            .map(|k| (strsim::jaro_winkler(&lower, &k.to_lowercase()), *k))
            .filter(|(score, k)| *score > 0.8 || k.contains(&lower) || lower.contains(*k))
            .collect();
        near.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.len().cmp(&b.1.len())));
        near.dedup_by(|a, b| a.1 == b.1);
        let hint = if !near.is_empty() {
            format!(
                "; did you mean {}?",
                near.iter()
                    .take(3)
                    .map(|n| n.1)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else if names.len() <= 40 {
            format!(
                " (known: {})",
                self.models.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        } else {
            format!(" (none of the {} known models is close)", names.len())
        };
        let hint = match &self.map {
            Some(_) => hint,
            None => format!("{hint}; the LiteLLM price map is not loaded, so only frugal's own catalog was searched"),
        };
        Err(Error::UnknownModel {
            name: name.to_string(),
            hint,
        })
    }
}

/// The map entry for one of frugal's own entries: same name, or one of its aliases.
fn map_counterpart<'a>(map: &'a PriceMap, m: &ModelPrice) -> Option<&'a ModelPrice> {
    std::iter::once(&m.name)
        .chain(&m.aliases)
        .find_map(|n| map.models.get(n))
}

/// Whether two prices are the same but for floating-point noise (a billionth, relative).
pub fn prices_agree(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
}

fn same_base_prices(a: &ModelPrice, b: &ModelPrice) -> bool {
    let eq =
        |x: Option<f64>, y: Option<f64>| matches!((x, y), (Some(x), Some(y)) if prices_agree(x, y));
    eq(a.input_usd_per_mtok, b.input_usd_per_mtok)
        && eq(a.output_usd_per_mtok, b.output_usd_per_mtok)
}

/// Providers under one family name: a prefix `google/…` or `gemini/…` names a Vertex AI model.
pub(crate) fn provider_family(p: &str) -> &str {
    match p {
        "google" | "gemini" | "vertex_ai" | "vertex_ai-language-models" => "google",
        "openai" | "text-completion-openai" => "openai",
        other => other,
    }
}

/// `name` without a trailing snapshot date (`-20250929`, `-2025-09-29`, `@20250929`).
fn strip_date(name: &str) -> Option<&str> {
    let b = name.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let n = b.len();
    if n > 9 && (b[n - 9] == b'-' || b[n - 9] == b'@') && digits(&b[n - 8..]) {
        return Some(&name[..n - 9]);
    }
    if n > 11 && (b[n - 11] == b'-' || b[n - 11] == b'@') && is_date(&name[n - 10..]) {
        return Some(&name[..n - 11]);
    }
    None
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_has_the_required_models_each_with_a_source_and_date() {
        let c = Catalog::builtin();
        for m in [
            "gpt-4",
            "gpt-4-turbo",
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-3.5-turbo",
            "claude-3-haiku",
            "claude-3.5-sonnet",
            "gemini-1.5-flash",
            "smollm2",
            "minilm",
        ] {
            let p = c.get(m).unwrap();
            assert!(!p.source.is_empty() && is_date(&p.as_of), "{m}");
            if p.kind == Kind::Hosted {
                assert!(
                    p.input_usd_per_mtok.unwrap() > 0.0 && p.output_usd_per_mtok.unwrap() > 0.0,
                    "{m}"
                );
            }
        }
        assert_eq!(c.get("gpt-4o").unwrap().tokenizer, TokenizerSpec::O200kBase);
        assert_eq!(c.get("gpt-4").unwrap().tokenizer, TokenizerSpec::Cl100kBase);
    }

    #[test]
    fn unknown_models_suggest_near_matches() {
        let c = Catalog::builtin();
        let e = c.get("gpt4o").unwrap_err().to_string();
        assert!(
            e.contains("gpt4o") && e.contains("did you mean") && e.contains("gpt-4o"),
            "{e}"
        );
        let e = c.get("zzz").unwrap_err().to_string();
        assert!(
            e.contains("known:") && e.contains("gemini-1.5-flash"),
            "{e}"
        );
    }

    #[test]
    fn user_files_override_and_extend() {
        let mut c = Catalog::builtin();
        c.merge(
            r#"
[models.gpt-4o]
provider = "openai"
kind = "hosted"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
context_window = 128000
tokenizer = "o200k_base"
source = "my contract"
as_of = "2026-01-01"

[models.my-llm]
provider = "acme"
kind = "hosted"
input_usd_per_mtok = 0.1
output_usd_per_mtok = 0.2
context_window = 4096
tokenizer = "ratio:1.5"
source = "acme.example/pricing"
as_of = "2026-02-01"
"#,
            "mine.toml",
        )
        .unwrap();
        assert_eq!(c.get("gpt-4o").unwrap().input_usd_per_mtok, Some(1.0));
        assert_eq!(c.get("gpt-4o").unwrap().from, "mine.toml");
        assert_eq!(
            c.get("my-llm").unwrap().tokenizer,
            TokenizerSpec::Ratio(1.5)
        );
    }

    #[test]
    fn bad_files_name_the_line_the_model_and_the_field() {
        let mut c = Catalog::builtin();
        let e = c
            .merge("[models.x\nprovider = 1", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml") && e.contains("line 1"), "{e}");
        let entry = |extra: &str| {
            format!(
                "[models.x]\nprovider = \"p\"\nkind = \"hosted\"\ncontext_window = 10\ntokenizer = \"o200k_base\"\nsource = \"s\"\nas_of = \"2024-01-01\"\n{extra}"
            )
        };
        let e = c
            .merge(&entry("input_usd_per_mtok = 1.0\n"), "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'x'") && e.contains("output_usd_per_mtok") && e.contains("missing"),
            "{e}"
        );
        let e = c
            .merge(
                &entry("input_usd_per_mtok = -1.0\noutput_usd_per_mtok = 1.0\n"),
                "f.toml",
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("input_usd_per_mtok") && e.contains("0 or more"),
            "{e}"
        );
        let e = c
            .merge(
                &entry("input_usd_per_mtok = \"cheap\"\noutput_usd_per_mtok = 1.0\n"),
                "f.toml",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.toml") && e.contains("line"), "{e}");
        let e = c
            .merge("[models.y]\nprovider = \"p\"\n", "g.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field"), "{e}");
    }
}
