//! The one-machine federated simulator: real local training on each node's partition, node
//! sampling, dropouts, update screening, FedAvg/FedProx/FedAvgM, differential privacy and secure
//! aggregation, federated evaluation every round, a checkpoint every round and `resume`.

use crate::aggregate::{screen, weighted_mean, Rejection, ServerOpt, Update};
use crate::node::{evaluate, local_round, mix, NodeData, RoundTask};
use crate::privacy::{add_noise, clip, epsilon, DpConfig, DpKind};
use crate::secagg;
use crate::weights::Weights;
use crate::{Error, Result};
use frugal_train::learner::{Learner, Prepared};
use frugal_train::trainer::TrainConfig;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// How the server combines updates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    FedAvg,
    /// FedProx with proximal weight μ.
    FedProx(f64),
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once(':') {
            None if s == "fedavg" => Ok(Strategy::FedAvg),
            Some(("fedprox", mu)) => match mu.parse::<f64>() {
                Ok(m) if m >= 0.0 && m.is_finite() => Ok(Strategy::FedProx(m)),
                _ => Err(format!(
                    "'{s}': FedProx's μ must be a number ≥ 0, e.g. fedprox:0.01"
                )),
            },
            _ => Err(format!(
                "'{s}': write fedavg or fedprox:MU (e.g. fedprox:0.01)"
            )),
        }
    }
}

/// Everything a simulation needs besides the data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimConfig {
    pub rounds: usize,
    /// Fraction of the nodes sampled each round, in (0, 1].
    pub fraction: f64,
    /// The fewest nodes that must report for a round to count.
    pub min_nodes: usize,
    pub local: TrainConfig,
    /// The local learning rate is multiplied by this every round (1: constant). FedAvg on
    /// non-IID data needs a decaying rate to reach the global optimum (Li et al., ICLR 2020).
    #[serde(default = "one")]
    pub lr_decay: f64,
    pub strategy: Strategy,
    /// Server momentum β (FedAvgM; 0: plain averaging) and server learning rate.
    pub server_momentum: f64,
    pub server_lr: f64,
    pub dp: Option<DpConfig>,
    /// Secure aggregation threshold t (None: updates sent in the clear).
    pub secure: Option<usize>,
    /// Probability that a sampled node drops out mid-round.
    pub dropout: f64,
    /// Updates with a norm above this multiple of the round's median are rejected.
    pub max_norm_ratio: f64,
    pub seed: u64,
}

impl SimConfig {
    /// Checks the settings against `nodes`, naming the flag at fault.
    pub fn check(&self, nodes: usize) -> Result<()> {
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(Error::Invalid(format!(
                "--fraction {} must be in (0, 1]: the share of nodes sampled each round",
                self.fraction
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Invalid(format!(
                "--dropout {} must be in [0, 1): the chance a sampled node drops out",
                self.dropout
            )));
        }
        if !(self.lr_decay > 0.0 && self.lr_decay <= 1.0) {
            return Err(Error::Invalid(format!(
                "--lr-decay {} must be in (0, 1]: the factor on the local learning rate each round",
                self.lr_decay
            )));
        }
        if self.rounds == 0 {
            return Err(Error::Invalid("--rounds must be at least 1".into()));
        }
        if self.min_nodes == 0 || self.min_nodes > nodes {
            return Err(Error::Invalid(format!(
                "--min-nodes {} must be between 1 and the {nodes} nodes",
                self.min_nodes
            )));
        }
        if let Some(t) = self.secure {
            let sampled = self.sampled(nodes);
            if t < 2 || t > sampled {
                return Err(Error::Invalid(format!(
                    "--secure-agg needs a threshold between 2 and the {sampled} nodes sampled per round (got {t}); sample more nodes (--nodes, --fraction) or lower --secagg-threshold"
                )));
            }
            if sampled > 255 {
                return Err(Error::Invalid(
                    "--secure-agg supports at most 255 nodes per round".into(),
                ));
            }
        }
        if let Some(dp) = &self.dp {
            dp.check()?;
        }
        Ok(())
    }

    /// Nodes sampled per round.
    pub fn sampled(&self, nodes: usize) -> usize {
        sampled_per_round(self.fraction, self.min_nodes, nodes)
    }
}

/// Nodes sampled per round: the fraction of `nodes`, at least `min_nodes` (and at most all).
pub fn sampled_per_round(fraction: f64, min_nodes: usize, nodes: usize) -> usize {
    ((fraction * nodes as f64).round() as usize).clamp(min_nodes.min(nodes), nodes)
}

fn one() -> f64 {
    1.0
}

/// What happened in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: usize,
    pub sampled: Vec<usize>,
    pub dropped: Vec<usize>,
    pub rejected: Vec<Rejection>,
    /// False when fewer than the minimum reported: the global model is unchanged.
    pub aggregated: bool,
    /// Federated evaluation: accuracy and macro-F1 over all nodes' validation data.
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// Mean local training loss of the reporting nodes.
    pub loss: f64,
    /// Median norm of the kept updates (before clipping): a guide for `--dp-clip`.
    pub update_norm: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// (node, bytes sent, bytes received) for each sampled node.
    pub node_bytes: Vec<(usize, u64, u64)>,
    /// Privacy spent so far (DP on).
    pub epsilon: Option<f64>,
    pub seconds: f64,
}

