//! `frugal`: make language-model work cheap and prove it. This binary only parses arguments and
//! wires the library crates together; each subcommand lives in its own module.

mod assets_cmd;
mod bench;
mod bench_all;
mod bench_quality;
mod bench_serve;
mod cache_cmd;
mod chart;
mod chat;
mod cost_cmd;
mod data_cmd;
mod distill_cmd;
mod embed;
mod fed_cmd;
mod fed_flower;
mod fewshot_cmd;
mod generate;
mod io;
mod report;
mod serve_cmd;
mod sft_cmd;
mod tco_cmd;
mod tokenize;
mod train_cmd;

use clap::{Args, Parser, Subcommand};

/// frugal — cheap language-model work, measured.
#[derive(Parser)]
#[command(name = "frugal", version, propagate_version = true)]
struct Cli {
    /// CPU threads for model work (default: all cores).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// No progress bars or notices.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Precision of encoder inference (embed, eval, predict, serve, bench embed): f32, bf16
    /// (AVX512-BF16) or int8 (AVX512-VNNI); a CPU without the instructions runs f32 and says so.
    /// Training always runs in f32.
    #[arg(long, global = true, default_value = "f32")]
    precision: frugal_models::lowp::Precision,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pinned models and data sets: list them, fetch them.
    #[command(subcommand)]
    Assets(assets_cmd::AssetsCmd),
    /// The semantic cache measured offline: hits, false hits, recall on labelled pairs.
    #[command(subcommand)]
    Cache(cache_cmd::CacheCmd),
    /// Sentence embeddings from an encoder (one text per argument, or one per stdin line).
    Embed(embed::EmbedArgs),
    /// Generate a completion from a GGUF chat model, streaming it.
    Generate(generate::GenerateArgs),
    /// Interactive multi-turn chat with a GGUF chat model.
    Chat(chat::ChatArgs),
    /// Show how a model's tokenizer splits text.
    Tokenize(tokenize::TokenizeArgs),
    /// Measure speed and memory.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Count tokens exactly with a catalog model's tokenizer; --list shows the price catalog.
    Tokens(cost_cmd::TokensArgs),
    /// What a request costs on hosted and local models, with savings against a reference.
    Cost(cost_cmd::CostArgs),
    /// Total cost of an LLM project over the five cost drivers, scenarios side by side.
    Tco(tco_cmd::TcoArgs),
    /// Labelled text data: prepare train/valid/test splits, show statistics.
    #[command(subcommand)]
    Data(data_cmd::DataCmd),
    /// Train a text classifier from a pretrained encoder (transfer learning or fine-tuning).
    Train(train_cmd::TrainArgs),
    /// Score a trained classifier on labelled data.
    Eval(train_cmd::EvalArgs),
    /// Classify texts with a trained classifier.
    Predict(train_cmd::PredictArgs),
    /// Distil a teacher (a checkpoint, a chat model, or brought outputs) into a smaller, faster
    /// student classifier, and compare the two.
    Distill(Box<distill_cmd::DistillArgs>),
    /// Classify with no labelled examples: label descriptions (encoders) or a prompt (chat models).
    Zeroshot(Box<fewshot_cmd::ZeroShotArgs>),
    /// Learn from K examples per label: SetFit-style contrastive fine-tuning (encoders) or the
    /// nearest examples in context (chat models).
    Fewshot(Box<fewshot_cmd::FewShotArgs>),
    /// Accuracy against labelled examples per label (few-shot over seeds), beside zero-shot and
    /// full fine-tuning; optionally as an SVG chart.
    Curve(Box<fewshot_cmd::CurveArgs>),
    /// Federated learning: train one model across data silos without moving their data.
    #[command(subcommand)]
    Fed(fed_cmd::FedCmd),
    /// Serve local models behind an OpenAI-compatible HTTP API, with costs per response, a
    /// cascade router and a semantic cache.
    Serve(Box<serve_cmd::ServeArgs>),
    /// Run the cheaper alternatives on a labelled task and compare their quality and cost per
    /// 1,000 requests with a hosted reference.
    Report(Box<report::ReportArgs>),
    /// Fine-tune a local chat model on prompt→answer pairs with LoRA adapters; `sft merge`
    /// folds an adapter into its base as a GGUF file.
    Sft(Box<sft_cmd::SftArgs>),
    /// Score a chat model's answers against reference answers: exact match, ROUGE-L, speed and
    /// cost beside a hosted model's.
    EvalGen(Box<sft_cmd::EvalGenArgs>),
    /// The cascade router: calibrate its threshold from labelled data.
    #[command(subcommand)]
    Route(serve_cmd::RouteCmd),
}

/// Sampling flags shared by `generate` and `chat`.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 0.95, value_parser = unit_interval)]
    top_p: f32,
    /// Penalise recently generated tokens (1.0: off).
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    repeat_penalty: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

impl SamplingArgs {
    fn params(&self) -> frugal_models::chat::SamplingParams {
        frugal_models::chat::SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: 64,
            seed: self.seed,
        }
    }
}

fn non_negative(s: &str) -> Result<f32, String> {
    non_negative_f64(s).map(|v| v as f32)
}

/// A finite number of 0 or more (clap value parser).
pub fn non_negative_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err("must be 0 or more".into())
    }
}

