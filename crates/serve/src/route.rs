//! The cascade router: a request to the model `frugal-router` is answered by a local model first;
//! when the local model is not confident enough, the request goes unchanged to an upstream
//! OpenAI-compatible endpoint and its answer is returned instead.
//!
//! Confidence is the classifier's probability margin (top minus runner-up) for `/v1/classify`,
//! and the chat model's mean token log-probability for chat completions. `calibrate` picks the
//! cheapest threshold that keeps a quality target, from labelled data.

use crate::Loaded;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

fn default_name() -> String {
    "frugal-router".into()
}

/// `ROUTE.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The model name clients ask for.
    #[serde(default = "default_name")]
    pub name: String,
    pub upstream: Upstream,
    /// Routing of chat completions.
    pub chat: Option<ChatRoute>,
    /// Routing of `/v1/classify`.
    pub classify: Option<ClassifyRoute>,
}

/// Where escalated requests go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Base URL of an OpenAI-compatible API, e.g. `https://api.openai.com/v1`.
    pub url: String,
    /// The key, read from this environment variable (preferred to `api_key`).
    pub api_key_env: Option<String>,
    pub api_key: Option<String>,
    pub timeout_s: Option<f64>,
    /// Catalog model that prices the upstream's answers (default: the served `--reference`).
    pub price_as: Option<String>,
}

impl Upstream {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_s.unwrap_or(120.0).max(0.001))
    }

    /// The bearer key, if any.
    pub fn key(&self) -> Option<String> {
        self.api_key_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok())
            .or_else(|| self.api_key.clone())
    }
}

/// Chat: local model first, upstream when the answer's mean token log-probability is below
/// `threshold`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRoute {
    pub local: String,
    pub upstream_model: String,
    pub threshold: f64,
}

/// Classification: local classifier first, upstream when the probability margin is below
/// `threshold`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRoute {
    pub local: String,
    pub upstream_model: String,
    pub threshold: f64,
    /// How the upstream classifies: `classify` (its `/v1/classify`, e.g. another frugal server)
    /// or `chat` (a chat model asked with `prompt`, its answer matched to a label: what a hosted
    /// LLM offers).
    #[serde(default = "default_api")]
    pub upstream_api: String,
    /// The chat prompt; `{labels}` and `{text}` are filled in.
    pub prompt: Option<String>,
    /// Texts are cut to this many characters in the chat prompt.
    pub max_text_chars: Option<usize>,
}

fn default_api() -> String {
    "classify".into()
}

/// The chat prompt used when a route gives none.
pub const DEFAULT_PROMPT: &str =
    "Classify the text as one of: {labels}. Answer with the label only.\n\nText: {text}";

impl ClassifyRoute {
    /// The chat prompt for one text.
    pub fn prompt_for(&self, labels: &[String], text: &str) -> String {
        let limit = self.max_text_chars.unwrap_or(4000);
        let cut: String = text.chars().take(limit).collect();
        self.prompt
            .as_deref()
            .unwrap_or(DEFAULT_PROMPT)
            .replace("{labels}", &labels.join(", "))
            .replace("{text}", &cut)
    }
}

/// The label a chat answer names: the one mentioned first (as a whole word, any case).
pub fn parse_label(answer: &str, labels: &[String]) -> Option<String> {
    let lower = answer.to_lowercase();
    let is_word = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
    labels
        .iter()
        .filter_map(|l| {
            let ll = l.to_lowercase();
            lower.match_indices(&ll).find_map(|(i, _)| {
                let before = lower[..i].chars().next_back();
                let after = lower[i + ll.len()..].chars().next();
                (is_word(before) && is_word(after)).then_some((i, l.clone()))
            })
        })
        .min_by_key(|(i, _)| *i)
        .map(|(_, l)| l)
}

/// One upstream answer to a classification.
#[derive(Debug, Clone)]
pub struct UpstreamLabel {
    pub label: String,
    /// The upstream's probabilities and margin (its /v1/classify), when it gives them.
    pub probabilities: Option<serde_json::Value>,
    pub margin: Option<f64>,
    /// Token counts it reported (chat), to price its answer.
    pub tokens: Option<(u64, u64)>,
    /// The chat answer, when the label was read from one.
    pub answer: Option<String>,
    pub model: String,
}

