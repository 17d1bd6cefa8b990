//! Input, output and loading helpers shared by the commands.

use anyhow::{bail, Context, Result};
use frugal_models::assets::Store;
use frugal_models::chat::ChatModel;
use frugal_models::encoder::Encoder;
use frugal_models::resolve::{resolve_model, ModelPath};
use std::io::{IsTerminal, Read};

/// Texts from the arguments, or one per line of stdin when there are none. Empty input and
/// non-UTF-8 input are errors that say what to do.
pub fn texts_from(args: Vec<String>) -> Result<Vec<String>> {
    if !args.is_empty() {
        return Ok(args);
    }
    if std::io::stdin().is_terminal() {
        bail!("no input: give texts as arguments, or pipe one text per line on stdin");
    }
    let mut bytes = vec![];
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("reading stdin")?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            bail!("stdin is not valid UTF-8 (line {line}, byte {at}); convert it first, e.g. `iconv -f latin1 -t utf-8`")
        }
    };
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    if lines.iter().all(|l| l.is_empty()) {
        bail!("no input: stdin was empty; give one text per line");
    }
    Ok(lines)
}

/// Reads a file of one text per line (blank lines skipped).
pub fn lines_of(path: &std::path::Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (byte {}); convert it first",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    if lines.is_empty() {
        bail!("{} has no text: give one text per line", path.display());
    }
    Ok(lines)
}

/// The asset store, with first-use notices unless `quiet`.
pub fn store(quiet: bool) -> Store {
    Store::from_env().with_notices(!quiet)
}

/// Loads an encoder from an asset name or a folder.
pub fn load_encoder(spec: &str, quiet: bool) -> Result<Encoder> {
    match resolve_model(spec, &store(quiet))? {
        ModelPath::HfDir(dir) => Ok(Encoder::load(&dir)?),
        ModelPath::Gguf(p) => bail!(
            "--model {}: a GGUF file is a chat model; `embed` needs an encoder folder (config.json + *.safetensors + tokenizer.json) or an encoder asset such as minilm",
            p.display()
        ),
    }
}

/// Runs `enc`'s inference in the precision asked with `--precision`, where this CPU can; the
/// fallback notice goes to stderr (unless --quiet). Returns the precision in effect.
pub fn apply_precision(
    enc: &mut Encoder,
    ctx: &crate::Ctx,
) -> Result<frugal_models::lowp::Precision> {
    let (p, notice) = enc.set_precision(ctx.precision)?;
    if let (Some(n), false) = (notice, ctx.quiet) {
        eprintln!("frugal: {n}");
    }
    Ok(p)
}

/// Loads a chat model from an asset name or a .gguf file.
pub fn load_chat(spec: &str, quiet: bool) -> Result<ChatModel> {
    match resolve_model(spec, &store(quiet))? {
        ModelPath::Gguf(p) => Ok(ChatModel::load(&p)?),
        ModelPath::HfDir(dir) => bail!(
            "--model {}: a folder is an encoder; this command needs a GGUF chat model (a .gguf file, or an asset such as smollm2)",
            dir.display()
        ),
    }
}

/// The folder of the encoder `spec` names with `--base` (minilm, a folder); a GGUF is refused.
pub fn encoder_base(spec: &str, quiet: bool) -> Result<std::path::PathBuf> {
    match resolve_model(spec, &store(quiet)).with_context(|| format!("--base {spec}"))? {
        ModelPath::HfDir(d) => Ok(d),
        ModelPath::Gguf(p) => bail!(
            "--base {}: needs an encoder (minilm, a folder), not a GGUF chat model",
            p.display()
        ),
    }
}

/// Peak resident memory of this process in MiB (VmHWM), or 0 where /proc is missing.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// A progress bar on stderr, hidden when stdout is not a terminal or with --quiet.
pub fn progress(len: u64, quiet: bool, what: &str) -> indicatif::ProgressBar {
    if quiet || !std::io::stdout().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    pb.set_message(what.to_string());
    pb
}

/// Writes `bytes` to `path` through a temporary file renamed into place: never half-written.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// A local model's tokenizer (chat model or encoder), counting whole texts: no truncation.
pub enum LocalTokenizer {
    Chat(Box<ChatModel>),
    Encoder(Box<Encoder>),
}

impl LocalTokenizer {
    /// Loads the model behind an asset name, folder or .gguf file.
    pub fn load(spec: &str, quiet: bool) -> Result<LocalTokenizer> {
        Ok(match resolve_model(spec, &store(quiet))? {
            ModelPath::Gguf(p) => LocalTokenizer::Chat(Box::new(ChatModel::load(&p)?)),
            ModelPath::HfDir(d) => {
                let mut e = Encoder::load(&d)?;
                // The whole text: `embed` truncates, but counting must not.
                e.tokenizer
                    .with_truncation(None)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                LocalTokenizer::Encoder(Box::new(e))
            }
        })
    }

    /// Ids and their vocabulary strings, special tokens included.
    pub fn tokenize(&self, text: &str) -> Result<(Vec<u32>, Vec<String>)> {
        match self {
            LocalTokenizer::Chat(m) => {
                let ids = m.tokenizer.encode(text)?;
                let toks = ids
                    .iter()
                    .map(|&i| m.tokenizer.token_str(i).unwrap_or_default())
                    .collect();
                Ok((ids, toks))
            }
            LocalTokenizer::Encoder(e) => {
                let enc = e
                    .tokenizer
                    .encode(text, true)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok((enc.get_ids().to_vec(), enc.get_tokens().to_vec()))
            }
        }
    }
}

/// A table in frugal's style (borders only), with this header.
pub fn table<T: Into<comfy_table::Cell>>(
    header: impl IntoIterator<Item = T>,
) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header(header);
    t
}

/// Recorded answers of a model on labelled texts: JSONL lines with the text field and `label`
/// (e.g. a hosted model's answers, or `frugal route record`), as text → label. `flag` names the
/// option in errors; a line without both fields is an error naming it.
pub fn read_answers(
    path: &std::path::Path,
    text_field: &str,
    flag: &str,
) -> Result<std::collections::HashMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))?;
    let mut m = std::collections::HashMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        let (Some(t), Some(l)) = (
            v.get(text_field).and_then(|t| t.as_str()),
            v.get("label").and_then(|l| l.as_str()),
        ) else {
            bail!(
                "{} line {}: needs the text field `{text_field}` and `label`",
                path.display(),
                i + 1
            );
        };
        m.insert(t.to_string(), l.to_string());
    }
    Ok(m)
}
