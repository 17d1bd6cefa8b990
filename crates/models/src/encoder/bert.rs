//! BERT-family encoder (BERT, MiniLM, …) on candle, weights loaded by name from safetensors.
//!
//! Written here rather than taken from candle-transformers because candle's BERT cannot be
//! trained (its fused LayerNorm has no backward pass, its dropout is a no-op) and spends a third
//! of inference outside matrix products (generic softmax, slow erf-GELU). `train` switches
//! LayerNorm and softmax to plain tensor ops that autograd can follow (candle's fused ones
//! have no backward pass).

use super::ops::gelu_erf;
use crate::lowp::{PackedLinear, Precision};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;

/// The fields of a Hugging Face `config.json` that a BERT encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f32,
}

impl BertConfig {
    /// Sizes a forward pass can run with: at least one layer and one head, the hidden size a
    /// multiple of the heads, an epsilon and dropouts in range. The error names the field.
    pub fn check(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((f, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{f} is 0; it must be at least 1"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!(
                "layer_norm_eps {} must be a small positive number",
                self.layer_norm_eps
            ));
        }
        for (f, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{f} {p} must be in [0, 1)"));
            }
        }
        Ok(())
    }
}

fn default_dropout() -> f32 {
    0.1
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// LayerNorm with a fused inference path and a differentiable training path.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<Self> {
        // Some checkpoints name the parameters gamma/beta. Fresh variables start at 1 and 0.
        let one = candle_nn::Init::Const(1.0);
        let weight = vb
            .get_with_hints(size, "weight", one)
            .or_else(|_| vb.get_with_hints(size, "gamma", one))?;
        let bias = vb.get(size, "bias").or_else(|_| vb.get(size, "beta"))?;
        Ok(LayerNorm { weight, bias, eps })
    }

    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !train {
            return super::ops::add_layer_norm(x, None, &self.weight, &self.bias, self.eps as f32);
        }
        super::ops::layer_norm_train(x, &self.weight, &self.bias, self.eps as f32)
    }

    /// LayerNorm(x + residual), fused in inference.
    fn forward_add(
        &self,
        x: &Tensor,
        residual: &Tensor,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        if train {
            self.forward(&(x + residual)?, true)
        } else {
            super::ops::add_layer_norm(x, Some(residual), &self.weight, &self.bias, self.eps as f32)
        }
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
    /// Low-rank adapters on the query and value projections (LoRA), when added.
    lora_q: Option<Lora>,
    lora_v: Option<Lora>,
    /// The layer's projections packed in bf16 or int8 for inference (`Bert::set_precision`).
    packed: Option<PackedLayer>,
}

/// A layer's four matrix products in reduced precision: Q, K and V as one product (the input
/// converted once; Q's 1/√d folded in), the attention output, the feed-forward input (GELU
/// fused) and output.
struct PackedLayer {
    qkv: PackedLinear,
    attn_out: PackedLinear,
    inter: PackedLinear,
    out: PackedLinear,
}

/// `x·Wᵀ + b` of a packed layer as a candle op (inference only: no backward pass).
struct PackedOp<'a>(&'a PackedLinear);

impl CustomOp1 for PackedOp<'_> {
    fn name(&self) -> &'static str {
        "frugal-packed-linear"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = s.as_slice::<f32>()?;
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("packed linear: input must be contiguous")
        };
        let dims = l.shape().dims();
        let k = *dims.last().unwrap_or(&0);
        let m = (b - a).checked_div(k).unwrap_or(0);
        let mut out = vec![0f32; m * self.0.out_dim()];
        self.0.forward(&data[a..b], m, &mut out);
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.0.out_dim();
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// A linear layer; in training the bias is added by an op with a fast bias gradient.
fn linear(lin: &Linear, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
    match (train, lin.bias()) {
        (true, Some(b)) => {
            let y = match x.dims() {
                [b0, b1, k] => x
                    .reshape((b0 * b1, *k))?
                    .matmul(&lin.weight().t()?)?
                    .reshape((*b0, *b1, ()))?,
                _ => x.matmul(&lin.weight().t()?)?,
            };
            super::ops::add_bias(&y, b)
        }
        _ => lin.forward(x),
    }
}

/// The weight (out × in, row-major) and bias of a linear layer as plain numbers.
fn linear_parts(lin: &Linear) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    let w = lin.weight().flatten_all()?.to_vec1::<f32>()?;
    let b = match lin.bias() {
        Some(b) => b.to_vec1::<f32>()?,
        None => vec![0.0; lin.weight().dim(0)?],
    };
    Ok((w, b))
}

