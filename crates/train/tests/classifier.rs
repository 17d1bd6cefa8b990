//! Training, checkpointing and evaluating classifiers: fast on a tiny random BERT that uses
//! MiniLM's real tokenizer, and in head mode on the real MiniLM.

mod common;

use candle_core::Device;
use common::{ex, tiny_base, tiny_base_with_dropout, toy};
use frugal_models::assets::Store;
use frugal_train::classifier::{state_dir, train, Classifier, Mode, TrainSpec};
use frugal_train::trainer::TrainConfig;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn full_fine_tuning_learns_saves_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_base(dir.path());
    let (train_set, valid) = toy();
    let out = dir.path().join("ckpt");
    let config = TrainConfig {
        epochs: 25,
        lr: 3e-3,
        batch: 8,
        patience: 0,
        ..Default::default()
    };
    // Without validation data the last epoch is kept.
    let spec = TrainSpec {
        base: &base,
        base_name: "tiny".into(),
        train: &train_set,
        valid: None,
        mode: Mode::Full,
        max_len: Some(32),
        config,
        out: &out,
        resume: false,
        save_every: 0,
        interrupt: None,
        labels: None,
        soft: None,
        hidden: None,
        probe: None,
    };
    let mut losses = vec![];
    train(&spec, &mut |p| losses.push(p.loss)).unwrap();
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(last < first * 0.5, "loss should fall: {first} -> {last}");
    assert!(out.join("frugal.json").is_file() && out.join("model.safetensors").is_file());
    let (clf, info) = Classifier::load(&out).unwrap();
    assert_eq!(info.labels, ["fruit", "vehicle"]);
    let train_m = clf.evaluate(&train_set, 8).unwrap();
    assert!(train_m.accuracy >= 0.9, "{}", train_m.accuracy);
    // With validation data the best epoch is kept: reloaded, it scores what training recorded.
    let best_dir = dir.path().join("best");
    let spec = TrainSpec {
        valid: Some(&valid),
        out: &best_dir,
        ..spec
    };
    let (report, _) = train(&spec, &mut |_| {}).unwrap();
    let (best, _) = Classifier::load(&best_dir).unwrap();
    assert_eq!(
        Some(best.evaluate(&valid, 4).unwrap().macro_f1),
        report.best_score
    );
    // Unknown labels at evaluation are named.
    let e = clf
        .evaluate(&[ex("a boat", "vessel")], 1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("vessel") && e.contains("fruit"), "{e}");
}

