//! A semantic cache: a chat request whose conversation embeds within `threshold` (cosine) of a
//! cached one, with the same model and settings, gets the cached answer.
//!
//! Its known false hit: a request and its negation ("…is safe" / "…is not safe") or the same
//! question about another number ("5 miles" / "50 miles") embed almost identically but need other
//! answers. The guard refuses a hit unless both texts carry the same negation cues and the same
//! numbers; such near misses are counted as `guarded`.
//!
//! Similarity and the guard still let through pairs that differ in ways only a reader sees (roles
//! swapped, "how can" / "can", another entity). A verifier, a pair classifier trained with
//! `frugal cache train` on labelled pairs, reads the cached request and the new one together and
//! must find them the same question with at least `min_prob` before a hit is served; a candidate
//! it refuses is counted as `unverified`.

use std::collections::VecDeque;
use std::sync::Mutex;

/// `--cache` settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The served encoder that embeds requests.
    pub encoder: String,
    /// Cosine similarity at or above which two requests are the same question.
    pub threshold: f32,
    /// Answers kept; the oldest goes first.
    pub capacity: usize,
    /// The pair classifier a hit must also pass.
    pub verifier: Option<VerifierConfig>,
}

/// `--cache-verifier`: a `frugal cache train` checkpoint and how sure it must be.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The checkpoint folder.
    pub dir: std::path::PathBuf,
    /// Probability of [`SAME`] at or above which a candidate hit is served.
    pub min_prob: f32,
}

/// The verifier's minimum probability unless told otherwise (see the README's Reliability section
/// for how it was chosen).
pub const DEFAULT_MIN_PROB: f32 = 0.99;

/// The verifier's label for two texts asking the same thing (the other is [`DIFFERENT`]).
pub const SAME: &str = "same";
/// The verifier's label for two texts that need different answers.
pub const DIFFERENT: &str = "different";

/// The index of a verifier's [`SAME`] label among a checkpoint's labels, or why the checkpoint is
/// not a verifier.
pub fn same_label(labels: &[String]) -> Result<usize, String> {
    labels.iter().position(|l| l == SAME).ok_or_else(|| {
        format!(
            "not a cache verifier: its labels are {labels:?}, a verifier's are [\"{DIFFERENT}\", \"{SAME}\"]; train one with `frugal cache train`"
        )
    })
}

/// The one text a verifier reads for a pair: the cached request, then the new one, joined by the
/// BERT-family separator token (which the tokenizer reads as its `[SEP]`).
pub fn pair_text(cached: &str, asked: &str) -> String {
    format!("{} [SEP] {}", cached.trim(), asked.trim())
}

/// A cached answer.
#[derive(Debug, Clone)]
pub struct CachedAnswer {
    pub text: String,
    pub finish_reason: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub answered_by: String,
}

/// The outcome of a lookup.
#[derive(Debug, Clone)]
pub enum Lookup {
    Hit {
        answer: CachedAnswer,
        similarity: f32,
        /// The cached request the answer was given to (what a verifier compares).
        cached_text: String,
    },
    /// Similar enough, but the guard saw a different negation or number.
    Guarded {
        similarity: f32,
    },
    /// Similar and past the guard, but the verifier's probability of the same question was
    /// below its minimum.
    Unverified {
        similarity: f32,
        p_same: f32,
    },
    Miss,
}

impl Lookup {
    /// `hit`, `guarded` or `miss`, as responses and metrics say it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Lookup::Hit { .. } => "hit",
            Lookup::Guarded { .. } => "guarded",
            Lookup::Unverified { .. } => "unverified",
            Lookup::Miss => "miss",
        }
    }
}

struct Entry {
    /// Model and settings: only requests with the same key can share an answer.
    key: String,
    vector: Vec<f32>,
    text: String,
    answer: CachedAnswer,
}

/// What must match exactly for a semantic hit: negation cues and numbers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    negations: Vec<String>,
    numbers: Vec<String>,
}

const NEGATIONS: [&str; 14] = [
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot",
    "nowhere", "hardly", "barely", "unless",
];

