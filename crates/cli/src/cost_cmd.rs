//! `frugal tokens` and `frugal cost`: exact token counts with each model's tokenizer, and what a
//! request costs on hosted models (catalog prices) and on local models (throughput measured on
//! this machine, priced through the hardware profile and energy).

use crate::io::{load_chat, texts_from, LocalTokenizer};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::Args;
use frugal_cost::catalog::{Catalog, Kind, Layer, ModelPrice, TokenizerSpec};
use frugal_cost::hardware::ThisMachine as Machine;
use frugal_cost::hardware::{Profiles, Rapl};
use frugal_cost::request::{
    savings, verdict, Billing, LocalCost, Reasoning, Speed, Tokens, FEATURED, QUOTES,
};
use frugal_cost::text::{count_tokens, count_words, sample_text, Method};
use frugal_cost::usage;
use frugal_cost::PriceMap;
use frugal_models::assets::{frugal_home, Store};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where prices and machine profiles come from.
#[derive(Args, Clone)]
pub struct SourcesArgs {
    /// A price catalog (TOML) overriding and extending the built-in one and $FRUGAL_HOME/catalog.toml.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// The price map layered under frugal's catalog: a LiteLLM-format JSON file (e.g. a newer
    /// model_prices_and_context_window.json), or `off`. Default: the pinned LiteLLM map, fetched
    /// on first use (FRUGAL_PRICE_MAP=off turns it off too).
    #[arg(long, value_name = "FILE|off")]
    price_map: Option<String>,
    /// Hardware and energy profiles (TOML) overriding the built-in ones and $FRUGAL_HOME/hardware.toml.
    #[arg(long)]
    hardware: Option<PathBuf>,
}

/// The pinned price-map asset.
const PRICE_MAP_ASSET: &str = "litellm-prices";

impl SourcesArgs {
    /// frugal's own catalog (built-in, $FRUGAL_HOME/catalog.toml, --catalog), with the price map
    /// layered under it. A pinned map that cannot be fetched or read leaves frugal's own catalog
    /// working, with a notice; a map the user named must load.
    pub fn catalog(&self) -> Result<Catalog> {
        let own = Catalog::load(
            Some(&frugal_home().join("catalog.toml")),
            self.catalog.as_deref(),
        )?;
        let choice = self.price_map.clone().or_else(|| {
            std::env::var("FRUGAL_PRICE_MAP")
                .ok()
                .filter(|v| !v.is_empty())
        });
        let map = match choice.as_deref() {
            Some("off") => None,
            Some(file) => Some(read_price_map_file(Path::new(file))?),
            None => match pinned_price_map() {
                Ok(m) => Some(m),
                Err(e) => {
                    eprintln!(
                        "frugal: notice: the LiteLLM price map is unavailable ({e:#}); pricing with frugal's own catalog only"
                    );
                    None
                }
            },
        };
        Ok(match map {
            Some(m) => own.with_price_map(m),
            None => own,
        })
    }

    /// Prices for costing responses against `reference` (embeddings against
    /// text-embedding-3-small), this machine at `usd_per_hour` or its profile's price, hosted
    /// requests billed as `billing` says.
    pub fn pricing(
        &self,
        reference: &str,
        usd_per_hour: Option<f64>,
        billing: Billing,
    ) -> Result<frugal_serve::pricing::Pricing> {
        frugal_serve::pricing::Pricing::new(
            &self.catalog()?,
            &self.profiles()?,
            reference,
            "text-embedding-3-small",
            usd_per_hour,
            billing,
        )
        .map_err(anyhow::Error::msg)
    }

    pub fn profiles(&self) -> Result<Profiles> {
        Ok(Profiles::load(
            Some(&frugal_home().join("hardware.toml")),
            self.hardware.as_deref(),
        )?)
    }
}

/// The pinned LiteLLM map, fetched on first use and verified.
fn pinned_price_map() -> Result<PriceMap> {
    let store = Store::from_env();
    let spec = store.manifest().get(PRICE_MAP_ASSET)?.clone();
    let path = store.ensure(PRICE_MAP_ASSET)?;
    let released = spec.released.as_deref().unwrap_or("unknown date");
    let origin = format!(
        "LiteLLM price map, {} {}, released {released}",
        spec.package, spec.version
    );
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(frugal_cost::price_map::parse(
        &text,
        &path.display().to_string(),
        &origin,
        released,
    )?)
}

