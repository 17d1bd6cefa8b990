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
            .args(["cost", "--reference", "gpt-9-ultra"])
            .output()
            .unwrap(),
        &["gpt-9-ultra", "did you mean"],
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

/// The pinned LiteLLM map, as `frugal assets list` places it (fetched on first use).
fn price_map() -> serde_json::Map<String, serde_json::Value> {
    let assets = ok_json(&["assets", "list", "--json"]);
    let _ = ok_json(&["tokens", "--model", "gpt-5", "--json", "x"]);
    let a = assets
        .iter()
        .find(|a| a["name"] == "litellm-prices")
        .expect("the price map is a pinned asset");
    let path = a["path"].as_str().unwrap();
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn todays_models_are_priced_from_the_real_map_as_a_hand_calculation_says() {
    let map = price_map();
    for model in ["gpt-5", "claude-sonnet-4-5", "gemini-2.5-pro"] {
        for words in ["100", "1000"] {
            let v = &ok_json(&["cost", "--model", model, "--words", words, "--json"])[0];
            let row = &v["rows"][0];
            assert_eq!(row["model"], model);
            let e = &map[model];
            let want = row["input_tokens"].as_f64().unwrap()
                * e["input_cost_per_token"].as_f64().unwrap()
                + row["output_tokens"].as_f64().unwrap()
                    * e["output_cost_per_token"].as_f64().unwrap();
            let got = row["usd_per_request"].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-9,
                "{model} {words}: {got} vs {want}"
            );
            assert!(row["source"]
                .as_str()
                .unwrap()
                .contains("LiteLLM price map, litellm 1.110.2, released 2026-11-20"));
        }
    }
    // OpenAI's newer models count with o200k, exactly; Anthropic's by the stated ratio.
    let t = &ok_json(&["tokens", "--model", "gpt-5", "--json", "hello world"])[0];
    assert_eq!(
        (t["tokenizer"].as_str(), t["method"].as_str()),
        (Some("o200k_base"), Some("exact"))
    );
    let t = &ok_json(&[
        "tokens",
        "--model",
        "claude-sonnet-4-5",
        "--json",
        "one two three",
    ])[0];
    assert_eq!(t["method"].as_str(), Some("estimated from words"));
    // Provider prefixes and dated snapshots resolve to the same entries.
    for (name, want) in [
        ("openai/gpt-5", "gpt-5"),
        ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929"),
    ] {
        let v = &ok_json(&["cost", "--model", name, "--words", "100", "--json"])[0];
        assert_eq!(v["rows"][0]["model"], want, "{name}");
    }
    // The folklore is checked against today's models too.
    let v = &ok_json(&["cost", "--words", "100", "--json"])[0];
    let today = v["quote"]["verdict_today"].as_str().unwrap();
    assert!(today.contains("$"), "{today}");
    assert!(v["quote"]["today_models"].as_array().unwrap().len() >= 9);
    // Near misses still get suggestions, never $0.
    fails_with(
        &frugal()
            .args(["cost", "--model", "claude-sonet-4-5"])
            .output()
            .unwrap(),
        &["claude-sonet-4-5", "did you mean", "claude-sonnet-4-5"],
    );
}

