//! `frugal report` end to end on a toy task with the real MiniLM: rows, skips with reasons,
//! resume, the reference's quality from given answers, and bad input.

mod common;
use common::{fails, frugal};
use serde_json::Value;

fn toy(dir: &std::path::Path) -> std::path::PathBuf {
    let mut lines = String::new();
    for w in [
        "apple", "banana", "cherry", "grape", "lemon", "mango", "pear", "plum", "kiwi", "peach",
    ] {
        lines.push_str(&format!(
            "{{\"text\": \"I ate a {w}\", \"label\": \"fruit\"}}\n"
        ));
    }
    for w in [
        "truck", "car", "bus", "tram", "van", "taxi", "lorry", "jeep", "coach", "minibus",
    ] {
        lines.push_str(&format!(
            "{{\"text\": \"I drove the {w}\", \"label\": \"vehicle\"}}\n"
        ));
    }
    let p = dir.join("toy.jsonl");
    std::fs::write(&p, lines).unwrap();
    p
}

#[test]
fn report_runs_the_alternatives_resumes_and_skips_what_the_data_cannot_support() {
    let dir = tempfile::tempdir().unwrap();
    let data = toy(dir.path());
    let out = dir.path().join("rep");
    // The reference's answers: right on every text.
    let answers = dir.path().join("answers.jsonl");
    std::fs::copy(&data, &answers).unwrap();
    let args = [
        "report",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--reference-answers",
        answers.to_str().unwrap(),
        "--json",
    ];
    let r = frugal().args(args).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let row = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap().clone();
    let reference = row("reference");
    assert_eq!(reference["accuracy"], 1.0, "{reference}");
    assert!(reference["usd_per_1k"].as_f64().unwrap() > 0.0);
    // Seven examples per label in training: too few for 8-shot SetFit, which says so.
    let setfit = row("setfit-8");
    assert!(
        setfit["status"]
            .as_str()
            .unwrap()
            .starts_with("skipped: a label has only 7"),
        "{setfit}"
    );
    for name in [
        "zeroshot",
        "transfer",
        "finetune",
        "distilled",
        "chat",
        "chat-fewshot",
    ] {
        let r = row(name);
        assert_eq!(r["status"], "done", "{r}");
        let cost = r["usd_per_1k"].as_f64().unwrap();
        assert!(
            cost > 0.0 && cost < reference["usd_per_1k"].as_f64().unwrap(),
            "{r}"
        );
        assert!(r["latency_p50_ms"].as_f64().unwrap() > 0.0);
    }
    assert!(
        row("transfer")["accuracy"].as_f64().unwrap() >= 0.75,
        "{}",
        row("transfer")
    );
    assert!(row("transfer")["train_seconds"].as_f64().unwrap() > 0.0);
    // The numbers in report.md are those of report.json.
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for r in rows
        .iter()
        .filter(|r| r["status"] == "done" && r["accuracy"].is_number())
    {
        let acc = format!("{:.4}", r["accuracy"].as_f64().unwrap());
        assert!(md.contains(&acc), "{acc} not in {md}");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 3, "three charts");
    // The learning curve: the k the smallest label allows (7 examples: 1, 2, 4), 3 draws each.
    let curve = &v["learning_curve"];
    let ks: Vec<u64> = curve["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["k"].as_u64().unwrap())
        .collect();
    assert_eq!(ks, [1, 2, 4], "{curve}");
    for p in curve["points"].as_array().unwrap() {
        assert_eq!(p["draws"], 3);
        let (lo, mean, hi) = (
            p["accuracy_min"].as_f64().unwrap(),
            p["accuracy_mean"].as_f64().unwrap(),
            p["accuracy_max"].as_f64().unwrap(),
        );
        assert!(
            lo <= mean && mean <= hi && (0.0..=1.0).contains(&mean),
            "{p}"
        );
        assert!(
            md.contains(&format!("{mean:.4}")),
            "curve point {p} not in report.md"
        );
    }
    // The generative task needs prompt→answer pairs: skipped for labelled data, saying why.
    assert!(
        v["generation"]["status"]
            .as_str()
            .unwrap()
            .starts_with("skipped: your data set is labelled text"),
        "{}",
        v["generation"]
    );
    assert!(md.contains("## Generation: email subject lines"));
    // Costs on the named cloud instance (this machine is priced like it, so they agree).
    assert_eq!(v["instance"]["name"], "aws-c7a-large");
    for (r, verdict) in rows.iter().zip(v["verdicts"].as_array().unwrap()) {
        if r["name"] != "reference" && r["status"] == "done" {
            let on = verdict["instance_usd_per_1k"].as_f64().unwrap();
            assert!(on > 0.0, "{verdict}");
            assert!(md.contains(&format!("${on:.5}")), "{on} not in report.md");
        }
    }
    for r in rows
        .iter()
        .filter(|r| r["status"] == "done" && r["accuracy"].is_number())
    {
        assert!(html.contains(&format!("{:.4}", r["accuracy"].as_f64().unwrap())));
    }
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(on_disk["rows"], v["rows"]);
    // A rerun reuses every row: same figures, nothing trained again.
    let again = frugal().args(args).output().unwrap();
    assert!(again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(stderr.matches("already computed").count(), 10, "{stderr}");
    let w: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(w["rows"], v["rows"]);
    // From scratch in another folder with the same seed: the same quality figures, exactly.
    let out2 = dir.path().join("rep2");
    let mut args2 = args.to_vec();
    args2[4] = out2.to_str().unwrap();
    let fresh = frugal().args(&args2).output().unwrap();
    assert!(fresh.status.success());
    let f: Value = serde_json::from_slice(&fresh.stdout).unwrap();
    let quality = |v: &Value| -> Vec<(Value, Value, Value)> {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].clone(),
                    r["accuracy"].clone(),
                    r["macro_f1"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(quality(&f), quality(&v));
    assert_eq!(f["learning_curve"]["points"], v["learning_curve"]["points"]);
}

#[test]
fn report_rejects_data_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.jsonl");
    std::fs::write(&one, "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": \"x\"}\n{\"text\": \"c\", \"label\": \"x\"}\n").unwrap();
    let out = dir.path().join("o");
    fails(
        &[
            "report",
            "--data",
            one.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &["label"],
    );
    fails(
        &["report", "--task", "imdb", "--out", out.to_str().unwrap()],
        &["--task imdb", "--data"],
    );
    // A reference without a price, a local model as the reference, a GPU instance.
    fails(
        &[
            "report",
            "--reference",
            "gpt-9",
            "--out",
            out.to_str().unwrap(),
        ],
        &["--reference", "gpt-9"],
    );
    fails(
        &[
            "report",
            "--reference",
            "smollm2",
            "--out",
            out.to_str().unwrap(),
        ],
        &["--reference smollm2", "hosted"],
    );
    fails(
        &[
            "report",
            "--instance",
            "aws-p5-48xlarge",
            "--out",
            out.to_str().unwrap(),
        ],
        &["--instance aws-p5-48xlarge", "CPU profile", "aws-c7a-large"],
    );
    fails(
        &[
            "report",
            "--instance",
            "nope",
            "--out",
            out.to_str().unwrap(),
        ],
        &["--instance", "nope", "aws-c7a-large"],
    );
    assert!(!out.exists(), "nothing written for bad input");
    fails(
        &[
            "report",
            "--data",
            "/nonexistent.jsonl",
            "--out",
            out.to_str().unwrap(),
        ],
        &["nonexistent"],
    );
}
