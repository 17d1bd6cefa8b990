//! Shared test fixtures: a tiny random BERT with MiniLM's tokenizer, and a toy task.
#![allow(dead_code)]

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use frugal_models::assets::Store;
use frugal_models::encoder::{Bert, BertConfig};
use frugal_train::data::Example;
use std::path::{Path, PathBuf};

/// A tiny randomly initialised BERT folder with MiniLM's tokenizer and pooling files.
pub fn tiny_base(dir: &Path) -> PathBuf {
    tiny_base_with_dropout(dir, 0.0)
}

pub fn tiny_base_with_dropout(dir: &Path, dropout: f32) -> PathBuf {
    let real = Store::from_env().ensure("minilm").unwrap();
    let base = dir.join("tiny-bert");
    std::fs::create_dir_all(base.join("1_Pooling")).unwrap();
    for f in [
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        std::fs::copy(real.join(f), base.join(f)).unwrap();
    }
    let config = r#"{"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 512, "hidden_act": "gelu",
        "hidden_dropout_prob": DROP, "attention_probs_dropout_prob": DROP}"#
        .replace("DROP", &dropout.to_string());
    std::fs::write(base.join("config.json"), &config).unwrap();
    let cfg: BertConfig = serde_json::from_str(&config).unwrap();
    let varmap = VarMap::new();
    Bert::load(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        &cfg,
    )
    .unwrap();
    varmap.save(base.join("model.safetensors")).unwrap();
    base
}

pub fn ex(text: &str, label: &str) -> Example {
    Example {
        text: text.into(),
        label: label.into(),
    }
}

/// A separable toy task: fruit versus vehicles.
pub fn toy() -> (Vec<Example>, Vec<Example>) {
    let fruit = [
        "apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon",
    ];
    let cars = [
        "truck", "car", "bus", "train", "tram", "bicycle", "van", "taxi", "lorry", "scooter",
    ];
    let mut train = vec![];
    for (i, (f, c)) in fruit.iter().zip(&cars).enumerate() {
        for t in [
            format!("I ate a {f} today"),
            format!("the {f} was sweet {i}"),
        ] {
            train.push(ex(&t, "fruit"));
        }
        for t in [
            format!("I drove the {c} today"),
            format!("the {c} was fast {i}"),
        ] {
            train.push(ex(&t, "vehicle"));
        }
    }
    let valid = vec![
        ex("a ripe peach", "fruit"),
        ex("a red bus", "vehicle"),
        ex("fresh lemon", "fruit"),
        ex("the old van", "vehicle"),
    ];
    (train, valid)
}
