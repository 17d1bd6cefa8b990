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
    /// How a label is scored: the answer's likelihood after the text, or the text's likelihood
    /// after the label (the noisy channel).
    pub scoring: Scoring,
}

/// How a chat model scores a label for a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    /// log p(label words | prompt with the text): the model answers the question.
    Answer,
    /// log p(text | prompt with the label words), per text token: the "noisy channel" of Min et
    /// al. (2022), which must explain every word of the text and so leans far less on a small
    /// model's favourite answer. `{text}` must end the prompt. On SpamAssassin it ranks spam
    /// above ham where SmolLM2-135M's answers do not.
    Channel,
}

/// The default labelling prompt (of four tried with SmolLM2-135M on a toy task, the only one
/// that, calibrated, got every text right).
pub const DEFAULT_PROMPT: &str =
    "Read the text and say which category it belongs to ({labels}).\nText: \"{text}\"\nCategory:";

impl std::str::FromStr for Scoring {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "answer" => Ok(Scoring::Answer),
            "channel" => Ok(Scoring::Channel),
            _ => Err(format!("'{s}': the scorings are answer and channel")),
        }
    }
}

/// The default channel prompt: the label's words describe the text that follows.
pub const CHANNEL_PROMPT: &str = "Here is {label}:\n{text}";

/// The default prompt of a scoring.
pub fn default_prompt(scoring: Scoring) -> &'static str {
    match scoring {
        Scoring::Answer => DEFAULT_PROMPT,
        Scoring::Channel => CHANNEL_PROMPT,
    }
}

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
        if self.scoring == Scoring::Channel {
            if demos.is_some() {
                return Err(Error::Invalid(
                    "in-context examples need answer scoring; channel scoring reads each text after each label".into(),
                ));
            }
            return Ok((self.channel(model, texts, progress)?, LabelStats::default()));
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

    /// Channel scoring: for each label, the mean log-likelihood of the text's tokens after the
    /// prompt with that label's words; the softmax of those means.
    fn channel(
        &self,
        model: &ChatModel,
        texts: &[&str],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        let Some(head) = self.prompt.strip_suffix("{text}") else {
            return Err(Error::Invalid(
                "channel scoring reads the text after the prompt: {text} must end the prompt, e.g. \"Here is {label}:\\n{text}\"".into(),
            ));
        };
        let tok = &model.tokenizer;
        let start: Vec<u32> = tok.bos.into_iter().collect();
        let prefixes: Vec<Vec<u32>> = self
            .words
            .iter()
            .map(|w| {
                let mut ids = start.clone();
                let text = head
                    .replace("{labels}", &self.words.join(", "))
                    .replace("{label}", w);
                ids.extend(
                    tok.encode(&text)?
                        .into_iter()
                        .filter(|&t| Some(t) != tok.bos),
                );
                Ok(ids)
            })
            .collect::<Result<_>>()?;
        if let Some(i) = prefixes.iter().position(Vec::is_empty) {
            return Err(Error::Invalid(format!(
                "label {} has an empty prompt to read the text after",
                i + 1
            )));
        }
        // Room for a text after the longest prefix in the context window.
        let room = model.context_length() - prefixes.iter().map(Vec::len).max().unwrap_or(0);
        let mut cache = model.new_cache();
        let mut out = vec![];
        for (i, text) in texts.iter().enumerate() {
            // The text as plain text: a control token written in it is not one.
            let mut ids: Vec<u32> = tok.encode_plain(&model.template.escape(text))?;
            ids.truncate(self.max_text_tokens);
            if ids.is_empty() {
                ids = tok.encode(" ")?;
            }
            ids.truncate(room.max(1));
            let mut means = vec![];
            for p in &prefixes {
                let lp = model.continuation_logprobs(p, std::slice::from_ref(&ids), &mut cache)?;
                means.push(lp[0] / ids.len() as f64);
            }
            out.push(softmax(&means));
            progress(i + 1);
        }
        Ok(out)
    }
}

/// A teacher's probabilities recalibrated on labelled texts (Platt scaling, one temperature and
/// one bias per label): p' = softmax(a · log p + b). Fixes an over- or under-confident teacher
/// and its prior (SpamAssassin is 31% spam) without changing which texts it ranks higher.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Recalibration {
    /// The multiplier a of the log-probabilities.
    pub scale: f64,
    /// The bias b of each label.
    pub bias: Vec<f64>,
}

