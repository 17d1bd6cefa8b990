//! The GGUF chat runtime against llama.cpp's golden output on the real SmolLM2 asset:
//! prompt token ids must be identical, and greedy decoding must agree token for token.

use frugal_models::assets::Store;
use frugal_models::chat::{ChatModel, GenerateOptions, Message, SamplingParams};
use serde_json::Value;

fn model() -> ChatModel {
    let path = Store::from_env().ensure("smollm2").expect("fetch smollm2");
    ChatModel::load(&path).expect("load smollm2")
}

fn golden() -> Vec<Value> {
    let v: Value = serde_json::from_str(include_str!("fixtures/smollm2_greedy.json")).unwrap();
    v["rows"].as_array().unwrap().clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn prompt_token_ids_equal_llama_cpp() {
    let m = model();
    for row in golden() {
        let got = m
            .tokenizer
            .encode(row["chat_prompt"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            got,
            ids(&row["prompt_token_ids"]),
            "prompt: {}",
            row["prompt"]
        );
        // The same ids through the model's own chat template, minus its default system turn.
        let rendered = m
            .render(&[Message::new("user", row["prompt"].as_str().unwrap())])
            .unwrap();
        assert!(
            rendered.ends_with(row["chat_prompt"].as_str().unwrap()),
            "{rendered}"
        );
    }
}

#[test]
fn greedy_tokens_equal_llama_cpp() {
    let m = model();
    for row in golden() {
        let prompt = ids(&row["prompt_token_ids"]);
        let want = ids(&row["greedy_token_ids"]);
        let opts = GenerateOptions {
            max_tokens: want.len(),
            sampling: SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            stop: vec![],
        };
        let mut cache = m.new_cache();
        let g = m
            .generate(&prompt, &opts, &mut cache, &mut |_| true)
            .unwrap();
        let n = want.len().min(32);
        assert!(g.token_ids.len() >= n, "stopped early: {:?}", g.token_ids);
        let agree = g
            .token_ids
            .iter()
            .zip(&want)
            .take_while(|(a, b)| a == b)
            .count();
        assert!(
            agree >= n,
            "agreed on {agree} of {} tokens\n got: {:?}\nwant: {:?}\n text: {}",
            want.len(),
            g.token_ids,
            want,
            g.text
        );
        eprintln!("agreed on {agree} of {} golden tokens", want.len());
    }
}
