//! A trainable llama-family chat model: the GGUF's weights dequantised to f32 and frozen, with
//! low-rank adapters (LoRA: W + α/r · B·A, A r×in, B out×r, B starting at zero) on chosen
//! projections. Only the adapters are variables; the base never changes.
//!
//! The forward pass is the GGUF runtime's (`llama.rs`) in candle tensor ops, so it can be
//! differentiated: RMSNorm, RoPE on adjacent pairs (GGUF's layout), causal grouped-query
//! attention, SwiGLU. Frozen projections use an op whose backward pass computes only the input's
//! gradient (candle's matmul would also compute the frozen weight's, a third of the work).

use super::llama::LlamaConfig;
use crate::encoder::ops::{dropout, softmax_last_dim};
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var};

/// A shared custom op, as candle applies one.
type Op = std::sync::Arc<Box<dyn CustomOp1 + Send + Sync>>;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The projections LoRA can adapt, by their GGUF names.
pub const TARGETS: &[&str] = &[
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// Shape of the adapters: rank, scale α (the update is α/r · B·A), dropout on their input, and
/// which projections get one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: TARGETS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl LoraConfig {
    /// Checks rank, dropout and target names; errors name the setting.
    pub fn check(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Invalid("--rank must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::Invalid("--alpha must be a positive number".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Invalid("--lora-dropout must be in [0, 1)".into()));
        }
        if self.targets.is_empty() {
            return Err(Error::Invalid(
                "--targets: name at least one projection".into(),
            ));
        }
        if let Some(t) = self.targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
            return Err(Error::Invalid(format!(
                "--targets: unknown projection '{t}'; the projections are {}",
                TARGETS.join(", ")
            )));
        }
        Ok(())
    }

    /// α / r.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// x · Wᵀ for a frozen W: forward by candle's matmul, backward only to x.
struct Frozen {
    /// Wᵀ (in × out), contiguous; the backward pass multiplies by its transpose (a view).
    wt: Tensor,
}

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        "frugal-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = s.as_slice::<f32>()?;
        let data = match l.contiguous_offsets() {
            Some((a, b)) => &data[a..b],
            None => candle_core::bail!("frozen linear: input must be contiguous"),
        };
        let (rows, inner) = (data.len() / self.wt.dim(0)?, self.wt.dim(0)?);
        let x = Tensor::from_slice(data, (rows, inner), &Device::Cpu)?;
        let y = x.matmul(&self.wt)?;
        let out = self.wt.dim(1)?;
        let mut dims = l.dims().to_vec();
        *dims.last_mut().expect("rank ≥ 1") = out;
        Ok((
            CpuStorage::F32(y.flatten_all()?.to_vec1()?),
            Shape::from(dims),
        ))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dims = grad_res.dims().to_vec();
        let out = *dims.last().expect("rank ≥ 1");
        let g = grad_res.contiguous()?.reshape(((), out))?;
        let mut in_dims = dims.clone();
        *in_dims.last_mut().expect("rank ≥ 1") = self.wt.dim(0)?;
        Ok(Some(g.matmul(&self.wt.t()?)?.reshape(in_dims)?))
    }
}

/// One projection: the frozen weight and, when adapted, its LoRA pair.
struct Proj {
    /// Wᵀ (in × out), shared with the op.
    wt: Tensor,
    /// x · Wᵀ with W frozen.
    op: Op,
    /// (A r×in, B out×r).
    lora: Option<(Var, Var)>,
}

struct Layer {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    proj: BTreeMap<&'static str, Proj>,
}

/// The trainable model.
pub struct LoraLlama {
    pub config: LlamaConfig,
    pub lora: LoraConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    out_norm: Tensor,
    output: Op,
    /// cos, sin per (position, pair) up to the context length.
    cos: Tensor,
    sin: Tensor,
    /// Dropout on while training.
    pub train: bool,
    dropout_seed: std::sync::atomic::AtomicU64,
}

/// The op for a frozen W (out × in) and Wᵀ, the one copy of the weight kept.
fn frozen(w: Tensor) -> Result<(Op, Tensor)> {
    let wt = w.t()?.contiguous()?;
    let op: Op = std::sync::Arc::new(Box::new(Frozen { wt: wt.clone() }));
    Ok((op, wt))
}