/// A low-rank adapter on a projection (Hu et al. 2021): y = W·x + b + s·B·(A·x), A (r × in)
/// random, B (out × r) zero, so the model is unchanged until B is trained; s = α / r.
struct Lora {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

impl Lora {
    fn apply(
        lin: &Linear,
        lora: &Option<Lora>,
        x: &Tensor,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let y = linear(lin, x, train)?;
        match lora {
            None => Ok(y),
            Some(l) => y + (x.matmul(&l.a.t()?)?.matmul(&l.b.t()?)? * l.scale)?,
        }
    }
}

/// A BERT encoder: token ids in, one hidden vector per token out.
pub struct Bert {
    pub config: BertConfig,
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    /// When true, every op is differentiable (LayerNorm and softmax without the fused kernels)
    /// and dropout is applied.
    pub train: bool,
    /// Dropout on hidden states (embeddings, attention output, feed-forward output) in training.
    pub hidden_dropout: f32,
    /// Dropout on attention probabilities in training.
    pub attention_dropout: f32,
    /// Seed of the next dropout mask (each mask takes the next number); see `reseed_dropout`.
    dropout_seed: std::sync::atomic::AtomicU64,
    /// Precision of the inference matrix products (training always runs in f32).
    precision: Precision,
}

impl Bert {
    /// Builds the encoder from `vb` (root of the checkpoint, with or without a `bert.` prefix).
    pub fn load(vb: VarBuilder, config: &BertConfig) -> candle_core::Result<Bert> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let c = config;
        let h = c.hidden_size;
        let e = vb.pp("embeddings");
        let word = candle_nn::embedding(c.vocab_size, h, e.pp("word_embeddings"))?;
        let position =
            candle_nn::embedding(c.max_position_embeddings, h, e.pp("position_embeddings"))?;
        let token_type = candle_nn::embedding(c.type_vocab_size, h, e.pp("token_type_embeddings"))?;
        let emb_norm = LayerNorm::load(e.pp("LayerNorm"), h, c.layer_norm_eps)?;
        let mut layers = vec![];
        for i in 0..c.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            layers.push(Layer {
                query: candle_nn::linear(h, h, a.pp("self.query"))?,
                key: candle_nn::linear(h, h, a.pp("self.key"))?,
                value: candle_nn::linear(h, h, a.pp("self.value"))?,
                attn_out: candle_nn::linear(h, h, a.pp("output.dense"))?,
                attn_norm: LayerNorm::load(a.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
                inter: candle_nn::linear(h, c.intermediate_size, l.pp("intermediate.dense"))?,
                out: candle_nn::linear(c.intermediate_size, h, l.pp("output.dense"))?,
                out_norm: LayerNorm::load(l.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
                lora_q: None,
                lora_v: None,
                packed: None,
            });
        }
        Ok(Bert {
            config: config.clone(),
            word,
            position,
            token_type,
            emb_norm,
            layers,
            train: false,
            hidden_dropout: config.hidden_dropout_prob,
            attention_dropout: config.attention_probs_dropout_prob,
            dropout_seed: Default::default(),
            precision: Precision::F32,
        })
    }

    /// Runs inference's matrix products in `precision` (bf16 or int8 pack the current weights;
    /// f32 drops the packed copies). Training is unaffected: it always uses the f32 weights.
    /// The caller resolves the precision against the CPU first (`Precision::resolve`); an
    /// unresolved one still runs, on the scalar kernels.
    pub fn set_precision(&mut self, precision: Precision) -> candle_core::Result<()> {
        if precision != Precision::F32 && self.has_lora() {
            candle_core::bail!(
                "--precision {precision}: this encoder has LoRA adapters; merge them into a checkpoint first (reduced precision packs plain weights)"
            );
        }
        let nh = self.config.num_attention_heads;
        let h = self.config.hidden_size;
        let scale = 1.0 / ((h / nh) as f32).sqrt();
        for layer in &mut self.layers {
            layer.packed = if precision == Precision::F32 {
                None
            } else {
                let (mut w, mut b) = linear_parts(&layer.query)?;
                w.iter_mut().chain(b.iter_mut()).for_each(|v| *v *= scale);
                for lin in [&layer.key, &layer.value] {
                    let (wk, bk) = linear_parts(lin)?;
                    w.extend(wk);
                    b.extend(bk);
                }
                let pack = |lin: &Linear, gelu: bool| -> candle_core::Result<PackedLinear> {
                    let (w, b) = linear_parts(lin)?;
                    let (n, k) = lin.weight().dims2()?;
                    Ok(PackedLinear::new(&w, &b, n, k, precision, gelu))
                };
                // int8 keeps Q, K, V (a quarter of the products) in bf16 where the CPU has it:
                // quantising their input alone took the worst embedding of the accuracy guard
                // below cosine 0.999 (0.9989; 0.9993 with them in bf16, at the same speed).
                let qkv_precision = if precision == Precision::Int8 && crate::lowp::has_bf16() {
                    Precision::Bf16
                } else {
                    precision
                };
                Some(PackedLayer {
                    qkv: PackedLinear::new(&w, &b, 3 * h, h, qkv_precision, false),
                    attn_out: pack(&layer.attn_out, false)?,
                    inter: pack(&layer.inter, true)?,
                    out: pack(&layer.out, false)?,
                })
            };
        }
        self.precision = precision;
        Ok(())
    }

