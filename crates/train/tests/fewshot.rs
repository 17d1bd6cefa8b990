//! Zero-shot and few-shot: SetFit on a tiny BERT, zero-shot on the real MiniLM, in-context
//! examples on the real SmolLM2.

mod common;

use common::{ex, tiny_base, toy};
use frugal_models::assets::Store;
use frugal_models::encoder::Encoder;
use frugal_train::classifier::Classifier;
use frugal_train::fewshot::{
    nearest_demos, sample_shots, setfit, zero_shot, LabelDescriptions, SetFitSpec,
};
use frugal_train::trainer::TrainConfig;

/// Mean cosine of same-label pairs minus that of different-label pairs.
fn separation(enc: &Encoder, data: &[frugal_train::data::Example]) -> f32 {
    let texts: Vec<&str> = data.iter().map(|e| e.text.as_str()).collect();
    let v = enc.embed(&texts, 32, &mut |_| {}).unwrap().vectors;
    let cos = |a: &[f32], b: &[f32]| {
        let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |x: &[f32]| x.iter().map(|y| y * y).sum::<f32>().sqrt();
        d / (n(a) * n(b))
    };
    let (mut same, mut diff) = (vec![], vec![]);
    for i in 0..data.len() {
        for j in i + 1..data.len() {
            let c = cos(&v[i], &v[j]);
            if data[i].label == data[j].label {
                same.push(c)
            } else {
                diff.push(c)
            }
        }
    }
    let mean = |x: &[f32]| x.iter().sum::<f32>() / x.len() as f32;
    mean(&same) - mean(&diff)
}

#[test]
fn setfit_pulls_classes_apart_and_writes_a_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_base(dir.path());
    let (data, _) = toy();
    let shots = sample_shots(&data, 4, 0).unwrap();
    let before = separation(&Encoder::load(&base).unwrap(), &shots);
    let out = dir.path().join("fs");
    let spec = SetFitSpec {
        base: &base,
        base_name: "tiny".into(),
        shots: &shots,
        rounds: 10,
        body: TrainConfig {
            epochs: 3,
            lr: 1e-3,
            batch: 16,
            patience: 0,
            ..Default::default()
        },
        head: TrainConfig {
            epochs: 100,
            lr: 1e-2,
            batch: 16,
            weight_decay: 0.0,
            patience: 0,
            ..Default::default()
        },
        max_len: 32,
        out: &out,
    };
    let (r, info) = setfit(&spec, &mut |_, _| {}).unwrap();
    assert_eq!(r.pairs, 10 * 8 * 2);
    assert_eq!(info.labels, ["fruit", "vehicle"]);
    let after = separation(&Encoder::load(&out).unwrap(), &shots);
    assert!(after > before + 0.1, "separation {before} -> {after}");
    let (clf, _) = Classifier::load(&out).unwrap();
    assert_eq!(clf.evaluate(&shots, 8).unwrap().accuracy, 1.0);
    // No temporary folders left beside the checkpoint.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn zero_shot_with_minilm_reads_label_descriptions() {
    let enc = Encoder::load(&Store::from_env().ensure("minilm").unwrap()).unwrap();
    let labels = LabelDescriptions::from_pairs(&[
        ("fruit".into(), "a fruit you can eat".into()),
        ("vehicle".into(), "a vehicle you drive".into()),
        ("vehicle".into(), "a car, a bus or a truck".into()),
    ])
    .unwrap();
    let (_, valid) = toy();
    let texts: Vec<&str> = valid.iter().map(|e| e.text.as_str()).collect();
    let p = zero_shot(&enc, &texts, &labels, 0.05, &mut |_| {}).unwrap();
    for (q, e) in p.iter().zip(&valid) {
        assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        let want = usize::from(e.label == "vehicle");
        assert!(q[want] > 0.5, "{} {q:?}", e.text);
    }
    assert!(zero_shot(&enc, &texts, &labels, 0.0, &mut |_| {}).is_err());
}

/// In-context examples: each label's nearest examples, nearest last; and showing the model the
/// query itself labelled moves its answer that way.
#[test]
fn nearest_examples_in_context_move_a_chat_model() {
    let enc = Encoder::load(&Store::from_env().ensure("minilm").unwrap()).unwrap();
    let pool = vec![
        ex("a bowl of ripe cherries", "fruit"),
        ex("the red bus was late", "vehicle"),
        ex("I peeled an orange", "fruit"),
        ex("a truck on the highway", "vehicle"),
    ];
    let labels = vec!["fruit".to_string(), "vehicle".to_string()];
    let d = nearest_demos(&enc, &["cherries and grapes"], &pool, &labels, 1).unwrap();
    assert_eq!(d[0].len(), 2);
    assert_eq!(d[0][1], ("a bowl of ripe cherries".to_string(), 0));

    let model = frugal_models::chat::ChatModel::load(&Store::from_env().ensure("smollm2").unwrap())
        .unwrap();
    let l = frugal_train::labeller::ChatLabeller {
        prompt: frugal_train::labeller::DEFAULT_PROMPT.into(),
        words: vec!["fruit".into(), "vehicle".into()],
        max_text_tokens: 64,
        calibrate: true,
        scoring: frugal_train::labeller::Scoring::Answer,
    };
    let q = "a basket of plums";
    let plain = l.label(&model, &[q], &mut |_| {}).unwrap();
    let shown = vec![vec![("a truck".to_string(), 1), (q.to_string(), 1)]];
    let (with, stats) = l
        .label_with_demos(&model, &[q], Some(&shown), &mut |_| {})
        .unwrap();
    assert_eq!(stats.demos_dropped, 0);
    assert!(with[0][1] > plain[0][1], "{plain:?} -> {with:?}");
}
