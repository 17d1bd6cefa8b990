//! The one training loop. Fine-tuning, transfer learning, distillation, few-shot and federated
//! local steps differ by the `Task` (loss and data) and by which variables are trained, not by
//! copies of this loop: AdamW with weight decay, linear warm-up then linear decay, gradient
//! accumulation, global-norm clipping, validation after each epoch, early stopping, and a
//! callback whenever the validation score improves (to keep the best checkpoint).

use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

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
}

/// The learning rate at `step` of `total`: linear warm-up, then linear decay to 0.
pub fn lr_at(cfg: &TrainConfig, step: usize, total: usize) -> f64 {
    let warm = ((total as f64) * cfg.warmup).round() as usize;
    if step < warm {
        cfg.lr * (step + 1) as f64 / warm as f64
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

/// Trains `vars` on `task`.
pub fn fit(
    task: &mut dyn Task,
    vars: Vec<Var>,
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<FitReport> {
    let n = task.len();
    check(cfg, n)?;
    let micro = cfg.batch / cfg.accum;
    let steps_per_epoch = n.div_ceil(cfg.batch);
    let total = steps_per_epoch * cfg.epochs;
    let params = ParamsAdamW {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars.clone(), params).map_err(Error::from)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let start = std::time::Instant::now();
    let (mut step, mut seen) = (0usize, 0usize);
    let (mut best, mut best_epoch, mut since_best) = (None::<f64>, None, 0usize);
    let mut history = vec![];
    let mut last_loss = f64::NAN;
    let mut epochs_run = 0;
    for epoch in 0..cfg.epochs {
        epochs_run += 1;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        for batch in order.chunks(cfg.batch) {
            // Gradients of the variables only, summed over the micro-batches.
            let mut sums: Vec<Option<Tensor>> = vec![None; vars.len()];
            let mut loss_sum = 0.0;
            for mb in batch.chunks(micro) {
                let weight = mb.len() as f64 / batch.len() as f64;
                let loss = task.loss(mb).map_err(Error::from)?;
                loss_sum += loss.to_scalar::<f32>().map_err(Error::from)? as f64 * weight;
                let grads = (loss * weight)
                    .and_then(|l| l.backward())
                    .map_err(Error::from)?;
                for (sum, v) in sums.iter_mut().zip(&vars) {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        *sum = Some(match sum.take() {
                            Some(s) => (s + g).map_err(Error::from)?,
                            None => g.clone(),
                        });
                    }
                }
            }
            let mut store = GradStore::default();
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
            for (v, g) in vars.iter().zip(sums) {
                if let Some(g) = g {
                    let g = if scale < 1.0 {
                        (g * scale).map_err(Error::from)?
                    } else {
                        g
                    };
                    store.insert(v.as_tensor(), g);
                }
            }
            opt.set_learning_rate(lr_at(cfg, step, total));
            opt.step(&store).map_err(Error::from)?;
            step += 1;
            seen += batch.len();
            last_loss = loss_sum;
            let secs = start.elapsed().as_secs_f64();
            progress(Progress {
                epoch,
                step,
                steps: total,
                examples: seen,
                loss: loss_sum,
                examples_per_s: seen as f64 / secs.max(1e-9),
            });
        }
        let score = task.validate()?;
        history.push(score);
        match (score, best) {
            (Some(s), Some(b)) if s <= b => since_best += 1,
            _ => {
                best = score.or(best);
                best_epoch = Some(epoch);
                since_best = 0;
                task.on_best(epoch, score)?;
            }
        }
        if cfg.patience > 0 && since_best >= cfg.patience {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(FitReport {
        epochs_run,
        steps: step,
        best_epoch,
        best_score: best,
        final_loss: last_loss,
        seconds,
        examples_per_s: seen as f64 / seconds.max(1e-9),
        history,
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
        };
        let report = fit(&mut task, vec![w.clone(), b.clone()], &cfg, &mut |_| {}).unwrap();
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
        assert!(fit(
            &mut task,
            vec![w.clone()],
            &TrainConfig::default(),
            &mut |_| {}
        )
        .is_err());
        task.xs = vec![1.0];
        let cfg = TrainConfig {
            batch: 3,
            accum: 2,
            ..Default::default()
        };
        assert!(fit(&mut task, vec![w], &cfg, &mut |_| {}).is_err());
    }
}