impl Guard {
    /// The negation cues (including any `n't` contraction) and numbers of `text`.
    pub fn of(text: &str) -> Guard {
        let lower = text.to_lowercase();
        let mut negations = vec![];
        let mut numbers = vec![];
        for w in lower.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’' || c == '.'))
        {
            let w = w.trim_matches(|c: char| c == '.' || c == '\'' || c == '’');
            if w.is_empty() {
                continue;
            }
            if w.chars().any(|c| c.is_ascii_digit()) {
                numbers.push(w.to_string());
            } else if NEGATIONS.contains(&w) || w.ends_with("n't") || w.ends_with("n’t") {
                negations.push("not".to_string());
            }
        }
        Guard { negations, numbers }
    }
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether two similar texts may share an answer: the same negation cues and numbers, and no
/// word negated by a prefix in one whose plain form is only in the other ("unsafe" / "safe").
/// Antonyms ("soft" / "hard") are beyond it.
pub fn compatible(a: &str, b: &str) -> bool {
    if Guard::of(a) != Guard::of(b) {
        return false;
    }
    let (wa, wb) = (words(a), words(b));
    for (x, y) in [(&wa, &wb), (&wb, &wa)] {
        for w in x {
            for p in ["un", "in", "im", "il", "ir", "dis", "non"] {
                if let Some(rest) = w.strip_prefix(p) {
                    if rest.len() >= 3
                        && y.iter().any(|v| v == rest)
                        && !x.iter().any(|v| v == rest)
                    {
                        return false;
                    }
                }
            }
        }
    }
    true
}

/// The cache itself, shared by all requests.
pub struct SemanticCache {
    pub cfg: CacheConfig,
    entries: Mutex<VecDeque<Entry>>,
}

/// A labelled pair for measuring the cache's decision offline: `b` asked after `a` was answered.
#[derive(Debug, Clone)]
pub struct PairCase {
    pub similarity: f32,
    /// Whether the guard lets the two share an answer.
    pub compatible: bool,
    /// Whether they really ask the same thing.
    pub same: bool,
    /// The verifier's probability that they ask the same thing, when one was run.
    pub p_same: Option<f32>,
}

impl PairCase {
    /// The case of two texts and their embeddings.
    pub fn of(a: &str, b: &str, va: &[f32], vb: &[f32], same: bool) -> PairCase {
        PairCase {
            similarity: cosine(va, vb),
            compatible: compatible(a, b),
            same,
            p_same: None,
        }
    }
}

/// What the cache's rule (similarity at or above `threshold`, then the guard) does on labelled
/// pairs: hits, false hits (a hit on two different questions: someone else's answer), their
/// share of hits, and recall (the share of true duplicates answered from the cache).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CacheEval {
    pub threshold: f32,
    pub pairs: usize,
    pub hits: usize,
    pub false_hits: usize,
    pub false_hit_rate: f64,
    pub recall: f64,
    /// Pairs above the threshold that the guard refused.
    pub guarded: usize,
    /// The verifier's minimum probability, when it judged.
    pub min_prob: Option<f32>,
    /// Pairs past threshold and guard that the verifier refused.
    pub unverified: usize,
}

/// Evaluates the decision rule at `threshold` (similarity, then the guard) on `cases`.
pub fn evaluate(cases: &[PairCase], threshold: f32) -> CacheEval {
    evaluate_verified(cases, threshold, None)
}

