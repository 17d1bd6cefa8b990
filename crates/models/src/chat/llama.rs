//! The llama-family transformer (GGUF architecture `llama`: SmolLM2 and its kin) read from a
//! GGUF file, executed on our quantised kernels with fp16-valued keys and values, as llama.cpp
//! does.
//!
//! Forward pass, per layer: RMSNorm -> Q/K/V -> RoPE (adjacent pairs, GGUF's layout) ->
//! causal grouped-query attention -> output projection -> residual -> RMSNorm -> SwiGLU MLP ->
//! residual. Tokens of a prompt go through as one batch so every weight is read once per batch,
//! on a team of as many threads as rayon's global pool has (`--threads`).

use super::parallel::{split, SharedBuf, SpinBarrier};
use super::quant::{QMatrix, WType};
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file;
use half::f16;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Hyper-parameters read from `llama.*` metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    w_gate: QMatrix,
    w_up: QMatrix,
    w_down: QMatrix,
}

/// Weights of a llama-family model.
pub struct Llama {
    pub config: LlamaConfig,
    tok_embd: QMatrix,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    /// `output.weight`, or the token embedding when tied.
    output: Option<QMatrix>,
    /// cos/sin per (position, pair), grown on demand.
    rope: std::sync::RwLock<(usize, Vec<f32>, Vec<f32>)>,
}

impl LlamaConfig {
    /// RoPE's cos and sin per (position, pair) for `n` positions, as ggml computes them:
    /// theta_i = p · base^(−2i/d), by repeated multiplication in f32.
    pub fn rope_table(&self, n: usize) -> (Vec<f32>, Vec<f32>) {
        let half = self.head_dim / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
        let theta_scale = self.rope_base.powf(-2.0 / self.head_dim as f32);
        for p in 0..n {
            let mut theta = p as f32;
            for _ in 0..half {
                cos.push(theta.cos());
                sin.push(theta.sin());
                theta *= theta_scale;
            }
        }
        (cos, sin)
    }
}

/// Per-sequence attention state: keys and values of every position seen so far, in fp16.
pub struct KvCache {
    /// Per layer, position-major keys and values: fp16 values (llama.cpp's cache type) held
    /// as f32, trading twice the memory for no conversion in the attention loop.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// The tokens whose keys and values are held, in order.
    tokens: Vec<u32>,
    kv_dim: usize,
    capacity: usize,
}

impl KvCache {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The tokens held, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// True when no token was processed yet.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The most tokens this cache (the context window) holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets the last tokens, keeping the first `len` (to reuse a shared prefix).
    /// Tokens at the start of `ids` that this cache already holds.
    pub fn common_prefix(&self, ids: &[u32]) -> usize {
        self.tokens
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// A new cache holding this one's first `n` tokens (their keys and values copied: far
    /// cheaper than computing them again).
    pub fn prefix_copy(&self, n: usize) -> KvCache {
        let n = n.min(self.tokens.len());
        let cut = |layers: &Vec<Vec<f32>>| -> Vec<Vec<f32>> {
            layers
                .iter()
                .map(|l| l[..n * self.kv_dim].to_vec())
                .collect()
        };
        KvCache {
            k: cut(&self.k),
            v: cut(&self.v),
            tokens: self.tokens[..n].to_vec(),
            kv_dim: self.kv_dim,
            capacity: self.capacity,
        }
    }

    pub fn truncate(&mut self, len: usize) {
        if len < self.tokens.len() {
            for l in 0..self.k.len() {
                self.k[l].truncate(len * self.kv_dim);
                self.v[l].truncate(len * self.kv_dim);
            }
            self.tokens.truncate(len);
        }
    }
}

/// Reads metadata values with errors that name the key.
pub(crate) struct Meta<'a> {
    pub content: &'a gguf_file::Content,
    pub path: &'a Path,
}

