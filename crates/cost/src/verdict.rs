//! The report's verdict on one alternative: how much cheaper it is than the hosted reference and
//! how much of the quality it keeps, against the reference's real quality when that is known
//! (measured from its answers, or a published figure with its source), else against the best
//! local alternative, said which.

use serde::Serialize;

/// "≥ 95% cheaper": the savings bar of the verdict.
pub const SAVINGS_BAR: f64 = 0.95;
/// "≥ 97% of the quality": the quality bar of the verdict.
pub const QUALITY_BAR: f64 = 0.97;

/// What "the quality" in "97% of the quality" is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QualityBasis {
    /// The reference's quality measured here from its answers on the test texts.
    ReferenceMeasured { accuracy: f64, source: String },
    /// The reference's quality as published (a paper, a leaderboard, the user's own evaluation).
    ReferencePublished { accuracy: f64, source: String },
    /// The reference's quality is unknown: the best local alternative stands in for it.
    BestLocal { accuracy: f64, row: String },
}

impl QualityBasis {
    /// The accuracy qualities are compared with.
    pub fn accuracy(&self) -> f64 {
        match self {
            QualityBasis::ReferenceMeasured { accuracy, .. }
            | QualityBasis::ReferencePublished { accuracy, .. }
            | QualityBasis::BestLocal { accuracy, .. } => *accuracy,
        }
    }

    /// The column heading and legend wording: "quality vs reference" or "quality vs best local".
    pub fn short(&self) -> &'static str {
        match self {
            QualityBasis::BestLocal { .. } => "best local row",
            _ => "reference",
        }
    }

    /// One line saying what the quality is measured against.
    pub fn describe(&self) -> String {
        match self {
            QualityBasis::ReferenceMeasured { accuracy, source } => {
                format!("the reference's accuracy {accuracy:.4}, measured here from {source}")
            }
            QualityBasis::ReferencePublished { accuracy, source } => {
                format!("the reference's published accuracy {accuracy:.4} ({source})")
            }
            QualityBasis::BestLocal { accuracy, row } => format!(
                "the best local row ({row}, {accuracy:.4}), as the reference's quality is unknown (give --reference-answers or --reference-accuracy)"
            ),
        }
    }
}

/// The basis for a report: the reference's accuracy when known, else the best of the local rows'
/// (`(name, accuracy)`; baselines left out by the caller). `None` when nothing has a quality.
pub fn basis(
    reference: Option<(f64, String, bool)>,
    local: &[(String, f64)],
) -> Option<QualityBasis> {
    if let Some((accuracy, source, measured)) = reference {
        return Some(if measured {
            QualityBasis::ReferenceMeasured { accuracy, source }
        } else {
            QualityBasis::ReferencePublished { accuracy, source }
        });
    }
    local
        .iter()
        .filter(|(_, a)| a.is_finite())
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(row, accuracy)| QualityBasis::BestLocal {
            accuracy: *accuracy,
            row: row.clone(),
        })
}

/// One row's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Verdict {
    /// 1 − cost / reference cost (0.96 = 96% cheaper); `None` without both costs.
    pub savings: Option<f64>,
    /// Accuracy / the basis's accuracy; `None` without both.
    pub retained: Option<f64>,
    /// At least 95% cheaper while keeping at least 97% of the quality.
    pub meets: bool,
}

/// 1 − cost / reference cost; `None` when the reference costs nothing or either is unknown.
pub fn savings(cost: Option<f64>, reference_cost: Option<f64>) -> Option<f64> {
    match (cost, reference_cost) {
        (Some(c), Some(r)) if r > 0.0 && c.is_finite() && r.is_finite() => Some(1.0 - c / r),
        _ => None,
    }
}

/// The verdict on a row costing `cost` per 1,000 requests with `accuracy`, against the
/// reference's cost and the quality basis. A baseline (a row that does no work, such as the
/// majority class) is never given the mark.
pub fn verdict(
    cost: Option<f64>,
    accuracy: Option<f64>,
    reference_cost: Option<f64>,
    basis: Option<&QualityBasis>,
    baseline: bool,
) -> Verdict {
    let savings = savings(cost, reference_cost);
    let retained = match (accuracy, basis.map(QualityBasis::accuracy)) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    Verdict {
        savings,
        retained,
        meets: !baseline
            && savings.is_some_and(|s| s >= SAVINGS_BAR)
            && retained.is_some_and(|q| q >= QUALITY_BAR),
    }
}

