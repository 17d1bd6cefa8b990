//! `frugal serve` (the OpenAI-compatible server) and `frugal route calibrate` (the cascade
//! router's threshold from labelled data).

use crate::cost_cmd::SourcesArgs;
use crate::data_cmd::FieldArgs;
use crate::io::{store, table};
use crate::train_cmd::load_eval;
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use frugal_serve::cache::{CacheConfig, VerifierConfig};
use frugal_serve::pricing::Pricing;
use frugal_serve::route::{calibrate, margin, Calibration, Case, RouteConfig};
use frugal_serve::ServeConfig;
use frugal_train::classifier::Classifier;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// A model to serve: asset name, .gguf chat model or encoder folder, optionally NAME=SPEC
    /// (repeatable). Default, when no --model or --classifier is given: smollm2 and minilm.
    #[arg(long)]
    model: Vec<String>,
    /// A `frugal train` classifier for /v1/classify, as NAME=DIR (repeatable).
    #[arg(long, value_parser = name_dir)]
    classifier: Vec<(String, PathBuf)>,
    /// A LoRA adapter from `frugal sft` merged into the chat model served as NAME, as NAME=DIR
    /// (repeatable; serve the base twice under two names to offer both).
    #[arg(long, value_parser = name_dir)]
    adapter: Vec<(String, PathBuf)>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health (or set FRUGAL_API_KEY).
    #[arg(long, env = "FRUGAL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Requests waiting per model; one more is answered 429.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    queue: u32,
    /// KV caches kept per chat model: a request reuses the one sharing the longest prompt
    /// prefix with it (system prompts, few-shot examples, earlier turns), so prefixes of up to
    /// this many interleaved conversations are not computed again; 0 turns reuse off.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=256))]
    prefix_cache: u32,
    /// Generations per chat model decoded together: requests join and leave between decode
    /// steps, and each step reads the weights once for all of them (1: one after another).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    chat_batch: u32,
    /// Texts an encoder or classifier runs together (1 turns dynamic batching off).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_batch: u32,
    /// Milliseconds a batch waits for more requests to fill it.
    #[arg(long, default_value_t = 2)]
    batch_wait_ms: u64,
    /// Largest request body accepted.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Most tokens one completion may generate.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    /// Most prompt tokens one request may send (0: the chat model's context window); a long
    /// prompt is read in chunks between other requests' steps either way.
    #[arg(long, default_value_t = 0)]
    max_prompt_tokens: u32,
    /// Seconds a request may take, waiting included; generation stops there (finish `length`).
    #[arg(long, default_value_t = 300.0, value_parser = crate::non_negative_f64)]
    timeout: f64,
    /// The hosted model every chat/completion response's `reference_cost_usd` is priced as.
    #[arg(long, default_value = "gpt-4o")]
    reference: String,
    /// The hosted model embeddings are priced as.
    #[arg(long, default_value = "text-embedding-3-small")]
    embed_reference: String,
    /// Price this machine at X USD per hour (default: its cores at a cloud instance's
    /// per-vCPU price, from the hardware profiles).
    #[arg(long, value_parser = crate::non_negative_f64)]
    usd_per_hour: Option<f64>,
    /// A cascade route file: adds the model `frugal-router` (see README).
    #[arg(long)]
    route: Option<PathBuf>,
    /// Reuse answers to near-identical chat requests (semantic cache with a negation guard).
    #[arg(long)]
    cache: bool,
    /// The served encoder that embeds requests for the cache.
    #[arg(long, default_value = "minilm")]
    cache_model: String,
    /// Cosine similarity from which two requests count as the same.
    #[arg(long, default_value_t = 0.95)]
    cache_threshold: f32,
    /// Answers the cache keeps.
    #[arg(long, default_value_t = 1024)]
    cache_size: usize,
    /// A pair classifier from `frugal cache train`: a hit must also pass it (reads the cached
    /// request and the new one together).
    #[arg(long, requires = "cache")]
    cache_verifier: Option<PathBuf>,
    /// The verifier's probability of "the same question" a hit needs (choose it with
    /// `frugal cache eval --verifier DIR --target-false-hits 0.01`).
    #[arg(long, default_value_t = frugal_serve::cache::DEFAULT_MIN_PROB, value_parser = crate::unit_interval, requires = "cache_verifier")]
    cache_verifier_min: f32,
    #[command(flatten)]
    billing: crate::cost_cmd::BillingArgs,
    #[command(flatten)]
    sources: SourcesArgs,
}

