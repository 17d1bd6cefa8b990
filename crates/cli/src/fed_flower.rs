//! `frugal fed node`: a Rust Flower SuperNode (flwr 1.42.0's Fleet API) training frugal's
//! classifier on this machine's data inside a real Flower federation; `frugal fed up`: a whole
//! federation on one machine (a Flower SuperLink, frugal's Flower server app, N nodes).

use crate::data_cmd::FieldArgs;
use crate::io::store;
use crate::train_cmd::ModeArg;
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::Args;
use frugal_fed::flower::client::Connection;
use frugal_fed::flower::node::{run, NodeOptions};
use frugal_fed::node::NodeData;
use frugal_models::resolve::{resolve_model, ModelPath};
use frugal_train::classifier::{labels_of, Mode};
use frugal_train::data::{load, Example};
use frugal_train::learner::Learner;
use frugal_train::trainer::{Optimizer, TrainConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set by Ctrl-C or SIGTERM: the node finishes the message in hand, deactivates and exits.
static STOP: AtomicBool = AtomicBool::new(false);

#[derive(Args)]
pub struct NodeArgs {
    /// The Flower SuperLink's Fleet API, HOST:PORT (flwr 1.42: its one HTTP port, 8000 by default).
    #[arg(long)]
    superlink: String,
    /// PEM of the CA that signed the SuperLink's certificate (TLS).
    #[arg(
        long,
        conflicts_with = "insecure",
        required_unless_present = "insecure"
    )]
    root_certificates: Option<PathBuf>,
    /// Plain HTTP, no TLS (a SuperLink started with --insecure).
    #[arg(long)]
    insecure: bool,
    /// This node's labelled data (.jsonl/.csv/.tsv); it never leaves the machine.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    fields: FieldArgs,
    /// Every label of the federation, comma-separated, in the order of the server's checkpoint
    /// (default: this node's own labels, sorted: wrong when the node lacks one).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// The encoder the federation's classifier is built on.
    #[arg(long, default_value = "minilm")]
    base: String,
    #[arg(long, value_enum, default_value = "head")]
    mode: ModeArg,
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Share of the local data kept for `evaluate` instructions.
    #[arg(long, default_value_t = 0.1)]
    valid_frac: f64,
    /// Local epochs, unless the server's config says (`local-epochs`).
    #[arg(long, default_value_t = 1)]
    local_epochs: usize,
    /// Local learning rate, unless the server's config says (`lr`); default as `fed simulate`.
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, value_parser = |s: &str| s.parse::<Optimizer>())]
    optimizer: Option<Optimizer>,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seconds between the heartbeats the SuperLink expects (10 to 1800).
    #[arg(long, default_value_t = 30.0)]
    heartbeat: f64,
    /// Milliseconds between polls when idle.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// Seconds to keep retrying an unreachable SuperLink before giving up.
    #[arg(long, default_value_t = 120)]
    retry_for: u64,
    /// Exit after answering this many instructions (for tests).
    #[arg(long, hide = true)]
    max_messages: Option<usize>,
    #[arg(long)]
    json: bool,
}

/// The local learning settings `fed simulate` uses for a mode and optimiser.
pub(crate) fn local_config(
    mode: Mode,
    optimizer: Option<Optimizer>,
    lr: Option<f64>,
    epochs: usize,
    batch: usize,
    seed: u64,
) -> TrainConfig {
    let optimizer = optimizer.unwrap_or(if mode == Mode::Head {
        Optimizer::Sgd
    } else {
        Optimizer::AdamW
    });
    let lr = lr.unwrap_or(match (mode, optimizer) {
        (Mode::Head, Optimizer::Sgd) => 1.0,
        (Mode::Head, Optimizer::AdamW) => 1e-2,
        (_, Optimizer::Sgd) => 1e-2,
        (Mode::Full, Optimizer::AdamW) => 5e-5,
        (Mode::Lora, Optimizer::AdamW) => 5e-4,
    });
    TrainConfig {
        epochs,
        lr,
        batch,
        weight_decay: if mode == Mode::Head { 0.0 } else { 0.01 },
        warmup: 0.0,
        patience: 0,
        seed,
        optimizer,
        ..Default::default()
    }
}

pub fn node_cmd(a: NodeArgs, ctx: &Ctx) -> Result<()> {
    if !(10.0..=1800.0).contains(&a.heartbeat) {
        bail!(
            "--heartbeat {}: Flower accepts 10 to 1800 seconds",
            a.heartbeat
        );
    }
    let base = match resolve_model(&a.base, &store(ctx.quiet))
        .with_context(|| format!("--base {}", a.base))?
    {
        ModelPath::HfDir(d) => d,
        ModelPath::Gguf(p) => bail!(
            "--base {}: needs an encoder (minilm, a folder)",
            p.display()
        ),
    };
    let examples = load(&a.data, &a.fields.fields())
        .with_context(|| format!("--data {}", a.data.display()))?;
    let labels = if a.labels.is_empty() {
        labels_of(&examples)
    } else {
        a.labels.clone()
    };
    if let Some(e) = examples.iter().find(|e| !labels.contains(&e.label)) {
        bail!(
            "--data {}: label '{}' is not among --labels ({})",
            a.data.display(),
            e.label,
            labels.join(", ")
        );
    }
    let mode = Mode::from(a.mode);
    let mut learner = Learner::new(&base, labels.clone(), mode, a.max_len, a.seed)?;
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(a.seed));
    let n_valid =
        ((idx.len() as f64 * a.valid_frac).round() as usize).min(idx.len().saturating_sub(1));
    let pick = |ix: &[usize]| -> Vec<Example> { ix.iter().map(|&i| examples[i].clone()).collect() };
    let data = NodeData {
        id: 0,
        train: learner.prepare(&pick(&idx[n_valid..]))?,
        valid: learner.prepare(&pick(&idx[..n_valid]))?,
    };
    let opts = NodeOptions {
        connection: Connection {
            superlink: a.superlink.clone(),
            root_certificates: a.root_certificates.clone(),
            insecure: a.insecure,
            retry_for: Duration::from_secs(a.retry_for),
        },
        heartbeat_interval: a.heartbeat,
        poll: Duration::from_millis(a.poll_ms),
        train: local_config(mode, a.optimizer, a.lr, a.local_epochs, a.batch, a.seed),
        max_messages: a.max_messages,
    };
    let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed));
    let quiet = ctx.quiet;
    let log = run(&opts, &mut learner, &data, &STOP, &mut |l| {
        if !quiet {
            eprintln!("frugal node: {l}");
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&log)?);
    } else if !ctx.quiet {
        eprintln!(
            "frugal node {}: {} train and {} evaluate instructions answered, {} errors",
            log.node_id, log.trained, log.evaluated, log.errors
        );
    }
    Ok(())
}
