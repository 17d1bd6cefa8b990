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
        let mut template = ChatTemplate::new(
            &source,
            &tok_str(tokenizer.bos),
            &tok_str(Some(tokenizer.eos)),
        )?;
        template.set_control_tokens(tokenizer.control_tokens());
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
        let (mut d, mut logits) = self.start(prompt_ids, opts, cache)?;
        while let Some(next) = self.advance(&mut d, logits, cache, on_text)? {
            logits = self.llama.forward(&[next], cache, false)?;
        }
        Ok(self.finish(d, on_text))
    }

    /// Starts a generation: checks the request, runs the prompt (reusing the longest prefix
    /// `cache` holds) and returns its state with the prompt's last logits, for `advance`.
    pub fn start(
        &self,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        cache: &mut KvCache,
    ) -> Result<(Decoding, Vec<f32>)> {
        self.start_prefilled(prompt_ids, opts, cache, None)
    }

    /// Runs up to `chunk` more prompt tokens into `cache` (which holds a prefix of the prompt),
    /// leaving the last one for `start`; true while more remain. A server runs a long prompt a
    /// chunk at a time between other requests' decoding steps, and can drop it between chunks.
    pub fn prefill_chunk(
        &self,
        prompt_ids: &[u32],
        cache: &mut KvCache,
        chunk: usize,
    ) -> Result<bool> {
        let last = prompt_ids.len().saturating_sub(1);
        if last >= cache.capacity() {
            return Err(Error::Invalid(format!(
                "the prompt is {} tokens but the context window holds {}; shorten the prompt",
                prompt_ids.len(),
                cache.capacity()
            )));
        }
        let done = cache.common_prefix(prompt_ids).min(last);
        cache.truncate(done);
        let end = (done + chunk.max(1)).min(last);
        if done < end {
            self.llama.forward(&prompt_ids[done..end], cache, false)?;
        }
        Ok(end < last)
    }

    /// `start` after `prefill_chunk`s: `prefilled` says how many prompt tokens the cache held
    /// from elsewhere (reused, reported as cached) and the seconds the chunks took.
    pub fn start_prefilled(
        &self,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        cache: &mut KvCache,
        prefilled: Option<(usize, f64)>,
    ) -> Result<(Decoding, Vec<f32>)> {
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
        let logits = self.llama.forward(&prompt_ids[reuse..], cache, false)?;
        let d = Decoding {
            sampler: Sampler::new(opts.sampling.clone()),
            history: prompt_ids.to_vec(),
            out_ids: vec![],
            logprobs: vec![],
            emitted: 0,
            text: String::new(),
            max_stop: opts.stop.iter().map(|s| s.len()).max().unwrap_or(0),
            stopped_by_caller: false,
            finish: FinishReason::Length,
            cached: prefilled.map_or(reuse, |(reused, _)| reused.min(reuse)),
            prompt_tokens: prompt_ids.len(),
            prompt_secs: t0.elapsed().as_secs_f64() + prefilled.map_or(0.0, |(_, secs)| secs),
            started: Instant::now(),
            opts: opts.clone(),
        };
        Ok((d, logits))
    }

    /// Takes the logits of the last step: samples the next token, streams the new text to
    /// `on_text` (holding back an incomplete character or a possible stop string), and returns
    /// the token to run next, or None when the generation is over (`finish` then ends it).
    pub fn advance(
        &self,
        d: &mut Decoding,
        mut logits: Vec<f32>,
        cache: &KvCache,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Option<u32>> {
        let lse = log_sum_exp(&logits);
        let raw = logits.clone();
        let next = d.sampler.sample(&mut logits, &d.history);
        if self.tokenizer.stop_ids.contains(&next) {
            d.finish = FinishReason::Stop;
            return Ok(None);
        }
        d.logprobs.push(raw[next as usize] - lse);
        d.out_ids.push(next);
        d.history.push(next);
        d.text = self.tokenizer.decode(&d.out_ids, false)?;
        let (text, stop) = (&mut d.text, &d.opts.stop);
        if let Some((idx, _)) = stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()).map(|i| (i, s)))
            .min_by_key(|(i, _)| *i)
        {
            text.truncate(idx);
            if idx > d.emitted {
                on_text(&text[d.emitted..]);
            }
            d.emitted = text.len();
            d.finish = FinishReason::Stop;
            return Ok(None);
        }
        if !text.ends_with('\u{FFFD}') {
            let mut safe = text.len();
            for k in (1..d.max_stop.min(text.len() + 1)).rev() {
                let tail_start = text.len() - k;
                if text.is_char_boundary(tail_start)
                    && stop.iter().any(|s| s.starts_with(&text[tail_start..]))
                {
                    safe = tail_start;
                    break;
                }
            }
            if safe > d.emitted {
                let keep_going = on_text(&text[d.emitted..safe]);
                d.emitted = safe;
                if !keep_going {
                    d.stopped_by_caller = true;
                    d.finish = FinishReason::Stop;
                    return Ok(None);
                }
            }
        }
        if d.out_ids.len() >= d.opts.max_tokens || cache.len() + 1 > cache.capacity() {
            d.finish = FinishReason::Length;
            return Ok(None);
        }
        Ok(Some(next))
    }

    /// Ends a generation that `advance` finished: sends the text still held back, and returns
    /// the result.
    pub fn finish(&self, mut d: Decoding, on_text: &mut dyn FnMut(&str) -> bool) -> Generation {
        if d.finish == FinishReason::Length {
            // Cut short inside a multi-byte character: drop the partial character.
            while d.text.len() > d.emitted && d.text.ends_with('\u{FFFD}') {
                d.text.pop();
            }
        }
        if d.text.len() > d.emitted && !d.stopped_by_caller {
            on_text(&d.text[d.emitted..]);
        }
        Generation {
            cached_tokens: d.cached,
            completion_tokens: d.out_ids.len(),
            text: d.text,
            token_ids: d.out_ids,
            logprobs: d.logprobs,
            prompt_tokens: d.prompt_tokens,
            finish_reason: d.finish,
            prompt_secs: d.prompt_secs,
            gen_secs: d.started.elapsed().as_secs_f64(),
        }
    }

    /// One decode step of several generations at once (`tokens[i]` continuing `caches[i]`):
    /// the weights are read once for all. Returns each one's logits.
    pub fn step_batch(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Vec<Vec<f32>>> {
        let all = self.llama.forward_batch(tokens, caches)?;
        let vocab = all.len() / tokens.len();
        Ok(all.chunks_exact(vocab).map(|c| c.to_vec()).collect())
    }
}

