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
    /// Seeds (head initialisation and dropout) of the fine-tuning runs on each side, for the
    /// loss-curve comparison; the batches are the anchor's in every run. Extra seeds run only
    /// with --anchors.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    loss_seeds: u32,
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
        .map(|(_, _, _, text)| frugal_train::data::anchor_body(&text))
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
/// With `torch_seed`, `torch.manual_seed` gets that seed whatever the script passes (the
/// fine-tuning anchor's head initialisation and dropout; its data order is Python's own
/// `random.Random(0)`, untouched).
fn anchor_json(
    python: &str,
    work: &Path,
    script: &str,
    env: &[(&str, PathBuf)],
    torch_seed: Option<u64>,
) -> Result<Value> {
    const WRAP: &str = "import json,resource,runpy,sys\n\
        s=sys.argv[1]; seed=sys.argv[2]; sys.argv=[s]\n\
        if seed:\n    import torch\n    _seed=torch.manual_seed\n    \
        torch.manual_seed=lambda _: _seed(int(seed))\n\
        try:\n    runpy.run_path(s, run_name='__main__')\n\
        except SystemExit:\n    pass\n\
        print(json.dumps({'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, 1)}))";
    let mut cmd = Command::new(python);
    let seed = torch_seed.map(|s| s.to_string()).unwrap_or_default();
    cmd.args(["-c", WRAP, script, &seed]).current_dir(work);
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
    let anchor_seeded = |script: &str, seed: Option<u64>| -> Result<Option<Value>> {
        match anchors {
            Some(()) => {
                if !ctx.quiet {
                    let with = seed
                        .map(|s| format!(" (torch seed {s})"))
                        .unwrap_or_default();
                    eprintln!("frugal: anchor {script}{with} …");
                }
                anchor_json(&python, work.path(), script, &env, seed).map(Some)
            }
            None => Ok(None),
        }
    };
    let anchor = |script: &str| anchor_seeded(script, None);
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
    let train = |seed: u64| -> Result<Value> {
        say(&format!("train (seed {seed})"));
        let (steps, seed) = (a.train_steps.to_string(), seed.to_string());
        let args = [
            "bench", "train", "--steps", &steps, "--seed", &seed, "--json",
        ];
        frugal_json(ctx, Precision::F32, &args)
    };
    let t = train(0)?;
    let ft = anchor("finetune_torch.py")?;
    rows.push(row(
        "full fine-tuning, MiniLM, batch 16 × 128",
        "examples/s",
        num(&t, "examples_per_s"),
        num(&t, "peak_rss_mb"),
        ft.as_ref()
            .map(|f| (num(f, "examples_per_s"), num(f, "peak_rss_mb"))),
    ));
    // The loss curves, over seeds: the same batches on both sides, so what differs between
    // runs of one side is the head's initialisation and the dropout masks.
    let mut loss_curve = Value::Null;
    if let Some(f) = &ft {
        let mut ours = vec![losses(&t, "losses")];
        let mut theirs = vec![losses(f, "losses_all")];
        for seed in 1..u64::from(a.loss_seeds) {
            ours.push(losses(&train(seed)?, "losses"));
            if let Some(v) = anchor_seeded("finetune_torch.py", Some(seed))? {
                theirs.push(losses(&v, "losses_all"));
            }
        }
        loss_curve = compare_curves(&ours, &theirs);
    }
    raw.insert("train".into(), t);
    if let Some(f) = ft {
        raw.insert("anchor_finetune_torch".into(), f);
    }

    let report = json!({
        "threads": ctx.threads,
        "cpu": cpu_name(),
        "rows": rows,
        "loss_curve": loss_curve,
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
    if let Some(c) = loss_curve.as_object() {
        let list = |k: &str| -> Vec<f64> {
            c[k].as_array()
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_default()
        };
        let mut lt = crate::io::table(["step", "frugal loss (± sd)", "anchor loss (± sd)", "z"]);
        let (fm, fs, am, asd, z) = (
            list("frugal_mean"),
            list("frugal_sd"),
            list("anchor_mean"),
            list("anchor_sd"),
            list("z"),
        );
        for i in 0..fm.len().min(am.len()) {
            lt.add_row([
                format!("{}", i + 1),
                format!("{:.3} ± {:.3}", fm[i], fs[i]),
                format!("{:.3} ± {:.3}", am[i], asd[i]),
                format!("{:+.1}", z[i]),
            ]);
        }
        println!("{lt}");
        println!("{}", c["verdict"].as_str().unwrap_or(""));
    }
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

/// A run's per-step losses.
fn losses(v: &Value, key: &str) -> Vec<f64> {
    v[key]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default()
}

/// Mean and sample standard deviation (0 for one value).
fn mean_sd(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let var = if x.len() > 1 {
        x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// Compares two sets of loss curves (one per seed) on the same batches. Per step: the means,
/// their spreads and z = (difference of means) / (its standard error), for reading. The
/// verdict takes each run's mean loss over all steps as one observation (a seed shifts a
/// whole curve, so steps are not independent draws) and compares the two sides' averages with
/// Welch's t: "within noise" when |t| ≤ 2 (with at least 3 runs a side).
fn compare_curves(ours: &[Vec<f64>], theirs: &[Vec<f64>]) -> Value {
    let steps = ours
        .iter()
        .chain(theirs)
        .map(|c| c.len())
        .min()
        .unwrap_or(0);
    let r = |x: f64| (x * 1e4).round() / 1e4;
    let (mut fm, mut fsd, mut am, mut asd, mut z) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..steps {
        let (m1, s1) = mean_sd(&ours.iter().map(|c| c[i]).collect::<Vec<_>>());
        let (m2, s2) = mean_sd(&theirs.iter().map(|c| c[i]).collect::<Vec<_>>());
        let se = (s1 * s1 / ours.len() as f64 + s2 * s2 / theirs.len() as f64).sqrt();
        z.push(r(if se > 0.0 { (m1 - m2) / se } else { 0.0 }));
        fm.push(r(m1));
        fsd.push(r(s1));
        am.push(r(m2));
        asd.push(r(s2));
    }
    let run_means = |runs: &[Vec<f64>]| -> Vec<f64> {
        runs.iter()
            .map(|c| c[..steps].iter().sum::<f64>() / steps.max(1) as f64)
            .collect()
    };
    let (ro, rt) = (run_means(ours), run_means(theirs));
    let ((mo, so), (mt, st)) = (mean_sd(&ro), mean_sd(&rt));
    let diff = mo - mt;
    let se = (so * so / ro.len() as f64 + st * st / rt.len() as f64).sqrt();
    let t = if se > 0.0 { diff / se } else { 0.0 };
    let enough = ours.len() >= 3 && theirs.len() >= 3 && steps > 0;
    let within = enough && t.abs() <= 2.0;
    let beyond = z.iter().filter(|v| v.abs() > 2.0).count();
    let verdict = if !enough {
        "loss curves: fewer than 3 runs a side, too few to tell noise (--loss-seeds 3 or more)"
            .to_string()
    } else {
        format!(
            "loss curves ({} runs frugal, {} anchor, same batches): mean loss over the {steps} \
             steps {mo:.4} ± {so:.4} against {mt:.4} ± {st:.4} (run to run); difference \
             {diff:+.4}, t = {t:+.2}: {}",
            ro.len(),
            rt.len(),
            if within {
                "the same curve within noise"
            } else {
                "NOT the same curve within noise"
            }
        )
    };
    json!({
        "seeds_frugal": ours.len(),
        "seeds_anchor": theirs.len(),
        "frugal_mean": fm,
        "frugal_sd": fsd,
        "anchor_mean": am,
        "anchor_sd": asd,
        "z": z,
        "frugal_run_means": ro.iter().map(|&x| r(x)).collect::<Vec<_>>(),
        "anchor_run_means": rt.iter().map(|&x| r(x)).collect::<Vec<_>>(),
        "mean_difference": r(diff),
        "t": r(t),
        "steps_beyond_2_sd": beyond,
        "within_noise": within,
        "verdict": verdict,
    })
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

#[cfg(test)]
mod tests {
    use super::compare_curves;

    /// Curves around `base` with seed-to-seed noise of about `noise`.
    fn curves(base: &[f64], seeds: usize, noise: f64, shift: f64) -> Vec<Vec<f64>> {
        (0..seeds)
            .map(|s| {
                base.iter()
                    .enumerate()
                    .map(|(i, b)| b + shift + noise * (((s * 7 + i * 13) % 11) as f64 - 5.0) / 5.0)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn loss_curves_within_noise_and_not() {
        let base: Vec<f64> = (0..22).map(|i| 0.69 - 0.01 * i as f64).collect();
        let same = compare_curves(&curves(&base, 4, 0.02, 0.0), &curves(&base, 4, 0.02, 0.0));
        assert_eq!(same["within_noise"], true, "{same}");
        // Falling more slowly by far more than the noise.
        let slow = compare_curves(&curves(&base, 4, 0.02, 0.05), &curves(&base, 4, 0.02, 0.0));
        assert_eq!(slow["within_noise"], false, "{slow}");
        assert!(slow["mean_difference"].as_f64().unwrap() > 0.04);
        // Fewer than 3 runs a side: never called equal.
        let two = compare_curves(&curves(&base, 2, 0.02, 0.0), &curves(&base, 2, 0.02, 0.0));
        assert_eq!(two["within_noise"], false);
    }
}
