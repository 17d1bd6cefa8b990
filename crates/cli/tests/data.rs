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
