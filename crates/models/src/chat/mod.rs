//! GGUF chat models: load, template, tokenize, generate with streaming.
//!
//! `ChatModel::load` reads a `.gguf` file (architecture from its metadata; llama family today),
//! builds the tokenizer and chat template stored in it, and `generate` runs the decode loop with
//! a KV cache, sampling, stop sequences and a callback that receives text as it is produced.

pub mod llama;
pub mod lora;
mod parallel;
pub mod quant;
pub mod sampling;
pub mod template;
#[doc(hidden)]
pub mod testing;
pub mod tokenizer;

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file;
pub use llama::{KvCache, Llama, LlamaConfig};
pub use sampling::{Sampler, SamplingParams};
use std::path::{Path, PathBuf};
use std::time::Instant;
pub use template::{ChatTemplate, Message};
pub use tokenizer::ChatTokenizer;

/// A loaded chat model.
pub struct ChatModel {
    pub path: PathBuf,
    pub llama: Llama,
    pub tokenizer: ChatTokenizer,
    pub template: ChatTemplate,
    /// `general.name`, or the file name.
    pub name: String,
}

/// What to generate and when to stop.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: vec![],
        }
    }
}

/// Why generation ended: `stop` (end of turn or a stop sequence) or `length` (max tokens or
/// context window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    /// `stop` or `length`, as OpenAI names them.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The result of one generation, with its timings.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values the cache already held (not computed again).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// Log-probability of each generated token under the model's own distribution (before
    /// temperature or penalties): how sure the model was, for routers that escalate doubt.
    pub logprobs: Vec<f32>,
    /// Seconds spent on the prompt (prefill).
    pub prompt_secs: f64,
    /// Seconds spent producing the completion after the prompt.
    pub gen_secs: f64,
}

impl Generation {
    /// Mean log-probability per generated token (0 when nothing was generated).
    pub fn mean_logprob(&self) -> f64 {
        if self.logprobs.is_empty() {
            return 0.0;
        }
        self.logprobs.iter().map(|&x| x as f64).sum::<f64>() / self.logprobs.len() as f64
    }

    /// Prompt tokens processed per second.
    pub fn prompt_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_secs.max(1e-9)
    }

    /// Completion tokens per second after the prompt: each one costs a forward step of one token.
    pub fn tokens_per_s(&self) -> f64 {
        let steps = self.completion_tokens.saturating_sub(1);
        if steps == 0 {
            return 0.0;
        }
        steps as f64 / self.gen_secs.max(1e-9)
    }
}