fn name_dir(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, d)) if !n.is_empty() && !d.is_empty() => Ok((n.to_string(), PathBuf::from(d))),
        _ => Err(format!(
            "'{s}' is not NAME=DIR; e.g. --classifier spam=models/spam-full"
        )),
    }
}

pub fn serve_cmd(a: ServeArgs, ctx: &Ctx) -> Result<()> {
    let catalog = a.sources.catalog()?;
    let profiles = a.sources.profiles()?;
    let mut pricing = Pricing::new(
        &catalog,
        &profiles,
        &a.reference,
        &a.embed_reference,
        a.usd_per_hour,
        a.billing.billing(),
    )
    .map_err(anyhow::Error::msg)?;
    let route = a
        .route
        .as_deref()
        .map(RouteConfig::load)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if let Some(name) = route.as_ref().and_then(|r| r.upstream.price_as.as_deref()) {
        pricing
            .set_upstream(&catalog, name)
            .map_err(anyhow::Error::msg)?;
    }
    let mut models = a.model.clone();
    if models.is_empty() && a.classifier.is_empty() {
        models = vec!["smollm2".into(), "minilm".into()];
    }
    if a.cache
        && !models
            .iter()
            .any(|m| frugal_serve::split_name(m).0 == a.cache_model)
    {
        models.push(a.cache_model.clone());
    }
    if !(0.0..=1.0).contains(&a.cache_threshold) {
        bail!(
            "--cache-threshold {} must be between 0 and 1",
            a.cache_threshold
        );
    }
    // A flag naming a folder that is not a classifier checkpoint is refused before any loading.
    let checkpoint = |flag: String, dir: &std::path::Path, how: &str| -> Result<()> {
        if !dir.join("frugal.json").is_file() {
            bail!(
                "{flag}{}: not a frugal classifier checkpoint (no frugal.json); train one with `{how}`",
                dir.display()
            );
        }
        Ok(())
    };
    if let Some(dir) = &a.cache_verifier {
        checkpoint(
            "--cache-verifier ".into(),
            dir,
            "frugal cache train --pairs FILE --out DIR",
        )?;
    }
    for (name, dir) in &a.classifier {
        checkpoint(format!("--classifier {name}="), dir, "frugal train")?;
    }
    let addr: std::net::SocketAddr = format!("{}:{}", a.host, a.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (a.host.as_str(), a.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut it| it.next())
                .ok_or(())
        })
        .map_err(|_| anyhow::anyhow!("--host {}: not an address or a resolvable name", a.host))?;
    let cfg = ServeConfig {
        models,
        classifiers: a.classifier.clone(),
        adapters: a.adapter.clone(),
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        queue: a.queue as usize,
        prefix_slots: a.prefix_cache as usize,
        chat_batch: a.chat_batch as usize,
        max_batch: a.max_batch as usize,
        batch_wait: Duration::from_millis(a.batch_wait_ms),
        max_body_bytes: a.max_body_bytes,
        max_tokens: a.max_tokens as usize,
        max_prompt_tokens: a.max_prompt_tokens as usize,
        timeout: Duration::from_secs_f64(a.timeout.max(0.001)),
        pricing,
        route,
        cache: a.cache.then(|| CacheConfig {
            encoder: a.cache_model.clone(),
            threshold: a.cache_threshold,
            capacity: a.cache_size,
            verifier: a.cache_verifier.clone().map(|dir| VerifierConfig {
                dir,
                min_prob: a.cache_verifier_min,
            }),
        }),
        precision: {
            let (p, notice) = ctx.precision.resolve();
            if let (Some(n), false) = (notice, ctx.quiet) {
                eprintln!("frugal: {n}");
            }
            p
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ctx.threads.clamp(1, 4))
        .enable_all()
        .build()?;
    let quiet = ctx.quiet;
    rt.block_on(frugal_serve::run(
        cfg,
        addr,
        store(quiet),
        move |bound| {
            // Always said: scripts wait for this line to learn the port (with --port 0).
            eprintln!("frugal: listening on http://{bound} (models loading; GET /health is 200 when ready)");
        },
        move |names| {
            if !quiet {
                eprintln!("frugal: ready, serving {}", names.join(", "));
            }
        },
        shutdown_signal(),
    ))
    .map_err(anyhow::Error::msg)?;
    if !quiet {
        eprintln!("frugal: stopped");
    }
    Ok(())
}

