//! Text classifier = pretrained encoder + its pooling + a linear head, trained by the one loop in
//! `trainer`: `head` mode (transfer learning: the encoder frozen, pooled embeddings computed once
//! and cached) or `full` mode (fine-tuning: every weight updated).
//!
//! Checkpoints are Hugging Face-layout folders (config.json, model.safetensors with the head as
//! `classifier.weight`/`classifier.bias`, tokenizer.json, the sentence-transformers files) plus
//! `frugal.json`, written to a temporary folder and renamed into place.

use crate::data::Example;
use crate::learner::Prepared;
use crate::metrics::{evaluate, Metrics};
use crate::trainer::{
    batch_seed, fit, Checkpointing, Control, FitReport, Progress, Task, TrainConfig,
};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use frugal_models::chat::sampling::argmax;
use frugal_models::encoder::Encoder;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// Which weights training updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Transfer learning: only the head.
    Head,
    /// Fine-tuning: all weights.
    Full,
    /// Low-rank adapters on every layer's query and value projections, and the head; the
    /// checkpoint folds the adapters into the weights.
    Lora,
}

/// The adapters' rank and α (scale α / rank) in `Mode::Lora`.
pub const LORA_RANK: usize = 8;
pub const LORA_ALPHA: f64 = 16.0;

/// `frugal.json`: what a checkpoint is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub labels: Vec<String>,
    /// The base model it was trained from (as given, and the sha256 of its weights).
    pub base: String,
    pub base_weights_sha256: String,
    pub mode: Mode,
    pub max_len: usize,
    pub config: TrainConfig,
    /// Validation metrics of this checkpoint, when there was validation data.
    pub metrics: Option<Metrics>,
    /// sha256 over the training examples (text and label), to tell data sets apart.
    pub data_fingerprint: String,
    pub epoch: Option<usize>,
    /// The teacher a distilled student learnt from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
}

/// Files copied from the base folder so a checkpoint is itself a loadable encoder folder.
const BASE_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
];

/// Copies the encoder folder's side files (`BASE_FILES`, those present) from `from` into `to`:
/// everything a loadable encoder folder needs besides its weights.
pub(crate) fn copy_base_files(from: &Path, to: &Path) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| Error::data(p, format!("cannot write: {e}"));
    for f in BASE_FILES {
        let (src, dst) = (from.join(f), to.join(f));
        if src.is_file() {
            if let Some(p) = dst.parent() {
                std::fs::create_dir_all(p).map_err(|e| io(p, e))?;
            }
            std::fs::copy(&src, &dst).map_err(|e| io(&dst, e))?;
        }
    }
    Ok(())
}

/// A classifier in memory.
pub struct Classifier {
    pub encoder: Encoder,
    pub varmap: VarMap,
    pub head: Linear,
    pub labels: Vec<String>,
}