/// The accuracy of always answering the most frequent training label on `test` labels, and
/// that label (ties: the first in name order). `None` without training or test labels.
pub fn majority<'a>(train: &[&'a str], test: &[&str]) -> Option<(&'a str, f64)> {
    let mut counts: std::collections::BTreeMap<&'a str, usize> = Default::default();
    for l in train {
        *counts.entry(*l).or_default() += 1;
    }
    let mut best: Option<(&'a str, usize)> = None;
    for (l, n) in counts {
        if best.is_none_or(|b| n > b.1) {
            best = Some((l, n));
        }
    }
    let (label, _) = best?;
    if test.is_empty() {
        return None;
    }
    let hits = test.iter().filter(|l| **l == label).count();
    Some((label, hits as f64 / test.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn savings_are_one_minus_the_cost_ratio() {
        assert_eq!(savings(Some(1.0), Some(4.0)), Some(0.75));
        assert_eq!(savings(Some(5.0), Some(4.0)), Some(-0.25));
        assert_eq!(savings(Some(1.0), Some(0.0)), None);
        assert_eq!(savings(None, Some(1.0)), None);
        assert_eq!(savings(Some(1.0), None), None);
    }

    #[test]
    fn the_reference_quality_wins_over_the_best_local_row() {
        let local = vec![("transfer".to_string(), 0.6), ("finetune".to_string(), 0.7)];
        let b = basis(None, &local).unwrap();
        assert_eq!(
            b,
            QualityBasis::BestLocal {
                accuracy: 0.7,
                row: "finetune".into()
            }
        );
        assert!(b.describe().contains("unknown"));
        let b = basis(Some((0.9, "paper".into(), false)), &local).unwrap();
        assert_eq!(b.accuracy(), 0.9);
        assert!(b.describe().contains("published") && b.describe().contains("paper"));
        let b = basis(Some((0.8, "answers.jsonl".into(), true)), &local).unwrap();
        assert!(matches!(b, QualityBasis::ReferenceMeasured { .. }));
        assert_eq!(basis(None, &[]), None);
    }

    #[test]
    fn poor_local_rows_no_longer_earn_the_mark_when_the_reference_is_known() {
        // Every local row is poor (0.50); the best of them would keep 100% of "the best".
        let local = vec![("a".to_string(), 0.50)];
        let vs_best = basis(None, &local).unwrap();
        let v = verdict(Some(0.01), Some(0.50), Some(10.0), Some(&vs_best), false);
        assert!(v.meets);
        assert_eq!(v.retained, Some(1.0));
        // Against the reference's real 0.90 it keeps 55.6%: no mark.
        let vs_ref = basis(Some((0.90, "answers".into(), true)), &local).unwrap();
        let v = verdict(Some(0.01), Some(0.50), Some(10.0), Some(&vs_ref), false);
        assert!(!v.meets);
        assert!((v.retained.unwrap() - 0.5 / 0.9).abs() < 1e-12);
        assert!((v.savings.unwrap() - 0.999).abs() < 1e-12);
    }

    #[test]
    fn both_bars_must_hold_and_baselines_never_pass() {
        let b = QualityBasis::ReferencePublished {
            accuracy: 1.0,
            source: "x".into(),
        };
        // Exactly at both bars: passes.
        assert!(verdict(Some(0.05), Some(0.97), Some(1.0), Some(&b), false).meets);
        // 94% cheaper: fails.
        assert!(!verdict(Some(0.06), Some(0.99), Some(1.0), Some(&b), false).meets);
        // 96.9% of the quality: fails.
        assert!(!verdict(Some(0.01), Some(0.969), Some(1.0), Some(&b), false).meets);
        // A baseline at both bars: no mark.
        assert!(!verdict(Some(0.0), Some(0.99), Some(1.0), Some(&b), true).meets);
        // Unknown cost or quality: no mark.
        assert!(!verdict(None, Some(0.99), Some(1.0), Some(&b), false).meets);
        assert!(!verdict(Some(0.0), None, Some(1.0), Some(&b), false).meets);
        assert!(!verdict(Some(0.0), Some(0.99), Some(1.0), None, false).meets);
    }

    #[test]
    fn the_majority_class_is_the_most_frequent_training_label() {
        let train = ["ham", "spam", "ham", "ham"];
        let test = ["spam", "ham", "spam", "spam"];
        assert_eq!(majority(&train, &test), Some(("ham", 0.25)));
        // Ties go to the first label in name order.
        assert_eq!(majority(&["b", "a"], &["a", "b"]), Some(("a", 0.5)));
        assert_eq!(majority(&[], &["a"]), None);
        assert_eq!(majority(&["a"], &[]), None);
    }
}