impl LoraLlama {
    /// Loads the GGUF at `path` (llama architecture), dequantises every weight, and adds fresh
    /// adapters (A drawn with `seed`, B zero: the model starts equal to the base).
    pub fn load(path: &Path, lora: LoraConfig, seed: u64) -> Result<LoraLlama> {
        lora.check()?;
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            Error::file(
                path,
                format!(
                    "not a readable GGUF file ({})",
                    crate::error::first_line(&e)
                ),
            )
        })?;
        // The runtime's loader checks architecture, shapes and types, and gives the config.
        let config = super::llama::Llama::load(&content, &mut file, path)?.config;
        let dev = Device::Cpu;
        let mut read = |name: &str| -> Result<Tensor> {
            let q = content
                .tensor(&mut file, name, &dev)
                .map_err(|e| Error::file(path, format!("tensor '{name}': {e}")))?;
            Ok(q.dequantize(&dev)?.to_dtype(DType::F32)?)
        };
        let embed = read("token_embd.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            read("output.weight")?
        } else {
            embed.clone()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut layers = vec![];
        for i in 0..config.n_layer {
            let mut proj = BTreeMap::new();
            for &t in TARGETS {
                let w = read(&format!("blk.{i}.{t}.weight"))?;
                let (out, inp) = w.dims2()?;
                let adapter = if lora.targets.iter().any(|x| x == t) {
                    // PEFT's initialisation: A ~ U(±1/√in) (Kaiming, a = √5), B = 0.
                    let bound = 1.0 / (inp as f32).sqrt();
                    let a: Vec<f32> = (0..lora.rank * inp)
                        .map(|_| rng.random_range(-bound..bound))
                        .collect();
                    Some((
                        Var::from_tensor(&Tensor::from_vec(a, (lora.rank, inp), &dev)?)?,
                        Var::zeros((out, lora.rank), DType::F32, &dev)?,
                    ))
                } else {
                    None
                };
                proj.insert(t, {
                    let (op, wt) = frozen(w)?;
                    Proj {
                        op,
                        wt,
                        lora: adapter,
                    }
                });
            }
            layers.push(Layer {
                attn_norm: read(&format!("blk.{i}.attn_norm.weight"))?.flatten_all()?,
                ffn_norm: read(&format!("blk.{i}.ffn_norm.weight"))?.flatten_all()?,
                proj,
            });
        }
        let out_norm = read("output_norm.weight")?.flatten_all()?;
        // The runtime's table, so both rotate alike.
        let (half, n) = (config.head_dim / 2, config.n_ctx_train);
        let (cos, sin) = config.rope_table(n);
        Ok(LoraLlama {
            embed,
            layers,
            out_norm,
            output: frozen(output)?.0,
            cos: Tensor::from_vec(cos, (n, half), &dev)?,
            sin: Tensor::from_vec(sin, (n, half), &dev)?,
            config,
            lora,
            train: false,
            dropout_seed: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The adapters, by name (`blk.{i}.{proj}.lora_a` / `.lora_b`), sorted.
    pub fn adapter_vars(&self) -> Vec<(String, Var)> {
        let mut out = vec![];
        for (i, l) in self.layers.iter().enumerate() {
            for (t, p) in &l.proj {
                if let Some((a, b)) = &p.lora {
                    out.push((format!("blk.{i}.{t}.lora_a"), a.clone()));
                    out.push((format!("blk.{i}.{t}.lora_b"), b.clone()));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Sets the adapters from named tensors (as saved); names and shapes must match.
    pub fn set_adapters(&self, named: &BTreeMap<String, Tensor>) -> Result<()> {
        let vars = self.adapter_vars();
        if vars.len() != named.len() {
            return Err(Error::Invalid(format!(
                "the adapter has {} tensors; this configuration trains {}",
                named.len(),
                vars.len()
            )));
        }
        for (n, v) in vars {
            let t = named
                .get(&n)
                .ok_or_else(|| Error::Invalid(format!("the adapter has no tensor '{n}'")))?;
            if t.dims() != v.dims() {
                return Err(Error::Invalid(format!(
                    "adapter tensor '{n}' is {:?}; the model needs {:?}",
                    t.dims(),
                    v.dims()
                )));
            }
            v.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    /// Number of trainable (adapter) weights.
    pub fn trainable_params(&self) -> usize {
        self.adapter_vars()
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// Seeds the next dropout masks (the trainer calls it per batch, for reproducible runs).
    pub fn reseed_dropout(&self, seed: u64) {
        let s = seed.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (seed >> 31);
        self.dropout_seed
            .store(s, std::sync::atomic::Ordering::Relaxed);
    }

    fn project(&self, p: &Proj, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.apply_op1_arc(p.op.clone())?;
        let Some((a, b)) = &p.lora else {
            return Ok(y);
        };
        let x = if self.train && self.lora.dropout > 0.0 {
            let seed = self
                .dropout_seed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            dropout(x, self.lora.dropout, seed)?
        } else {
            x.clone()
        };
        // α/r applied to the rank-r intermediate: the same product, a much smaller tensor.
        let r = (x.broadcast_matmul(&a.as_tensor().t()?)? * self.lora.scale())?;
        y + r.broadcast_matmul(&b.as_tensor().t()?)?
    }

    /// Final hidden states (batch × len × n_embd) of right-padded token ids (batch × len, u32).
    /// Causal attention alone keeps real tokens from seeing the padding after them.
    pub fn hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        if t > c.n_ctx_train {
            candle_core::bail!("{t} tokens exceed the context window of {}", c.n_ctx_train);
        }
        let (nh, nkv, hd) = (c.n_head, c.n_head_kv, c.head_dim);
        let mut x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, c.n_embd))?;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), ids.device())?;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in &self.layers {
            let h = candle_nn::ops::rms_norm_slow(&x, &l.attn_norm, c.rms_eps)?;
            let heads = |name: &str, n: usize| -> candle_core::Result<Tensor> {
                self.project(&l.proj[name], &h)?
                    .reshape((b, t, n, hd))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = candle_nn::rotary_emb::rope_i_slow(&heads("attn_q", nh)?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i_slow(&heads("attn_k", nkv)?, &cos, &sin)?;
            let v = heads("attn_v", nkv)?;
            let rep = |x: Tensor| -> candle_core::Result<Tensor> {
                if nh == nkv {
                    return Ok(x);
                }
                x.unsqueeze(2)?
                    .expand((b, nkv, nh / nkv, t, hd))?
                    .reshape((b, nh, t, hd))
            };
            let (k, v) = (rep(k)?, rep(v)?);
            let att = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&mask)?;
            let att = softmax_last_dim(&att)?.matmul(&v.contiguous()?)?;
            let att = att.transpose(1, 2)?.reshape((b, t, c.n_embd))?;
            x = (x + self.project(&l.proj["attn_output"], &att)?)?;
            let h = candle_nn::ops::rms_norm_slow(&x, &l.ffn_norm, c.rms_eps)?;
            let g = self.project(&l.proj["ffn_gate"], &h)?.silu()?;
            let u = self.project(&l.proj["ffn_up"], &h)?;
            x = (x + self.project(&l.proj["ffn_down"], &(g * u)?)?)?;
        }
        candle_nn::ops::rms_norm_slow(&x, &self.out_norm, c.rms_eps)
    }

    /// Logits (n × vocab) of the hidden states at `positions` (indices into batch·len).
    pub fn logits_at(&self, hidden: &Tensor, positions: &[u32]) -> candle_core::Result<Tensor> {
        let d = self.config.n_embd;
        let flat = hidden.reshape(((), d))?;
        let idx = Tensor::new(positions, hidden.device())?;
        flat.index_select(&idx, 0)?
            .apply_op1_arc(self.output.clone())
    }

    /// The update α/r · B·A of each adapted projection (out × in), by GGUF tensor name
    /// (`blk.{i}.{proj}.weight`): what merging adds to the base.
    pub fn deltas(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![];
        for (i, l) in self.layers.iter().enumerate() {
            for (t, p) in &l.proj {
                if let Some((a, b)) = &p.lora {
                    let d = (b.as_tensor().matmul(a.as_tensor())? * self.lora.scale())?;
                    out.push((format!("blk.{i}.{t}.weight"), d));
                }
            }
        }
        Ok(out)
    }

    /// A copy of every frozen base weight, by GGUF name (for tests that the base never changes).
    pub fn base_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("token_embd.weight".to_string(), self.embed.copy()?)];
        for (i, l) in self.layers.iter().enumerate() {
            out.push((format!("blk.{i}.attn_norm.weight"), l.attn_norm.copy()?));
            out.push((format!("blk.{i}.ffn_norm.weight"), l.ffn_norm.copy()?));
            for (t, p) in &l.proj {
                out.push((format!("blk.{i}.{t}.weight"), p.wt.t()?.copy()?));
            }
        }
        out.push(("output_norm.weight".into(), self.out_norm.copy()?));
        Ok(out)
    }
}

/// The SHA-256 of a file (the base model's identity in an adapter).
pub fn file_sha256(path: &Path) -> Result<String> {
    crate::assets::sha256_file(path)
}

/// What an adapter was trained on and how (`adapter.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdapterInfo {
    /// The base as named when training (`smollm2`, a path).
    pub base_name: String,
    pub base_file: String,
    /// The base GGUF file's SHA-256: an adapter only fits the weights it was trained on.
    pub base_sha256: String,
    pub lora: LoraConfig,
    pub max_len: usize,
    pub train_examples: usize,
    pub epochs: usize,
    pub lr: f64,
    pub seed: u64,
    /// Mean validation loss of the answer tokens with this adapter, when there was validation data.
    pub valid_loss: Option<f64>,
}

/// A trained adapter: its info and its A and B matrices by name.
pub struct Adapter {
    pub info: AdapterInfo,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Adapter {
    /// The model's current adapters.
    pub fn from_model(model: &LoraLlama, info: AdapterInfo) -> Result<Adapter> {
        let tensors = model
            .adapter_vars()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().copy()?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        Ok(Adapter { info, tensors })
    }

    /// Writes `adapter.safetensors` and `adapter.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let map: std::collections::HashMap<String, Tensor> = self
            .tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        candle_core::safetensors::save(&map, dir.join("adapter.safetensors"))?;
        let json = serde_json::to_vec_pretty(&self.info)
            .map_err(|e| Error::Invalid(format!("adapter.json: {e}")))?;
        std::fs::write(dir.join("adapter.json"), json).map_err(|e| Error::io(dir, e))
    }

    /// Reads an adapter folder written by `save`; errors name the file.
    pub fn load(dir: &Path) -> Result<Adapter> {
        let jp = dir.join("adapter.json");
        let bytes = std::fs::read(&jp).map_err(|e| {
            Error::file(
                &jp,
                format!(
                    "cannot read ({e}); is {} an adapter folder from `frugal sft`?",
                    dir.display()
                ),
            )
        })?;
        let info: AdapterInfo = serde_json::from_slice(&bytes)
            .map_err(|e| Error::file(&jp, format!("not an adapter description: {e}")))?;
        info.lora
            .check()
            .map_err(|e| Error::file(&jp, e.to_string()))?;
        let tp = dir.join("adapter.safetensors");
        let tensors = candle_core::safetensors::load(&tp, &Device::Cpu)
            .map_err(|e| Error::file(&tp, format!("cannot read the adapter weights: {e}")))?
            .into_iter()
            .collect();
        Ok(Adapter { info, tensors })
    }

    /// Refuses a base other than the one the adapter was trained on, naming both.
    pub fn check_base(&self, base: &Path) -> Result<()> {
        let sha = file_sha256(base)?;
        if sha != self.info.base_sha256 {
            return Err(Error::Invalid(format!(
                "the adapter was trained on {} ({}, sha256 {}…), not on {} (sha256 {}…); use the base it was trained on",
                self.info.base_name,
                self.info.base_file,
                &self.info.base_sha256[..12.min(self.info.base_sha256.len())],
                base.display(),
                &sha[..12]
            )));
        }
        Ok(())
    }

    /// The update α/r · B·A of each adapted projection (out × in) by GGUF tensor name.
    pub fn deltas(&self) -> Result<Vec<(String, Tensor)>> {
        let scale = self.info.lora.scale();
        let mut out = vec![];
        for (name, a) in &self.tensors {
            let Some(stem) = name.strip_suffix(".lora_a") else {
                continue;
            };
            let b = self.tensors.get(&format!("{stem}.lora_b")).ok_or_else(|| {
                Error::Invalid(format!("the adapter has {name} but no {stem}.lora_b"))
            })?;
            let d = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * scale)?;
            out.push((format!("{stem}.weight"), d));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_linear_matches_matmul_and_passes_gradient_to_the_input_only() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap(); // 2 out x 3 in
        let x = Var::new(&[[[1f32, 0., -1.], [2., 1., 0.]]], &dev).unwrap(); // 1 x 2 x 3
        let (f, _) = frozen(w.clone()).unwrap();
        let y = x.as_tensor().apply_op1_arc(f).unwrap();
        let want = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
        assert_eq!(y.to_vec3::<f32>().unwrap(), want.to_vec3::<f32>().unwrap());
        let g = y.sum_all().unwrap().backward().unwrap();
        // d(sum y)/dx = column sums of W.
        assert_eq!(
            g.get(&x).unwrap().to_vec3::<f32>().unwrap(),
            vec![vec![vec![5f32, 7., 9.], vec![5., 7., 9.]]]
        );
    }
}