impl Classifier {
    /// A new classifier over `base` (an encoder folder) for `labels`, the head initialised
    /// uniformly in ±1/sqrt(dim) (PyTorch's `nn.Linear` default) from `seed`.
    pub fn new(base: &Path, labels: Vec<String>, seed: u64) -> Result<Classifier> {
        if labels.len() < 2 {
            return Err(Error::Invalid(format!(
                "a classifier needs at least 2 labels; the training data has {}",
                labels.len()
            )));
        }
        let (encoder, varmap) = Encoder::load_trainable(base)?;
        let head = head(&varmap, encoder.dim(), labels.len())?;
        {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x6865_6164);
            let bound = 1.0 / (encoder.dim() as f32).sqrt();
            let map = varmap.data().lock().expect("varmap lock");
            for name in ["classifier.weight", "classifier.bias"] {
                let v = &map[name];
                let init: Vec<f32> = (0..v.elem_count())
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                v.set(&Tensor::from_vec(init, v.shape(), &Device::Cpu)?)?;
            }
            // A base that is itself a classifier over as many labels (a distillation student
            // cut from a teacher checkpoint) starts from its head.
            let file = base.join("model.safetensors");
            // SAFETY: the weights file is not modified while mapped.
            if let Ok(st) = unsafe { candle_core::safetensors::MmapedSafetensors::new(&file) } {
                let w = st.load("classifier.weight", &Device::Cpu);
                let b = st.load("classifier.bias", &Device::Cpu);
                if let (Ok(w), Ok(b)) = (w, b) {
                    let (mw, mb) = (&map["classifier.weight"], &map["classifier.bias"]);
                    if w.shape() == mw.shape() && b.shape() == mb.shape() {
                        mw.set(&w)?;
                        mb.set(&b)?;
                    }
                }
            }
        }
        Ok(Classifier {
            encoder,
            varmap,
            head,
            labels,
        })
    }

    /// Loads a checkpoint folder written by `save`.
    pub fn load(dir: &Path) -> Result<(Classifier, CheckpointInfo)> {
        let info_path = dir.join("frugal.json");
        let info: CheckpointInfo = serde_json::from_slice(
            &std::fs::read(&info_path).map_err(|_| {
                Error::data(&info_path, "missing: this folder is not a frugal checkpoint (train one with `frugal train`)")
            })?,
        )
        .map_err(|e| Error::data(&info_path, format!("unreadable: {e}")))?;
        let (mut encoder, mut varmap) = Encoder::load_trainable(dir)?;
        let head = head(&varmap, encoder.dim(), info.labels.len())?;
        // Now the map holds the head too: load again to fill it from the file.
        varmap.load(dir.join("model.safetensors")).map_err(|e| {
            Error::data(
                dir,
                format!("the head does not match frugal.json's labels: {e}"),
            )
        })?;
        encoder.set_max_len(info.max_len)?;
        Ok((
            Classifier {
                encoder,
                varmap,
                head,
                labels: info.labels.clone(),
            },
            info,
        ))
    }

    /// Writes the checkpoint atomically: a temporary folder renamed over `dir`, so an
    /// interrupted save leaves the previous checkpoint intact.
    pub fn save(&self, base: &Path, dir: &Path, info: &CheckpointInfo) -> Result<()> {
        crate::replace_dir(dir, |tmp| {
            copy_base_files(base, tmp)?;
            self.save_weights(&tmp.join("model.safetensors"))?;
            let json = serde_json::to_vec_pretty(info).expect("checkpoint info serialises");
            std::fs::write(tmp.join("frugal.json"), json)
                .map_err(|e| Error::data(tmp, format!("cannot write: {e}")))
        })
    }

    /// Adds LoRA adapters (rank `LORA_RANK`) to the encoder, for `Mode::Lora`.
    pub fn add_lora(&mut self, seed: u64) -> Result<()> {
        if !self.encoder.model.has_lora() {
            self.encoder
                .model
                .add_lora(&self.varmap, LORA_RANK, LORA_ALPHA, seed)?;
        }
        Ok(())
    }

    /// Writes the weights; LoRA adapters are folded into the projections they adapt, so the
    /// file loads as a plain encoder plus head.
    fn save_weights(&self, path: &Path) -> Result<()> {
        if !self.encoder.model.has_lora() {
            return Ok(self.varmap.save(path)?);
        }
        let merged: std::collections::HashMap<String, Tensor> = self
            .encoder
            .model
            .merged_lora_weights()?
            .into_iter()
            .collect();
        let map = self.varmap.data().lock().expect("varmap lock");
        let out: std::collections::HashMap<String, Tensor> = map
            .iter()
            .filter(|(n, _)| !n.contains(".lora_"))
            .map(|(n, v)| {
                let t = merged
                    .get(n)
                    .cloned()
                    .unwrap_or_else(|| v.as_tensor().clone());
                (n.clone(), t)
            })
            .collect();
        candle_core::safetensors::save(&out, path)?;
        Ok(())
    }

    /// The variables `mode` trains, named and sorted by name (so a saved optimiser state lines
    /// up with them in another process): the head's, or all.
    pub fn trained_vars(&self, mode: Mode) -> Vec<(String, candle_core::Var)> {
        let map = self.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<_> = map
            .iter()
            .filter(|(n, _)| match mode {
                Mode::Full => !n.contains(".lora_"),
                Mode::Head => n.starts_with("classifier."),
                Mode::Lora => n.starts_with("classifier.") || n.contains(".lora_"),
            })
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Label probabilities for each text (batched, length-sorted).
    pub fn predict(&self, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>> {
        let toks = self.encoder.tokenize(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(toks[i].ids.len()));
        let mut out = vec![vec![]; texts.len()];
        for chunk in order.chunks(batch.max(1)) {
            let ids: Vec<&[u32]> = chunk.iter().map(|&i| toks[i].ids.as_slice()).collect();
            let (ids, mask) = self.encoder.batch_tensors(&ids)?;
            let logits = self.head.forward(&self.encoder.pooled(&ids, &mask)?)?;
            let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
            for (&i, p) in chunk.iter().zip(probs) {
                out[i] = p;
            }
        }
        Ok(out)
    }

    /// Accuracy, macro-F1, per-class scores and confusion on labelled examples. Labels the
    /// classifier does not know are an error that names them.
    pub fn evaluate(&self, examples: &[Example], batch: usize) -> Result<Metrics> {
        let index: BTreeMap<&str, usize> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        let unknown: Vec<&str> = examples
            .iter()
            .map(|e| e.label.as_str())
            .filter(|l| !index.contains_key(l))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !unknown.is_empty() {
            return Err(Error::Invalid(format!(
                "the data has labels the model does not know: {} (the model knows: {})",
                unknown.join(", "),
                self.labels.join(", ")
            )));
        }
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        let probs = self.predict(&texts, batch)?;
        let pred: Vec<usize> = probs.iter().map(|p| argmax(p) as usize).collect();
        let gold: Vec<usize> = examples.iter().map(|e| index[e.label.as_str()]).collect();
        Ok(evaluate(&self.labels, &gold, &pred))
    }
}

fn head(varmap: &VarMap, dim: usize, n: usize) -> Result<Linear> {
    let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
    Ok(candle_nn::linear(dim, n, vb.pp("classifier"))?)
}

/// sha256 over the examples' texts and labels.
pub fn fingerprint(examples: &[Example]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for e in examples {
        h.update(e.label.as_bytes());
        h.update([0]);
        h.update(e.text.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The sorted distinct labels of a data set.
pub fn labels_of(examples: &[Example]) -> Vec<String> {
    let set: std::collections::BTreeSet<&str> = examples.iter().map(|e| e.label.as_str()).collect();
    set.into_iter().map(String::from).collect()
}

/// Everything a training run needs.
#[derive(Clone)]
pub struct TrainSpec<'a> {
    pub base: &'a Path,
    pub base_name: String,
    pub train: &'a [Example],
    pub valid: Option<&'a [Example]>,
    pub mode: Mode,
    pub max_len: Option<usize>,
    pub config: TrainConfig,
    pub out: &'a Path,
    /// Continue an interrupted run from its state (see `state_dir`).
    pub resume: bool,
    /// Optimiser steps between saves of the resumable state (0: at each epoch's end only).
    pub save_every: usize,
    /// Set to stop the run after the current step, with its state saved.
    pub interrupt: Option<&'a AtomicBool>,
    /// The label set (default: the labels of `train`). With it, training examples whose label
    /// is empty are unlabelled: they learn from `soft` alone.
    pub labels: Option<Vec<String>>,
    /// Distillation: a teacher's probabilities to learn from.
    pub soft: Option<SoftTargets>,
    /// Distillation: a teacher's hidden states to imitate (full mode).
    pub hidden: Option<HiddenMatch>,
    /// Linear probing first (full and LoRA modes, labelled data without a teacher): the new
    /// head is fitted on the frozen encoder's embeddings with this schedule, as head mode does,
    /// before every weight trains; an epoch of the second phase is kept only if it beats the
    /// probe on validation. `None`: the head starts random.
    pub probe: Option<TrainConfig>,
}

/// The schedule head mode trains with, and linear probing before fine-tuning: 20 epochs at
/// 1e-2, no weight decay or warm-up, stopping after 2 epochs without a better validation score.
pub fn head_config(seed: u64) -> TrainConfig {
    TrainConfig {
        epochs: 20,
        lr: 1e-2,
        weight_decay: 0.0,
        warmup: 0.0,
        seed,
        ..Default::default()
    }
}

/// Optimiser steps a default fine-tuning run takes at the least: small sets get more epochs
/// (3 at the least, 30 at the most), so 300 examples train as long as 1,600 do.
pub const MIN_STEPS: usize = 100;

/// Epochs for a default fine-tuning run of `n` examples in batches of `batch`: 3, or more
/// until `MIN_STEPS` optimiser steps, at most 30.
pub fn default_epochs(n: usize, batch: usize) -> usize {
    let per_epoch = n.div_ceil(batch.max(1)).max(1);
    MIN_STEPS.div_ceil(per_epoch).clamp(3, 30)
}

/// Hidden-state distillation: each student layer's token vectors pulled towards a teacher
/// layer's by mean squared error (same tokenizer and hidden size needed).
#[derive(Debug, Clone)]
pub struct HiddenMatch {
    /// The teacher's encoder folder (kept frozen).
    pub teacher: PathBuf,
    /// For each student layer, the teacher layer it imitates.
    pub layers: Vec<usize>,
    /// Weight β of the mean squared error in the loss.
    pub weight: f64,
}

/// A loaded hidden-state target.
struct HiddenTarget {
    teacher: Encoder,
    layers: Vec<usize>,
    weight: f64,
}

impl HiddenTarget {
    /// Mean over real tokens, layers and dimensions of (student − teacher)².
    fn mse(&self, student: &[Tensor], ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let teacher = self.teacher.model.forward_layers(ids, mask, true)?;
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let dim = student[0].dim(2)? as f64;
        let count = (m.sum_all()?.to_scalar::<f32>()? as f64 * dim * student.len() as f64).max(1.0);
        let mut total: Option<Tensor> = None;
        for (s, &t) in student.iter().zip(&self.layers) {
            let d = (s - teacher[t].detach())?
                .sqr()?
                .broadcast_mul(&m)?
                .sum_all()?;
            total = Some(match total {
                Some(x) => (x + d)?,
                None => d,
            });
        }
        total.expect("at least one layer") / count
    }
}

/// A teacher's label probabilities for each training example (in `labels` order), and how to
/// weigh them: loss = α·T²·KL(p_teacher(T) ‖ p_student(T)) + (1−α)·CE(gold, p_student) for
/// labelled examples, the KL term alone for unlabelled ones.
#[derive(Debug, Clone)]
pub struct SoftTargets {
    pub probs: Vec<Vec<f32>>,
    /// Softening temperature T (the teacher's probabilities are sharpened or softened to it).
    pub temperature: f64,
    /// Weight α of the teacher's term.
    pub alpha: f64,
    /// What the teacher was (recorded in frugal.json).
    pub teacher: String,
}

impl<'a> TrainSpec<'a> {
    /// A plain run: no validation data, no resuming or interrupting, the data's own labels,
    /// no teacher; set the other fields on the result where needed.
    pub fn new(
        base: &'a Path,
        base_name: impl Into<String>,
        train: &'a [Example],
        mode: Mode,
        config: TrainConfig,
        out: &'a Path,
    ) -> TrainSpec<'a> {
        TrainSpec {
            base,
            base_name: base_name.into(),
            train,
            valid: None,
            mode,
            max_len: None,
            config,
            out,
            resume: false,
            save_every: 0,
            interrupt: None,
            labels: None,
            soft: None,
            hidden: None,
            probe: None,
        }
    }
}

/// Where a run that writes its checkpoint to `out` keeps its resumable state: the sibling
/// folder `OUT.resume`, removed when the run completes.
pub fn state_dir(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "checkpoint".into());
    name.push(".resume");
    out.with_file_name(name)
}

/// The classification task for the loop: tokens (full mode) or cached embeddings (head mode).
struct ClassifyTask<'a> {
    clf: Classifier,
    spec: &'a TrainSpec<'a>,
    /// The training texts as cached embeddings (head mode) or token ids, with their label
    /// indices (`UNLABELLED` for soft-only examples).
    data: Prepared,
    info: CheckpointInfo,
    last_metrics: Option<Metrics>,
    /// Distillation: teacher probabilities at temperature T (n x labels), Σ p·log p per example,
    /// and the weights of the teacher and gold terms per example.
    soft: Option<SoftTensors>,
    hidden: Option<HiddenTarget>,
    /// Linear probing: the head's values at the best epoch so far (kept in memory).
    snapshot: Option<Vec<Tensor>>,
}

