//! Reduced-precision encoder inference (`--precision bf16|int8`) on the real MiniLM and the
//! real SpamAssassin corpus: the accuracy guard. In bf16 and in int8 every test
//! embedding stays within 1e-2 of f32 (cosine ≥ 0.999), and a transfer-learning head trained on
//! f32 embeddings scores within 0.5 accuracy points of its f32 score on the whole test split.
//! (int8 keeps the Q/K/V projection in bf16 where the CPU has it: in int8 it alone took the
//! worst text to cosine 0.9989; on a CPU with VNNI but no BF16 int8 is held to 0.998.)

use frugal_models::assets::Store;
use frugal_models::lowp::Precision;
use frugal_train::classifier::{labels_of, Mode};
use frugal_train::data::{anchor_split, spamassassin, Example};
use frugal_train::fewshot::head_config;
use frugal_train::learner::Learner;

fn rows(t: &candle_core::Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

#[test]
fn bf16_and_int8_keep_embeddings_and_spam_accuracy() {
    let base = Store::from_env().ensure("minilm").unwrap();
    let dir = Store::from_env().ensure("spamassassin").unwrap();
    let split = anchor_split(
        spamassassin(&dir)
            .unwrap()
            .into_iter()
            .map(|c| c.2)
            .collect(),
    );
    // A third of the training split is plenty for a linear head.
    let train: Vec<Example> = split.train.iter().step_by(3).cloned().collect();
    let mut learner = Learner::new(&base, labels_of(&train), Mode::Head, 128, 0).unwrap();
    let prepared = learner.prepare(&train).unwrap();
    let mut cfg = head_config(0);
    cfg.epochs = 30;
    learner.fit(&prepared, &cfg, None).unwrap();
    let reference = learner.prepare(&split.test).unwrap();
    let acc_f32 = learner.evaluate(&reference).unwrap().accuracy;
    assert!(acc_f32 > 0.9, "the f32 head itself works: {acc_f32}");
    let want = rows(reference.embeddings().unwrap());
    for p in [Precision::Bf16, Precision::Int8] {
        let (effective, notice) = p.resolve();
        if effective != p {
            eprintln!("skipped {p}: {}", notice.unwrap_or_default());
            continue;
        }
        learner.clf.encoder.model.set_precision(p).unwrap();
        let got = learner.prepare(&split.test).unwrap();
        let acc = learner.evaluate(&got).unwrap().accuracy;
        let (mut min_cos, mut max_abs) = (1f32, 0f32);
        for (a, b) in want.iter().zip(rows(got.embeddings().unwrap()).iter()) {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
            min_cos = min_cos.min(dot / (na * nb));
            for (x, y) in a.iter().zip(b) {
                max_abs = max_abs.max((x - y).abs());
            }
        }
        eprintln!(
            "{p}: accuracy {acc:.4} (f32 {acc_f32:.4}), lowest cosine {min_cos:.6}, largest difference {max_abs:.5} over {} texts",
            want.len()
        );
        let (cos_floor, abs_ceiling) = match p {
            Precision::Int8 if !frugal_models::lowp::has_bf16() => (0.998, 1.5e-2),
            _ => (0.999, 1e-2),
        };
        assert!(min_cos >= cos_floor, "{p}: cosine {min_cos}");
        assert!(
            max_abs <= abs_ceiling,
            "{p}: component difference {max_abs}"
        );
        assert!(
            (acc - acc_f32).abs() <= 0.005,
            "{p}: accuracy {acc} vs f32 {acc_f32}"
        );
        // And the product really ran in reduced precision: not bit-identical to f32.
        assert!(max_abs > 0.0, "{p} gave f32's numbers exactly");
    }
    learner
        .clf
        .encoder
        .model
        .set_precision(Precision::F32)
        .unwrap();
    let back = learner.prepare(&split.test[..8]).unwrap();
    assert_eq!(
        rows(back.embeddings().unwrap()),
        want[..8].to_vec(),
        "f32 again after reduced precision"
    );
}
