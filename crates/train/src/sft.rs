//! Supervised fine-tuning of a chat model with LoRA: prompt→answer pairs, the chat template
//! applied exactly as at inference, causal-LM loss on the answer tokens only (the prompt is
//! context, not a target), trained by the shared loop.

use crate::trainer::TrainConfig;
use crate::trainer::{batch_seed, fit, Checkpointing, Control, FitReport, Progress, Task};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use frugal_models::chat::lora::{Adapter, LoraConfig, LoraLlama};
use frugal_models::chat::{ChatModel, Message};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One training pair: the conversation so far and the assistant's answer to learn.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    /// Everything before the answer (system, user, earlier turns).
    pub messages: Vec<Message>,
    pub answer: String,
}

impl SftExample {
    /// A single user prompt and its answer.
    pub fn new(prompt: &str, answer: &str) -> SftExample {
        SftExample {
            messages: vec![Message::new("user", prompt)],
            answer: answer.into(),
        }
    }

    /// The user's last prompt (for tables and evaluation files).
    pub fn prompt(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str())
    }
}

#[derive(Deserialize)]
struct Line {
    prompt: Option<String>,
    answer: Option<String>,
    messages: Option<Vec<RawMessage>>,
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    content: String,
}

/// Reads JSONL of `{"prompt", "answer"}` or `{"messages": [...]}` (OpenAI's chat shape, the last
/// assistant turn being the answer). Errors name the file, the line and the fix.
pub fn load(path: &Path) -> Result<Vec<SftExample>> {
    let text = crate::data::read_text(path)?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |m: &str| Error::data(path, format!("line {}: {m}", i + 1));
        let l: Line = serde_json::from_str(line).map_err(|e| at(&format!("invalid JSON: {e}")))?;
        let ex = match (l.prompt, l.answer, l.messages) {
            (Some(p), Some(a), None) => SftExample::new(&p, &a),
            (None, None, Some(ms)) => {
                let Some(last) = ms.iter().rposition(|m| m.role == "assistant") else {
                    return Err(at(
                        "`messages` has no assistant turn; the last assistant message is the answer to learn",
                    ));
                };
                if let Some(m) = ms
                    .iter()
                    .find(|m| !["system", "user", "assistant"].contains(&m.role.as_str()))
                {
                    return Err(at(&format!(
                        "role '{}': the roles are system, user and assistant",
                        m.role
                    )));
                }
                SftExample {
                    messages: ms[..last]
                        .iter()
                        .map(|m| Message::new(&m.role, m.content.clone()))
                        .collect(),
                    answer: ms[last].content.clone(),
                }
            }
            _ => {
                return Err(at(
                    "give either `prompt` and `answer`, or `messages` (OpenAI chat shape)",
                ))
            }
        };
        if ex.answer.trim().is_empty() {
            return Err(at(
                "the answer is empty; every example needs an answer to learn",
            ));
        }
        if ex.messages.is_empty() {
            return Err(at("no prompt before the answer"));
        }
        out.push(ex);
    }
    if out.is_empty() {
        return Err(Error::data(path, "no examples"));
    }
    Ok(out)
}

/// An example as token ids: the rendered prompt, then the answer through the end-of-turn token.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Index of the first answer token.
    pub answer_start: usize,
}

/// How encoding went: kept as is, answers cut at `max_len`, examples dropped (no room left for
/// any answer token after the prompt).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EncodeStats {
    pub examples: usize,
    pub truncated: usize,
    pub dropped: usize,
    pub tokens: usize,
    pub answer_tokens: usize,
}