struct SoftTensors {
    probs: Tensor,
    plogp: Tensor,
    w_kd: Vec<f32>,
    w_ce: Vec<f32>,
    temperature: f64,
}

/// Labels that mark an example as unlabelled in `targets`.
const UNLABELLED: u32 = u32::MAX;

impl ClassifyTask<'_> {
    fn loss_of(&mut self, batch: &[usize]) -> candle_core::Result<Tensor> {
        let idx: Vec<u32> = batch.iter().map(|&i| i as u32).collect();
        let seed = batch_seed(self.spec.config.seed ^ 0x517c_c1b7_2722_0a95, batch);
        self.clf.encoder.model.reseed_dropout(seed);
        let target = Tensor::new(
            batch
                .iter()
                .map(|&i| self.data.targets[i])
                .collect::<Vec<_>>(),
            &Device::Cpu,
        )?;
        let mut hidden_mse = None;
        let pooled = match &self.hidden {
            None => crate::learner::pooled(&self.clf, &self.data, batch)?,
            // Hidden-state matching (full mode only) needs every layer's output.
            Some(h) => {
                let ids: Vec<&[u32]> = batch
                    .iter()
                    .map(|&i| self.data.tokens[i].as_slice())
                    .collect();
                let (ids, mask) = self.clf.encoder.batch_tensors(&ids).map_err(to_candle)?;
                let enc = &self.clf.encoder;
                let outs = enc.model.forward_layers(&ids, &mask, true)?;
                hidden_mse = Some(h.mse(&outs, &ids, &mask)?);
                let last = outs.last().expect("the last layer");
                enc.pool(last, &mask).map_err(to_candle)?
            }
        };
        let logits = self.clf.head.forward(&pooled)?;
        let loss = self.output_loss(&logits, &target, batch, &idx)?;
        match (hidden_mse, &self.hidden) {
            (Some(mse), Some(h)) => loss + (mse * h.weight)?,
            _ => Ok(loss),
        }
    }

    /// Cross-entropy on gold labels, or the distillation loss with soft targets.
    fn output_loss(
        &self,
        logits: &Tensor,
        target: &Tensor,
        batch: &[usize],
        idx: &[u32],
    ) -> candle_core::Result<Tensor> {
        let Some(soft) = &self.soft else {
            return candle_nn::loss::cross_entropy(logits, target);
        };
        let dev = &Device::Cpu;
        let idx = Tensor::new(idx, dev)?;
        let t = soft.temperature;
        let p = soft.probs.index_select(&idx, 0)?;
        let plogp = soft.plogp.index_select(&idx, 0)?;
        let logq = candle_nn::ops::log_softmax(&(logits / t)?, D::Minus1)?;
        let kd = ((plogp - (p * logq)?.sum(1)?)? * (t * t))?;
        let pick = |w: &Vec<f32>| Tensor::new(batch.iter().map(|&i| w[i]).collect::<Vec<_>>(), dev);
        let (w_kd, w_ce) = (pick(&soft.w_kd)?, pick(&soft.w_ce)?);
        let gold = target.clamp(0u32, (self.clf.labels.len() - 1) as u32)?;
        let ce = candle_nn::ops::log_softmax(logits, D::Minus1)?
            .gather(&gold.unsqueeze(1)?, 1)?
            .squeeze(1)?
            .neg()?;
        ((kd * w_kd)? + (ce * w_ce)?)?.mean_all()
    }
}

