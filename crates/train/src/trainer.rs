//! The one training loop. Fine-tuning, transfer learning, distillation, few-shot and federated
//! local steps differ by the `Task` (loss and data) and by which variables are trained, not by
//! copies of this loop: AdamW with weight decay, linear warm-up then linear decay, gradient
//! accumulation, global-norm clipping, validation after each epoch, early stopping, and a
//! callback whenever the validation score improves (to keep the best checkpoint).

use crate::optim::AdamW;
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Optimisation settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub lr: f64,
    /// Examples per optimiser step (split into `batch / accum`-sized micro-batches).
    pub batch: usize,
    /// Micro-batches per step (gradient accumulation).
    pub accum: usize,
    pub weight_decay: f64,
    /// Fraction of all steps spent warming the learning rate up from 0.
    pub warmup: f64,
    /// Largest global gradient norm (0: no clipping).
    pub clip: f64,
    pub seed: u64,
    /// Stop after this many epochs without a better validation score (0: never).
    pub patience: usize,
    /// The update rule.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Decay the learning rate linearly to 0 after warm-up (false: constant, as PyTorch's
    /// default optimiser loop).
    #[serde(default = "yes")]
    pub decay: bool,
}

fn yes() -> bool {
    true
}

/// The update rule of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// AdamW (decoupled weight decay): the default for fine-tuning.
    #[default]
    AdamW,
    /// Plain SGD with the same decay and clipping: federated local steps, where averaging
    /// Adam's per-node normalised steps biases FedAvg on skewed nodes.
    Sgd,
}

impl std::str::FromStr for Optimizer {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "adamw" | "adam" => Ok(Optimizer::AdamW),
            "sgd" => Ok(Optimizer::Sgd),
            _ => Err(format!("'{s}': the optimisers are adamw and sgd")),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 3,
            lr: 5e-5,
            batch: 16,
            accum: 1,
            weight_decay: 0.01,
            warmup: 0.1,
            clip: 1.0,
            seed: 0,
            patience: 2,
            optimizer: Optimizer::AdamW,
            decay: true,
        }
    }
}

/// What a training run optimises: a loss over examples, and a validation score.
pub trait Task {
    /// Training examples.
    fn len(&self) -> usize;
    /// True without training examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Mean loss of the examples `batch` (indices), with the graph for backward.
    fn loss(&mut self, batch: &[usize]) -> candle_core::Result<Tensor>;
    /// Validation score, higher is better (macro-F1 for classifiers); `None` without
    /// validation data.
    fn validate(&mut self) -> Result<Option<f64>>;
    /// Called when the validation score improved (or after each epoch without validation).
    fn on_best(&mut self, epoch: usize, score: Option<f64>) -> Result<()>;
    /// Whether the examples are already in the order to train on (a benchmark replaying another
    /// tool's batches): then `fit` does not shuffle them.
    fn keep_order(&self) -> bool {
        false
    }
}

/// Progress of a run, for bars and logs.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub epoch: usize,
    pub step: usize,
    pub steps: usize,
    pub examples: usize,
    pub loss: f64,
    pub examples_per_s: f64,
}

/// What happened in a run.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub epochs_run: usize,
    pub steps: usize,
    pub best_epoch: Option<usize>,
    pub best_score: Option<f64>,
    pub final_loss: f64,
    pub seconds: f64,
    pub examples_per_s: f64,
    /// Validation score after each epoch.
    pub history: Vec<Option<f64>>,
    /// The linear probe's validation score, when the run began with one (`best_epoch` is then
    /// `None` if no later epoch beat it: the probe's head on the pretrained encoder is kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_score: Option<f64>,
}

/// A seed for a batch's random draws (dropout masks) that follows from `start` and the batch's
/// example indices, not from how many batches ran before, so a resumed run draws the same.
pub fn batch_seed(start: u64, batch: &[usize]) -> u64 {
    batch.iter().fold(start, |h, &i| {
        (h ^ i as u64)
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(17)
    })
}

/// The learning rate at `step` of `total`: linear warm-up, then linear decay to 0 (or constant
/// without `decay`).
pub fn lr_at(cfg: &TrainConfig, step: usize, total: usize) -> f64 {
    let warm = ((total as f64) * cfg.warmup).round() as usize;
    if step < warm {
        cfg.lr * (step + 1) as f64 / warm as f64
    } else if !cfg.decay {
        cfg.lr
    } else {
        let rest = (total - warm).max(1) as f64;
        cfg.lr * (1.0 - (step - warm) as f64 / rest).max(0.0)
    }
}

