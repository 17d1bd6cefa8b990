//! `frugal bench serve`: a load generator for a running `frugal serve` (or any OpenAI-compatible
//! server): N concurrent clients for a fixed time, counting statuses (429s apart from errors),
//! latency percentiles, throughput, and the server's memory read from its /metrics.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, ValueEnum)]
pub enum Endpoint {
    Classify,
    Embeddings,
    Chat,
}

#[derive(Args)]
pub struct ServeBench {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, value_enum, default_value = "classify")]
    endpoint: Endpoint,
    /// The model to ask for.
    #[arg(long)]
    model: String,
    /// Texts to send, one per line (each request sends the next one).
    #[arg(long)]
    input: PathBuf,
    /// Concurrent clients, each sending its next request when the last one is answered.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    clients: u32,
    #[arg(long, default_value_t = 60.0, value_parser = crate::non_negative_f64)]
    seconds: f64,
    /// Tokens per chat answer.
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
    /// A system message sent with every chat request (e.g. instructions and few-shot examples
    /// that all requests share, as in production: what prompt-prefix caching saves).
    #[arg(long)]
    system: Option<String>,
    #[arg(long, env = "FRUGAL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[arg(long)]
    json: bool,
}

/// Builds a request body around one text.
type BodyFn = Box<dyn Fn(&str) -> Value + Send + Sync>;

#[derive(Default)]
struct Tally {
    statuses: std::collections::BTreeMap<u16, usize>,
    transport_errors: usize,
    latencies: Vec<f64>,
    cost_usd: f64,
    reference_cost_usd: f64,
}

