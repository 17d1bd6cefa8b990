//! Counting what a provider bills: tokens with the model's real tokenizer (tiktoken's OpenAI
//! encodings, offline), words on Unicode word boundaries.

use crate::catalog::TokenizerSpec;
use crate::{Error, Result};
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;
use unicode_segmentation::UnicodeSegmentation;

const SAMPLE: &str = include_str!("../sample_en.txt");

/// The first `words` words of frugal's sample of plain English prose (repeated as needed): the
/// text whose tokens a scenario "N words" counts with each model's tokenizer.
pub fn sample_text(words: usize) -> String {
    let per_pass = count_words(SAMPLE);
    let mut out = String::new();
    for _ in 0..words / per_pass {
        out.push_str(SAMPLE.trim_end());
        out.push('\n');
    }
    if let Some((i, w)) = (words % per_pass)
        .checked_sub(1)
        .and_then(|k| SAMPLE.unicode_word_indices().nth(k))
    {
        out.push_str(&SAMPLE[..i + w.len()]);
    }
    out.trim_end().to_string()
}

/// Words of `text` as Unicode word boundaries define them (UAX #29; punctuation is not a word).
pub fn count_words(text: &str) -> usize {
    text.unicode_words().count()
}

fn o200k() -> &'static CoreBPE {
    static BPE: OnceLock<CoreBPE> = OnceLock::new();
    BPE.get_or_init(|| {
        tiktoken_rs::o200k_base().expect("tiktoken's o200k_base ships with the crate")
    })
}

fn cl100k() -> &'static CoreBPE {
    static BPE: OnceLock<CoreBPE> = OnceLock::new();
    BPE.get_or_init(|| {
        tiktoken_rs::cl100k_base().expect("tiktoken's cl100k_base ships with the crate")
    })
}

/// How a count was obtained: exactly, or estimated from words with a stated ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Exact,
    Estimated,
}

/// Tokens of `text` for a hosted model's tokenizer. Local (`asset:`) tokenizers are counted by
/// the caller with the model runtime; asking here is an error.
pub fn count_tokens(spec: &TokenizerSpec, text: &str) -> Result<(usize, Method)> {
    Ok(match spec {
        TokenizerSpec::O200kBase => (o200k().encode_ordinary(text).len(), Method::Exact),
        TokenizerSpec::Cl100kBase => (cl100k().encode_ordinary(text).len(), Method::Exact),
        TokenizerSpec::Ratio(r) => ((count_words(text) as f64 * r).ceil() as usize, Method::Estimated),
        TokenizerSpec::Asset(name) => {
            return Err(Error::Invalid(format!(
                "tokens of local model '{name}' are counted with its own tokenizer by the model runtime"
            )))
        }
    })
}

/// Tokens for `words` words of typical English text, for scenarios given in words.
pub fn tokens_for_words(spec: &TokenizerSpec, words: usize) -> Result<(usize, Method)> {
    match spec {
        TokenizerSpec::Ratio(r) => Ok(((words as f64 * r).ceil() as usize, Method::Estimated)),
        _ => Err(Error::Invalid(
            "word scenarios on exact tokenizers are counted on a sample text by the caller".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_text_has_exactly_the_words_asked_for() {
        for n in [0, 1, 100, 992, 1000, 2500] {
            assert_eq!(count_words(&sample_text(n)), n);
        }
    }

    #[test]
    fn words_follow_unicode_boundaries() {
        assert_eq!(count_words("Hello, world! It's 3.14 — naïve café."), 6);
        assert_eq!(count_words(""), 0);
        assert_eq!(count_words("   \n\t "), 0);
    }

    #[test]
    fn known_token_counts() {
        // Published by OpenAI's tiktoken README/cookbook: "tiktoken is great!" is 6 tokens in
        // cl100k_base; "hello world" is 2 in both encodings.
        assert_eq!(
            count_tokens(&TokenizerSpec::Cl100kBase, "tiktoken is great!").unwrap(),
            (6, Method::Exact)
        );
        assert_eq!(
            count_tokens(&TokenizerSpec::Cl100kBase, "hello world")
                .unwrap()
                .0,
            2
        );
        assert_eq!(
            count_tokens(&TokenizerSpec::O200kBase, "hello world")
                .unwrap()
                .0,
            2
        );
        // The two encodings really differ on non-English text.
        let jp = "日本語のテキストも数えます。";
        assert_ne!(
            count_tokens(&TokenizerSpec::Cl100kBase, jp).unwrap().0,
            count_tokens(&TokenizerSpec::O200kBase, jp).unwrap().0
        );
    }

    #[test]
    fn ratios_are_estimates_rounded_up() {
        let spec = TokenizerSpec::Ratio(1.333);
        assert_eq!(
            count_tokens(&spec, "one two three").unwrap(),
            (4, Method::Estimated)
        );
        assert_eq!(tokens_for_words(&spec, 100).unwrap().0, 134);
        assert!(count_tokens(&TokenizerSpec::Asset("smollm2".into()), "x").is_err());
    }
}