/// Asks the route's upstream to classify `texts` (labels as the local classifier names them).
/// Errors name the upstream's URL.
pub async fn classify_upstream(
    http: &reqwest::Client,
    r: &RouteConfig,
    texts: &[&str],
    labels: &[String],
) -> Result<Vec<UpstreamLabel>, String> {
    let c = r
        .classify
        .as_ref()
        .ok_or("the route has no [classify] section")?;
    if c.upstream_api == "chat" {
        let asks = texts.iter().map(|t| {
            let body = serde_json::json!({
                "model": c.upstream_model,
                "messages": [{"role": "user", "content": c.prompt_for(labels, t)}],
                "temperature": 0,
                "max_tokens": 8,
            });
            async move { post_upstream(http, r, "chat/completions", &body).await }
        });
        let answers = futures_util::future::join_all(asks).await;
        return answers
            .into_iter()
            .map(|a| {
                let v = a?;
                let text = v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                Ok(UpstreamLabel {
                    // An answer naming no label counts as the first label's opposite: unknown.
                    label: parse_label(&text, labels).unwrap_or_default(),
                    probabilities: None,
                    margin: None,
                    tokens: v["usage"]["prompt_tokens"]
                        .as_u64()
                        .zip(v["usage"]["completion_tokens"].as_u64()),
                    answer: Some(text),
                    model: v["model"].as_str().unwrap_or(&c.upstream_model).to_string(),
                })
            })
            .collect();
    }
    let v = post_upstream(
        http,
        r,
        "classify",
        &serde_json::json!({"model": c.upstream_model, "input": texts}),
    )
    .await?;
    let data = v["data"].as_array().cloned().unwrap_or_default();
    if data.len() != texts.len() {
        return Err(format!(
            "the upstream {} answered {} classifications for {} texts",
            r.endpoint("classify"),
            data.len(),
            texts.len()
        ));
    }
    let model = v["model"].as_str().unwrap_or(&c.upstream_model).to_string();
    Ok(data
        .into_iter()
        .map(|a| UpstreamLabel {
            label: a["label"].as_str().unwrap_or("").to_string(),
            probabilities: Some(a["probabilities"].clone()),
            margin: a["margin"].as_f64(),
            tokens: None,
            answer: None,
            model: model.clone(),
        })
        .collect())
}

/// POSTs `body` to the upstream's `path` with its key; failures name the URL.
pub async fn post_upstream(
    http: &reqwest::Client,
    r: &RouteConfig,
    path: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let url = r.endpoint(path);
    let mut req = http.post(&url).json(body);
    if let Some(k) = r.upstream.key() {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("the upstream {url} failed: {e}"))?;
    let status = resp.status();
    let v: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("the upstream {url} sent no JSON ({status}): {e}"))?;
    if !status.is_success() {
        let msg = v["error"]["message"].as_str().unwrap_or("no message");
        return Err(format!("the upstream {url} answered {status}: {msg}"));
    }
    Ok(v)
}

