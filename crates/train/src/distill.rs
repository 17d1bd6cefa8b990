//! Knowledge distillation: a student classifier learns a teacher's output distribution.
//!
//! Teachers are a `frugal train` checkpoint, a local GGUF chat model used as a labeller (one
//! prompt per text, a probability per label from the log-likelihood of each label's words), or
//! outputs the user brings (JSONL with `text` and `label` or `probs`, e.g. a hosted API's
//! answers). Students keep a subset of an encoder's layers. Training is the one loop of
//! `trainer` through `classifier::train`, with the distillation loss
//! α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1−α)·CE(y, z_s) (see `classifier::SoftTargets`).

pub use crate::labeller::{ChatLabeller, DEFAULT_PROMPT};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A teacher's probability per label for each text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherOutputs {
    pub labels: Vec<String>,
    pub probs: Vec<Vec<f32>>,
}

/// Which of a teacher's `total` layers a student of `n` layers keeps: evenly spaced, ending with
/// the last (6 → 3 keeps 1, 3, 5; 6 → 2 keeps 2, 5).
pub fn evenly_spaced(total: usize, n: usize) -> Result<Vec<usize>> {
    if n == 0 || n > total {
        return Err(Error::Invalid(format!(
            "--student-layers {n}: the teacher has {total} layers; choose 1 to {total}"
        )));
    }
    Ok((1..=n).map(|i| (i * total).div_ceil(n) - 1).collect())
}

/// Checks explicit layer indices (`--keep 0,2,4`): in range, increasing, no repeats.
pub fn check_keep(total: usize, keep: &[usize]) -> Result<()> {
    if keep.is_empty() {
        return Err(Error::Invalid("--keep names no layers".into()));
    }
    if let Some(&bad) = keep.iter().find(|&&k| k >= total) {
        return Err(Error::Invalid(format!(
            "--keep {bad}: the teacher has {total} layers, numbered 0 to {}",
            total - 1
        )));
    }
    if keep.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Invalid(
            "--keep: list layers in increasing order, each once (e.g. 0,2,4)".into(),
        ));
    }
    Ok(())
}

/// The number of encoder layers in an encoder folder's config.json.
pub fn layer_count(dir: &Path) -> Result<usize> {
    let path = dir.join("config.json");
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).map_err(|e| Error::data(&path, format!("cannot read: {e}")))?,
    )
    .map_err(|e| Error::data(&path, format!("invalid JSON: {e}")))?;
    v["num_hidden_layers"]
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| Error::data(&path, "no num_hidden_layers"))
}

/// Layer index of a BERT weight name (`…encoder.layer.K.…`).
fn layer_of(name: &str) -> Option<(usize, usize, usize)> {
    let at = name.find("encoder.layer.")? + "encoder.layer.".len();
    let digits = name[at..].bytes().take_while(u8::is_ascii_digit).count();
    let k = name[at..at + digits].parse().ok()?;
    Some((at, at + digits, k))
}

/// A narrower student: hidden and feed-forward sizes below the base's.
#[derive(Debug, Clone, Copy)]
pub struct Shrink {
    pub hidden: usize,
    pub intermediate: usize,
}

/// Checks the student flags against the base `from` (layers to keep, narrower sizes) without
/// writing anything, so a mistake is reported before any slow work.
pub fn check_student(from: &Path, keep: &[usize], shrink: Option<Shrink>) -> Result<()> {
    student_config(from, keep, shrink).map(|_| ())
}