impl Meta<'_> {
    pub fn get(&self, key: &str) -> Result<&gguf_file::Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| Error::file(self.path, format!("GGUF metadata has no '{key}'")))
    }

    /// A non-negative integer of any GGUF integer type.
    pub fn usize(&self, key: &str) -> Result<usize> {
        use gguf_file::Value as V;
        let v = match self.get(key)? {
            V::U8(x) => Some(*x as u64),
            V::U16(x) => Some(*x as u64),
            V::U32(x) => Some(*x as u64),
            V::U64(x) => Some(*x),
            V::I8(x) => u64::try_from(*x).ok(),
            V::I16(x) => u64::try_from(*x).ok(),
            V::I32(x) => u64::try_from(*x).ok(),
            V::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        v.and_then(|x| usize::try_from(x).ok()).ok_or_else(|| {
            Error::file(
                self.path,
                format!("GGUF metadata '{key}' is not a non-negative integer"),
            )
        })
    }

    /// Like `usize`, but also within `range` (guards allocations against corrupt files).
    pub fn usize_in(&self, key: &str, range: std::ops::RangeInclusive<usize>) -> Result<usize> {
        let v = self.usize(key)?;
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(Error::file(
                self.path,
                format!(
                    "GGUF metadata '{key}' = {v} is outside {}..={}; is the file corrupt?",
                    range.start(),
                    range.end()
                ),
            ))
        }
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        self.get(key)?
            .to_f32()
            .map_err(|e| Error::file(self.path, format!("GGUF metadata '{key}': {e}")))
    }

    pub fn string(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .to_string()
            .map(|s| s.as_str())
            .map_err(|e| Error::file(self.path, format!("GGUF metadata '{key}': {e}")))
    }
}

/// Architectures whose tensors and hyper-parameters follow the llama layout.
pub const SUPPORTED_ARCHS: &[&str] = &["llama"];