impl RouteConfig {
    /// Reads a route file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<RouteConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--route {}: cannot read: {e}", path.display()))?;
        let r: RouteConfig =
            toml::from_str(&text).map_err(|e| format!("--route {}: {e}", path.display()))?;
        if r.chat.is_none() && r.classify.is_none() {
            return Err(format!(
                "--route {}: routes nothing; add a [chat] or [classify] section (local, upstream_model, threshold)",
                path.display()
            ));
        }
        if !(r.upstream.url.starts_with("http://") || r.upstream.url.starts_with("https://")) {
            return Err(format!(
                "--route {}: upstream.url `{}` must start with http:// or https://",
                path.display(),
                r.upstream.url
            ));
        }
        if let Some(c) = &r.classify {
            if c.upstream_api != "classify" && c.upstream_api != "chat" {
                return Err(format!(
                    "--route {}: classify.upstream_api `{}`: use classify (the upstream's /v1/classify) or chat (a chat model asked with `prompt`)",
                    path.display(),
                    c.upstream_api
                ));
            }
            if c.prompt.as_ref().is_some_and(|p| !p.contains("{text}")) {
                return Err(format!(
                    "--route {}: classify.prompt has no {{text}}: put {{text}} where the text goes",
                    path.display()
                ));
            }
            if !(c.threshold >= 0.0 && c.threshold.is_finite()) {
                return Err(format!(
                    "--route {}: classify.threshold {} is a probability margin: 0 (never escalate) to 1 (nearly always), or above 1 (always)",
                    path.display(),
                    c.threshold
                ));
            }
        }
        if let Some(c) = &r.chat {
            if c.threshold > 0.0 || !c.threshold.is_finite() {
                return Err(format!(
                    "--route {}: chat.threshold {} is a mean log-probability: 0 or below (e.g. -1.5)",
                    path.display(),
                    c.threshold
                ));
            }
        }
        Ok(r)
    }

    /// The local models it names must be served.
    pub fn check(&self, loaded: &Loaded) -> Result<(), String> {
        if let Some(c) = &self.chat {
            if !loaded.chat.contains_key(&c.local) {
                return Err(format!(
                    "--route: chat.local `{}` is not a served chat model; serve it with --model (served: {})",
                    c.local,
                    loaded.chat.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if let Some(c) = &self.classify {
            if !loaded.classifiers.contains_key(&c.local) {
                return Err(format!(
                    "--route: classify.local `{}` is not a served classifier; serve it with --classifier NAME=DIR (served: {})",
                    c.local,
                    loaded.classifiers.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The upstream endpoint for `path` (e.g. `chat/completions`).
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}/{}", self.upstream.url.trim_end_matches('/'), path)
    }
}

/// One labelled example as the router sees it.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The local model's confidence.
    pub confidence: f64,
    pub local_correct: bool,
    /// Whether the upstream answered it right; `None`: no recorded answer (assumed right).
    pub upstream_correct: Option<bool>,
}

/// One threshold's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub threshold: f64,
    /// Share of requests sent upstream.
    pub escalated: f64,
    pub accuracy: f64,
    /// Accuracy relative to sending everything upstream.
    pub quality: f64,
    /// One-sided lower confidence bound of (accuracy − target × upstream accuracy), per
    /// example: the threshold is chosen only where it is ≥ 0, so the target holds beyond this
    /// sample, not just on it.
    pub margin_lower: f64,
    pub usd_per_1k: f64,
    /// 1 − cost / cost of sending everything upstream.
    pub savings: f64,
}

/// The cost/quality curve over every useful threshold, and the cheapest point whose quality
/// (accuracy relative to the upstream's own) reaches `target` with confidence: the lower bound
/// `z` standard errors below the measured margin must clear it (z = 1.645: 95% one-sided;
/// z = 0: on this sample only).
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub curve: Vec<Point>,
    pub chosen: Option<Point>,
    pub upstream_accuracy: f64,
    pub local_accuracy: f64,
    pub target: f64,
    pub z: f64,
    /// True when upstream answers were recorded for every example, false when the upstream was
    /// assumed right.
    pub upstream_recorded: bool,
}

/// Escalating every case below `t`: the lower confidence bound (z standard errors) of the mean
/// per-example difference between the cascade being right and `target` × the upstream being
/// right.
fn lower_bound(cases: &[Case], t: f64, target: f64, z: f64) -> f64 {
    let n = cases.len().max(1) as f64;
    let d: Vec<f64> = cases
        .iter()
        .map(|c| {
            let up = c.upstream_correct.unwrap_or(true) as u8 as f64;
            let right = if c.confidence < t {
                up
            } else {
                c.local_correct as u8 as f64
            };
            right - target * up
        })
        .collect();
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    mean - z * (var / n).sqrt()
}

/// Escalating every case below `t`: accuracy and share escalated.
fn evaluate(cases: &[Case], t: f64) -> (f64, f64) {
    let n = cases.len().max(1) as f64;
    let mut right = 0usize;
    let mut up = 0usize;
    for c in cases {
        if c.confidence < t {
            up += 1;
            right += c.upstream_correct.unwrap_or(true) as usize;
        } else {
            right += c.local_correct as usize;
        }
    }
    (right as f64 / n, up as f64 / n)
}

/// Calibrates a threshold. `local_usd` and `upstream_usd` are per request; every request pays
/// the local model, escalated ones pay the upstream too.
pub fn calibrate(
    cases: &[Case],
    target: f64,
    z: f64,
    local_usd: f64,
    upstream_usd: f64,
) -> Calibration {
    let mut ts: Vec<f64> = cases.iter().map(|c| c.confidence).collect();
    ts.push(f64::NEG_INFINITY);
    ts.push(f64::INFINITY);
    ts.sort_by(f64::total_cmp);
    ts.dedup();
    let (up_acc, _) = evaluate(cases, f64::INFINITY);
    let (local_acc, _) = evaluate(cases, f64::NEG_INFINITY);
    let all_up = upstream_usd * 1000.0;
    let mut curve: Vec<Point> = ts
        .iter()
        .map(|&t| {
            let (acc, esc) = evaluate(cases, t);
            let usd = 1000.0 * (local_usd + esc * upstream_usd);
            Point {
                threshold: t,
                escalated: esc,
                accuracy: acc,
                quality: acc / up_acc.max(1e-12),
                margin_lower: lower_bound(cases, t, target, z),
                usd_per_1k: usd,
                savings: if all_up > 0.0 {
                    1.0 - usd / all_up
                } else {
                    0.0
                },
            }
        })
        .collect();
    let chosen = curve
        .iter()
        .filter(|p| p.quality >= target - 1e-12 && p.margin_lower >= -1e-12)
        .min_by(|a, b| {
            a.usd_per_1k
                .total_cmp(&b.usd_per_1k)
                .then(b.accuracy.total_cmp(&a.accuracy))
        })
        .cloned();
    // Thresholds are printable and valid in a route file: −∞ (never escalate) becomes the
    // lowest confidence seen (nothing is below it), +∞ (always) a little above the highest.
    let lo = cases
        .iter()
        .map(|c| c.confidence)
        .fold(f64::INFINITY, f64::min);
    let hi = cases
        .iter()
        .map(|c| c.confidence)
        .fold(f64::NEG_INFINITY, f64::max);
    let finite = |t: f64| {
        if t == f64::NEG_INFINITY {
            lo
        } else if t == f64::INFINITY {
            hi + 1e-4
        } else {
            t
        }
    };
    for p in &mut curve {
        p.threshold = finite(p.threshold);
    }
    Calibration {
        chosen: chosen.map(|mut p| {
            p.threshold = finite(p.threshold);
            p
        }),
        curve,
        upstream_accuracy: up_acc,
        local_accuracy: local_acc,
        target,
        z,
        upstream_recorded: cases.iter().all(|c| c.upstream_correct.is_some()),
    }
}

/// A margin between the top two probabilities.
pub fn margin(probs: &[f32]) -> f32 {
    let mut top = f32::NEG_INFINITY;
    let mut second = f32::NEG_INFINITY;
    for &p in probs {
        if p > top {
            second = top;
            top = p;
        } else if p > second {
            second = p;
        }
    }
    if second == f32::NEG_INFINITY {
        1.0
    } else {
        top - second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(c: f64, l: bool, u: Option<bool>) -> Case {
        Case {
            confidence: c,
            local_correct: l,
            upstream_correct: u,
        }
    }

    #[test]
    fn picks_the_cheapest_threshold_meeting_the_target() {
        // Low-confidence cases are the ones the local model gets wrong.
        let cases = vec![
            case(0.1, false, Some(true)),
            case(0.2, false, Some(true)),
            case(0.5, true, Some(true)),
            case(0.8, true, Some(false)),
            case(0.9, true, Some(true)),
        ];
        let c = calibrate(&cases, 1.2, 0.0, 0.0001, 0.01);
        assert!((c.upstream_accuracy - 0.8).abs() < 1e-9);
        assert!((c.local_accuracy - 0.6).abs() < 1e-9);
        let p = c.chosen.unwrap();
        // Escalating below 0.5 gives 5/5 right with 2 of 5 escalated: the cheapest way to
        // 1.2 × the upstream's accuracy.
        assert_eq!(p.threshold, 0.5);
        assert!((p.escalated - 0.4).abs() < 1e-9);
        assert!((p.accuracy - 1.0).abs() < 1e-9);
        // Matching the upstream (quality 1) needs only the least confident case escalated.
        let p = calibrate(&cases, 1.0, 0.0, 0.0001, 0.01).chosen.unwrap();
        assert_eq!(p.threshold, 0.2);
        assert!((p.escalated - 0.2).abs() < 1e-9);
        // An unreachable target chooses nothing.
        assert!(calibrate(&cases, 1.3, 0.0, 0.0001, 0.01).chosen.is_none());
        // A lax target sends nothing upstream.
        let p = calibrate(&cases, 0.7, 0.0, 0.0001, 0.01).chosen.unwrap();
        assert_eq!(p.escalated, 0.0);
        // Asking for confidence costs escalations: on five examples, matching the upstream
        // with 95% confidence needs more than the one escalation that matches it here.
        let sure = calibrate(&cases, 1.0, 1.645, 0.0001, 0.01);
        assert!(sure.chosen.is_none_or(|p| p.escalated > 0.2));
    }

    #[test]
    fn chat_answers_name_labels() {
        let labels = vec!["spam".to_string(), "ham".to_string()];
        assert_eq!(parse_label("Spam.", &labels).as_deref(), Some("spam"));
        assert_eq!(
            parse_label("It is ham, not spam", &labels).as_deref(),
            Some("ham")
        );
        assert_eq!(parse_label("shampoo", &labels), None);
        assert_eq!(parse_label("I cannot tell", &labels), None);
    }

    #[test]
    fn margins() {
        assert!((margin(&[0.7, 0.2, 0.1]) - 0.5).abs() < 1e-6);
        assert!((margin(&[0.5, 0.5]) - 0.0).abs() < 1e-6);
        assert_eq!(margin(&[1.0]), 1.0);
    }
}