/// Evaluates the rule with a verifier too: a pair past threshold and guard is a hit only if its
/// `p_same` is at least `min_prob` (a pair the verifier did not judge is refused).
pub fn evaluate_verified(cases: &[PairCase], threshold: f32, min_prob: Option<f32>) -> CacheEval {
    let (mut hits, mut false_hits, mut guarded, mut same_hits, mut unverified) = (0, 0, 0, 0, 0);
    for c in cases.iter().filter(|c| c.similarity >= threshold) {
        if !c.compatible {
            guarded += 1;
            continue;
        }
        if let Some(m) = min_prob {
            if c.p_same.is_none_or(|p| p < m) {
                unverified += 1;
                continue;
            }
        }
        hits += 1;
        if c.same {
            same_hits += 1;
        } else {
            false_hits += 1;
        }
    }
    let same = cases.iter().filter(|c| c.same).count();
    CacheEval {
        threshold,
        pairs: cases.len(),
        hits,
        false_hits,
        false_hit_rate: if hits == 0 {
            0.0
        } else {
            false_hits as f64 / hits as f64
        },
        recall: if same == 0 {
            0.0
        } else {
            same_hits as f64 / same as f64
        },
        guarded,
        min_prob,
        unverified,
    }
}

/// The lowest threshold (of the cases' own similarities) at which false hits are at most
/// `max_false_hit_rate` of hits, with at least `min_hits` hits; `None` where none is.
pub fn threshold_for(
    cases: &[PairCase],
    max_false_hit_rate: f64,
    min_hits: usize,
) -> Option<CacheEval> {
    let mut sims: Vec<f32> = cases.iter().map(|c| c.similarity).collect();
    sims.sort_by(|a, b| a.total_cmp(b));
    sims.dedup();
    sims.into_iter()
        .map(|t| evaluate(cases, t))
        .find(|e| e.hits >= min_hits && e.false_hit_rate <= max_false_hit_rate)
}

