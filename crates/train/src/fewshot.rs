//! Zero-shot and few-shot classification.
//!
//! - Zero-shot with an encoder: cosine similarity between a text and each label's descriptions
//!   (averaged over a label's descriptions), softmax with a temperature.
//! - Few-shot, SetFit-style: K examples per class; the encoder fine-tuned contrastively on pairs
//!   (cosine similarity pulled to 1 for same-class pairs, 0 for others) by the one training loop;
//!   then a logistic-regression head on its embeddings (`classifier` head mode). The result is
//!   an ordinary checkpoint.
//! - In-context few-shot for chat models: each query's nearest labelled neighbours by embedding,
//!   shown as earlier turns (see `labeller`).

use crate::classifier::{train, CheckpointInfo, Mode, TrainSpec};
use crate::data::Example;
use crate::labeller::Demo;
use crate::trainer::{fit, Control, FitReport, Progress, Task, TrainConfig};
use crate::{Error, Result};
use candle_core::{Device, Tensor, D};
use frugal_models::encoder::Encoder;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;

/// Labels and their descriptions (several per label allowed), in label order.
#[derive(Debug, Clone)]
pub struct LabelDescriptions {
    pub labels: Vec<String>,
    pub descriptions: Vec<Vec<String>>,
}

impl LabelDescriptions {
    /// From NAME=DESCRIPTION pairs; a name given again adds a description. Needs 2 labels or
    /// more and no empty description.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<LabelDescriptions> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, desc) in pairs {
            if name.trim().is_empty() {
                return Err(Error::Invalid("--label: the label name is empty".into()));
            }
            if desc.trim().is_empty() {
                return Err(Error::Invalid(format!(
                    "--label {name}=…: the description is empty; describe the label in a few words"
                )));
            }
            map.entry(name.clone()).or_default().push(desc.clone());
        }
        if map.len() < 2 {
            return Err(Error::Invalid(format!(
                "give at least 2 labels with --label NAME=\"description\" (got {})",
                map.len()
            )));
        }
        let (labels, descriptions) = map.into_iter().unzip();
        Ok(LabelDescriptions {
            labels,
            descriptions,
        })
    }
}

/// `v` scaled to length 1 (cosine similarity becomes a dot product).
fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x / n).collect()
}

/// Zero-shot probabilities: softmax over labels of the mean cosine similarity between a text and
/// the label's descriptions, divided by `temperature`.
pub fn zero_shot(
    encoder: &Encoder,
    texts: &[&str],
    labels: &LabelDescriptions,
    temperature: f64,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Invalid("--temperature must be above 0".into()));
    }
    let desc: Vec<Vec<Vec<f32>>> = labels
        .descriptions
        .iter()
        .map(|d| {
            let refs: Vec<&str> = d.iter().map(String::as_str).collect();
            Ok(encoder
                .embed(&refs, 32, &mut |_| {})?
                .vectors
                .into_iter()
                .map(unit)
                .collect())
        })
        .collect::<Result<_>>()?;
    let emb = encoder.embed(texts, 32, progress)?;
    Ok(emb
        .vectors
        .into_iter()
        .map(|v| {
            let v = unit(v);
            let sims: Vec<f64> = desc
                .iter()
                .map(|ds| {
                    ds.iter()
                        .map(|d| d.iter().zip(&v).map(|(a, b)| a * b).sum::<f32>() as f64)
                        .sum::<f64>()
                        / ds.len() as f64
                })
                .collect();
            let max = sims.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sims
                .iter()
                .map(|s| ((s - max) / temperature).exp())
                .collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|x| (x / sum) as f32).collect()
        })
        .collect())
}

/// K examples of each label, drawn with `seed`. K above the smallest label's count is an error
/// naming that label and its count.
pub fn sample_shots(examples: &[Example], k: usize, seed: u64) -> Result<Vec<Example>> {
    Ok(shot_indices(examples, k, seed)?
        .into_iter()
        .map(|i| examples[i].clone())
        .collect())
}

/// The labels with fewer than `k` examples in `examples`, with their counts (name order): the
/// ones a K-shot draw takes whole.
pub fn short_labels(examples: &[Example], k: usize) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in examples {
        *counts.entry(e.label.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|&(_, n)| n < k)
        .map(|(l, n)| (l.to_string(), n))
        .collect()
}

