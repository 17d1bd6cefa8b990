//! The encoder against sentence-transformers' golden embeddings on the real MiniLM asset:
//! identical token ids and every component within 1e-4.

use frugal_models::assets::Store;
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
