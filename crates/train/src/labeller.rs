//! A chat model as a classifier: one prompt per text and a probability per label from the
//! log-likelihood of each label's words as the answer (no free-text parsing), calibrated on
//! content-free texts; optionally with labelled examples shown first (in-context few-shot).
//! Used as a distillation teacher and for zero- and few-shot classification.

use crate::{Error, Result};
use frugal_models::chat::{ChatModel, Message};
use serde::Serialize;

/// How a chat model labels a text.
#[derive(Debug, Clone, Serialize)]
pub struct ChatLabeller {
    /// The user message; `{text}` is replaced by the text, `{labels}` by the label words.
    pub prompt: String,
    /// The words the model would answer for each label, in the label order.
    pub words: Vec<String>,
    /// Texts are cut to this many of the chat model's tokens (bounds the cost of a prompt).
    pub max_text_tokens: usize,
    /// Contextual calibration (Zhao et al., 2021): divide each text's label probabilities by
    /// those the model gives content-free texts ("N/A", "", "[MASK]"), which removes a small
    /// model's preference for some answers regardless of the text.
    pub calibrate: bool,
}

/// The default labelling prompt (of four tried with SmolLM2-135M on a toy task, the only one
/// that, calibrated, got every text right).
pub const DEFAULT_PROMPT: &str =
    "Read the text and say which category it belongs to ({labels}).\nText: \"{text}\"\nCategory:";

/// The words a chat model answers for each label: an override LABEL=WORDS where given, else the
/// label itself.
pub fn words_for(labels: &[String], overrides: &[(String, String)]) -> Vec<String> {
    labels
        .iter()
        .map(|l| {
            overrides
                .iter()
                .find(|(k, _)| k == l)
                .map_or(l.clone(), |(_, w)| w.clone())
        })
        .collect()
}

/// A labelled example shown to the model before the text: (text, label index).
pub type Demo = (String, usize);

/// Softmax of scores (log-likelihoods) into probabilities.
fn softmax(xs: &[f64]) -> Vec<f32> {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = xs.iter().map(|x| (x - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| (x / sum) as f32).collect()
}

/// What labelling did besides the probabilities.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LabelStats {
    /// In-context examples dropped because the prompt would not fit the context window.
    pub demos_dropped: usize,
}

impl ChatLabeller {
    /// Label probabilities for each text: the softmax of each label's answer log-likelihood.
    pub fn label(
        &self,
        model: &ChatModel,
        texts: &[&str],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        Ok(self.label_with_demos(model, texts, None, progress)?.0)
    }

    /// Like `label`, with `demos[i]` shown before text `i` as earlier turns of the chat (the
    /// most useful last). Demos that would overflow the context window are dropped, first the
    /// first ones, and counted. With demos, calibration uses "N/A" after the same demos.
    pub fn label_with_demos(
        &self,
        model: &ChatModel,
        texts: &[&str],
        demos: Option<&[Vec<Demo>]>,
        progress: &mut dyn FnMut(usize),
    ) -> Result<(Vec<Vec<f32>>, LabelStats)> {
        if !self.prompt.contains("{text}") {
            return Err(Error::Invalid(
                "the labelling prompt must contain {text}, where each text goes".into(),
            ));
        }
        let answers: Vec<Vec<u32>> = self
            .words
            .iter()
            .map(|w| model.tokenizer.encode(w))
            .collect::<std::result::Result<_, _>>()?;
        if let Some(i) = answers.iter().position(Vec::is_empty) {
            return Err(Error::Invalid(format!(
                "label {} has empty words to score",
                i + 1
            )));
        }
        let longest = answers.iter().map(Vec::len).max().unwrap_or(1);
        let mut stats = LabelStats::default();
        let mut cache = model.new_cache();
        let user = |text: &str| -> Result<String> {
            let ids = model.tokenizer.encode(text)?;
            let cut = if ids.len() > self.max_text_tokens {
                model
                    .tokenizer
                    .decode(&ids[..self.max_text_tokens], false)?
            } else {
                text.to_string()
            };
            Ok(self
                .prompt
                .replace("{labels}", &self.words.join(", "))
                .replace("{text}", &cut))
        };
        let score = |text: &str,
                     shots: &[Demo],
                     cache: &mut frugal_models::chat::KvCache,
                     stats: &mut LabelStats|
         -> Result<Vec<f32>> {
            let mut shots = shots;
            loop {
                let mut messages = vec![];
                for (t, l) in shots {
                    messages.push(Message::new("user", &user(t)?));
                    messages.push(Message::new("assistant", &self.words[*l]));
                }
                messages.push(Message::new("user", &user(text)?));
                let prompt_ids = model.tokenizer.encode(&model.render(&messages)?)?;
                if prompt_ids.len() + longest > cache.capacity() && !shots.is_empty() {
                    shots = &shots[1..];
                    stats.demos_dropped += 1;
                    continue;
                }
                let lp = model.continuation_logprobs(&prompt_ids, &answers, cache)?;
                return Ok(softmax(&lp));
            }
        };
        let free: &[&str] = if demos.is_some() {
            &["N/A"]
        } else {
            &["N/A", "", "[MASK]"]
        };
        let prior_of = |shots: &[Demo],
                        cache: &mut frugal_models::chat::KvCache,
                        stats: &mut LabelStats|
         -> Result<Vec<f32>> {
            let mut prior = vec![0f32; self.words.len()];
            for t in free {
                for (p, q) in prior.iter_mut().zip(score(t, shots, cache, stats)?) {
                    *p += q / free.len() as f32;
                }
            }
            Ok(prior)
        };
        let fixed_prior = match (self.calibrate, demos) {
            (true, None) => Some(prior_of(&[], &mut cache, &mut stats)?),
            _ => None,
        };
        let mut out = vec![];
        for (i, text) in texts.iter().enumerate() {
            let shots: &[Demo] = demos.map_or(&[], |d| d[i].as_slice());
            let p = score(text, shots, &mut cache, &mut stats)?;
            let prior = match (&fixed_prior, self.calibrate) {
                (Some(p), _) => p.clone(),
                (None, true) => prior_of(shots, &mut cache, &mut stats)?,
                (None, false) => vec![1.0; p.len()],
            };
            let q: Vec<f32> = p
                .iter()
                .zip(&prior)
                .map(|(p, c)| p / c.max(1e-12))
                .collect();
            let sum: f32 = q.iter().sum();
            out.push(q.iter().map(|x| x / sum).collect());
            progress(i + 1);
        }
        Ok((out, stats))
    }
}