/// The simulator's resumable state, written after every round.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    config_fingerprint: String,
    rounds: Vec<RoundReport>,
    momentum: f64,
}

/// Runs the simulation from the global weights `initial`, writing `out/global.safetensors` and
/// `out/state.json` after every round; with `resume`, continues from them. `on_round` sees each
/// round's report.
#[allow(clippy::too_many_arguments)]
pub fn simulate(
    learner: &mut Learner,
    initial: &Weights,
    nodes: &[NodeData],
    test: Option<&Prepared>,
    cfg: &SimConfig,
    fingerprint: &str,
    out: &Path,
    resume: bool,
    on_round: &mut dyn FnMut(&RoundReport),
) -> Result<(Weights, Vec<RoundReport>)> {
    cfg.check(nodes.len())?;
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    let state_path = out.join("state.json");
    let global_path = out.join("global.safetensors");
    let velocity_path = out.join("velocity.safetensors");
    // Everything but the number of rounds must match to resume (so a run can be extended).
    let config_fingerprint = format!(
        "{fingerprint} {}",
        serde_json::to_string(&SimConfig {
            rounds: 0,
            ..cfg.clone()
        })
        .expect("config")
    );
    let initial = initial.clone();
    let mut opt = ServerOpt::new(cfg.server_lr, cfg.server_momentum, initial.len());
    let (mut global, mut history) = if resume && state_path.is_file() {
        let st: State = serde_json::from_slice(
            &std::fs::read(&state_path).map_err(|e| Error::file(&state_path, e))?,
        )
        .map_err(|e| Error::file(&state_path, format!("unreadable: {e}")))?;
        if st.config_fingerprint != config_fingerprint {
            return Err(Error::file(
                &state_path,
                "was written by a run with other settings or data; resume with the same flags, or drop --resume to start afresh",
            ));
        }
        if cfg.server_momentum > 0.0 && velocity_path.is_file() {
            opt.velocity = Weights::load(&velocity_path, &initial)?.data;
        }
        (Weights::load(&global_path, &initial)?, st.rounds)
    } else {
        if resume {
            return Err(Error::file(
                &state_path,
                "missing: there is no run to resume here; drop --resume",
            ));
        }
        (initial, vec![])
    };
    let n = nodes.len();
    let per_round = cfg.sampled(n);
    let mu = match cfg.strategy {
        Strategy::FedProx(m) => m,
        Strategy::FedAvg => 0.0,
    };
    for round in history.len() + 1..=cfg.rounds {
        let t0 = std::time::Instant::now();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix(cfg.seed, round as u64, u64::MAX));
        let mut ids: Vec<usize> = (0..n).collect();
        ids.shuffle(&mut rng);
        let mut sampled: Vec<usize> = ids[..per_round].to_vec();
        sampled.sort_unstable();
        let dropped: Vec<usize> = sampled
            .iter()
            .copied()
            .filter(|_| rng.random::<f64>() < cfg.dropout)
            .collect();
        let task = RoundTask {
            round,
            train: TrainConfig {
                lr: cfg.local.lr * cfg.lr_decay.powi(round as i32 - 1),
                ..cfg.local.clone()
            },
            prox_mu: mu,
            local_dp: cfg.dp.filter(|d| d.kind == DpKind::Local),
        };
        let mut updates: Vec<Update> = vec![];
        for &i in sampled.iter().filter(|i| !dropped.contains(i)) {
            updates.push(local_round(learner, &nodes[i], &global, &task)?);
        }
        let len = global.len();
        // Under secure aggregation the server cannot see single updates: the finite/shape check
        // stands for the one each node runs on its own update before masking, and there is no
        // norm-outlier screening (clip with DP to bound a node's influence instead).
        let ratio = if cfg.secure.is_some() {
            0.0
        } else {
            cfg.max_norm_ratio
        };
        let (kept, rejected) = screen(updates, len, ratio);
        let loss = kept.iter().map(|u| u.loss).sum::<f64>() / kept.len().max(1) as f64;
        let mut norms: Vec<f64> = kept
            .iter()
            .map(|u| crate::weights::norm(&u.delta))
            .collect();
        norms.sort_by(f64::total_cmp);
        let update_norm = norms.get(norms.len() / 2).copied().unwrap_or(0.0);
        // Bytes per sampled node: each receives the global weights (and, with secure
        // aggregation, the others' keys and its shares); each that reports sends its update
        // (masked, with its shares, under secure aggregation).
        let per_node_recv = global.bytes()
            + cfg
                .secure
                .map_or(0, |_| secagg::bytes_received(sampled.len()));
        let per_node_sent = match cfg.secure {
            Some(_) => secagg::bytes_sent(sampled.len(), len + 1),
            None => global.bytes(),
        };
        let node_bytes: Vec<(usize, u64, u64)> = sampled
            .iter()
            .map(|&i| {
                let sent = if dropped.contains(&i) {
                    0
                } else {
                    per_node_sent
                };
                (i, sent, per_node_recv)
            })
            .collect();
        let bytes_sent = node_bytes.iter().map(|b| b.1).sum();
        let bytes_received = node_bytes.iter().map(|b| b.2).sum();
        // Too few reports, or (secure aggregation) fewer than the threshold to unmask: the round
        // is skipped and the global model stays as it was.
        let aggregated = kept.len() >= cfg.min_nodes && cfg.secure.is_none_or(|t| kept.len() >= t);
        if aggregated {
            let dp = cfg.dp;
            let central = dp.filter(|d| d.kind == DpKind::Central);
            let mut kept = kept;
            if let Some(d) = central {
                kept.iter_mut().for_each(|u| {
                    clip(&mut u.delta, d.clip);
                });
            }
            // Under DP every node counts once (bounded sensitivity); otherwise by its examples.
            let weight = |u: &Update| if dp.is_some() { 1.0 } else { u.examples as f64 };
            let total_w: f64 = kept.iter().map(weight).sum();
            let mut mean: Vec<f32> = match cfg.secure {
                Some(t) => {
                    // Weighted values and the weight itself travel masked; the rejected ones
                    // count as dropped for the unmasking.
                    let inputs: BTreeMap<usize, Vec<f64>> = sampled
                        .iter()
                        .map(|&i| {
                            let v = match kept.iter().find(|u| u.node == i) {
                                Some(u) => {
                                    let w = weight(u);
                                    u.delta.iter().map(|&x| w * x as f64).chain([w]).collect()
                                }
                                None => vec![0.0; len + 1],
                            };
                            (i, v)
                        })
                        .collect();
                    let gone: Vec<usize> = sampled
                        .iter()
                        .copied()
                        .filter(|i| !kept.iter().any(|u| u.node == *i))
                        .collect();
                    let mut s = secagg::aggregate_round(&inputs, &gone, t, round as u64)?;
                    let w = s.pop().unwrap_or(0.0);
                    debug_assert!((w - total_w).abs() < 1e-3);
                    s.iter().map(|x| (x / total_w) as f32).collect()
                }
                None => weighted_mean(&kept, weight),
            };
            if let Some(d) = central {
                let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
                add_noise(&mut mean, d.noise * d.clip / total_w, &mut rng);
            }
            opt.step(&mut global.data, &mean);
        }
        // Federated evaluation over every node's validation data, and the test set: the global
        // model is set once for all of them.
        learner.set_weights(&global.to_named()?)?;
        let (mut right, mut total, mut f1w) = (0.0, 0usize, 0.0);
        for node in nodes {
            if let Some(m) = evaluate(learner, node)? {
                let k = node.valid.len();
                right += m.accuracy * k as f64;
                f1w += m.macro_f1 * k as f64;
                total += k;
            }
        }
        let test_accuracy = match test {
            Some(t) => Some(learner.evaluate(t)?.accuracy),
            None => None,
        };
        let eps = cfg
            .dp
            .map(|d| epsilon(per_round as f64 / n as f64, d.noise, round, d.delta));
        let r = RoundReport {
            round,
            sampled,
            dropped,
            rejected,
            aggregated,
            accuracy: (total > 0).then(|| right / total as f64),
            macro_f1: (total > 0).then(|| f1w / total as f64),
            test_accuracy,
            loss,
            update_norm,
            bytes_sent,
            bytes_received,
            node_bytes,
            epsilon: eps,
            seconds: t0.elapsed().as_secs_f64(),
        };
        history.push(r.clone());
        global.save(&global_path)?;
        if cfg.server_momentum > 0.0 {
            global
                .with_data(opt.velocity.clone())
                .save(&velocity_path)?;
        }
        let st = State {
            config_fingerprint: config_fingerprint.clone(),
            rounds: history.clone(),
            momentum: cfg.server_momentum,
        };
        let tmp = state_path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&st).expect("state"))
            .map_err(|e| Error::file(&tmp, e))?;
        std::fs::rename(&tmp, &state_path).map_err(|e| Error::file(&state_path, e))?;
        on_round(&r);
    }
    Ok((global, history))
}