/// Ctrl-C or SIGTERM: stop accepting, finish what is in flight.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("frugal: shutting down after the requests in flight");
}

#[derive(Subcommand)]
pub enum RouteCmd {
    /// Pick the cascade's threshold: the cheapest that keeps the quality target on labelled data.
    Calibrate(Box<CalibrateArgs>),
    /// Record the route's upstream answers on a data set (for `calibrate --upstream-answers`),
    /// asking it exactly as the router would.
    Record(RecordArgs),
}

#[derive(Args)]
pub struct RecordArgs {
    /// The route file whose [upstream] and [classify] say where and how to ask.
    #[arg(long)]
    route: PathBuf,
    /// Texts to classify (a labelled file, or `spamassassin` for its validation split).
    #[arg(long)]
    data: String,
    /// Where to write JSONL of `{text, label}` (label "" when a chat answer named none).
    #[arg(long)]
    out: PathBuf,
    /// Texts per upstream request.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=2048))]
    batch: u32,
    #[command(flatten)]
    fields: FieldArgs,
}

#[derive(Args)]
pub struct CalibrateArgs {
    /// The local classifier (a `frugal train` checkpoint) that answers first.
    #[arg(long)]
    classifier: PathBuf,
    /// Labelled data to calibrate on (a file, or `spamassassin` for its validation split).
    #[arg(long)]
    data: String,
    /// The upstream's recorded answers on the same texts: JSONL with the text field and `label`
    /// (e.g. saved from its /v1/classify). Without it the upstream is assumed always right.
    #[arg(long)]
    upstream_answers: Option<PathBuf>,
    /// Quality to keep, as a fraction of the upstream's accuracy (1 = as good as sending
    /// everything upstream; without recorded answers, plain accuracy).
    #[arg(long, default_value_t = 0.99, value_parser = crate::non_negative_f64)]
    target_quality: f64,
    /// How sure the choice must be: the target must hold at this one-sided confidence level
    /// (a normal bound on the per-example difference), not just on this sample; 0 turns it off.
    #[arg(long, default_value_t = 0.95, value_parser = confidence_level)]
    confidence: f64,
    /// Also check the chosen threshold on this labelled data (e.g. the test split).
    #[arg(long)]
    test: Option<String>,
    /// The upstream's recorded answers on the --test texts.
    #[arg(long, requires = "test")]
    test_upstream_answers: Option<PathBuf>,
    /// The hosted model the upstream is priced as.
    #[arg(long, default_value = "gpt-4o")]
    reference: String,
    #[arg(long, value_parser = crate::non_negative_f64)]
    usd_per_hour: Option<f64>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fields: FieldArgs,
    #[command(flatten)]
    billing: crate::cost_cmd::BillingArgs,
    #[command(flatten)]
    sources: SourcesArgs,
}

fn confidence_level(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be at least 0 and below 1 (e.g. 0.95)".into())
    }
}