/// A LiteLLM-format map the user named; its prices are dated by the file's modification day.
fn read_price_map_file(path: &Path) -> Result<PriceMap> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "--price-map {}: cannot read it (give a LiteLLM-format JSON file, or `off`)",
            path.display()
        )
    })?;
    let day = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or("unknown date".to_string(), |d| {
            frugal_cost::price_map::civil_date(d.as_secs())
        });
    let origin = format!("price map {} (file of {day})", path.display());
    Ok(frugal_cost::price_map::parse(
        &text,
        &format!("--price-map {}", path.display()),
        &origin,
        &day,
    )?)
}

/// How hosted requests are billed: cached input, batch API, reasoning tokens.
#[derive(Args, Clone, Default)]
pub struct BillingArgs {
    /// Share of each prompt's tokens read from the provider's prompt cache (0–1), billed at the
    /// cached-input price.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    cached_share: f64,
    /// Price hosted requests at the provider's batch-API rates.
    #[arg(long)]
    batch: bool,
    /// Hidden reasoning tokens per request for models that bill them: a count (`2000`) or a ratio
    /// per visible output token (`3x`).
    #[arg(long, value_name = "N|Rx", value_parser = reasoning_tokens)]
    reasoning_tokens: Option<Reasoning>,
}

impl BillingArgs {
    pub fn billing(&self) -> Billing {
        Billing {
            cached_share: self.cached_share,
            batch: self.batch,
            reasoning: self.reasoning_tokens.unwrap_or_default(),
        }
    }
}

fn share(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be a share between 0 and 1 (e.g. 0.6 for 60% of input tokens cached)".into())
    }
}

fn reasoning_tokens(s: &str) -> std::result::Result<Reasoning, String> {
    let bad =
        || format!("'{s}' is neither a number of tokens (2000) nor a ratio per output token (3x)");
    if let Some(r) = s.strip_suffix(['x', 'X']) {
        let r: f64 = r.parse().map_err(|_| bad())?;
        return if r.is_finite() && r >= 0.0 {
            Ok(Reasoning::PerOutputToken(r))
        } else {
            Err(bad())
        };
    }
    s.parse::<usize>().map(Reasoning::Tokens).map_err(|_| bad())
}

#[derive(Args)]
pub struct TokensArgs {
    /// A catalog model (see --list).
    #[arg(long, required_unless_present = "list")]
    model: Option<String>,
    /// Texts; without them (and without --input), one per line of stdin.
    texts: Vec<String>,
    /// Count the whole content of this file as one text.
    #[arg(long, conflicts_with = "texts")]
    input: Option<PathBuf>,
    /// Show the catalog: prices, tokenizers, sources and dates (frugal's own entries; --all adds
    /// the price map's).
    #[arg(long)]
    list: bool,
    /// With --list: every model the price map prices too.
    #[arg(long, requires = "list")]
    all: bool,
    /// With --list: compare frugal's own prices with the price map's where both know a model.
    #[arg(long, requires = "list", conflicts_with = "all")]
    check: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sources: SourcesArgs,
}

/// Counts tokens of texts for one catalog model; local models use their own tokenizer.
struct Counter {
    spec: TokenizerSpec,
    local: Option<LocalTokenizer>,
}

impl Counter {
    fn new(m: &ModelPrice, quiet: bool) -> Result<Counter> {
        let local = match &m.tokenizer {
            TokenizerSpec::Asset(name) => Some(LocalTokenizer::load(name, quiet)?),
            _ => None,
        };
        Ok(Counter {
            spec: m.tokenizer.clone(),
            local,
        })
    }

    fn count(&self, text: &str) -> Result<(usize, Method)> {
        match &self.local {
            Some(t) => Ok((t.tokenize(text)?.0.len(), Method::Exact)),
            None => Ok(count_tokens(&self.spec, text)?),
        }
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Exact => "exact",
        Method::Estimated => "estimated from words",
    }
}