/// An `--out` folder: a path that is a folder or does not exist yet. An existing file is refused
/// up front, so it is never moved aside or replaced by a checkpoint (clap value parser).
pub fn out_dir(s: &str) -> Result<std::path::PathBuf, String> {
    let p = std::path::PathBuf::from(s);
    if p.exists() && !p.is_dir() {
        return Err(format!(
            "'{s}' is an existing file, not a folder: --out names the folder frugal writes into; choose another path"
        ));
    }
    Ok(p)
}

fn positive(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err("must be more than 0".into())
    }
}

fn unit_interval(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err("must be in (0, 1]".into())
    }
}

/// Settings every command sees.
pub struct Ctx {
    pub quiet: bool,
    pub threads: usize,
    /// Precision asked for encoder inference (`io::apply_precision` resolves it).
    pub precision: frugal_models::lowp::Precision,
}

/// A reader that went away (`frugal cost | head -1`) ends the program quietly: `println!`
/// panics on a closed pipe, and that is no error of ours.
fn quiet_on_broken_pipe() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info)
    }));
}

fn main() {
    tune_allocator();
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("FRUGAL_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let threads = cli.threads.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // One pool size for our kernels (rayon) and candle's.
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // Pool threads pinned one to a physical core (the chat runtime's forward pass runs on them
    // with spinning barriers: a thread moved between cores stalls them all).
    let cores = physical_cores();
    let pin = std::env::var("FRUGAL_PIN_THREADS").map_or(true, |v| v != "0")
        && !cores.is_empty()
        && threads <= cores.len();
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(move |i| {
            if pin {
                pin_to(cores[i % cores.len()]);
            }
        })
        .build_global();
    let ctx = Ctx {
        quiet: cli.quiet,
        threads,
        precision: cli.precision,
    };
    let result = match cli.command {
        Command::Assets(c) => assets_cmd::run(c, &ctx),
        Command::Cache(c) => cache_cmd::run(c, &ctx),
        Command::Embed(a) => embed::run(a, &ctx),
        Command::Generate(a) => generate::run(a, &ctx),
        Command::Chat(a) => chat::run(a, &ctx),
        Command::Tokenize(a) => tokenize::run(a, &ctx),
        Command::Bench(c) => bench::run(c, &ctx),
        Command::Tokens(a) => cost_cmd::tokens(a, &ctx),
        Command::Cost(a) => cost_cmd::cost(a, &ctx),
        Command::Tco(a) => tco_cmd::run(a, &ctx),
        Command::Data(c) => data_cmd::run(c, &ctx),
        Command::Train(a) => train_cmd::train_cmd(a, &ctx),
        Command::Sft(a) => sft_cmd::sft_cmd(*a, &ctx),
        Command::EvalGen(a) => sft_cmd::eval_gen_cmd(*a, &ctx),
        Command::Eval(a) => train_cmd::eval_cmd(a, &ctx),
        Command::Predict(a) => train_cmd::predict_cmd(a, &ctx),
        Command::Distill(a) => distill_cmd::distill_cmd(*a, &ctx),
        Command::Zeroshot(a) => fewshot_cmd::zeroshot_cmd(*a, &ctx),
        Command::Fewshot(a) => fewshot_cmd::fewshot_cmd(*a, &ctx),
        Command::Curve(a) => fewshot_cmd::curve_cmd(*a, &ctx),
        Command::Fed(c) => fed_cmd::run(c, &ctx),
        Command::Serve(a) => serve_cmd::serve_cmd(*a, &ctx),
        Command::Route(c) => serve_cmd::route_cmd(c, &ctx),
        Command::Report(a) => report::report_cmd(*a, &ctx),
    };
    if let Err(e) = result {
        // A reader that went away (`frugal generate … | head`) is not an error of ours.
        let broken_pipe = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            std::process::exit(0);
        }
        eprintln!("frugal: error: {e:#}");
        // Stopped by Ctrl-C: the shell's convention for SIGINT.
        let interrupted = e.chain().any(|c| {
            matches!(
                c.downcast_ref::<frugal_train::Error>(),
                Some(frugal_train::Error::Interrupted(_))
            )
        });
        std::process::exit(if interrupted { 130 } else { 1 });
    }
}

/// Keeps large freed buffers in the heap instead of returning them to the kernel: model passes
/// free and re-allocate the same tensor sizes every batch, and glibc's default (mmap each big
/// block, unmap it on free) made page faults ~14% of embedding time.
/// One CPU per physical core among those this process may use (SMT siblings left out), from
/// Linux's topology files; empty where they cannot be read.
fn physical_cores() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it for this process.
        let allowed = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return vec![];
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect::<Vec<_>>()
        };
        let mut seen = std::collections::BTreeSet::new();
        allowed
            .into_iter()
            .filter(|c| {
                let read = |f: &str| {
                    std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{c}/topology/{f}"))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| c.to_string())
                };
                seen.insert((read("physical_package_id"), read("core_id")))
            })
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        vec![]
    }
}

/// Pins the calling thread to `cpu` (Linux; elsewhere nothing).
fn pin_to(cpu: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: the set is initialised before use; affinity only affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cpu;
}

fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any threads start.
    unsafe {
        // Blocks up to 32 MiB (glibc's largest allowed threshold) come from the heap, and
        // freed memory is never handed back to the kernel (a training step frees most of its
        // ~1.5 GB at its end: with a 1 GiB threshold the heap was trimmed and every page
        // faulted in again next step, ~2 M page faults per 10 steps).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
