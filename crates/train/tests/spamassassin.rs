//! The SpamAssassin importer on the real pinned corpus: the anchors' counts and split.

use frugal_models::assets::Store;
use frugal_train::data::{anchor_split, spamassassin};

#[test]
fn corpus_and_split_match_the_anchors() {
    let dir = Store::from_env().ensure("spamassassin").unwrap();
    let corpus = spamassassin(&dir).unwrap();
    assert_eq!(corpus.len(), 6046);
    // Sorted by group, then file name, as the anchors' common.py.
    assert_eq!(corpus[0].0, "easy-ham-1");
    assert!(corpus
        .windows(2)
        .all(|w| (w[0].0.as_str(), w[0].1.as_str()) <= (w[1].0.as_str(), w[1].1.as_str())));
    let spam = corpus.iter().filter(|c| c.2.label == "spam").count();
    assert_eq!(spam, 1896);
    // Headers are gone: only messages that quote other messages (bounces, forwards) still
    // contain a "Received: from" line, in their bodies.
    let with_headers = corpus
        .iter()
        .filter(|c| c.2.text.contains("Received: from"))
        .count();
    eprintln!("{with_headers} texts quote a Received: header");
    assert!(with_headers < corpus.len() / 100, "{with_headers}");
    let s = anchor_split(corpus.into_iter().map(|c| c.2).collect());
    assert_eq!(s.test.len(), 1209);
    assert_eq!(s.test.iter().filter(|e| e.label == "spam").count(), 379);
    assert_eq!(s.train.len() + s.valid.len(), 6046 - 1209);
}
