//! `frugal fed simulate` end to end on the real MiniLM (head mode) with a toy data set: the
//! summary, the final checkpoint working with `eval`, the chart, partition by field, and bad
//! input.

mod common;
use common::{fails, frugal};

fn toy(dir: &std::path::Path, missing_site: bool) -> std::path::PathBuf {
    let fruit = ["apple", "banana", "cherry", "grape", "lemon", "mango"];
    let vehicle = ["truck", "car", "bus", "tram", "van", "taxi"];
    let mut s = String::new();
    for i in 0..24 {
        s.push_str(&format!(
            "{{\"text\": \"I ate a {} at noon\", \"label\": \"fruit\", \"site\": \"s{}\"}}\n",
            fruit[i % 6],
            i % 4
        ));
        s.push_str(&format!(
            "{{\"text\": \"I drove the {} home\", \"label\": \"vehicle\", \"site\": \"s{}\"}}\n",
            vehicle[i % 6],
            (i + 1) % 4
        ));
    }
    if missing_site {
        s.push_str("{\"text\": \"I ate a plum\", \"label\": \"fruit\"}\n");
    }
    let p = dir.join(if missing_site {
        "bad.jsonl"
    } else {
        "toy.jsonl"
    });
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn fed_simulate_runs_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = toy(dir.path(), false);
    let d = data.to_str().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let chart = dir.path().join("rounds.svg");
    let r = frugal()
        .args([
            "fed",
            "simulate",
            "--data",
            d,
            "--test",
            d,
            "--nodes",
            "4",
            "--partition",
            "field:site",
            "--rounds",
            "3",
            "--local-epochs",
            "2",
            "--batch",
            "8",
            "--max-len",
            "32",
            "--secure-agg",
            "--out",
            o,
            "--chart",
            chart.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(j["rounds"].as_array().unwrap().len(), 3);
    assert_eq!(j["label_mix"].as_array().unwrap().len(), 4);
    assert!(j["bytes"]["cut"].as_f64().unwrap() >= 10.0, "{j}");
    let per_node = j["bytes"]["per_node"].as_array().unwrap();
    assert_eq!(per_node.len(), 4);
    let sent: u64 = per_node.iter().map(|n| n["sent"].as_u64().unwrap()).sum();
    let rounds_sent: u64 = j["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["bytes_sent"].as_u64().unwrap())
        .sum();
    assert!(sent > 0 && sent == rounds_sent, "{j}");
    assert!(j["centralised"]["test_accuracy"].as_f64().is_some(), "{j}");
    assert!(j["final"]["test_accuracy"].as_f64().unwrap() >= 0.75, "{j}");
    assert!(j["secure_aggregation_threshold"].as_u64().is_some());
    assert!(std::fs::read_to_string(&chart).unwrap().contains("<svg"));
    // The federated model is an ordinary classifier.
    let r = frugal()
        .args([
            "eval",
            "--model",
            &format!("{o}/model"),
            "--data",
            d,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));

    let base = ["fed", "simulate", "--data", d, "--out", o];
    let with = |extra: &[&'static str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    fails(&with(&["--nodes", "100"]), &["more than the 48"]);
    fails(&with(&["--partition", "dirichlet:0"]), &["α", "above 0"]);
    fails(&with(&["--fraction", "1.5"]), &["--fraction", "(0, 1]"]);
    fails(
        &with(&["--nodes", "3", "--secure-agg", "--secagg-threshold", "4"]),
        &["threshold", "3 nodes sampled"],
    );
    fails(
        &with(&["--partition", "field:site", "--nodes", "5"]),
        &["4 distinct values"],
    );
    let bad = toy(dir.path(), true);
    fails(
        &[
            "fed",
            "simulate",
            "--data",
            bad.to_str().unwrap(),
            "--partition",
            "field:site",
            "--out",
            o,
        ],
        &["field:site", "line 49", "'site'"],
    );
    fails(&with(&["--chart", "x.png"]), &["*.svg"]);
}

/// LoRA mode: only the adapters and the head travel (far fewer bytes than the full model), and
/// the final model, adapters folded in, works with `eval`.
#[test]
fn fed_simulate_with_lora_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let data = toy(dir.path(), false);
    let d = data.to_str().unwrap();
    let out = dir.path().join("lora");
    let o = out.to_str().unwrap();
    let r = frugal()
        .args([
            "fed",
            "simulate",
            "--data",
            d,
            "--test",
            d,
            "--nodes",
            "3",
            "--partition",
            "iid",
            "--rounds",
            "2",
            "--mode",
            "lora",
            "--max-len",
            "16",
            "--batch",
            "8",
            "--out",
            o,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(j["mode"], "lora");
    let update = j["bytes"]["update"].as_u64().unwrap();
    // Head (770 floats) plus 6 layers x (query, value) x rank-8 A and B.
    assert_eq!(update, 4 * (770 + 6 * 2 * 2 * 8 * 384), "{j}");
    assert!(j["bytes"]["cut"].as_f64().unwrap() >= 10.0, "{j}");
    let r = frugal()
        .args([
            "eval",
            "--model",
            &format!("{o}/model"),
            "--data",
            d,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}
