//! `frugal chat`: an interactive, multi-turn conversation; the KV cache carries over between
//! turns so only the new message is processed.

use crate::{Ctx, SamplingArgs};
use anyhow::Result;
use clap::Args;
use frugal_models::chat::{GenerateOptions, Message};
use std::io::{BufRead, IsTerminal, Write};

#[derive(Args)]
pub struct ChatArgs {
    /// Chat model: asset name or .gguf file.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// A LoRA adapter from `frugal sft` to apply to the model.
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    /// A system message for the whole conversation.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(a: ChatArgs, ctx: &Ctx) -> Result<()> {
    let model = crate::sft_cmd::load_adapted(&a.model, a.adapter.as_deref(), ctx.quiet)?;
    let interactive = std::io::stdin().is_terminal();
    if interactive && !ctx.quiet {
        eprintln!(
            "chatting with {} — /reset starts over, /exit or Ctrl-D quits",
            model.name
        );
    }
    let mut history: Vec<Message> = a
        .system
        .iter()
        .map(|s| Message::new("system", s.clone()))
        .collect();
    let base = history.clone();
    let mut cache = model.new_cache();
    let opts = GenerateOptions {
        max_tokens: a.max_tokens as usize,
        sampling: a.sampling.params(),
        stop: a.sampling.stop.clone(),
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut line_no = 0;
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let mut line = String::new();
        line_no += 1;
        match stdin.lock().read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData && interactive => {
                eprintln!("frugal: that line is not valid UTF-8; type it again");
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                anyhow::bail!("stdin line {line_no} is not valid UTF-8; convert the input first, e.g. `iconv -t utf-8`")
            }
            Err(e) => return Err(e.into()),
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = base.clone();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        let ids = model.tokenizer.encode(&model.render(&history)?)?;
        let g = match model.generate(&ids, &opts, &mut cache, &mut |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
            true
        }) {
            Ok(g) => g,
            Err(e) if interactive => {
                history.pop();
                eprintln!("frugal: {e}; /reset to start a new conversation");
                continue;
            }
            Err(e) => return Err(anyhow::Error::from(e).context(format!("stdin line {line_no}"))),
        };
        writeln!(out)?;
        history.push(Message::new("assistant", g.text.clone()));
        if !ctx.quiet && interactive {
            eprintln!(
                "[{} tokens, {:.0} tokens/s]",
                g.completion_tokens,
                g.tokens_per_s()
            );
        }
    }
    Ok(())
}
