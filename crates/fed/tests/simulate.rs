//! The simulator on the real MiniLM (head mode: cached embeddings, so rounds are cheap):
//! federated training learns, secure aggregation gives plain FedAvg's model, dropouts are
//! survived, a resumed run ends where an uninterrupted one does, DP spends ε.

use frugal_fed::node::NodeData;
use frugal_fed::partition::{partition, Partition};
use frugal_fed::privacy::{DpConfig, DpKind};
use frugal_fed::sim::{simulate, RoundReport, SimConfig, Strategy};
use frugal_fed::weights::Weights;
use frugal_train::classifier::Mode;
use frugal_train::data::Example;
use frugal_train::learner::{Learner, Prepared};
use frugal_train::trainer::TrainConfig;
use std::path::Path;

fn ex(text: &str, label: &str) -> Example {
    Example {
        text: text.into(),
        label: label.into(),
    }
}

fn data() -> Vec<Example> {
    let fruit = [
        "apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear",
    ];
    let vehicle = [
        "truck", "car", "bus", "tram", "bicycle", "van", "taxi", "lorry",
    ];
    let mut v = vec![];
    for i in 0..48 {
        v.push(ex(&format!("I ate a {} for lunch", fruit[i % 8]), "fruit"));
        v.push(ex(
            &format!("I drove the {} to town", vehicle[i % 8]),
            "vehicle",
        ));
    }
    v
}

struct Setup {
    learner: Learner,
    initial: Weights,
    nodes: Vec<NodeData>,
    test: Prepared,
}

fn setup(n: usize) -> Setup {
    let base = frugal_models::assets::Store::from_env()
        .ensure("minilm")
        .unwrap();
    let labels = vec!["fruit".to_string(), "vehicle".to_string()];
    let learner = Learner::new(&base, labels, Mode::Head, 32, 0).unwrap();
    let d = data();
    let parts = partition(&d, None, n, &Partition::Dirichlet(0.5), 3).unwrap();
    let nodes = parts
        .iter()
        .enumerate()
        .map(|(id, idx)| {
            let ex: Vec<Example> = idx.iter().map(|&i| d[i].clone()).collect();
            let k = (ex.len() / 5).min(ex.len() - 1);
            NodeData {
                id,
                train: learner.prepare(&ex[k..]).unwrap(),
                valid: learner.prepare(&ex[..k]).unwrap(),
            }
        })
        .collect();
    let test = learner
        .prepare(&[
            ex("She ate a ripe plum", "fruit"),
            ex("a bowl of strawberries", "fruit"),
            ex("He parked the motorbike", "vehicle"),
            ex("the lorry drove past", "vehicle"),
        ])
        .unwrap();
    Setup {
        initial: Weights::from_named(&learner.weights().unwrap()).unwrap(),
        learner,
        nodes,
        test,
    }
}

fn config() -> SimConfig {
    SimConfig {
        rounds: 6,
        fraction: 1.0,
        min_nodes: 2,
        local: TrainConfig {
            epochs: 2,
            lr: 5e-2,
            batch: 8,
            weight_decay: 0.0,
            warmup: 0.0,
            patience: 0,
            ..Default::default()
        },
        lr_decay: 1.0,
        strategy: Strategy::FedAvg,
        server_momentum: 0.0,
        server_lr: 1.0,
        dp: None,
        secure: None,
        dropout: 0.0,
        max_norm_ratio: 10.0,
        seed: 1,
    }
}

fn run(s: &mut Setup, cfg: &SimConfig, out: &Path, resume: bool) -> (Weights, Vec<RoundReport>) {
    simulate(
        &mut s.learner,
        &s.initial,
        &s.nodes,
        Some(&s.test),
        cfg,
        "toy",
        out,
        resume,
        &mut |_| {},
    )
    .unwrap()
}

fn max_diff(a: &Weights, b: &Weights) -> f32 {
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn federated_rounds_learn_and_secure_aggregation_equals_fedavg() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(5);
    let initial = s.initial.clone();
    let cfg = config();
    let (plain, hist) = run(&mut s, &cfg, &dir.path().join("plain"), false);
    assert_eq!(hist.len(), 6);
    assert!(max_diff(&plain, &initial) > 1e-3, "the global model moved");
    let last = hist.last().unwrap();
    assert!(last.accuracy.unwrap() >= 0.9, "{last:?}");
    assert!(last.test_accuracy.unwrap() >= 0.75, "{last:?}");
    assert!(hist.iter().all(|r| r.bytes_sent == 5 * plain.bytes()));
    assert!(dir.path().join("plain/global.safetensors").is_file());

    let secure = SimConfig {
        secure: Some(3),
        ..cfg.clone()
    };
    let (masked, hist2) = run(&mut s, &secure, &dir.path().join("secure"), false);
    let worst = max_diff(&plain, &masked);
    assert!(
        worst < 1e-5,
        "secure aggregation differs from FedAvg by {worst}"
    );
    assert!(
        hist2[0].bytes_sent > hist[0].bytes_sent,
        "masks and shares cost bytes"
    );
}