/// The server's resident memory (bytes) from its /metrics, if it reports it.
async fn server_rss(client: &reqwest::Client, url: &str, key: Option<&str>) -> Option<(f64, f64)> {
    let mut req = client.get(format!("{url}/metrics"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let text = req.send().await.ok()?.text().await.ok()?;
    let get = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
    };
    Some((
        get("frugal_process_resident_memory_bytes")?,
        get("frugal_process_peak_resident_memory_bytes")?,
    ))
}

pub fn run(a: ServeBench) -> Result<()> {
    let texts = crate::io::lines_of(&a.input)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(drive(a, texts))
}

async fn drive(a: ServeBench, texts: Vec<String>) -> Result<()> {
    let url = a.url.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients as usize)
        .timeout(Duration::from_secs(600))
        .build()?;
    let key = a.api_key.clone();
    let before = server_rss(&client, &url, key.as_deref()).await;
    let health = client
        .get(format!("{url}/health"))
        .send()
        .await
        .with_context(|| format!("--url {url}: no server answers there"))?;
    if !health.status().is_success() {
        bail!(
            "--url {url}: /health answered {}; wait until the models are loaded",
            health.status()
        );
    }
    let (path, make): (&str, BodyFn) = match a.endpoint {
        Endpoint::Classify => {
            let m = a.model.clone();
            (
                "/v1/classify",
                Box::new(move |t| json!({"model": m, "input": t})),
            )
        }
        Endpoint::Embeddings => {
            let m = a.model.clone();
            (
                "/v1/embeddings",
                Box::new(move |t| json!({"model": m, "input": t, "encoding_format": "float"})),
            )
        }
        Endpoint::Chat => {
            let m = a.model.clone();
            let n = a.max_tokens;
            let system = a.system.clone();
            (
                "/v1/chat/completions",
                Box::new(move |t| {
                    let mut messages = vec![];
                    if let Some(s) = &system {
                        messages.push(json!({"role": "system", "content": s}));
                    }
                    messages.push(json!({"role": "user", "content": t}));
                    json!({"model": m, "max_tokens": n, "temperature": 0, "messages": messages})
                }),
            )
        }
    };
    let make = Arc::new(make);
    let texts = Arc::new(texts);
    let next = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + Duration::from_secs_f64(a.seconds);
    let t0 = Instant::now();
    let peak = Arc::new(std::sync::Mutex::new(before.map_or(0.0, |b| b.0)));
    let sampler = {
        let (client, url, key, peak) = (client.clone(), url.clone(), key.clone(), peak.clone());
        tokio::spawn(async move {
            while Instant::now() < end {
                if let Some((rss, _)) = server_rss(&client, &url, key.as_deref()).await {
                    let mut p = peak.lock().expect("lock");
                    *p = p.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mut tasks = vec![];
    for _ in 0..a.clients {
        let (client, url, key, make, texts, next) = (
            client.clone(),
            format!("{url}{path}"),
            key.clone(),
            make.clone(),
            texts.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while Instant::now() < end {
                let i = next.fetch_add(1, Ordering::Relaxed) % texts.len();
                let mut req = client.post(&url).json(&make(&texts[i]));
                if let Some(k) = &key {
                    req = req.bearer_auth(k);
                }
                let s = Instant::now();
                match req.send().await {
                    Ok(r) => {
                        let code = r.status().as_u16();
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        *t.statuses.entry(code).or_default() += 1;
                        if code == 200 {
                            t.latencies.push(s.elapsed().as_secs_f64());
                            t.cost_usd += body["usage"]["cost_usd"].as_f64().unwrap_or(0.0);
                            t.reference_cost_usd +=
                                body["usage"]["reference_cost_usd"].as_f64().unwrap_or(0.0);
                        } else if code == 429 {
                            // Back off a little, as a client should.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    Err(_) => t.transport_errors += 1,
                }
            }
            t
        }));
    }
    let mut all = Tally::default();
    for h in tasks {
        let t = h.await?;
        for (k, v) in t.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        all.transport_errors += t.transport_errors;
        all.latencies.extend(t.latencies);
        all.cost_usd += t.cost_usd;
        all.reference_cost_usd += t.reference_cost_usd;
    }
    let secs = t0.elapsed().as_secs_f64();
    let _ = sampler.await;
    let after = server_rss(&client, &url, key.as_deref()).await;
    all.latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        if all.latencies.is_empty() {
            0.0
        } else {
            all.latencies[((all.latencies.len() - 1) as f64 * q).round() as usize]
        }
    };
    let ok = all.statuses.get(&200).copied().unwrap_or(0);
    let busy = all.statuses.get(&429).copied().unwrap_or(0);
    let other: usize = all
        .statuses
        .iter()
        .filter(|(k, _)| **k != 200 && **k != 429)
        .map(|(_, v)| v)
        .sum();
    let mb = |b: f64| (b / 1048576.0 * 10.0).round() / 10.0;
    let v = json!({
        "clients": a.clients,
        "seconds": (secs * 10.0).round() / 10.0,
        "ok": ok,
        "rejected_429": busy,
        "other_errors": other + all.transport_errors,
        "statuses": all.statuses,
        "ok_per_s": (ok as f64 / secs * 10.0).round() / 10.0,
        "latency_p50_s": pct(0.5),
        "latency_p95_s": pct(0.95),
        "latency_p99_s": pct(0.99),
        "cost_usd": all.cost_usd,
        "reference_cost_usd": all.reference_cost_usd,
        "server_rss_mb_before": before.map(|b| mb(b.0)),
        "server_rss_mb_peak_during": mb(*peak.lock().expect("lock")),
        "server_rss_mb_after": after.map(|b| mb(b.0)),
    });
    if a.json {
        println!("{v}");
    } else {
        println!(
            "{ok} answered ({:.1}/s), {busy} turned away with 429, {} other errors in {:.1} s with {} clients; latency p50 {:.3} s, p95 {:.3} s, p99 {:.3} s; server memory {} → peak {} → {} MB; cost ${:.6} here vs ${:.4} at the reference",
            ok as f64 / secs, other + all.transport_errors, secs, a.clients, pct(0.5), pct(0.95), pct(0.99),
            v["server_rss_mb_before"], v["server_rss_mb_peak_during"], v["server_rss_mb_after"], all.cost_usd, all.reference_cost_usd
        );
    }
    Ok(())
}
