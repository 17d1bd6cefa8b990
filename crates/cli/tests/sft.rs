//! `frugal sft`, `sft merge`, `eval-gen` and `--adapter` on the real SmolLM2-135M-Instruct and
//! real email-subject pairs from the SpamAssassin corpus.

mod common;
use common::{fails, frugal, json_of};
use serde_json::Value;
use std::path::Path;

/// The first `n` training pairs of the built-in email-subject task, as a JSONL file.
fn subject_pairs(dir: &Path, n: usize) -> std::path::PathBuf {
    let data = dir.join("subjects");
    let r = frugal()
        .args(["data", "prepare", "email-subjects", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = std::fs::read_to_string(data.join("train.jsonl")).unwrap();
    let first: Vec<&str> = text.lines().take(n).collect();
    for l in &first {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["prompt"]
            .as_str()
            .unwrap()
            .starts_with("Write a subject line for this email:"));
        assert!(!v["answer"].as_str().unwrap().is_empty());
    }
    let p = dir.join(format!("pairs{n}.jsonl"));
    std::fs::write(&p, first.join("\n") + "\n").unwrap();
    p
}

#[test]
fn sft_trains_an_adapter_that_generate_eval_gen_and_a_merged_gguf_all_run() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = subject_pairs(dir.path(), 6);
    let pairs = pairs.to_str().unwrap();
    let out = dir.path().join("adapter");
    let r = json_of(&[
        "sft",
        "--data",
        pairs,
        "--valid",
        pairs,
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "3",
        "--batch",
        "2",
        "--max-len",
        "160",
        "--lr",
        "2e-3",
        "--json",
    ]);
    // The answers of the training pairs become much likelier.
    let (before, after) = (
        r["valid_loss_before"].as_f64().unwrap(),
        r["valid_loss"].as_f64().unwrap(),
    );
    assert!(after < before * 0.8, "{r}");
    assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(r["train"]["examples"], 6);
    // 30 layers x 7 projections x rank 8 x (in + out).
    assert_eq!(r["trainable_params"], 2_442_240);
    let info: Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter.json")).unwrap()).unwrap();
    assert_eq!(info["base_name"], "smollm2");
    assert_eq!(info["lora"]["rank"], 8);

    // generate with the adapter, and from the merged GGUF: the same weights, the same answer.
    let prompt =
        "Write a subject line for this email:\n\nThe meeting moved to Friday at 10am in room 4.";
    let gen = |extra: &[&str]| -> String {
        let mut a = vec![
            "generate",
            "--prompt",
            prompt,
            "--max-tokens",
            "16",
            "--json",
        ];
        a.extend(extra);
        json_of(&a)["text"].as_str().unwrap().to_string()
    };
    let adapted = gen(&["--adapter", out.to_str().unwrap()]);
    let merged = dir.path().join("merged.gguf");
    let r = frugal()
        .args(["sft", "merge", "--adapter", out.to_str().unwrap(), "--out"])
        .arg(&merged)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(gen(&["--model", merged.to_str().unwrap()]), adapted);
    assert_ne!(gen(&[]), adapted, "the adapter changes the answer");

    // eval-gen scores answers against the references, with costs.
    let e = json_of(&[
        "eval-gen",
        "--data",
        pairs,
        "--limit",
        "3",
        "--adapter",
        out.to_str().unwrap(),
        "--max-tokens",
        "16",
        "--json",
    ]);
    assert_eq!(e["examples"], 3);
    let rouge = e["rouge_l"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rouge), "{e}");
    assert!(e["usd_per_1k_answers"].as_f64().unwrap() > 0.0);
    assert!(
        e["reference_usd_per_1k_answers"].as_f64().unwrap()
            > e["usd_per_1k_answers"].as_f64().unwrap(),
        "{e}"
    );

    // An adapter refuses a base it was not trained on, naming both.
    let tiny = dir.path().join("tiny.gguf");
    frugal_models::chat::testing::tiny_llama(&tiny, candle_core::quantized::GgmlDType::Q8_0);
    fails(
        &[
            "generate",
            "--model",
            tiny.to_str().unwrap(),
            "--adapter",
            out.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &["--adapter", "trained on smollm2", "tiny.gguf"],
    );
    fails(
        &[
            "sft",
            "merge",
            "--base",
            tiny.to_str().unwrap(),
            "--adapter",
            out.to_str().unwrap(),
            "--out",
            dir.path().join("x.gguf").to_str().unwrap(),
        ],
        &["trained on smollm2"],
    );
    assert!(!dir.path().join("x.gguf").exists());
}

#[test]
fn sft_rejects_bad_data_and_flags_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let o = out.to_str().unwrap();
    let chat = dir.path().join("chat.jsonl");
    std::fs::write(
        &chat,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    )
    .unwrap();
    fails(
        &["sft", "--data", chat.to_str().unwrap(), "--out", o],
        &["chat.jsonl", "line 1", "no assistant turn"],
    );
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "{\"prompt\": \"hi\", \"answer\": \"\"}\n").unwrap();
    fails(
        &["sft", "--data", empty.to_str().unwrap(), "--out", o],
        &["empty.jsonl", "line 1", "answer is empty"],
    );
    let ok = dir.path().join("ok.jsonl");
    std::fs::write(&ok, "{\"prompt\": \"hi\", \"answer\": \"hello\"}\n").unwrap();
    fails(
        &[
            "sft",
            "--data",
            ok.to_str().unwrap(),
            "--out",
            o,
            "--targets",
            "attn_x",
        ],
        &["--targets", "attn_x", "attn_q"],
    );
    fails(
        &[
            "sft",
            "--data",
            ok.to_str().unwrap(),
            "--out",
            o,
            "--max-len",
            "10",
        ],
        &["--max-len 10"],
    );
    fails(
        &["sft", "--data", "nope.jsonl", "--out", o],
        &["--data nope.jsonl", "email-subjects"],
    );
    fails(
        &[
            "sft",
            "merge",
            "--adapter",
            o,
            "--out",
            dir.path().join("m.bin").to_str().unwrap(),
        ],
        &["--out", "*.gguf"],
    );
    fails(
        &[
            "sft",
            "merge",
            "--adapter",
            dir.path().to_str().unwrap(),
            "--out",
            dir.path().join("m.gguf").to_str().unwrap(),
        ],
        &["--adapter", "adapter.json"],
    );
    assert!(!out.exists(), "nothing written for bad input");
}
