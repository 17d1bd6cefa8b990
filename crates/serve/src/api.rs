//! Request bodies of the OpenAI API (the fields frugal honours) and of `/v1/classify`, parsed
//! with errors that name the offending field.

use crate::error::ApiError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Reads a request body as JSON; not JSON (or not an object) is a 400 that says so.
pub fn json_body(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))?;
    if !v.is_object() {
        return Err(ApiError::invalid(
            "the body must be a JSON object, e.g. {\"model\": ..., ...}",
            None,
        ));
    }
    Ok(v)
}

/// Reads the fields of `T` from a JSON body; the error names the field path and what was
/// expected ("`messages[0].role`: invalid type: integer `1`, expected a string").
pub fn parse<T: DeserializeOwned>(v: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::invalid(format!("invalid request body: {inner}"), None)
        } else {
            ApiError::invalid(format!("`{path}`: {inner}"), Some(&path))
        }
    })
}

/// A string or a list of strings (OpenAI's `stop`, `input`, `prompt`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Message content: a string, or a list of parts of which the text parts are used.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by chat and text completions (read from the same body).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Sampling {
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<OneOrMany>,
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: OneOrMany,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: OneOrMany,
    pub encoding_format: Option<String>,
}

/// `POST /v1/classify` (frugal's own): label probabilities per text.
#[derive(Debug, Clone, Deserialize)]
pub struct ClassifyRequest {
    pub model: String,
    pub input: OneOrMany,
}

/// Token counts and costs of one response.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// As OpenAI's: prompt tokens served from the prompt-prefix cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// What this response cost to compute here: measured compute seconds × the machine's price,
    /// plus energy.
    pub cost_usd: f64,
    /// What the reference hosted model would have charged for the same text.
    pub reference_cost_usd: f64,
    pub reference_model: String,
}

/// Details of the prompt tokens (OpenAI's field).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

/// One classified text.
#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    pub index: usize,
    pub label: String,
    pub probabilities: serde_json::Map<String, serde_json::Value>,
    /// Top probability minus the runner-up's.
    pub margin: f32,
}

impl ChatMessage {
    /// The message's text (text parts joined); other parts are refused.
    pub fn text(&self, i: usize) -> Result<String, ApiError> {
        let param = format!("messages[{i}].content");
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(s)) => Ok(s.clone()),
            Some(Content::Parts(parts)) => {
                let mut out = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => out.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                format!(
                                    "`{param}[{j}]` is of type `{}`; only text parts are supported by these models",
                                    p.kind
                                ),
                                Some(&param),
                            ))
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}