impl Task for ClassifyTask<'_> {
    fn len(&self) -> usize {
        self.data.len()
    }

    fn loss(&mut self, batch: &[usize]) -> candle_core::Result<Tensor> {
        self.loss_of(batch)
    }

    fn validate(&mut self) -> Result<Option<f64>> {
        let Some(valid) = self.spec.valid else {
            return Ok(None);
        };
        self.clf.encoder.model.train = false;
        let m = self.clf.evaluate(valid, 32);
        self.clf.encoder.model.train = self.spec.mode != Mode::Head;
        let m = m?;
        let score = m.macro_f1;
        self.last_metrics = Some(m);
        Ok(Some(score))
    }

    fn on_best(&mut self, epoch: usize, _score: Option<f64>) -> Result<()> {
        self.info.metrics = self.last_metrics.clone();
        self.info.epoch = Some(epoch);
        if let Some(snap) = &mut self.snapshot {
            // Linear probing: the head's best values are kept in memory, not written.
            *snap = self
                .clf
                .trained_vars(Mode::Head)
                .iter()
                .map(|(_, v)| v.as_tensor().copy())
                .collect::<candle_core::Result<_>>()?;
            return Ok(());
        }
        self.clf.save(self.spec.base, self.spec.out, &self.info)
    }
}