impl Llama {
    /// Loads the weights. `file` must be positioned anywhere; tensors are read by offset.
    pub(crate) fn load(
        content: &gguf_file::Content,
        file: &mut File,
        path: &Path,
    ) -> Result<Llama> {
        let meta = Meta { content, path };
        let arch = meta.string("general.architecture")?;
        if !SUPPORTED_ARCHS.contains(&arch) {
            return Err(Error::file(
                path,
                format!(
                    "unsupported model architecture '{arch}'; frugal runs: {}",
                    SUPPORTED_ARCHS.join(", ")
                ),
            ));
        }
        let n_embd = meta.usize("llama.embedding_length")?;
        let n_head = meta.usize("llama.attention.head_count")?;
        let n_head_kv = meta
            .usize("llama.attention.head_count_kv")
            .unwrap_or(n_head);
        let head_dim = n_embd / n_head.max(1);
        if n_head == 0 || n_embd % n_head != 0 || n_head % n_head_kv.max(1) != 0 {
            return Err(Error::file(
                path,
                "inconsistent attention head counts in GGUF metadata",
            ));
        }
        let tok_embd_info = content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| Error::file(path, "GGUF has no token_embd.weight tensor"))?;
        let n_vocab = tok_embd_info.shape.dims().first().copied().unwrap_or(0);
        let config = LlamaConfig {
            n_layer: meta.usize_in("llama.block_count", 1..=1024)?,
            n_embd,
            n_ff: meta.usize_in("llama.feed_forward_length", 1..=1 << 20)?,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            n_ctx_train: match meta.get("llama.context_length") {
                Ok(_) => meta.usize_in("llama.context_length", 1..=1 << 20)?,
                Err(_) => 2048,
            },
            rope_base: meta.f32("llama.rope.freq_base").unwrap_or(10000.0),
            rms_eps: meta.f32("llama.attention.layer_norm_rms_epsilon")?,
        };
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut read = |name: &str| -> Result<(Vec<usize>, WType, Vec<u8>)> {
            let info = content
                .tensor_infos
                .get(name)
                .ok_or_else(|| Error::file(path, format!("GGUF has no tensor '{name}'")))?;
            let wtype = WType::from_ggml(info.ggml_dtype).ok_or_else(|| {
                Error::file(
                    path,
                    format!(
                        "tensor '{name}' is {:?}; frugal runs F32, F16, Q4_0, Q4_1 and Q8_0 weights",
                        info.ggml_dtype
                    ),
                )
            })?;
            let dims = info.shape.dims().to_vec();
            let elems: usize = dims.iter().product();
            let nbytes = elems / wtype.block_len() * wtype.block_bytes();
            let start = content.tensor_data_offset + info.offset;
            if start + nbytes as u64 > file_len {
                return Err(Error::file(
                    path,
                    format!(
                        "truncated GGUF: tensor '{name}' ends at byte {} but the file has {file_len}; fetch the file again",
                        start + nbytes as u64
                    ),
                ));
            }
            let mut data = vec![0u8; nbytes];
            file.seek(SeekFrom::Start(start))
                .map_err(|e| Error::io(path, e))?;
            file.read_exact(&mut data).map_err(|e| Error::io(path, e))?;
            Ok((dims, wtype, data))
        };
        // candle lists dims slowest first: (rows, cols), cols being the input dimension.
        let mut matrix = |name: &str, rows: usize, cols: usize| -> Result<QMatrix> {
            let (dims, wtype, data) = read(name)?;
            if dims.last() != Some(&cols) || dims.iter().product::<usize>() != rows * cols {
                return Err(Error::file(
                    path,
                    format!("tensor '{name}' has shape {dims:?}, expected [{rows}, {cols}]"),
                ));
            }
            QMatrix::new(wtype, rows, cols, data)
                .map_err(|e| Error::file(path, format!("tensor '{name}': {e}")))
        };
        let c = &config;
        let kv_dim = c.n_head_kv * c.head_dim;
        let tok_embd = matrix("token_embd.weight", c.n_vocab, c.n_embd)?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(matrix("output.weight", c.n_vocab, c.n_embd)?)
        } else {
            None
        };
        let mut layers = Vec::new();
        for i in 0..c.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                wq: matrix(&p("attn_q"), c.n_embd, c.n_embd)?,
                wk: matrix(&p("attn_k"), kv_dim, c.n_embd)?,
                wv: matrix(&p("attn_v"), kv_dim, c.n_embd)?,
                wo: matrix(&p("attn_output"), c.n_embd, c.n_embd)?,
                w_gate: matrix(&p("ffn_gate"), c.n_ff, c.n_embd)?,
                w_up: matrix(&p("ffn_up"), c.n_ff, c.n_embd)?,
                w_down: matrix(&p("ffn_down"), c.n_embd, c.n_ff)?,
                attn_norm: vec![],
                ffn_norm: vec![],
            });
        }
        let mut vector = |name: &str, len: usize| -> Result<Vec<f32>> {
            let m = matrix(name, 1, len)?;
            let mut v = vec![0.0; len];
            m.dequantize_row(0, &mut v);
            Ok(v)
        };
        for (i, layer) in layers.iter_mut().enumerate() {
            layer.attn_norm = vector(&format!("blk.{i}.attn_norm.weight"), c.n_embd)?;
            layer.ffn_norm = vector(&format!("blk.{i}.ffn_norm.weight"), c.n_embd)?;
        }
        let out_norm = vector("output_norm.weight", c.n_embd)?;
        Ok(Llama {
            config,
            tok_embd,
            layers,
            out_norm,
            output,
            rope: std::sync::RwLock::new((0, vec![], vec![])),
        })
    }

    /// Adds `delta` (rows × cols, row-major) to the projection `blk.{i}.{proj}.weight` (a LoRA
    /// update merged in), which is then held in Q8_0: finer than the 4-bit bases (which would
    /// round a small update away) and on the runtime's fast integer kernels.
    pub fn add_to_weight(&mut self, name: &str, delta: &[f32]) -> Result<()> {
        let bad = || {
            Error::Invalid(format!(
                "the adapter names '{name}', which this model has no projection for"
            ))
        };
        let rest = name.strip_prefix("blk.").ok_or_else(bad)?;
        let (i, proj) = rest.split_once('.').ok_or_else(bad)?;
        let i: usize = i.parse().map_err(|_| bad())?;
        let layer = self.layers.get_mut(i).ok_or_else(bad)?;
        let m = match proj.strip_suffix(".weight").ok_or_else(bad)? {
            "attn_q" => &mut layer.wq,
            "attn_k" => &mut layer.wk,
            "attn_v" => &mut layer.wv,
            "attn_output" => &mut layer.wo,
            "ffn_gate" => &mut layer.w_gate,
            "ffn_up" => &mut layer.w_up,
            "ffn_down" => &mut layer.w_down,
            _ => return Err(bad()),
        };
        if delta.len() != m.rows * m.cols {
            return Err(Error::Invalid(format!(
                "the adapter's update for '{name}' has {} values; the weight is {}x{}",
                delta.len(),
                m.rows,
                m.cols
            )));
        }
        let mut merged = vec![0f32; m.rows * m.cols];
        for (r, out) in merged.chunks_exact_mut(m.cols).enumerate() {
            m.dequantize_row(r, out);
            for (w, d) in out.iter_mut().zip(&delta[r * m.cols..(r + 1) * m.cols]) {
                *w += d;
            }
        }
        let t = candle_core::Tensor::from_vec(merged, (m.rows, m.cols), &candle_core::Device::Cpu)?;
        let q =
            candle_core::quantized::QTensor::quantize(&t, candle_core::quantized::GgmlDType::Q8_0)?;
        *m = QMatrix::new(WType::Q8_0, m.rows, m.cols, q.data()?.to_vec())?;
        Ok(())
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        self.tok_embd.nbytes()
            + self.output.as_ref().map_or(0, |o| o.nbytes())
            + self
                .layers
                .iter()
                .map(|l| {
                    l.wq.nbytes()
                        + l.wk.nbytes()
                        + l.wv.nbytes()
                        + l.wo.nbytes()
                        + l.w_gate.nbytes()
                        + l.w_up.nbytes()
                        + l.w_down.nbytes()
                })
                .sum::<usize>()
    }

    /// An empty KV cache for a context window of `n_ctx` tokens.
    pub fn new_cache(&self, n_ctx: usize) -> KvCache {
        KvCache {
            k: vec![vec![]; self.config.n_layer],
            v: vec![vec![]; self.config.n_layer],
            tokens: vec![],
            kv_dim: self.config.n_head_kv * self.config.head_dim,
            capacity: n_ctx,
        }
    }

    fn ensure_rope(&self, n_pos: usize) {
        if self.rope.read().expect("rope lock").0 >= n_pos {
            return;
        }
        let mut g = self.rope.write().expect("rope lock");
        let n = n_pos.next_power_of_two().max(256);
        let (cos, sin) = self.config.rope_table(n);
        *g = (n, cos, sin);
    }

    /// Runs `tokens` at the cache's next positions and returns the logits of the last token
    /// (all tokens' logits when `all_logits`, `tokens.len()` x vocab).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 {
            return Err(Error::Invalid("no tokens to run".into()));
        }
        let rows = if all_logits { n } else { 1 };
        self.run(tokens, &mut [cache], &vec![0; n], rows)
    }

    /// One decode step of several sequences at once: `tokens[i]` runs at the next position of
    /// `caches[i]`. The weights are read once for all of them (the matrix products take one
    /// row per sequence), which is what makes serving concurrent requests cheaper than one
    /// after another. Returns each sequence's logits, `tokens.len()` x vocab.
    pub fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Vec<f32>> {
        if tokens.is_empty() || tokens.len() != caches.len() {
            return Err(Error::Invalid(format!(
                "{} tokens for {} sequences: one each",
                tokens.len(),
                caches.len()
            )));
        }
        let seq: Vec<usize> = (0..tokens.len()).collect();
        self.run(tokens, caches, &seq, tokens.len())
    }

    /// Runs rows `tokens`, row t of sequence `seq[t]` (rows of one sequence in order, at its
    /// cache's next positions); logits for the last `rows` rows.
    fn run(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        seq: &[usize],
        rows: usize,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let n = tokens.len();
        let mut added = vec![0usize; caches.len()];
        let mut pos = Vec::with_capacity(n);
        for &sq in seq {
            pos.push(caches[sq].len() + added[sq]);
            added[sq] += 1;
        }
        for (cache, &more) in caches.iter().zip(&added) {
            if cache.len() + more > cache.capacity {
                return Err(Error::Invalid(format!(
                    "{} tokens do not fit the context window of {} ({} already used)",
                    more,
                    cache.capacity,
                    cache.len()
                )));
            }
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.n_vocab
            )));
        }
        self.ensure_rope(pos.iter().max().map_or(0, |p| p + 1));
        let rope = self.rope.read().expect("rope lock");
        let d = c.n_embd;
        let mut x = vec![0.0f32; n * d];
        for (t, &tok) in tokens.iter().enumerate() {
            self.tok_embd
                .dequantize_row(tok as usize, &mut x[t * d..(t + 1) * d]);
        }
        let kv_dim = c.n_head_kv * c.head_dim;
        // Each cache grows by its new positions up front, so that each thread writes its own
        // part of them (no serial step, one barrier fewer per layer).
        let grown = |layers: &mut Vec<Vec<f32>>, total: usize| -> Vec<SharedBuf> {
            layers
                .iter_mut()
                .map(|l| {
                    let mut v = std::mem::take(l);
                    v.resize(total, 0.0);
                    SharedBuf::new(v)
                })
                .collect()
        };
        let (mut kc, mut vc) = (vec![], vec![]);
        for (cache, &more) in caches.iter_mut().zip(&added) {
            let total = (cache.len() + more) * kv_dim;
            kc.push(grown(&mut cache.k, total));
            vc.push(grown(&mut cache.v, total));
        }
        let bufs = Buffers {
            x: SharedBuf::new(x),
            q: SharedBuf::new(vec![0.0; n * d]),
            k: SharedBuf::new(vec![0.0; n * kv_dim]),
            v: SharedBuf::new(vec![0.0; n * kv_dim]),
            att: SharedBuf::new(vec![0.0; n * d]),
            g: SharedBuf::new(vec![0.0; n * c.n_ff]),
            u: SharedBuf::new(vec![0.0; n * c.n_ff]),
            logits: SharedBuf::new(vec![0.0; rows * c.n_vocab]),
            kc,
            vc,
        };
        // More threads than cores only wait on each other at the barriers.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let nth = rayon::current_num_threads().clamp(1, cores);
        let barrier = SpinBarrier::new(nth);
        let step = Step {
            tokens,
            seq,
            pos: &pos,
            rows,
            cos: &rope.1,
            sin: &rope.2,
        };
        if nth == 1 {
            self.run_thread(&step, &bufs, 0, 1, &barrier);
        } else {
            rayon::broadcast(|ctx| {
                if ctx.index() < nth {
                    self.run_thread(&step, &bufs, ctx.index(), nth, &barrier)
                }
            });
        }
        for (cache, (ks, vs)) in caches.iter_mut().zip(bufs.kc.into_iter().zip(bufs.vc)) {
            for (li, (k, v)) in ks.into_iter().zip(vs).enumerate() {
                cache.k[li] = k.into_inner();
                cache.v[li] = v.into_inner();
            }
        }
        for (&tok, &sq) in tokens.iter().zip(seq) {
            caches[sq].tokens.push(tok);
        }
        Ok(bufs.logits.into_inner())
    }

    /// One thread's part of a forward pass: every product is split by weight rows, attention by
    /// (token, head); a barrier follows each step whose results another thread reads.
    fn run_thread(&self, s: &Step, b: &Buffers, tid: usize, nth: usize, barrier: &SpinBarrier) {
        let c = &self.config;
        let (n, d, hd) = (s.tokens.len(), c.n_embd, c.head_dim);
        let kv_dim = c.n_head_kv * hd;
        let mut h = vec![0.0f32; n * d];
        // SAFETY (every `unsafe` below): between two barriers each buffer is either only read,
        // or written in disjoint parts: rows of a product from `split_pairs`, attention units
        // from `split`.
        for (li, layer) in self.layers.iter().enumerate() {
            // Attention block. Every thread normalises and quantises the input itself: cheaper
            // than another barrier.
            rms_norm(unsafe { b.x.read() }, &layer.attn_norm, c.rms_eps, &mut h);
            let acts = layer.wq.quantize_acts(&h, n);
            // Files may mix weight types between Q, K and V (and gate and up).
            let acts_k = layer.wk.reuse_acts(&acts, &h, n);
            let acts_v = layer.wv.reuse_acts(&acts, &h, n);
            // Rows split in pairs, so RoPE's pairs never straddle two threads: each thread
            // rotates and caches the rows it computed (no serial step, one barrier fewer).
            // (Handing rows out in chunks to whichever thread asks was measured slower.)
            unsafe {
                {
                    let r = split_pairs(d, tid, nth);
                    layer.wq.matmul_rows(&acts, n, r.clone(), b.q.ptr(), false);
                    for t in 0..n {
                        let (cs, sn) = s.rope(t, hd);
                        rope_rows(b.q.part(t * d + r.start, r.len()), r.start, hd, cs, sn);
                    }
                }
                {
                    let r = split_pairs(kv_dim, tid, nth);
                    layer
                        .wk
                        .matmul_rows(&acts_k, n, r.clone(), b.k.ptr(), false);
                    for t in 0..n {
                        let (cs, sn) = s.rope(t, hd);
                        let k = b.k.part(t * kv_dim + r.start, r.len());
                        rope_rows(k, r.start, hd, cs, sn);
                        let at = s.pos[t] * kv_dim + r.start;
                        for (c, &x) in b.kc[s.seq[t]][li]
                            .part(at, r.len())
                            .iter_mut()
                            .zip(k.iter())
                        {
                            *c = f16::from_f32(x).to_f32();
                        }
                    }
                }
                {
                    let r = split_pairs(kv_dim, tid, nth);
                    layer
                        .wv
                        .matmul_rows(&acts_v, n, r.clone(), b.v.ptr(), false);
                    for t in 0..n {
                        let v = b.v.part(t * kv_dim + r.start, r.len());
                        let at = s.pos[t] * kv_dim + r.start;
                        for (c, &x) in b.vc[s.seq[t]][li]
                            .part(at, r.len())
                            .iter_mut()
                            .zip(v.iter())
                        {
                            *c = f16::from_f32(x).to_f32();
                        }
                    }
                }
            }
            layer.wo.prefetch_first(split(d, tid, nth));
            barrier.wait();
            {
                let q = unsafe { b.q.read() };
                for unit in split(n * c.n_head, tid, nth) {
                    let t = unit / c.n_head;
                    let (kc, vc) =
                        unsafe { (b.kc[s.seq[t]][li].read(), b.vc[s.seq[t]][li].read()) };
                    let out = unsafe { b.att.part(unit * hd, hd) };
                    attend(c, q, kc, vc, s.pos[t], unit, out);
                }
            }
            barrier.wait();
            let acts = layer.wo.quantize_acts(unsafe { b.att.read() }, n);
            // Residual fused: x += att · Woᵀ, each thread on its rows.
            {
                let r = split(d, tid, nth);
                unsafe { layer.wo.matmul_rows(&acts, n, r, b.x.ptr(), true) };
            }
            let mine = split(c.n_ff, tid, nth);
            layer.w_gate.prefetch_first(mine.clone());
            layer.w_up.prefetch_first(mine);
            barrier.wait();

            // Feed-forward block (SwiGLU): gate and up split the same way, so each thread can
            // apply SiLU(g)·u to its own rows without waiting.
            rms_norm(unsafe { b.x.read() }, &layer.ffn_norm, c.rms_eps, &mut h);
            let acts = layer.w_gate.quantize_acts(&h, n);
            let acts_up = layer.w_up.reuse_acts(&acts, &h, n);
            {
                let mine = split(c.n_ff, tid, nth);
                unsafe {
                    layer
                        .w_gate
                        .matmul_rows(&acts, n, mine.clone(), b.g.ptr(), false);
                    layer
                        .w_up
                        .matmul_rows(&acts_up, n, mine.clone(), b.u.ptr(), false);
                }
                for t in 0..n {
                    let (g, u) = unsafe {
                        (
                            b.g.part(t * c.n_ff + mine.start, mine.len()),
                            b.u.part(t * c.n_ff + mine.start, mine.len()),
                        )
                    };
                    for (gv, uv) in g.iter_mut().zip(u.iter()) {
                        *gv = ggml::silu(*gv) * uv;
                    }
                }
            }
            layer.w_down.prefetch_first(split(d, tid, nth));
            barrier.wait();
            let acts = layer.w_down.quantize_acts(unsafe { b.g.read() }, n);
            {
                let r = split(d, tid, nth);
                unsafe { layer.w_down.matmul_rows(&acts, n, r, b.x.ptr(), true) };
            }
            match self.layers.get(li + 1) {
                Some(next) => {
                    next.wq.prefetch_first(split_pairs(d, tid, nth));
                    next.wk.prefetch_first(split_pairs(kv_dim, tid, nth));
                    next.wv.prefetch_first(split_pairs(kv_dim, tid, nth));
                }
                None => self
                    .output
                    .as_ref()
                    .unwrap_or(&self.tok_embd)
                    .prefetch_first(split(c.n_vocab, tid, nth)),
            }
            barrier.wait();
        }
        let x = unsafe { b.x.read() };
        let last = &x[(n - s.rows) * d..];
        let mut hn = vec![0.0f32; s.rows * d];
        rms_norm(last, &self.out_norm, c.rms_eps, &mut hn);
        let head = self.output.as_ref().unwrap_or(&self.tok_embd);
        let acts = head.quantize_acts(&hn, s.rows);
        {
            let r = split(c.n_vocab, tid, nth);
            unsafe { head.matmul_rows(&acts, s.rows, r, b.logits.ptr(), false) };
        }
    }
}

