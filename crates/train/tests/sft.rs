//! LoRA supervised fine-tuning on tiny random-initialised GGUF models (fast): only the adapters
//! change, the loss falls, the training forward pass equals the runtime's once merged, adapters
//! refuse another base, and bad data is named.

use candle_core::quantized::GgmlDType;
use frugal_models::chat::lora::{Adapter, LoraConfig, LoraLlama};
use frugal_models::chat::testing::tiny_llama;
use frugal_models::chat::ChatModel;
use frugal_train::sft::{batch_loss, encode, load, mean_loss, train_sft, SftExample, SftSpec};
use frugal_train::trainer::{fit, Control, Task, TrainConfig};

fn pairs() -> Vec<SftExample> {
    vec![
        SftExample::new("hello", "hell"),
        SftExample::new("he he", "ll ll"),
        SftExample::new("hell", "he"),
        SftExample::new("lo", "hello hello"),
    ]
}

struct Direct<'a> {
    model: &'a LoraLlama,
    data: Vec<frugal_train::sft::Encoded>,
}

impl Task for Direct<'_> {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn loss(&mut self, batch: &[usize]) -> candle_core::Result<candle_core::Tensor> {
        let refs: Vec<_> = batch.iter().map(|&i| &self.data[i]).collect();
        batch_loss(self.model, &refs)
    }
    fn validate(&mut self) -> frugal_train::Result<Option<f64>> {
        Ok(None)
    }
    fn on_best(&mut self, _: usize, _: Option<f64>) -> frugal_train::Result<()> {
        Ok(())
    }
}

#[test]
fn only_the_adapters_train_the_base_stays_bit_identical_and_the_loss_falls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_llama(&path, GgmlDType::Q8_0);
    let chat = ChatModel::load(&path).unwrap();
    let (data, stats) = encode(&chat, &pairs(), 64).unwrap();
    assert_eq!(stats.dropped + stats.truncated, 0);
    let mut model = LoraLlama::load(&path, LoraConfig::default(), 0).unwrap();
    model.train = true;
    let base_before = model.base_weights().unwrap();
    let adapters_before: Vec<Vec<f32>> = model
        .adapter_vars()
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let loss_before = mean_loss(&mut model, &data, 4).unwrap();
    let vars = model.adapter_vars();
    // 2 layers x 7 projections x (A, B).
    assert_eq!(vars.len(), 28);
    let cfg = TrainConfig {
        epochs: 30,
        lr: 1e-2,
        batch: 4,
        weight_decay: 0.0,
        warmup: 0.0,
        ..Default::default()
    };
    fit(
        &mut Direct {
            model: &model,
            data: data.clone(),
        },
        vars,
        &cfg,
        &Control::default(),
        &mut |_| {},
    )
    .unwrap();
    let loss_after = mean_loss(&mut model, &data, 4).unwrap();
    assert!(
        loss_after < loss_before * 0.8,
        "{loss_before} -> {loss_after}"
    );
    // Every base tensor bit for bit as loaded.
    for ((n, a), (_, b)) in base_before.iter().zip(model.base_weights().unwrap()) {
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.flatten_all().unwrap().to_vec1().unwrap(),
            b.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{n} changed"
        );
    }
    // Every adapter matrix moved (the gradient reaches every layer).
    for ((n, v), before) in model.adapter_vars().iter().zip(adapters_before) {
        let now: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert!(now != before, "{n} did not train");
    }
}