/// One generation in progress: its sampler, tokens and text so far, stop handling and
/// streaming state. `ChatModel::generate` drives one from start to finish; a server drives
/// several, running their decode steps together (`ChatModel::step_batch`).
pub struct Decoding {
    opts: GenerateOptions,
    sampler: Sampler,
    history: Vec<u32>,
    out_ids: Vec<u32>,
    logprobs: Vec<f32>,
    /// Bytes of `text` already sent.
    emitted: usize,
    text: String,
    max_stop: usize,
    /// Set when `on_text` asked to stop: it then hears nothing more.
    stopped_by_caller: bool,
    finish: FinishReason,
    cached: usize,
    prompt_tokens: usize,
    prompt_secs: f64,
    started: Instant,
}

impl Decoding {
    /// Tokens generated so far.
    pub fn completion_tokens(&self) -> usize {
        self.out_ids.len()
    }
}

/// log Σ exp(logits), computed stably (a vectorised exp: libm's took ~4% of a decode step).
fn log_sum_exp(logits: &[f32]) -> f32 {
    use crate::encoder::ops::{fast_exp, sum_lanes};
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut e = [0f32; 256];
    let mut sum = 0f32;
    for chunk in logits.chunks(256) {
        for (o, &x) in e.iter_mut().zip(chunk) {
            *o = fast_exp(x - max);
        }
        sum += sum_lanes(&e[..chunk.len()]);
    }
    max + sum.ln()
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
