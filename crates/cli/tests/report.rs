//! `frugal report` end to end on a toy task with the real MiniLM: rows, skips with reasons,
//! resume, the reference's quality from given answers, and bad input.

mod common;
use common::{fails, frugal, json_of};
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
    // Seven examples per label in training: 8-shot SetFit takes all there is, and says so.
    let setfit = row("setfit-8");
    assert_eq!(setfit["status"], "done", "{setfit}");
    assert!(
        setfit["what"]
            .as_str()
            .unwrap()
            .contains("all there is of `fruit` (7), `vehicle` (7)"),
        "{setfit}"
    );
    // The majority class: half of the balanced test split, at no cost, never ✔.
    let majority = row("majority");
    assert_eq!(majority["accuracy"], 0.5, "{majority}");
    assert_eq!(majority["usd_per_1k"], 0.0);
    let verdict = |n: &str| {
        v["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(verdict("majority")["meets_95_97"], false);
    // The reference's answers are known: quality is measured against them, not the best row.
    assert_eq!(v["quality_basis"]["kind"], "reference_measured", "{v}");
    assert_eq!(v["quality_basis"]["accuracy"], 1.0);
    let fin = row("finetune");
    let kept = verdict("finetune")["quality_retained"].as_f64().unwrap();
    assert!(
        (kept - fin["accuracy"].as_f64().unwrap()).abs() < 1e-9,
        "kept {kept} of a perfect reference"
    );
    // Every trained row saw the same examples.
    for name in ["transfer", "finetune", "distilled"] {
        assert_eq!(row(name)["train_examples"], 14, "{}", row(name));
    }
    for name in [
        "setfit-8",
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
        assert!(cost > 0.0, "{r}");
        // Encoders answer in milliseconds: far below the hosted price whatever the load here
        // (the chat model's seconds are not compared: they follow the machine's load).
        if !name.starts_with("chat") {
            assert!(cost < reference["usd_per_1k"].as_f64().unwrap(), "{r}");
        }
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
        if r["name"] != "reference" && r["name"] != "majority" && r["status"] == "done" {
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
    assert_eq!(stderr.matches("already computed").count(), 11, "{stderr}");
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
        &["--task imdb", "trec", "--data"],
    );
    // A published reference accuracy needs a source and a share in 0..1; a reference prompt
    // needs {text}; rows are named.
    let o = out.to_str().unwrap();
    fails(
        &["report", "--reference-accuracy", "0.9", "--out", o],
        &["--reference-source"],
    );
    fails(
        &[
            "report",
            "--reference-accuracy",
            "83",
            "--reference-source",
            "paper",
            "--out",
            o,
        ],
        &["--reference-accuracy", "outside 0..1", "0.83"],
    );
    let prompt = dir.path().join("prompt.txt");
    std::fs::write(&prompt, "Classify this email.").unwrap();
    fails(
        &[
            "report",
            "--reference-prompt",
            prompt.to_str().unwrap(),
            "--out",
            o,
        ],
        &["--reference-prompt", "prompt.txt", "{text}"],
    );
    fails(
        &["report", "--rows", "finetune,magic", "--out", o],
        &["--rows magic", "finetune"],
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

#[test]
fn the_reference_is_priced_on_its_real_prompt_and_judged_by_its_published_quality() {
    let dir = tempfile::tempdir().unwrap();
    let data = toy(dir.path());
    let run = |out: &str, extra: &[&str]| -> Value {
        let o = dir.path().join(out);
        let mut args = vec![
            "-q",
            "report",
            "--data",
            data.to_str().unwrap(),
            "--rows",
            "transfer",
            "--out",
            o.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        json_of(&args)
    };
    let plain = run("a", &[]);
    let names: Vec<&str> = plain["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["reference", "majority", "transfer"]);
    // Unknown reference quality: the best local row stands in, and the report says so.
    assert_eq!(plain["quality_basis"]["kind"], "best_local");
    assert_eq!(plain["quality_basis"]["row"], "transfer");
    let md = std::fs::read_to_string(dir.path().join("a").join("report.md")).unwrap();
    assert!(md.contains("quality vs best local row"), "{md}");
    assert!(md.contains("one-line instruction"), "{md}");
    // The prompt a team really sends: instructions and examples, priced as such.
    let prompt = dir.path().join("prompt.txt");
    let examples =
        "Example: I ate a fig -> fruit\nExample: I rode the bike -> vehicle\n".repeat(20);
    std::fs::write(
        &prompt,
        format!("You label texts as one of {{labels}}.\n{examples}\nText: {{text}}\nLabel:"),
    )
    .unwrap();
    let real = run(
        "b",
        &[
            "--reference-prompt",
            prompt.to_str().unwrap(),
            "--reference-accuracy",
            "0.99",
            "--reference-source",
            "our own evaluation, May 2026",
        ],
    );
    let cost = |v: &Value| v["rows"][0]["usd_per_1k"].as_f64().unwrap();
    assert!(
        cost(&real) > 5.0 * cost(&plain),
        "{} vs {}",
        cost(&real),
        cost(&plain)
    );
    assert_eq!(real["quality_basis"]["kind"], "reference_published");
    assert_eq!(real["rows"][0]["accuracy"], 0.99);
    let transfer = real["rows"][2]["accuracy"].as_f64().unwrap();
    let kept = real["verdicts"][2]["quality_retained"].as_f64().unwrap();
    assert!((kept - transfer / 0.99).abs() < 1e-9);
    let md = std::fs::read_to_string(dir.path().join("b").join("report.md")).unwrap();
    assert!(md.contains("quality vs reference"), "{md}");
    assert!(md.contains("our own evaluation, May 2026"), "{md}");
    assert!(md.contains("prompt.txt"), "{md}");
}