#[test]
fn the_merged_runtime_computes_what_the_training_forward_pass_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_llama(&path, GgmlDType::F32);
    let out = dir.path().join("adapter");
    let spec = SftSpec {
        base: &path,
        base_name: "tiny".into(),
        train: &pairs(),
        valid: Some(&pairs()),
        lora: LoraConfig {
            dropout: 0.0,
            ..Default::default()
        },
        config: TrainConfig {
            epochs: 10,
            lr: 1e-2,
            batch: 2,
            weight_decay: 0.0,
            warmup: 0.0,
            ..Default::default()
        },
        max_len: 64,
        out: &out,
        resume: false,
        save_every: 0,
        interrupt: None,
    };
    let r = train_sft(&spec, &mut |_| {}).unwrap();
    assert!(
        r.valid_loss.unwrap() < r.valid_loss_before.unwrap(),
        "{r:?}"
    );
    assert!(r.tokens_per_s > 0.0);
    let adapter = Adapter::load(&out).unwrap();
    assert_eq!(adapter.info.base_name, "tiny");
    assert!(adapter
        .tensors
        .keys()
        .all(|k| k.ends_with(".lora_a") || k.ends_with(".lora_b")));
    // The training model with the saved adapter ...
    let model = LoraLlama::load(&path, adapter.info.lora.clone(), 1).unwrap();
    model.set_adapters(&adapter.tensors).unwrap();
    let mut chat = ChatModel::load(&path).unwrap();
    let ids = chat
        .tokenizer
        .encode("<|im_start|>user\nhello<|im_end|>")
        .unwrap();
    let t = candle_core::Tensor::new(ids.as_slice(), &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let pos: Vec<u32> = (0..ids.len() as u32).collect();
    let want: Vec<Vec<f32>> = model
        .logits_at(&model.hidden(&t).unwrap(), &pos)
        .unwrap()
        .to_vec2()
        .unwrap();
    // ... and the runtime with the adapter merged give the same logits (up to its Q8_0 merge,
    // 8-bit activations and fp16 cache).
    let plain = chat
        .llama
        .forward(&ids, &mut chat.new_cache(), true)
        .unwrap();
    chat.apply_adapter(&adapter).unwrap();
    let got = chat
        .llama
        .forward(&ids, &mut chat.new_cache(), true)
        .unwrap();
    let v = want[0].len();
    let (mut diff, mut moved, mut scale) = (0f32, 0f32, 0f32);
    for (i, row) in want.iter().enumerate() {
        for (j, &w) in row.iter().enumerate() {
            diff = diff.max((got[i * v + j] - w).abs());
            moved = moved.max((plain[i * v + j] - w).abs());
            scale = scale.max(w.abs());
        }
    }
    assert!(
        diff < 2e-2 * scale.max(1.0),
        "max |Δ| {diff} (logits up to {scale})"
    );
    assert!(
        moved > 5.0 * diff,
        "the adapter changed the logits by {moved}, the merge error is {diff}"
    );
}

#[test]
fn an_adapter_refuses_another_base_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    tiny_llama(&a, GgmlDType::Q8_0);
    tiny_llama(&b, GgmlDType::F32);
    let out = dir.path().join("ad");
    let spec = SftSpec {
        base: &a,
        base_name: "tiny-a".into(),
        train: &pairs(),
        valid: None,
        lora: LoraConfig::default(),
        config: TrainConfig {
            epochs: 1,
            batch: 4,
            ..Default::default()
        },
        max_len: 64,
        out: &out,
        resume: false,
        save_every: 0,
        interrupt: None,
    };
    train_sft(&spec, &mut |_| {}).unwrap();
    let adapter = Adapter::load(&out).unwrap();
    let mut other = ChatModel::load(&b).unwrap();
    let e = other.apply_adapter(&adapter).unwrap_err().to_string();
    assert!(
        e.contains("tiny-a") && e.contains("a.gguf") && e.contains("b.gguf"),
        "{e}"
    );
    ChatModel::load(&a)
        .unwrap()
        .apply_adapter(&adapter)
        .unwrap();
}

#[test]
fn long_answers_are_cut_and_counted_and_prompts_that_fill_the_window_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_llama(&path, GgmlDType::Q8_0);
    let chat = ChatModel::load(&path).unwrap();
    let ex = vec![
        SftExample::new("hi", &"hello ".repeat(40)),
        SftExample::new(&"hello ".repeat(40), "hi"),
        SftExample::new("hi", "he"),
    ];
    let (enc, st) = encode(&chat, &ex, 40).unwrap();
    assert_eq!((st.examples, st.truncated, st.dropped), (3, 1, 1));
    assert_eq!(enc.len(), 2);
    assert!(enc
        .iter()
        .all(|e| e.ids.len() <= 40 && e.answer_start < e.ids.len()));
}

#[test]
fn bad_pair_files_name_the_line_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
            "no assistant turn",
        ),
        (r#"{"prompt": "hi", "answer": "  "}"#, "the answer is empty"),
        (r#"{"text": "hi"}"#, "either `prompt` and `answer`"),
        (
            r#"{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}"#,
            "role 'robot'",
        ),
        ("not json", "invalid JSON"),
    ];
    for (line, want) in cases {
        let p = dir.path().join("bad.jsonl");
        std::fs::write(
            &p,
            format!("{{\"prompt\": \"a\", \"answer\": \"b\"}}\n{line}\n"),
        )
        .unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("bad.jsonl") && e.contains("line 2") && e.contains(want),
            "{e}"
        );
    }
    let p = dir.path().join("chat.jsonl");
    std::fs::write(
        &p,
        r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]}"#,
    )
    .unwrap();
    let ex = load(&p).unwrap();
    assert_eq!(ex[0].answer, "a2");
    assert_eq!(ex[0].messages.len(), 4);
    assert_eq!(ex[0].prompt(), "u2");
}
