//! `frugal data prepare|stats` end to end.

use std::process::Command;

fn frugal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_frugal"))
}

#[test]
fn prepare_splits_spamassassin_like_the_anchors_and_files_by_label() {
    let out = tempfile::tempdir().unwrap();
    let o = frugal()
        .args([
            "data",
            "prepare",
            "spamassassin",
            "--out",
            out.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let test = std::fs::read_to_string(out.path().join("test.jsonl")).unwrap();
    assert_eq!(test.lines().count(), 1209);
    assert_eq!(
        test.lines()
            .filter(|l| l.ends_with("\"label\":\"spam\"}"))
            .count(),
        379
    );

    let csv = out.path().join("d.csv");
    let mut rows = String::from("body,topic\n");
    for i in 0..30 {
        rows.push_str(&format!("text number {i},{}\n", ["x", "y", "z"][i % 3]));
    }
    std::fs::write(&csv, rows).unwrap();
    let dir = out.path().join("split");
    let args = [
        "data",
        "prepare",
        csv.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--text-field",
        "body",
        "--label-field",
        "topic",
    ];
    assert!(frugal().args(args).status().unwrap().success());
    let test = std::fs::read_to_string(dir.join("test.jsonl")).unwrap();
    assert_eq!(test.lines().count(), 6, "20% of each of 3 labels of 10");
    let o = frugal()
        .args([
            "data",
            "stats",
            "--json",
            dir.join("train.jsonl").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["examples"], 21);
    // A missing column is named, with the columns present.
    let o = frugal()
        .args(["data", "stats", csv.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("'text'") && e.contains("body, topic"), "{e}");
}

#[test]
fn train_eval_predict_round_trip_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("t.jsonl");
    let mut lines = String::new();
    for w in [
        "apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear",
    ] {
        lines.push_str(&format!(
            "{{\"text\": \"I ate a {w}\", \"label\": \"fruit\"}}\n"
        ));
    }
    for w in [
        "truck", "car", "bus", "train", "tram", "bicycle", "van", "taxi",
    ] {
        lines.push_str(&format!(
            "{{\"text\": \"I drove the {w}\", \"label\": \"vehicle\"}}\n"
        ));
    }
    std::fs::write(&data, lines).unwrap();
    let out = dir.path().join("ckpt");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let r = frugal()
        .args([
            "-q",
            "train",
            "--data",
            d,
            "--valid",
            d,
            "--mode",
            "head",
            "--out",
            o,
            "--epochs",
            "30",
            "--lr",
            "0.01",
            "--batch",
            "4",
            "--patience",
            "0",
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = frugal()
        .args(["eval", "--model", o, "--data", d, "--json"])
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(m["accuracy"], 1.0, "{m}");
    assert_eq!(m["labels"], serde_json::json!(["fruit", "vehicle"]));
    assert_eq!(m["per_class"]["fruit"]["support"], 8);
    let r = frugal()
        .args(["predict", "--model", o, "--json", "I ate a mango"])
        .output()
        .unwrap();
    let p: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    // A training text, which `eval` just scored correctly: predict must agree with it.
    assert_eq!(p["label"], "fruit");
    assert!(p["probabilities"]["fruit"].as_f64().unwrap() > 0.5);
    // Bad input.
    let fails = |args: &[&str], needles: &[&str]| {
        let r = frugal().args(args).output().unwrap();
        assert!(!r.status.success());
        let e = String::from_utf8_lossy(&r.stderr);
        assert!(!e.contains("panicked"), "{e}");
        for n in needles {
            assert!(e.contains(n), "'{n}' not in {e}");
        }
    };
    let one = dir.path().join("one.jsonl");
    std::fs::write(
        &one,
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": \"x\"}\n",
    )
    .unwrap();
    let o2 = dir.path().join("o2");
    fails(
        &[
            "train",
            "--data",
            one.to_str().unwrap(),
            "--out",
            o2.to_str().unwrap(),
        ],
        &["at least 2 labels"],
    );
    assert!(!o2.exists());
    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, "{\"text\": \"a boat\", \"label\": \"vessel\"}\n").unwrap();
    fails(
        &["eval", "--model", o, "--data", other.to_str().unwrap()],
        &["vessel", "fruit"],
    );
    fails(&["predict", "--model", o, " "], &["empty"]);
    fails(
        &[
            "train",
            "--data",
            d,
            "--out",
            o2.to_str().unwrap(),
            "--max-len",
            "2000",
        ],
        &["max length", "512"],
    );
    fails(
        &["eval", "--model", dir.path().to_str().unwrap(), "--data", d],
        &["frugal.json"],
    );
}

/// Ctrl-C stops fine-tuning after the current step with its state saved (exit 130); `--resume`
/// with other settings is refused, and with the same ones finishes the run and clears the state.
#[test]
fn ctrl_c_then_resume_finishes_a_fine_tuning_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("t.jsonl");
    let mut lines = String::new();
    for (i, w) in ["apple", "pear", "plum", "truck", "van", "bus"]
        .iter()
        .enumerate()
    {
        let label = if i < 3 { "fruit" } else { "vehicle" };
        lines.push_str(&format!(
            "{{\"text\": \"a {w}\", \"label\": \"{label}\"}}\n"
        ));
    }
    std::fs::write(&data, lines).unwrap();
    let out = dir.path().join("ck");
    let state = dir.path().join("ck.resume");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let args = |epochs: &'static str, resume: bool| {
        let mut a = vec![
            "-q",
            "train",
            "--data",
            d,
            "--mode",
            "full",
            "--out",
            o,
            "--batch",
            "2",
            "--epochs",
            epochs,
            "--save-every",
            "1",
            "--patience",
            "0",
        ];
        if resume {
            a.push("--resume");
        }
        a
    };
    let child = frugal()
        .args(args("4", false))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !state.join("trainer_state.json").is_file() {
        assert!(t0.elapsed().as_secs() < 300, "no state saved");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signals a child process of ours.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let r = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(130), "{e}");
    assert!(e.contains("--resume") && e.contains("ck.resume"), "{e}");
    let done: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("trainer_state.json")).unwrap()).unwrap();
    assert!(done["step"].as_u64().unwrap() < 12, "{done}");

    let r = frugal().args(args("5", true)).output().unwrap();
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && e.contains("epochs is 5, was 4"),
        "{e}"
    );
    let r = frugal().args(args("4", true)).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(out.join("model.safetensors").is_file() && !state.exists());
    let r = frugal().args(args("4", true)).output().unwrap();
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && e.contains("no saved training state"),
        "{e}"
    );
}

