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

/// A text far longer than the model reads is cut before tokenising, and keeps exactly the
/// tokens the whole text would give: compared with a head short enough not to be cut (any
/// head holding more than max_len tokens truncates to the same ids).
#[test]
fn long_texts_keep_the_tokens_of_the_whole_text() {
    let dir = Store::from_env().ensure("minilm").expect("fetch minilm");
    let enc = Encoder::load(&dir).expect("load minilm");
    let prose = "Large language models are expensive: data, compute, energy and talent. ";
    let cases = [
        prose.repeat(50_000),
        "日本語のテキストも数えます。".repeat(100_000),
        "!?.,;:()[]{}<>".repeat(100_000),
        format!("{} tail words here", "a".repeat(5_000_000)),
        format!("start {} end", "word\u{2028}".repeat(200_000)),
        "ひらがな€😀。".repeat(200_000),
        format!("{} end", "a\u{85}".repeat(1_000_000)),
    ];
    for text in &cases {
        let short_head = &text[..text.char_indices().nth(2000).map_or(text.len(), |(i, _)| i)];
        let (long, short) = (
            &enc.tokenize(&[text.as_str()]).unwrap()[0],
            &enc.tokenize(&[short_head]).unwrap()[0],
        );
        // Where the head holds the whole budget, the ids must be the same; where it does not
        // (one long word), the whole text ends with words the head lacks, checked below.
        if short.ids.len() == enc.max_len() {
            assert_eq!(long.ids, short.ids, "{:?}…", &text[..40]);
        }
        assert!(long.truncated || long.ids.len() < enc.max_len());
    }
    // A word the normaliser joins across dropped control characters (U+0085, also Unicode
    // whitespace) is one word: its last word is kept, never cut short.
    for (text, want) in [
        (format!("{} end", "a\u{85}".repeat(1_000_000)), "[UNK] end"),
        (
            format!("{} end", "a\u{200b}".repeat(1_000_000)),
            "[UNK] end",
        ),
    ] {
        let ids = &enc.tokenize(&[text.as_str()]).unwrap()[0].ids;
        let want = &enc.tokenize(&[want]).unwrap()[0].ids;
        assert_eq!(ids, want);
    }
    // One giant word is one [UNK], whole or cut.
    let giant = format!("{} tail", "a".repeat(5_000_000));
    let t = &enc.tokenize(&[giant.as_str()]).unwrap()[0];
    let unk = &enc
        .tokenize(&[&format!("{} tail", "a".repeat(300))])
        .unwrap()[0];
    assert_eq!(t.ids, unk.ids);
}
