//! Splitting one data set across N nodes the way real silos are split: evenly at random (IID),
//! with label mixes drawn from Dirichlet(α) (non-IID: small α gives nodes that see mostly one
//! label), or by the value of a field of the data (e.g. the sender's domain).

use crate::{Error, Result};
use frugal_train::data::Example;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_distr::{Distribution, Gamma};
use std::collections::BTreeMap;

/// How examples are assigned to nodes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partition {
    /// Shuffled and dealt out evenly.
    Iid,
    /// Per label, the node shares are drawn from Dirichlet(α, …, α).
    Dirichlet(f64),
    /// One node per distinct value of this field, the values dealt round-robin over the nodes
    /// when there are more values than nodes.
    Field(String),
}

impl std::str::FromStr for Partition {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let hint = "write iid, dirichlet:ALPHA (e.g. dirichlet:0.5) or field:NAME";
        match s.split_once(':') {
            None if s == "iid" => Ok(Partition::Iid),
            Some(("dirichlet", a)) => match a.parse::<f64>() {
                Ok(a) if a > 0.0 && a.is_finite() => Ok(Partition::Dirichlet(a)),
                _ => Err(format!(
                    "'{s}': the Dirichlet α must be a number above 0 (smaller is more skewed), e.g. dirichlet:0.5"
                )),
            },
            Some(("field", f)) if !f.is_empty() => Ok(Partition::Field(f.into())),
            _ => Err(format!("'{s}': {hint}")),
        }
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Partition::Iid => write!(f, "iid"),
            Partition::Dirichlet(a) => write!(f, "dirichlet:{a}"),
            Partition::Field(n) => write!(f, "field:{n}"),
        }
    }
}

