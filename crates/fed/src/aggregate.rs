//! The server's side of a round: screen the nodes' updates (never average in a NaN, a wrong
//! shape or a wildly large update), then average them, weighted by examples (FedAvg), with
//! optional server momentum (FedAvgM).

use crate::weights::norm;
use serde::{Deserialize, Serialize};

/// What a node sends back after a round: its weights minus the global weights it started from.
#[derive(Debug, Clone)]
pub struct Update {
    pub node: usize,
    /// Training examples behind the update (FedAvg's weight).
    pub examples: usize,
    pub delta: Vec<f32>,
    /// The node's mean training loss in its last local epoch.
    pub loss: f64,
}

/// Why an update was left out of the average.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub node: usize,
    pub reason: String,
}

/// Leaves out updates with non-finite values, the wrong length, or a norm far outside the
/// round's: above `max_ratio` times the median norm of the round (needs 3 or more updates; the
/// median is robust to the outlier itself). Returns the kept updates and the rejections.
pub fn screen(updates: Vec<Update>, len: usize, max_ratio: f64) -> (Vec<Update>, Vec<Rejection>) {
    let mut kept = vec![];
    let mut rejected = vec![];
    for u in updates {
        if u.delta.len() != len {
            rejected.push(Rejection {
                node: u.node,
                reason: format!("has {} values, the model has {len}", u.delta.len()),
            });
        } else if let Some(i) = u.delta.iter().position(|x| !x.is_finite()) {
            rejected.push(Rejection {
                node: u.node,
                reason: format!("value {i} is {}", u.delta[i]),
            });
        } else if u.examples == 0 {
            rejected.push(Rejection {
                node: u.node,
                reason: "trained on no examples".into(),
            });
        } else {
            kept.push(u);
        }
    }
    if kept.len() >= 3 && max_ratio > 0.0 {
        let mut norms: Vec<f64> = kept.iter().map(|u| norm(&u.delta)).collect();
        norms.sort_by(f64::total_cmp);
        let median = norms[norms.len() / 2];
        let limit = max_ratio * median.max(1e-12);
        let (ok, far): (Vec<Update>, Vec<Update>) =
            kept.into_iter().partition(|u| norm(&u.delta) <= limit);
        for u in far {
            rejected.push(Rejection {
                node: u.node,
                reason: format!(
                    "update norm {:.3e} is over {max_ratio}x the round's median {:.3e}",
                    norm(&u.delta),
                    median
                ),
            });
        }
        kept = ok;
    }
    (kept, rejected)
}

/// The weighted mean of the updates' deltas: FedAvg weighs each by its examples; under
/// differential privacy each counts once.
pub fn weighted_mean(updates: &[Update], weight: impl Fn(&Update) -> f64) -> Vec<f32> {
    let total: f64 = updates.iter().map(&weight).sum();
    let len = updates.first().map_or(0, |u| u.delta.len());
    let mut acc = vec![0f64; len];
    for u in updates {
        let w = weight(u) / total;
        for (a, &d) in acc.iter_mut().zip(&u.delta) {
            *a += w * d as f64;
        }
    }
    acc.into_iter().map(|x| x as f32).collect()
}

/// The server's optimiser: global += lr · v, v = β·v + Δ (β = 0: plain FedAvg).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerOpt {
    pub lr: f64,
    pub momentum: f64,
    pub velocity: Vec<f32>,
}

impl ServerOpt {
    /// Plain FedAvg (lr 1, no momentum) or FedAvgM.
    pub fn new(lr: f64, momentum: f64, len: usize) -> ServerOpt {
        ServerOpt {
            lr,
            momentum,
            velocity: vec![0.0; len],
        }
    }

    /// Applies the averaged delta to the global weights.
    pub fn step(&mut self, global: &mut [f32], delta: &[f32]) {
        for ((g, v), &d) in global.iter_mut().zip(self.velocity.iter_mut()).zip(delta) {
            *v = (self.momentum as f32) * *v + d;
            *g += (self.lr as f32) * *v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(node: usize, examples: usize, delta: Vec<f32>) -> Update {
        Update {
            node,
            examples,
            delta,
            loss: 0.0,
        }
    }

    #[test]
    fn fedavg_weights_by_examples_and_screening_drops_bad_updates() {
        let ups = vec![
            up(0, 1, vec![1.0, 0.0]),
            up(1, 3, vec![0.0, 1.0]),
            up(2, 2, vec![f32::NAN, 0.0]),
            up(3, 2, vec![1.0]),
            up(4, 2, vec![0.5, 0.5]),
            up(5, 2, vec![1e6, 0.0]),
        ];
        let (kept, rejected) = screen(ups, 2, 10.0);
        let nodes: Vec<usize> = kept.iter().map(|u| u.node).collect();
        assert_eq!(nodes, vec![0, 1, 4]);
        let why: Vec<(usize, &str)> = rejected
            .iter()
            .map(|r| (r.node, r.reason.as_str()))
            .collect();
        assert!(why[0].0 == 2 && why[0].1.contains("NaN"), "{why:?}");
        assert!(
            why[1].0 == 3 && why[1].1.contains("has 1 values"),
            "{why:?}"
        );
        assert!(why[2].0 == 5 && why[2].1.contains("median"), "{why:?}");
        let m = weighted_mean(&kept, |u| u.examples as f64);
        // (1·[1,0] + 3·[0,1] + 2·[.5,.5]) / 6
        assert!(
            (m[0] - 2.0 / 6.0).abs() < 1e-6 && (m[1] - 4.0 / 6.0).abs() < 1e-6,
            "{m:?}"
        );
    }

    #[test]
    fn server_momentum_accumulates() {
        let mut g = vec![0.0f32];
        let mut plain = ServerOpt::new(1.0, 0.0, 1);
        plain.step(&mut g, &[1.0]);
        plain.step(&mut g, &[1.0]);
        assert_eq!(g, vec![2.0]);
        let mut g = vec![0.0f32];
        let mut m = ServerOpt::new(1.0, 0.5, 1);
        m.step(&mut g, &[1.0]);
        m.step(&mut g, &[1.0]);
        assert_eq!(g, vec![2.5]);
    }
}
