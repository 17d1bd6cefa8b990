//! `frugal distill` end to end on the real MiniLM: a head-mode teacher, a one-layer student, the
//! table's fields, brought teacher outputs, and bad input.

mod common;
use common::{fails, frugal};

#[test]
fn distill_a_checkpoint_into_a_one_layer_student() {
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
    std::fs::write(&data, &lines).unwrap();
    let unl = dir.path().join("more.txt");
    std::fs::write(&unl, "I ate a plum\nI drove the lorry\n").unwrap();
    let teacher = dir.path().join("teacher");
    let (d, t) = (data.to_str().unwrap(), teacher.to_str().unwrap());
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
            t,
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
    let student = dir.path().join("student");
    let s = student.to_str().unwrap();
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "-q",
            "distill",
            "--teacher",
            t,
            "--data",
            d,
            "--valid",
            d,
            "--test",
            d,
            "--unlabelled",
            unl.to_str().unwrap(),
            "--out",
            s,
            "--student-layers",
            "1",
            "--epochs",
            "10",
            "--lr",
            "1e-3",
            "--batch",
            "4",
            "--patience",
            "0",
            "--json",
        ];
        a.extend_from_slice(extra);
        a
    };
    let r = frugal().args(args(&[])).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(j["student"]["layers"], 1);
    assert_eq!(j["student"]["kept_layers"], serde_json::json!([5]));
    assert_eq!(j["teacher"]["layers"], 6);
    assert_eq!(j["examples"]["unlabelled"], 2);
    let (tp, sp) = (
        j["teacher"]["parameters"].as_u64().unwrap(),
        j["student"]["parameters"].as_u64().unwrap(),
    );
    assert!(sp < tp && j["student"]["file_bytes"].as_u64() < j["teacher"]["file_bytes"].as_u64());
    assert!(j["teacher"]["accuracy"].as_f64().unwrap() >= 0.99, "{j}");
    for k in [
        "accuracy",
        "agreement",
        "quality_retained",
        "sentences_per_s",
        "speedup",
    ] {
        assert!(j["student"][k].as_f64().is_some(), "{k} missing: {j}");
    }
    assert!(j["student"]["accuracy"].as_f64().unwrap() >= 0.75, "{j}");
    // The student is a classifier like any other.
    let r = frugal()
        .args(["eval", "--model", s, "--data", d, "--json"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(student.join("frugal.json")).unwrap()).unwrap();
    assert!(
        info["teacher"].as_str().unwrap().contains("checkpoint"),
        "{info}"
    );

    // Brought outputs: labels must cover the data's, probabilities must not be negative.
    let outs = dir.path().join("outs.jsonl");
    std::fs::write(
        &outs,
        "{\"text\": \"I ate a apple\", \"probs\": {\"fruit\": 0.9, \"other\": 0.1}}\n",
    )
    .unwrap();
    let o = outs.to_str().unwrap();
    fails(
        &["distill", "--teacher", o, "--data", d, "--out", s],
        &["label", "fruit, other"],
    );
    std::fs::write(
        &outs,
        "{\"text\": \"x\", \"probs\": {\"fruit\": -1, \"vehicle\": 2}}\n",
    )
    .unwrap();
    fails(
        &["distill", "--teacher", o, "--data", d, "--out", s],
        &["outs.jsonl", "0 or more"],
    );
    let mut all = String::new();
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        all.push_str(&format!(
            "{{\"text\": {}, \"label\": {}}}\n",
            v["text"], v["label"]
        ));
    }
    std::fs::write(&outs, &all).unwrap();
    fails(
        &[
            "distill",
            "--teacher",
            o,
            "--data",
            d,
            "--unlabelled",
            unl.to_str().unwrap(),
            "--out",
            s,
        ],
        &["2 of 18 texts have no teacher output"],
    );
    fails(
        &[
            "distill",
            "--teacher",
            t,
            "--data",
            d,
            "--out",
            s,
            "--student-layers",
            "7",
        ],
        &["6 layers"],
    );
    fails(
        &[
            "distill",
            "--teacher",
            t,
            "--data",
            d,
            "--out",
            s,
            "--keep",
            "0,9",
        ],
        &["--keep 9"],
    );
    fails(
        &["distill", "--teacher", "minilm", "--data", d, "--out", s],
        &["cannot teach"],
    );
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n").unwrap();
    fails(
        &[
            "distill",
            "--teacher",
            t,
            "--data",
            d,
            "--unlabelled",
            empty.to_str().unwrap(),
            "--out",
            s,
        ],
        &["empty.txt", "no texts"],
    );
}

/// The real SmolLM2 as teacher with channel scoring: recalibrated on the validation data (shown
/// in the table), its soft labels train a one-layer student; a bad scoring name is refused.
#[test]
fn distill_from_a_chat_teacher_with_channel_scoring() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("t.jsonl");
    let mut lines = String::new();
    for w in ["apple", "banana", "cherry", "grape", "lemon", "mango"] {
        lines.push_str(&format!(
            "{{\"text\": \"I ate a ripe {w} for lunch\", \"label\": \"fruit\"}}\n"
        ));
    }
    for w in ["truck", "car", "bus", "tractor", "van", "taxi"] {
        lines.push_str(&format!(
            "{{\"text\": \"I drove the {w} down the road\", \"label\": \"vehicle\"}}\n"
        ));
    }
    std::fs::write(&data, &lines).unwrap();
    let d = data.to_str().unwrap();
    let out = dir.path().join("student");
    let o = out.to_str().unwrap();
    let base = [
        "distill",
        "--teacher",
        "smollm2",
        "--teacher-scoring",
        "channel",
        "--label-words",
        "fruit=a sentence about fruit",
        "--label-words",
        "vehicle=a sentence about vehicles",
        "--data",
        d,
        "--valid",
        d,
        "--test",
        d,
        "--out",
        o,
        "--student-layers",
        "1",
        "--epochs",
        "2",
        "--batch",
        "4",
        "--json",
    ];
    let r = frugal().args(base).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(e.contains("recalibrated on 12 validation texts"), "{e}");
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(
        j["teacher"]["recalibration"]["scale"].as_f64().unwrap() > 0.0,
        "{j}"
    );
    assert!(j["teacher"]["accuracy"].as_f64().unwrap() >= 0.75, "{j}");
    assert!(j["student"]["accuracy"].as_f64().is_some(), "{j}");
    assert!(out.join("frugal.json").is_file());
    let mut bad = base.to_vec();
    bad[4] = "guess";
    fails(&bad, &["guess", "answer and channel"]);
}

/// Killed while the chat teacher labels, distill leaves no temporary student folder behind.
#[test]
fn a_distill_killed_during_labelling_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("t.jsonl");
    let mut lines = String::new();
    for i in 0..200 {
        let label = if i % 2 == 0 { "fruit" } else { "vehicle" };
        lines.push_str(&format!(
            "{{\"text\": \"text number {i} about {label} and many other things\", \"label\": \"{label}\"}}\n"
        ));
    }
    std::fs::write(&data, lines).unwrap();
    let out = dir.path().join("student");
    let mut child = frugal()
        .args([
            "-q",
            "distill",
            "--teacher",
            "smollm2",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    child.kill().unwrap();
    child.wait().unwrap();
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("student"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
