//! Sentence encoders: a Hugging Face folder (config.json + *.safetensors + tokenizer.json, and the
//! sentence-transformers files modules.json / 1_Pooling/config.json / sentence_bert_config.json)
//! turned into one vector per text.
//!
//! Texts are tokenised, truncated at the model's max length (counted), sorted by length and
//! batched with padding only to the longest text of each batch, then pooled and normalised as
//! the sentence-transformers files say.

pub mod bert;
pub mod ops;

use crate::error::{first_line, tok_err, Error, Result};
pub use bert::{Bert, BertConfig};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams};

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
    Max,
    MeanSqrtLen,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

/// A loaded sentence encoder.
pub struct Encoder {
    pub dir: PathBuf,
    pub model: Bert,
    pub tokenizer: Tokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    max_len: usize,
    device: Device,
}

/// Longest run of word characters kept: BERT's WordPiece makes one `[UNK]` of any word over 100
/// characters, so cutting a longer run to this length keeps its token.
const LONGEST_WORD: usize = 256;

/// What of `text` an encoder reading `max_tokens` tokens needs, and whether anything was cut.
/// It counts a lower bound of the tokens the BERT tokeniser makes (its normaliser drops control
/// characters; its pre-tokeniser splits at whitespace, punctuation and CJK ideographs): one per
/// ASCII punctuation mark, per CJK ideograph, and per run between whitespace that holds a letter
/// or digit. Keeping twice `max_tokens` of them plus a margin keeps every token the truncated
/// encoding holds. A run of letters and digits past [`LONGEST_WORD`] is cut to it (the word is
/// one `[UNK]` either way); control characters are dropped as the normaliser drops them. Texts
/// under 32 bytes a token are returned as they are.
pub fn text_head(text: &str, max_tokens: usize) -> (std::borrow::Cow<'_, str>, bool) {
    if text.len() <= max_tokens.saturating_mul(32) {
        return (text.into(), false);
    }
    let cjk = |c: char| {
        ('\u{4e00}'..='\u{9fff}').contains(&c)
            || ('\u{3400}'..='\u{4dbf}').contains(&c)
            || ('\u{f900}'..='\u{faff}').contains(&c)
    };
    let want = max_tokens.saturating_mul(2) + 16;
    let (mut units, mut counted, mut alnum_run) = (0usize, false, 0usize);
    let mut out = String::with_capacity(want * 8);
    for c in text.chars() {
        if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
            continue;
        }
        if c.is_whitespace() {
            (counted, alnum_run) = (false, 0);
        } else if c.is_ascii_punctuation() || cjk(c) {
            units += 1;
            (counted, alnum_run) = (false, 0);
        } else if c.is_alphanumeric() {
            if !counted {
                units += 1;
                counted = true;
            }
            alnum_run += 1;
            if alnum_run > LONGEST_WORD {
                continue;
            }
        } else {
            alnum_run = 0;
        }
        if units > want {
            return (out.into(), true);
        }
        out.push(c);
    }
    let cut = out.len() < text.len();
    (out.into(), cut)
}

/// Token ids of one text after truncation.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// True when the text was longer than the max length and was cut.
    pub truncated: bool,
}

/// Embeddings with the counts a caller reports.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens processed (after truncation, special tokens included).
    pub tokens: usize,
    /// Texts cut at the max length.
    pub truncated: usize,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
}

impl Encoder {
    /// Loads an encoder folder. Missing files are named in the error.
    pub fn load(dir: &Path) -> Result<Encoder> {
        Ok(Encoder::load_with(dir, false)?.0)
    }

    /// Loads an encoder whose weights are trainable variables, returned in a `VarMap` (for
    /// fine-tuning; saving the map writes a checkpoint).
    pub fn load_trainable(dir: &Path) -> Result<(Encoder, VarMap)> {
        let (enc, varmap) = Encoder::load_with(dir, true)?;
        Ok((enc, varmap.expect("trainable load returns its variables")))
    }