/// Fine-tuning with dropout, interrupted mid-epoch and resumed from its saved state, ends with
/// the same checkpoint, bit for bit, as an uninterrupted run.
#[test]
fn an_interrupted_fine_tuning_resumes_to_the_same_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_base_with_dropout(dir.path(), 0.1);
    let (train_set, valid) = toy();
    let whole = dir.path().join("whole");
    let config = TrainConfig {
        epochs: 3,
        lr: 3e-3,
        batch: 8,
        patience: 0,
        ..Default::default()
    };
    let spec = TrainSpec {
        base: &base,
        base_name: "tiny".into(),
        train: &train_set,
        valid: Some(&valid),
        mode: Mode::Full,
        max_len: Some(32),
        config,
        out: &whole,
        resume: false,
        save_every: 2,
        interrupt: None,
        labels: None,
        soft: None,
        hidden: None,
        probe: None,
    };
    train(&spec, &mut |_| {}).unwrap();
    assert!(
        !state_dir(&whole).exists(),
        "a completed run leaves no state"
    );

    let parts = dir.path().join("parts");
    let flag = AtomicBool::new(false);
    let spec = TrainSpec {
        out: &parts,
        interrupt: Some(&flag),
        ..spec
    };
    // 40 examples, batch 8: 5 steps an epoch; stop in the second epoch.
    let e = train(&spec, &mut |p| {
        if p.step == 7 {
            flag.store(true, Ordering::Relaxed)
        }
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("--resume"), "{e}");
    assert!(state_dir(&parts).join("trainer_state.json").is_file());
    // Resuming with another --max-len is refused; with the same settings it completes.
    let other = TrainSpec {
        max_len: Some(16),
        resume: true,
        ..spec.clone()
    };
    let e = train(&other, &mut |_| {}).err().unwrap().to_string();
    assert!(e.contains("--max-len"), "{e}");
    flag.store(false, Ordering::Relaxed);
    let resumed = TrainSpec {
        resume: true,
        ..spec
    };
    let (report, _) = train(&resumed, &mut |_| {}).unwrap();
    assert_eq!(report.steps, 15);
    let load = |d: &Path| {
        candle_core::safetensors::load(d.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (a, b) = (load(&whole), load(&parts));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let (x, y) = (
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b[name].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(x == y, "{name} differs after resuming");
    }
    assert!(!state_dir(&parts).exists());
}

#[test]
fn a_single_class_and_unknown_validation_labels_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_base(dir.path());
    let one = vec![ex("a", "x"), ex("b", "x")];
    let out = dir.path().join("o");
    let spec = TrainSpec {
        base: &base,
        base_name: "t".into(),
        train: &one,
        valid: None,
        mode: Mode::Head,
        max_len: None,
        config: TrainConfig::default(),
        out: &out,
        resume: false,
        save_every: 0,
        interrupt: None,
        labels: None,
        soft: None,
        hidden: None,
        probe: None,
    };
    let e = train(&spec, &mut |_| {}).err().unwrap().to_string();
    assert!(e.contains("at least 2 labels"), "{e}");
    let (t, _) = toy();
    let v = vec![ex("?", "other")];
    let spec = TrainSpec {
        train: &t,
        valid: Some(&v),
        ..spec
    };
    let e = train(&spec, &mut |_| {}).err().unwrap().to_string();
    assert!(e.contains("'other'"), "{e}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn transfer_learning_on_real_minilm_separates_the_toy_task() {
    let dir = tempfile::tempdir().unwrap();
    let base = Store::from_env().ensure("minilm").unwrap();
    let (train_set, valid) = toy();
    let out = dir.path().join("head");
    let config = TrainConfig {
        epochs: 30,
        lr: 1e-2,
        batch: 8,
        weight_decay: 0.0,
        patience: 0,
        ..Default::default()
    };
    let spec = TrainSpec {
        base: &base,
        base_name: "minilm".into(),
        train: &train_set,
        valid: Some(&valid),
        mode: Mode::Head,
        max_len: None,
        config,
        out: &out,
        resume: false,
        save_every: 0,
        interrupt: None,
        labels: None,
        soft: None,
        hidden: None,
        probe: None,
    };
    let (report, info) = train(&spec, &mut |_| {}).unwrap();
    assert_eq!(report.best_score, Some(1.0), "{:?}", report.history);
    assert_eq!(info.metrics.unwrap().accuracy, 1.0);
    // Reloaded, the checkpoint classifies the validation texts it was scored on correctly.
    let (clf, _) = Classifier::load(&out).unwrap();
    let p = clf.predict(&["a ripe peach", "a red bus"], 2).unwrap();
    assert!(p[0][0] > 0.5 && p[1][1] > 0.5, "{p:?}");
}

/// LoRA: only the adapters and the head train (the base weights stay as they were), the loss
/// falls, and the checkpoint folds the adapters in: reloaded as a plain encoder it predicts
/// exactly what the adapted model did.
#[test]
fn lora_trains_only_adapters_and_the_checkpoint_folds_them_in() {
    use frugal_train::learner::Learner;
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_base(dir.path());
    let (train_set, _) = toy();
    let labels = vec!["fruit".to_string(), "vehicle".to_string()];
    let mut learner = Learner::new(&base, labels, Mode::Lora, 32, 0).unwrap();
    let names: Vec<String> = learner
        .weights()
        .unwrap()
        .into_iter()
        .map(|w| w.0)
        .collect();
    assert_eq!(names.len(), 2 + 2 * 2 * 2, "{names:?}"); // head + 2 layers × (q, v) × (A, B)
    assert!(names
        .iter()
        .all(|n| n.starts_with("classifier.") || n.contains(".lora_")));
    let frozen = |l: &Learner| {
        let map = l.clf.varmap.data().lock().unwrap();
        map["encoder.layer.0.attention.self.query.weight"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let before = frozen(&learner);
    let data = learner.prepare(&train_set).unwrap();
    let cfg = TrainConfig {
        epochs: 30,
        lr: 1e-2,
        batch: 8,
        patience: 0,
        ..Default::default()
    };
    let report = learner.fit(&data, &cfg, None).unwrap();
    assert!(report.final_loss < 0.3, "{report:?}");
    assert_eq!(before, frozen(&learner), "the base weights did not train");
    let b = learner
        .weights()
        .unwrap()
        .into_iter()
        .find(|w| w.0.ends_with("query.lora_b"))
        .unwrap();
    assert!(
        b.1.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
    let adapted = learner.predict(&data).unwrap();
    let out = dir.path().join("lora-ckpt");
    let info = frugal_train::classifier::CheckpointInfo {
        labels: learner.clf.labels.clone(),
        base: "tiny".into(),
        base_weights_sha256: String::new(),
        mode: Mode::Lora,
        max_len: 32,
        config: cfg,
        metrics: None,
        data_fingerprint: String::new(),
        epoch: None,
        teacher: None,
    };
    learner.clf.save(&base, &out, &info).unwrap();
    let (plain, _) = Classifier::load(&out).unwrap();
    let texts: Vec<&str> = train_set.iter().map(|e| e.text.as_str()).collect();
    let reloaded = plain.predict(&texts, 8).unwrap();
    for (a, b) in adapted.iter().zip(&reloaded) {
        assert!((a[0] - b[0]).abs() < 1e-4, "{a:?} vs {b:?}");
    }
}
