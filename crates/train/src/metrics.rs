//! Classification metrics: accuracy, per-class precision/recall/F1, macro-F1 and the confusion
//! matrix, as `frugal eval` reports them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// All metrics of one evaluation. `confusion[i][j]` counts examples of label `i` predicted `j`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: BTreeMap<String, ClassScores>,
    pub confusion: Vec<Vec<usize>>,
    pub labels: Vec<String>,
}

/// Metrics of predictions against gold labels, both as indices into `labels`. A class never
/// predicted has precision 0 (as scikit-learn's `zero_division=0`).
pub fn evaluate(labels: &[String], gold: &[usize], pred: &[usize]) -> Metrics {
    assert_eq!(gold.len(), pred.len(), "one prediction per example");
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&g, &p) in gold.iter().zip(pred) {
        confusion[g][p] += 1;
    }
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let mut per_class = BTreeMap::new();
    let mut f1_sum = 0.0;
    for (i, label) in labels.iter().enumerate() {
        let tp = confusion[i][i] as f64;
        let predicted: usize = (0..k).map(|r| confusion[r][i]).sum();
        let support: usize = confusion[i].iter().sum();
        let ratio = |a: f64, b: usize| if b == 0 { 0.0 } else { a / b as f64 };
        let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        f1_sum += f1;
        per_class.insert(
            label.clone(),
            ClassScores {
                precision,
                recall,
                f1,
                support,
            },
        );
    }
    Metrics {
        accuracy: if gold.is_empty() {
            0.0
        } else {
            correct as f64 / gold.len() as f64
        },
        macro_f1: if k == 0 { 0.0 } else { f1_sum / k as f64 },
        per_class,
        confusion,
        labels: labels.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_scores() {
        // gold: a a a b b c; pred: a a b b c c
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let m = evaluate(&labels, &[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 2, 2]);
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]
        );
        let a = &m.per_class["a"];
        assert_eq!((a.precision, a.support), (1.0, 3));
        assert!((a.recall - 2.0 / 3.0).abs() < 1e-12 && (a.f1 - 0.8).abs() < 1e-12);
        let b = &m.per_class["b"];
        assert!((b.precision - 0.5).abs() < 1e-12 && (b.recall - 0.5).abs() < 1e-12);
        let c = &m.per_class["c"];
        assert!((c.precision - 0.5).abs() < 1e-12 && (c.recall - 1.0).abs() < 1e-12);
        // scikit-learn: f1_score(average="macro") = (0.8 + 0.5 + 2/3) / 3.
        assert!((m.macro_f1 - (0.8 + 0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn never_predicted_classes_score_zero() {
        let labels: Vec<String> = ["ham", "spam"].iter().map(|s| s.to_string()).collect();
        let m = evaluate(&labels, &[0, 1, 1], &[0, 0, 0]);
        assert_eq!(m.per_class["spam"].precision, 0.0);
        assert_eq!(m.per_class["spam"].f1, 0.0);
        assert!((m.macro_f1 - 0.25).abs() < 1e-12, "{}", m.macro_f1);
    }
}