pub fn tokens(a: TokensArgs, ctx: &Ctx) -> Result<()> {
    let catalog = a.sources.catalog()?;
    if a.check {
        return check(&catalog, a.json);
    }
    if a.list {
        return list(&catalog, a.all, a.json);
    }
    let model = catalog.get(a.model.as_deref().expect("clap requires --model"))?;
    let texts = match &a.input {
        Some(p) => vec![std::fs::read_to_string(p)
            .with_context(|| format!("reading --input {}", p.display()))?],
        None => texts_from(a.texts)?,
    };
    if texts.iter().all(|t| t.trim().is_empty()) {
        bail!("the text is empty: give some text to count");
    }
    let counter = Counter::new(model, ctx.quiet)?;
    for t in &texts {
        let (tokens, method) = counter.count(t)?;
        let words = count_words(t);
        if a.json {
            println!(
                "{}",
                serde_json::json!({"model": model.name, "tokenizer": model.tokenizer.name(), "tokens": tokens,
                    "words": words, "chars": t.chars().count(), "method": method_name(method)})
            );
        } else {
            println!(
                "{tokens} tokens ({}, {}), {words} words, {:.2} tokens/word",
                model.tokenizer.name(),
                method_name(method),
                tokens as f64 / words.max(1) as f64
            );
        }
    }
    Ok(())
}

fn list(catalog: &Catalog, all: bool, json: bool) -> Result<()> {
    let mut table = crate::io::table([
        "model",
        "provider",
        "$/1M in",
        "$/1M out",
        "$/1M cached in",
        "batch in/out",
        "context",
        "tokenizer",
        "as of",
        "source",
    ]);
    let p = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v}"));
    let models: Vec<&ModelPrice> = if all {
        catalog.iter().chain(catalog.map_iter()).collect()
    } else {
        catalog.iter().collect()
    };
    for m in &models {
        if json {
            println!("{}", serde_json::to_string(&entry_json(m))?);
        } else {
            let price = |v: Option<f64>| match (m.kind, v) {
                (Kind::Local, _) => "measured".to_string(),
                (_, v) => p(v),
            };
            table.add_row([
                m.name.clone(),
                m.provider.clone(),
                price(m.input_usd_per_mtok),
                price(m.output_usd_per_mtok),
                price(m.cached_input_usd_per_mtok),
                match (m.batch_input_usd_per_mtok, m.batch_output_usd_per_mtok) {
                    (Some(i), Some(o)) => format!("{i}/{o}"),
                    _ => "-".into(),
                },
                m.context_window.map_or("-".into(), |c| c.to_string()),
                m.tokenizer.name(),
                m.as_of.clone(),
                m.source.clone(),
            ]);
        }
    }
    if !json {
        println!("{table}");
        match catalog.price_map() {
            Some(map) if !all => println!(
                "{} more models from the {} (`--list --all` shows them; `--list --check` compares them with frugal's own)",
                map.models.len(),
                map.origin
            ),
            Some(map) => println!("{}", map.summary()),
            None => println!("(the price map is not loaded: frugal's own catalog only)"),
        }
    }
    Ok(())
}

fn entry_json(m: &ModelPrice) -> serde_json::Value {
    serde_json::json!({"model": m.name, "provider": m.provider, "kind": if m.kind == Kind::Hosted {"hosted"} else {"local"},
        "layer": m.layer, "input_usd_per_mtok": m.input_usd_per_mtok, "output_usd_per_mtok": m.output_usd_per_mtok,
        "cached_input_usd_per_mtok": m.cached_input_usd_per_mtok, "batch_input_usd_per_mtok": m.batch_input_usd_per_mtok,
        "batch_output_usd_per_mtok": m.batch_output_usd_per_mtok, "reasoning_usd_per_mtok": m.reasoning_usd_per_mtok,
        "usd_per_request": m.usd_per_request, "context_window": m.context_window, "tokenizer": m.tokenizer.name(),
        "source": m.source, "as_of": m.as_of, "from": m.from, "deprecation": m.deprecation,
        "filled_from_map": m.filled_from_map})
}

