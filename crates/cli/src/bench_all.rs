//! `frugal bench all`: every speed workload of the anchors in one go (embeddings in each
//! precision, generation, full fine-tuning), each in its own process so each peak memory is its
//! own; with `--anchors DIR`, the reference implementations run in the same session and the
//! report gives frugal ÷ anchor ratios (the only figures that mean much on a shared machine).

use crate::io::store;
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::Args;
use frugal_models::lowp::Precision;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Args)]
pub struct AllBench {
    /// Also run the reference implementations (`../shared/anchors`: sentence-transformers,
    /// llama.cpp, PyTorch) in this session and report the ratios; the folder of their scripts.
    #[arg(long)]
    anchors: Option<PathBuf>,
    /// Python with the anchors' packages (their setup.sh makes it).
    #[arg(long, default_value = "~/.cache/frugal-anchors/venv/bin/python")]
    python: String,
    /// Precisions of the embedding workload, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16,int8")]
    precisions: Vec<Precision>,
    /// Timed fine-tuning steps (batch 16 × 128, as the PyTorch anchor).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    train_steps: u32,
    #[arg(long)]
    json: bool,
}

/// The first 512 SpamAssassin bodies in the anchors' order and form (text after the first
/// blank line, whitespace collapsed): the embedding workload of `embed_st.py`.
fn anchor_bodies(dir: &Path) -> Result<Vec<String>> {
    let raw = frugal_train::data::spamassassin_raw(dir)?;
    Ok(raw
        .into_iter()
        .take(512)
        .map(|(_, _, _, text)| {
            let text = text.replace("\r\n", "\n");
            let body = text.split_once("\n\n").map(|(_, b)| b).unwrap_or("");
            body.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect())
}

/// Runs this binary with `args` (quiet, JSON) and parses its one JSON line.
fn frugal_json(ctx: &Ctx, precision: Precision, args: &[&str]) -> Result<Value> {
    let exe = std::env::current_exe().context("cannot find the frugal binary")?;
    let out = Command::new(exe)
        .args(["-q", "--threads", &ctx.threads.to_string()])
        .args(["--precision", precision.name()])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "frugal {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Runs one anchor script (copied beside its `common.py` into `work`) under `python`, wrapped
/// to record its peak memory; its JSON line with `peak_rss_mb` added.
fn anchor_json(python: &str, work: &Path, script: &str, env: &[(&str, PathBuf)]) -> Result<Value> {
    const WRAP: &str = "import json,resource,runpy,sys\n\
        s=sys.argv[1]; sys.argv=[s]\n\
        try:\n    runpy.run_path(s, run_name='__main__')\n\
        except SystemExit:\n    pass\n\
        print(json.dumps({'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, 1)}))";
    let mut cmd = Command::new(python);
    cmd.args(["-c", WRAP, script]).current_dir(work);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .with_context(|| format!("--python {python}: cannot run it"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines().filter(|l| l.trim_start().starts_with('{'));
    let (Some(first), Some(rss)) = (lines.next(), lines.next_back()) else {
        bail!(
            "anchor {script} gave no result: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    };
    let mut v: Value = serde_json::from_str(first)?;
    let rss: Value = serde_json::from_str(rss)?;
    v["peak_rss_mb"] = rss["peak_rss_mb"].clone();
    Ok(v)
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

/// One row: a workload, frugal's figure, the anchor's, the ratio, both peak memories.
fn row(name: &str, unit: &str, ours: f64, ours_rss: f64, anchor: Option<(f64, f64)>) -> Value {
    let r = |x: f64| (x * 100.0).round() / 100.0;
    json!({
        "workload": name,
        "unit": unit,
        "frugal": r(ours),
        "frugal_peak_rss_mb": r(ours_rss),
        "anchor": anchor.map(|a| r(a.0)),
        "anchor_peak_rss_mb": anchor.map(|a| r(a.1)),
        "ratio": anchor.map(|a| r(ours / a.0)),
        "memory_ratio": anchor.map(|a| r(ours_rss / a.1)),
    })
}

pub fn run(a: AllBench, ctx: &Ctx) -> Result<()> {
    let st = store(ctx.quiet);
    let data = st.ensure("spamassassin")?;
    let minilm = crate::io::encoder_base("minilm", ctx.quiet)?;
    let gguf = match frugal_models::resolve::resolve_model("smollm2", &st)? {
        frugal_models::resolve::ModelPath::Gguf(p) => p,
        frugal_models::resolve::ModelPath::HfDir(d) => {
            bail!(
                "the smollm2 asset is a folder ({}), not a GGUF",
                d.display()
            )
        }
    };
    let work = tempfile::tempdir()?;
    let input = work.path().join("bodies512.txt");
    crate::io::write_atomic(&input, anchor_bodies(&data)?.join("\n").as_bytes())?;
    let input_s = input.to_string_lossy().to_string();

    let anchors = match &a.anchors {
        Some(dir) => {
            if !dir.join("common.py").is_file() {
                bail!(
                    "--anchors {}: no common.py there; give the folder of the anchor scripts (../shared/anchors)",
                    dir.display()
                );
            }
            for e in std::fs::read_dir(dir)?.flatten() {
                if e.path().extension().is_some_and(|x| x == "py") {
                    std::fs::copy(e.path(), work.path().join(e.file_name()))?;
                }
            }
            Some(())
        }
        None => None,
    };
    let python = if let Some(rest) = a.python.strip_prefix("~/") {
        std::env::var("HOME")
            .map(|h| format!("{h}/{rest}"))
            .unwrap_or(a.python.clone())
    } else {
        a.python.clone()
    };
    if anchors.is_some() && !Path::new(&python).exists() && python.contains('/') {
        bail!("--python {python}: not found; run the anchors' setup.sh first, or give another");
    }
    let env = [
        ("ANCHOR_MINILM_DIR", minilm.clone()),
        ("ANCHOR_SMOLLM_GGUF", gguf.clone()),
        ("ANCHOR_DATA_DIR", data.clone()),
    ];
    let anchor = |script: &str| -> Result<Option<Value>> {
        match anchors {
            Some(()) => {
                if !ctx.quiet {
                    eprintln!("frugal: anchor {script} …");
                }
                anchor_json(&python, work.path(), script, &env).map(Some)
            }
            None => Ok(None),
        }
    };
    let say = |what: &str| {
        if !ctx.quiet {
            eprintln!("frugal: {what} …");
        }
    };

    let mut rows = vec![];
    let mut raw = serde_json::Map::new();
    // Embeddings.
    let mut embeds = vec![];
    for p in &a.precisions {
        say(&format!("embed ({p})"));
        embeds.push((
            *p,
            frugal_json(ctx, *p, &["bench", "embed", "--input", &input_s, "--json"])?,
        ));
    }
    let st_anchor = anchor("embed_st.py")?;
    for (p, v) in &embeds {
        let effective = v["precision"].as_str().unwrap_or("f32");
        rows.push(row(
            &format!("embed, MiniLM, 512 × 128, batch 32 ({effective})"),
            "sentences/s",
            num(v, "sentences_per_s"),
            num(v, "peak_rss_mb"),
            st_anchor
                .as_ref()
                .map(|s| (num(s, "sentences_per_s"), num(s, "peak_rss_mb"))),
        ));
        raw.insert(format!("embed_{p}"), v.clone());
    }
    if let Some(s) = &st_anchor {
        raw.insert("anchor_embed_st".into(), s.clone());
    }
    // Generation.
    say("generate");
    let g = frugal_json(ctx, Precision::F32, &["bench", "generate", "--json"])?;
    let ll = anchor("generate_llamacpp.py")?;
    let ll_pair = |k: &str| ll.as_ref().map(|l| (num(l, k), num(l, "peak_rss_mb")));
    rows.push(row(
        "generate, SmolLM2-135M Q4_1, 128 greedy tokens",
        "tokens/s",
        num(&g, "tokens_per_s"),
        num(&g, "peak_rss_mb"),
        ll_pair("gen_tok_per_s"),
    ));
    rows.push(row(
        "prompt processing, SmolLM2-135M Q4_1, 22 tokens",
        "tokens/s",
        num(&g, "prompt_tokens_per_s"),
        num(&g, "peak_rss_mb"),
        ll_pair("prompt_tok_per_s"),
    ));
    raw.insert("generate".into(), g);
    if let Some(l) = ll {
        raw.insert("anchor_generate_llamacpp".into(), l);
    }
    // Fine-tuning.
    say("train");
    let t = frugal_json(
        ctx,
        Precision::F32,
        &[
            "bench",
            "train",
            "--steps",
            &a.train_steps.to_string(),
            "--json",
        ],
    )?;
    let ft = anchor("finetune_torch.py")?;
    rows.push(row(
        "full fine-tuning, MiniLM, batch 16 × 128",
        "examples/s",
        num(&t, "examples_per_s"),
        num(&t, "peak_rss_mb"),
        ft.as_ref()
            .map(|f| (num(f, "examples_per_s"), num(f, "peak_rss_mb"))),
    ));
    raw.insert("train".into(), t);
    if let Some(f) = ft {
        raw.insert("anchor_finetune_torch".into(), f);
    }

    let report = json!({
        "threads": ctx.threads,
        "cpu": cpu_name(),
        "rows": rows,
        "runs": raw,
    });
    if a.json {
        println!("{report}");
        return Ok(());
    }
    let mut t = crate::io::table([
        "workload",
        "frugal",
        "anchor",
        "ratio",
        "peak MB (frugal / anchor)",
    ]);
    for r in &rows {
        let f = |k: &str| match r[k].as_f64() {
            Some(x) => format!("{x}"),
            None => "—".into(),
        };
        t.add_row([
            r["workload"].as_str().unwrap_or("").to_string(),
            format!("{} {}", f("frugal"), r["unit"].as_str().unwrap_or("")),
            f("anchor"),
            match r["ratio"].as_f64() {
                Some(x) => format!("{x:.2}×"),
                None => "—".into(),
            },
            format!("{} / {}", f("frugal_peak_rss_mb"), f("anchor_peak_rss_mb")),
        ]);
    }
    println!("{t}");
    println!(
        "{} threads on {}; anchors {}",
        ctx.threads,
        cpu_name(),
        if a.anchors.is_some() {
            "run in this session"
        } else {
            "not run (give --anchors ../shared/anchors)"
        }
    );
    Ok(())
}

/// The CPU's model name (Linux), for the report.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
