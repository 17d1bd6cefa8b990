//! The encoder against sentence-transformers' golden embeddings on the real MiniLM asset:
//! identical token ids and every component within 1e-4.

use frugal_models::assets::Store;
use frugal_models::encoder::bert::vars_without_gradient;
use frugal_models::encoder::Encoder;
use serde_json::Value;

#[test]
fn embeddings_equal_sentence_transformers() {
    let dir = Store::from_env().ensure("minilm").expect("fetch minilm");
    let enc = Encoder::load(&dir).expect("load minilm");
    let golden: Value =
        serde_json::from_str(include_str!("fixtures/minilm_embeddings.json")).unwrap();
    assert_eq!(
        enc.max_len(),
        golden["max_seq_length"].as_u64().unwrap() as usize
    );
    let rows = golden["rows"].as_array().unwrap();
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let toks = enc.tokenize(&texts).unwrap();
    // Batch of 5 so that batches mix lengths and padding is exercised.
    let emb = enc.embed(&texts, 5, &mut |_| {}).unwrap();
    assert_eq!(emb.truncated, 1, "the over-length text is cut and counted");
    let mut worst = 0f32;
    for ((row, tok), got) in rows.iter().zip(&toks).zip(&emb.vectors) {
        let want_ids: Vec<u32> = row["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.ids, want_ids, "token ids of {:?}", row["text"]);
        let want: Vec<f32> = row["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            worst = worst.max((g - w).abs());
        }
    }
    eprintln!("largest difference from sentence-transformers: {worst:e}");
    assert!(worst <= 1e-4, "largest component difference {worst}");
}

#[test]
fn batching_does_not_change_results() {
    let dir = Store::from_env().ensure("minilm").expect("fetch minilm");
    let enc = Encoder::load(&dir).unwrap();
    let texts = [
        "short",
        "a somewhat longer sentence about saving money on inference",
        "mid length text",
    ];
    let one = enc.embed(&texts, 1, &mut |_| {}).unwrap();
    let all = enc.embed(&texts, 3, &mut |_| {}).unwrap();
    for (a, b) in one.vectors.iter().zip(&all.vectors) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5);
        }
    }
    let norm: f32 = one.vectors[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() < 1e-5,
        "normalised by the Normalize module"
    );
}

#[test]
fn trainable_minilm_matches_inference_and_every_weight_gets_a_gradient() {
    let dir = Store::from_env().ensure("minilm").expect("fetch minilm");
    let plain = Encoder::load(&dir).unwrap();
    let (mut enc, varmap) = Encoder::load_trainable(&dir).unwrap();
    let texts = [
        "Cheap meds, click now!!!",
        "Minutes of Tuesday's meeting attached.",
    ];
    let a = plain.embed(&texts, 2, &mut |_| {}).unwrap();
    let b = enc.embed(&texts, 2, &mut |_| {}).unwrap();
    for (x, y) in a.vectors.iter().flatten().zip(b.vectors.iter().flatten()) {
        assert!((x - y).abs() < 1e-6);
    }
    // Full fine-tuning: with the differentiable path on, a loss reaches every weight.
    enc.model.train = true;
    let toks = enc.tokenize(&texts).unwrap();
    let batch: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
    let (ids, mask) = enc.batch_tensors(&batch).unwrap();
    let pooled = enc.pooled(&ids, &mask).unwrap();
    let target = candle_core::Tensor::new(&[1f32, -1.0], &candle_core::Device::Cpu).unwrap();
    let score = pooled.sum(1).unwrap();
    let loss = (score - target).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    assert_eq!(
        varmap.all_vars().len(),
        101,
        "6 layers x 16 tensors + 5 embedding tensors"
    );
    assert_eq!(vars_without_gradient(&varmap, &grads), Vec::<String>::new());
}
