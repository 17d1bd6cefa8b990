//! Tiny random-initialised GGUF chat models for fast tests (not part of the API).

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::path::Path;

/// GPT-2's byte-to-character map: printable bytes map to themselves, others to U+0100 onwards.
fn byte_chars() -> Vec<String> {
    let mut n = 0;
    (0u32..256)
        .map(|b| {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                b
            } else {
                n += 1;
                255 + n
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

pub struct Spec {
    pub arch: &'static str,
    pub wtype: GgmlDType,
    /// Layer tensors (e.g. "attn_q") written in another type than `wtype`.
    pub overrides: Vec<(&'static str, GgmlDType)>,
}

/// Writes a tiny random-initialised llama-layout GGUF (64 wide, 2 layers, a byte-level
/// vocabulary with ChatML's special tokens) to `path`.
pub fn write_tiny(path: &Path, spec: Spec) {
    use gguf_file::Value as V;
    let (n_embd, n_head, n_kv, n_ff, n_layer) = (64usize, 2usize, 1usize, 128usize, 2usize);
    let mut tokens = vec![
        "<|endoftext|>".to_string(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
    ];
    tokens.extend(byte_chars());
    tokens.push("he".into());
    tokens.push("ll".into());
    let merges = vec![V::String("h e".into()), V::String("l l".into())];
    let n_vocab = tokens.len();
    let mut types = vec![V::I32(3); 3];
    types.extend(std::iter::repeat_n(V::I32(1), n_vocab - 3));
    let arch = spec.arch;
    let key = |k: &str| format!("{arch}.{k}");
    let meta: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch.into())),
        ("general.name".into(), V::String("tiny".into())),
        (key("block_count"), V::U32(n_layer as u32)),
        (key("context_length"), V::U32(64)),
        (key("embedding_length"), V::U32(n_embd as u32)),
        (key("feed_forward_length"), V::U32(n_ff as u32)),
        (key("attention.head_count"), V::U32(n_head as u32)),
        (key("attention.head_count_kv"), V::U32(n_kv as u32)),
        (key("rope.freq_base"), V::F32(10000.0)),
        (key("attention.layer_norm_rms_epsilon"), V::F32(1e-5)),
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), V::String("smollm".into())),
        (
            "tokenizer.ggml.tokens".into(),
            V::Array(tokens.iter().map(|t| V::String(t.clone())).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), V::Array(types)),
        ("tokenizer.ggml.merges".into(), V::Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), V::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(2)),
    ];
    let dev = Device::Cpu;
    let mut seed = 0u32;
    let mut randn = |rows: usize, cols: usize| {
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.2
            })
            .collect();
        Tensor::from_vec(v, (rows, cols), &dev).unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = vec![];
    let q = |t: Tensor, ty: GgmlDType| QTensor::quantize(&t, ty).unwrap();
    tensors.push((
        "token_embd.weight".into(),
        q(randn(n_vocab, n_embd), GgmlDType::Q8_0),
    ));
    tensors.push((
        "output_norm.weight".into(),
        q(
            Tensor::ones(n_embd, candle_core::DType::F32, &dev).unwrap(),
            GgmlDType::F32,
        ),
    ));
    let hd = n_embd / n_head;
    for i in 0..n_layer {
        let ones = Tensor::ones(n_embd, candle_core::DType::F32, &dev).unwrap();
        tensors.push((
            format!("blk.{i}.attn_norm.weight"),
            q(ones.clone(), GgmlDType::F32),
        ));
        tensors.push((format!("blk.{i}.ffn_norm.weight"), q(ones, GgmlDType::F32)));
        for (name, rows, cols) in [
            ("attn_q", n_embd, n_embd),
            ("attn_k", n_kv * hd, n_embd),
            ("attn_v", n_kv * hd, n_embd),
            ("attn_output", n_embd, n_embd),
            ("ffn_gate", n_ff, n_embd),
            ("ffn_up", n_ff, n_embd),
            ("ffn_down", n_embd, n_ff),
        ] {
            let ty = spec
                .overrides
                .iter()
                .find(|o| o.0 == name)
                .map_or(spec.wtype, |o| o.1);
            tensors.push((format!("blk.{i}.{name}.weight"), q(randn(rows, cols), ty)));
        }
    }
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
}

/// A tiny llama with every projection in `wtype`, at `path`.
pub fn tiny_llama(path: &Path, wtype: GgmlDType) {
    write_tiny(
        path,
        Spec {
            arch: "llama",
            wtype,
            overrides: vec![],
        },
    );
}
