//! A classifier trained in place, step after step, with its weights going in and out as named
//! tensors: the local step of federated learning (receive the global weights, train on the
//! node's data with the one training loop, send the new weights back). Data is prepared once
//! per node: cached embeddings in head mode, token ids in full mode.

use crate::classifier::{Classifier, Mode};
use crate::data::Example;
use crate::metrics::{evaluate, Metrics};
use crate::trainer::{batch_seed, fit, Control, FitReport, Task, TrainConfig};
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var, D};
use candle_nn::Module;
use frugal_models::chat::sampling::argmax;
use frugal_models::encoder::Encoder;
use std::path::Path;

/// Examples ready for training and evaluation: label indices, and the encoder's input.
pub struct Prepared {
    pub(crate) targets: Vec<u32>,
    /// Head mode: pooled embeddings (n x dim) of the frozen encoder.
    pub(crate) cached: Option<Tensor>,
    /// Full and LoRA modes: token ids.
    pub(crate) tokens: Vec<Vec<u32>>,
}

impl Prepared {
    /// Embeds (head mode: the encoder is frozen, so once is enough) or tokenizes `texts`, with
    /// their label indices `targets`.
    pub(crate) fn new(
        encoder: &Encoder,
        texts: &[&str],
        mode: Mode,
        targets: Vec<u32>,
    ) -> Result<Prepared> {
        Ok(match mode {
            Mode::Head => {
                let flat: Vec<f32> = if texts.is_empty() {
                    vec![]
                } else {
                    let emb = encoder.embed(texts, 32, &mut |_| {})?;
                    emb.vectors.into_iter().flatten().collect()
                };
                Prepared {
                    targets,
                    cached: Some(Tensor::from_vec(
                        flat,
                        (texts.len(), encoder.dim()),
                        &Device::Cpu,
                    )?),
                    tokens: vec![],
                }
            }
            Mode::Full | Mode::Lora => Prepared {
                targets,
                cached: None,
                tokens: encoder
                    .tokenize(texts)?
                    .into_iter()
                    .map(|t| t.ids)
                    .collect(),
            },
        })
    }

    /// The examples at `idx`, in that order (embeddings or token ids copied, not recomputed).
    pub fn select(&self, idx: &[usize]) -> Result<Prepared> {
        let targets = idx.iter().map(|&i| self.targets[i]).collect();
        let cached = match &self.cached {
            Some(t) => {
                let ix: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
                Some(t.index_select(&Tensor::new(ix.as_slice(), &Device::Cpu)?, 0)?)
            }
            None => None,
        };
        let tokens = if self.tokens.is_empty() {
            vec![]
        } else {
            idx.iter().map(|&i| self.tokens[i].clone()).collect()
        };
        Ok(Prepared {
            targets,
            cached,
            tokens,
        })
    }