#[test]
fn a_battery_task_is_prepared_as_the_quick_report_samples_it() {
    let out = tempfile::tempdir().unwrap();
    let prepare = |budget: &str, dir: &std::path::Path| {
        let o = frugal()
            .args(["data", "prepare", "trec", "--budget", budget, "--out"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        ["train", "valid", "test"].map(|s| {
            std::fs::read_to_string(dir.join(format!("{s}.jsonl")))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
    };
    let full = prepare("full", &out.path().join("full"));
    let quick = prepare("quick", &out.path().join("quick"));
    let sizes = |s: &[Vec<serde_json::Value>; 3]| s.each_ref().map(|v| v.len());
    assert_eq!(
        sizes(&full).iter().sum::<usize>(),
        5381,
        "every TREC question"
    );
    assert_eq!(sizes(&quick), [800, 200, 400]);
    // The quick sample is drawn from the same split: no test question leaks into training.
    for (q, f) in quick.iter().zip(&full) {
        assert!(q.iter().all(|e| f.contains(e)));
    }
    let labels: std::collections::BTreeSet<_> =
        full[0].iter().map(|e| e["label"].to_string()).collect();
    assert_eq!(labels.len(), 6, "{labels:?}");
    // An unknown name is neither a file nor a task: both are said.
    let o = frugal()
        .args(["data", "stats", "trec-coarse"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("trec-coarse") && e.contains("sotu-party"), "{e}");
}