/// Assigns each example to one of `nodes` nodes; returns the example indices of each node.
/// `groups` (one value per example) is needed for `Partition::Field`. Every node gets at least
/// one example, or the error says why it cannot.
pub fn partition(
    examples: &[Example],
    groups: Option<&[String]>,
    nodes: usize,
    how: &Partition,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    if nodes == 0 {
        return Err(Error::Invalid("--nodes must be at least 1".into()));
    }
    if nodes > examples.len() {
        return Err(Error::Invalid(format!(
            "--nodes {nodes} is more than the {} training examples; every node needs data",
            examples.len()
        )));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut parts: Vec<Vec<usize>> = vec![vec![]; nodes];
    match how {
        Partition::Iid => {
            let mut idx: Vec<usize> = (0..examples.len()).collect();
            idx.shuffle(&mut rng);
            for (k, i) in idx.into_iter().enumerate() {
                parts[k % nodes].push(i);
            }
        }
        Partition::Dirichlet(alpha) => {
            if !(*alpha > 0.0 && alpha.is_finite()) {
                return Err(Error::Invalid(format!(
                    "the Dirichlet α is {alpha}; it must be above 0"
                )));
            }
            let gamma = Gamma::new(*alpha, 1.0)
                .map_err(|e| Error::Invalid(format!("Dirichlet α {alpha}: {e}")))?;
            let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (i, e) in examples.iter().enumerate() {
                by_label.entry(e.label.as_str()).or_default().push(i);
            }
            for idx in by_label.values_mut() {
                idx.shuffle(&mut rng);
                let draws: Vec<f64> = (0..nodes).map(|_| gamma.sample(&mut rng)).collect();
                let total: f64 = draws.iter().sum::<f64>().max(f64::MIN_POSITIVE);
                // Cumulative cut points; the last node takes the rest.
                let mut start = 0;
                let mut acc = 0.0;
                for (k, d) in draws.iter().enumerate() {
                    acc += d / total;
                    let end = if k + 1 == nodes {
                        idx.len()
                    } else {
                        ((acc * idx.len() as f64).round() as usize).clamp(start, idx.len())
                    };
                    parts[k].extend_from_slice(&idx[start..end]);
                    start = end;
                }
            }
            // A node the draws left empty takes one example from the largest node, so every
            // node can train.
            for k in 0..nodes {
                if parts[k].is_empty() {
                    let big = (0..nodes).max_by_key(|&j| parts[j].len()).expect("nodes");
                    let moved = parts[big].pop().expect("the largest node has examples");
                    parts[k].push(moved);
                }
            }
        }
        Partition::Field(name) => {
            let Some(groups) = groups else {
                return Err(Error::Invalid(format!(
                    "partition by field '{name}' needs the field's values"
                )));
            };
            let mut by_value: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (i, g) in groups.iter().enumerate() {
                by_value.entry(g.as_str()).or_default().push(i);
            }
            if by_value.len() < nodes {
                return Err(Error::Invalid(format!(
                    "field '{name}' has {} distinct values, fewer than --nodes {nodes}; use at most {} nodes",
                    by_value.len(),
                    by_value.len()
                )));
            }
            // Largest groups first, each to the node with the fewest examples so far.
            let mut groups: Vec<Vec<usize>> = by_value.into_values().collect();
            groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
            for g in groups {
                let k = (0..nodes).min_by_key(|&k| parts[k].len()).expect("nodes");
                parts[k].extend(g);
            }
        }
    }
    for p in parts.iter_mut() {
        p.sort_unstable();
    }
    Ok(parts)
}

/// Count of each label on each node (labels in `labels` order), for the label-mix table.
pub fn label_mix(examples: &[Example], parts: &[Vec<usize>], labels: &[String]) -> Vec<Vec<usize>> {
    parts
        .iter()
        .map(|p| {
            labels
                .iter()
                .map(|l| p.iter().filter(|&&i| examples[i].label == *l).count())
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<Example> {
        (0..n)
            .map(|i| Example {
                text: format!("t{i}"),
                label: if i % 3 == 0 { "spam" } else { "ham" }.into(),
            })
            .collect()
    }

    fn check_cover(parts: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "each example exactly once");
        assert!(parts.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn iid_deals_evenly_and_dirichlet_skews_label_mixes() {
        let d = data(600);
        let labels = vec!["ham".to_string(), "spam".to_string()];
        let iid = partition(&d, None, 10, &Partition::Iid, 1).unwrap();
        check_cover(&iid, 600);
        assert!(iid.iter().all(|p| p.len() == 60));
        let skew = |parts: &[Vec<usize>]| -> f64 {
            // Mean absolute deviation of each node's spam share from the overall share.
            let mix = label_mix(&d, parts, &labels);
            mix.iter()
                .map(|m| (m[1] as f64 / (m[0] + m[1]) as f64 - 1.0 / 3.0).abs())
                .sum::<f64>()
                / mix.len() as f64
        };
        let non = partition(&d, None, 10, &Partition::Dirichlet(0.1), 1).unwrap();
        check_cover(&non, 600);
        assert!(
            skew(&non) > 3.0 * skew(&iid),
            "{} vs {}",
            skew(&non),
            skew(&iid)
        );
        // Same seed, same split; another seed, another split.
        assert_eq!(
            non,
            partition(&d, None, 10, &Partition::Dirichlet(0.1), 1).unwrap()
        );
        assert_ne!(
            non,
            partition(&d, None, 10, &Partition::Dirichlet(0.1), 2).unwrap()
        );
    }

    #[test]
    fn field_partition_keeps_groups_together() {
        let d = data(30);
        let groups: Vec<String> = (0..30).map(|i| format!("site{}", i % 5)).collect();
        let parts = partition(&d, Some(&groups), 3, &Partition::Field("site".into()), 0).unwrap();
        check_cover(&parts, 30);
        for p in &parts {
            for &i in p {
                // Everything of i's group is on the same node.
                assert!((0..30)
                    .filter(|&j| groups[j] == groups[i])
                    .all(|j| p.contains(&j)));
            }
        }
        let e = partition(&d, Some(&groups), 6, &Partition::Field("site".into()), 0).unwrap_err();
        assert!(e.to_string().contains("5 distinct values"), "{e}");
    }

    #[test]
    fn bad_partitions_are_refused_with_the_fix() {
        let d = data(5);
        let e = partition(&d, None, 6, &Partition::Iid, 0).unwrap_err();
        assert!(e.to_string().contains("more than the 5"), "{e}");
        for bad in [
            "dirichlet:0",
            "dirichlet:-1",
            "dirichlet:x",
            "field:",
            "random",
        ] {
            let e = bad.parse::<Partition>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!(
            "dirichlet:0.5".parse::<Partition>().unwrap(),
            Partition::Dirichlet(0.5)
        );
    }
}