/// The one-sided standard-normal quantile for a confidence level (0 → no bound).
fn z_of(level: f64) -> f64 {
    if level <= 0.5 {
        return 0.0;
    }
    // Bisection on the normal CDF.
    let mut lo = 0.0f64;
    let mut hi = 10.0f64;
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if normal_cdf(mid) < level {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

fn normal_cdf(x: f64) -> f64 {
    // Abramowitz–Stegun 7.1.26 (error < 1.5e-7).
    let t = 1.0 / (1.0 + 0.3275911 * x.abs() / std::f64::consts::SQRT_2);
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
            + 0.254829592)
            * t
            * (-(x * x) / 2.0).exp();
    if x >= 0.0 {
        0.5 * (1.0 + y)
    } else {
        0.5 * (1.0 - y)
    }
}

pub fn route_cmd(c: RouteCmd, ctx: &Ctx) -> Result<()> {
    match c {
        RouteCmd::Calibrate(a) => calibrate_cmd(*a, ctx),
        RouteCmd::Record(a) => record_cmd(a, ctx),
    }
}

/// Labelled examples of `data` (`spamassassin`: its validation split).
fn labelled(
    data: &str,
    fields: &FieldArgs,
    quiet: bool,
) -> Result<Vec<frugal_train::data::Example>> {
    let examples = if frugal_train::battery::task(data).is_some() {
        crate::train_cmd::load_sets(data, None, fields, quiet)?
            .1
            .unwrap_or_default()
    } else {
        load_eval(data, fields, quiet)?
    };
    if examples.is_empty() {
        bail!("--data {data}: no labelled examples");
    }
    Ok(examples)
}

fn record_cmd(a: RecordArgs, ctx: &Ctx) -> Result<()> {
    let route = RouteConfig::load(&a.route).map_err(anyhow::Error::msg)?;
    if route.classify.is_none() {
        bail!(
            "--route {}: has no [classify] section to record",
            a.route.display()
        );
    }
    let examples = labelled(&a.data, &a.fields, ctx.quiet)?;
    let labels = frugal_train::classifier::labels_of(&examples);
    let http = reqwest::Client::builder()
        .timeout(route.upstream.timeout())
        .build()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pb = crate::io::progress(examples.len() as u64, ctx.quiet, "asking the upstream");
    let mut out = String::new();
    let mut unparsed = 0;
    for chunk in examples.chunks(a.batch as usize) {
        let texts: Vec<&str> = chunk.iter().map(|e| e.text.as_str()).collect();
        let answers = rt
            .block_on(frugal_serve::route::classify_upstream(
                &http, &route, &texts, &labels,
            ))
            .map_err(anyhow::Error::msg)?;
        for (e, ans) in chunk.iter().zip(answers) {
            unparsed += ans.label.is_empty() as usize;
            let mut v = serde_json::json!({"label": ans.label});
            v[a.fields.fields().text] = serde_json::json!(e.text);
            if let Some(t) = ans.answer {
                v["answer"] = serde_json::json!(t);
            }
            out.push_str(&v.to_string());
            out.push('\n');
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    crate::io::write_atomic(&a.out, out.as_bytes())?;
    let right = out
        .lines()
        .zip(&examples)
        .filter(|(l, e)| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["label"] == e.label.as_str())
        })
        .count();
    if !ctx.quiet {
        eprintln!(
            "frugal: {} answers in {} ({} named no label); the upstream's accuracy on them: {:.4}",
            examples.len(),
            a.out.display(),
            unparsed,
            right as f64 / examples.len() as f64
        );
    }
    Ok(())
}

/// Cases (confidence, right or wrong) of the local classifier on labelled data, with the
/// upstream's recorded answers; and the measured local seconds and hosted USD per request.
fn cases(
    clf: &Classifier,
    data: &str,
    answers: Option<&PathBuf>,
    a: &CalibrateArgs,
    pricing: &Pricing,
    quiet: bool,
) -> Result<(Vec<Case>, f64, f64)> {
    let examples = labelled(data, &a.fields, quiet)?;
    let recorded: Option<HashMap<String, String>> = answers
        .map(|p| crate::io::read_answers(p, &a.fields.fields().text, "--upstream-answers"))
        .transpose()?;
    let refs: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let t0 = std::time::Instant::now();
    let probs = clf.predict(&refs, 32)?;
    let local_secs = t0.elapsed().as_secs_f64() / examples.len() as f64;
    let mut out = vec![];
    let mut hosted = 0.0;
    for (e, p) in examples.iter().zip(&probs) {
        let best = frugal_models::chat::sampling::argmax(p) as usize;
        let local_correct = clf.labels[best] == e.label;
        let upstream_correct = match &recorded {
            // An answer that named no label leaves the local answer standing, as the router does.
            Some(m) => Some(
                m.get(&e.text)
                    .map(|l| if l.is_empty() { local_correct } else { *l == e.label })
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "the upstream answers have no answer for a text of {data} (\"{}…\"); record them on the same texts",
                            e.text.chars().take(40).collect::<String>()
                        )
                    })?,
            ),
            None => None,
        };
        out.push(Case {
            confidence: margin(p) as f64,
            local_correct,
            upstream_correct,
        });
        hosted += pricing
            .hosted_usd(&pricing.reference, &e.text, &e.label)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    }
    Ok((out, local_secs, hosted / examples.len() as f64))
}

