//! `frugal report`: runs the cheaper alternatives on a labelled task and sets their quality and
//! cost per 1,000 requests beside the hosted reference's.
//!
//! The alternatives: the hosted reference (catalog price × real token counts), zero-shot
//! (encoder), transfer learning (head), few-shot SetFit, full fine-tuning, a student distilled
//! from the fine-tuned model, federated training over 5 simulated non-IID nodes, and the local
//! chat model (SmolLM2) prompted directly and with in-context examples; plus the few-shot
//! learning curve. Writes `report.md`, `report.html` (charts) and `report.json`; every row is
//! kept under `rows/` keyed by its inputs, so an interrupted run resumes where it stopped.

use crate::data_cmd::FieldArgs;
use crate::io::{progress, store, write_atomic};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use frugal_cost::verdict::QualityBasis;
use frugal_models::resolve::{resolve_model, ModelPath};
use frugal_serve::pricing::Pricing;
use frugal_train::classifier::{
    default_epochs, fingerprint, head_config, labels_of, Classifier, Mode, TrainSpec,
};
use frugal_train::data::{stratified_split, Example};
use frugal_train::fewshot::{sample_shots, short_labels, zero_shot, LabelDescriptions};
use frugal_train::trainer::TrainConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Budget {
    /// Subsampled to finish in about 10 minutes on 2 cores: 800 training, 200 validation and 400
    /// test examples, the same for every trained row; the chat model on 80 test texts (32 in
    /// context).
    Quick,
    /// The whole task.
    Full,
}

#[derive(Args)]
pub struct ReportArgs {
    /// A built-in task: `spamassassin` or another task of the quality battery (`frugal bench
    /// quality --list`) — or use --data.
    #[arg(long, default_value = "spamassassin", conflicts_with = "data")]
    task: String,
    /// Only these alternatives (comma-separated row names; the reference and the majority
    /// class always run). Default: all of them.
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
    /// Your own labelled data (.jsonl/.csv/.tsv), split 70/10/20 with the seed.
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    fields: FieldArgs,
    /// Where report.md, report.json and the per-alternative results go.
    #[arg(long, default_value = "report", value_parser = crate::out_dir)]
    out: PathBuf,
    /// The hosted model the alternatives are compared with.
    #[arg(long, default_value = "gpt-4o")]
    reference: String,
    /// The reference model's answers on the test texts (JSONL with the text field and `label`),
    /// to measure its quality; without them its quality is unknown.
    #[arg(long)]
    reference_answers: Option<PathBuf>,
    /// The reference's published accuracy on this task (0 to 1), with --reference-source: the
    /// verdict then asks for 97% of it (instead of 97% of the best local row).
    #[arg(long, value_parser = unit_interval, requires = "reference_source", conflicts_with = "reference_answers")]
    reference_accuracy: Option<f64>,
    /// Where --reference-accuracy comes from (a paper, a leaderboard, your own evaluation).
    #[arg(long, requires = "reference_accuracy")]
    reference_source: Option<String>,
    /// The prompt you send the reference today (instructions, few-shot examples…), a text file
    /// with `{text}` where each text goes (and optionally `{labels}`): the reference is priced
    /// on it. Default: a one-line instruction, named in the report.
    #[arg(long)]
    reference_prompt: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "quick")]
    budget: Budget,
    /// Also run the generation task (LoRA fine-tuning of the chat model on email subject lines)
    /// in the quick budget, where it is left out: about 15 more minutes on 2 cores.
    #[arg(long)]
    generation: bool,
    /// Zero-shot label descriptions, NAME="description" (repeatable; a label given again gets
    /// another description). Default: built-in ones for spamassassin, else the label names.
    #[arg(long = "label", value_parser = crate::fewshot_cmd::parse_label)]
    labels: Vec<(String, String)>,
    /// The encoder every local alternative starts from.
    #[arg(long, default_value = "minilm")]
    base: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Price this machine at this many USD per hour (default: per vCPU like the hardware
    /// profile it is matched with).
    #[arg(long, value_parser = crate::non_negative_f64)]
    usd_per_hour: Option<f64>,
    /// A CPU cloud instance from the hardware profiles (`frugal cost --explain` lists them) to
    /// price every measured second on as well (default: the one this machine is priced like).
    #[arg(long)]
    instance: Option<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    billing: crate::cost_cmd::BillingArgs,
    #[command(flatten)]
    sources: crate::cost_cmd::SourcesArgs,
}

/// One alternative's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub what: String,
    /// `done`, or `skipped: reason`.
    pub status: String,
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    pub usd_per_1k: Option<f64>,
    /// How the cost was obtained: measured here, or computed from the catalog.
    pub cost_basis: String,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// Mean single-request latency measured here (the basis of the measured costs).
    #[serde(default)]
    pub request_seconds: Option<f64>,
    pub train_seconds: Option<f64>,
    pub train_usd: Option<f64>,
    pub test_examples: usize,
    pub train_examples: usize,
    /// Wall time of computing the row (training, scoring and timing), seconds.
    #[serde(default)]
    pub wall_seconds: f64,
    /// Inputs that make the row what it is; a rerun recomputes a row whose key changed.
    pub key: String,
}

/// What the measured seconds cost on a named cloud CPU instance: core-seconds used here × its
/// per-vCPU price, plus its per-vCPU power draw at the profile's electricity price.
struct Instance {
    name: String,
    usd_per_vcpu_hour: f64,
    watts_per_vcpu: f64,
    energy: frugal_cost::hardware::Energy,
    source: String,
    cores_here: f64,
}

impl Instance {
    fn usd(&self, secs: f64) -> f64 {
        let core_secs = secs * self.cores_here;
        let kwh = self.watts_per_vcpu * core_secs * self.energy.pue / 3.6e6;
        core_secs * self.usd_per_vcpu_hour / 3600.0 + kwh * self.energy.usd_per_kwh
    }
}

/// The `--instance` profile (default: the one this machine is priced like); GPU profiles are
/// refused, as CPU seconds say nothing about a GPU's.
fn instance(a: &ReportArgs, ctx: &Ctx) -> Result<Instance> {
    let profiles = a.sources.profiles()?;
    let name = a.instance.clone().unwrap_or(profiles.local_like.clone());
    let m = profiles
        .machine(&name)
        .map_err(|e| anyhow::anyhow!("--instance: {e}"))?;
    if m.kind != "cpu" {
        bail!(
            "--instance {name}: a {} profile; these alternatives run on CPU here, so name a CPU profile ({})",
            m.kind,
            profiles
                .machines
                .iter()
                .filter(|(_, m)| m.kind == "cpu")
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(Instance {
        name: name.clone(),
        usd_per_vcpu_hour: m.usd_per_hour / m.vcpus as f64,
        watts_per_vcpu: m.watts / m.vcpus as f64,
        energy: profiles.energy.clone(),
        source: m.source.clone(),
        cores_here: ctx.threads as f64,
    })
}

const PROMPT: &str =
    "Classify the text as one of: {labels}. Answer with the label only.\n\nText: {text}";

/// A share from 0 to 1 (clap value parser).
fn unit_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{s} is outside 0..1: give the accuracy as a share (0.83 for 83%)"
        ))
    }
}

/// The prompt the reference is priced on: `--reference-prompt`'s template (which must hold
/// `{text}`) or the one-line default, and how the report names it.
fn reference_prompt(a: &ReportArgs) -> Result<(String, String)> {
    let Some(p) = &a.reference_prompt else {
        return Ok((
            PROMPT.to_string(),
            format!("the one-line instruction \"{}\"", PROMPT.replace('\n', " ")),
        ));
    };
    let t = frugal_train::data::read_text(p)
        .with_context(|| format!("--reference-prompt {}", p.display()))?;
    if !t.contains("{text}") {
        bail!(
            "--reference-prompt {}: the template has no {{text}}; put {{text}} where each text goes (and {{labels}} for the label list if you send one)",
            p.display()
        );
    }
    Ok((t, format!("the prompt in {}", p.display())))
}

