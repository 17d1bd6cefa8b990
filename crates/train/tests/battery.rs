//! The quality battery on its real, pinned assets: every task loads with the shape its
//! description gives (texts, labels, sizes), split without overlap.

use frugal_models::assets::Store;
use frugal_train::battery::{load, BATTERY};
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn every_battery_task_loads_with_the_shape_it_claims() {
    let store = Store::from_env();
    // (task, examples, labels) as described in BATTERY.
    let want: BTreeMap<&str, (usize, usize)> = [
        ("spamassassin", (6046, 2)),
        ("sms-spam", (5574, 2)),
        ("trec", (5381, 6)),
        ("reuters-r8", (7674, 8)),
        ("20newsgroups", (18821, 20)),
        ("news-outlets", (3788, 9)),
        ("sotu-party", (233, 8)),
    ]
    .into_iter()
    .collect();
    assert_eq!(BATTERY.len(), want.len());
    for t in BATTERY {
        let dir = store.ensure(t.asset).unwrap();
        let s = load(t, &dir).unwrap();
        let n = s.train.len() + s.valid.len() + s.test.len();
        let labels: BTreeSet<&str> = s.train.iter().map(|e| e.label.as_str()).collect();
        let (wn, wl) = want[t.name];
        assert_eq!((n, labels.len()), (wn, wl), "{}", t.name);
        assert!(!s.valid.is_empty() && !s.test.is_empty(), "{}", t.name);
        assert!(
            s.train
                .iter()
                .chain(&s.valid)
                .chain(&s.test)
                .all(|e| !e.text.trim().is_empty()),
            "{}: an empty text",
            t.name
        );
        // Every test label is one the classifier can learn.
        assert!(
            s.test.iter().all(|e| labels.contains(e.label.as_str())),
            "{}",
            t.name
        );
    }
}
