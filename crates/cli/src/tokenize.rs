//! `frugal tokenize`: token ids and pieces of a text, for encoders and chat models alike.

use crate::io::store;
use crate::io::texts_from;
use crate::Ctx;
use anyhow::Result;
use clap::Args;
use frugal_models::chat::ChatModel;
use frugal_models::encoder::Encoder;
use frugal_models::resolve::{resolve_model, ModelPath};

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
    let model = match resolve_model(&a.model, &store(ctx.quiet))? {
        ModelPath::Gguf(p) => Loaded::Chat(Box::new(ChatModel::load(&p)?)),
        ModelPath::HfDir(d) => {
            let mut e = Encoder::load(&d)?;
            // The whole text: `embed` truncates, but here the full count is the point.
            e.tokenizer
                .with_truncation(None)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Loaded::Encoder(Box::new(e))
        }
    };
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

enum Loaded {
    Chat(Box<ChatModel>),
    Encoder(Box<Encoder>),
}

impl Loaded {
    /// Ids and their vocabulary strings, special tokens included.
    fn tokenize(&self, text: &str) -> Result<(Vec<u32>, Vec<String>)> {
        match self {
            Loaded::Chat(m) => {
                let ids = m.tokenizer.encode(text)?;
                let toks = ids
                    .iter()
                    .map(|&i| m.tokenizer.token_str(i).unwrap_or_default())
                    .collect();
                Ok((ids, toks))
            }
            Loaded::Encoder(e) => {
                let enc = e
                    .tokenizer
                    .encode(text, true)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok((enc.get_ids().to_vec(), enc.get_tokens().to_vec()))
            }
        }
    }
}