/// Renders and tokenizes the examples with the model's template and tokenizer: the prompt as
/// at inference (ending with the assistant's opening), the answer and its end-of-turn token.
pub fn encode(
    model: &ChatModel,
    examples: &[SftExample],
    max_len: usize,
) -> Result<(Vec<Encoded>, EncodeStats)> {
    let mut out = vec![];
    let mut st = EncodeStats::default();
    for ex in examples {
        let prompt = model.template.render(&ex.messages, true)?;
        let mut all = ex.messages.clone();
        all.push(Message::new("assistant", ex.answer.clone()));
        let full = model.template.render(&all, false)?;
        let Some(rest) = full.strip_prefix(&prompt) else {
            return Err(Error::Invalid(
                "the chat template renders an answer that does not extend the prompt; it cannot be used for fine-tuning".into(),
            ));
        };
        let p_ids = model.tokenizer.encode(&prompt)?;
        // The answer tokenized on its own after the prompt: special tokens split at the
        // boundary in every template we know, so this equals the full text's tokens.
        let mut a_ids = model.tokenizer.encode_plain(rest)?;
        // Up to and including the end-of-turn token; what the template adds after it is not
        // something to predict.
        if let Some(end) = a_ids
            .iter()
            .position(|t| model.tokenizer.stop_ids.contains(t))
        {
            a_ids.truncate(end + 1);
        }
        st.examples += 1;
        if p_ids.len() >= max_len {
            st.dropped += 1;
            continue;
        }
        if p_ids.len() + a_ids.len() > max_len {
            st.truncated += 1;
            a_ids.truncate(max_len - p_ids.len());
        }
        st.answer_tokens += a_ids.len();
        let mut ids = p_ids;
        let answer_start = ids.len();
        ids.extend(a_ids);
        st.tokens += ids.len();
        out.push(Encoded { ids, answer_start });
    }
    Ok((out, st))
}

/// The loss of a batch: mean cross-entropy of the answer tokens (each predicted from the
/// tokens before it), the prompt and the padding masked out.
pub fn batch_loss(model: &LoraLlama, batch: &[&Encoded]) -> candle_core::Result<Tensor> {
    let t = batch.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    let mut ids = vec![0u32; batch.len() * t];
    let mut positions = vec![];
    let mut targets = vec![];
    for (r, e) in batch.iter().enumerate() {
        ids[r * t..r * t + e.ids.len()].copy_from_slice(&e.ids);
        for j in e.answer_start.max(1)..e.ids.len() {
            positions.push((r * t + j - 1) as u32);
            targets.push(e.ids[j]);
        }
    }
    let ids = Tensor::from_vec(ids, (batch.len(), t), &Device::Cpu)?;
    let hidden = model.hidden(&ids)?;
    let logits = model.logits_at(&hidden, &positions)?;
    let targets = Tensor::new(targets.as_slice(), &Device::Cpu)?;
    candle_nn::loss::cross_entropy(&logits, &targets)
}

/// Mean answer-token loss over `data` (no dropout), in batches of `batch`.
pub fn mean_loss(model: &mut LoraLlama, data: &[Encoded], batch: usize) -> Result<f64> {
    let was = model.train;
    model.train = false;
    let mut sum = 0.0;
    let mut n = 0usize;
    for chunk in data.chunks(batch.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let k: usize = chunk
            .iter()
            .map(|e| e.ids.len() - e.answer_start.max(1))
            .sum();
        let l = batch_loss(model, &refs)?.to_scalar::<f32>()? as f64;
        sum += l * k as f64;
        n += k;
    }
    model.train = was;
    Ok(sum / n.max(1) as f64)
}

/// What `sft` trains: the base, its data, and where the adapter goes.
pub struct SftSpec<'a> {
    /// The base model's GGUF file and the name it was given by (shown in the adapter).
    pub base: &'a Path,
    pub base_name: String,
    pub train: &'a [SftExample],
    pub valid: Option<&'a [SftExample]>,
    pub lora: LoraConfig,
    pub config: TrainConfig,
    pub max_len: usize,
    pub out: &'a Path,
    pub resume: bool,
    pub save_every: usize,
    pub interrupt: Option<&'a std::sync::atomic::AtomicBool>,
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SftReport {
    pub fit: FitReport,
    pub train: EncodeStats,
    pub valid: Option<EncodeStats>,
    /// Validation answer-token loss before training and of the kept adapter.
    pub valid_loss_before: Option<f64>,
    pub valid_loss: Option<f64>,
    pub trainable_params: usize,
    pub tokens_per_s: f64,
}

struct SftTask<'a> {
    model: &'a mut LoraLlama,
    train: Vec<Encoded>,
    valid: Vec<Encoded>,
    seed: u64,
    batch: usize,
    adapter: &'a dyn Fn(&LoraLlama, Option<f64>) -> Result<()>,
    last_valid: Option<f64>,
}

