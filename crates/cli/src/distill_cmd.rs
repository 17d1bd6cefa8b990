//! `frugal distill`: a smaller, faster student classifier that learns a teacher's probabilities:
//! the teacher is a `frugal train` checkpoint, a local chat model used as a labeller, or outputs
//! the user brings (a hosted model's answers). Ends with a teacher/student table.

use crate::data_cmd::FieldArgs;
use crate::io::{progress, store};
use crate::train_cmd::{load_eval, load_sets, run_training, INTERRUPT};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::Args;
use frugal_models::chat::sampling::argmax;
use frugal_models::chat::ChatModel;
use frugal_models::resolve::{resolve_model, ModelPath};
use frugal_train::classifier::{Classifier, HiddenMatch, Mode, SoftTargets, TrainSpec};
use frugal_train::data::{load_texts, Example};
use frugal_train::distill::{
    check_student, evenly_spaced, layer_count, outputs_for, read_outputs, size_of,
    write_student_base, ChatLabeller, OutputCache, Shrink, TeacherOutputs,
};
use frugal_train::labeller::{default_prompt, Recalibration, Scoring};
use frugal_train::trainer::TrainConfig;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct DistillArgs {
    /// The teacher: a `frugal train` checkpoint folder; a GGUF chat model (asset name such as
    /// smollm2, or a .gguf file) used as a labeller; or a .jsonl file of teacher outputs, one
    /// `{"text", "label"}` or `{"text", "probs": {label: p}}` per line (e.g. a hosted model's).
    #[arg(long)]
    teacher: String,
    /// Labelled training data: `spamassassin` or another battery task (its train split) or a .jsonl/.csv/.tsv file.
    #[arg(long)]
    data: String,
    /// Validation data for early stopping (default for a built-in task: its validation split).
    #[arg(long)]
    valid: Option<String>,
    /// Unlabelled texts the teacher labels as extra training data: a .txt file (one text per
    /// line) or the text field of a .jsonl/.csv/.tsv file.
    #[arg(long)]
    unlabelled: Option<PathBuf>,
    /// Test data for the final table (default for a built-in task: its test split).
    #[arg(long)]
    test: Option<String>,
    /// Student checkpoint folder.
    #[arg(long, value_parser = crate::out_dir)]
    out: PathBuf,
    /// The encoder the student's layers come from (default: the teacher checkpoint's; minilm for
    /// other teachers).
    #[arg(long)]
    student_base: Option<String>,
    /// Layers the student keeps, evenly spaced over the base's (default 2).
    #[arg(long, conflicts_with = "keep")]
    student_layers: Option<usize>,
    /// The base layers the student keeps, by index from 0 (e.g. 0,2,4).
    #[arg(long, value_delimiter = ',')]
    keep: Option<Vec<usize>>,
    /// A narrower student: this hidden size (a multiple of the head size), its weights cut
    /// from the base's leading rows and columns.
    #[arg(long)]
    student_hidden: Option<usize>,
    /// The narrower student's feed-forward size (default 4 × hidden).
    #[arg(long)]
    student_intermediate: Option<usize>,
    /// Softening temperature T of the teacher's and student's probabilities.
    #[arg(long, default_value_t = 2.0)]
    temperature: f64,
    /// Weight α of the teacher's term; 1 − α goes to the gold labels (where there are any).
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Weight β of a hidden-state loss: each student layer's token vectors pulled towards the
    /// teacher layer it was cut from, by mean squared error (checkpoint teachers; 0: off).
    #[arg(long, default_value_t = 0.0)]
    hidden_weight: f64,
    /// Learn the teacher's top label as a hard label instead of its probabilities (the baseline
    /// that distillation is measured against).
    #[arg(long)]
    hard: bool,
    /// Chat teacher: the words it would answer for a label, LABEL=WORDS (default: the label).
    #[arg(long = "label-words", value_parser = parse_label_words)]
    label_words: Vec<(String, String)>,
    /// Chat teacher: the prompt, with {text}, {labels} (all label words) and {label} (channel
    /// scoring: this label's words) filled in.
    #[arg(long)]
    prompt: Option<String>,
    /// Chat teacher: how a label is scored, `answer` (the label words' likelihood as the answer)
    /// or `channel` (the text's likelihood after the label words).
    #[arg(long, default_value = "answer", value_parser = parse_scoring)]
    teacher_scoring: Scoring,
    /// Chat teacher: use its raw probabilities, without contextual calibration (dividing by the
    /// probabilities it gives content-free texts) or recalibration on the validation data.
    #[arg(long)]
    no_calibration: bool,
    /// Chat teacher: read at most this many tokens of each text.
    #[arg(long, default_value_t = 256)]
    teacher_max_tokens: usize,
    #[arg(long, default_value_t = 3)]
    epochs: u32,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..=8192))]
    max_len: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    patience: u32,
    /// Save the resumable state every this many steps (0: at each epoch's end only).
    #[arg(long, default_value_t = 100)]
    save_every: u32,
    /// Continue an interrupted run (same flags and data).
    #[arg(long)]
    resume: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fields: FieldArgs,
}