/// Label descriptions for zero-shot on the built-in task; other tasks use the label names.
fn descriptions(task: &str, labels: &[String]) -> Vec<(String, String)> {
    let known = |l: &str| match (task, l) {
        ("spamassassin", "spam") => Some("an unsolicited advertisement, offer or scam email"),
        ("spamassassin", "ham") => Some("a normal personal, work or mailing-list email"),
        _ => None,
    };
    labels
        .iter()
        .map(|l| (l.clone(), known(l).unwrap_or(l).to_string()))
        .collect()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Single-request latency of a classifier on up to 40 test texts (one text per call, as a
/// request would come): p50, p95 and mean seconds.
fn latency(
    predict: &mut dyn FnMut(&str) -> Result<()>,
    test: &[Example],
) -> Result<(f64, f64, f64)> {
    let sample: Vec<&Example> = test.iter().take(40).collect();
    if let Some(e) = sample.first() {
        predict(&e.text)?; // warm-up
    }
    let mut t: Vec<f64> = vec![];
    for e in &sample {
        let s = Instant::now();
        predict(&e.text)?;
        t.push(s.elapsed().as_secs_f64());
    }
    let mean = t.iter().sum::<f64>() / t.len().max(1) as f64;
    t.sort_by(f64::total_cmp);
    Ok((percentile(&t, 0.5), percentile(&t, 0.95), mean))
}

/// Accuracy and macro-F1 of probabilities against gold labels.
fn score(labels: &[String], test: &[Example], probs: &[Vec<f32>]) -> (f64, f64) {
    let gold: Vec<usize> = test
        .iter()
        .map(|e| {
            labels
                .iter()
                .position(|l| *l == e.label)
                .unwrap_or(usize::MAX)
        })
        .collect();
    let pred: Vec<usize> = probs
        .iter()
        .map(|p| frugal_models::chat::sampling::argmax(p) as usize)
        .collect();
    let m = frugal_train::metrics::evaluate(labels, &gold, &pred);
    (m.accuracy, m.macro_f1)
}

struct Task {
    name: String,
    train: Vec<Example>,
    valid: Vec<Example>,
    test: Vec<Example>,
    labels: Vec<String>,
}

impl Task {
    /// Training examples of the rarest label (what few-shot and training rows can draw on).
    fn smallest_label(&self) -> usize {
        self.labels
            .iter()
            .map(|l| self.train.iter().filter(|e| e.label == *l).count())
            .min()
            .unwrap_or(0)
    }
}

fn load_task(a: &ReportArgs, quiet: bool) -> Result<Task> {
    let (name, splits) = match &a.data {
        Some(p) => {
            let all = frugal_train::data::load(p, &a.fields.fields())
                .with_context(|| format!("--data {}", p.display()))?;
            (
                p.display().to_string(),
                stratified_split(all, 0.2, 0.1, a.seed)?,
            )
        }
        None => match frugal_train::battery::task(&a.task) {
            Some(t) => {
                let dir = store(quiet)
                    .ensure(t.asset)
                    .with_context(|| format!("--task {}: fetching its data", a.task))?;
                (
                    t.name.to_string(),
                    frugal_train::battery::load(t, &dir)
                        .with_context(|| format!("--task {}", a.task))?,
                )
            }
            None => bail!(
                "--task {}: the built-in tasks are {}; for your own data use --data FILE",
                a.task,
                frugal_train::battery::names()
            ),
        },
    };
    let labels = labels_of(&splits.train);
    if labels.len() < 2 {
        bail!(
            "the task has {} label(s) in its training split; a classifier needs 2 or more",
            labels.len()
        );
    }
    if splits.test.is_empty() {
        bail!("the task has no test examples; give more data");
    }
    let splits = match a.budget {
        Budget::Quick => frugal_train::battery::quick(splits, a.seed),
        Budget::Full => splits,
    };
    let (train, valid, test) = (splits.train, splits.valid, splits.test);
    Ok(Task {
        name,
        train,
        valid,
        test,
        labels,
    })
}

/// Every row of the report, in order.
pub const ALTERNATIVES: [&str; 10] = [
    "reference",
    "majority",
    "zeroshot",
    "transfer",
    "setfit-8",
    "finetune",
    "distilled",
    "federated",
    "chat",
    "chat-fewshot",
];

pub fn report_cmd(a: ReportArgs, ctx: &Ctx) -> Result<()> {
    let (report, md) = run_report(&a, ctx)?;
    if a.json {
        println!("{report}");
    } else {
        println!("{md}");
        if !ctx.quiet {
            eprintln!(
                "frugal: wrote {}, report.html and report.json",
                a.out.join("report.md").display()
            );
        }
    }
    Ok(())
}

/// Runs the report and writes its files; returns report.json's value and the markdown.
pub fn run_report(a: &ReportArgs, ctx: &Ctx) -> Result<(serde_json::Value, String)> {
    if let Some(r) = a
        .rows
        .iter()
        .find(|r| !ALTERNATIVES.contains(&r.as_str()) && *r != "curve")
    {
        bail!(
            "--rows {r}: no such alternative; the rows are {} (and `curve`, the learning curve)",
            ALTERNATIVES.join(", ")
        );
    }
    let prompt = reference_prompt(a)?;
    let task = load_task(a, ctx.quiet)?;
    if let Some(l) = task
        .labels
        .iter()
        .find(|l| !a.labels.is_empty() && !a.labels.iter().any(|p| p.0 == **l))
    {
        bail!(
            "--label: no description for the label `{l}`; give one for every label ({})",
            task.labels.join(", ")
        );
    }
    let pricing = a
        .sources
        .pricing(&a.reference, a.usd_per_hour, a.billing.billing())?;
    let instance = instance(a, ctx)?;
    let base = resolve_base(a, ctx.quiet)?;
    let rows_dir = a.out.join("rows");
    std::fs::create_dir_all(&rows_dir)
        .with_context(|| format!("creating {}", rows_dir.display()))?;
    let common = format!(
        "v4|{}|{}|{:?}|{}|{}|{}",
        fingerprint(&task.train),
        fingerprint(&task.test),
        a.budget,
        a.seed,
        a.base,
        pricing.usd_per_hour
    );
    let mut rows: Vec<Row> = vec![];
    let names: Vec<&str> = ALTERNATIVES
        .into_iter()
        .filter(|n| a.rows.is_empty() || BASELINES.contains(n) || a.rows.iter().any(|r| r == n))
        .collect();
    for (i, name) in names.iter().copied().enumerate() {
        let key = match name {
            "zeroshot" => format!("{name}|{common}|{:?}", a.labels),
            // The reference's price depends on its prompt and how it is billed (cached input,
            // batch…); its quality on the answers or the published figure.
            "reference" => format!(
                "{name}|{common}|{}|{}|{:?}|{:?}|{:?}",
                a.reference,
                pricing.billing.describe(),
                a.reference_prompt.as_ref().map(|_| &prompt.0),
                a.reference_answers,
                (a.reference_accuracy, &a.reference_source),
            ),
            _ => format!("{name}|{common}|{}", a.reference),
        };
        let file = rows_dir.join(format!("{name}.json"));
        if let Some(r) =
            reuse(&file, &key, name, ctx.quiet).and_then(|v| serde_json::from_value::<Row>(v).ok())
        {
            rows.push(r);
            continue;
        }
        if !ctx.quiet {
            eprintln!("frugal: [{}/{}] {name} …", i + 1, names.len());
        }
        let t0 = Instant::now();
        let mut row = match name {
            "reference" => reference_row(a, &task, &pricing, &prompt)?,
            "majority" => majority_row(&task),
            "zeroshot" => zeroshot_row(a, &task, &base, &pricing, ctx.quiet)?,
            "distilled" => distilled_row(a, &task, &pricing, ctx.quiet)?,
            "federated" => federated_row(a, &task, &pricing, ctx)?,
            "chat" | "chat-fewshot" => chat_row(name, a, &task, &pricing, ctx.quiet)?,
            _ => trained_row(name, a, &task, &base, &pricing, ctx.quiet)?,
        };
        row.key = key;
        row.wall_seconds = t0.elapsed().as_secs_f64();
        if !ctx.quiet {
            eprintln!(
                "frugal: {name}: {} in {:.0} s{}",
                row.status,
                row.wall_seconds,
                match (row.accuracy, row.usd_per_1k) {
                    (Some(q), Some(c)) => format!(": accuracy {q:.4}, ${c:.5} per 1,000 requests"),
                    (None, Some(c)) => format!(": ${c:.5} per 1,000 requests"),
                    _ => String::new(),
                }
            );
        }
        write_atomic(&file, &serde_json::to_vec_pretty(&row)?)?;
        rows.push(row);
    }
    let curve = curve(a, &task, &base, &common, &rows_dir, ctx.quiet)?;
    let generation = generation(a, &pricing, &common, &rows_dir, ctx.quiet)?;
    let (basis, verdicts) = verdicts(a, &rows, &instance);
    let best = rows
        .iter()
        .filter(|r| !BASELINES.contains(&r.name.as_str()))
        .filter_map(|r| r.accuracy)
        .fold(f64::NAN, f64::max);
    let report = serde_json::json!({
        "task": task.name,
        "budget": format!("{:?}", a.budget).to_lowercase(),
        "seed": a.seed,
        "train_examples": task.train.len(),
        "test_examples": task.test.len(),
        "labels": task.labels,
        "reference": a.reference,
        "reference_billing": pricing.billing,
        "machine": {"usd_per_hour": pricing.usd_per_hour, "basis": pricing.price_basis, "watts": pricing.watts, "threads": ctx.threads},
        "instance": {
            "name": instance.name,
            "usd_per_vcpu_hour": instance.usd_per_vcpu_hour,
            "watts_per_vcpu": instance.watts_per_vcpu,
            "source": instance.source,
            "basis": format!("computed: the core-seconds measured here ({} threads × each row's seconds) at {}'s per-vCPU price and draw, assuming its cores are as fast as this machine's", ctx.threads, instance.name),
        },
        "learning_curve": curve,
        "generation": generation,
        "best_accuracy": best,
        "quality_basis": basis,
        "quality_basis_text": basis.as_ref().map(QualityBasis::describe),
        "rows": rows,
        "verdicts": verdicts,
    });
    let md = markdown(&report, &rows, &verdicts);
    write_atomic(
        &a.out.join("report.json"),
        &serde_json::to_vec_pretty(&report)?,
    )?;
    write_atomic(&a.out.join("report.md"), md.as_bytes())?;
    write_atomic(
        &a.out.join("report.html"),
        html(&report, &rows, &verdicts)?.as_bytes(),
    )?;
    Ok((report, md))
}

/// Rows that are not alternatives: the reference itself and the majority-class floor.
const BASELINES: [&str; 2] = ["reference", "majority"];

/// What quality is measured against, and each row's verdict (savings vs the reference, the
/// quality kept, the ✔, whether it falls below the majority class, instance prices).
fn verdicts(
    a: &ReportArgs,
    rows: &[Row],
    instance: &Instance,
) -> (Option<QualityBasis>, Vec<serde_json::Value>) {
    let reference = rows.iter().find(|r| r.name == "reference");
    let known = reference
        .and_then(|r| r.accuracy)
        .map(|acc| match &a.reference_answers {
            Some(p) => (acc, format!("its answers in {}", p.display()), true),
            None => (acc, a.reference_source.clone().unwrap_or_default(), false),
        });
    let local: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| !BASELINES.contains(&r.name.as_str()))
        .filter_map(|r| Some((r.name.clone(), r.accuracy?)))
        .collect();
    let basis = frugal_cost::verdict::basis(known, &local);
    let ref_cost = reference.and_then(|r| r.usd_per_1k);
    let floor = rows
        .iter()
        .find(|r| r.name == "majority")
        .and_then(|r| r.accuracy);
    let verdicts = rows
        .iter()
        .map(|r| {
            let v = frugal_cost::verdict::verdict(
                r.usd_per_1k,
                r.accuracy,
                ref_cost,
                basis.as_ref(),
                BASELINES.contains(&r.name.as_str()),
            );
            serde_json::json!({
                "name": r.name,
                "instance_usd_per_1k": r.request_seconds.map(|s| instance.usd(s) * 1000.0),
                "instance_train_usd": r.train_seconds.map(|s| instance.usd(s)),
                "savings_vs_reference": v.savings,
                "quality_retained": v.retained,
                "meets_95_97": v.meets,
                "below_majority": r.name != "majority"
                    && matches!((r.accuracy, floor), (Some(q), Some(f)) if q < f),
            })
        })
        .collect();
    (basis, verdicts)
}

/// A section computed by an earlier run (`file` holding the same `key`), said so.
fn reuse(file: &Path, key: &str, what: &str, quiet: bool) -> Option<serde_json::Value> {
    let v = std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(|v| v["key"] == key)?;
    if !quiet {
        eprintln!(
            "frugal: {what}: already computed ({}), reused",
            file.display()
        );
    }
    Some(v)
}

/// The generative task from the same corpus (email subject lines): the local chat model
/// zero-shot and after LoRA fine-tuning on 600 pairs, scored against the real subjects, priced
/// beside the hosted reference. Full budget on the built-in task only; kept in
/// `rows/generation.json`.
fn generation(
    a: &ReportArgs,
    pricing: &Pricing,
    common: &str,
    rows_dir: &Path,
    quiet: bool,
) -> Result<serde_json::Value> {
    use crate::sft_cmd::{gguf_path, score_generation, SUBJECT_BODY_CHARS};
    let (n_train, n_valid, n_test) = (600, 64, 100);
    let key = format!(
        "generation|{common}|{}|{n_train}|{n_valid}|{n_test}",
        a.reference
    );
    let file = rows_dir.join("generation.json");
    if let Some(v) = reuse(&file, &key, "generation", quiet) {
        return Ok(v);
    }
    let what = "email subject lines from the SpamAssassin ham messages (\"Write a subject line for this email:\" + the body → the real subject): SmolLM2-135M zero-shot, then the same model with LoRA adapters (rank 8, every projection) fine-tuned on the training pairs; ROUGE-L and exact match against the real subjects";
    let skip = |why: &str| serde_json::json!({"status": format!("skipped: {why}"), "task": what, "key": key});
    if a.data.is_some() {
        return Ok(skip("your data set is labelled text; for prompt→answer pairs run `frugal sft` and `frugal eval-gen`"));
    }
    if a.budget == Budget::Quick && !a.generation {
        return Ok(skip("the quick budget leaves it out, as fine-tuning the chat model on 600 pairs takes about 15 minutes on 2 cores; --budget full or --generation runs it (or `frugal sft`, see README)"));
    }
    if !quiet {
        eprintln!("frugal: generation (email subject lines) …");
    }
    let t_all = Instant::now();
    let pairs = frugal_train::sft::email_subjects(
        &store(quiet).ensure("spamassassin")?,
        SUBJECT_BODY_CHARS,
    )?;
    let train: Vec<_> = pairs.train.into_iter().take(n_train).collect();
    let valid: Vec<_> = pairs.valid.into_iter().take(n_valid).collect();
    let test: Vec<_> = pairs.test.into_iter().take(n_test).collect();
    let base = gguf_path("smollm2", "chat model", quiet)?;
    let mut model = frugal_models::chat::ChatModel::load(&base)?;
    let (zero, _) = score_generation(&model, &test, 48, pricing, quiet)?;
    let out = a.out.join("models").join("subjects-lora");
    let t0 = Instant::now();
    let pb = progress(
        train.len().div_ceil(4) as u64,
        quiet,
        "fine-tuning the chat model",
    );
    let r = frugal_train::sft::train_sft(
        &frugal_train::sft::SftSpec {
            base: &base,
            base_name: "smollm2".into(),
            train: &train,
            valid: Some(&valid),
            lora: frugal_models::chat::lora::LoraConfig::default(),
            config: TrainConfig {
                epochs: 1,
                lr: 1e-3,
                batch: 4,
                weight_decay: 0.0,
                warmup: 0.05,
                seed: a.seed,
                patience: 0,
                ..Default::default()
            },
            max_len: 256,
            out: &out,
            resume: false,
            save_every: 0,
            interrupt: None,
        },
        &mut |p| pb.set_position(p.step as u64),
    )?;
    pb.finish_and_clear();
    let train_secs = t0.elapsed().as_secs_f64();
    model.apply_adapter(&frugal_models::chat::lora::Adapter::load(&out)?)?;
    let (tuned, _) = score_generation(&model, &test, 48, pricing, quiet)?;
    let v = serde_json::json!({
        "status": "done",
        "task": what,
        "train_examples": train.len(),
        "test_examples": test.len(),
        "zero_shot": zero,
        "sft": tuned,
        "rouge_l_gain": (zero.rouge_l > 0.0).then(|| tuned.rouge_l / zero.rouge_l - 1.0),
        "train_seconds": train_secs,
        "train_usd": pricing.local_usd(train_secs),
        "train_tokens_per_s": r.tokens_per_s,
        "trainable_params": r.trainable_params,
        "wall_seconds": t_all.elapsed().as_secs_f64(),
        "cost_basis": "measured: seconds per answer here × this machine's price per hour, plus energy; the reference: its catalog price × the same prompts in and the real subjects out",
        "key": key,
    });
    if !quiet {
        eprintln!(
            "frugal: generation: ROUGE-L {:.4} zero-shot, {:.4} fine-tuned, in {:.0} s",
            zero.rouge_l,
            tuned.rouge_l,
            t_all.elapsed().as_secs_f64()
        );
    }
    write_atomic(&file, &serde_json::to_vec_pretty(&v)?)?;
    Ok(v)
}

/// The few-shot learning curve: transfer learning's head trained on k examples per label (a few
/// draws each) and scored on the test texts; computed once and kept in `rows/curve.json`.
fn curve(
    a: &ReportArgs,
    task: &Task,
    base: &Path,
    common: &str,
    rows_dir: &Path,
    quiet: bool,
) -> Result<serde_json::Value> {
    let (ks, draws): (Vec<usize>, usize) = match a.budget {
        Budget::Quick => (vec![1, 2, 4, 8, 16, 32, 64], 3),
        Budget::Full => (vec![1, 2, 4, 8, 16, 32, 64, 128, 256], 5),
    };
    if !a.rows.is_empty() && !a.rows.iter().any(|r| r == "curve") {
        return Ok(serde_json::json!({
            "status": "skipped",
            "method": "not asked for (--rows without `curve`)",
            "points": [],
        }));
    }
    let key = format!("curve|{common}|{ks:?}|{draws}");
    let file = rows_dir.join("curve.json");
    if let Some(v) = reuse(&file, &key, "learning curve", quiet) {
        return Ok(v);
    }
    if !quiet {
        eprintln!("frugal: learning curve …");
    }
    let smallest = task.smallest_label();
    let ks: Vec<usize> = ks.into_iter().filter(|&k| k <= smallest).collect();
    let method = format!(
        "transfer learning on k labelled examples per label: a new head on frozen {} embeddings (100 epochs, lr 0.01), {draws} random draws of the examples per k, scored on the {} test texts",
        a.base,
        task.test.len()
    );
    let t0 = Instant::now();
    let v = if ks.is_empty() {
        serde_json::json!({
            "status": format!("skipped: the smallest label has {smallest} training examples"),
            "method": method, "points": [], "key": key,
        })
    } else {
        let pb = progress((ks.len() * draws) as u64, quiet, "learning curve");
        let cfg = frugal_train::fewshot::head_config(a.seed);
        let points = frugal_train::fewshot::learning_curve(
            &frugal_train::fewshot::CurveSpec {
                base,
                labels: task.labels.clone(),
                train: &task.train,
                test: &task.test,
                ks: &ks,
                draws,
                config: cfg,
                max_len: 128,
            },
            &mut |d| pb.set_position(d as u64),
        )?;
        pb.finish_and_clear();
        serde_json::json!({
            "status": "done", "method": method, "draws": draws, "points": points,
            "wall_seconds": t0.elapsed().as_secs_f64(), "key": key,
        })
    };
    if !quiet {
        eprintln!(
            "frugal: learning curve: {} in {:.0} s",
            v["status"].as_str().unwrap_or(""),
            t0.elapsed().as_secs_f64()
        );
    }
    write_atomic(&file, &serde_json::to_vec_pretty(&v)?)?;
    Ok(v)
}

/// The reference's row: `prompt` (the template and its name, from `reference_prompt`) priced
/// on every test text, its quality from its answers or the published figure.
fn reference_row(
    a: &ReportArgs,
    task: &Task,
    pricing: &Pricing,
    (template, prompt_name): &(String, String),
) -> Result<Row> {
    let mut usd = 0.0;
    for e in &task.test {
        let prompt = template
            .replace("{labels}", &task.labels.join(", "))
            .replace("{text}", &e.text);
        usd += pricing
            .hosted_usd(&pricing.reference, &prompt, &e.label)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    }
    let (accuracy, macro_f1) = match &a.reference_answers {
        Some(p) => {
            let answers =
                crate::io::read_answers(p, &a.fields.fields().text, "--reference-answers")?;
            let covered: Vec<&Example> = task
                .test
                .iter()
                .filter(|e| answers.contains_key(&e.text))
                .collect();
            if covered.is_empty() {
                bail!(
                    "--reference-answers {}: none of its texts is in the test split",
                    p.display()
                );
            }
            let probs: Vec<Vec<f32>> = covered
                .iter()
                .map(|e| {
                    task.labels
                        .iter()
                        .map(|l| (answers[&e.text] == *l) as u8 as f32)
                        .collect()
                })
                .collect();
            let owned: Vec<Example> = covered.into_iter().cloned().collect();
            let (acc, f1) = score(&task.labels, &owned, &probs);
            (Some(acc), Some(f1))
        }
        None => (a.reference_accuracy, None),
    };
    let quality = match (&a.reference_answers, &a.reference_source) {
        (Some(p), _) => format!("quality measured from the answers in {}", p.display()),
        (None, Some(src)) => format!("quality: the published figure ({src})"),
        (None, None) => {
            "quality unknown (no --reference-answers or --reference-accuracy)".to_string()
        }
    };
    Ok(Row {
        name: "reference".into(),
        what: format!("{} (hosted), asked per text with {prompt_name}", a.reference),
        status: "done".into(),
        accuracy,
        macro_f1,
        usd_per_1k: Some(usd / task.test.len() as f64 * 1000.0),
        cost_basis: format!(
            "computed: catalog price of {} × tokens counted with its tokenizer (prompt + text in, label out); {quality}",
            a.reference,
        ),
        latency_p50_ms: None,
        latency_p95_ms: None,
        request_seconds: None,
        train_seconds: None,
        train_usd: None,
        test_examples: task.test.len(),
        train_examples: 0,
        wall_seconds: 0.0,
        key: String::new(),
    })
}

/// Always answering the most frequent training label: the floor every alternative must beat.
fn majority_row(task: &Task) -> Row {
    let train: Vec<&str> = task.train.iter().map(|e| e.label.as_str()).collect();
    let test: Vec<&str> = task.test.iter().map(|e| e.label.as_str()).collect();
    let Some((label, accuracy)) = frugal_cost::verdict::majority(&train, &test) else {
        return Row {
            status: "skipped: no training labels".into(),
            ..empty_row("majority", task)
        };
    };
    let probs: Vec<Vec<f32>> = task
        .test
        .iter()
        .map(|_| {
            task.labels
                .iter()
                .map(|l| (l == label) as u8 as f32)
                .collect()
        })
        .collect();
    let (_, macro_f1) = score(&task.labels, &task.test, &probs);
    Row {
        name: "majority".into(),
        what: format!(
            "baseline: always answers `{label}`, the most frequent training label; a row below it is worse than doing nothing"
        ),
        status: "done".into(),
        accuracy: Some(accuracy),
        macro_f1: Some(macro_f1),
        usd_per_1k: Some(0.0),
        cost_basis: "none: a constant answer needs no model".into(),
        ..empty_row("majority", task)
    }
}

fn measured_row(
    name: &str,
    what: String,
    task: &Task,
    pricing: &Pricing,
    probs: &[Vec<f32>],
    lat: (f64, f64, f64),
    (train, train_examples): (Option<f64>, usize),
) -> Row {
    let (acc, f1) = score(&task.labels, &task.test, probs);
    Row {
        name: name.into(),
        what,
        status: "done".into(),
        accuracy: Some(acc),
        macro_f1: Some(f1),
        usd_per_1k: Some(pricing.local_usd(lat.2) * 1000.0),
        cost_basis: "measured: mean single-request latency here × this machine's price per hour, plus energy".into(),
        latency_p50_ms: Some(lat.0 * 1000.0),
        latency_p95_ms: Some(lat.1 * 1000.0),
        request_seconds: Some(lat.2),
        train_seconds: train,
        train_usd: train.map(|s| pricing.local_usd(s)),
        test_examples: task.test.len(),
        train_examples,
        wall_seconds: 0.0,
        key: String::new(),
    }
}

fn zeroshot_row(
    a: &ReportArgs,
    task: &Task,
    base: &Path,
    pricing: &Pricing,
    quiet: bool,
) -> Result<Row> {
    let enc = frugal_models::encoder::Encoder::load(base)?;
    let pairs = if a.labels.is_empty() {
        descriptions(&a.task_name(), &task.labels)
    } else {
        a.labels.clone()
    };
    if let Some(l) = task
        .labels
        .iter()
        .find(|l| !pairs.iter().any(|p| p.0 == **l))
    {
        bail!(
            "--label: no description for the label `{l}`; give one for every label ({})",
            task.labels.join(", ")
        );
    }
    let desc = LabelDescriptions::from_pairs(&pairs)?;
    let texts: Vec<&str> = task.test.iter().map(|e| e.text.as_str()).collect();
    let pb = progress(texts.len() as u64, quiet, "zero-shot");
    let probs = zero_shot(&enc, &texts, &desc, 0.05, &mut |d| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    let lat = latency(
        &mut |t| {
            zero_shot(&enc, &[t], &desc, 0.05, &mut |_| {})
                .map(|_| ())
                .map_err(Into::into)
        },
        &task.test,
    )?;
    Ok(measured_row(
        "zeroshot",
        format!(
            "zero-shot: {} compares each text with label descriptions; no training",
            a.base
        ),
        task,
        pricing,
        &probs,
        lat,
        (None, 0),
    ))
}

/// A 2-layer student distilled from the fine-tuned model (the `finetune` row's checkpoint) on
/// the training texts: its probabilities at T = 2, α = 0.5.
fn distilled_row(a: &ReportArgs, task: &Task, pricing: &Pricing, quiet: bool) -> Result<Row> {
    use frugal_train::classifier::SoftTargets;
    use frugal_train::distill::{evenly_spaced, layer_count, write_student_base};
    let teacher_dir = a.out.join("models").join("finetune");
    if !teacher_dir.join("frugal.json").is_file() {
        return Ok(Row {
            status: format!(
                "skipped: no fine-tuned teacher in {} (the finetune row was skipped, or its model was deleted: remove rows/finetune.json to train it again)",
                teacher_dir.display()
            ),
            ..empty_row("distilled", task)
        });
    }
    let t0 = Instant::now();
    let (teacher, _) = Classifier::load(&teacher_dir)?;
    let texts: Vec<&str> = task.train.iter().map(|e| e.text.as_str()).collect();
    let pb = progress(1, quiet, "teacher outputs");
    let probs = teacher.predict(&texts, 32)?;
    pb.finish_and_clear();
    let keep = evenly_spaced(layer_count(&teacher_dir)?, 2)?;
    let student_base = a.out.join("models").join("distilled-base");
    write_student_base(&teacher_dir, &keep, None, &student_base)?;
    let dir = a.out.join("models").join("distilled");
    let epochs = if a.budget == Budget::Quick { 2 } else { 3 };
    let spec = TrainSpec {
        valid: (!task.valid.is_empty()).then_some(task.valid.as_slice()),
        max_len: Some(128),
        labels: Some(task.labels.clone()),
        soft: Some(SoftTargets {
            probs,
            temperature: 2.0,
            alpha: 0.5,
            teacher: format!("checkpoint {}", teacher_dir.display()),
        }),
        ..TrainSpec::new(
            &student_base,
            format!("finetune layers {keep:?}"),
            &task.train,
            Mode::Full,
            TrainConfig {
                epochs,
                lr: 1e-4,
                seed: a.seed,
                ..Default::default()
            },
            &dir,
        )
    };
    crate::train_cmd::run_training(&spec, quiet, "distilling")?;
    let train_secs = t0.elapsed().as_secs_f64();
    let what = format!(
        "knowledge distillation: layers {keep:?} of the fine-tuned model, trained on its probabilities (T = 2, α = 0.5) and the labels, {epochs} epochs"
    );
    classifier_row(
        "distilled",
        what,
        &dir,
        task,
        pricing,
        (Some(train_secs), task.train.len()),
    )
}

/// Federated training simulated over 5 nodes with Dirichlet(0.5) label skew (FedAvgM, head
/// mode: the recipe `fed simulate` measured best), its final model scored like the others.
fn federated_row(a: &ReportArgs, task: &Task, pricing: &Pricing, ctx: &Ctx) -> Result<Row> {
    use clap::Parser;
    if task.train.len() < 50 {
        return Ok(Row {
            status: format!(
                "skipped: {} training examples; 5 federated nodes need at least 50 between them",
                task.train.len()
            ),
            ..empty_row("federated", task)
        });
    }
    let data = a.out.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let (train, test) = (data.join("train.jsonl"), data.join("test.jsonl"));
    frugal_train::data::write_jsonl(&train, &task.train)?;
    frugal_train::data::write_jsonl(&test, &task.test)?;
    let dir = a.out.join("models").join("federated");
    let rounds = if a.budget == Budget::Quick {
        "10"
    } else {
        "20"
    };
    let seed = a.seed.to_string();
    let flags = crate::fed_cmd::SimulateFlags::try_parse_from([
        "simulate",
        "--base",
        &a.base,
        "--data",
        &train.to_string_lossy(),
        "--test",
        &test.to_string_lossy(),
        "--nodes",
        "5",
        "--partition",
        "dirichlet:0.5",
        "--rounds",
        rounds,
        "--local-epochs",
        "2",
        "--server-momentum",
        "0.8",
        "--server-lr",
        "1.5",
        "--no-centralised",
        // The report's own cache: its training time includes embedding the nodes' data once,
        // and a resumed report reuses them.
        "--embedding-cache",
        &a.out.join("cache").to_string_lossy(),
        "--seed",
        &seed,
        "--out",
        &dir.to_string_lossy(),
    ])?;
    let t0 = Instant::now();
    let quiet = crate::Ctx {
        quiet: true,
        threads: ctx.threads,
        precision: ctx.precision,
    };
    crate::fed_cmd::simulate_cmd(flags.args, &quiet, false)?;
    let train_secs = t0.elapsed().as_secs_f64();
    let what = format!(
        "federated: 5 simulated nodes with skewed label mixes (Dirichlet 0.5) train a head on frozen {} embeddings, {rounds} rounds of FedAvgM; no node shares its data",
        a.base
    );
    classifier_row(
        "federated",
        what,
        &dir.join("model"),
        task,
        pricing,
        (Some(train_secs), task.train.len()),
    )
}

/// The local chat model as a classifier: `chat` scores each label by how likely the text is
/// after "Here is {label}:" (channel scoring, recalibrated on validation texts: the best a 135M
/// model managed in issue 5); `chat-fewshot` shows it the 2 nearest training examples per label
/// and scores the label words as the answer. Quick budget: 80 test and 40 validation texts
/// (in context: 40 and 24, its prompts being longer).
fn chat_row(
    name: &str,
    a: &ReportArgs,
    task: &Task,
    pricing: &Pricing,
    quiet: bool,
) -> Result<Row> {
    use frugal_train::labeller::{default_prompt, words_for, ChatLabeller, Recalibration, Scoring};
    let path = match resolve_model("smollm2", &store(quiet))? {
        ModelPath::Gguf(p) => p,
        ModelPath::HfDir(d) => bail!("smollm2 resolved to a folder ({})", d.display()),
    };
    let model = frugal_models::chat::ChatModel::load(&path)?;
    let overrides: Vec<(String, String)> = if a.task_name() == "spamassassin" {
        vec![
            (
                "spam".into(),
                "a spam email advertising a product or scam".into(),
            ),
            (
                "ham".into(),
                "a normal personal or mailing-list email".into(),
            ),
        ]
    } else {
        vec![]
    };
    let words = words_for(&task.labels, &overrides);
    let fewshot = name == "chat-fewshot";
    let scoring = if fewshot {
        Scoring::Answer
    } else {
        Scoring::Channel
    };
    let labeller = ChatLabeller {
        prompt: default_prompt(scoring).into(),
        words,
        max_text_tokens: 96,
        calibrate: true,
        scoring,
    };
    let (n_test, n_valid) = match (a.budget, fewshot) {
        (Budget::Quick, false) => (80, 40),
        (Budget::Quick, true) => (32, 24),
        (Budget::Full, _) => (usize::MAX, usize::MAX),
    };
    let test = frugal_train::battery::subsample(task.test.clone(), n_test, a.seed + 3);
    let valid = frugal_train::battery::subsample(task.valid.clone(), n_valid, a.seed + 4);
    let embedder = if fewshot {
        Some(frugal_models::encoder::Encoder::load(&resolve_base(
            a, quiet,
        )?)?)
    } else {
        None
    };
    // Labels texts; with in-context examples, each text's 2 nearest training examples per label
    // (retrieved once for all the texts: the pool is embedded once, as a server would keep it).
    let run = |texts: &[&str], what: &str| -> Result<Vec<Vec<f32>>> {
        let pb = progress(texts.len() as u64, quiet, what);
        let out = match &embedder {
            Some(e) => {
                let demos =
                    frugal_train::fewshot::nearest_demos(e, texts, &task.train, &task.labels, 2)?;
                labeller
                    .label_with_demos(&model, texts, Some(&demos), &mut |d| {
                        pb.set_position(d as u64)
                    })?
                    .0
            }
            None => labeller.label(&model, texts, &mut |d| pb.set_position(d as u64))?,
        };
        pb.finish_and_clear();
        Ok(out)
    };
    // Recalibration on validation texts (when there are some of every label).
    let t0 = Instant::now();
    let recal = if valid.len() >= 10 && labels_of(&valid).len() == task.labels.len() {
        let texts: Vec<&str> = valid.iter().map(|e| e.text.as_str()).collect();
        let probs = run(&texts, "chat model: calibrating")?;
        let gold: Vec<usize> = valid
            .iter()
            .map(|e| task.labels.iter().position(|l| *l == e.label).unwrap_or(0))
            .collect();
        Some(Recalibration::fit(&probs, &gold)?)
    } else {
        None
    };
    let calib_secs = t0.elapsed().as_secs_f64();
    let texts: Vec<&str> = test.iter().map(|e| e.text.as_str()).collect();
    let mut probs = run(&texts, name)?;
    if let Some(r) = &recal {
        probs = probs.iter().map(|p| r.apply(p)).collect();
    }
    let sub = Task {
        name: task.name.clone(),
        train: vec![],
        valid: vec![],
        test: test.clone(),
        labels: task.labels.clone(),
    };
    // Single-request latency on 8 texts (their examples retrieved beforehand, untimed).
    let sample = &test[..test.len().min(8)];
    let sample_texts: Vec<&str> = sample.iter().map(|e| e.text.as_str()).collect();
    let demos = match &embedder {
        Some(e) => Some(frugal_train::fewshot::nearest_demos(
            e,
            &sample_texts,
            &task.train,
            &task.labels,
            2,
        )?),
        None => None,
    };
    let lat = latency(
        &mut |t| {
            let k = sample_texts.iter().position(|x| *x == t).unwrap_or(0);
            let d = demos.as_ref().map(|d| vec![d[k].clone()]);
            labeller.label_with_demos(&model, &[t], d.as_deref(), &mut |_| {})?;
            Ok(())
        },
        sample,
    )?;
    let what = if fewshot {
        format!("in-context few-shot: SmolLM2-135M sees the 2 nearest training examples per label and answers; {} test texts", test.len())
    } else {
        format!(
            "the local chat model prompted directly: SmolLM2-135M, each label scored by the text's likelihood after it (channel){}; {} test texts",
            if recal.is_some() { ", recalibrated on validation texts" } else { "" },
            test.len()
        )
    };
    let mut row = measured_row(
        name,
        what,
        &sub,
        pricing,
        &probs,
        lat,
        (recal.is_some().then_some(calib_secs), valid.len()),
    );
    row.test_examples = test.len();
    Ok(row)
}

/// The `--base` encoder's folder.
fn resolve_base(a: &ReportArgs, quiet: bool) -> Result<PathBuf> {
    crate::io::encoder_base(&a.base, quiet)
}

/// A row with nothing measured yet.
fn empty_row(name: &str, task: &Task) -> Row {
    Row {
        name: name.into(),
        what: String::new(),
        status: String::new(),
        accuracy: None,
        macro_f1: None,
        usd_per_1k: None,
        cost_basis: String::new(),
        latency_p50_ms: None,
        latency_p95_ms: None,
        request_seconds: None,
        train_seconds: None,
        train_usd: None,
        test_examples: task.test.len(),
        train_examples: task.train.len(),
        wall_seconds: 0.0,
        key: String::new(),
    }
}

fn trained_row(
    name: &str,
    a: &ReportArgs,
    task: &Task,
    base: &Path,
    pricing: &Pricing,
    quiet: bool,
) -> Result<Row> {
    let dir = a.out.join("models").join(name);
    let per_label_min = task.smallest_label();
    let skip = |reason: String| Row {
        status: format!("skipped: {reason}"),
        ..empty_row(name, task)
    };
    let t0 = Instant::now();
    let (what, train_examples) = match name {
        "setfit-8" => {
            let shots = sample_shots(&task.train, 8, a.seed)?;
            let short = short_labels(&task.train, 8);
            crate::fewshot_cmd::run_setfit(
                base, &a.base, &shots, &dir, a.seed, 20, 1, 2e-5, 128, quiet,
            )?;
            let fewer = if short.is_empty() {
                String::new()
            } else {
                format!(
                    "; all there is of {}",
                    short
                        .iter()
                        .map(|(l, n)| format!("`{l}` ({n})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            (format!("few-shot: SetFit on 8 examples per label{fewer} (contrastive pairs, then a logistic head)"), shots.len())
        }
        "transfer" | "finetune" => {
            if per_label_min < 2 || task.train.len() < 10 {
                return Ok(skip(format!(
                    "{} training examples ({} for the smallest label) are too few to train on",
                    task.train.len(),
                    per_label_min
                )));
            }
            let full = name == "finetune";
            // Every trained row sees the same examples; fine-tuning gets the `train` defaults
            // (linear probe, then at least 100 steps), not a shortened schedule.
            let train: Vec<Example> = task.train.clone();
            let config = if full {
                TrainConfig {
                    epochs: default_epochs(train.len(), 16),
                    lr: 5e-5,
                    seed: a.seed,
                    ..Default::default()
                }
            } else {
                head_config(a.seed)
            };
            let spec = TrainSpec {
                base,
                base_name: a.base.clone(),
                train: &train,
                valid: (!task.valid.is_empty()).then_some(task.valid.as_slice()),
                mode: if full { Mode::Full } else { Mode::Head },
                max_len: Some(128),
                config,
                out: &dir,
                resume: false,
                save_every: 0,
                interrupt: None,
                labels: Some(task.labels.clone()),
                soft: None,
                hidden: None,
                probe: full.then(|| head_config(a.seed)),
            };
            crate::train_cmd::run_training(&spec, quiet, name)?;
            let what = if full {
                format!(
                    "full fine-tuning of every weight of {} after a linear probe ({} examples, up to {} epochs, the best on validation kept)",
                    a.base,
                    train.len(),
                    spec.config.epochs
                )
            } else {
                format!(
                    "transfer learning: a new head on frozen {} embeddings",
                    a.base
                )
            };
            (what, train.len())
        }
        other => bail!("unknown alternative {other}"),
    };
    let train_secs = t0.elapsed().as_secs_f64();
    classifier_row(
        name,
        what,
        &dir,
        task,
        pricing,
        (Some(train_secs), train_examples),
    )
}

/// A row for the classifier checkpoint in `dir`: scored on the test texts, its single-request
/// latency measured.
fn classifier_row(
    name: &str,
    what: String,
    dir: &Path,
    task: &Task,
    pricing: &Pricing,
    train: (Option<f64>, usize),
) -> Result<Row> {
    let (clf, _) = Classifier::load(dir)?;
    let texts: Vec<&str> = task.test.iter().map(|e| e.text.as_str()).collect();
    let probs = clf.predict(&texts, 32)?;
    let lat = latency(
        &mut |t| clf.predict(&[t], 1).map(|_| ()).map_err(Into::into),
        &task.test,
    )?;
    Ok(measured_row(name, what, task, pricing, &probs, lat, train))
}

impl ReportArgs {
    fn task_name(&self) -> String {
        if self.data.is_some() {
            String::new()
        } else {
            self.task.clone()
        }
    }
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("—".into(), f)
}

fn markdown(report: &serde_json::Value, rows: &[Row], verdicts: &[serde_json::Value]) -> String {
    let mut s = format!(
        "# frugal report: {}\n\nBudget `{}` ({} training, {} test examples), seed {}; reference **{}**; this machine priced at ${:.4}/hour ({}).\n\n",
        report["task"].as_str().unwrap_or(""),
        report["budget"].as_str().unwrap_or(""),
        report["train_examples"],
        report["test_examples"],
        report["seed"],
        report["reference"].as_str().unwrap_or(""),
        report["machine"]["usd_per_hour"].as_f64().unwrap_or(0.0),
        report["machine"]["basis"].as_str().unwrap_or(""),
    );
    let inst = report["instance"]["name"].as_str().unwrap_or("");
    let vs = match report["quality_basis"]["kind"].as_str() {
        Some("best_local") | None => "best local row",
        Some(_) => "reference",
    };
    let most = rows
        .iter()
        .filter(|r| r.status == "done" && r.name != "reference" && r.name != "majority")
        .map(|r| r.train_examples)
        .max()
        .unwrap_or(0);
    s.push_str(&format!("| alternative | accuracy | macro-F1 | $ per 1,000 requests | savings vs reference | quality vs {vs} | p50 / p95 latency | trained on | training | training cost | $ per 1,000 on {inst} | training on {inst} |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"));
    for (r, v) in rows.iter().zip(verdicts) {
        if r.status != "done" {
            s.push_str(&format!(
                "| {} | {} | | | | | | | | | | |\n",
                r.name, r.status
            ));
            continue;
        }
        let trained_on = if r.train_seconds.is_none() {
            "—".to_string()
        } else if r.train_examples < most {
            format!(
                "{} examples (fewer than the {most} others had)",
                r.train_examples
            )
        } else {
            format!("{} examples", r.train_examples)
        };
        s.push_str(&format!(
            "| {}{}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            if v["meets_95_97"] == true { " ✔" } else { "" },
            if v["below_majority"] == true {
                " ↓"
            } else {
                ""
            },
            fmt_opt(r.accuracy, |x| format!("{x:.4}")),
            fmt_opt(r.macro_f1, |x| format!("{x:.4}")),
            fmt_opt(r.usd_per_1k, |x| format!("${x:.5}")),
            fmt_opt(v["savings_vs_reference"].as_f64(), |x| format!(
                "{:.2}%",
                x * 100.0
            )),
            fmt_opt(v["quality_retained"].as_f64(), |x| format!(
                "{:.1}%",
                x * 100.0
            )),
            match (r.latency_p50_ms, r.latency_p95_ms) {
                (Some(a), Some(b)) => format!("{a:.1} / {b:.1} ms"),
                _ => "—".into(),
            },
            trained_on,
            fmt_opt(r.train_seconds, |x| format!("{x:.1} s")),
            fmt_opt(r.train_usd, |x| format!("${x:.5}")),
            fmt_opt(v["instance_usd_per_1k"].as_f64(), |x| format!("${x:.5}")),
            fmt_opt(v["instance_train_usd"].as_f64(), |x| format!("${x:.5}")),
        ));
    }
    s.push_str(&format!(
        "\n✔ = at least 95% cheaper than the reference per 1,000 requests while keeping at least 97% of the quality of the {vs}. Quality is measured against {}. ↓ = below the majority-class baseline: worse than always giving the most frequent label.\n\n",
        report["quality_basis_text"].as_str().unwrap_or("nothing (no row has a quality)")
    ));
    for r in rows {
        s.push_str(&format!(
            "- **{}**: {} — cost {}\n",
            r.name, r.what, r.cost_basis
        ));
    }
    s.push_str(&format!(
        "- **{inst}**: {} ({})\n",
        report["instance"]["basis"].as_str().unwrap_or(""),
        report["instance"]["source"].as_str().unwrap_or("")
    ));
    let g = &report["generation"];
    s.push_str("\n## Generation: email subject lines\n\n");
    s.push_str(&format!(
        "{}: {}.\n\n",
        g["status"].as_str().unwrap_or(""),
        g["task"].as_str().unwrap_or("")
    ));
    if g["status"] == "done" {
        let reference = report["reference"].as_str().unwrap_or("");
        s.push_str("| model | ROUGE-L | exact match | words per answer | $ per 1,000 answers | savings vs reference | training | training cost |\n|---|---|---|---|---|---|---|---|\n");
        let ref_cost = g["sft"]["reference_usd_per_1k_answers"]
            .as_f64()
            .unwrap_or(0.0);
        for (name, k, train) in [
            ("SmolLM2-135M zero-shot", "zero_shot", false),
            ("SmolLM2-135M + LoRA", "sft", true),
        ] {
            let r = &g[k];
            let cost = r["usd_per_1k_answers"].as_f64().unwrap_or(0.0);
            s.push_str(&format!(
                "| {name} | {:.4} | {:.4} | {:.1} | ${cost:.5} | {:.2}% | {} | {} |\n",
                r["rouge_l"].as_f64().unwrap_or(0.0),
                r["exact_match"].as_f64().unwrap_or(0.0),
                r["mean_answer_words"].as_f64().unwrap_or(0.0),
                (1.0 - cost / ref_cost.max(1e-12)) * 100.0,
                if train {
                    format!(
                        "{:.0} s ({} pairs)",
                        g["train_seconds"].as_f64().unwrap_or(0.0),
                        g["train_examples"]
                    )
                } else {
                    "—".into()
                },
                if train {
                    format!("${:.5}", g["train_usd"].as_f64().unwrap_or(0.0))
                } else {
                    "—".into()
                },
            ));
        }
        s.push_str(&format!(
            "| {reference} (hosted) | — | — | {:.1} (the real subjects) | ${ref_cost:.5} | 0.00% | — | — |\n",
            g["sft"]["mean_reference_words"].as_f64().unwrap_or(0.0)
        ));
        if let Some(gain) = g["rouge_l_gain"].as_f64() {
            s.push_str(&format!(
                "\nFine-tuning changed ROUGE-L by {:+.0}% ({} test pairs).\n",
                gain * 100.0,
                g["test_examples"]
            ));
        }
    }
    let curve = &report["learning_curve"];
    s.push_str("\n## Few-shot learning curve\n\n");
    s.push_str(&format!(
        "{}: {}.\n\n",
        curve["status"].as_str().unwrap_or(""),
        curve["method"].as_str().unwrap_or("")
    ));
    if let Some(points) = curve["points"].as_array().filter(|p| !p.is_empty()) {
        s.push_str("| examples per label | accuracy (mean) | lowest – highest | macro-F1 (mean) |\n|---|---|---|---|\n");
        for p in points {
            s.push_str(&format!(
                "| {} | {:.4} | {:.4} – {:.4} | {:.4} |\n",
                p["k"],
                p["accuracy_mean"].as_f64().unwrap_or(0.0),
                p["accuracy_min"].as_f64().unwrap_or(0.0),
                p["accuracy_max"].as_f64().unwrap_or(0.0),
                p["macro_f1_mean"].as_f64().unwrap_or(0.0),
            ));
        }
        s.push_str("\nFor comparison: ");
        let refs: Vec<String> = curve_refs(rows)
            .iter()
            .map(|(n, q)| format!("{n} {q:.4}"))
            .collect();
        s.push_str(&refs.join(", "));
        s.push_str(".\n");
    }
    s
}

/// The rows drawn as horizontal lines on the learning curve: zero-shot, SetFit, all the
/// training data.
fn curve_refs(rows: &[Row]) -> Vec<(String, f64)> {
    rows.iter()
        .filter(|r| r.status == "done")
        .filter_map(|r| {
            let name = match r.name.as_str() {
                "zeroshot" => "zero-shot".to_string(),
                "setfit-8" => "SetFit, 8 per label".to_string(),
                "transfer" => format!("transfer, all {} examples", r.train_examples),
                "finetune" => format!("full fine-tuning, {} examples", r.train_examples),
                _ => return None,
            };
            Some((name, r.accuracy?))
        })
        .collect()
}

/// The markdown tables of `md` as HTML tables.
fn md_tables(md: &str) -> String {
    let mut out = String::new();
    let mut i = 0;
    for line in md.lines().chain(std::iter::once("")) {
        if !line.starts_with('|') {
            if i > 0 {
                out.push_str("</table>\n");
            }
            i = 0;
            continue;
        }
        if i == 0 {
            out.push_str("<table>\n");
        }
        i += 1;
        if i == 2 {
            continue; // the markdown separator
        }
        let tag = if i == 1 { "th" } else { "td" };
        let cells: Vec<String> = line
            .trim_matches('|')
            .split(" | ")
            .map(|c| format!("<{tag}>{}</{tag}>", esc(c.trim())))
            .collect();
        out.push_str(&format!("<tr>{}</tr>\n", cells.join("")));
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `report.html`: self-contained, the table and two SVG charts (quality against cost with the
/// Pareto frontier; cost per 1,000 requests), every number the same as in report.json.
fn html(
    report: &serde_json::Value,
    rows: &[Row],
    verdicts: &[serde_json::Value],
) -> Result<String> {
    let done: Vec<&Row> = rows.iter().filter(|r| r.status == "done").collect();
    let points: Vec<(String, f64, f64)> = done
        .iter()
        .filter(|r| !BASELINES.contains(&r.name.as_str()))
        .filter_map(|r| Some((r.name.clone(), r.usd_per_1k?, r.accuracy?)))
        .collect();
    let reference = rows.iter().find(|r| r.name == "reference").and_then(|r| {
        r.usd_per_1k.map(|c| {
            (
                format!("{} (reference)", report["reference"].as_str().unwrap_or("")),
                c,
            )
        })
    });
    let scatter = crate::chart::cost_quality_svg(&points, reference)?;
    let bars: Vec<(String, f64)> = done
        .iter()
        .filter(|r| r.name != "majority")
        .filter_map(|r| Some((r.name.clone(), r.usd_per_1k?)))
        .collect();
    let bars = crate::chart::cost_bars_svg(&bars)?;
    let points: Vec<crate::chart::CurvePoint> = report["learning_curve"]["points"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|p| crate::chart::CurvePoint {
                    shots: p["k"].as_u64().unwrap_or(1) as usize,
                    mean: p["accuracy_mean"].as_f64().unwrap_or(0.0),
                    min: p["accuracy_min"].as_f64().unwrap_or(0.0),
                    max: p["accuracy_max"].as_f64().unwrap_or(0.0),
                })
                .collect()
        })
        .unwrap_or_default();
    let curve = if points.is_empty() {
        String::new()
    } else {
        crate::chart::learning_curve_svg(
            "few-shot learning curve: accuracy against labelled examples",
            "transfer head (mean over draws)",
            &points,
            &curve_refs(rows),
        )?
    };
    let md = markdown(report, rows, verdicts);
    // The markdown, section by section: the first (intro, alternatives, notes) with the cost
    // charts, then each `## ` section with its tables, the curve's with its chart.
    let mut sections = md.split("\n## ");
    let first = sections.next().unwrap_or("");
    let intro = first
        .lines()
        .find(|l| l.starts_with("Budget"))
        .unwrap_or("");
    let table = md_tables(first);
    let notes: String = first
        .lines()
        .filter(|l| l.starts_with("- ") || l.starts_with('✔'))
        .map(|l| {
            format!(
                "<p>{}</p>\n",
                esc(l.trim_start_matches("- ")).replace("**", "")
            )
        })
        .collect();
    let mut rest = String::new();
    for sec in sections {
        let (title, body) = sec.split_once('\n').unwrap_or((sec, ""));
        rest.push_str(&format!("<h2>{}</h2>\n", esc(title)));
        for l in body
            .lines()
            .filter(|l| !l.starts_with('|') && !l.trim().is_empty())
        {
            rest.push_str(&format!("<p>{}</p>\n", esc(l)));
        }
        rest.push_str(&md_tables(body));
        if title.starts_with("Few-shot") {
            rest.push_str(&curve);
        }
    }
    Ok(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>frugal report: {title}</title>\n<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}</style></head><body>\n<h1>frugal report: {title}</h1>\n<p>{intro}</p>\n{table}\n{scatter}\n{bars}\n{notes}{rest}\n<p>Every number here is in report.json, with how it was obtained.</p>\n</body></html>\n",
        title = esc(report["task"].as_str().unwrap_or("")),
        intro = esc(intro).replace("**", ""),
    ))
}