impl Task for SftTask<'_> {
    fn len(&self) -> usize {
        self.train.len()
    }

    fn loss(&mut self, batch: &[usize]) -> candle_core::Result<Tensor> {
        self.model.train = true;
        self.model
            .reseed_dropout(batch_seed(self.seed ^ 0x5f7_1000, batch));
        let refs: Vec<&Encoded> = batch.iter().map(|&i| &self.train[i]).collect();
        batch_loss(self.model, &refs)
    }

    fn validate(&mut self) -> Result<Option<f64>> {
        if self.valid.is_empty() {
            return Ok(None);
        }
        let l = mean_loss(self.model, &self.valid, self.batch)?;
        self.last_valid = Some(l);
        // Higher is better for the loop.
        Ok(Some(-l))
    }

    fn on_best(&mut self, _epoch: usize, _score: Option<f64>) -> Result<()> {
        (self.adapter)(self.model, self.last_valid)
    }
}

/// Trains LoRA adapters on `spec.train` and saves the best (by validation loss, else the last)
/// in `spec.out` (`adapter.safetensors` + `adapter.json`).
pub fn train_sft(spec: &SftSpec, progress: &mut dyn FnMut(Progress)) -> Result<SftReport> {
    let chat = ChatModel::load(spec.base)?;
    if spec.max_len > chat.context_length() {
        return Err(Error::Invalid(format!(
            "--max-len {}: the model's context window is {} tokens",
            spec.max_len,
            chat.context_length()
        )));
    }
    let (train, train_stats) = encode(&chat, spec.train, spec.max_len)?;
    if train.is_empty() {
        return Err(Error::Invalid(format!(
            "no training example leaves room for an answer within --max-len {}; raise it or shorten the prompts",
            spec.max_len
        )));
    }
    let (valid, valid_stats) = match spec.valid {
        Some(v) => {
            let (e, s) = encode(&chat, v, spec.max_len)?;
            (e, Some(s))
        }
        None => (vec![], None),
    };
    let base_sha256 = frugal_models::chat::lora::file_sha256(spec.base)?;
    drop(chat);
    let mut model = LoraLlama::load(spec.base, spec.lora.clone(), spec.config.seed)?;
    let trainable_params = model.trainable_params();
    let valid_loss_before = if valid.is_empty() {
        None
    } else {
        Some(mean_loss(&mut model, &valid, spec.config.batch)?)
    };
    let n_train = train.len();
    let info = |valid_loss: Option<f64>| frugal_models::chat::lora::AdapterInfo {
        base_name: spec.base_name.clone(),
        base_file: spec
            .base
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default(),
        base_sha256: base_sha256.clone(),
        lora: spec.lora.clone(),
        max_len: spec.max_len,
        train_examples: n_train,
        epochs: spec.config.epochs,
        lr: spec.config.lr,
        seed: spec.config.seed,
        valid_loss,
    };
    let out: PathBuf = spec.out.to_path_buf();
    let save = |m: &LoraLlama, valid_loss: Option<f64>| -> Result<()> {
        let adapter = Adapter::from_model(m, info(valid_loss))?;
        crate::replace_dir(&out, |tmp| Ok(adapter.save(tmp)?))
    };
    // A resumed run must see the same base, settings and token ids (training and validation).
    let fingerprint = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for e in train.iter().chain(&valid) {
            h.update((e.answer_start as u64).to_le_bytes());
            for id in &e.ids {
                h.update(id.to_le_bytes());
            }
            h.update([0xff; 4]);
        }
        let data: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        format!("{base_sha256} {:?} {} {data}", spec.lora, spec.max_len)
    };
    let vars = model.adapter_vars();
    let control = Control {
        checkpointing: Some(Checkpointing {
            dir: crate::classifier::state_dir(spec.out),
            every: spec.save_every,
            resume: spec.resume,
            fingerprint,
        }),
        interrupt: spec.interrupt,
        best: None,
    };
    let tokens: usize = train.iter().map(|e| e.ids.len()).sum();
    let mut task = SftTask {
        model: &mut model,
        train,
        valid,
        seed: spec.config.seed,
        batch: spec.config.batch,
        adapter: &save,
        last_valid: None,
    };
    let report = fit(&mut task, vars, &spec.config, &control, progress)?;
    let valid_loss = task.last_valid.map(|_| {
        // The kept adapter's loss: the best validation score seen.
        -report.best_score.unwrap_or(f64::NAN)
    });
    // Tokens a second while training (validation passes excluded by the loop's own rate).
    let tokens_per_s = report.examples_per_s * tokens as f64 / n_train as f64;
    Ok(SftReport {
        fit: report,
        train: train_stats,
        valid: valid_stats,
        valid_loss_before,
        valid_loss,
        trainable_params,
        tokens_per_s,
    })
}

