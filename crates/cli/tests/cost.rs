//! `frugal tokens`, `frugal cost` and `frugal tco` end to end: exact counts, prices traced to the
//! catalog, local cost measured with the real runtime, TCO arithmetic, charts, bad input.

use std::process::{Command, Output};

fn frugal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_frugal"))
}

fn ok_json(args: &[&str]) -> Vec<serde_json::Value> {
    let o = frugal().args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn fails_with(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "should fail");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!e.contains("panicked"), "{e}");
    for n in needles {
        assert!(e.contains(n), "'{n}' not in: {e}");
    }
}

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn tokens_are_exact_for_openai_and_local_models_and_estimated_otherwise() {
    let v = &ok_json(&["tokens", "--model", "gpt-4o", "--json", "hello world"])[0];
    assert_eq!(
        (v["tokens"].as_u64(), v["method"].as_str()),
        (Some(2), Some("exact"))
    );
    let v = &ok_json(&[
        "tokens",
        "--model",
        "claude-3-haiku",
        "--json",
        "one two three",
    ])[0];
    assert_eq!(
        (v["tokens"].as_u64(), v["method"].as_str()),
        (Some(4), Some("estimated from words"))
    );
    // The local model's count is its real tokenizer's, as `frugal tokenize` shows.
    let text = "Write a haiku about saving money.";
    let local = &ok_json(&["tokens", "--model", "smollm2", "--json", text])[0];
    let tok = &ok_json(&["tokenize", "--model", "smollm2", "--json", text])[0];
    assert_eq!(local["tokens"], tok["count"]);
    let list = ok_json(&["tokens", "--list", "--json"]);
    assert!(
        list.len() >= 10
            && list
                .iter()
                .all(|m| !m["source"].as_str().unwrap().is_empty())
    );
}

#[test]
fn cost_rows_follow_the_catalog_and_the_measured_local_speed() {
    let out = ok_json(&["cost", "--words", "100", "--json"]);
    assert_eq!(out.len(), 1);
    let v = &out[0];
    assert_eq!(v["scenario"]["words"], 100);
    assert_eq!(v["reference"], "gpt-4");
    let rows = v["rows"].as_array().unwrap();
    let row = |m: &str| rows.iter().find(|r| r["model"] == m).unwrap().clone();
    let gpt4 = row("gpt-4");
    assert_eq!(gpt4["savings_vs_reference"].as_f64(), Some(0.0));
    let (i, o) = (
        gpt4["input_tokens"].as_f64().unwrap(),
        gpt4["output_tokens"].as_f64().unwrap(),
    );
    let want = i * 30.0 / 1e6 + o * 60.0 / 1e6;
    assert!((gpt4["usd_per_request"].as_f64().unwrap() - want).abs() < 1e-12);
    let local = row("smollm2");
    assert_eq!(local["kind"], "local");
    assert!(local["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        local["usd_per_request"].as_f64().unwrap() > 0.0,
        "never a silent $0"
    );
    assert!(local["savings_vs_reference"].as_f64().unwrap() > 0.9);
    assert!(v["quote"]["verdict"].as_str().unwrap().len() > 10);
    // Both seed scenarios by default.
    let both = ok_json(&["cost", "--json", "--model", "gpt-4o-mini"]);
    assert_eq!(
        both.iter()
            .map(|s| s["scenario"]["words"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [100, 1000]
    );
}

#[test]
fn tco_of_the_example_specs_adds_up_and_draws_a_chart() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("tco.svg");
    let spec = repo("examples/tco/build-vs-buy.toml");
    let v = &ok_json(&["tco", &spec, "--json", "--chart", chart.to_str().unwrap()])[0];
    let scenarios = v["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 4);
    for s in scenarios {
        let d = &s["drivers"];
        let sum: f64 = [
            "data",
            "compute",
            "infrastructure_energy",
            "maintenance",
            "talent",
        ]
        .iter()
        .map(|k| d[k].as_f64().unwrap())
        .sum();
        assert!((sum - s["total_usd"].as_f64().unwrap()).abs() < 1e-6);
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg")
            && svg.contains("specialized talent")
            && svg.contains("train our own 7B")
    );
    assert!(!v["break_even"].as_array().unwrap().is_empty());
    ok_json(&["tco", &repo("examples/tco/support-bot.toml"), "--json"]);
}

#[test]
fn bad_input_is_named_and_nothing_is_written() {
    fails_with(
        &frugal()
            .args(["tokens", "--model", "gpt4o", "hi"])
            .output()
            .unwrap(),
        &["gpt4o", "did you mean", "gpt-4o"],
    );
    fails_with(
        &frugal()
            .args(["tokens", "--model", "gpt-4o", " "])
            .output()
            .unwrap(),
        &["empty"],
    );
    fails_with(
        &frugal().args(["cost", "--words=-5"]).output().unwrap(),
        &["--words"],
    );
    fails_with(
        &frugal().args(["cost", "--words", "many"]).output().unwrap(),
        &["--words"],
    );
    fails_with(
        &frugal()
            .args(["cost", "--reference", "gpt-5"])
            .output()
            .unwrap(),
        &["gpt-5"],
    );
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("c.svg");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\nhorizon_years = 2\nrequests_per_year = \"lots\"\n",
    )
    .unwrap();
    fails_with(
        &frugal()
            .args([
                "tco",
                bad.to_str().unwrap(),
                "--chart",
                chart.to_str().unwrap(),
            ])
            .output()
            .unwrap(),
        &["bad.toml", "line 3"],
    );
    std::fs::write(&bad, "name = \"x\"\nhorizon_years = 2\n").unwrap();
    fails_with(
        &frugal()
            .args(["tco", bad.to_str().unwrap()])
            .output()
            .unwrap(),
        &["requests_per_year"],
    );
    std::fs::write(&bad, "name = \"x\"\nhorizon_years = 2\nrequests_per_year = 5\n[[scenario]]\nname = \"a\"\ndata = { examples = -3 }\n").unwrap();
    fails_with(
        &frugal()
            .args([
                "tco",
                bad.to_str().unwrap(),
                "--chart",
                chart.to_str().unwrap(),
            ])
            .output()
            .unwrap(),
        &["'a'", "data.examples"],
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() == 1,
        "no chart or temp file left"
    );
    fails_with(
        &frugal()
            .args([
                "tco",
                &repo("examples/tco/support-bot.toml"),
                "--chart",
                "x.png",
            ])
            .output()
            .unwrap(),
        &["--chart", "svg"],
    );
    let cat = dir.path().join("cat.toml");
    std::fs::write(&cat, "[models.mine]\nprovider = \"me\"\nkind = \"hosted\"\ncontext_window = 10\ntokenizer = \"o200k_base\"\nsource = \"s\"\nas_of = \"2026-01-01\"\ninput_usd_per_mtok = 1\n").unwrap();
    fails_with(
        &frugal()
            .args([
                "tokens",
                "--catalog",
                cat.to_str().unwrap(),
                "--model",
                "mine",
                "hi",
            ])
            .output()
            .unwrap(),
        &["cat.toml", "'mine'", "output_usd_per_mtok"],
    );
}