/// `tokens --list --check`: frugal's own prices beside the map's, for every model both know.
fn check(catalog: &Catalog, json: bool) -> Result<()> {
    let Some(map) = catalog.price_map() else {
        bail!("--check compares frugal's catalog with the price map, which is not loaded (see the notice above, or give --price-map FILE)");
    };
    type Field = fn(&ModelPrice) -> Option<f64>;
    let fields: [(&str, Field); 3] = [
        ("input", |m| m.input_usd_per_mtok),
        ("output", |m| m.output_usd_per_mtok),
        ("cached input", |m| m.cached_input_usd_per_mtok),
    ];
    let mut table = crate::io::table(["model", "frugal in/out", "as of", "map in/out", "verdict"]);
    let mut differ = 0;
    for (own, theirs) in catalog.overlaps() {
        let diffs: Vec<String> = fields
            .iter()
            .filter_map(|(name, f)| match (f(own), f(theirs)) {
                (Some(a), Some(b)) if !frugal_cost::catalog::prices_agree(a, b) => {
                    Some(format!("{name}: frugal ${a} vs map ${b}"))
                }
                _ => None,
            })
            .collect();
        differ += !diffs.is_empty() as usize;
        let verdict = if diffs.is_empty() {
            "agree".to_string()
        } else {
            format!("DIFFER ({})", diffs.join("; "))
        };
        let pair = |m: &ModelPrice| {
            format!(
                "{}/{}",
                m.input_usd_per_mtok.unwrap_or(f64::NAN),
                m.output_usd_per_mtok.unwrap_or(f64::NAN)
            )
        };
        if json {
            println!(
                "{}",
                serde_json::json!({"model": own.name, "map_model": theirs.name, "frugal": entry_json(own),
                    "map": entry_json(theirs), "agree": diffs.is_empty(), "differences": diffs})
            );
        } else {
            table.add_row([
                if own.name == theirs.name {
                    own.name.clone()
                } else {
                    format!("{} (map: {})", own.name, theirs.name)
                },
                pair(own),
                own.as_of.clone(),
                pair(theirs),
                verdict,
            ]);
        }
    }
    if !json {
        println!("{table}");
        println!(
            "{differ} of {} models priced differently; frugal's own prices are used (they name their source and date). {}",
            catalog.overlaps().len(),
            map.summary()
        );
        if !map.invalid.is_empty() {
            let shown: Vec<String> = map
                .invalid
                .iter()
                .take(5)
                .map(|(n, why)| format!("{n} ({why})"))
                .collect();
            println!("skipped as invalid: {}", shown.join(", "));
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct CostArgs {
    /// Words in the answer (default: both seed scenarios, 100 and 1,000 words).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    words: Option<u32>,
    /// Words in the prompt (default: as many as in the answer).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    prompt_words: Option<u32>,
    /// Models to price (repeatable; any model the catalog or the price map knows, e.g.
    /// `openai/gpt-5`; default: frugal's catalog and today's featured models).
    #[arg(long)]
    model: Vec<String>,
    /// Price a usage export instead of a scenario: OpenAI usage JSONL (or logged API responses
    /// with `usage`), or a CSV of model,input_tokens,cached_tokens,output_tokens; prints what it
    /// cost and what the same traffic costs on each cheaper model.
    #[arg(long, conflicts_with_all = ["words", "prompt_words"])]
    usage: Option<PathBuf>,
    /// The model savings are measured against.
    #[arg(long, default_value = "gpt-4")]
    reference: String,
    /// Price this machine at this many USD an hour instead of its cloud equivalent.
    #[arg(long, value_parser = crate::non_negative_f64)]
    usd_per_hour: Option<f64>,
    /// Measure local models again instead of using the cached measurement.
    #[arg(long)]
    remeasure: bool,
    /// Print the formula and inputs behind every number.
    #[arg(long)]
    explain: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    billing: BillingArgs,
    #[command(flatten)]
    sources: SourcesArgs,
}

/// A local model's measured speed and power on this machine, cached per model and machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measurement {
    prompt_tokens_per_s: f64,
    tokens_per_s: f64,
    /// Average power while running, from RAPL; absent where the OS has no counters.
    watts: Option<f64>,
    measured_at_unix: u64,
}

fn measurements_path() -> PathBuf {
    frugal_home().join("measurements.json")
}

/// Runs a short benchmark (a 128-token prompt, 64 decoding steps) unless a measurement of the
/// same model file on the same CPU and thread count is cached.
fn measure(name: &str, ctx: &Ctx, remeasure: bool) -> Result<(Measurement, bool)> {
    let model = load_chat(name, ctx.quiet)?;
    let size = std::fs::metadata(&model.path).map(|m| m.len()).unwrap_or(0);
    let cpu = Profiles::builtin().this_machine(None).cpu_model;
    let key = format!("{name}|{size}|{cpu}|{} threads", ctx.threads);
    let path = measurements_path();
    let mut cache: BTreeMap<String, Measurement> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let (false, Some(m)) = (remeasure, cache.get(&key)) {
        return Ok((m.clone(), true));
    }
    if !ctx.quiet {
        eprintln!(
            "frugal: measuring {name} on this machine (once; cached in {})",
            path.display()
        );
    }
    let prompt = model.tokenizer.encode(&sample_text(200))?;
    let prompt = &prompt[..prompt.len().min(128)];
    let (mut best_p, mut best_g, mut watts) = (0f64, 0f64, None);
    for _ in 0..2 {
        let rapl = Rapl::start();
        let t0 = std::time::Instant::now();
        let mut cache_kv = model.new_cache();
        let mut logits = model.llama.forward(prompt, &mut cache_kv, false)?;
        let tp = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let steps = 64;
        for _ in 0..steps {
            let next = frugal_models::chat::sampling::argmax(&logits);
            logits = model.llama.forward(&[next], &mut cache_kv, false)?;
        }
        let tg = t1.elapsed().as_secs_f64();
        best_p = best_p.max(prompt.len() as f64 / tp);
        best_g = best_g.max(steps as f64 / tg);
        if let Some(j) = rapl.and_then(|r| r.joules()) {
            watts = Some(j / (tp + tg));
        }
    }
    let m = Measurement {
        prompt_tokens_per_s: best_p,
        tokens_per_s: best_g,
        watts,
        measured_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    cache.insert(key, m.clone());
    crate::io::write_atomic(&path, &serde_json::to_vec_pretty(&cache)?)?;
    Ok((m, false))
}

#[derive(Serialize)]
struct Row {
    model: String,
    kind: &'static str,
    input_tokens: usize,
    output_tokens: usize,
    token_count: &'static str,
    usd_per_request: f64,
    usd_per_1k_requests: f64,
    savings_vs_reference: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kwh_per_request: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kg_co2_per_request: Option<f64>,
    /// Reasoning tokens billed on top of the visible output.
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_tokens: Option<usize>,
    /// Where the price comes from: frugal's catalog or the price map.
    #[serde(skip_serializing_if = "Option::is_none")]
    layer: Option<Layer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    as_of: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deprecation: Option<String>,
    source: String,
    explain: String,
}

/// Encoders and embedding models (hosted ones have no output price) write no answers: a
/// words-out scenario does not apply to them.
fn is_encoder(m: &ModelPrice) -> bool {
    matches!(&m.tokenizer, TokenizerSpec::Asset(n) if n == "minilm")
        || (m.kind == Kind::Hosted && m.output_usd_per_mtok == Some(0.0))
}

/// The models a `cost` run prices: those named, else frugal's own catalog and the featured
/// models of the price map.
fn chosen_models(a: &CostArgs, catalog: &Catalog, quiet: bool) -> Result<Vec<ModelPrice>> {
    let mut v: Vec<ModelPrice> = vec![];
    if a.model.is_empty() {
        v.extend(catalog.iter().filter(|m| !is_encoder(m)).cloned());
        if catalog.price_map().is_some() {
            // A map of the user's own (--price-map) may lack some of them.
            for m in FEATURED.iter().filter_map(|n| catalog.get(n).ok()) {
                if !v.iter().any(|x| x.name == m.name) {
                    v.push(m.clone());
                }
            }
        } else if !quiet {
            eprintln!(
                "frugal: today's models ({}) are priced from the price map, which is not loaded",
                FEATURED.join(", ")
            );
        }
        return Ok(v);
    }
    for name in &a.model {
        let m = catalog
            .get(name)
            .with_context(|| format!("--model {name}"))?;
        if is_encoder(m) {
            bail!("--model {name}: an encoder writes no answer; price a chat model");
        }
        if !v.iter().any(|x| x.name == m.name) {
            v.push(m.clone());
        }
    }
    Ok(v)
}

/// Measures (or reads the cached measurement of) every local model among `models`.
fn local_speeds(
    models: &[ModelPrice],
    ctx: &Ctx,
    a: &CostArgs,
) -> Result<BTreeMap<String, Measurement>> {
    let mut speeds = BTreeMap::new();
    for m in models {
        if let (Kind::Local, TokenizerSpec::Asset(asset)) = (m.kind, &m.tokenizer) {
            let (meas, cached) = measure(asset, ctx, a.remeasure)?;
            if cached && !ctx.quiet && !a.json {
                eprintln!(
                    "frugal: using the cached measurement of {} (--remeasure to run it again)",
                    m.name
                );
            }
            speeds.insert(m.name.clone(), meas);
        }
    }
    Ok(speeds)
}

/// A local model's cost for `t` tokens on this machine, from its measured speed.
fn local_cost(meas: &Measurement, t: Tokens, me: &Machine, profiles: &Profiles) -> LocalCost {
    let speed = Speed {
        prompt_tokens_per_s: meas.prompt_tokens_per_s,
        tokens_per_s: meas.tokens_per_s,
    };
    let (watts, measured) = match meas.watts {
        Some(w) => (w, true),
        None => (me.watts, false),
    };
    LocalCost::of(speed, t, me.usd_per_hour, watts, &profiles.energy, measured)
}

pub fn cost(a: CostArgs, ctx: &Ctx) -> Result<()> {
    let catalog = a.sources.catalog()?;
    let profiles = a.sources.profiles()?;
    let billing = a.billing.billing();
    let models = chosen_models(&a, &catalog, ctx.quiet || a.json)?;
    let me = profiles.this_machine(a.usd_per_hour);
    if let Some(file) = &a.usage {
        return usage_bill(&a, file, &catalog, &models, &profiles, &me, ctx);
    }
    let reference = catalog.get(&a.reference).context("--reference")?.clone();
    if !reference.per_token() {
        bail!(
            "--reference {}: the reference must be a hosted model with a price per token",
            reference.name
        );
    }
    let scenarios: Vec<u32> = a.words.map_or(vec![100, 1000], |w| vec![w]);
    let mut counters: BTreeMap<String, Counter> = BTreeMap::new();
    for m in &models {
        counters.insert(m.name.clone(), Counter::new(m, ctx.quiet)?);
    }
    let speeds = local_speeds(&models, ctx, &a)?;
    let ref_counter = Counter::new(&reference, ctx.quiet)?;
    for words in scenarios {
        let prompt_words = a.prompt_words.unwrap_or(words);
        let (prompt_text, answer_text) = (
            sample_text(prompt_words as usize),
            sample_text(words as usize),
        );
        let tokens_of = |c: &Counter| -> Result<(Tokens, Method)> {
            let (i, m1) = if prompt_words == 0 {
                (0, Method::Exact)
            } else {
                c.count(&prompt_text)?
            };
            let (o, m2) = c.count(&answer_text)?;
            Ok((
                Tokens {
                    input: i,
                    output: o,
                },
                if m1 == Method::Exact && m2 == Method::Exact {
                    Method::Exact
                } else {
                    Method::Estimated
                },
            ))
        };
        let (ref_tokens, _) = tokens_of(&ref_counter)?;
        let ref_usd = billing
            .cost(&reference, ref_tokens)
            .expect("checked: billed per token")
            .usd;
        let mut rows = vec![];
        for m in &models {
            let (t, method) = tokens_of(&counters[&m.name])?;
            let row = match m.kind {
                Kind::Hosted => {
                    let c = billing
                        .cost(m, t)
                        .with_context(|| format!("{}: the catalog entry has no prices", m.name))?;
                    Row {
                        model: m.name.clone(),
                        kind: "hosted",
                        input_tokens: t.input,
                        output_tokens: t.output,
                        token_count: method_name(method),
                        usd_per_request: c.usd,
                        usd_per_1k_requests: c.usd * 1000.0,
                        savings_vs_reference: savings(c.usd, ref_usd),
                        tokens_per_s: None,
                        prompt_tokens_per_s: None,
                        kwh_per_request: None,
                        kg_co2_per_request: None,
                        reasoning_tokens: (c.usage.reasoning > 0).then_some(c.usage.reasoning),
                        layer: Some(m.layer),
                        as_of: Some(m.as_of.clone()),
                        deprecation: m.deprecation.clone(),
                        source: price_source(m),
                        explain: c.explain(),
                    }
                }
                Kind::Local => {
                    let meas = &speeds[&m.name];
                    let c = local_cost(meas, t, &me, &profiles);
                    let e = &profiles.energy;
                    let speed = Speed {
                        prompt_tokens_per_s: meas.prompt_tokens_per_s,
                        tokens_per_s: meas.tokens_per_s,
                    };
                    Row {
                        model: m.name.clone(),
                        kind: "local",
                        input_tokens: t.input,
                        output_tokens: t.output,
                        token_count: method_name(method),
                        usd_per_request: c.usd,
                        usd_per_1k_requests: c.usd * 1000.0,
                        savings_vs_reference: savings(c.usd, ref_usd),
                        tokens_per_s: Some(meas.tokens_per_s),
                        prompt_tokens_per_s: Some(meas.prompt_tokens_per_s),
                        kwh_per_request: Some(c.kwh),
                        kg_co2_per_request: Some(c.kg_co2),
                        reasoning_tokens: None,
                        layer: None,
                        as_of: None,
                        deprecation: None,
                        source: local_source(&me, c.measured_energy),
                        explain: format!(
                            "{}; energy price: {}; PUE: {}",
                            c.explain(t, speed, e.pue, e.usd_per_kwh),
                            e.usd_per_kwh_source,
                            e.pue_source
                        ),
                    }
                }
            };
            rows.push(row);
        }
        let quote = QUOTES.iter().find(|q| q.words == words as usize);
        let range = |rows: &mut dyn Iterator<Item = &Row>| {
            let hosted: Vec<f64> = rows
                .filter(|r| r.kind == "hosted")
                .map(|r| r.usd_per_request)
                .collect();
            (!hosted.is_empty()).then(|| {
                (
                    hosted.iter().cloned().fold(f64::INFINITY, f64::min),
                    hosted.iter().cloned().fold(0.0, f64::max),
                )
            })
        };
        let today_models: Vec<&str> = rows
            .iter()
            .map(|r| r.model.as_str())
            .filter(|m| FEATURED.contains(m))
            .collect();
        let judged = quote.and_then(|q| {
            let (lo, hi) = range(&mut rows.iter())?;
            let today = range(
                &mut rows
                    .iter()
                    .filter(|r| today_models.contains(&r.model.as_str())),
            )
            .map(|(lo, hi)| verdict(q, lo, hi));
            Some((q, verdict(q, lo, hi), today))
        });
        let map_date = catalog.price_map().map(|m| m.as_of.clone());
        if a.json {
            let mut v = serde_json::json!({
                "scenario": {"words": words, "prompt_words": prompt_words},
                "reference": reference.name,
                "billing": billing,
                "rows": rows,
            });
            if let Some((q, verdict, today)) = &judged {
                v["quote"] = serde_json::json!({"text": q.text, "low_usd": q.low_usd, "high_usd": q.high_usd,
                    "verdict": verdict, "verdict_today": today, "today_models": today_models, "today_as_of": map_date});
            }
            println!("{v}");
            continue;
        }
        println!("\n{words} words answered to a {prompt_words}-word prompt (tokens of frugal's English sample, per model tokenizer); {}; savings against {}", billing.describe(), reference.name);
        let mut table = crate::io::table([
            "model",
            "kind",
            "tokens in/out",
            "USD/request",
            "USD/1k requests",
            "savings",
            "tok/s",
            "price as of",
        ]);
        for r in &rows {
            table.add_row([
                r.model.clone(),
                r.kind.to_string(),
                format!(
                    "{}/{}{}{}",
                    r.input_tokens,
                    r.output_tokens,
                    r.reasoning_tokens
                        .map_or(String::new(), |n| format!(" +{n} reasoning")),
                    if r.token_count == "exact" { "" } else { " ~" }
                ),
                format!("{:.6}", r.usd_per_request),
                format!("{:.4}", r.usd_per_1k_requests),
                r.savings_vs_reference
                    .map_or("-".into(), |s| format!("{:.1}%", s * 100.0)),
                r.tokens_per_s.map_or("-".into(), |s| format!("{s:.0}")),
                match (&r.as_of, r.layer) {
                    (Some(d), Some(Layer::PriceMap)) => format!("{d} (LiteLLM map)"),
                    (Some(d), _) => d.clone(),
                    _ => "measured here".into(),
                },
            ]);
        }
        println!("{table}");
        if let Some((q, verdict, today)) = &judged {
            println!("quoted: \"{}\" — every model above: {verdict}", q.text);
            if let (Some(today), Some(date)) = (today, &map_date) {
                println!(
                    "  today's models ({}; prices of {date}): {today}",
                    today_models.join(", ")
                );
            }
        }
        if a.explain {
            for r in &rows {
                println!("  {}: {}\n    source: {}", r.model, r.explain, r.source);
            }
        } else if rows.iter().any(|r| r.token_count != "exact") {
            println!("(~ : no public tokenizer; tokens estimated from words with the catalog's stated ratio. --explain shows every formula.)");
        }
    }
    if !a.json {
        retirements(&models);
    }
    Ok(())
}

/// One line on the priced models the provider retires (or retired), from the price map's dates.
fn retirements(models: &[ModelPrice]) {
    let today = frugal_cost::price_map::civil_date(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    let (mut past, mut coming) = (vec![], vec![]);
    for m in models {
        if let Some(d) = &m.deprecation {
            let line = format!("{} {d}", m.name);
            if d.get(..10).is_some_and(|day| day < today.as_str()) {
                past.push(line);
            } else {
                coming.push(line);
            }
        }
    }
    if !past.is_empty() {
        println!(
            "\nretired by their provider (the price map's dates; prices as last listed): {}",
            past.join(", ")
        );
    }
    if !coming.is_empty() {
        println!("retiring: {}", coming.join(", "));
    }
}

/// A hosted price's source line: the page, the date, and what the map filled in.
fn price_source(m: &ModelPrice) -> String {
    let mut s = format!("{} ({})", m.source, m.as_of);
    if !m.filled_from_map.is_empty() {
        s.push_str(&format!(
            "; {} from the price map",
            m.filled_from_map.join(", ")
        ));
    }
    s
}

fn local_source(me: &Machine, measured: bool) -> String {
    format!(
        "measured here: {} ({} cores); price: {}; power: {}",
        me.cpu_model,
        me.cores,
        me.price_basis,
        if measured {
            "RAPL counters".to_string()
        } else {
            format!("estimated, no energy counters ({})", me.watts_basis)
        }
    )
}

#[derive(Serialize)]
struct Alternative {
    model: String,
    kind: &'static str,
    usd: f64,
    savings_vs_bill: Option<f64>,
    source: String,
}

/// `cost --usage FILE`: what the export's traffic cost, and the same traffic on each model.
fn usage_bill(
    a: &CostArgs,
    file: &Path,
    catalog: &Catalog,
    models: &[ModelPrice],
    profiles: &Profiles,
    me: &Machine,
    ctx: &Ctx,
) -> Result<()> {
    let name = file.display().to_string();
    let text =
        std::fs::read_to_string(file).with_context(|| format!("--usage {name}: cannot read it"))?;
    let records = usage::read(&text, &name)?;
    let bills = usage::bill(&records, catalog, &name)?;
    let total: f64 = bills.iter().map(|b| b.usd).sum();
    let requests: u64 = bills.iter().map(|b| b.requests).sum();
    let (input, output): (u64, u64) = bills.iter().fold((0, 0), |(i, o), b| {
        (i + b.input_tokens, o + b.output_tokens)
    });
    let speeds = local_speeds(models, ctx, a)?;
    let mut alts = vec![];
    for m in models {
        let (usd, kind, source) = match m.kind {
            Kind::Hosted => match usage::price_as(&records, m) {
                Some(usd) => (usd, "hosted", price_source(m)),
                None => continue,
            },
            Kind::Local => {
                let c = local_cost(
                    &speeds[&m.name],
                    Tokens {
                        input: input as usize,
                        output: output as usize,
                    },
                    me,
                    profiles,
                );
                (c.usd, "local", local_source(me, c.measured_energy))
            }
        };
        alts.push(Alternative {
            model: m.name.clone(),
            kind,
            usd,
            savings_vs_bill: savings(usd, total),
            source,
        });
    }
    alts.sort_by(|x, y| x.usd.total_cmp(&y.usd));
    if a.json {
        println!(
            "{}",
            serde_json::json!({"file": name, "requests": requests, "total_usd": total, "bill": bills,
                "alternatives": alts,
                "note": "alternatives carry the export's token counts over as they are (other tokenizers count somewhat differently), with each line's cached share and batch flag; local models at their measured speed on this machine"})
        );
        return Ok(());
    }
    println!("\n{name}: {requests} requests, {input} input and {output} output tokens");
    let mut table = crate::io::table([
        "model",
        "priced as",
        "requests",
        "tokens in (cached) / out (reasoning)",
        "USD",
    ]);
    for b in &bills {
        table.add_row([
            b.model.clone(),
            b.priced_as.clone(),
            b.requests.to_string(),
            format!(
                "{} ({}) / {} ({})",
                b.input_tokens, b.cached_input_tokens, b.output_tokens, b.reasoning_tokens
            ),
            format!("{:.4}", b.usd),
        ]);
    }
    println!("{table}");
    println!("the bill: ${total:.4}");
    if a.explain {
        for b in &bills {
            println!("  {}: {}", b.model, b.source);
            for n in &b.notes {
                println!("    {n}");
            }
        }
    }
    println!("\nthe same traffic on other models (token counts carried over; local models at their measured speed here):");
    let mut table = crate::io::table(["model", "kind", "USD", "savings vs the bill"]);
    for alt in &alts {
        table.add_row([
            alt.model.clone(),
            alt.kind.to_string(),
            format!("{:.4}", alt.usd),
            alt.savings_vs_bill
                .map_or("-".into(), |s| format!("{:.1}%", s * 100.0)),
        ]);
    }
    println!("{table}");
    if a.explain {
        for alt in &alts {
            println!("  {}: {}", alt.model, alt.source);
        }
    }
    Ok(())
}