/// The positions in `examples` of K examples of each label, drawn with `seed` (labels in name
/// order); the draw `sample_shots` returns. A label with fewer than K examples gives all it has
/// (`short_labels` names them, so callers can say so).
pub fn shot_indices(examples: &[Example], k: usize, seed: u64) -> Result<Vec<usize>> {
    if k == 0 {
        return Err(Error::Invalid("--shots must be at least 1".into()));
    }
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        by_label.entry(e.label.as_str()).or_default().push(i);
    }
    if by_label.len() < 2 {
        return Err(Error::Invalid(format!(
            "few-shot learning needs at least 2 labels; the data has {}",
            by_label.len()
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = vec![];
    for (_, mut v) in by_label {
        v.shuffle(&mut rng);
        out.extend(v.into_iter().take(k));
    }
    Ok(out)
}

/// How a head is trained on a few examples' embeddings (SetFit's head, the learning curve):
/// 100 epochs at lr 0.01, batches of 16, no decay or warm-up.
pub fn head_config(seed: u64) -> TrainConfig {
    TrainConfig {
        epochs: 100,
        lr: 1e-2,
        batch: 16,
        weight_decay: 0.0,
        warmup: 0.0,
        patience: 0,
        seed,
        ..Default::default()
    }
}

/// One point of a few-shot learning curve: `k` labelled examples per label, scored over
/// several random draws of them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct CurvePoint {
    pub k: usize,
    pub draws: usize,
    pub accuracy_mean: f64,
    pub accuracy_min: f64,
    pub accuracy_max: f64,
    pub macro_f1_mean: f64,
}

/// What a learning curve runs: k examples per label at each of `ks`, `draws` draws each.
pub struct CurveSpec<'a> {
    pub base: &'a Path,
    pub labels: Vec<String>,
    pub train: &'a [Example],
    pub test: &'a [Example],
    pub ks: &'a [usize],
    pub draws: usize,
    pub config: TrainConfig,
    pub max_len: usize,
}

/// The few-shot learning curve of transfer learning: for each `k` (those no label is too small
/// for), `draws` draws of k examples per label (seeds `config.seed`, `config.seed + 1`, …), a
/// fresh head (the same initial weights each time) trained with the shared loop on the frozen
/// encoder's embeddings, scored on `test`. Training and test texts are embedded once.
pub fn learning_curve(
    spec: &CurveSpec,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<CurvePoint>> {
    let CurveSpec {
        base,
        labels,
        train,
        test,
        ks,
        draws,
        config: cfg,
        max_len,
    } = spec;
    let (draws, max_len) = (*draws, *max_len);
    use crate::learner::Learner;
    let mut learner = Learner::new(base, labels.clone(), Mode::Head, max_len, cfg.seed)?;
    let init = learner.weights()?;
    let pool = learner.prepare(train)?;
    let test = learner.prepare(test)?;
    let mut points = vec![];
    let mut done = 0;
    for &k in ks.iter() {
        // A point is K per label: past the rarest label's count there is none.
        if !short_labels(train, k).is_empty() {
            continue;
        }
        let mut acc = vec![];
        let mut f1 = vec![];
        for d in 0..draws.max(1) {
            let idx = shot_indices(train, k, cfg.seed + d as u64)?;
            let shots = pool.select(&idx)?;
            learner.set_weights(&init)?;
            learner.fit(
                &shots,
                &TrainConfig {
                    seed: cfg.seed + d as u64,
                    ..cfg.clone()
                },
                None,
            )?;
            let m = learner.evaluate(&test)?;
            acc.push(m.accuracy);
            f1.push(m.macro_f1);
            done += 1;
            progress(done);
        }
        if acc.is_empty() {
            continue;
        }
        let n = acc.len() as f64;
        points.push(CurvePoint {
            k,
            draws: acc.len(),
            accuracy_mean: acc.iter().sum::<f64>() / n,
            accuracy_min: acc.iter().cloned().fold(f64::INFINITY, f64::min),
            accuracy_max: acc.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            macro_f1_mean: f1.iter().sum::<f64>() / n,
        });
    }
    Ok(points)
}

/// SetFit's pairs: for each of `rounds` rounds and each example, one partner of the same label
/// (target 1) and one of another label (target 0), drawn with `seed`.
pub fn contrastive_pairs(
    examples: &[Example],
    rounds: usize,
    seed: u64,
) -> Vec<(usize, usize, f32)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x7061_6972);
    let n = examples.len();
    let mut pairs = vec![];
    for _ in 0..rounds {
        for i in 0..n {
            let same: Vec<usize> = (0..n)
                .filter(|&j| j != i && examples[j].label == examples[i].label)
                .collect();
            let other: Vec<usize> = (0..n)
                .filter(|&j| examples[j].label != examples[i].label)
                .collect();
            if let Some(&j) = same.get(rng.random_range(0..same.len().max(1))) {
                pairs.push((i, j, 1.0));
            }
            if let Some(&j) = other.get(rng.random_range(0..other.len().max(1))) {
                pairs.push((i, j, 0.0));
            }
        }
    }
    pairs
}