impl Recalibration {
    /// Fits a and b by minimising the cross-entropy on `probs` with gold label indices `gold`
    /// (Newton-free gradient descent on a convex loss; a few hundred texts suffice). A small L2
    /// penalty keeps it finite when the texts are separable.
    pub fn fit(probs: &[Vec<f32>], gold: &[usize]) -> Result<Recalibration> {
        let k = probs.first().map_or(0, Vec::len);
        if probs.is_empty() || probs.len() != gold.len() || k < 2 {
            return Err(Error::Invalid(
                "recalibration needs labelled texts with the teacher's probabilities".into(),
            ));
        }
        let logs: Vec<Vec<f64>> = probs
            .iter()
            .map(|p| p.iter().map(|&x| (x.max(1e-12) as f64).ln()).collect())
            .collect();
        // Centre each row: the softmax ignores a shared shift, and centred inputs condition the
        // descent.
        let logs: Vec<Vec<f64>> = logs
            .into_iter()
            .map(|r| {
                let m = r.iter().sum::<f64>() / k as f64;
                r.into_iter().map(|x| x - m).collect()
            })
            .collect();
        let spread = (logs.iter().flatten().map(|x| x * x).sum::<f64>() / (logs.len() * k) as f64)
            .sqrt()
            .max(1e-9);
        // Optimise u = a·spread so the step size is scale-free.
        let (mut u, mut b) = (1.0f64, vec![0f64; k]);
        let n = logs.len() as f64;
        let lambda = 1e-3;
        let lr = 0.5;
        for _ in 0..3000 {
            let (mut gu, mut gb) = (lambda * u, vec![0f64; k]);
            for (r, &y) in logs.iter().zip(gold) {
                let z: Vec<f64> = r
                    .iter()
                    .zip(&b)
                    .map(|(x, bi)| u * x / spread + bi)
                    .collect();
                let q = softmax(&z);
                for j in 0..k {
                    let d = q[j] as f64 - if j == y { 1.0 } else { 0.0 };
                    gu += d * r[j] / spread / n;
                    gb[j] += d / n;
                }
            }
            u -= lr * gu;
            b.iter_mut().zip(&gb).for_each(|(bi, g)| *bi -= lr * g);
        }
        Ok(Recalibration {
            scale: u / spread,
            bias: b,
        })
    }

    /// Applies the calibration to one text's probabilities.
    pub fn apply(&self, p: &[f32]) -> Vec<f32> {
        let z: Vec<f64> = p
            .iter()
            .zip(&self.bias)
            .map(|(&x, b)| self.scale * (x.max(1e-12) as f64).ln() + b)
            .collect();
        softmax(&z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An over-confident teacher that favours label 0: recalibration softens it and moves its
    /// prior, lowering the log-loss on the texts it was fitted on, and keeps its ranking.
    #[test]
    fn recalibration_fixes_an_overconfident_biased_teacher() {
        let mut probs = vec![];
        let mut gold = vec![];
        for i in 0..200 {
            let y = usize::from(i % 3 == 0);
            // Right 70% of the time, always 99% sure, and tilted towards label 0.
            let right = i % 10 < 7;
            let say = if right { y } else { 1 - y };
            let p = if say == 0 { 0.995 } else { 0.99 };
            probs.push(if say == 0 {
                vec![p, 1.0 - p]
            } else {
                vec![1.0 - p, p]
            });
            gold.push(y);
        }
        let loss = |ps: &[Vec<f32>]| -> f64 {
            ps.iter()
                .zip(&gold)
                .map(|(p, &y)| -(p[y].max(1e-12) as f64).ln())
                .sum::<f64>()
                / ps.len() as f64
        };
        let r = Recalibration::fit(&probs, &gold).unwrap();
        let fixed: Vec<Vec<f32>> = probs.iter().map(|p| r.apply(p)).collect();
        assert!(r.scale > 0.0 && r.scale < 1.0, "{r:?}");
        assert!(
            loss(&fixed) < 0.7 * loss(&probs),
            "{} vs {}",
            loss(&fixed),
            loss(&probs)
        );
        for q in &fixed {
            assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        // The ranking of label 1 is kept.
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[a][1].total_cmp(&probs[b][1]));
        for w in order.windows(2) {
            assert!(fixed[w[0]][1] <= fixed[w[1]][1] + 1e-6);
        }
        assert!(Recalibration::fit(&[], &[]).is_err());
    }
}
