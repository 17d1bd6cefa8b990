//! The chat model's tokenizer, built from GGUF metadata (`tokenizer.ggml.*`): byte-level BPE with
//! the vocabulary, merges and special tokens stored in the file.
//!
//! candle's GGUF tokenizer helper does not know SmolLM2's `smollm` pre-tokenizer and adds a
//! leading space; we build the Hugging Face pipeline by hand, stage by stage.

use super::llama::Meta;
use super::template::LITERAL_BREAK;
use crate::error::{tok_err, Error, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

/// GGUF `tokenizer.ggml.pre` values we reproduce: name -> split digits individually first.
const PRE_TOKENIZERS: &[(&str, bool)] = &[("smollm", true), ("gpt2", false), ("default", false)];

/// A tokenizer plus the ids the generation loop needs.
pub struct ChatTokenizer {
    pub inner: Tokenizer,
    pub bos: Option<u32>,
    pub eos: u32,
    /// Every id that ends a turn (`eos`, and `<|im_end|>`/`<|eot_id|>`-style control tokens).
    pub stop_ids: Vec<u32>,
    pub add_bos: bool,
}

impl ChatTokenizer {
    pub(crate) fn from_gguf(meta: &Meta) -> Result<ChatTokenizer> {
        let model = meta.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::file(
                meta.path,
                format!("tokenizer model '{model}' is not supported; frugal reads byte-level BPE ('gpt2') tokenizers"),
            ));
        }
        let pre = meta.string("tokenizer.ggml.pre").unwrap_or("default");
        let split_digits = PRE_TOKENIZERS
            .iter()
            .find(|(n, _)| *n == pre)
            .map(|(_, d)| *d)
            .ok_or_else(|| {
                Error::file(
                    meta.path,
                    format!(
                        "pre-tokenizer '{pre}' is not supported; known: {}",
                        PRE_TOKENIZERS
                            .iter()
                            .map(|p| p.0)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
        let strings = |key: &str| -> Result<Vec<String>> {
            meta.get(key)?
                .to_vec()
                .map_err(|e| Error::file(meta.path, format!("GGUF metadata '{key}': {e}")))?
                .iter()
                .map(|v| {
                    v.to_string()
                        .cloned()
                        .map_err(|e| Error::file(meta.path, format!("{key}: {e}")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges_raw = strings("tokenizer.ggml.merges")?;
        let types: Vec<i32> = match meta.get("tokenizer.ggml.token_type") {
            Ok(v) => v
                .to_vec()
                .map_err(|e| Error::file(meta.path, format!("tokenizer.ggml.token_type: {e}")))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            Err(_) => vec![1; tokens.len()],
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut merges: Merges = Vec::with_capacity(merges_raw.len());
        for m in &merges_raw {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                Error::file(
                    meta.path,
                    format!("malformed merge '{m}' in tokenizer.ggml.merges"),
                )
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let mut tok = Tokenizer::new(bpe);
        let mut pres: Vec<PreTokenizerWrapper> = vec![];
        if split_digits {
            pres.push(Digits::new(true).into());
        }
        pres.push(ByteLevel::new(false, true, true).into());
        tok.with_pre_tokenizer(Some(Sequence::new(pres)));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        // Control tokens (type 3) are matched whole and never split; user-defined (type 4) too.
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        tok.add_special_tokens(special).map_err(tok_err)?;
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 4)
            .map(|(s, _)| AddedToken::from(s.clone(), false))
            .collect();
        tok.add_tokens(user).map_err(tok_err)?;

        let id = |key: &str| meta.usize(key).ok().map(|v| v as u32);
        let eos = id("tokenizer.ggml.eos_token_id").ok_or_else(|| {
            Error::file(
                meta.path,
                "GGUF metadata has no tokenizer.ggml.eos_token_id",
            )
        })?;
        let mut stop_ids = vec![eos];
        for name in [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
        ] {
            if let Some(i) = tokens.iter().position(|t| t == name) {
                if types.get(i) == Some(&3) && !stop_ids.contains(&(i as u32)) {
                    stop_ids.push(i as u32);
                }
            }
        }
        let add_bos = meta
            .get("tokenizer.ggml.add_bos_token")
            .ok()
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        Ok(ChatTokenizer {
            inner: tok,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos,
            stop_ids,
            add_bos,
        })
    }

    /// Token ids of `text`; special tokens written in the text (e.g. `<|im_start|>`) are parsed,
    /// except where a chat template broke them with [`LITERAL_BREAK`] (message content): there
    /// the text is split and the break dropped, so they read as plain text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos {
            if let Some(b) = self.bos {
                if !text.is_empty() {
                    ids.push(b);
                }
            }
        }
        ids.extend(self.encode_plain(text)?);
        Ok(ids)
    }

    /// Token ids of `text` without a beginning-of-sequence token (a continuation), honouring
    /// [`LITERAL_BREAK`] as `encode` does.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for piece in text.split(LITERAL_BREAK) {
            if !piece.is_empty() {
                let enc = self.inner.encode_fast(piece, false).map_err(tok_err)?;
                ids.extend_from_slice(enc.get_ids());
            }
        }
        Ok(ids)
    }

    /// The control tokens' strings (special added tokens of the vocabulary).
    pub fn control_tokens(&self) -> Vec<String> {
        self.inner
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special)
            .map(|t| t.content.clone())
            .collect()
    }

    /// Text of `ids`; special tokens are kept when `keep_special`.
    pub fn decode(&self, ids: &[u32], keep_special: bool) -> Result<String> {
        self.inner.decode(ids, !keep_special).map_err(tok_err)
    }

    /// The token's string form in the vocabulary (e.g. `Ġthe`).
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}