/// The contrastive task for the loop: mean of (cos(u, v) − target)² over a batch of pairs.
struct PairTask<'a> {
    encoder: &'a Encoder,
    tokens: Vec<Vec<u32>>,
    pairs: Vec<(usize, usize, f32)>,
    seed: u64,
}

impl Task for PairTask<'_> {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn loss(&mut self, batch: &[usize]) -> candle_core::Result<Tensor> {
        self.encoder
            .model
            .reseed_dropout(crate::trainer::batch_seed(self.seed, batch));
        let side = |pick: &dyn Fn(&(usize, usize, f32)) -> usize| -> candle_core::Result<Tensor> {
            let ids: Vec<&[u32]> = batch
                .iter()
                .map(|&b| self.tokens[pick(&self.pairs[b])].as_slice())
                .collect();
            let (ids, mask) = self.encoder.batch_tensors(&ids).map_err(to_candle)?;
            self.encoder.pooled(&ids, &mask).map_err(to_candle)
        };
        let (u, v) = (side(&|p| p.0)?, side(&|p| p.1)?);
        let dot = (&u * &v)?.sum(D::Minus1)?;
        let norms = (u.sqr()?.sum(D::Minus1)?.sqrt()? * v.sqr()?.sum(D::Minus1)?.sqrt()?)?;
        let cos = (dot / norms.clamp(1e-12, f64::MAX)?)?;
        let target = Tensor::new(
            batch.iter().map(|&b| self.pairs[b].2).collect::<Vec<f32>>(),
            &Device::Cpu,
        )?;
        (cos - target)?.sqr()?.mean_all()
    }

    fn validate(&mut self) -> Result<Option<f64>> {
        Ok(None)
    }

    fn on_best(&mut self, _: usize, _: Option<f64>) -> Result<()> {
        Ok(())
    }
}

fn to_candle(e: frugal_models::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// SetFit settings.
#[derive(Debug, Clone)]
pub struct SetFitSpec<'a> {
    pub base: &'a Path,
    pub base_name: String,
    /// The K-per-class examples.
    pub shots: &'a [Example],
    /// Pair rounds (SetFit's `num_iterations`).
    pub rounds: usize,
    /// Contrastive fine-tuning: epochs, learning rate, batch (of pairs), seed.
    pub body: TrainConfig,
    /// The logistic-regression head: epochs and learning rate.
    pub head: TrainConfig,
    pub max_len: usize,
    pub out: &'a Path,
}

/// What SetFit did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetFitReport {
    pub pairs: usize,
    pub body: FitReport,
    pub head: FitReport,
}

/// Contrastive fine-tuning of the encoder on pairs of the shots, then a head on its embeddings;
/// writes an ordinary classifier checkpoint to `spec.out`.
pub fn setfit(
    spec: &SetFitSpec,
    progress: &mut dyn FnMut(&str, Progress),
) -> Result<(SetFitReport, CheckpointInfo)> {
    let (mut encoder, varmap) = Encoder::load_trainable(spec.base)?;
    encoder.set_max_len(spec.max_len)?;
    let texts: Vec<&str> = spec.shots.iter().map(|e| e.text.as_str()).collect();
    let tokens = encoder
        .tokenize(&texts)?
        .into_iter()
        .map(|t| t.ids)
        .collect();
    let pairs = contrastive_pairs(spec.shots, spec.rounds.max(1), spec.body.seed);
    let n_pairs = pairs.len();
    let mut vars: Vec<(String, candle_core::Var)> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    encoder.model.train = true;
    let mut task = PairTask {
        encoder: &encoder,
        tokens,
        pairs,
        seed: spec.body.seed,
    };
    let body = fit(&mut task, vars, &spec.body, &Control::default(), &mut |p| {
        progress("contrastive", p)
    })?;
    // The tuned encoder as a base folder for the head (removed afterwards).
    let name = spec
        .out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "fewshot".into());
    let parent = spec
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tuned = parent.join(format!(".{name}.body-{}", std::process::id()));
    let result = (|| {
        crate::replace_dir(&tuned, |tmp| {
            crate::classifier::copy_base_files(spec.base, tmp)?;
            varmap.save(tmp.join("model.safetensors"))?;
            Ok(())
        })?;
        let mut head_spec = TrainSpec::new(
            &tuned,
            spec.base_name.clone(),
            spec.shots,
            Mode::Head,
            spec.head.clone(),
            spec.out,
        );
        head_spec.max_len = Some(spec.max_len);
        train(&head_spec, &mut |p| progress("head", p))
    })();
    let _ = std::fs::remove_dir_all(&tuned);
    let (head, info) = result?;
    Ok((
        SetFitReport {
            pairs: n_pairs,
            body,
            head,
        },
        info,
    ))
}