fn check(cfg: &TrainConfig, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::Invalid("no training examples".into()));
    }
    if cfg.epochs == 0 || cfg.batch == 0 || cfg.accum == 0 || !cfg.batch.is_multiple_of(cfg.accum) {
        return Err(Error::Invalid(
            "epochs and batch must be at least 1, and batch a multiple of accum".into(),
        ));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(Error::Invalid(
            "the learning rate must be a positive number".into(),
        ));
    }
    Ok(())
}

/// Where a run keeps the state it can resume from, and how often it saves it.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    /// The state folder (current weights, optimiser moments, `trainer_state.json`).
    pub dir: PathBuf,
    /// Optimiser steps between saves (0: only at the end of each epoch).
    pub every: usize,
    /// Continue from the state in `dir` instead of starting afresh.
    pub resume: bool,
    /// Fingerprint of the training data and model: a resumed run must see the same ones.
    pub fingerprint: String,
}

/// How a run can be stopped and resumed; `Control::default()` for neither.
#[derive(Default)]
pub struct Control<'a> {
    pub checkpointing: Option<Checkpointing>,
    /// Set (for example by a Ctrl-C handler) to stop after the current step, saving the state.
    pub interrupt: Option<&'a AtomicBool>,
    /// A validation score an earlier phase already reached and kept (linear probing before
    /// fine-tuning): an epoch is kept only when it beats it.
    pub best: Option<f64>,
}

/// `trainer_state.json`: where an interrupted run stood.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    config: TrainConfig,
    fingerprint: String,
    /// The epoch in progress and the batches of it already done.
    epoch: usize,
    batch: usize,
    step: usize,
    best: Option<f64>,
    best_epoch: Option<usize>,
    since_best: usize,
    history: Vec<Option<f64>>,
    last_loss: f64,
    adam_steps: u64,
    vars: Vec<String>,
}

const STATE_FILE: &str = "trainer_state.json";

fn save_state(dir: &Path, state: &State, opt: &AdamW, names: &[String]) -> Result<()> {
    crate::replace_dir(dir, |tmp| {
        let params: HashMap<String, Tensor> = names
            .iter()
            .zip(opt.vars())
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&params, tmp.join("params.safetensors"))?;
        candle_core::safetensors::save(&opt.state()?, tmp.join("optimizer.safetensors"))?;
        let json = serde_json::to_vec_pretty(state).expect("trainer state serialises");
        std::fs::write(tmp.join(STATE_FILE), json)
            .map_err(|e| Error::data(tmp, format!("cannot write: {e}")))
    })
}

/// Reads the state in `ck.dir` and puts its weights and moments into `opt`, after checking it
/// belongs to this run (same settings, data and variables).
fn load_state(
    ck: &Checkpointing,
    cfg: &TrainConfig,
    opt: &mut AdamW,
    names: &[String],
) -> Result<State> {
    let path = ck.dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(|_| {
        Error::data(
            &ck.dir,
            "no saved training state to resume (the run finished, or stopped before saving one): train without --resume",
        )
    })?;
    let state: State = serde_json::from_slice(&bytes)
        .map_err(|e| Error::data(&path, format!("unreadable: {e}; train without --resume")))?;
    let (now, then) = (
        serde_json::to_value(cfg).expect("config serialises"),
        serde_json::to_value(&state.config).expect("config serialises"),
    );
    let changed: Vec<String> = now
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| then.get(k.as_str()) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k} is {v}, was {}",
                then.get(k.as_str()).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect();
    if !changed.is_empty() {
        return Err(Error::Invalid(format!(
            "cannot resume with other settings than the interrupted run's ({}): use the same ones, or train without --resume",
            changed.join("; ")
        )));
    }
    if state.fingerprint != ck.fingerprint {
        return Err(Error::Invalid(
            "cannot resume: the training data, base model, mode or --max-len differ from the interrupted run's; use the same ones, or train without --resume".into(),
        ));
    }
    if state.vars != names {
        return Err(Error::data(
            &ck.dir,
            "the saved state is of another model (its weights differ): train without --resume",
        ));
    }
    let params = candle_core::safetensors::load(ck.dir.join("params.safetensors"), &Device::Cpu)
        .map_err(|e| {
            Error::data(
                &ck.dir,
                format!(
                    "params.safetensors unreadable: {}; train without --resume",
                    frugal_models::error::first_line(&e)
                ),
            )
        })?;
    for (n, v) in names.iter().zip(opt.vars()) {
        match params.get(n) {
            Some(t) if t.shape() == v.shape() => v.set(t)?,
            _ => {
                return Err(Error::data(
                    &ck.dir,
                    format!(
                    "params.safetensors lacks '{n}' or has another shape: train without --resume"
                ),
                ))
            }
        }
    }
    let moments =
        candle_core::safetensors::load(ck.dir.join("optimizer.safetensors"), &Device::Cpu)
            .map_err(|e| {
                Error::data(
                    &ck.dir,
                    format!(
                        "optimizer.safetensors unreadable: {}; train without --resume",
                        frugal_models::error::first_line(&e)
                    ),
                )
            })?;
    opt.load_state(&moments, state.adam_steps)?;
    Ok(state)
}