/// What every thread of a forward pass reads.
struct Step<'a> {
    tokens: &'a [u32],
    /// Per row: its sequence (cache) and position.
    seq: &'a [usize],
    pos: &'a [usize],
    /// Rows of logits wanted (1, or every token's).
    rows: usize,
    cos: &'a [f32],
    sin: &'a [f32],
}

/// The activations the threads of a forward pass share.
struct Buffers {
    x: SharedBuf,
    q: SharedBuf,
    k: SharedBuf,
    v: SharedBuf,
    att: SharedBuf,
    g: SharedBuf,
    u: SharedBuf,
    logits: SharedBuf,
    /// Per sequence and layer, the KV cache's keys and values, grown by the new positions.
    kc: Vec<Vec<SharedBuf>>,
    vc: Vec<Vec<SharedBuf>>,
}

impl Step<'_> {
    /// RoPE's cosines and sines at token `t`'s position.
    fn rope(&self, t: usize, hd: usize) -> (&[f32], &[f32]) {
        let p = self.pos[t] * hd / 2;
        (&self.cos[p..p + hd / 2], &self.sin[p..p + hd / 2])
    }
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        // As ggml: each square in f32, the sum in f64.
        let ss: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
        let scale = 1.0 / ((ss / d as f64) as f32 + eps).sqrt();
        for ((o, &xv), &wv) in or.iter_mut().zip(xr).zip(w) {
            *o = xv * scale * wv;
        }
    }
}