fn calibrate_cmd(a: CalibrateArgs, ctx: &Ctx) -> Result<()> {
    let pricing = a
        .sources
        .pricing(&a.reference, a.usd_per_hour, a.billing.billing())?;
    let (clf, _) = Classifier::load(&a.classifier)
        .with_context(|| format!("--classifier {}", a.classifier.display()))?;
    let (cs, local_secs, up_usd) = cases(
        &clf,
        &a.data,
        a.upstream_answers.as_ref(),
        &a,
        &pricing,
        ctx.quiet,
    )?;
    let local_usd = pricing.local_usd(local_secs);
    let z = z_of(a.confidence);
    let cal = calibrate(&cs, a.target_quality, z, local_usd, up_usd);
    let test = match &a.test {
        Some(t) => {
            let (tc, _, _) = cases(
                &clf,
                t,
                a.test_upstream_answers.as_ref(),
                &a,
                &pricing,
                ctx.quiet,
            )?;
            let th = cal.chosen.as_ref().map_or(f64::INFINITY, |p| p.threshold);
            // The curve at exactly the chosen threshold on the test data.
            let tcal = calibrate(&tc, a.target_quality, 0.0, local_usd, up_usd);
            let point = tcal
                .curve
                .iter()
                .filter(|p| p.threshold <= th)
                .max_by(|x, y| x.threshold.total_cmp(&y.threshold))
                .cloned();
            Some((tcal, point))
        }
        None => None,
    };
    if a.json {
        let mut v = serde_json::json!({
            "calibration": cal,
            "local_usd_per_request": local_usd,
            "upstream_usd_per_request": up_usd,
            "reference": a.reference,
        });
        if let Some((tcal, point)) = &test {
            v["test"] = serde_json::json!({
                "at_chosen_threshold": point,
                "upstream_accuracy": tcal.upstream_accuracy,
                "local_accuracy": tcal.local_accuracy,
                "meets_target": point.as_ref().is_some_and(|p| p.quality >= a.target_quality),
            });
        }
        println!("{v}");
        return Ok(());
    }
    print_curve(&cal, local_usd, up_usd);
    match &cal.chosen {
        Some(p) => println!(
            "chosen: threshold {:.4} (escalate when the margin is below it): {:.1}% sent upstream, accuracy {:.4}, quality {:.4} ≥ {} of the upstream's (at {:.0}% confidence), ${:.4} per 1,000 requests ({:.1}% less than all upstream)\nput `threshold = {:.4}` under [classify] in the route file",
            p.threshold, p.escalated * 100.0, p.accuracy, p.quality, a.target_quality, a.confidence * 100.0, p.usd_per_1k, p.savings * 100.0, p.threshold
        ),
        None => println!(
            "no threshold reaches {} of the upstream's quality on this data at {:.0}% confidence (--confidence): sending everything upstream gives {:.4}",
            a.target_quality,
            a.confidence * 100.0,
            cal.curve.last().map_or(0.0, |p| p.quality)
        ),
    }
    if let Some((tcal, Some(p))) = &test {
        println!(
            "on {}: {:.1}% sent upstream, accuracy {:.4} (local alone {:.4}, upstream alone {:.4}), quality {:.4}: target {} {}",
            a.test.as_deref().unwrap_or(""),
            p.escalated * 100.0,
            p.accuracy,
            tcal.local_accuracy,
            tcal.upstream_accuracy,
            p.quality,
            a.target_quality,
            if p.quality >= a.target_quality { "met" } else { "NOT met" }
        );
    }
    if !cal.upstream_recorded {
        println!("note: no recorded upstream answers: the upstream was assumed always right (--upstream-answers)");
    }
    Ok(())
}

fn print_curve(cal: &Calibration, local_usd: f64, up_usd: f64) {
    // About a dozen points spread over the share escalated.
    let mut rows = vec![];
    let mut last = -1.0;
    for p in &cal.curve {
        if p.escalated - last >= 0.05 || std::ptr::eq(p, cal.curve.last().expect("points")) {
            rows.push(vec![
                format!("{:.4}", p.threshold),
                format!("{:.1}%", p.escalated * 100.0),
                format!("{:.4}", p.accuracy),
                format!("{:.4}", p.quality),
                format!("${:.4}", p.usd_per_1k),
                format!("{:.1}%", p.savings * 100.0),
            ]);
            last = p.escalated;
        }
    }
    println!(
        "local alone: accuracy {:.4}, ${:.5} per 1,000; upstream alone: accuracy {:.4}, ${:.4} per 1,000",
        cal.local_accuracy,
        local_usd * 1000.0,
        cal.upstream_accuracy,
        (local_usd + up_usd) * 1000.0
    );
    let mut t = table([
        "threshold",
        "upstream",
        "accuracy",
        "quality",
        "per 1,000",
        "savings",
    ]);
    for r in rows {
        t.add_row(r);
    }
    println!("{t}");
}
