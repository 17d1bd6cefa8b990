//! `frugal tokens` and `frugal cost`: exact token counts with each model's tokenizer, and what a
//! request costs on hosted models (catalog prices) and on local models (throughput measured on
//! this machine, priced through the hardware profile and energy).

use crate::io::{load_chat, texts_from, LocalTokenizer};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::Args;
use frugal_cost::catalog::{Catalog, Kind, ModelPrice, TokenizerSpec};
use frugal_cost::hardware::{Profiles, Rapl};
use frugal_cost::request::{savings, verdict, HostedCost, LocalCost, Speed, Tokens, QUOTES};
use frugal_cost::text::{count_tokens, count_words, sample_text, Method};
use frugal_models::assets::frugal_home;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where prices and machine profiles come from.
#[derive(Args, Clone)]
pub struct SourcesArgs {
    /// A price catalog (TOML) overriding and extending the built-in one and $FRUGAL_HOME/catalog.toml.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Hardware and energy profiles (TOML) overriding the built-in ones and $FRUGAL_HOME/hardware.toml.
    #[arg(long)]
    hardware: Option<PathBuf>,
}

impl SourcesArgs {
    pub fn catalog(&self) -> Result<Catalog> {
        Ok(Catalog::load(
            Some(&frugal_home().join("catalog.toml")),
            self.catalog.as_deref(),
        )?)
    }