/// The student's config.json and the base sizes that shrink to smaller ones (base, student).
fn student_config(
    from: &Path,
    keep: &[usize],
    shrink: Option<Shrink>,
) -> Result<(serde_json::Value, Vec<(usize, usize)>)> {
    check_keep(layer_count(from)?, keep)?;
    let cfg_path = from.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&cfg_path).map_err(|e| Error::data(&cfg_path, format!("{e}")))?,
    )
    .map_err(|e| Error::data(&cfg_path, format!("invalid JSON: {e}")))?;
    cfg["num_hidden_layers"] = keep.len().into();
    let size = |k: &str| cfg[k].as_u64().unwrap_or(0) as usize;
    let (hidden, inter, heads) = (
        size("hidden_size"),
        size("intermediate_size"),
        size("num_attention_heads"),
    );
    let mut cut: Vec<(usize, usize)> = vec![];
    if let Some(sh) = shrink {
        let head_dim = hidden / heads.max(1);
        if sh.hidden == 0 || sh.hidden > hidden || sh.hidden % head_dim.max(1) != 0 {
            return Err(Error::Invalid(format!(
                "--student-hidden {}: must be a multiple of the head size {head_dim} from {head_dim} to the base's {hidden}",
                sh.hidden
            )));
        }
        if sh.intermediate == 0 || sh.intermediate > inter {
            return Err(Error::Invalid(format!(
                "--student-intermediate {}: must be 1 to the base's {inter}",
                sh.intermediate
            )));
        }
        cfg["hidden_size"] = sh.hidden.into();
        cfg["intermediate_size"] = sh.intermediate.into();
        cfg["num_attention_heads"] = (sh.hidden / head_dim).into();
        cut = vec![(hidden, sh.hidden), (inter, sh.intermediate)];
    }
    Ok((cfg, cut))
}

/// Writes a student encoder folder into `dir`: `from`'s embeddings, its layers `keep`
/// (renumbered 0…), its pooling and tokenizer files, and its classification head if it has one
/// (a `frugal train` checkpoint), so the student starts from the teacher's decision boundary.
/// With `shrink`, every weight is cut to the smaller sizes (the leading rows and columns: whole
/// attention heads, since the head size is kept), a structured-pruning start rather than a
/// random one; weights whose shapes already match are copied as they are.
pub fn write_student_base(
    from: &Path,
    keep: &[usize],
    shrink: Option<Shrink>,
    dir: &Path,
) -> Result<()> {
    let (cfg, cut) = student_config(from, keep, shrink)?;
    let io = |p: &Path, e: std::io::Error| Error::data(p, format!("cannot write: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    // The side files; config.json is written below with the student's sizes.
    crate::classifier::copy_base_files(from, dir)?;
    if let Some(sh) = shrink {
        let pool = dir.join("1_Pooling/config.json");
        if let Ok(bytes) = std::fs::read(&pool) {
            if let Ok(mut p) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                p["word_embedding_dimension"] = sh.hidden.into();
                std::fs::write(&pool, serde_json::to_vec_pretty(&p).expect("json"))
                    .map_err(|e| io(&pool, e))?;
            }
        }
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&cfg).expect("json"),
    )
    .map_err(|e| io(dir, e))?;
    let weights = from.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu).map_err(|e| {
        Error::data(
            &weights,
            format!("unreadable: {}", frugal_models::error::first_line(&e)),
        )
    })?;
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (name, mut t) in tensors {
        // Cut each axis of a shrunk size; the head's label axis and the embeddings' token and
        // position axes stay whatever their length.
        for axis in 0..t.rank() {
            let n = t.dim(axis)?;
            if let Some(&(_, to)) = cut.iter().find(|(from, _)| *from == n) {
                let is_index_axis = axis == 0
                    && (name.starts_with("classifier.") || name.ends_with("_embeddings.weight"));
                if !is_index_axis {
                    t = t.narrow(axis, 0, to)?.contiguous()?;
                }
            }
        }
        match layer_of(&name) {
            Some((a, b, k)) => {
                if let Some(i) = keep.iter().position(|&x| x == k) {
                    out.insert(format!("{}{i}{}", &name[..a], &name[b..]), t);
                }
            }
            None => {
                out.insert(name, t);
            }
        }
    }
    candle_core::safetensors::save(&out, dir.join("model.safetensors"))?;
    Ok(())
}