/// The part of `0..len` that thread `tid` of `nth` handles, in whole pairs (an odd last row
/// goes to the last thread).
fn split_pairs(len: usize, tid: usize, nth: usize) -> std::ops::Range<usize> {
    let r = split(len / 2, tid, nth);
    let end = if tid + 1 == nth { len } else { 2 * r.end };
    2 * r.start..end
}

/// Rotates adjacent pairs (x[2i], x[2i+1]) by the position's angle (GGUF llama layout), for
/// rows `start..start + x.len()` of one token's heads (`start` even): each pair by its place
/// within its head. (ggml's C compiled with FMA contraction fuses the first product of each
/// line.)
fn rope_rows(x: &mut [f32], start: usize, hd: usize, cos: &[f32], sin: &[f32]) {
    for (j, pair) in x.chunks_exact_mut(2).enumerate() {
        let i = ((start + 2 * j) % hd) / 2;
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a.mul_add(cos[i], -(b * sin[i]));
        pair[1] = a.mul_add(sin[i], b * cos[i]);
    }
}

/// Causal grouped-query attention for one (token, head) `unit` of the new queries against the
/// cache (which already holds them). Like llama.cpp with an fp16 cache, queries are rounded to
/// fp16 before the dot product.
fn attend(
    c: &LlamaConfig,
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    pos: usize,
    unit: usize,
    o: &mut [f32],
) {
    let (d, hd, kv_dim) = (c.n_embd, c.head_dim, c.n_head_kv * c.head_dim);
    let group = c.n_head / c.n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let (t, h) = (unit / c.n_head, unit % c.n_head);
    let head = |p: usize| (p * kv_dim + (h / group) * hd)..(p * kv_dim + (h / group + 1) * hd);
    let qh: Vec<f32> = q[t * d + h * hd..t * d + (h + 1) * hd]
        .iter()
        .map(|&v| f16::from_f32(v).to_f32())
        .collect();
    let n_keys = pos + 1;
    let mut scores: Vec<f32> = (0..n_keys)
        .map(|p| ggml::dot16(&kc[head(p)], &qh) * scale)
        .collect();
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut sum = 0.0f64;
    for chunk in scores.chunks_mut(16) {
        let mut lanes = [0f32; 16];
        for (l, s) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *s = ggml::expf(*s - max);
            *l = *s;
        }
        sum += ggml::reduce16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    // llama.cpp multiplies the fp16 V cache by probabilities rounded to fp16 with 16 positions
    // in the lanes of a vector, one fused multiply-add chain per lane: position p goes to lane
    // p % 16. Here the lanes are rows of `acc`, so each update runs along the head dimension.
    let mut acc = vec![0f32; 16 * hd];
    for (p, &s) in scores.iter().enumerate() {
        let w = f16::from_f32(s * inv).to_f32();
        let lane = &mut acc[(p % 16) * hd..(p % 16 + 1) * hd];
        for (a, v) in lane.iter_mut().zip(&vc[head(p)]) {
            *a = v.mul_add(w, *a);
        }
    }
    for (dim, ov) in o.iter_mut().enumerate() {
        *ov = ggml::reduce16(&std::array::from_fn(|l| acc[l * hd + dim]));
    }
}