    /// Head mode's embeddings (n × dim); None in the other modes.
    pub fn embeddings(&self) -> Option<&Tensor> {
        self.cached.as_ref()
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True without examples.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// A classifier whose trained weights (the head, or all) are set, trained and read back.
pub struct Learner {
    pub clf: Classifier,
    pub mode: Mode,
}

/// Named tensors: the weights a learner trains, sorted by name.
pub type Named = Vec<(String, Tensor)>;

impl Learner {
    /// A classifier over `base` for `labels`, texts cut at `max_len` tokens; `seed` draws the
    /// initial head (the same on every node, as the server's initial model).
    pub fn new(
        base: &Path,
        labels: Vec<String>,
        mode: Mode,
        max_len: usize,
        seed: u64,
    ) -> Result<Learner> {
        let mut clf = Classifier::new(base, labels, seed)?;
        clf.encoder.set_max_len(max_len)?;
        if mode == Mode::Lora {
            clf.add_lora(seed)?;
        }
        Ok(Learner { clf, mode })
    }

    /// Label indices of labelled examples; an unknown label is an error that names it.
    fn targets(&self, examples: &[Example]) -> Result<Vec<u32>> {
        examples
            .iter()
            .map(|e| {
                self.clf
                    .labels
                    .iter()
                    .position(|l| *l == e.label)
                    .map(|i| i as u32)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "label '{}' is not among the model's labels ({})",
                            e.label,
                            self.clf.labels.join(", ")
                        ))
                    })
            })
            .collect::<Result<Vec<u32>>>()
    }

    /// Embeds (head mode) or tokenizes (full and LoRA modes) labelled examples once.
    pub fn prepare(&self, examples: &[Example]) -> Result<Prepared> {
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        Prepared::new(
            &self.clf.encoder,
            &texts,
            self.mode,
            self.targets(examples)?,
        )
    }

    /// Like `prepare`, with head mode's embeddings kept in `dir` (keyed by `encoder_id`, the
    /// length limit and the texts), so runs over the same data embed it once.
    pub fn prepare_cached(
        &self,
        examples: &[Example],
        dir: &Path,
        encoder_id: &str,
    ) -> Result<Prepared> {
        if self.mode != Mode::Head {
            return self.prepare(examples);
        }
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(encoder_id.as_bytes());
        h.update(self.clf.encoder.max_len().to_le_bytes());
        for e in examples {
            h.update(e.text.as_bytes());
            h.update([0u8]);
        }
        let key: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!("{key}.safetensors"));
        let dim = self.clf.encoder.dim();
        if let Ok(map) = candle_core::safetensors::load(&path, &Device::Cpu) {
            if let Some(t) = map
                .get("embeddings")
                .filter(|t| t.dims() == [examples.len(), dim])
            {
                let mut p = self.prepare(&[])?;
                p.targets = self.targets(examples)?;
                p.cached = Some(t.clone());
                return Ok(p);
            }
        }
        let p = self.prepare(examples)?;
        if let Some(t) = &p.cached {
            // A cache that cannot be written only costs time next run.
            let _ = std::fs::create_dir_all(dir);
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let map = std::collections::HashMap::from([("embeddings".to_string(), t.clone())]);
            if candle_core::safetensors::save(&map, &tmp).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        Ok(p)
    }

    /// The trained weights, by name (copies).
    pub fn weights(&self) -> Result<Named> {
        self.clf
            .trained_vars(self.mode)
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().copy()?)))
            .collect()
    }

    /// Sets the trained weights; names and shapes must match `weights()`.
    pub fn set_weights(&self, named: &[(String, Tensor)]) -> Result<()> {
        let vars = self.clf.trained_vars(self.mode);
        if vars.len() != named.len() {
            return Err(Error::Invalid(format!(
                "{} weight tensors given, the model trains {}",
                named.len(),
                vars.len()
            )));
        }
        for ((n, v), (m, t)) in vars.iter().zip(named) {
            if n != m || v.shape() != t.shape() {
                return Err(Error::Invalid(format!(
                    "weight '{m}' {:?} does not match the model's '{n}' {:?}",
                    t.shape(),
                    v.shape()
                )));
            }
            v.set(t)?;
        }
        Ok(())
    }

    /// Trains on `data` with the shared loop; with `anchor = (μ, weights)` the loss adds
    /// μ/2·‖w − anchor‖² (FedProx's proximal term, which keeps a node near the global model).
    pub fn fit(
        &mut self,
        data: &Prepared,
        cfg: &TrainConfig,
        anchor: Option<(f64, &Named)>,
    ) -> Result<FitReport> {
        let vars = self.clf.trained_vars(self.mode);
        let anchor = match anchor {
            Some((mu, w)) if mu > 0.0 => {
                if w.len() != vars.len() {
                    return Err(Error::Invalid(
                        "proximal anchor does not match the weights".into(),
                    ));
                }
                Some((mu, w.iter().map(|(_, t)| t.clone()).collect()))
            }
            _ => None,
        };
        self.clf.encoder.model.train = self.mode != Mode::Head;
        let mut task = LocalTask {
            clf: &self.clf,
            data,
            seed: cfg.seed,
            vars: vars.iter().map(|(_, v)| v.clone()).collect(),
            anchor,
        };
        let report = fit(&mut task, vars, cfg, &Control::default(), &mut |_| {});
        self.clf.encoder.model.train = false;
        report
    }

    /// Label probabilities of prepared examples.
    pub fn predict(&self, data: &Prepared) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(data.len());
        let idx: Vec<usize> = (0..data.len()).collect();
        for chunk in idx.chunks(64) {
            let logits = self.clf.head.forward(&pooled(&self.clf, data, chunk)?)?;
            out.extend(candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// Metrics on prepared examples.
    pub fn evaluate(&self, data: &Prepared) -> Result<Metrics> {
        let pred: Vec<usize> = self
            .predict(data)?
            .iter()
            .map(|p| argmax(p) as usize)
            .collect();
        let gold: Vec<usize> = data.targets.iter().map(|&t| t as usize).collect();
        Ok(evaluate(&self.clf.labels, &gold, &pred))
    }
}

/// Pooled embeddings of the examples `batch`: cached, or computed by the encoder.
pub(crate) fn pooled(
    clf: &Classifier,
    data: &Prepared,
    batch: &[usize],
) -> candle_core::Result<Tensor> {
    match &data.cached {
        Some(emb) => {
            let idx: Vec<u32> = batch.iter().map(|&i| i as u32).collect();
            emb.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu)?, 0)
        }
        None => {
            let ids: Vec<&[u32]> = batch.iter().map(|&i| data.tokens[i].as_slice()).collect();
            let to = |e: frugal_models::Error| candle_core::Error::Msg(e.to_string());
            let (ids, mask) = clf.encoder.batch_tensors(&ids).map_err(to)?;
            clf.encoder.pooled(&ids, &mask).map_err(to)
        }
    }
}

/// Cross-entropy on the node's data, plus the optional proximal term.
struct LocalTask<'a> {
    clf: &'a Classifier,
    data: &'a Prepared,
    seed: u64,
    vars: Vec<Var>,
    anchor: Option<(f64, Vec<Tensor>)>,
}

impl Task for LocalTask<'_> {
    fn len(&self) -> usize {
        self.data.len()
    }

    fn loss(&mut self, batch: &[usize]) -> candle_core::Result<Tensor> {
        self.clf
            .encoder
            .model
            .reseed_dropout(batch_seed(self.seed ^ 0x6c6f_6361_6c00, batch));
        let target = Tensor::new(
            batch
                .iter()
                .map(|&i| self.data.targets[i])
                .collect::<Vec<_>>(),
            &Device::Cpu,
        )?;
        let logits = self
            .clf
            .head
            .forward(&pooled(self.clf, self.data, batch)?)?;
        let mut loss = candle_nn::loss::cross_entropy(&logits, &target)?;
        if let Some((mu, anchor)) = &self.anchor {
            for (v, a) in self.vars.iter().zip(anchor) {
                let d = (v.as_tensor() - a)?;
                loss = (loss + (d.sqr()?.sum_all()? * (mu / 2.0))?)?;
            }
        }
        Ok(loss)
    }

    fn validate(&mut self) -> Result<Option<f64>> {
        Ok(None)
    }

    fn on_best(&mut self, _epoch: usize, _score: Option<f64>) -> Result<()> {
        Ok(())
    }
}
