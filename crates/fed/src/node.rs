//! A node's part of a round, with no knowledge of how messages travel: receive the global
//! weights and the round's settings, train on local data with the shared trainer, return the
//! update; and evaluate a global model on local validation data.

use crate::aggregate::Update;
use crate::privacy::{add_noise, clip, DpConfig, DpKind};
use crate::weights::Weights;
use crate::Result;
use frugal_train::learner::{Learner, Prepared};
use frugal_train::metrics::Metrics;
use frugal_train::trainer::TrainConfig;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// A node's data, prepared once.
pub struct NodeData {
    pub id: usize,
    pub train: Prepared,
    pub valid: Prepared,
}

/// What the server sends with the global weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundTask {
    pub round: usize,
    /// Local optimisation: epochs, learning rate, batch; `seed` is mixed with round and node.
    pub train: TrainConfig,
    /// FedProx's μ (0: plain FedAvg local training).
    pub prox_mu: f64,
    /// Local differential privacy: clip and noise the update before it leaves the node.
    pub local_dp: Option<DpConfig>,
}

/// Trains `learner` from `global` on the node's data and returns the update (new − global).
pub fn local_round(
    learner: &mut Learner,
    node: &NodeData,
    global: &Weights,
    task: &RoundTask,
) -> Result<Update> {
    let named = global.to_named()?;
    learner.set_weights(&named)?;
    let mut cfg = task.train.clone();
    cfg.seed = mix(cfg.seed, task.round as u64, node.id as u64);
    let anchor = (task.prox_mu > 0.0).then_some((task.prox_mu, &named));
    let report = learner.fit(&node.train, &cfg, anchor)?;
    let local = Weights::from_named(&learner.weights()?)?;
    let mut delta: Vec<f32> = local
        .data
        .iter()
        .zip(&global.data)
        .map(|(a, b)| a - b)
        .collect();
    if let Some(dp) = task.local_dp.filter(|d| d.kind == DpKind::Local) {
        clip(&mut delta, dp.clip);
        let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
        add_noise(&mut delta, dp.noise * dp.clip, &mut rng);
    }
    Ok(Update {
        node: node.id,
        examples: node.train.len(),
        delta,
        loss: report.final_loss,
    })
}

/// Metrics of the learner's current weights (the global model, once set) on the node's
/// validation data; `None` when it has none.
pub fn evaluate(learner: &Learner, node: &NodeData) -> Result<Option<Metrics>> {
    if node.valid.is_empty() {
        return Ok(None);
    }
    Ok(Some(learner.evaluate(&node.valid)?))
}

/// A per-(round, node) seed.
pub fn mix(seed: u64, round: u64, node: u64) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for v in [round, node] {
        h = (h ^ v).wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(31);
    }
    h
}
