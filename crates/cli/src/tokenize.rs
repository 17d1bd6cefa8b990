//! `frugal tokenize`: token ids and pieces of a text, for encoders and chat models alike.

use crate::io::{texts_from, LocalTokenizer};
use crate::Ctx;
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct TokenizeArgs {
    /// Model: asset name, Hugging Face folder, or .gguf file.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Texts; without them, one per line of stdin. Special tokens such as <|im_start|> are parsed.
    texts: Vec<String>,
    /// One JSON line per text: {"text", "ids", "tokens", "count"}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: TokenizeArgs, ctx: &Ctx) -> Result<()> {
    let texts = texts_from(a.texts)?;
    let model = LocalTokenizer::load(&a.model, ctx.quiet)?;
    for t in &texts {
        let (ids, toks) = model.tokenize(t)?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"text": t, "ids": ids, "tokens": toks, "count": ids.len()})
            );
        } else {
            println!("{} tokens", ids.len());
            let pairs: Vec<String> = ids
                .iter()
                .zip(&toks)
                .map(|(i, s)| format!("{i}:{s}"))
                .collect();
            println!("  {}", pairs.join(" "));
        }
    }
    Ok(())
}