#[test]
fn every_model_the_map_prices_per_token_is_priceable() {
    let map = price_map();
    // Entries with numeric per-token prices in a text mode, as read here independently.
    let mut csv = String::from("model,input_tokens,output_tokens\n");
    let mut want = 0.0;
    let mut n = 0;
    for (name, e) in &map {
        let mode = e["mode"].as_str().unwrap_or("chat");
        let (Some(i), Some(o)) = (
            e["input_cost_per_token"].as_f64(),
            e["output_cost_per_token"].as_f64(),
        ) else {
            continue;
        };
        if name == "sample_spec"
            || !["chat", "completion", "responses", "embedding"].contains(&mode)
        {
            continue;
        }
        csv.push_str(&format!("\"{name}\",1000,100\n"));
        // A fixed charge per request, where the map gives one.
        want += 1000.0 * i + 100.0 * o + e["input_cost_per_request"].as_f64().unwrap_or(0.0);
        n += 1;
    }
    assert!(n > 3000, "{n}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("all.csv");
    std::fs::write(&f, csv).unwrap();
    let v = &ok_json(&[
        "cost",
        "--usage",
        f.to_str().unwrap(),
        "--model",
        "gpt-5-mini",
        "--json",
    ])[0];
    assert_eq!(v["requests"].as_u64(), Some(n));
    let got = v["total_usd"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-9 * want.max(1.0), "{got} vs {want}");
    // The map's skipped entries are counted in --check.
    let o = frugal()
        .args(["tokens", "--list", "--check"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("agree") && out.contains("skipped"),
        "{out}"
    );
}

#[test]
fn cached_batch_and_reasoning_billing_and_the_users_bill() {
    let dir = tempfile::tempdir().unwrap();
    // A small map of our own, so the numbers are fixed.
    let map = dir.path().join("prices.json");
    std::fs::write(
        &map,
        r#"{"acme-1": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2e-06,
              "output_cost_per_token": 8e-06, "cache_read_input_token_cost": 5e-07,
              "input_cost_per_token_batches": 1e-06, "output_cost_per_token_batches": 4e-06,
              "supports_reasoning": true},
            "acme-mini": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-07,
              "output_cost_per_token": 4e-07},
            "broken": {"litellm_provider": "x", "mode": "chat", "input_cost_per_token": -1,
              "output_cost_per_token": 1}}"#,
    )
    .unwrap();
    let m = map.to_str().unwrap();
    let v = &ok_json(&[
        "cost",
        "--price-map",
        m,
        "--model",
        "acme-1",
        "--reference",
        "acme-1",
        "--words",
        "100",
        "--cached-share",
        "0.5",
        "--batch",
        "--reasoning-tokens",
        "1000",
        "--json",
    ])[0];
    let row = &v["rows"][0];
    let (i, o) = (
        row["input_tokens"].as_f64().unwrap(),
        row["output_tokens"].as_f64().unwrap(),
    );
    let cached = (i * 0.5).round();
    // Batch: uncached input at $1, cached at the (only) cached price $0.5, output and reasoning
    // at the batch output price $4, per 1M.
    let want = ((i - cached) * 1.0 + cached * 0.5 + o * 4.0 + 1000.0 * 4.0) / 1e6;
    let got = row["usd_per_request"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    assert_eq!(row["reasoning_tokens"].as_u64(), Some(1000));
    assert!(v["billing"]["batch"].as_bool().unwrap());
    // The user's bill: OpenAI usage-API lines, priced by hand, and the same traffic elsewhere.
    let usage = dir.path().join("usage.jsonl");
    std::fs::write(
        &usage,
        "{\"object\":\"organization.usage.completions.result\",\"input_tokens\":10000,\"output_tokens\":2000,\"input_cached_tokens\":4000,\"num_model_requests\":10,\"model\":\"acme-1\",\"batch\":false}\n{\"model\":\"openai/acme-1\",\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":500}}\n",
    )
    .unwrap();
    let v = &ok_json(&[
        "cost",
        "--price-map",
        m,
        "--usage",
        usage.to_str().unwrap(),
        "--model",
        "acme-mini",
        "--json",
    ])[0];
    let bill = (6000.0 * 2.0 + 4000.0 * 0.5 + 2000.0 * 8.0 + 1000.0 * 2.0 + 500.0 * 8.0) / 1e6;
    assert!((v["total_usd"].as_f64().unwrap() - bill).abs() < 1e-12);
    assert_eq!(v["requests"].as_u64(), Some(11));
    let alt = &v["alternatives"][0];
    assert_eq!(alt["model"], "acme-mini");
    let mini = (11000.0 * 0.1 + 2500.0 * 0.4) / 1e6;
    assert!((alt["usd"].as_f64().unwrap() - mini).abs() < 1e-12);
    assert!((alt["savings_vs_bill"].as_f64().unwrap() - (1.0 - mini / bill)).abs() < 1e-9);
    // The invalid entry is skipped and counted.
    let o = frugal()
        .args(["tokens", "--list", "--check", "--price-map", m])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("1 with invalid prices") && out.contains("broken"),
        "{out}"
    );
    // Bad usage files are named by line; unknown models too, never $0.
    std::fs::write(
        &usage,
        "{\"model\":\"acme-1\",\"input_tokens\":1,\"output_tokens\":1}\n{oops\n",
    )
    .unwrap();
    fails_with(
        &frugal()
            .args(["cost", "--price-map", m, "--usage", usage.to_str().unwrap()])
            .output()
            .unwrap(),
        &["usage.jsonl line 2", "invalid JSON"],
    );
    let csv = dir.path().join("bill.csv");
    std::fs::write(
        &csv,
        "model,input_tokens,output_tokens\nacme-1,1,1\nacme-2,5,5\n",
    )
    .unwrap();
    fails_with(
        &frugal()
            .args(["cost", "--price-map", m, "--usage", csv.to_str().unwrap()])
            .output()
            .unwrap(),
        &["bill.csv", "line 3", "acme-2", "did you mean", "acme-1"],
    );
    fails_with(
        &frugal()
            .args(["cost", "--cached-share", "1.5"])
            .output()
            .unwrap(),
        &["--cached-share", "between 0 and 1"],
    );
    fails_with(
        &frugal()
            .args(["cost", "--reasoning-tokens", "lots"])
            .output()
            .unwrap(),
        &["--reasoning-tokens", "3x"],
    );
}

#[test]
fn without_the_map_frugals_own_catalog_still_works() {
    // A map that cannot be fetched (no pip) leaves a notice and frugal's own catalog.
    let home = tempfile::tempdir().unwrap();
    let o = frugal()
        .env("FRUGAL_HOME", home.path())
        .env("FRUGAL_PIP", "false")
        .args(["tokens", "--model", "gpt-4o", "--json", "hello world"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("price map is unavailable") && err.contains("own catalog"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(home.path().join("assets"))
            .map(|d| d.filter_map(|e| e.ok()).all(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with(".litellm-prices.lock")))
            .unwrap_or(true),
        "nothing half-fetched left behind"
    );
    // Off by choice: gpt-5 is then unknown, and the error says why.
    fails_with(
        &frugal()
            .args(["cost", "--price-map", "off", "--model", "gpt-5"])
            .output()
            .unwrap(),
        &["gpt-5", "price map is not loaded"],
    );
    // A map the user names must load.
    let bad = home.path().join("bad.json");
    std::fs::write(&bad, "[1,2]").unwrap();
    fails_with(
        &frugal()
            .args(["cost", "--price-map", bad.to_str().unwrap()])
            .output()
            .unwrap(),
        &["--price-map", "bad.json", "not a LiteLLM price map"],
    );
    fails_with(
        &frugal()
            .args(["cost", "--price-map", "/nonexistent/prices.json"])
            .output()
            .unwrap(),
        &["--price-map", "/nonexistent/prices.json", "cannot read"],
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    use std::io::Read;
    // About 1 MB of table: more than a pipe holds, so the write meets the closed pipe.
    let mut child = frugal()
        .args(["tokens", "--list", "--all"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("panicked"),
        "{:?} {err}",
        out.status
    );
}