/// Whether two encoder folders tokenize alike: equal tokenizer.json contents (as JSON, so
/// formatting does not matter).
pub fn same_tokenizer(a: &Path, b: &Path) -> bool {
    let read = |d: &Path| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(d.join("tokenizer.json")).ok()?).ok()
    };
    matches!((read(a), read(b)), (Some(x), Some(y)) if x == y)
}

/// Loads the teacher for hidden-state matching and checks it can be compared token by token.
fn hidden_target(h: &HiddenMatch, student: &Classifier, spec: &TrainSpec) -> Result<HiddenTarget> {
    if spec.mode != Mode::Full {
        return Err(Error::Invalid(
            "hidden-state matching trains the encoder: use full mode".into(),
        ));
    }
    if !(h.weight.is_finite() && h.weight > 0.0) {
        return Err(Error::Invalid(format!(
            "--hidden-weight {}: give a positive weight (0 turns hidden-state matching off)",
            h.weight
        )));
    }
    let same_tokens = same_tokenizer(&h.teacher, spec.base);
    if !same_tokens {
        return Err(Error::Invalid(format!(
            "hidden-state matching compares teacher and student token by token, so both need the same tokenizer; {} and the student's base tokenize differently (distil the output probabilities only, which works across tokenizers)",
            h.teacher.display()
        )));
    }
    let mut teacher = Encoder::load(&h.teacher)?;
    teacher.set_max_len(student.encoder.max_len())?;
    if teacher.dim() != student.encoder.dim() {
        return Err(Error::Invalid(format!(
            "hidden-state matching needs the same hidden size; the teacher's is {}, the student's {}",
            teacher.dim(),
            student.encoder.dim()
        )));
    }
    let n = teacher.model.config.num_hidden_layers;
    if h.layers.len() != student.encoder.model.config.num_hidden_layers
        || h.layers.iter().any(|&l| l >= n)
    {
        return Err(Error::Invalid(format!(
            "hidden-state matching: {} layer pairs for a {}-layer student and a {n}-layer teacher",
            h.layers.len(),
            student.encoder.model.config.num_hidden_layers
        )));
    }
    Ok(HiddenTarget {
        teacher,
        layers: h.layers.clone(),
        weight: h.weight,
    })
}