/// For each query, the `k` nearest labelled examples of each label by embedding cosine, ordered
/// from the least to the most similar (the nearest sits next to the query in the prompt), as
/// demos for in-context few-shot.
pub fn nearest_demos(
    encoder: &Encoder,
    queries: &[&str],
    pool: &[Example],
    labels: &[String],
    k: usize,
) -> Result<Vec<Vec<Demo>>> {
    let pool_texts: Vec<&str> = pool.iter().map(|e| e.text.as_str()).collect();
    let pe: Vec<Vec<f32>> = encoder
        .embed(&pool_texts, 32, &mut |_| {})?
        .vectors
        .into_iter()
        .map(unit)
        .collect();
    let qe = encoder.embed(queries, 32, &mut |_| {})?.vectors;
    let index: BTreeMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    Ok(qe
        .into_iter()
        .map(|q| {
            let q = unit(q);
            let mut scored: Vec<(f32, usize)> = pe
                .iter()
                .enumerate()
                .map(|(i, p)| (p.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>(), i))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut taken = vec![0usize; labels.len()];
            let mut demos: Vec<Demo> = vec![];
            for (_, i) in scored {
                let l = index[pool[i].label.as_str()];
                if taken[l] < k {
                    taken[l] += 1;
                    demos.push((pool[i].text.clone(), l));
                }
            }
            demos.reverse();
            demos
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(t: &str, l: &str) -> Example {
        Example {
            text: t.into(),
            label: l.into(),
        }
    }

    #[test]
    fn shots_are_k_per_class_or_all_a_rare_class_has() {
        let data: Vec<Example> = (0..10)
            .map(|i| ex(&format!("t{i}"), if i < 7 { "a" } else { "b" }))
            .collect();
        let s = sample_shots(&data, 2, 1).unwrap();
        assert_eq!(s.iter().filter(|e| e.label == "a").count(), 2);
        assert_eq!(s.iter().filter(|e| e.label == "b").count(), 2);
        assert_eq!(s, sample_shots(&data, 2, 1).unwrap());
        assert_ne!(s, sample_shots(&data, 2, 2).unwrap());
        // A label with fewer than K gives all it has, and is named.
        let s = sample_shots(&data, 4, 1).unwrap();
        assert_eq!(s.iter().filter(|e| e.label == "b").count(), 3);
        assert_eq!(s.iter().filter(|e| e.label == "a").count(), 4);
        assert_eq!(short_labels(&data, 4), vec![("b".to_string(), 3)]);
        assert!(short_labels(&data, 3).is_empty());
        let one: Vec<Example> = data.iter().filter(|e| e.label == "a").cloned().collect();
        assert!(sample_shots(&one, 1, 1)
            .unwrap_err()
            .to_string()
            .contains("2 labels"));
    }

    #[test]
    fn pairs_are_balanced_and_correct() {
        let data = vec![ex("1", "a"), ex("2", "a"), ex("3", "b"), ex("4", "b")];
        let p = contrastive_pairs(&data, 5, 0);
        assert_eq!(p.len(), 5 * 4 * 2);
        for (i, j, y) in p {
            assert_ne!(i, j);
            assert_eq!(y == 1.0, data[i].label == data[j].label);
        }
    }

    #[test]
    fn label_descriptions_group_and_refuse_bad_ones() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let d = LabelDescriptions::from_pairs(&pairs(&[
            ("spam", "junk mail"),
            ("ham", "a normal email"),
            ("spam", "an advert"),
        ]))
        .unwrap();
        assert_eq!(d.labels, ["ham", "spam"]);
        assert_eq!(d.descriptions[1], ["junk mail", "an advert"]);
        assert!(LabelDescriptions::from_pairs(&pairs(&[("a", "x")])).is_err());
        let e = LabelDescriptions::from_pairs(&pairs(&[("a", "x"), ("b", " ")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--label b") && e.contains("empty"), "{e}");
    }
}