impl ChatModel {
    /// Loads a `.gguf` chat model. Errors name the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<ChatModel> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            Error::file(
                path,
                format!(
                    "not a readable GGUF file ({}); is it truncated or another format?",
                    crate::error::first_line(&e)
                ),
            )
        })?;
        let meta = llama::Meta {
            content: &content,
            path,
        };
        let llama = Llama::load(&content, &mut file, path)?;
        let tokenizer = ChatTokenizer::from_gguf(&meta)?;
        if tokenizer.inner.get_vocab_size(true) < llama.config.n_vocab {
            return Err(Error::file(
                path,
                "the tokenizer's vocabulary is smaller than the model's",
            ));
        }
        let tok_str = |id: Option<u32>| id.and_then(|i| tokenizer.token_str(i)).unwrap_or_default();
        let source = meta
            .string("tokenizer.chat_template")
            .unwrap_or(template::CHATML)
            .to_string();
        let template = ChatTemplate::new(
            &source,
            &tok_str(tokenizer.bos),
            &tok_str(Some(tokenizer.eos)),
        )?;
        let name = meta
            .string("general.name")
            .map(String::from)
            .unwrap_or_else(|_| {
                path.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into()
            });
        Ok(ChatModel {
            path: path.to_path_buf(),
            llama,
            tokenizer,
            template,
            name,
        })
    }

    /// Merges a LoRA adapter from `frugal sft` into the weights (refused unless it was trained on
    /// this very file); the adapted projections are then held in Q8_0.
    pub fn apply_adapter(&mut self, adapter: &lora::Adapter) -> Result<()> {
        adapter.check_base(&self.path)?;
        for (name, d) in adapter.deltas()? {
            let v: Vec<f32> = d.flatten_all()?.to_vec1()?;
            self.llama.add_to_weight(&name, &v)?;
        }
        Ok(())
    }

    /// The model's context window (tokens it was trained for).
    pub fn context_length(&self) -> usize {
        self.llama.config.n_ctx_train
    }

    /// Renders messages through the model's chat template, ready for the assistant to answer.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        self.template.render(messages, true)
    }

    /// A fresh KV cache spanning the model's whole context window (memory grows only with use).
    pub fn new_cache(&self) -> KvCache {
        self.llama.new_cache(self.context_length())
    }

    /// Log-likelihood of each continuation after `prompt_ids`: log p(c₁…cₖ | prompt), summed
    /// over the continuation's tokens. Scores a fixed set of answers (label verbalisers) without
    /// generating or parsing free text; the prompt is computed once and shared.
    pub fn continuation_logprobs(
        &self,
        prompt_ids: &[u32],
        continuations: &[Vec<u32>],
        cache: &mut KvCache,
    ) -> Result<Vec<f64>> {
        if prompt_ids.is_empty() {
            return Err(Error::Invalid("the prompt is empty".into()));
        }
        let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
        if continuations.iter().any(Vec::is_empty) {
            return Err(Error::Invalid("an answer to score has no tokens".into()));
        }
        if prompt_ids.len() + longest > cache.capacity() {
            return Err(Error::Invalid(format!(
                "the prompt is {} tokens and the longest answer {}, but the context window holds {}; shorten the text",
                prompt_ids.len(),
                longest,
                cache.capacity()
            )));
        }
        let reuse = reuse_prefix(cache, prompt_ids);
        let first = self.llama.forward(&prompt_ids[reuse..], cache, false)?;
        let first = log_softmax(&first);
        let vocab = self.llama.config.n_vocab;
        let mut out = vec![];
        for c in continuations {
            let mut lp = first[c[0] as usize] as f64;
            if c.len() > 1 {
                cache.truncate(prompt_ids.len());
                let rest = self.llama.forward(&c[..c.len() - 1], cache, true)?;
                for (i, &t) in c[1..].iter().enumerate() {
                    lp += log_softmax(&rest[i * vocab..(i + 1) * vocab])[t as usize] as f64;
                }
            }
            out.push(lp);
        }
        cache.truncate(prompt_ids.len());
        Ok(out)
    }

    /// Generates a completion for `prompt_ids`, continuing `cache`: the longest prefix the cache
    /// already holds is reused (multi-turn chat), the rest is computed. `on_text` receives
    /// each new piece of text; returning `false` stops generation.
    pub fn generate(
        &self,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        cache: &mut KvCache,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        if prompt_ids.is_empty() {
            return Err(Error::Invalid(
                "the prompt is empty; give some text to complete".into(),
            ));
        }
        if opts.max_tokens == 0 {
            return Err(Error::Invalid("max tokens must be at least 1".into()));
        }
        if prompt_ids.len() >= cache.capacity() {
            return Err(Error::Invalid(format!(
                "the prompt is {} tokens but the context window holds {}; shorten the prompt",
                prompt_ids.len(),
                cache.capacity()
            )));
        }
        let t0 = Instant::now();
        let reuse = reuse_prefix(cache, prompt_ids);
        let mut logits = self.llama.forward(&prompt_ids[reuse..], cache, false)?;
        let prompt_secs = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let mut sampler = Sampler::new(opts.sampling.clone());
        let mut history = prompt_ids.to_vec();
        let mut out_ids: Vec<u32> = vec![];
        let mut logprobs: Vec<f32> = vec![];
        let mut emitted = 0usize;
        let mut text = String::new();
        let max_stop = opts.stop.iter().map(|s| s.len()).max().unwrap_or(0);
        let finish;
        // Set when `on_text` asked to stop: it then hears nothing more.
        let mut stopped_by_caller = false;
        loop {
            let lse = log_sum_exp(&logits);
            let raw = logits.clone();
            let next = sampler.sample(&mut logits, &history);
            if self.tokenizer.stop_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            logprobs.push(raw[next as usize] - lse);
            out_ids.push(next);
            history.push(next);
            text = self.tokenizer.decode(&out_ids, false)?;
            // Hold back an incomplete UTF-8 character and anything that may begin a stop string.
            if let Some((idx, _)) = opts
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s.as_str()).map(|i| (i, s)))
                .min_by_key(|(i, _)| *i)
            {
                text.truncate(idx);
                if idx > emitted {
                    on_text(&text[emitted..]);
                }
                emitted = text.len();
                finish = FinishReason::Stop;
                break;
            }
            if !text.ends_with('\u{FFFD}') {
                let mut safe = text.len();
                for k in (1..max_stop.min(text.len() + 1)).rev() {
                    let tail_start = text.len() - k;
                    if text.is_char_boundary(tail_start)
                        && opts.stop.iter().any(|s| s.starts_with(&text[tail_start..]))
                    {
                        safe = tail_start;
                        break;
                    }
                }
                if safe > emitted {
                    let keep_going = on_text(&text[emitted..safe]);
                    emitted = safe;
                    if !keep_going {
                        stopped_by_caller = true;
                        finish = FinishReason::Stop;
                        break;
                    }
                }
            }
            if out_ids.len() >= opts.max_tokens || cache.len() + 1 > cache.capacity() {
                finish = FinishReason::Length;
                break;
            }
            logits = self.llama.forward(&[next], cache, false)?;
        }
        if finish == FinishReason::Length {
            // Cut short inside a multi-byte character: drop the partial character.
            while text.len() > emitted && text.ends_with('\u{FFFD}') {
                text.pop();
            }
        }
        if text.len() > emitted && !stopped_by_caller {
            on_text(&text[emitted..]);
        }
        Ok(Generation {
            cached_tokens: reuse,
            completion_tokens: out_ids.len(),
            text,
            token_ids: out_ids,
            logprobs,
            prompt_tokens: prompt_ids.len(),
            finish_reason: finish,
            prompt_secs,
            gen_secs: t1.elapsed().as_secs_f64(),
        })
    }
}

/// log Σ exp(logits), computed stably.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + logits.iter().map(|&x| (x - max).exp()).sum::<f32>().ln()
}

/// log softmax of logits, computed stably.
fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(logits);
    logits.iter().map(|&x| x - lse).collect()
}

/// Keeps the longest prefix of `prompt_ids` the cache already holds (at least the last prompt
/// token is recomputed, for its logits) and returns its length.
fn reuse_prefix(cache: &mut KvCache, prompt_ids: &[u32]) -> usize {
    let common = cache.common_prefix(prompt_ids);
    let reuse = common.min(prompt_ids.len() - 1);
    cache.truncate(reuse);
    reuse
}
