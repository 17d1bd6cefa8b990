//! `frugal zeroshot`, `fewshot` and `curve` end to end on the real MiniLM, with bad input.

mod common;
use common::{fails, frugal};

fn toy(dir: &std::path::Path) -> std::path::PathBuf {
    let mut lines = String::new();
    for w in ["apple", "banana", "cherry", "grape", "lemon", "mango"] {
        lines.push_str(&format!(
            "{{\"text\": \"I ate a {w}\", \"label\": \"fruit\"}}\n"
        ));
    }
    for w in ["truck", "car", "bus", "tram"] {
        lines.push_str(&format!(
            "{{\"text\": \"I drove the {w}\", \"label\": \"vehicle\"}}\n"
        ));
    }
    let p = dir.join("toy.jsonl");
    std::fs::write(&p, lines).unwrap();
    p
}

#[test]
fn zeroshot_scores_labelled_data_and_predicts_unlabelled() {
    let dir = tempfile::tempdir().unwrap();
    let data = toy(dir.path());
    let d = data.to_str().unwrap();
    let labels = [
        "--label",
        "fruit=a fruit you can eat",
        "--label",
        "vehicle=a vehicle you drive",
    ];
    let mut args = vec!["-q", "zeroshot", "--data", d, "--json"];
    args.extend(labels);
    let r = frugal().args(&args).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let m: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(m["accuracy"].as_f64().unwrap() >= 0.9, "{m}");
    assert_eq!(m["majority_class_accuracy"], 0.6);
    // Without a label field: one prediction per text.
    let plain = dir.path().join("plain.jsonl");
    std::fs::write(
        &plain,
        "{\"text\": \"a ripe pear\"}\n{\"text\": \"the old van\"}\n",
    )
    .unwrap();
    let mut args = vec![
        "-q",
        "zeroshot",
        "--data",
        plain.to_str().unwrap(),
        "--json",
    ];
    args.extend(labels);
    let r = frugal().args(&args).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out = String::from_utf8_lossy(&r.stdout);
    let preds: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(preds.len(), 2);
    assert_eq!(preds[0]["label"], "fruit");
    assert_eq!(preds[1]["label"], "vehicle");
    fails(
        &["zeroshot", "--data", d, "--label", "fruit=x"],
        &["at least 2 labels"],
    );
    fails(
        &[
            "zeroshot",
            "--data",
            d,
            "--label",
            "fruit=x",
            "--label",
            "vehicle= ",
        ],
        &["--label vehicle", "empty"],
    );
    fails(
        &[
            "zeroshot", "--data", d, "--label", "fruit=x", "--label", "boat=y",
        ],
        &["'vehicle'", "not among --label"],
    );
}

#[test]
fn fewshot_and_curve_run_and_refuse_too_many_shots() {
    let dir = tempfile::tempdir().unwrap();
    let data = toy(dir.path());
    let d = data.to_str().unwrap();
    let out = dir.path().join("fs");
    let r = frugal()
        .args([
            "-q",
            "fewshot",
            "--data",
            d,
            "--shots",
            "2",
            "--pairs",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--test",
            d,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let m: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(m["examples"], 4);
    assert_eq!(m["pairs"], 16);
    assert!(m["accuracy"].as_f64().is_some(), "{m}");
    let r = frugal()
        .args(["predict", "--model", out.to_str().unwrap(), "I ate a kiwi"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // A label with fewer than K examples gives all it has, and the run says so.
    let r = frugal()
        .args([
            "fewshot",
            "--data",
            d,
            "--shots",
            "5",
            "--pairs",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--test",
            d,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("--shots 5: taking every example of 'vehicle' (4)"),
        "{err}"
    );
    let m: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(m["examples"], 9, "5 fruit + all 4 vehicles: {m}");
    fails(
        &["fewshot", "--base", "smollm2", "--data", d, "--shots", "1"],
        &["--test"],
    );

    let chart = dir.path().join("curve.svg");
    let r = frugal()
        .args([
            "-q",
            "curve",
            "--data",
            d,
            "--test",
            d,
            "--shots",
            "1,2",
            "--seeds",
            "2",
            "--pairs",
            "2",
            "--chart",
            chart.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let c: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(c["points"].as_array().unwrap().len(), 2);
    assert_eq!(c["runs"].as_array().unwrap().len(), 4);
    let p = &c["points"][1];
    assert!(p["min"].as_f64() <= p["mean"].as_f64() && p["mean"].as_f64() <= p["max"].as_f64());
    assert!(c["references"]["zero-shot"].as_f64().is_some());
    assert!(std::fs::read_to_string(&chart).unwrap().contains("<svg"));
    fails(
        &["curve", "--data", d, "--test", d, "--shots", "2,9"],
        &["--shots 9", "'vehicle' has only 4", "--shots 4"],
    );
    fails(
        &["curve", "--data", d, "--test", d, "--chart", "x.png"],
        &["SVG"],
    );
}

/// The same commands on a five-label task of short texts.
#[test]
fn five_labels_work_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let groups = [
        ("fruit", ["apple", "banana", "cherry", "grape"]),
        ("vehicle", ["truck", "car", "bus", "tram"]),
        ("animal", ["dog", "cat", "horse", "rabbit"]),
        ("colour", ["red", "blue", "green", "yellow"]),
        ("sport", ["football", "tennis", "golf", "rugby"]),
    ];
    let mut lines = String::new();
    for (label, words) in groups {
        for w in words {
            lines.push_str(&format!("{{\"text\": \"{w}\", \"label\": \"{label}\"}}\n"));
        }
    }
    let data = dir.path().join("five.jsonl");
    std::fs::write(&data, lines).unwrap();
    let d = data.to_str().unwrap();
    let mut args = vec!["-q", "zeroshot", "--data", d, "--json"];
    let descs: Vec<String> = groups.iter().map(|(l, _)| format!("{l}={l}")).collect();
    for x in &descs {
        args.extend(["--label", x.as_str()]);
    }
    let r = frugal().args(&args).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let m: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(m["labels"].as_array().unwrap().len(), 5);
    assert!(m["accuracy"].as_f64().unwrap() > 0.5, "{m}");
    let out = dir.path().join("fs5");
    let r = frugal()
        .args([
            "-q",
            "fewshot",
            "--data",
            d,
            "--shots",
            "2",
            "--pairs",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--test",
            d,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let m: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(m["examples"], 10);
    assert_eq!(m["confusion"].as_array().unwrap().len(), 5);
}