/// One line of a bring-your-own teacher file.
#[derive(Deserialize)]
struct OutputLine {
    text: Option<String>,
    label: Option<String>,
    probs: Option<BTreeMap<String, f64>>,
}

/// Teacher outputs a user brought, by text.
#[derive(Debug)]
pub struct BroughtOutputs {
    /// Probabilities per text, in `labels` order.
    pub by_text: HashMap<String, Vec<f32>>,
    /// Every label that occurs, sorted.
    pub labels: Vec<String>,
    /// How many lines' probabilities did not sum to 1 and were renormalised.
    pub renormalised: usize,
}

/// Teacher outputs the user brings: JSONL lines `{"text", "label"}` or `{"text", "probs":
/// {label: p}}`. Labels are all labels that occur; probabilities that do not sum to 1 are
/// renormalised (and counted), negative ones are refused.
pub fn read_outputs(path: &Path) -> Result<BroughtOutputs> {
    let content = crate::data::read_text(path)?;
    let mut rows: Vec<(String, BTreeMap<String, f64>)> = vec![];
    for (i, line) in content.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let o: OutputLine = serde_json::from_str(line)
            .map_err(|e| Error::data(path, format!("line {n}: invalid JSON ({e})")))?;
        let text = o
            .text
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| Error::data(path, format!("line {n}: no \"text\" (or it is empty)")))?;
        let probs = match (o.label, o.probs) {
            (_, Some(p)) => {
                if p.is_empty() {
                    return Err(Error::data(path, format!("line {n}: \"probs\" is empty")));
                }
                if let Some((l, v)) = p.iter().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
                    return Err(Error::data(
                        path,
                        format!("line {n}: probability of '{l}' is {v}; probabilities must be 0 or more"),
                    ));
                }
                p
            }
            (Some(l), None) => BTreeMap::from([(l, 1.0)]),
            (None, None) => {
                return Err(Error::data(
                    path,
                    format!("line {n}: give \"label\" or \"probs\" ({{label: probability}})"),
                ))
            }
        };
        rows.push((text, probs));
    }
    if rows.is_empty() {
        return Err(Error::data(path, "the file holds no teacher outputs"));
    }
    let labels: Vec<String> = rows
        .iter()
        .flat_map(|(_, p)| p.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut renormalised = 0;
    let mut map = HashMap::new();
    for (text, p) in rows {
        let sum: f64 = p.values().sum();
        if sum <= 0.0 {
            return Err(Error::data(
                path,
                format!("the probabilities for \"{}\" are all 0", short(&text)),
            ));
        }
        if (sum - 1.0).abs() > 1e-3 {
            renormalised += 1;
        }
        let v = labels
            .iter()
            .map(|l| (p.get(l).copied().unwrap_or(0.0) / sum) as f32)
            .collect();
        map.insert(text, v);
    }
    Ok(BroughtOutputs {
        by_text: map,
        labels,
        renormalised,
    })
}

fn short(t: &str) -> String {
    let s: String = t.chars().take(40).collect();
    if s.len() < t.len() {
        format!("{s}…")
    } else {
        s
    }
}

/// Looks up each text's outputs in a bring-your-own teacher file; texts it lacks are an error
/// that counts them and shows the first.
pub fn outputs_for(
    path: &Path,
    outputs: &HashMap<String, Vec<f32>>,
    texts: &[&str],
) -> Result<Vec<Vec<f32>>> {
    let missing: Vec<&&str> = texts
        .iter()
        .filter(|t| !outputs.contains_key(**t))
        .collect();
    if let Some(first) = missing.first() {
        return Err(Error::data(
            path,
            format!(
                "{} of {} texts have no teacher output here (first: \"{}\"); the file must hold every training and transfer text",
                missing.len(),
                texts.len(),
                short(first)
            ),
        ));
    }
    Ok(texts.iter().map(|t| outputs[*t].clone()).collect())
}