    /// Prices for costing responses against `reference` (embeddings against
    /// text-embedding-3-small), this machine at `usd_per_hour` or its profile's price.
    pub fn pricing(
        &self,
        reference: &str,
        usd_per_hour: Option<f64>,
    ) -> Result<frugal_serve::pricing::Pricing> {
        frugal_serve::pricing::Pricing::new(
            &self.catalog()?,
            &self.profiles()?,
            reference,
            "text-embedding-3-small",
            usd_per_hour,
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
    /// Show the catalog: prices, tokenizers, sources and dates.
    #[arg(long)]
    list: bool,
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
    if a.list {
        return list(&catalog, a.json);
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

fn list(catalog: &Catalog, json: bool) -> Result<()> {
    let mut table = crate::io::table([
        "model",
        "provider",
        "$/1M in",
        "$/1M out",
        "context",
        "tokenizer",
        "as of",
        "source",
    ]);
    for m in catalog.iter() {
        if json {
            println!(
                "{}",
                serde_json::json!({"model": m.name, "provider": m.provider, "kind": if m.kind == Kind::Hosted {"hosted"} else {"local"},
                    "input_usd_per_mtok": m.input_usd_per_mtok, "output_usd_per_mtok": m.output_usd_per_mtok,
                    "context_window": m.context_window, "tokenizer": m.tokenizer.name(), "source": m.source, "as_of": m.as_of, "from": m.from})
            );
        } else {
            let p = |v: Option<f64>| v.map_or("measured".to_string(), |v| format!("{v}"));
            table.add_row([
                m.name.clone(),
                m.provider.clone(),
                p(m.input_usd_per_mtok),
                p(m.output_usd_per_mtok),
                m.context_window.to_string(),
                m.tokenizer.name(),
                m.as_of.clone(),
                m.source.clone(),
            ]);
        }
    }
    if !json {
        println!("{table}");
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
    /// Models to price (repeatable; default: every catalog model that can answer).
    #[arg(long)]
    model: Vec<String>,
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
    source: String,
    explain: String,
}

pub fn cost(a: CostArgs, ctx: &Ctx) -> Result<()> {
    let catalog = a.sources.catalog()?;
    let profiles = a.sources.profiles()?;
    let reference = catalog.get(&a.reference).context("--reference")?.clone();
    if reference.kind != Kind::Hosted {
        bail!(
            "--reference {}: the reference must be a hosted model with a price per token",
            reference.name
        );
    }
    let models: Vec<ModelPrice> = if a.model.is_empty() {
        catalog
            .iter()
            // Encoders do not write answers: a words-out scenario does not apply to them.
            .filter(|m| !matches!(&m.tokenizer, TokenizerSpec::Asset(n) if n == "minilm"))
            .cloned()
            .collect()
    } else {
        let mut v = vec![];
        for name in &a.model {
            let m = catalog
                .get(name)
                .with_context(|| format!("--model {name}"))?;
            if matches!(&m.tokenizer, TokenizerSpec::Asset(n) if n == "minilm") {
                bail!("--model {name}: an encoder writes no answer; price a chat model");
            }
            v.push(m.clone());
        }
        v
    };
    let scenarios: Vec<u32> = a.words.map_or(vec![100, 1000], |w| vec![w]);
    let me = profiles.this_machine(a.usd_per_hour);
    let mut counters: BTreeMap<String, Counter> = BTreeMap::new();
    let mut speeds: BTreeMap<String, Measurement> = BTreeMap::new();
    for m in &models {
        counters.insert(m.name.clone(), Counter::new(m, ctx.quiet)?);
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
        let ref_usd = HostedCost::of(&reference, ref_tokens).expect("hosted").usd;
        let mut rows = vec![];
        for m in &models {
            let (t, method) = tokens_of(&counters[&m.name])?;
            let source = format!("{} ({})", m.source, m.as_of);
            let row = match m.kind {
                Kind::Hosted => {
                    let c = HostedCost::of(m, t)
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
                        source,
                        explain: c.explain(t),
                    }
                }
                Kind::Local => {
                    let meas = &speeds[&m.name];
                    let speed = Speed {
                        prompt_tokens_per_s: meas.prompt_tokens_per_s,
                        tokens_per_s: meas.tokens_per_s,
                    };
                    let (watts, measured) = match meas.watts {
                        Some(w) => (w, true),
                        None => (me.watts, false),
                    };
                    let c =
                        LocalCost::of(speed, t, me.usd_per_hour, watts, &profiles.energy, measured);
                    let e = &profiles.energy;
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
                        source: format!(
                            "measured here: {} ({} cores); price: {}; power: {}",
                            me.cpu_model,
                            me.cores,
                            me.price_basis,
                            if measured {
                                "RAPL counters".to_string()
                            } else {
                                format!("estimated, no energy counters ({})", me.watts_basis)
                            }
                        ),
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
        let hosted: Vec<f64> = rows
            .iter()
            .filter(|r| r.kind == "hosted")
            .map(|r| r.usd_per_request)
            .collect();
        let judged = quote.map(|q| {
            let lo = hosted.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = hosted.iter().cloned().fold(0.0, f64::max);
            (q, verdict(q, lo, hi))
        });
        if a.json {
            let mut v = serde_json::json!({
                "scenario": {"words": words, "prompt_words": prompt_words},
                "reference": reference.name,
                "rows": rows,
            });
            if let Some((q, verdict)) = &judged {
                v["quote"] = serde_json::json!({"text": q.text, "low_usd": q.low_usd, "high_usd": q.high_usd, "verdict": verdict});
            }
            println!("{v}");
            continue;
        }
        println!("\n{words} words answered to a {prompt_words}-word prompt (tokens of frugal's English sample, per model tokenizer); savings against {}", reference.name);
        let mut table = crate::io::table([
            "model",
            "kind",
            "tokens in/out",
            "USD/request",
            "USD/1k requests",
            "savings",
            "tok/s",
        ]);
        for r in &rows {
            table.add_row([
                r.model.clone(),
                r.kind.to_string(),
                format!(
                    "{}/{}{}",
                    r.input_tokens,
                    r.output_tokens,
                    if r.token_count == "exact" { "" } else { " ~" }
                ),
                format!("{:.6}", r.usd_per_request),
                format!("{:.4}", r.usd_per_1k_requests),
                r.savings_vs_reference
                    .map_or("-".into(), |s| format!("{:.1}%", s * 100.0)),
                r.tokens_per_s.map_or("-".into(), |s| format!("{s:.0}")),
            ]);
        }
        println!("{table}");
        if let Some((q, verdict)) = &judged {
            println!("quoted: \"{}\" — {verdict}", q.text);
        }
        if a.explain {
            for r in &rows {
                println!("  {}: {}\n    source: {}", r.model, r.explain, r.source);
            }
        } else if rows.iter().any(|r| r.token_count != "exact") {
            println!("(~ : no public tokenizer; tokens estimated from words with the catalog's stated ratio. --explain shows every formula.)");
        }
    }
    Ok(())
}