pub(crate) fn parse_scoring(s: &str) -> Result<Scoring, String> {
    s.parse()
}

fn parse_label_words(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((l, w)) if !l.is_empty() && !w.trim().is_empty() => Ok((l.into(), w.into())),
        _ => Err(format!("'{s}': write LABEL=WORDS, e.g. spam=\"junk mail\"")),
    }
}

/// The three kinds of teacher.
enum Teacher {
    Checkpoint(PathBuf, Box<Classifier>),
    Chat(Box<ChatModel>, ChatLabeller),
    Outputs(PathBuf, std::collections::HashMap<String, Vec<f32>>),
}

/// Teacher outputs for `texts`, from the cache when this teacher labelled them before.
fn teach(
    teacher: &Teacher,
    labels: &[String],
    texts: &[&str],
    quiet: bool,
    what: &str,
) -> Result<Vec<Vec<f32>>> {
    let identity = match teacher {
        Teacher::Outputs(path, map) => return Ok(outputs_for(path, map, texts)?),
        Teacher::Checkpoint(dir, _) => format!(
            "checkpoint {}",
            frugal_models::assets::sha256_file(&dir.join("model.safetensors"))?
        ),
        Teacher::Chat(m, l) => format!(
            "chat {} {}",
            frugal_models::assets::sha256_file(&m.path)?,
            serde_json::to_string(l)?
        ),
    };
    let cache = OutputCache {
        dir: frugal_models::assets::frugal_home().join("cache/teacher-outputs"),
    };
    let key = OutputCache::key(&identity, texts);
    if let Some(o) = cache.get(&key).filter(|o| o.labels == labels) {
        return Ok(o.probs);
    }
    let pb = progress(texts.len() as u64, quiet, what);
    let probs = match teacher {
        Teacher::Checkpoint(_, clf) => {
            let p = clf.predict(texts, 32)?;
            pb.set_position(texts.len() as u64);
            p
        }
        Teacher::Chat(m, l) => l.label(m, texts, &mut |d| pb.set_position(d as u64))?,
        Teacher::Outputs(..) => unreachable!("returned above"),
    };
    pb.finish_and_clear();
    cache.put(
        &key,
        &TeacherOutputs {
            labels: labels.to_vec(),
            probs: probs.clone(),
        },
    )?;
    Ok(probs)
}

/// Sentences per second of a classifier on `texts` (batch 32), best of two passes.
fn measure(clf: &Classifier, texts: &[&str]) -> Result<f64> {
    let mut best = 0f64;
    for _ in 0..2 {
        let t0 = Instant::now();
        clf.predict(texts, 32)?;
        best = best.max(texts.len() as f64 / t0.elapsed().as_secs_f64().max(1e-9));
    }
    Ok(best)
}

fn accuracy(probs: &[Vec<f32>], labels: &[String], gold: &[Example]) -> f64 {
    let right = probs
        .iter()
        .zip(gold)
        .filter(|(p, e)| labels[argmax(p) as usize] == e.label)
        .count();
    right as f64 / gold.len().max(1) as f64
}