/// Trains the named `vars` on `task`. With `control.checkpointing`, the state is saved every
/// `every` steps and at each epoch's end, and removed when the run completes; with
/// `control.interrupt` set, the run saves and returns `Error::Interrupted`.
pub fn fit(
    task: &mut dyn Task,
    vars: Vec<(String, Var)>,
    cfg: &TrainConfig,
    control: &Control,
    progress: &mut dyn FnMut(Progress),
) -> Result<FitReport> {
    let n = task.len();
    check(cfg, n)?;
    let names: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
    let mut opt = AdamW::new(vars, cfg.weight_decay);
    opt.sgd = cfg.optimizer == Optimizer::Sgd;
    let micro = cfg.batch / cfg.accum;
    let steps_per_epoch = n.div_ceil(cfg.batch);
    let total = steps_per_epoch * cfg.epochs;
    let ck = control.checkpointing.as_ref();
    let mut st = State {
        config: cfg.clone(),
        fingerprint: ck.map(|c| c.fingerprint.clone()).unwrap_or_default(),
        epoch: 0,
        batch: 0,
        step: 0,
        best: control.best,
        best_epoch: None,
        since_best: 0,
        history: vec![],
        last_loss: f64::NAN,
        adam_steps: 0,
        vars: names.clone(),
    };
    if let Some(ck) = ck.filter(|c| c.resume) {
        st = load_state(ck, cfg, &mut opt, &names)?;
    }
    let save = |st: &State, opt: &AdamW| -> Result<()> {
        match ck {
            Some(ck) => save_state(&ck.dir, st, opt, &names),
            None => Ok(()),
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let start = std::time::Instant::now();
    let mut seen = 0usize;
    let first_epoch = st.epoch;
    let mut done = false;
    for epoch in 0..cfg.epochs {
        // Every epoch's order is drawn, also those a resumed run skips, so the orders match.
        let mut order: Vec<usize> = (0..n).collect();
        if !task.keep_order() {
            order.shuffle(&mut rng);
        }
        if epoch < first_epoch || done {
            continue;
        }
        for (b, batch) in order.chunks(cfg.batch).enumerate() {
            if epoch == first_epoch && b < st.batch {
                continue;
            }
            // Gradients of the variables only, summed over the micro-batches.
            let mut sums: Vec<Option<Tensor>> = vec![None; names.len()];
            let mut loss_sum = 0.0;
            for mb in batch.chunks(micro) {
                let weight = mb.len() as f64 / batch.len() as f64;
                let loss = task.loss(mb).map_err(Error::from)?;
                loss_sum += loss.to_scalar::<f32>().map_err(Error::from)? as f64 * weight;
                let grads = (loss * weight)
                    .and_then(|l| l.backward())
                    .map_err(Error::from)?;
                for (sum, v) in sums.iter_mut().zip(opt.vars()) {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        *sum = Some(match sum.take() {
                            Some(s) => (s + g).map_err(Error::from)?,
                            None => g.clone(),
                        });
                    }
                }
            }
            let mut norm_sq = 0.0f64;
            for g in sums.iter().flatten() {
                norm_sq += g
                    .sqr()
                    .and_then(|x| x.sum_all())
                    .and_then(|x| x.to_scalar::<f32>())
                    .map_err(Error::from)? as f64;
            }
            let norm = norm_sq.sqrt();
            let scale = if cfg.clip > 0.0 && norm > cfg.clip {
                cfg.clip / norm
            } else {
                1.0
            };
            opt.step(&sums, lr_at(cfg, st.step, total), scale)?;
            st.step += 1;
            st.batch = b + 1;
            st.adam_steps = opt.t;
            seen += batch.len();
            st.last_loss = loss_sum;
            let secs = start.elapsed().as_secs_f64();
            progress(Progress {
                epoch,
                step: st.step,
                steps: total,
                examples: seen,
                loss: loss_sum,
                examples_per_s: seen as f64 / secs.max(1e-9),
            });
            let stop = control.interrupt.is_some_and(|f| f.load(Ordering::Relaxed));
            let last = st.batch == steps_per_epoch;
            if !last && (stop || ck.is_some_and(|c| c.every > 0 && st.step.is_multiple_of(c.every)))
            {
                save(&st, &opt)?;
            }
            if stop && !last {
                return Err(Error::Interrupted(ck.map(|c| c.dir.clone())));
            }
        }
        let score = task.validate()?;
        st.history.push(score);
        match (score, st.best) {
            (Some(s), Some(b)) if s <= b => st.since_best += 1,
            _ => {
                st.best = score.or(st.best);
                st.best_epoch = Some(epoch);
                st.since_best = 0;
                task.on_best(epoch, score)?;
            }
        }
        st.epoch = epoch + 1;
        st.batch = 0;
        done = cfg.patience > 0 && st.since_best >= cfg.patience;
        if !done && st.epoch < cfg.epochs {
            save(&st, &opt)?;
            if control.interrupt.is_some_and(|f| f.load(Ordering::Relaxed)) {
                return Err(Error::Interrupted(ck.map(|c| c.dir.clone())));
            }
        }
    }
    if let Some(ck) = ck {
        let _ = std::fs::remove_dir_all(&ck.dir);
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(FitReport {
        epochs_run: st.history.len(),
        steps: st.step,
        best_epoch: st.best_epoch,
        best_score: st.best,
        final_loss: st.last_loss,
        seconds,
        examples_per_s: seen as f64 / seconds.max(1e-9),
        history: st.history,
        probe_score: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Fits y = 3x - 1 by least squares: the loop must drive the loss down.
    struct Line {
        w: Var,
        b: Var,
        xs: Vec<f32>,
        saved: usize,
    }

    impl Task for Line {
        fn len(&self) -> usize {
            self.xs.len()
        }
        fn loss(&mut self, batch: &[usize]) -> candle_core::Result<Tensor> {
            let x: Vec<f32> = batch.iter().map(|&i| self.xs[i]).collect();
            let y: Vec<f32> = x.iter().map(|v| 3.0 * v - 1.0).collect();
            let x = Tensor::new(x.as_slice(), &Device::Cpu)?;
            let y = Tensor::new(y.as_slice(), &Device::Cpu)?;
            let pred = x
                .broadcast_mul(self.w.as_tensor())?
                .broadcast_add(self.b.as_tensor())?;
            (pred - y)?.sqr()?.mean_all()
        }
        fn validate(&mut self) -> Result<Option<f64>> {
            let l = self
                .loss(&(0..self.xs.len()).collect::<Vec<_>>())
                .map_err(Error::from)?;
            Ok(Some(-(l.to_scalar::<f32>().map_err(Error::from)? as f64)))
        }
        fn on_best(&mut self, _: usize, _: Option<f64>) -> Result<()> {
            self.saved += 1;
            Ok(())
        }
    }

    #[test]
    fn the_loop_learns_and_keeps_the_best() {
        let w = Var::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let b = Var::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let xs: Vec<f32> = (0..64).map(|i| i as f32 / 32.0 - 1.0).collect();
        let mut task = Line {
            w: w.clone(),
            b: b.clone(),
            xs,
            saved: 0,
        };
        let cfg = TrainConfig {
            epochs: 60,
            lr: 0.1,
            batch: 8,
            accum: 2,
            weight_decay: 0.0,
            warmup: 0.05,
            clip: 10.0,
            seed: 1,
            patience: 0,
            optimizer: Optimizer::AdamW,
            decay: true,
        };
        let vars = vec![("w".into(), w.clone()), ("b".into(), b.clone())];
        let report = fit(&mut task, vars, &cfg, &Control::default(), &mut |_| {}).unwrap();
        let (wv, bv) = (
            w.to_vec1::<f32>().unwrap()[0],
            b.to_vec1::<f32>().unwrap()[0],
        );
        assert!(
            (wv - 3.0).abs() < 0.1 && (bv + 1.0).abs() < 0.1,
            "w {wv} b {bv}"
        );
        assert!(report.best_score.unwrap() > -0.01 && task.saved >= 1);
        assert_eq!(report.steps, 60 * 8);
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let cfg = TrainConfig {
            lr: 1.0,
            warmup: 0.1,
            ..Default::default()
        };
        assert!((lr_at(&cfg, 0, 100) - 0.1).abs() < 1e-12);
        assert!((lr_at(&cfg, 9, 100) - 1.0).abs() < 1e-12);
        assert!((lr_at(&cfg, 10, 100) - 1.0).abs() < 1e-12);
        assert!(lr_at(&cfg, 99, 100) < 0.02);
    }

    #[test]
    fn bad_settings_are_refused() {
        let w = Var::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let mut task = Line {
            w: w.clone(),
            b: w.clone(),
            xs: vec![],
            saved: 0,
        };
        let none = Control::default();
        let cfg = TrainConfig::default();
        assert!(fit(
            &mut task,
            vec![("w".into(), w.clone())],
            &cfg,
            &none,
            &mut |_| {}
        )
        .is_err());
        task.xs = vec![1.0];
        let cfg = TrainConfig {
            batch: 3,
            accum: 2,
            ..Default::default()
        };
        assert!(fit(&mut task, vec![("w".into(), w)], &cfg, &none, &mut |_| {}).is_err());
    }

    fn line_task() -> (Line, Vec<(String, Var)>) {
        let w = Var::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let b = Var::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let task = Line {
            w: w.clone(),
            b: b.clone(),
            xs: (0..40).map(|i| i as f32 / 20.0 - 1.0).collect(),
            saved: 0,
        };
        (task, vec![("w".into(), w), ("b".into(), b)])
    }

    /// Interrupted mid-epoch and at an epoch's end, then resumed: the same weights, bit for bit,
    /// as one uninterrupted run; the state is gone once the run completes.
    #[test]
    fn an_interrupted_run_resumes_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            epochs: 4,
            lr: 0.05,
            batch: 8,
            weight_decay: 0.01,
            patience: 0,
            seed: 3,
            ..Default::default()
        };
        let ck = |resume| Checkpointing {
            dir: tmp.path().join("state"),
            every: 3,
            resume,
            fingerprint: "data".into(),
        };
        let (mut task, vars) = line_task();
        let whole = fit(
            &mut task,
            vars.clone(),
            &cfg,
            &Control::default(),
            &mut |_| {},
        )
        .unwrap();
        let expect: Vec<f32> = vars
            .iter()
            .map(|(_, v)| v.to_vec1::<f32>().unwrap()[0])
            .collect();

        let flag = AtomicBool::new(false);
        let (mut task, vars) = line_task();
        // 5 steps per epoch: stop after step 7 (mid-epoch 2), then after step 10 (an epoch's end).
        for (stop_at, resume) in [(7, false), (10, true)] {
            flag.store(false, Ordering::Relaxed);
            let control = Control {
                checkpointing: Some(ck(resume)),
                interrupt: Some(&flag),
                best: None,
            };
            let err = fit(&mut task, vars.clone(), &cfg, &control, &mut |p| {
                if p.step == stop_at {
                    flag.store(true, Ordering::Relaxed)
                }
            })
            .unwrap_err();
            assert!(matches!(err, Error::Interrupted(Some(_))), "{err}");
            assert!(tmp.path().join("state").join(STATE_FILE).is_file());
        }
        // Scramble the weights in memory: resuming must restore them from the state.
        vars[0]
            .1
            .set(&Tensor::new(&[9f32], &Device::Cpu).unwrap())
            .unwrap();
        flag.store(false, Ordering::Relaxed);
        let control = Control {
            checkpointing: Some(ck(true)),
            interrupt: Some(&flag),
            best: None,
        };
        let rest = fit(&mut task, vars.clone(), &cfg, &control, &mut |_| {}).unwrap();
        let got: Vec<f32> = vars
            .iter()
            .map(|(_, v)| v.to_vec1::<f32>().unwrap()[0])
            .collect();
        assert_eq!(got, expect);
        assert_eq!(rest.steps, whole.steps);
        assert_eq!(rest.history, whole.history);
        assert!(!tmp.path().join("state").exists());

        // Nothing left to resume; other settings or data are refused.
        let (mut task, vars) = line_task();
        let control = Control {
            checkpointing: Some(ck(true)),
            interrupt: None,
            best: None,
        };
        let e = fit(&mut task, vars.clone(), &cfg, &control, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("no saved training state"), "{e}");
        flag.store(true, Ordering::Relaxed);
        let control = Control {
            checkpointing: Some(ck(false)),
            interrupt: Some(&flag),
            best: None,
        };
        assert!(fit(&mut task, vars.clone(), &cfg, &control, &mut |_| {}).is_err());
        let other = TrainConfig {
            lr: 0.1,
            ..cfg.clone()
        };
        let control = Control {
            checkpointing: Some(ck(true)),
            interrupt: None,
            best: None,
        };
        let e = fit(&mut task, vars.clone(), &other, &control, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("lr is 0.1, was 0.05"), "{e}");
        let mut c = ck(true);
        c.fingerprint = "other".into();
        let control = Control {
            checkpointing: Some(c),
            interrupt: None,
            best: None,
        };
        let e = fit(&mut task, vars, &cfg, &control, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("training data, base model"), "{e}");
    }
}