/// At a fixed `threshold`, the lowest verifier minimum (of the cases' own probabilities) at
/// which false hits are at most `max_false_hit_rate` of hits, with at least `min_hits` hits.
pub fn min_prob_for(
    cases: &[PairCase],
    threshold: f32,
    max_false_hit_rate: f64,
    min_hits: usize,
) -> Option<CacheEval> {
    let mut ps: Vec<f32> = cases
        .iter()
        .filter(|c| c.similarity >= threshold)
        .filter_map(|c| c.p_same)
        .collect();
    ps.sort_by(|a, b| a.total_cmp(b));
    ps.dedup();
    ps.into_iter()
        .map(|p| evaluate_verified(cases, threshold, Some(p)))
        .find(|e| e.hits >= min_hits && e.false_hit_rate <= max_false_hit_rate)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

impl SemanticCache {
    pub fn new(cfg: CacheConfig) -> SemanticCache {
        SemanticCache {
            cfg,
            entries: Mutex::new(VecDeque::new()),
        }
    }

    /// The most similar cached request with the same `key`, judged by the threshold and guard.
    pub fn lookup(&self, key: &str, vector: &[f32], text: &str) -> Lookup {
        let entries = self.entries.lock().expect("cache lock");
        let best = entries
            .iter()
            .filter(|e| e.key == key)
            .map(|e| (cosine(&e.vector, vector), e))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            Some((sim, e)) if sim >= self.cfg.threshold => {
                if compatible(&e.text, text) {
                    Lookup::Hit {
                        answer: e.answer.clone(),
                        similarity: sim,
                        cached_text: e.text.clone(),
                    }
                } else {
                    Lookup::Guarded { similarity: sim }
                }
            }
            _ => Lookup::Miss,
        }
    }

    /// Remembers an answer, dropping the oldest past capacity.
    pub fn insert(&self, key: &str, vector: Vec<f32>, text: &str, answer: CachedAnswer) {
        let mut entries = self.entries.lock().expect("cache lock");
        entries.push_back(Entry {
            key: key.to_string(),
            vector,
            text: text.to_string(),
            answer,
        });
        while entries.len() > self.cfg.capacity.max(1) {
            entries.pop_front();
        }
    }

    /// Answers held.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_evaluation_counts_hits_false_hits_and_recall_by_hand() {
        let case = |similarity, compatible, same| PairCase {
            similarity,
            compatible,
            same,
            p_same: None,
        };
        let cases = [
            case(0.99, true, true),
            case(0.97, true, false),
            case(0.96, false, false),
            case(0.93, true, true),
            case(0.50, true, true),
        ];
        let e = evaluate(&cases, 0.95);
        assert_eq!((e.hits, e.false_hits, e.guarded), (1 + 1, 1, 1));
        assert!((e.false_hit_rate - 0.5).abs() < 1e-12);
        assert!((e.recall - 1.0 / 3.0).abs() < 1e-12);
        let t = threshold_for(&cases, 0.0, 1).unwrap();
        assert_eq!((t.threshold, t.hits, t.false_hits), (0.99, 1, 0));
        assert!(threshold_for(&cases, 0.0, 2).is_none());
        let e = PairCase::of(
            "is it safe",
            "is it not safe",
            &[1.0, 0.0],
            &[1.0, 0.0],
            false,
        );
        assert!(!e.compatible && (e.similarity - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_verifier_refuses_candidates_below_its_minimum() {
        let case = |similarity, same, p: Option<f32>| PairCase {
            similarity,
            compatible: true,
            same,
            p_same: p,
        };
        let cases = [
            case(0.99, true, Some(0.9)),
            case(0.98, false, Some(0.6)),
            case(0.97, true, Some(0.7)),
            case(0.96, true, None),
            case(0.50, true, Some(0.99)),
        ];
        let e = evaluate_verified(&cases, 0.95, Some(0.65));
        assert_eq!((e.hits, e.false_hits, e.unverified), (2, 0, 2));
        assert!((e.recall - 0.5).abs() < 1e-12);
        assert_eq!(evaluate_verified(&cases, 0.95, None).hits, 4);
        let m = min_prob_for(&cases, 0.95, 0.0, 1).unwrap();
        assert_eq!((m.min_prob, m.hits, m.false_hits), (Some(0.7), 2, 0));
        assert!(min_prob_for(&cases, 0.95, 0.0, 3).is_none());
        assert_eq!(
            pair_text(" is it safe ", "is it not safe"),
            "is it safe [SEP] is it not safe"
        );
    }

    fn answer(t: &str) -> CachedAnswer {
        CachedAnswer {
            text: t.into(),
            finish_reason: "stop".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            answered_by: "m".into(),
        }
    }

    #[test]
    fn guard_sees_negations_and_numbers() {
        assert_eq!(Guard::of("Is it safe?"), Guard::of("is it SAFE"));
        assert_ne!(Guard::of("Is it safe?"), Guard::of("Is it not safe?"));
        assert_ne!(Guard::of("it is safe"), Guard::of("it isn't safe"));
        assert_ne!(Guard::of("convert 5 miles"), Guard::of("convert 50 miles"));
        assert_eq!(Guard::of("convert 5 miles."), Guard::of("Convert 5 miles"));
        assert!(!compatible(
            "is it safe to charge overnight",
            "is it unsafe to charge overnight"
        ));
        assert!(!compatible("an honest answer", "a dishonest answer"));
        assert!(compatible("install the unit", "install the unit please"));
        assert!(compatible("Is it safe?", "is it safe"));
    }

    #[test]
    fn hit_needs_key_threshold_and_guard() {
        let c = SemanticCache::new(CacheConfig {
            encoder: "e".into(),
            threshold: 0.9,
            capacity: 2,
            verifier: None,
        });
        c.insert("k", vec![1.0, 0.0], "is it safe", answer("yes"));
        assert!(matches!(
            c.lookup("k", &[0.99, 0.1], "is it safe?"),
            Lookup::Hit { .. }
        ));
        assert!(matches!(
            c.lookup("other", &[1.0, 0.0], "is it safe"),
            Lookup::Miss
        ));
        assert!(matches!(
            c.lookup("k", &[0.0, 1.0], "is it safe"),
            Lookup::Miss
        ));
        assert!(matches!(
            c.lookup("k", &[1.0, 0.0], "is it not safe"),
            Lookup::Guarded { .. }
        ));
        c.insert("k", vec![0.0, 1.0], "b", answer("b"));
        c.insert("k", vec![-1.0, 0.0], "c", answer("c"));
        assert_eq!(c.len(), 2);
        assert!(matches!(
            c.lookup("k", &[1.0, 0.0], "is it safe"),
            Lookup::Miss
        ));
    }
}