pub fn distill_cmd(a: DistillArgs, ctx: &Ctx) -> Result<()> {
    let (train_set, valid) = load_sets(&a.data, a.valid.as_deref(), &a.fields, ctx.quiet)?;
    let test = match (&a.test, a.data.as_str()) {
        (Some(t), _) => Some(load_eval(t, &a.fields, ctx.quiet)?),
        (None, d) if frugal_train::battery::task(d).is_some() => {
            Some(load_eval(d, &a.fields, ctx.quiet)?)
        }
        (None, _) => None,
    };
    let extra = match &a.unlabelled {
        Some(p) => load_texts(p, &a.fields.fields().text)?,
        None => vec![],
    };
    let data_labels = frugal_train::classifier::labels_of(&train_set);

    // The teacher and its label set.
    let tpath = PathBuf::from(&a.teacher);
    let (teacher, labels, teacher_dir) = if tpath.join("frugal.json").is_file() {
        let (clf, _) =
            Classifier::load(&tpath).with_context(|| format!("--teacher {}", a.teacher))?;
        let labels = clf.labels.clone();
        (
            Teacher::Checkpoint(tpath.clone(), Box::new(clf)),
            labels,
            Some(tpath.clone()),
        )
    } else if tpath.is_file() && tpath.extension().is_some_and(|e| e == "jsonl") {
        let o = read_outputs(&tpath).with_context(|| format!("--teacher {}", a.teacher))?;
        let (map, labels, renormalised) = (o.by_text, o.labels, o.renormalised);
        if renormalised > 0 && !ctx.quiet {
            eprintln!(
                "note: {renormalised} teacher outputs in {} did not sum to 1 and were renormalised",
                tpath.display()
            );
        }
        (Teacher::Outputs(tpath.clone(), map), labels, None)
    } else {
        match resolve_model(&a.teacher, &store(ctx.quiet)).with_context(|| {
            "--teacher: give a `frugal train` checkpoint folder, a chat model (smollm2 or a .gguf file), or a .jsonl file of teacher outputs"
        })? {
            ModelPath::Gguf(p) => {
                let model = ChatModel::load(&p)?;
                let words = frugal_train::labeller::words_for(&data_labels, &a.label_words);
                if let Some((k, _)) = a.label_words.iter().find(|(k, _)| !data_labels.contains(k)) {
                    bail!(
                        "--label-words {k}=…: '{k}' is not a label of the data ({})",
                        data_labels.join(", ")
                    );
                }
                let labeller = ChatLabeller {
                    prompt: a
                        .prompt
                        .clone()
                        .unwrap_or_else(|| default_prompt(a.teacher_scoring).into()),
                    words,
                    max_text_tokens: a.teacher_max_tokens.max(1),
                    calibrate: !a.no_calibration,
                    scoring: a.teacher_scoring,
                };
                (Teacher::Chat(Box::new(model), labeller), data_labels.clone(), None)
            }
            ModelPath::HfDir(d) => bail!(
                "--teacher {}: an encoder without a classification head cannot teach; fine-tune it first with `frugal train --base {} …` and pass that checkpoint",
                d.display(),
                a.teacher
            ),
        }
    };
    for set in [Some(&train_set), valid.as_ref(), test.as_ref()]
        .into_iter()
        .flatten()
    {
        if let Some(e) = set.iter().find(|e| !labels.contains(&e.label)) {
            bail!(
                "the data's label '{}' is not one the teacher knows ({}); the teacher's outputs must cover the data's labels",
                e.label,
                labels.join(", ")
            );
        }
    }

    // The student: a subset of the base's layers.
    let base = match (&a.student_base, &teacher_dir) {
        (Some(b), _) => match resolve_model(b, &store(ctx.quiet))? {
            ModelPath::HfDir(d) => d,
            ModelPath::Gguf(p) => bail!(
                "--student-base {}: a chat model; students are encoders",
                p.display()
            ),
        },
        (None, Some(d)) => d.clone(),
        (None, None) => store(ctx.quiet).ensure("minilm")?,
    };
    if let Some(t) = &teacher_dir {
        let same = frugal_train::classifier::same_tokenizer(t, &base);
        if !same && !ctx.quiet {
            eprintln!("note: the student's tokenizer differs from the teacher's; that is fine here, because the student learns the teacher's probabilities per text, not its hidden states token by token");
        }
    }
    let total = layer_count(&base)?;
    let keep = match &a.keep {
        Some(k) => k.clone(),
        None => evenly_spaced(total, a.student_layers.unwrap_or(2))?,
    };
    let name = a
        .out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "student".into());
    let parent = a
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&parent).with_context(|| format!("--out {}", a.out.display()))?;
    let student_base = parent.join(format!(".{name}.student-base-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(student_base.clone());
    let shrink = match (a.student_hidden, a.student_intermediate) {
        (None, None) => None,
        (h, i) => {
            let h = h.unwrap_or(base_hidden(&base)?);
            Some(Shrink {
                hidden: h,
                intermediate: i.unwrap_or(4 * h),
            })
        }
    };
    // The student flags are checked now, before the (slow) teacher runs; its folder is written
    // after it, so stopping during the labelling leaves nothing behind.
    check_student(&base, &keep, shrink)?;

    // Teacher outputs for the training and transfer texts.
    let mut all = train_set.clone();
    all.extend(extra.iter().map(|t| Example {
        text: t.clone(),
        label: String::new(),
    }));
    let texts: Vec<&str> = all.iter().map(|e| e.text.as_str()).collect();
    let mut probs = teach(&teacher, &labels, &texts, ctx.quiet, "teacher labelling")?;
    // A chat teacher is recalibrated on the validation data's gold labels (its temperature and
    // prior), so its probabilities mean what they say before a student learns them.
    let recal = match (&teacher, &valid) {
        (Teacher::Chat(..), Some(v)) if !a.no_calibration => {
            let vt: Vec<&str> = v.iter().map(|e| e.text.as_str()).collect();
            let vp = teach(&teacher, &labels, &vt, ctx.quiet, "teacher on validation")?;
            let gold: Vec<usize> = v
                .iter()
                .map(|e| labels.iter().position(|l| *l == e.label).unwrap_or(0))
                .collect();
            let r = Recalibration::fit(&vp, &gold)?;
            if !ctx.quiet {
                eprintln!(
                    "teacher recalibrated on {} validation texts: scale {:.3}, biases {:?}",
                    v.len(),
                    r.scale,
                    r.bias.iter().map(|b| format!("{b:.3}")).collect::<Vec<_>>()
                );
            }
            Some(r)
        }
        _ => None,
    };
    let recalibrate = |p: Vec<Vec<f32>>| -> Vec<Vec<f32>> {
        match &recal {
            Some(r) => p.iter().map(|q| r.apply(q)).collect(),
            None => p,
        }
    };
    probs = recalibrate(probs);
    if a.hard {
        for p in probs.iter_mut() {
            let top = argmax(p) as usize;
            p.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = if i == top { 1.0 } else { 0.0 });
        }
    }
    write_student_base(&base, &keep, shrink, &student_base)?;
    let teacher_desc = match &teacher {
        Teacher::Checkpoint(d, _) => format!("checkpoint {}", d.display()),
        Teacher::Chat(m, _) => format!("chat model {}", m.path.display()),
        Teacher::Outputs(p, _) => format!("outputs {}", p.display()),
    };
    let config = TrainConfig {
        epochs: a.epochs as usize,
        lr: a.lr,
        batch: a.batch as usize,
        seed: a.seed,
        patience: a.patience as usize,
        ..Default::default()
    };
    let hidden = match &teacher {
        _ if a.hidden_weight == 0.0 => None,
        Teacher::Checkpoint(d, _) => Some(HiddenMatch {
            teacher: d.clone(),
            layers: keep.clone(),
            weight: a.hidden_weight,
        }),
        _ => bail!("--hidden-weight: hidden states come from a checkpoint teacher; this teacher gives only probabilities"),
    };
    let spec = TrainSpec {
        base: &student_base,
        base_name: format!(
            "{} layers {:?}",
            a.student_base.as_deref().unwrap_or(&a.teacher),
            keep
        ),
        train: &all,
        valid: valid.as_deref(),
        mode: Mode::Full,
        max_len: Some(a.max_len as usize),
        config: config.clone(),
        out: &a.out,
        resume: a.resume,
        save_every: a.save_every as usize,
        interrupt: Some(&INTERRUPT),
        labels: Some(labels.clone()),
        soft: Some(SoftTargets {
            probs,
            temperature: if a.hard { 1.0 } else { a.temperature },
            alpha: a.alpha,
            teacher: format!(
                "{teacher_desc}{}",
                if a.hard { " (hard labels)" } else { "" }
            ),
        }),
        hidden,
        probe: None,
    };
    let (report, _info) = run_training(&spec, ctx.quiet, "distilling")?;

    // The table: sizes, measured speed, test accuracy and agreement.
    let (student, _) = Classifier::load(&a.out)?;
    let (s_params, s_bytes) = size_of(&a.out)?;
    let (t_params, t_bytes) = match &teacher {
        Teacher::Checkpoint(d, _) => {
            let (p, b) = size_of(d)?;
            (Some(p), Some(b))
        }
        Teacher::Chat(m, _) => (None, std::fs::metadata(&m.path).ok().map(|m| m.len())),
        Teacher::Outputs(..) => (None, None),
    };
    let row = |who: &str| serde_json::json!({"model": who});
    let mut t_row = row("teacher");
    let mut s_row = row("student");
    t_row["description"] = teacher_desc.clone().into();
    t_row["recalibration"] = serde_json::to_value(&recal)?;
    t_row["layers"] = match &teacher {
        Teacher::Checkpoint(d, _) => layer_count(d)?.into(),
        _ => serde_json::Value::Null,
    };
    t_row["parameters"] = t_params.into();
    t_row["file_bytes"] = t_bytes.into();
    s_row["layers"] = keep.len().into();
    s_row["hidden"] = student.encoder.dim().into();
    if let Teacher::Checkpoint(_, clf) = &teacher {
        t_row["hidden"] = clf.encoder.dim().into();
    }
    s_row["kept_layers"] = serde_json::json!(keep);
    s_row["parameters"] = s_params.into();
    s_row["file_bytes"] = s_bytes.into();
    if let Some(test) = &test {
        let tt: Vec<&str> = test.iter().map(|e| e.text.as_str()).collect();
        let tp = recalibrate(teach(&teacher, &labels, &tt, ctx.quiet, "teacher on test")?);
        let sp = student.predict(&tt, 32)?;
        let (ta, sa) = (
            accuracy(&tp, &labels, test),
            accuracy(&sp, &student.labels, test),
        );
        let agree = tp
            .iter()
            .zip(&sp)
            .filter(|(x, y)| argmax(x) == argmax(y))
            .count() as f64
            / test.len() as f64;
        t_row["accuracy"] = ta.into();
        s_row["accuracy"] = sa.into();
        s_row["agreement"] = agree.into();
        s_row["quality_retained"] = (sa / ta.max(1e-9)).into();
        let sample: Vec<&str> = tt.iter().take(256).copied().collect();
        s_row["sentences_per_s"] = measure(&student, &sample)?.into();
        match &teacher {
            Teacher::Checkpoint(_, clf) => t_row["sentences_per_s"] = measure(clf, &sample)?.into(),
            Teacher::Chat(m, l) => {
                // Measured on a few texts (a chat model labels slowly).
                let few: Vec<&str> = tt.iter().take(8).copied().collect();
                let t0 = Instant::now();
                l.label(m, &few, &mut |_| {})?;
                t_row["sentences_per_s"] = (few.len() as f64 / t0.elapsed().as_secs_f64()).into();
            }
            Teacher::Outputs(..) => {}
        }
        if let (Some(t), Some(s)) = (
            t_row["sentences_per_s"].as_f64(),
            s_row["sentences_per_s"].as_f64(),
        ) {
            s_row["speedup"] = (s / t).into();
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({"teacher": t_row, "student": s_row, "report": report, "checkpoint": a.out, "examples": {"labelled": train_set.len(), "unlabelled": extra.len()}})
        );
        return Ok(());
    }
    println!(
        "distilled {} examples ({} labelled, {} unlabelled), {} epochs in {:.1} s; student {}",
        all.len(),
        train_set.len(),
        extra.len(),
        report.epochs_run,
        report.seconds,
        a.out.display()
    );
    let mut t = crate::io::table([
        "",
        "layers",
        "parameters",
        "file MB",
        "sentences/s",
        "accuracy",
        "agreement",
        "quality retained",
    ]);
    let f = |v: &serde_json::Value, d: usize| {
        v.as_f64().map_or("—".to_string(), |x| format!("{x:.d$}"))
    };
    let n = |v: &serde_json::Value| v.as_u64().map_or("—".to_string(), |x| x.to_string());
    let mb = |v: &serde_json::Value| {
        v.as_f64()
            .map_or("—".to_string(), |x| format!("{:.1}", x / 1e6))
    };
    for r in [&t_row, &s_row] {
        t.add_row([
            r["model"].as_str().unwrap_or_default().to_string(),
            n(&r["layers"]),
            n(&r["parameters"]),
            mb(&r["file_bytes"]),
            f(&r["sentences_per_s"], 1),
            f(&r["accuracy"], 4),
            f(&r["agreement"], 4),
            f(&r["quality_retained"], 4),
        ]);
    }
    println!("{t}");
    if let Some(x) = s_row["speedup"].as_f64() {
        println!("the student is {x:.2}x the teacher's speed");
    }
    Ok(())
}

/// The hidden size in an encoder folder's config.json.
fn base_hidden(dir: &Path) -> Result<usize> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    v["hidden_size"]
        .as_u64()
        .map(|h| h as usize)
        .context("config.json has no hidden_size")
}

/// Removes a temporary folder when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
