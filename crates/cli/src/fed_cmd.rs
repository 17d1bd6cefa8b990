//! `frugal fed simulate`: federated learning across simulated data silos on this machine, with
//! real local training, against centralised training on the same data and budget.

use crate::data_cmd::FieldArgs;
use crate::io::{progress, store};
use crate::train_cmd::{load_eval, load_sets, ModeArg};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use frugal_fed::node::NodeData;
use frugal_fed::partition::{label_mix, partition, Partition};
use frugal_fed::privacy::{noise_for_epsilon, DpConfig, DpKind};
use frugal_fed::sim::{sampled_per_round, simulate, RoundReport, SimConfig, Strategy};
use frugal_models::resolve::{resolve_model, ModelPath};
use frugal_train::classifier::{fingerprint, labels_of, CheckpointInfo, Mode};
use frugal_train::data::{load, Example, Fields};
use frugal_train::learner::Learner;
use frugal_train::trainer::{Optimizer, TrainConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum FedCmd {
    /// Federated training across N simulated nodes, each with its own slice of the data.
    Simulate(Box<SimulateArgs>),
    /// A Flower node (flwr 1.42.0): joins a Flower SuperLink and trains on this machine's data.
    Node(Box<crate::fed_flower::NodeArgs>),
    /// A whole Flower federation on this machine: a SuperLink, frugal's server app with
    /// Flower's strategy, and N `fed node` processes on partitions of the data.
    Up(Box<crate::fed_flower::UpArgs>),
}

/// For `--partition field:NAME`, each example's value of that field (the data must be a file).
pub(crate) fn partition_groups(data: &str, partition: &Partition) -> Result<Option<Vec<String>>> {
    Ok(match partition {
        Partition::Field(f) => {
            if frugal_train::battery::task(data).is_some() {
                bail!("--partition field:{f}: the built-in {data} data has only text and label; give a file with that field");
            }
            let g = load(
                Path::new(data),
                &Fields {
                    text: f.clone(),
                    label: String::new(),
                },
            )
            .map_err(|e| {
                anyhow::anyhow!("--partition field:{f}: every row needs the field: {e}")
            })?;
            Some(g.into_iter().map(|e| e.text).collect::<Vec<_>>())
        }
        _ => None,
    })
}

/// `fed simulate`'s flags parsed from a list (for `frugal report`).
#[derive(clap::Parser)]
pub(crate) struct SimulateFlags {
    #[command(flatten)]
    pub args: SimulateArgs,
}

#[derive(Args)]
pub struct SimulateArgs {
    /// The encoder every node starts from (minilm, or a folder).
    #[arg(long, default_value = "minilm")]
    base: String,
    /// The data to spread over the nodes: `spamassassin` or another task of the quality battery (its train split) or a file.
    #[arg(long, default_value = "spamassassin")]
    data: String,
    /// Held-out test data (default for a built-in task: its test split).
    #[arg(long)]
    test: Option<String>,
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// iid, dirichlet:ALPHA (label mixes skewed; smaller α, more skew) or field:NAME.
    #[arg(long, default_value = "dirichlet:0.5", value_parser = |s: &str| s.parse::<Partition>())]
    partition: Partition,
    /// Share of each node's data it keeps for validation.
    #[arg(long, default_value_t = 0.1)]
    valid_frac: f64,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Share of the nodes sampled each round, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    fraction: f64,
    /// The fewest nodes that must report for a round to count.
    #[arg(long, default_value_t = 2)]
    min_nodes: usize,
    #[arg(long, value_enum, default_value = "head")]
    mode: ModeArg,
    /// Local epochs per round (default 2: with server momentum, what holds on skewed nodes).
    #[arg(long, default_value_t = 2)]
    local_epochs: usize,
    /// Local learning rate (default: 1.0 for head with sgd, 1e-2 with adamw; 5e-5 for full).
    #[arg(long)]
    lr: Option<f64>,
    /// Local optimiser: sgd or adamw (default: sgd for head, FedAvg's own; adamw for full).
    #[arg(long, value_parser = |s: &str| s.parse::<Optimizer>())]
    optimizer: Option<Optimizer>,
    /// Multiply the local learning rate by this every round (1: constant; e.g. 0.85).
    #[arg(long, default_value_t = 1.0)]
    lr_decay: f64,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// fedavg or fedprox:MU.
    #[arg(long, default_value = "fedavg", value_parser = |s: &str| s.parse::<Strategy>())]
    strategy: Strategy,
    /// Server momentum β (FedAvgM, the default 0.8); 0 is plain FedAvg.
    #[arg(long, default_value_t = 0.8)]
    server_momentum: f64,
    /// The server's step on the averaged update (FedAvgM; 1 with plain FedAvg).
    #[arg(long, default_value_t = 1.5)]
    server_lr: f64,
    /// Differential privacy: noise multiplier σ (noise std is σ·C).
    #[arg(long)]
    dp_noise: Option<f64>,
    /// Differential privacy: the ε to reach after all rounds (sets the noise).
    #[arg(long, conflicts_with = "dp_noise")]
    dp_epsilon: Option<f64>,
    /// Differential privacy: clipping norm C of each update.
    #[arg(long, default_value_t = 1.0)]
    dp_clip: f64,
    #[arg(long, default_value_t = 1e-5)]
    dp_delta: f64,
    /// Differential privacy added by each node before sending, instead of by the server.
    #[arg(long)]
    dp_local: bool,
    /// Secure aggregation: the server sees only masked updates whose sum it can unmask.
    #[arg(long)]
    secure_agg: bool,
    /// Secure aggregation: shares needed to unmask (default: a majority of the nodes per round).
    #[arg(long)]
    secagg_threshold: Option<usize>,
    /// Chance that a sampled node drops out mid-round.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for the per-round checkpoint and the final classifier (`OUT/model`).
    #[arg(long, value_parser = crate::out_dir)]
    out: PathBuf,
    /// Continue an interrupted simulation from OUT (same flags).
    #[arg(long)]
    resume: bool,
    /// Skip the centralised baseline.
    #[arg(long)]
    no_centralised: bool,
    /// Where head mode keeps the nodes' embeddings between runs (default: the cache under
    /// FRUGAL_HOME).
    #[arg(long, hide = true)]
    embedding_cache: Option<PathBuf>,
    /// Accuracy per round against centralised, as an SVG chart.
    #[arg(long)]
    chart: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fields: FieldArgs,
}

pub fn run(c: FedCmd, ctx: &Ctx) -> Result<()> {
    match c {
        FedCmd::Simulate(a) => simulate_cmd(*a, ctx, true).map(|_| ()),
        FedCmd::Node(a) => crate::fed_flower::node_cmd(*a, ctx),
        FedCmd::Up(a) => crate::fed_flower::up_cmd(*a, ctx),
    }
}

/// Runs a simulation; prints its table (or JSON with --json) when `print`, and returns the summary
/// (final accuracies, bytes, the model's folder) for callers such as `frugal report`.
pub(crate) fn simulate_cmd(a: SimulateArgs, ctx: &Ctx, print: bool) -> Result<serde_json::Value> {
    if let Some(c) = &a.chart {
        if c.extension().is_none_or(|e| e != "svg") {
            bail!("--chart {}: name the chart *.svg", c.display());
        }
    }
    if !(0.0..0.9).contains(&a.valid_frac) {
        bail!("--valid-frac {} must be in [0, 0.9)", a.valid_frac);
    }
    if print && !ctx.quiet {
        eprintln!(
            "frugal: {} rounds of {} ({} local epoch(s) per round); flags change it",
            a.rounds,
            if a.server_momentum > 0.0 || a.server_lr != 1.0 {
                format!(
                    "FedAvgM (server momentum {}, server learning rate {})",
                    a.server_momentum, a.server_lr
                )
            } else {
                "plain FedAvg".to_string()
            },
            a.local_epochs
        );
    }
    let base = match resolve_model(&a.base, &store(ctx.quiet))? {
        ModelPath::HfDir(d) => d,
        ModelPath::Gguf(p) => bail!(
            "--base {}: a chat model; federated training needs an encoder (minilm)",
            p.display()
        ),
    };
    let examples = if frugal_train::battery::task(&a.data).is_some() {
        load_sets(&a.data, None, &a.fields, ctx.quiet)?.0
    } else {
        load(Path::new(&a.data), &a.fields.fields())
            .with_context(|| format!("--data {}", a.data))?
    };
    let groups = partition_groups(&a.data, &a.partition)?;
    let test = match (&a.test, a.data.as_str()) {
        (Some(t), _) => Some(load_eval(t, &a.fields, ctx.quiet)?),
        (None, d) if frugal_train::battery::task(d).is_some() => {
            Some(load_eval(d, &a.fields, ctx.quiet)?)
        }
        _ => None,
    };
    let labels = labels_of(&examples);
    if labels.len() < 2 {
        bail!(
            "--data has one label only ({}); a classifier needs two or more",
            labels.join("")
        );
    }
    let parts = partition(&examples, groups.as_deref(), a.nodes, &a.partition, a.seed)?;
    let mode = Mode::from(a.mode);
    let local =
        crate::fed_flower::local_config(mode, a.optimizer, a.lr, a.local_epochs, a.batch, a.seed);
    let per_round = sampled_per_round(a.fraction, a.min_nodes, a.nodes);
    let dp = match (a.dp_noise, a.dp_epsilon) {
        (None, None) => None,
        (noise, eps) => {
            let q = per_round as f64 / a.nodes as f64;
            let noise = match (noise, eps) {
                (Some(s), _) => s,
                (None, Some(e)) => noise_for_epsilon(e, q, a.rounds, a.dp_delta)
                    .with_context(|| format!("--dp-epsilon {e}"))?,
                _ => unreachable!(),
            };
            Some(DpConfig {
                clip: a.dp_clip,
                noise,
                kind: if a.dp_local {
                    DpKind::Local
                } else {
                    DpKind::Central
                },
                delta: a.dp_delta,
            })
        }
    };
    let cfg = SimConfig {
        rounds: a.rounds,
        fraction: a.fraction,
        min_nodes: a.min_nodes,
        local: local.clone(),
        lr_decay: a.lr_decay,
        strategy: a.strategy,
        server_momentum: a.server_momentum,
        server_lr: a.server_lr,
        dp,
        secure: a.secure_agg.then(|| {
            a.secagg_threshold
                .unwrap_or_else(|| (per_round / 2 + 1).max(2))
        }),
        dropout: a.dropout,
        max_norm_ratio: 10.0,
        seed: a.seed,
    };
    cfg.check(a.nodes)?;

    // Each node: its own train/validation split, prepared once.
    let mut learner = Learner::new(&base, labels.clone(), mode, a.max_len, a.seed)?;
    let cache = a
        .embedding_cache
        .clone()
        .unwrap_or_else(|| frugal_models::assets::frugal_home().join("cache/embeddings"));
    // The base weights' sha256: the embedding cache key, the resume fingerprint, the checkpoint.
    let base_sha = frugal_models::assets::sha256_file(&base.join("model.safetensors"))?;
    let pb = progress(a.nodes as u64, ctx.quiet, "preparing node data");
    let mut nodes = vec![];
    let mut node_sets = vec![];
    for (id, idx) in parts.iter().enumerate() {
        let mut idx = idx.clone();
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            a.seed ^ id as u64,
        ));
        let n_valid = ((idx.len() as f64 * a.valid_frac).round() as usize).min(idx.len() - 1);
        let valid: Vec<Example> = idx[..n_valid]
            .iter()
            .map(|&i| examples[i].clone())
            .collect();
        let train: Vec<Example> = idx[n_valid..]
            .iter()
            .map(|&i| examples[i].clone())
            .collect();
        nodes.push(NodeData {
            id,
            train: learner.prepare_cached(&train, &cache, &base_sha)?,
            valid: learner.prepare_cached(&valid, &cache, &base_sha)?,
        });
        node_sets.push((train, valid));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let test_prepared = match &test {
        Some(t) => Some(learner.prepare_cached(t, &cache, &base_sha)?),
        None => None,
    };
    let mix = label_mix(&examples, &parts, &labels);
    if !ctx.quiet && !a.json {
        let mut t = crate::io::table(
            std::iter::once("node".to_string())
                .chain(labels.iter().cloned())
                .chain(["train".into(), "valid".into()]),
        );
        for (i, m) in mix.iter().enumerate() {
            t.add_row(
                std::iter::once(i.to_string())
                    .chain(m.iter().map(|c| c.to_string()))
                    .chain([
                        node_sets[i].0.len().to_string(),
                        node_sets[i].1.len().to_string(),
                    ]),
            );
        }
        eprintln!("label mix per node ({}):\n{t}", a.partition);
    }

    // The rounds.
    let data_fp = fingerprint(&examples);
    let fp = format!("{} {} {} {:?}", data_fp, a.partition, a.nodes, base_sha);
    let pb = progress(a.rounds as u64, ctx.quiet || a.json, "federated rounds");
    let quiet_rounds = ctx.quiet || a.json;
    let initial = frugal_fed::weights::Weights::from_named(&learner.weights()?)?;
    let (global, history) = simulate(
        &mut learner,
        &initial,
        &nodes,
        test_prepared.as_ref(),
        &cfg,
        &fp,
        &a.out,
        a.resume,
        &mut |r: &RoundReport| {
            pb.set_position(r.round as u64);
            if !quiet_rounds {
                pb.suspend(|| eprintln!("{}", round_line(r)));
            }
        },
    )?;
    pb.finish_and_clear();

    // The final model as an ordinary classifier checkpoint.
    learner.set_weights(&global.to_named()?)?;
    let info = CheckpointInfo {
        labels: labels.clone(),
        base: a.base.clone(),
        base_weights_sha256: base_sha.clone(),
        mode,
        max_len: a.max_len,
        config: local.clone(),
        metrics: None,
        data_fingerprint: data_fp,
        epoch: Some(history.len()),
        teacher: None,
    };
    learner.clf.save(&base, &a.out.join("model"), &info)?;

    // Centralised: the same data (every node's train split), budget (rounds × fraction × local
    // epochs passes over the data) and model.
    let centralised = if a.no_centralised {
        None
    } else {
        let all: Vec<Example> = node_sets.iter().flat_map(|s| s.0.clone()).collect();
        let epochs =
            ((a.rounds as f64 * a.fraction * a.local_epochs as f64).round() as usize).max(1);
        let mut c = Learner::new(&base, labels.clone(), mode, a.max_len, a.seed)?;
        let prepared = c.prepare_cached(&all, &cache, &base_sha)?;
        let pb = progress(1, ctx.quiet || a.json, "centralised baseline");
        c.fit(
            &prepared,
            &TrainConfig {
                epochs,
                ..local.clone()
            },
            None,
        )?;
        pb.finish_and_clear();
        let valid: Vec<Example> = node_sets.iter().flat_map(|s| s.1.clone()).collect();
        let v = if valid.is_empty() {
            None
        } else {
            Some(c.evaluate(&c.prepare(&valid)?)?.accuracy)
        };
        let t = match &test_prepared {
            Some(t) => Some(c.evaluate(t)?.accuracy),
            None => None,
        };
        Some((epochs, v, t))
    };

    // What an update of the whole model would weigh, against what was sent.
    let full_bytes = 4 * learner
        .clf
        .varmap
        .all_vars()
        .iter()
        .map(|v| v.elem_count() as u64)
        .sum::<u64>();
    let update_bytes = global.bytes();
    let last = history.last().context("no rounds ran")?;
    let mean_sent: f64 =
        history.iter().map(|r| r.bytes_sent as f64).sum::<f64>() / history.len() as f64;
    let mean_recv: f64 =
        history.iter().map(|r| r.bytes_received as f64).sum::<f64>() / history.len() as f64;
    // Bytes each node sent and received over the whole run.
    let mut per_node = vec![(0u64, 0u64); a.nodes];
    for r in &history {
        for &(i, s, rcv) in &r.node_bytes {
            per_node[i].0 += s;
            per_node[i].1 += rcv;
        }
    }
    let first_within = centralised.and_then(|(_, _, t)| t).and_then(|ct| {
        history
            .iter()
            .find(|r| r.test_accuracy.is_some_and(|x| x >= ct - 0.01))
            .map(|r| r.round)
    });
    let summary = serde_json::json!({
        "nodes": a.nodes,
        "partition": a.partition.to_string(),
        "mode": mode_name(mode),
        "label_mix": mix,
        "rounds": history,
        "final": {
            "accuracy": last.accuracy,
            "test_accuracy": last.test_accuracy,
            "epsilon": last.epsilon,
        },
        "centralised": centralised.map(|(e, v, t)| serde_json::json!({"epochs": e, "accuracy": v, "test_accuracy": t})),
        "first_round_within_1_point_of_centralised": first_within,
        "bytes": {
            "update": update_bytes,
            "full_model_update": full_bytes,
            "cut": full_bytes as f64 / update_bytes.max(1) as f64,
            "mean_sent_per_round": mean_sent,
            "mean_received_per_round": mean_recv,
            "per_node": per_node.iter().enumerate().map(|(i, (s, r))| serde_json::json!({"node": i, "sent": s, "received": r})).collect::<Vec<_>>(),
        },
        "dp": dp,
        "secure_aggregation_threshold": cfg.secure,
        "model": a.out.join("model"),
    });
    if print && a.json {
        println!("{summary}");
    } else if print {
        let mut t = crate::io::table([
            "round",
            "nodes",
            "dropped",
            "rejected",
            "accuracy (fed.)",
            "test accuracy",
            "sent MB",
            "received MB",
            "ε",
        ]);
        for r in &history {
            t.add_row([
                r.round.to_string(),
                (r.sampled.len() - r.dropped.len()).to_string(),
                r.dropped.len().to_string(),
                r.rejected.len().to_string(),
                opt(r.accuracy),
                opt(r.test_accuracy),
                format!("{:.3}", r.bytes_sent as f64 / 1e6),
                format!("{:.3}", r.bytes_received as f64 / 1e6),
                r.epsilon.map_or("—".into(), |e| {
                    if e.is_finite() {
                        format!("{e:.2}")
                    } else {
                        "∞".into()
                    }
                }),
            ]);
        }
        println!("{t}");
        if let Some((e, v, t)) = centralised {
            println!(
                "centralised ({e} epochs on all nodes' data): accuracy {} on the nodes' validation data, {} on test",
                opt(v),
                opt(t)
            );
        }
        println!(
            "federated after {} rounds: accuracy {} (nodes' validation), {} (test){}",
            history.len(),
            opt(last.accuracy),
            opt(last.test_accuracy),
            first_within.map_or(String::new(), |r| format!(
                "; within 1 point of centralised from round {r}"
            ))
        );
        println!(
            "each update is {:.1} KB ({} mode); a full-model update would be {:.1} MB ({:.0}x more)",
            update_bytes as f64 / 1e3,
            mode_name(mode),
            full_bytes as f64 / 1e6,
            full_bytes as f64 / update_bytes.max(1) as f64
        );
        println!("final classifier: {}", a.out.join("model").display());
    }
    if let Some(path) = &a.chart {
        let fed: Vec<(usize, f64)> = history
            .iter()
            .filter_map(|r| r.test_accuracy.or(r.accuracy).map(|x| (r.round, x)))
            .collect();
        let refs: Vec<(String, f64)> = centralised
            .and_then(|(_, v, t)| t.or(v))
            .map(|x| vec![("centralised".to_string(), x)])
            .unwrap_or_default();
        crate::chart::rounds(
            &format!(
                "federated {} over {} nodes ({})",
                a.strategy_name(),
                a.nodes,
                a.partition
            ),
            &fed,
            &refs,
            path,
        )?;
        if !ctx.quiet && !a.json {
            println!("chart: {}", path.display());
        }
    }
    Ok(summary)
}

impl SimulateArgs {
    fn strategy_name(&self) -> String {
        match self.strategy {
            Strategy::FedAvg if self.server_momentum > 0.0 => "FedAvgM".into(),
            Strategy::FedAvg => "FedAvg".into(),
            Strategy::FedProx(m) => format!("FedProx μ={m}"),
        }
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Head => "head",
        Mode::Full => "full",
        Mode::Lora => "lora",
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("—".into(), |x| format!("{x:.4}"))
}

fn round_line(r: &RoundReport) -> String {
    let mut s = format!(
        "round {:>3}: {} nodes reported",
        r.round,
        r.sampled.len() - r.dropped.len()
    );
    if !r.dropped.is_empty() {
        s += &format!(", {} dropped", r.dropped.len());
    }
    for rej in &r.rejected {
        s += &format!(", node {} rejected ({})", rej.node, rej.reason);
    }
    if !r.aggregated {
        s += ", too few reported (or too few to unmask): model unchanged";
    }
    s += &format!(", accuracy {}", opt(r.accuracy));
    if let Some(t) = r.test_accuracy {
        s += &format!(", test {t:.4}");
    }
    if let Some(e) = r.epsilon {
        s += &format!(", ε {e:.2}");
    }
    s
}
