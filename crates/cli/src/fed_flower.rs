//! `frugal fed node`: a Rust Flower SuperNode (flwr 1.42.0's Fleet API) training frugal's
//! classifier on this machine's data inside a real Flower federation; `frugal fed up`: a whole
//! federation on one machine (a Flower SuperLink, frugal's Flower server app, N nodes).

use crate::data_cmd::FieldArgs;
use crate::train_cmd::ModeArg;
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::Args;
use frugal_fed::flower::client::Connection;
use frugal_fed::flower::node::{run, NodeOptions};
use frugal_fed::node::NodeData;
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
    let base = crate::io::encoder_base(&a.base, ctx.quiet)?;
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
            stop: Some(&STOP),
        },
        heartbeat_interval: a.heartbeat,
        poll: Duration::from_millis(a.poll_ms),
        train: local_config(mode, a.optimizer, a.lr, a.local_epochs, a.batch, a.seed),
        max_messages: a.max_messages,
    };
    let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed));
    let quiet = ctx.quiet;
    let log = match run(&opts, &mut learner, &data, &STOP, &mut |l| {
        if !quiet {
            eprintln!("frugal node: {l}");
        }
    }) {
        Ok(log) => log,
        // Stopped while still trying to reach the SuperLink: a stop, not a failure.
        Err(_) if STOP.load(Ordering::Relaxed) => {
            if !quiet {
                eprintln!("frugal node: stopped before joining");
            }
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
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

/// The Flower version `fed up` installs and `fed node` speaks.
const FLWR_PIN: &str = "flwr==1.42.0";

/// frugal's Flower app, carried in the binary and written out for `flwr run`.
const APP_FILES: [(&str, &str); 5] = [
    (
        "pyproject.toml",
        include_str!("../../../flower/pyproject.toml"),
    ),
    (
        "frugal_flower/__init__.py",
        include_str!("../../../flower/frugal_flower/__init__.py"),
    ),
    (
        "frugal_flower/server_app.py",
        include_str!("../../../flower/frugal_flower/server_app.py"),
    ),
    (
        "frugal_flower/client_app.py",
        include_str!("../../../flower/frugal_flower/client_app.py"),
    ),
    (
        "frugal_flower/checkpoint.py",
        include_str!("../../../flower/frugal_flower/checkpoint.py"),
    ),
];

#[derive(Args)]
pub struct UpArgs {
    /// Nodes to start.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The data to spread over the nodes: `spamassassin` or another task of the quality battery (its train split) or a file.
    #[arg(long, default_value = "spamassassin")]
    data: String,
    /// Held-out test data for the final model (default for a built-in task: its test split).
    #[arg(long)]
    test: Option<String>,
    #[command(flatten)]
    fields: FieldArgs,
    /// iid, dirichlet:ALPHA or field:NAME, as `fed simulate`.
    #[arg(long, default_value = "dirichlet:0.5", value_parser = |s: &str| s.parse::<frugal_fed::partition::Partition>())]
    partition: frugal_fed::partition::Partition,
    /// Rounds (default 20: with FedAvgM and 2 local epochs, what holds on skewed nodes).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Flower's strategy: fedavg, fedavgm or fedprox (default fedavgm: server momentum keeps
    /// skewed nodes' updates from pulling the model back and forth).
    #[arg(long, default_value = "fedavgm", value_parser = ["fedavg", "fedavgm", "fedprox"])]
    strategy: String,
    #[arg(long, default_value_t = 0.0)]
    proximal_mu: f64,
    /// FedAvgM's server momentum β.
    #[arg(long, default_value_t = 0.8)]
    server_momentum: f64,
    /// FedAvgM's server learning rate.
    #[arg(long, default_value_t = 1.5)]
    server_lr: f64,
    /// Nodes that must be up (and report) for a round; default: all of them.
    #[arg(long)]
    min_nodes: Option<usize>,
    #[arg(long, default_value_t = 2)]
    local_epochs: usize,
    /// Local learning rate (default as `fed simulate`).
    #[arg(long)]
    lr: Option<f64>,
    /// Server-side differential privacy (Flower's fixed-clipping wrapper): noise multiplier.
    #[arg(long, default_value_t = 0.0)]
    dp_noise: f64,
    #[arg(long, default_value_t = 1.0)]
    dp_clip: f64,
    #[arg(long, default_value = "minilm")]
    base: String,
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Plain HTTP on loopback instead of TLS with a throwaway certificate authority.
    #[arg(long)]
    insecure: bool,
    /// Seconds between node heartbeats (a dead node is noticed after two).
    #[arg(long, default_value_t = 10.0)]
    heartbeat: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Working folder: node data, certificates, logs, the initial and final (`OUT/model`) models.
    #[arg(long, value_parser = crate::out_dir)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

/// A Python virtual environment with the pinned Flower, made once under $FRUGAL_HOME/venvs
/// (in place: its scripts name their folder) behind a lock, and its `bin` folder.
fn flower_venv(quiet: bool) -> Result<PathBuf> {
    let dir = frugal_models::assets::frugal_home()
        .join("venvs")
        .join(FLWR_PIN.replace("==", "-"));
    let bin = dir.join("bin");
    let done = dir.join(".complete");
    if done.is_file() {
        return Ok(bin);
    }
    std::fs::create_dir_all(dir.parent().expect("a parent"))?;
    let lock = std::fs::File::create(dir.with_extension("lock"))?;
    // SAFETY: flock on a file descriptor this process owns; released when the file closes.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::flock(lock.as_raw_fd(), libc::LOCK_EX);
    }
    if done.is_file() {
        return Ok(bin);
    }
    let _ = std::fs::remove_dir_all(&dir);
    if !quiet {
        eprintln!(
            "frugal: installing {FLWR_PIN} into {} (once)",
            dir.display()
        );
    }
    let ok = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .context("running python3 -m venv (install python3 and python3-venv)")?
        .success();
    if !ok {
        bail!(
            "python3 -m venv {} failed: install python3-venv",
            dir.display()
        );
    }
    let ok = std::process::Command::new(bin.join("pip"))
        .args(["install", "-q", "--disable-pip-version-check", FLWR_PIN])
        .status()?
        .success();
    if !ok {
        bail!("pip install {FLWR_PIN} failed (it needs PyPI)");
    }
    std::fs::write(&done, FLWR_PIN)?;
    Ok(bin)
}

/// A throwaway CA and a server certificate for 127.0.0.1/localhost, as PEM files in `dir`:
/// (ca.pem, server.pem, server.key).
fn make_certs(dir: &std::path::Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "frugal fed up (throwaway CA)");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
    p.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    p.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let cert = p.signed_by(&key, &issuer)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}

/// A child process in its own process group, stopped (SIGTERM to the group, then SIGKILL)
/// when dropped.
struct Proc {
    child: std::process::Child,
    name: String,
}

impl Proc {
    fn spawn(mut cmd: std::process::Command, name: &str, log: &std::path::Path) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        let f =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdout(f.try_clone()?).stderr(f).process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            child,
            name: name.to_string(),
        })
    }

    /// SIGTERM to the process group; SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        let pid = self.child.id() as i32;
        // SAFETY: signals to a process group this process created.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
        let t0 = std::time::Instant::now();
        while t0.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        tracing::debug!("{} killed after {grace:?}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop(Duration::from_secs(5));
        }
    }
}