#[test]
fn dropouts_are_survived_and_a_resumed_run_ends_where_a_straight_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(6);
    let cfg = SimConfig {
        dropout: 0.3,
        secure: Some(2),
        ..config()
    };
    let (straight, hist) = run(&mut s, &cfg, &dir.path().join("a"), false);
    assert!(
        hist.iter().map(|r| r.dropped.len()).sum::<usize>() > 0,
        "30% dropout dropped someone"
    );
    assert!(
        hist.last().unwrap().accuracy.unwrap() >= 0.9,
        "{:?}",
        hist.last()
    );
    let short = SimConfig {
        rounds: 3,
        ..cfg.clone()
    };
    run(&mut s, &short, &dir.path().join("b"), false);
    let (resumed, hist_b) = run(&mut s, &cfg, &dir.path().join("b"), true);
    assert_eq!(hist_b.len(), 6);
    let worst = max_diff(&straight, &resumed);
    assert!(worst < 1e-5, "resumed run differs by {worst}");
    // Other settings cannot resume this run.
    let other = SimConfig {
        fraction: 0.5,
        ..cfg
    };
    let e = simulate(
        &mut s.learner,
        &s.initial,
        &s.nodes,
        None,
        &other,
        "toy",
        &dir.path().join("b"),
        true,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("other settings"), "{e}");
}

#[test]
fn differential_privacy_spends_epsilon_and_bad_thresholds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(5);
    let dp = |noise, kind| SimConfig {
        dp: Some(DpConfig {
            clip: 0.5,
            noise,
            kind,
            delta: 1e-5,
        }),
        ..config()
    };
    let (_, low) = run(
        &mut s,
        &dp(0.5, DpKind::Central),
        &dir.path().join("low"),
        false,
    );
    let eps: Vec<f64> = low.iter().map(|r| r.epsilon.unwrap()).collect();
    assert!(
        eps.windows(2).all(|w| w[0] < w[1]),
        "ε grows every round: {eps:?}"
    );
    let (_, high) = run(
        &mut s,
        &dp(2.0, DpKind::Central),
        &dir.path().join("high"),
        false,
    );
    assert!(high.last().unwrap().epsilon.unwrap() < eps[5]);
    let (_, local) = run(
        &mut s,
        &dp(0.5, DpKind::Local),
        &dir.path().join("local"),
        false,
    );
    assert!(local.len() == 6 && local.iter().all(|r| r.aggregated));
    let e = simulate(
        &mut s.learner,
        &s.initial,
        &s.nodes,
        None,
        &SimConfig {
            secure: Some(9),
            ..config()
        },
        "toy",
        &dir.path().join("bad"),
        false,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("threshold"), "{e}");
}

/// Full mode: every weight of the encoder is trained locally and averaged (bytes to match).
#[test]
fn full_mode_trains_and_exchanges_every_weight() {
    let dir = tempfile::tempdir().unwrap();
    let base = frugal_models::assets::Store::from_env()
        .ensure("minilm")
        .unwrap();
    let labels = vec!["fruit".to_string(), "vehicle".to_string()];
    let mut learner = Learner::new(&base, labels, Mode::Full, 16, 0).unwrap();
    let d: Vec<Example> = data().into_iter().step_by(4).collect();
    let parts = partition(&d, None, 3, &Partition::Iid, 0).unwrap();
    let nodes: Vec<NodeData> = parts
        .iter()
        .enumerate()
        .map(|(id, idx)| {
            let ex: Vec<Example> = idx.iter().map(|&i| d[i].clone()).collect();
            NodeData {
                id,
                train: learner.prepare(&ex[1..]).unwrap(),
                valid: learner.prepare(&ex[..1]).unwrap(),
            }
        })
        .collect();
    let initial = Weights::from_named(&learner.weights().unwrap()).unwrap();
    assert!(initial.len() > 20_000_000, "the whole encoder travels");
    let cfg = SimConfig {
        rounds: 2,
        local: TrainConfig {
            epochs: 1,
            lr: 1e-4,
            batch: 4,
            ..Default::default()
        },
        ..config()
    };
    let (global, hist) = simulate(
        &mut learner,
        &initial,
        &nodes,
        None,
        &cfg,
        "toy-full",
        dir.path(),
        false,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(hist[0].bytes_sent, 3 * initial.bytes());
    // Encoder weights moved, not only the head.
    let at = global
        .names
        .iter()
        .position(|n| n.contains("encoder.layer.0."))
        .unwrap();
    let start: usize = global.shapes[..at]
        .iter()
        .map(|s| s.iter().product::<usize>())
        .sum();
    let len: usize = global.shapes[at].iter().product();
    let moved = (start..start + len).any(|i| (global.data[i] - initial.data[i]).abs() > 1e-7);
    assert!(moved, "{} did not change", global.names[at]);
}