/// The instruction of the built-in email-subject task.
pub const SUBJECT_PROMPT: &str = "Write a subject line for this email:";

/// Train, validation and test pairs.
#[derive(Debug, Clone, Default)]
pub struct SftSplits {
    pub train: Vec<SftExample>,
    pub valid: Vec<SftExample>,
    pub test: Vec<SftExample>,
}

/// Leading reply and forward markers ("Re:", "Fwd:", "[fwd]"…), which say nothing about the
/// body and are left out of the subject to learn.
fn strip_reply(subject: &str) -> &str {
    let mut s = subject.trim();
    loop {
        let lower = s.to_ascii_lowercase();
        let cut = ["re:", "fw:", "fwd:", "aw:", "[fwd]"]
            .iter()
            .find(|p| lower.starts_with(*p))
            .map(|p| p.len());
        match cut {
            Some(n) => s = s[n..].trim_start(),
            None => return s,
        }
    }
}

/// The built-in generation task from real mail: for each SpamAssassin ham message with a
/// subject and a body, prompt = the instruction + the body (cut at a word boundary near
/// `body_chars`), answer = its real subject (reply/forward markers removed). Split as the
/// classification task: every 5th message is test, of the rest every 10th validation.
pub fn email_subjects(dir: &Path, body_chars: usize) -> Result<SftSplits> {
    let mut all = vec![];
    for (_, _, spam, raw) in crate::data::spamassassin_raw(dir)? {
        if spam {
            continue;
        }
        let (subject, body) = crate::data::email_parts(raw.as_bytes());
        let subject = strip_reply(&subject);
        if subject.is_empty() || body.len() < 20 {
            continue;
        }
        let body = if body.len() > body_chars {
            let mut cut = body_chars;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            let head = &body[..cut];
            format!("{} …", head.rsplit_once(' ').map_or(head, |(a, _)| a))
        } else {
            body
        };
        all.push(SftExample::new(
            &format!("{SUBJECT_PROMPT}\n\n{body}"),
            subject,
        ));
    }
    let (train, valid, test) = crate::data::anchor_split_of(all);
    Ok(SftSplits { train, valid, test })
}

/// ROUGE-L F1 of `candidate` against `reference`: the longest common subsequence of their
/// words (lowercased, punctuation as spaces, as the `rouge-score` package tokenizes).
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let words = |s: &str| -> Vec<String> {
        s.to_lowercase()
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { ' ' })
            .collect::<String>()
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let (c, r) = (words(candidate), words(reference));
    if c.is_empty() || r.is_empty() {
        return 0.0;
    }
    let mut prev = vec![0usize; r.len() + 1];
    for cw in &c {
        let mut cur = vec![0usize; r.len() + 1];
        for (j, rw) in r.iter().enumerate() {
            cur[j + 1] = if cw == rw {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        prev = cur;
    }
    let lcs = prev[r.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (p, rc) = (lcs / c.len() as f64, lcs / r.len() as f64);
    2.0 * p * rc / (p + rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_l_is_the_lcs_f1_of_words() {
        assert_eq!(rouge_l("the cat sat", "the cat sat"), 1.0);
        assert_eq!(rouge_l("", "x"), 0.0);
        assert_eq!(rouge_l("dog", "the cat"), 0.0);
        // LCS "the cat" (2): precision 2/3, recall 2/2 → F1 0.8.
        assert!((rouge_l("The cat, sat", "the cat") - 0.8).abs() < 1e-12);
        // Order matters: "a b c" vs "c b a" share only one word in order.
        assert!((rouge_l("a b c", "c b a") - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn reply_markers_are_stripped() {
        assert_eq!(strip_reply("Re: RE: Fwd: [fwd] hello"), "hello");
        assert_eq!(strip_reply("Regarding lunch"), "Regarding lunch");
    }
}