/// A free TCP port on loopback.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn up_cmd(a: UpArgs, ctx: &Ctx) -> Result<()> {
    use frugal_fed::partition::partition;
    if a.nodes < 1 {
        bail!("--nodes must be at least 1");
    }
    if !ctx.quiet {
        eprintln!(
            "frugal: {} rounds of Flower's {}{} ({} local epoch(s) per round); flags change it",
            a.rounds,
            a.strategy,
            if a.strategy == "fedavgm" {
                format!(
                    " (server momentum {}, server learning rate {})",
                    a.server_momentum, a.server_lr
                )
            } else {
                String::new()
            },
            a.local_epochs
        );
    }
    if !(10.0..=1800.0).contains(&a.heartbeat) {
        bail!(
            "--heartbeat {}: Flower accepts 10 to 1800 seconds",
            a.heartbeat
        );
    }
    let min_nodes = a.min_nodes.unwrap_or(a.nodes);
    if min_nodes == 0 || min_nodes > a.nodes {
        bail!("--min-nodes {min_nodes}: between 1 and --nodes {}", a.nodes);
    }
    let base = crate::io::encoder_base(&a.base, ctx.quiet)?;
    let examples = if frugal_train::battery::task(&a.data).is_some() {
        crate::train_cmd::load_sets(&a.data, None, &a.fields, ctx.quiet)?.0
    } else {
        load(std::path::Path::new(&a.data), &a.fields.fields())
            .with_context(|| format!("--data {}", a.data))?
    };
    let test = match (&a.test, a.data.as_str()) {
        (Some(t), _) => Some(crate::train_cmd::load_eval(t, &a.fields, ctx.quiet)?),
        (None, d) if frugal_train::battery::task(d).is_some() => {
            Some(crate::train_cmd::load_eval(d, &a.fields, ctx.quiet)?)
        }
        _ => None,
    };
    let labels = labels_of(&examples);
    if labels.len() < 2 {
        bail!("--data has one label only; a classifier needs two or more");
    }
    let groups = crate::fed_cmd::partition_groups(&a.data, &a.partition)?;
    let parts = partition(&examples, groups.as_deref(), a.nodes, &a.partition, a.seed)?;
    let bin = flower_venv(ctx.quiet)?;
    // Ctrl-C / SIGTERM: stop the run, the nodes and the SuperLink (they are dropped on return).
    let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed));
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let out = std::fs::canonicalize(&a.out)?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs)?;

    // The initial model, as a frugal checkpoint the server app starts from.
    let learner = Learner::new(&base, labels.clone(), Mode::Head, a.max_len, a.seed)?;
    let initial = out.join("initial");
    let base_sha = frugal_models::assets::sha256_file(&base.join("model.safetensors"))?;
    let info = frugal_train::classifier::CheckpointInfo {
        labels: labels.clone(),
        base: a.base.clone(),
        base_weights_sha256: base_sha,
        mode: Mode::Head,
        max_len: a.max_len,
        config: local_config(Mode::Head, None, a.lr, a.local_epochs, 16, a.seed),
        metrics: None,
        data_fingerprint: frugal_train::classifier::fingerprint(&examples),
        epoch: Some(0),
        teacher: None,
    };
    learner.clf.save(&base, &initial, &info)?;
    drop(learner);

    // The app, the Flower home and (unless --insecure) the certificates.
    let app = out.join("app");
    for (name, text) in APP_FILES {
        let p = app.join(name);
        std::fs::create_dir_all(p.parent().expect("a parent"))?;
        std::fs::write(&p, text)?;
    }
    let flwr_home = out.join("flwr");
    std::fs::create_dir_all(&flwr_home)?;
    let port = free_port()?;
    let certs = if a.insecure {
        None
    } else {
        Some(make_certs(&out.join("tls"))?)
    };
    let conn = match &certs {
        Some((ca, _, _)) => format!("root-certificates = \"{}\"", ca.display()),
        None => "insecure = true".to_string(),
    };
    std::fs::write(
        flwr_home.join("config.toml"),
        format!("[superlink]\ndefault = \"local\"\n[superlink.local]\naddress = \"127.0.0.1:{port}\"\n{conn}\n"),
    )?;
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let flower_env = |c: &mut std::process::Command| {
        c.env("PATH", &path)
            .env("FLWR_HOME", &flwr_home)
            .env("FLWR_TELEMETRY_ENABLED", "0")
            .env("FLWR_DISABLE_UPDATE_CHECK", "1");
    };

    // The SuperLink.
    let mut c = std::process::Command::new(bin.join("flower-superlink"));
    flower_env(&mut c);
    c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--disable-runtime-dependency-installation");
    match &certs {
        Some((ca, cert, key)) => {
            c.arg("--ssl-ca-certfile").arg(ca);
            c.arg("--ssl-certfile").arg(cert);
            c.arg("--ssl-keyfile").arg(key);
        }
        None => {
            c.arg("--insecure");
        }
    }
    let mut superlink = Proc::spawn(c, "flower-superlink", &logs.join("superlink.log"))?;
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(s)) = superlink.child.try_wait() {
            bail!(
                "flower-superlink exited ({s}) before listening; see {}",
                logs.join("superlink.log").display()
            );
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("flower-superlink did not listen on 127.0.0.1:{port} within 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !ctx.quiet {
        eprintln!(
            "frugal: Flower SuperLink on 127.0.0.1:{port} ({}); logs in {}",
            if a.insecure { "plain HTTP" } else { "TLS" },
            logs.display()
        );
    }

    // The nodes, each with its share of the data.
    let me = std::env::current_exe()?;
    let mut nodes = vec![];
    for (i, idx) in parts.iter().enumerate() {
        let file = out.join("nodes").join(format!("node{i}.jsonl"));
        std::fs::create_dir_all(file.parent().expect("a parent"))?;
        let mine: Vec<Example> = idx.iter().map(|&j| examples[j].clone()).collect();
        frugal_train::data::write_jsonl(&file, &mine)?;
        let mut c = std::process::Command::new(&me);
        c.args(["fed", "node", "--superlink", &format!("127.0.0.1:{port}")])
            .arg("--data")
            .arg(&file)
            .args(["--labels", &labels.join(",")])
            .args(["--base", &a.base, "--max-len", &a.max_len.to_string()])
            .args(["--local-epochs", &a.local_epochs.to_string()])
            .args(["--seed", &(a.seed + i as u64).to_string()])
            .args(["--heartbeat", &a.heartbeat.to_string(), "--threads", "1"]);
        if let Some(lr) = a.lr {
            c.args(["--lr", &lr.to_string()]);
        }
        match &certs {
            Some((ca, _, _)) => {
                c.arg("--root-certificates").arg(ca);
            }
            None => {
                c.arg("--insecure");
            }
        }
        nodes.push(Proc::spawn(
            c,
            &format!("node {i}"),
            &logs.join(format!("node{i}.log")),
        )?);
    }

    // The run: frugal's server app with Flower's strategy, streamed into its log.
    let model = out.join("model");
    let mut cfg = vec![
        format!("checkpoint='{}'", initial.display()),
        format!("out='{}'", model.display()),
        format!("num-server-rounds={}", a.rounds),
        format!("strategy='{}'", a.strategy),
        format!("proximal-mu={:?}", a.proximal_mu),
        format!("server-momentum={:?}", a.server_momentum),
        format!("server-lr={:?}", a.server_lr),
        format!("min-nodes={min_nodes}"),
        format!("local-epochs={}", a.local_epochs),
        format!("dp-noise={:?}", a.dp_noise),
        format!("dp-clip={:?}", a.dp_clip),
        format!("dp-sampled-nodes={}", a.nodes),
    ];
    if let Some(lr) = a.lr {
        cfg.push(format!("lr={lr:?}"));
    }
    let _ = std::fs::remove_dir_all(&model);
    let mut c = std::process::Command::new(bin.join("flwr"));
    flower_env(&mut c);
    c.arg("run")
        .arg(&app)
        .args(["local", "--stream", "--run-config", &cfg.join(" ")]);
    let t_run = std::time::Instant::now();
    let mut run = Proc::spawn(c, "flwr run", &logs.join("serverapp.log"))?;
    let status = loop {
        if let Some(s) = run.child.try_wait()? {
            break s;
        }
        if model.join("history.json").is_file() {
            // The server app is done; `flwr run --stream` may linger on the log stream.
            std::thread::sleep(Duration::from_secs(2));
            break run.child.try_wait()?.unwrap_or_default();
        }
        if STOP.load(Ordering::Relaxed) {
            bail!(
                "stopped; the federation was shut down (logs in {})",
                logs.display()
            );
        }
        // Flower would wait for nodes that are gone: say so instead.
        let mut alive = 0;
        for n in nodes.iter_mut() {
            alive += matches!(n.child.try_wait(), Ok(None)) as usize;
        }
        if alive < min_nodes {
            bail!(
                "only {alive} of {} nodes are still running (the run needs {min_nodes}); see {}",
                a.nodes,
                logs.display()
            );
        }
        if let Ok(Some(s)) = superlink.child.try_wait() {
            bail!(
                "the Flower SuperLink exited ({s}); see {}",
                logs.join("superlink.log").display()
            );
        }
        if t_run.elapsed() > Duration::from_secs(3600) {
            bail!(
                "the Flower run did not finish within an hour; see {}",
                logs.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let run_secs = t_run.elapsed().as_secs_f64();
    run.stop(Duration::from_secs(3));
    for n in &mut nodes {
        n.stop(Duration::from_secs(10));
    }
    superlink.stop(Duration::from_secs(10));
    if !model.join("history.json").is_file() {
        bail!(
            "the Flower run ended ({status}) without a final model; see {}",
            logs.join("serverapp.log").display()
        );
    }

    // The result: per-round metrics from Flower, the final model on the test data.
    let history: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("history.json"))?)?;
    let test_metrics = match &test {
        Some(t) => {
            let (clf, _) = frugal_train::classifier::Classifier::load(&model)?;
            Some(clf.evaluate(t, 32)?)
        }
        None => None,
    };
    let summary = serde_json::json!({
        "engine": "flower",
        "flower": FLWR_PIN,
        "nodes": a.nodes,
        "rounds": a.rounds,
        "strategy": a.strategy,
        "tls": !a.insecure,
        "seconds": run_secs,
        "history": history,
        "test_accuracy": test_metrics.as_ref().map(|m| m.accuracy),
        "test_macro_f1": test_metrics.as_ref().map(|m| m.macro_f1),
        "model": model,
    });
    write_atomic_json(&out.join("summary.json"), &summary)?;
    if a.json {
        println!("{summary}");
    } else {
        let mut t = crate::io::table(["round", "train loss", "node validation accuracy"]);
        for r in 1..=a.rounds {
            let k = r.to_string();
            t.add_row([
                k.clone(),
                history["train"][&k]["train_loss"]
                    .as_f64()
                    .map_or("—".into(), |v| format!("{v:.4}")),
                history["evaluate"][&k]["accuracy"]
                    .as_f64()
                    .map_or("—".into(), |v| format!("{v:.4}")),
            ]);
        }
        println!("{t}");
        if let Some(m) = &test_metrics {
            println!(
                "final model ({}): test accuracy {:.4}, macro-F1 {:.4}; {} rounds over {} Flower nodes in {:.0} s",
                model.display(),
                m.accuracy,
                m.macro_f1,
                a.rounds,
                a.nodes,
                run_secs
            );
        }
    }
    Ok(())
}

fn write_atomic_json(p: &std::path::Path, v: &serde_json::Value) -> Result<()> {
    crate::io::write_atomic(p, &serde_json::to_vec_pretty(v)?)
}