fn to_candle(e: frugal_models::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Trains a classifier and keeps the best checkpoint (by validation macro-F1) in `spec.out`.
pub fn train(
    spec: &TrainSpec,
    progress: &mut dyn FnMut(Progress),
) -> Result<(FitReport, CheckpointInfo)> {
    let labels = match &spec.labels {
        Some(l) => l.clone(),
        None => labels_of(spec.train),
    };
    let known: std::collections::BTreeSet<&str> = labels.iter().map(String::as_str).collect();
    let unlabelled = spec.train.iter().filter(|e| e.label.is_empty()).count();
    if unlabelled > 0 && spec.soft.is_none() {
        return Err(Error::Invalid(format!(
            "{unlabelled} training examples have an empty label; give every example a label"
        )));
    }
    if let Some(e) = spec
        .train
        .iter()
        .find(|e| !e.label.is_empty() && !known.contains(e.label.as_str()))
    {
        return Err(Error::Invalid(format!(
            "training label '{}' is not among the labels ({})",
            e.label,
            labels.join(", ")
        )));
    }
    if let Some(soft) = &spec.soft {
        if soft.probs.len() != spec.train.len()
            || soft.probs.iter().any(|p| p.len() != labels.len())
        {
            return Err(Error::Invalid(
                "teacher outputs must give one probability per label for every training example"
                    .into(),
            ));
        }
        if !(soft.temperature.is_finite() && soft.temperature > 0.0) {
            return Err(Error::Invalid("--temperature must be above 0".into()));
        }
        if !(0.0..=1.0).contains(&soft.alpha) {
            return Err(Error::Invalid("--alpha must be between 0 and 1".into()));
        }
    }
    let mut clf = Classifier::new(spec.base, labels.clone(), spec.config.seed)?;
    if spec.mode == Mode::Lora {
        clf.add_lora(spec.config.seed)?;
    }
    if let Some(m) = spec.max_len {
        clf.encoder.set_max_len(m)?;
    }
    let hidden = match &spec.hidden {
        None => None,
        Some(h) => Some(hidden_target(h, &clf, spec)?),
    };
    if let Some(valid) = spec.valid {
        if let Some(e) = valid.iter().find(|e| !known.contains(e.label.as_str())) {
            return Err(Error::Invalid(format!(
                "validation label '{}' does not occur in the training data (labels: {})",
                e.label,
                labels.join(", ")
            )));
        }
    }
    let index: BTreeMap<&str, u32> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i as u32))
        .collect();
    let targets: Vec<u32> = spec
        .train
        .iter()
        .map(|e| index.get(e.label.as_str()).copied().unwrap_or(UNLABELLED))
        .collect();
    let soft = match &spec.soft {
        None => None,
        Some(s) => {
            let t = s.temperature;
            let mut probs = Vec::with_capacity(spec.train.len() * labels.len());
            let mut plogp = vec![];
            for p in &s.probs {
                // The teacher's distribution at temperature T: p^(1/T), renormalised.
                let q: Vec<f64> = p
                    .iter()
                    .map(|&x| (x.max(0.0) as f64).powf(1.0 / t))
                    .collect();
                let sum: f64 = q.iter().sum::<f64>().max(1e-30);
                let q: Vec<f64> = q.iter().map(|x| x / sum).collect();
                plogp.push(
                    q.iter()
                        .filter(|&&x| x > 0.0)
                        .map(|x| x * x.ln())
                        .sum::<f64>() as f32,
                );
                probs.extend(q.iter().map(|&x| x as f32));
            }
            let labelled = |i: usize| targets[i] != UNLABELLED;
            Some(SoftTensors {
                probs: Tensor::from_vec(probs, (spec.train.len(), labels.len()), &Device::Cpu)?,
                plogp: Tensor::new(plogp, &Device::Cpu)?,
                w_kd: (0..targets.len())
                    .map(|i| if labelled(i) { s.alpha as f32 } else { 1.0 })
                    .collect(),
                w_ce: (0..targets.len())
                    .map(|i| {
                        if labelled(i) {
                            1.0 - s.alpha as f32
                        } else {
                            0.0
                        }
                    })
                    .collect(),
                temperature: t,
            })
        }
    };
    let texts: Vec<&str> = spec.train.iter().map(|e| e.text.as_str()).collect();
    // A resumed run restores every trained weight (the head too) and its best score from its
    // saved state, so the probe does not run again.
    let resuming = spec.resume && state_dir(spec.out).is_dir();
    let probe = spec
        .probe
        .as_ref()
        .filter(|_| spec.mode != Mode::Head && soft.is_none() && hidden.is_none() && !resuming);
    let probe_data = match probe {
        Some(_) => Some(Prepared::new(
            &clf.encoder,
            &texts,
            Mode::Head,
            targets.clone(),
        )?),
        None => None,
    };
    let data = Prepared::new(&clf.encoder, &texts, spec.mode, targets)?;
    let info = CheckpointInfo {
        labels,
        base: spec.base_name.clone(),
        base_weights_sha256: frugal_models::assets::sha256_file(
            &spec.base.join("model.safetensors"),
        )?,
        mode: spec.mode,
        max_len: clf.encoder.max_len(),
        config: spec.config.clone(),
        metrics: None,
        data_fingerprint: fingerprint(spec.train),
        epoch: None,
        teacher: spec.soft.as_ref().map(|s| s.teacher.clone()),
    };
    // Linear probing: the head alone on cached embeddings. Its best epoch's head is restored
    // and saved once as the checkpoint; its validation score is the one fine-tuning must beat.
    let (clf, probe_score, info) = match (probe, probe_data) {
        (Some(cfg), Some(pdata)) => {
            let probe_spec = TrainSpec {
                mode: Mode::Head,
                config: cfg.clone(),
                ..spec.clone()
            };
            let vars = clf.trained_vars(Mode::Head);
            let mut task = ClassifyTask {
                clf,
                spec: &probe_spec,
                data: pdata,
                info,
                last_metrics: None,
                soft: None,
                hidden: None,
                snapshot: Some(vec![]),
            };
            let control = Control {
                checkpointing: None,
                interrupt: spec.interrupt,
                best: None,
            };
            let r = fit(&mut task, vars.clone(), cfg, &control, &mut |_| {})?;
            let snap = task.snapshot.take().unwrap_or_default();
            for ((_, v), t) in vars.iter().zip(&snap) {
                v.set(t)?;
            }
            let mut info = task.info;
            info.epoch = None;
            task.clf.save(spec.base, spec.out, &info)?;
            (task.clf, r.best_score, info)
        }
        _ => (clf, None, info),
    };
    let mut clf = clf;
    let vars = clf.trained_vars(spec.mode);
    clf.encoder.model.train = spec.mode != Mode::Head;
    let mut task = ClassifyTask {
        clf,
        spec,
        data,
        info,
        last_metrics: None,
        soft,
        hidden,
        snapshot: None,
    };
    let control = Control {
        checkpointing: Some(Checkpointing {
            dir: state_dir(spec.out),
            every: spec.save_every,
            resume: spec.resume,
            fingerprint: format!(
                "{} {} {:?} {} {:?}",
                task.info.data_fingerprint,
                task.info.base_weights_sha256,
                task.info.mode,
                task.info.max_len,
                (
                    spec.soft
                        .as_ref()
                        .map(|s| (&s.teacher, s.temperature, s.alpha)),
                    spec.hidden.as_ref().map(|h| (&h.layers, h.weight))
                )
            ),
        }),
        interrupt: spec.interrupt,
        best: probe_score,
    };
    let mut report = fit(&mut task, vars, &spec.config, &control, progress)?;
    report.probe_score = probe_score;
    Ok((report, task.info))
}