    fn load_with(dir: &Path, trainable: bool) -> Result<(Encoder, Option<VarMap>)> {
        let need = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::file(
                    &p,
                    format!("missing: an encoder folder needs config.json, model.safetensors and tokenizer.json ({name} not found)"),
                ))
            }
        };
        let config: BertConfig = read_json(&need("config.json")?)?;
        if let Some(mt) = &config.model_type {
            if mt != "bert" {
                return Err(Error::file(
                    dir.join("config.json"),
                    format!("model_type '{mt}' is not supported; frugal's encoder runs BERT-family models (model_type 'bert')"),
                ));
            }
        }
        if let Err(why) = config.check() {
            return Err(Error::file(dir.join("config.json"), why));
        }
        if config.hidden_act != "gelu" {
            return Err(Error::file(
                dir.join("config.json"),
                format!(
                    "hidden_act '{}' is not supported (only 'gelu')",
                    config.hidden_act
                ),
            ));
        }
        let tok_path = need("tokenizer.json")?;
        let mut weights: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        weights.sort();
        if weights.is_empty() {
            return Err(Error::file(
                dir,
                "no *.safetensors weights in the encoder folder",
            ));
        }
        for w in &weights {
            check_safetensors(w)?;
        }
        let device = Device::Cpu;
        let bad_weights = |e: candle_core::Error| {
            Error::file(
                &weights[0],
                format!("weights do not match config.json: {}", first_line(&e)),
            )
        };
        let (model, varmap) = if trainable {
            if weights.len() != 1 {
                return Err(Error::file(
                    dir,
                    "training needs the weights in one model.safetensors file",
                ));
            }
            // Variables are created (initialised) by the model, then overwritten from the file.
            let mut varmap = VarMap::new();
            let model = Bert::load(
                VarBuilder::from_varmap(&varmap, DType::F32, &device),
                &config,
            )
            .map_err(bad_weights)?;
            varmap.load(&weights[0]).map_err(bad_weights)?;
            (model, Some(varmap))
        } else {
            // SAFETY: the files are not modified while mapped (frugal's asset store is read-only).
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, &device) }
                .map_err(|e| {
                    Error::file(
                        &weights[0],
                        format!("cannot read weights: {}", first_line(&e)),
                    )
                })?;
            (Bert::load(vb, &config).map_err(bad_weights)?, None)
        };
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::file(&tok_path, format!("invalid tokenizer: {e}")))?;
        tokenizer.with_padding(None);

        let mut pooling = Pooling::Mean;
        let mut normalize = false;
        let modules = dir.join("modules.json");
        if modules.is_file() {
            let entries: Vec<ModuleEntry> = read_json(&modules)?;
            for m in entries {
                if m.kind.ends_with("Pooling") {
                    let pf: PoolingFile = read_json(&dir.join(&m.path).join("config.json"))?;
                    pooling = if pf.pooling_mode_cls_token {
                        Pooling::Cls
                    } else if pf.pooling_mode_max_tokens {
                        Pooling::Max
                    } else if pf.pooling_mode_mean_sqrt_len_tokens {
                        Pooling::MeanSqrtLen
                    } else if pf.pooling_mode_mean_tokens {
                        Pooling::Mean
                    } else {
                        return Err(Error::file(
                            dir.join(&m.path).join("config.json"),
                            "no pooling mode is set",
                        ));
                    };
                } else if m.kind.ends_with("Normalize") {
                    normalize = true;
                }
            }
        }
        let mut max_len = config.max_position_embeddings;
        let sbert = dir.join("sentence_bert_config.json");
        if sbert.is_file() {
            #[derive(Deserialize)]
            struct Sb {
                max_seq_length: Option<usize>,
            }
            if let Some(m) = read_json::<Sb>(&sbert)?.max_seq_length {
                max_len = m.min(max_len);
            }
        }
        let mut enc = Encoder {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            pooling,
            normalize,
            max_len,
            device,
        };
        enc.set_max_len(max_len)?;
        Ok((enc, varmap))
    }

    /// Runs inference's matrix products in `precision` where this CPU has the instructions
    /// (else f32). Returns the precision in effect and, after a fallback, a notice saying why.
    pub fn set_precision(
        &mut self,
        precision: crate::lowp::Precision,
    ) -> Result<(crate::lowp::Precision, Option<String>)> {
        let (effective, notice) = precision.resolve();
        self.model.set_precision(effective)?;
        Ok((effective, notice))
    }

    /// Output dimension.
    pub fn dim(&self) -> usize {
        self.model.config.hidden_size
    }

    /// Tokens per text after truncation (special tokens included).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Changes the truncation length; at most the model's position embeddings.
    pub fn set_max_len(&mut self, max_len: usize) -> Result<()> {
        let limit = self.model.config.max_position_embeddings;
        if max_len < 2 || max_len > limit {
            return Err(Error::Invalid(format!(
                "max length {max_len} is out of range: this model takes 2 to {limit} tokens"
            )));
        }
        self.max_len = max_len;
        self.tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(tok_err)?;
        Ok(())
    }

    /// Tokenises texts (truncating at the max length). A text far longer than the model reads
    /// is cut first to a head that still holds more than `max_len` tokens, so a 50 MB line costs
    /// what its first few hundred words cost.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Tokens>> {
        let heads: Vec<_> = texts.iter().map(|t| text_head(t, self.max_len)).collect();
        let encs = self
            .tokenizer
            .encode_batch(heads.iter().map(|h| h.0.as_ref()).collect::<Vec<_>>(), true)
            .map_err(tok_err)?;
        Ok(encs
            .into_iter()
            .zip(&heads)
            .map(|(e, (_, cut))| Tokens {
                truncated: *cut || !e.get_overflowing().is_empty(),
                ids: e.get_ids().to_vec(),
            })
            .collect())
    }

    /// Embeds texts in length-sorted batches of `batch_size`; `on_batch(done)` reports progress.
    pub fn embed(
        &self,
        texts: &[&str],
        batch_size: usize,
        on_batch: &mut dyn FnMut(usize),
    ) -> Result<Embeddings> {
        let toks = self.tokenize(texts)?;
        let mut order: Vec<usize> = (0..toks.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(toks[i].ids.len()));
        let mut vectors = vec![vec![]; toks.len()];
        let mut done = 0;
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| toks[i].ids.as_slice()).collect();
            let pooled = self.embed_ids(&batch)?;
            for (&i, v) in chunk.iter().zip(pooled) {
                vectors[i] = v;
            }
            done += chunk.len();
            on_batch(done);
        }
        Ok(Embeddings {
            vectors,
            tokens: toks.iter().map(|t| t.ids.len()).sum(),
            truncated: toks.iter().filter(|t| t.truncated).count(),
        })
    }

    /// Pads a batch of token id lists to their longest: (ids, mask) tensors.
    pub fn batch_tensors(&self, batch: &[&[u32]]) -> Result<(Tensor, Tensor)> {
        let len = batch.iter().map(|b| b.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; batch.len() * len];
        let mut mask = vec![0u32; batch.len() * len];
        for (r, b) in batch.iter().enumerate() {
            ids[r * len..r * len + b.len()].copy_from_slice(b);
            mask[r * len..r * len + b.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (batch.len(), len), &self.device)?;
        let mask = Tensor::from_vec(mask, (batch.len(), len), &self.device)?;
        Ok((ids, mask))
    }

    /// Runs one padded batch and pools it: (batch, dim) tensor, normalised if configured.
    pub fn pooled(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.pool(&self.model.forward(ids, mask)?, mask)
    }

    /// Pools token vectors (batch, len, hidden) into one per text, normalised if configured.
    pub fn pool(&self, hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean | Pooling::MeanSqrtLen => {
                let sum = hidden.broadcast_mul(&m)?.sum(1)?;
                let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
                let count = if self.pooling == Pooling::MeanSqrtLen {
                    count.sqrt()?
                } else {
                    count
                };
                sum.broadcast_div(&count)?
            }
            Pooling::Max => {
                let neg = ((m.ones_like()? - &m)? * -1e9)?;
                hidden.broadcast_add(&neg)?.max(1)?
            }
        };
        Ok(if self.normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        })
    }

    fn embed_ids(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let (ids, mask) = self.batch_tensors(batch)?;
        Ok(self.pooled(&ids, &mask)?.to_vec2::<f32>()?)
    }
}

/// Checks a safetensors file's header and that the file holds every byte it declares, so a
/// truncated download fails with a clear message instead of a crash while mapping.
pub fn check_safetensors(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| {
        Error::file(
            path,
            "truncated safetensors file (no header); fetch it again",
        )
    })?;
    let header_len = u64::from_le_bytes(n);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(Error::file(
            path,
            "truncated or corrupt safetensors header; fetch the file again",
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::file(path, format!("corrupt safetensors header: {e}")))?;
    let end = v
        .as_object()
        .map(|o| {
            o.values()
                .filter_map(|t| t.get("data_offsets")?.as_array()?.get(1)?.as_u64())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    if 8 + header_len + end > file_len {
        return Err(Error::file(
            path,
            format!(
                "truncated safetensors file: tensors need {} bytes, the file has {file_len}; fetch it again",
                8 + header_len + end
            ),
        ));
    }
    Ok(())
}