    /// Precision of the inference matrix products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Adds rank-`rank` LoRA adapters to every layer's query and value projections, as
    /// variables in `varmap` named `encoder.layer.N.attention.self.{query,value}.lora_{a,b}`
    /// (A uniform in ±1/√hidden from `seed`, B zero; scale `alpha / rank`). Training only those
    /// (and a head) sends a few hundred KB per federated update instead of the whole model.
    pub fn add_lora(
        &mut self,
        varmap: &candle_nn::VarMap,
        rank: usize,
        alpha: f64,
        seed: u64,
    ) -> candle_core::Result<()> {
        use rand::{Rng, SeedableRng};
        if rank == 0 || rank > self.config.hidden_size {
            candle_core::bail!(
                "LoRA rank {rank} must be between 1 and the hidden size {}",
                self.config.hidden_size
            );
        }
        let h = self.config.hidden_size;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x6c6f_7261);
        let bound = 1.0 / (h as f32).sqrt();
        let mut map = varmap.data().lock().expect("varmap lock");
        let mut make = |name: String, dims: (usize, usize), random: bool| {
            let vals: Vec<f32> = (0..dims.0 * dims.1)
                .map(|_| {
                    if random {
                        rng.random_range(-bound..bound)
                    } else {
                        0.0
                    }
                })
                .collect();
            let var = candle_core::Var::from_vec(vals, dims, &candle_core::Device::Cpu)?;
            let t = var.as_tensor().clone();
            map.insert(name, var);
            Ok::<Tensor, candle_core::Error>(t)
        };
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for which in ["query", "value"] {
                let base = format!("encoder.layer.{i}.attention.self.{which}");
                let lora = Lora {
                    a: make(format!("{base}.lora_a"), (rank, h), true)?,
                    b: make(format!("{base}.lora_b"), (h, rank), false)?,
                    scale: alpha / rank as f64,
                };
                if which == "query" {
                    layer.lora_q = Some(lora);
                } else {
                    layer.lora_v = Some(lora);
                }
            }
        }
        Ok(())
    }

    /// True when LoRA adapters were added.
    pub fn has_lora(&self) -> bool {
        self.layers.iter().any(|l| l.lora_q.is_some())
    }

    /// The query and value weights with the adapters folded in (W + s·B·A), by their names:
    /// written instead of the separate adapters, a checkpoint loads as a plain encoder.
    pub fn merged_lora_weights(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut out = vec![];
        for (i, layer) in self.layers.iter().enumerate() {
            for (which, lin, lora) in [
                ("query", &layer.query, &layer.lora_q),
                ("value", &layer.value, &layer.lora_v),
            ] {
                if let Some(l) = lora {
                    let w = (lin.weight() + (l.b.matmul(&l.a)? * l.scale)?)?;
                    out.push((
                        format!("encoder.layer.{i}.attention.self.{which}.weight"),
                        w,
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Makes the dropout masks of the next forward pass a function of `seed` (the trainer seeds
    /// each batch, so that a resumed run repeats an uninterrupted one exactly).
    pub fn reseed_dropout(&self, seed: u64) {
        // Spread consecutive seeds apart: each forward pass takes a few dozen numbers.
        let s = seed.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (seed >> 31);
        self.dropout_seed
            .store(s, std::sync::atomic::Ordering::Relaxed);
    }

    /// Dropout with probability `p` while training; the identity otherwise.
    fn drop(&self, x: Tensor, p: f32) -> candle_core::Result<Tensor> {
        if self.train && p > 0.0 {
            let seed = self
                .dropout_seed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            super::ops::dropout(&x, p, seed)
        } else {
            Ok(x)
        }
    }

    /// `ids`, `mask`: (batch, len) u32 tensors, mask 1 for real tokens. Returns (batch, len, hidden).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let mut out = self.forward_layers(ids, mask, false)?;
        Ok(out.pop().expect("at least the last layer"))
    }

    /// Like `forward`, but with every layer's output when `all` (for hidden-state distillation);
    /// otherwise only the last one.
    pub fn forward_layers(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        all: bool,
    ) -> candle_core::Result<Vec<Tensor>> {
        let (b, len) = ids.dims2()?;
        let c = &self.config;
        let (h, nh) = (c.hidden_size, c.num_attention_heads);
        let dh = h / nh;
        let dev = ids.device();
        let pos = Tensor::arange(0u32, len as u32, dev)?;
        let types = Tensor::zeros((b, len), DType::U32, dev)?;
        let x = self
            .word
            .forward(ids)?
            .broadcast_add(&self.position.forward(&pos)?)?
            .add(&self.token_type.forward(&types)?)?;
        let x = self.emb_norm.forward(&x, self.train)?;
        let mut x = self.drop(x, self.hidden_dropout)?.reshape((b * len, h))?;
        // Additive mask: 0 for tokens, a large negative number for padding; none is needed when
        // no text of the batch is padded (the common case with length-sorted batches).
        let padded = mask.min_all()?.to_scalar::<u32>()? == 0;
        let bias = if padded {
            Some(((mask.to_dtype(DType::F32)? - 1.0)? * 1e30)?.reshape((b, 1, 1, len))?)
        } else {
            None
        };
        let scale = 1.0 / (dh as f64).sqrt();
        let mut outs = vec![];
        for layer in &self.layers {
            let heads = |t: Tensor| t.reshape((b, len, nh, dh))?.transpose(1, 2)?.contiguous();
            let packed = layer.packed.as_ref().filter(|_| !self.train);
            let ctx = match packed {
                Some(p) if dh % 16 == 0 => {
                    // Attention fused, straight from the Q/K/V product's rows.
                    let qkv = x.apply_op1_no_bwd(&PackedOp(&p.qkv))?;
                    super::ops::attention(&qkv, b, len, nh, padded.then_some(mask))?
                }
                _ => {
                    let (q, k, v) = if let Some(p) = packed {
                        let qkv = x.apply_op1_no_bwd(&PackedOp(&p.qkv))?;
                        (
                            heads(qkv.narrow(1, 0, h)?)?,
                            heads(qkv.narrow(1, h, h)?)?,
                            heads(qkv.narrow(1, 2 * h, h)?)?,
                        )
                    } else {
                        (
                            heads(
                                (Lora::apply(&layer.query, &layer.lora_q, &x, self.train)?
                                    * scale)?,
                            )?,
                            heads(linear(&layer.key, &x, self.train)?)?,
                            heads(Lora::apply(&layer.value, &layer.lora_v, &x, self.train)?)?,
                        )
                    };
                    let mut scores = q.matmul(&k.t()?)?;
                    if let Some(bias) = &bias {
                        scores = scores.broadcast_add(bias)?;
                    }
                    // candle's fused softmax has no backward pass (the graph would be cut
                    // before Q and K); training takes the generic one.
                    let probs = super::ops::softmax_last_dim(&scores)?;
                    let probs = self.drop(probs, self.attention_dropout)?;
                    probs.matmul(&v)?.transpose(1, 2)?.reshape((b * len, h))?
                }
            };
            if let Some(p) = packed {
                let a = ctx.apply_op1_no_bwd(&PackedOp(&p.attn_out))?;
                x = layer.attn_norm.forward_add(&a, &x, false)?;
                let i = x.apply_op1_no_bwd(&PackedOp(&p.inter))?;
                let o = i.apply_op1_no_bwd(&PackedOp(&p.out))?;
                x = layer.out_norm.forward_add(&o, &x, false)?;
            } else {
                let a = self.drop(
                    linear(&layer.attn_out, &ctx, self.train)?,
                    self.hidden_dropout,
                )?;
                x = layer.attn_norm.forward_add(&a, &x, self.train)?;
                let i = gelu_erf(&linear(&layer.inter, &x, self.train)?)?;
                let o = self.drop(linear(&layer.out, &i, self.train)?, self.hidden_dropout)?;
                x = layer.out_norm.forward_add(&o, &x, self.train)?;
            }
            if all {
                outs.push(x.reshape((b, len, h))?);
            }
        }
        if !all {
            outs.push(x.reshape((b, len, h))?);
        }
        Ok(outs)
    }
}

/// Names of the variables in `varmap` that `grads` leaves without a gradient or with an
/// all-zero one — except attention key biases, which cannot matter (they add the same q·b to
/// every score of a row). Empty when a loss reaches every trainable weight.
pub fn vars_without_gradient(
    varmap: &candle_nn::VarMap,
    grads: &candle_core::backprop::GradStore,
) -> Vec<String> {
    let vars = varmap.data().lock().expect("varmap lock");
    let mut missing: Vec<String> = vars
        .iter()
        .filter(|(name, v)| {
            let norm = grads.get(v.as_tensor()).and_then(|g| {
                g.sqr()
                    .and_then(|x| x.sum_all())
                    .and_then(|x| x.to_scalar::<f32>())
                    .ok()
            });
            !name.ends_with("attention.self.key.bias") && !norm.is_some_and(|n| n > 0.0)
        })
        .map(|(name, _)| name.clone())
        .collect();
    missing.sort();
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    #[test]
    fn configs_a_forward_pass_cannot_run_are_refused_by_field() {
        let cfg = |extra: &str| -> BertConfig {
            serde_json::from_str(&format!(
                r#"{{"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32, "max_position_embeddings": 20, {extra}}}"#
            ))
            .unwrap()
        };
        assert!(cfg(r#""num_hidden_layers": 2, "num_attention_heads": 4"#)
            .check()
            .is_ok());
        for (extra, field) in [
            (
                r#""num_hidden_layers": 2, "num_attention_heads": 0"#,
                "num_attention_heads is 0",
            ),
            (
                r#""num_hidden_layers": 0, "num_attention_heads": 4"#,
                "num_hidden_layers is 0",
            ),
            (
                r#""num_hidden_layers": 2, "num_attention_heads": 5"#,
                "not a multiple",
            ),
            (
                r#""num_hidden_layers": 2, "num_attention_heads": 4, "layer_norm_eps": -1"#,
                "layer_norm_eps",
            ),
        ] {
            let e = cfg(extra).check().unwrap_err();
            assert!(e.contains(field), "{e}");
        }
    }

    fn tiny() -> (VarMap, Bert) {
        let config: BertConfig = serde_json::from_str(
            r#"{"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 32, "max_position_embeddings": 20}"#,
        )
        .unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let bert = Bert::load(vb, &config).unwrap();
        (varmap, bert)
    }

    #[test]
    fn training_path_matches_inference_and_every_variable_gets_a_gradient() {
        let (varmap, mut bert) = tiny();
        let dev = Device::Cpu;
        let ids = Tensor::new(&[[1u32, 5, 7, 2, 0], [1, 9, 2, 0, 0]], &dev).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 0], [1, 1, 1, 0, 0]], &dev).unwrap();
        let fused = bert.forward(&ids, &mask).unwrap();
        bert.train = true;
        let (hd, ad) = (bert.hidden_dropout, bert.attention_dropout);
        (bert.hidden_dropout, bert.attention_dropout) = (0.0, 0.0);
        let plain = bert.forward(&ids, &mask).unwrap();
        let diff = crate::encoder::ops::max_diff(&fused, &plain);
        assert!(
            diff < 1e-4,
            "fused and differentiable LayerNorm differ by {diff}"
        );
        // With the config's dropout (0.1) the output changes, and gradients still reach all.
        (bert.hidden_dropout, bert.attention_dropout) = (hd, ad);
        assert_eq!(hd, 0.1);
        let dropped = bert.forward(&ids, &mask).unwrap();
        assert!(
            crate::encoder::ops::max_diff(&dropped, &plain) > 1e-3,
            "dropout changed nothing"
        );
        let loss = dropped.sqr().unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        assert_eq!(
            varmap.all_vars().len(),
            5 + 2 * 16,
            "embeddings and LayerNorm, 16 tensors a layer"
        );
        assert_eq!(vars_without_gradient(&varmap, &grads), Vec::<String>::new());
        // The check can fail: through the fused inference path the graph is cut.
        let cut = fused.sqr().unwrap().mean_all().unwrap().backward().unwrap();
        assert!(vars_without_gradient(&varmap, &cut).len() > 20);
    }
}