/// Bit-for-bit copies of the float routines llama.cpp's CPU backend uses on AVX-512 machines,
/// so that greedy decoding agrees with it token for token (the int8 activation quantisation
/// turns last-bit differences into different tokens within a few dozen steps).
mod ggml {
    /// `ggml_v_expf` (ARM optimized-routines expf, max error 1.45 ulp + 0.5), one lane.
    #[inline]
    pub fn expf(x: f32) -> f32 {
        let r = 12_582_912.0f32; // 0x1.8p23
        let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0
        let n = z - r;
        let b = (-n).mul_add(
            f32::from_bits(0x35bf_be8e),
            (-n).mul_add(f32::from_bits(0x3f31_7200), x),
        );
        if n.abs() > 192.0 || n.is_nan() {
            return if n.is_nan() {
                x
            } else if n > 0.0 {
                f32::INFINITY
            } else {
                0.0
            };
        }
        let u = b * b;
        let j = f32::from_bits(0x3c07_2010)
            .mul_add(b, f32::from_bits(0x3d2b_9f17))
            .mul_add(
                u,
                f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)),
            )
            .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0));
        // _mm512_scalef_ps: j * 2^n, rounded once (2^n built from its exponent bits).
        let two_n = f64::from_bits(((n as i64 + 1023) as u64) << 52);
        (j as f64 * two_n) as f32
    }

    /// `ggml_v_silu`: x / (1 + e^-x).
    #[inline]
    pub fn silu(x: f32) -> f32 {
        x / (1.0 + expf(0.0 - x))
    }

    /// `_mm512_reduce_add_ps`: halves added pairwise (256, 128, 64, 32 bits).
    #[inline]
    pub fn reduce16(v: &[f32; 16]) -> f32 {
        let mut t = [0f32; 8];
        for i in 0..8 {
            t[i] = v[i + 8] + v[i];
        }
        let t4 = [t[4] + t[0], t[5] + t[1], t[6] + t[2], t[7] + t[3]];
        (t4[0] + t4[2]) + (t4[1] + t4[3])
    }

    /// tinyBLAS's fp16 dot product: 16 lanes, one fused multiply-add chain each, then reduced.
    #[inline]
    pub fn dot16(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
            for l in 0..16 {
                acc[l] = ca[l].mul_add(cb[l], acc[l]);
            }
        }
        let tail = a.len() / 16 * 16;
        reduce16(&acc)
            + a[tail..]
                .iter()
                .zip(&b[tail..])
                .map(|(x, y)| x * y)
                .sum::<f32>()
    }
}

#[cfg(test)]
mod split_tests {
    /// Every row is computed by exactly one thread, an odd last one too (a vocabulary of odd
    /// size lost its last logit once).
    #[test]
    fn split_pairs_covers_every_row_even_an_odd_last_one() {
        for len in [1usize, 7, 32, 49_153] {
            for nth in 1..4 {
                let mut next = 0;
                for tid in 0..nth {
                    let r = super::split_pairs(len, tid, nth);
                    assert_eq!(r.start, next, "{len} rows, thread {tid} of {nth}");
                    assert_eq!(r.start % 2, 0);
                    next = r.end;
                }
                assert_eq!(next, len, "{len} rows over {nth} threads");
            }
        }
    }
}