/// A cache of teacher outputs on disk, one JSON file per teacher and text list.
pub struct OutputCache {
    pub dir: std::path::PathBuf,
}

impl OutputCache {
    /// The key of a teacher (its identity string) over `texts`.
    pub fn key(teacher: &str, texts: &[&str]) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(teacher.as_bytes());
        for t in texts {
            h.update([0]);
            h.update(t.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Cached outputs for `key`, if any (a damaged entry counts as none).
    pub fn get(&self, key: &str) -> Option<TeacherOutputs> {
        let bytes = std::fs::read(self.dir.join(format!("{key}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores outputs (atomically: a temporary file renamed into place).
    pub fn put(&self, key: &str, outputs: &TeacherOutputs) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::data(&self.dir, format!("cannot create: {e}")))?;
        let path = self.dir.join(format!("{key}.json"));
        let tmp = self.dir.join(format!(".{key}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(outputs).expect("json"))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::data(&path, format!("cannot write: {e}")))
    }
}

/// Parameters and weight-file size of a checkpoint folder.
pub fn size_of(dir: &Path) -> Result<(usize, u64)> {
    let path = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    let params = tensors.values().map(|t| t.elem_count()).sum();
    let bytes = std::fs::metadata(&path)
        .map_err(|e| Error::data(&path, format!("{e}")))?
        .len();
    Ok((params, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_spread_and_checked() {
        assert_eq!(evenly_spaced(6, 3).unwrap(), [1, 3, 5]);
        assert_eq!(evenly_spaced(6, 2).unwrap(), [2, 5]);
        assert_eq!(evenly_spaced(6, 1).unwrap(), [5]);
        assert_eq!(evenly_spaced(6, 6).unwrap(), [0, 1, 2, 3, 4, 5]);
        assert_eq!(evenly_spaced(12, 4).unwrap(), [2, 5, 8, 11]);
        assert!(evenly_spaced(6, 7)
            .unwrap_err()
            .to_string()
            .contains("6 layers"));
        assert!(check_keep(6, &[0, 6])
            .unwrap_err()
            .to_string()
            .contains("--keep 6"));
        assert!(check_keep(6, &[2, 1]).is_err());
        assert!(check_keep(6, &[0, 2, 4]).is_ok());
        assert_eq!(
            layer_of("bert.encoder.layer.11.attention.self.query.weight"),
            Some((19, 21, 11))
        );
        assert_eq!(layer_of("embeddings.word_embeddings.weight"), None);
    }

    #[test]
    fn brought_outputs_are_read_renormalised_and_refused_when_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        std::fs::write(
            &p,
            "{\"text\": \"a\", \"label\": \"spam\"}\n{\"text\": \"b\", \"probs\": {\"ham\": 2, \"spam\": 2}}\n",
        )
        .unwrap();
        let o = read_outputs(&p).unwrap();
        let map = &o.by_text;
        assert_eq!(o.labels, ["ham", "spam"]);
        assert_eq!(map["a"], [0.0, 1.0]);
        assert_eq!(map["b"], [0.5, 0.5]);
        assert_eq!(o.renormalised, 1);
        let e = outputs_for(&p, map, &["a", "zzz"]).unwrap_err().to_string();
        assert!(e.contains("1 of 2") && e.contains("zzz"), "{e}");
        std::fs::write(
            &p,
            "{\"text\": \"a\", \"probs\": {\"ham\": -0.5, \"spam\": 1.5}}\n",
        )
        .unwrap();
        assert!(read_outputs(&p)
            .unwrap_err()
            .to_string()
            .contains("0 or more"));
        std::fs::write(&p, "{\"text\": \"a\"}\n").unwrap();
        assert!(read_outputs(&p)
            .unwrap_err()
            .to_string()
            .contains("\"label\" or \"probs\""));
        std::fs::write(&p, "").unwrap();
        assert!(read_outputs(&p)
            .unwrap_err()
            .to_string()
            .contains("no teacher outputs"));
    }
}
