//! Labelled text datasets: JSONL, CSV and TSV files with named text and label fields, and the
//! built-in SpamAssassin importer (RFC 822 messages parsed with `mail-parser`: subject + plain
//! text body, transfer encodings decoded, HTML turned into text, headers dropped).
//!
//! Splits are deterministic: SpamAssassin uses the anchors' split (messages sorted by group, then
//! file name; every 5th is test) so numbers compare; other data sets get a stratified split from
//! a seed.

use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One labelled text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub text: String,
    pub label: String,
}

/// Which fields of a record hold the text and the label.
#[derive(Debug, Clone)]
pub struct Fields {
    pub text: String,
    pub label: String,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            text: "text".into(),
            label: "label".into(),
        }
    }
}

/// Reads a JSONL, CSV or TSV file (by extension). Errors name the file, the line and the missing
/// field with the fields that are present; empty files and empty texts are errors.
pub fn load(path: &Path, fields: &Fields) -> Result<Vec<Example>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_lowercase();
    let examples = match ext.as_str() {
        "jsonl" | "json" | "ndjson" => load_jsonl(path, fields)?,
        "csv" => load_delimited(path, fields, b',')?,
        "tsv" | "tab" => load_delimited(path, fields, b'\t')?,
        _ => {
            return Err(Error::data(
                path,
                "unknown format: name the file *.jsonl, *.csv or *.tsv (or use a built-in data set: spamassassin)",
            ))
        }
    };
    if examples.is_empty() {
        return Err(Error::data(path, "the file holds no examples"));
    }
    Ok(examples)
}

fn check_text(path: &Path, line: usize, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::data(
            path,
            format!("line {line}: the text is empty; remove the line or give it text"),
        ));
    }
    Ok(())
}

/// A text file's content without a leading byte-order mark (editors on Windows write one; it is
/// not part of the first line's JSON or text).
pub fn read_text(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::data(path, format!("cannot read: {e}")))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// A CSV reader's error with the one line number it happened on (the csv crate's own message
/// carries a record number and a line of its own).
fn csv_error(path: &Path, e: &csv::Error) -> Error {
    let line = e.position().map(|p| p.line());
    let what = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields, but the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
        _ => e.to_string(),
    };
    match line {
        Some(l) => Error::data(path, format!("line {l}: {what}")),
        None => Error::data(path, what),
    }
}

fn load_jsonl(path: &Path, fields: &Fields) -> Result<Vec<Example>> {
    let content = read_text(path)?;
    let mut out = vec![];
    for (i, line) in content.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::data(path, format!("line {n}: invalid JSON ({e})")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::data(path, format!("line {n}: not a JSON object")))?;
        let get = |f: &str| -> Result<String> {
            match obj.get(f) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Number(x)) => Ok(x.to_string()),
                Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
                Some(_) => Err(Error::data(path, format!("line {n}: field '{f}' is not text"))),
                None => Err(Error::data(
                    path,
                    format!(
                        "line {n}: no field '{f}'; fields present: {}; choose others with --text-field/--label-field",
                        obj.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )),
            }
        };
        let text = get(&fields.text)?;
        check_text(path, n, &text)?;
        let label = if fields.label.is_empty() {
            String::new()
        } else {
            get(&fields.label)?
        };
        out.push(Example { text, label });
    }
    Ok(out)
}

fn load_delimited(path: &Path, fields: &Fields, delimiter: u8) -> Result<Vec<Example>> {
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_path(path)
        .map_err(|e| Error::data(path, format!("cannot read: {e}")))?;
    let headers = rdr
        .headers()
        .map_err(|e| Error::data(path, format!("no header line: {e}")))?
        .clone();
    let col = |f: &str| -> Result<usize> {
        headers.iter().position(|h| h == f).ok_or_else(|| {
            Error::data(
                path,
                format!(
                    "no column '{f}'; columns present: {}; choose others with --text-field/--label-field",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let ti = col(&fields.text)?;
    let li = if fields.label.is_empty() {
        None
    } else {
        Some(col(&fields.label)?)
    };
    let mut out = vec![];
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(path, &e))?;
        let n = rec.position().map_or(0, |p| p.line() as usize);
        let text = rec.get(ti).unwrap_or("").to_string();
        check_text(path, n, &text)?;
        out.push(Example {
            text,
            label: li.and_then(|li| rec.get(li)).unwrap_or("").to_string(),
        });
    }
    Ok(out)
}

/// Texts without labels: a .txt file (one text per non-empty line) or the text field of a
/// .jsonl/.csv/.tsv file. An empty file is an error.
pub fn load_texts(path: &Path, text_field: &str) -> Result<Vec<String>> {
    let is_txt = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
    let texts: Vec<String> = if is_txt {
        read_text(path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect()
    } else {
        let fields = Fields {
            text: text_field.into(),
            label: String::new(),
        };
        load(path, &fields)?.into_iter().map(|e| e.text).collect()
    };
    if texts.is_empty() {
        return Err(Error::data(path, "the file holds no texts"));
    }
    Ok(texts)
}

/// The SpamAssassin groups in the anchors' order, and whether each is spam.
pub const SPAM_GROUPS: [(&str, bool); 5] = [
    ("easy-ham-1", false),
    ("easy-ham-2", false),
    ("hard-ham-1", false),
    ("spam-1", true),
    ("spam-2", true),
];

/// Subject and plain-text body of a raw RFC 822 message; headers dropped, encodings decoded,
/// HTML converted to text.
pub fn email_text(raw: &[u8]) -> String {
    let (subject, body) = email_parts(raw);
    match (subject.is_empty(), body.is_empty()) {
        (false, false) => format!("{subject}\n{body}"),
        (false, true) => subject,
        _ => body,
    }
}

/// A raw message's subject (trimmed) and plain-text body (whitespace runs collapsed).
pub fn email_parts(raw: &[u8]) -> (String, String) {
    let Some(msg) = mail_parser::MessageParser::default().parse(raw) else {
        return (String::new(), String::new());
    };
    let subject = msg.subject().unwrap_or("").trim().to_string();
    let body = msg.body_text(0).map(|b| b.to_string()).unwrap_or_default();
    let body = body.split_whitespace().collect::<Vec<_>>().join(" ");
    (subject, body)
}

/// The raw messages of the pinned SpamAssassin asset in the anchors' order (group, then file
/// name): group, file name, whether spam, raw text.
pub fn spamassassin_raw(dir: &Path) -> Result<Vec<(String, String, bool, String)>> {
    let mut out = vec![];
    for (group, spam) in SPAM_GROUPS {
        let gdir = dir.join(group);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&gdir)
            .map_err(|e| Error::data(&gdir, format!("cannot read the data set: {e}")))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for f in files {
            #[derive(Deserialize)]
            struct Raw {
                text: String,
            }
            let bytes =
                std::fs::read(&f).map_err(|e| Error::data(&f, format!("cannot read: {e}")))?;
            let raw: Raw = serde_json::from_slice(&bytes)
                .map_err(|e| Error::data(&f, format!("invalid JSON: {e}")))?;
            let name = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            out.push((group.to_string(), name, spam, raw.text));
        }
    }
    Ok(out)
}

/// The SpamAssassin corpus from the pinned asset, in the anchors' order (group, then file name),
/// labelled `ham`/`spam`, with each message's group and file name.
pub fn spamassassin(dir: &Path) -> Result<Vec<(String, String, Example)>> {
    Ok(spamassassin_raw(dir)?
        .into_iter()
        .map(|(group, name, spam, raw)| {
            let mut text = email_text(raw.as_bytes());
            if text.trim().is_empty() {
                // A message with neither subject nor body still counts (the anchors keep it).
                text = "(empty message)".into();
            }
            (
                group,
                name,
                Example {
                    text,
                    label: if spam { "spam" } else { "ham" }.into(),
                },
            )
        })
        .collect())
}

/// Train, validation and test sets.
#[derive(Debug, Clone, Default)]
pub struct Splits {
    pub train: Vec<Example>,
    pub valid: Vec<Example>,
    pub test: Vec<Example>,
}

/// The anchors' split: of the sorted corpus every 5th message (index % 5 == 4) is test; of the
/// rest every 10th is validation.
pub fn anchor_split(corpus: Vec<Example>) -> Splits {
    let (train, valid, test) = anchor_split_of(corpus);
    Splits { train, valid, test }
}

/// The anchors' split of any items in their order: (train, validation, test).
pub fn anchor_split_of<T>(items: Vec<T>) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (mut train, mut valid, mut test) = (vec![], vec![], vec![]);
    let mut rest = 0;
    for (i, e) in items.into_iter().enumerate() {
        if i % 5 == 4 {
            test.push(e);
        } else {
            if rest % 10 == 9 {
                valid.push(e);
            } else {
                train.push(e);
            }
            rest += 1;
        }
    }
    (train, valid, test)
}

/// A stratified split: within each label, a seeded shuffle, then `test_frac` and `valid_frac`
/// of the examples (at least one each where the label has three or more).
pub fn stratified_split(
    examples: Vec<Example>,
    test_frac: f64,
    valid_frac: f64,
    seed: u64,
) -> Result<Splits> {
    if !(0.0..1.0).contains(&test_frac)
        || !(0.0..1.0).contains(&valid_frac)
        || test_frac + valid_frac >= 1.0
    {
        return Err(Error::Invalid(
            "test and validation fractions must be in [0, 1) and sum to less than 1".into(),
        ));
    }
    let mut by_label: BTreeMap<String, Vec<Example>> = BTreeMap::new();
    for e in examples {
        by_label.entry(e.label.clone()).or_default().push(e);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut s = Splits::default();
    for (_, mut group) in by_label {
        group.shuffle(&mut rng);
        let n = group.len() as f64;
        let take = |f: f64| {
            if f > 0.0 && group.len() >= 3 {
                ((n * f).round() as usize).max(1)
            } else {
                (n * f).round() as usize
            }
        };
        let (nt, nv) = (take(test_frac), take(valid_frac));
        let mut it = group.into_iter();
        s.test.extend(it.by_ref().take(nt));
        s.valid.extend(it.by_ref().take(nv));
        s.train.extend(it);
    }
    Ok(s)
}

/// Writes examples as JSONL (`{"text", "label"}` a line) through a temporary file.
pub fn write_jsonl(path: &Path, examples: &[Example]) -> Result<()> {
    let mut buf = Vec::new();
    for e in examples {
        serde_json::to_writer(&mut buf, e).expect("examples serialise");
        buf.push(b'\n');
    }
    let tmp = path.with_extension("jsonl.partial");
    std::fs::write(&tmp, &buf).map_err(|e| Error::data(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::data(path, format!("cannot write: {e}")))
}

/// Counts per label and length percentiles (words and characters).
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub examples: usize,
    pub labels: BTreeMap<String, usize>,
    /// p50, p90, p99 and max of words per text.
    pub words: [usize; 4],
    /// p50, p90, p99 and max of characters per text.
    pub chars: [usize; 4],
}

/// Statistics of a data set.
pub fn stats(examples: &[Example]) -> Stats {
    let mut labels = BTreeMap::new();
    for e in examples {
        *labels.entry(e.label.clone()).or_insert(0) += 1;
    }
    let pct = |mut v: Vec<usize>| -> [usize; 4] {
        v.sort_unstable();
        let at = |p: f64| {
            v.get(((v.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        [at(0.5), at(0.9), at(0.99), v.last().copied().unwrap_or(0)]
    };
    Stats {
        examples: examples.len(),
        labels,
        words: pct(examples
            .iter()
            .map(|e| e.text.split_whitespace().count())
            .collect()),
        chars: pct(examples.iter().map(|e| e.text.chars().count()).collect()),
    }
}

/// The anchors' text of a raw email: everything after the first blank line (the headers
/// dropped), whitespace runs collapsed to one space.
pub fn anchor_body(raw: &str) -> String {
    let raw = raw.replace("\r\n", "\n");
    let body = raw.find("\n\n").map_or("", |i| &raw[i + 2..]);
    body.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Shuffles `items` exactly as Python's `random.Random(seed).shuffle` does (Mersenne Twister
/// seeded by `init_by_array`, Fisher-Yates from the end, `_randbelow` by rejection), so a
/// benchmark can replay the batches a Python anchor trained on.
pub fn python_shuffle<T>(items: &mut [T], seed: u32) {
    let mut mt = rand_mt::Mt::new_with_key([seed]);
    for i in (1..items.len()).rev() {
        let n = i as u64 + 1;
        let k = 64 - n.leading_zeros();
        // (`n` ≤ 2^32: getrandbits(k) is the top k bits of one 32-bit draw.)
        let j = loop {
            let r = u64::from(mt.next_u32() >> (32 - k));
            if r < n {
                break r as usize;
            }
        };
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(text: &str, label: &str) -> Example {
        Example {
            text: text.into(),
            label: label.into(),
        }
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bom.jsonl");
        std::fs::write(&f, "\u{feff}{\"text\": \"hi\", \"label\": \"a\"}\n").unwrap();
        let fields = Fields {
            text: "text".into(),
            label: "label".into(),
        };
        assert_eq!(load(&f, &fields).unwrap(), vec![ex("hi", "a")]);
        let f = dir.path().join("bom.txt");
        std::fs::write(&f, "\u{feff}first\nsecond\n").unwrap();
        assert_eq!(load_texts(&f, "text").unwrap(), ["first", "second"]);
    }

    #[test]
    fn a_csv_error_names_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.csv");
        // A quoted field spanning two lines: the bad record is on line 4, the third record.
        std::fs::write(&f, "text,label\n\"one\ntwo\",a\nthree,b,extra\n").unwrap();
        let fields = Fields {
            text: "text".into(),
            label: "label".into(),
        };
        let e = load(&f, &fields).unwrap_err().to_string();
        assert!(e.contains("line 4: 3 fields, but the header has 2"), "{e}");
        assert!(!e.contains("line: "), "one line number: {e}");
    }

    #[test]
    fn emails_lose_headers_and_encodings() {
        let raw = b"From: a@b.c\r\nSubject: Cheap =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nHello=20there, caf=C3=A9\r\nbye\r\n";
        assert_eq!(email_text(raw), "Cheap café\nHello there, café bye");
        let html = b"Subject: Offer\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPGh0bWw+PGJvZHk+PHA+QnV5IDxiPm5vdzwvYj4hPC9wPjwvYm9keT48L2h0bWw+\r\n";
        let t = email_text(html);
        assert!(
            t.starts_with("Offer\n") && t.contains("Buy") && t.contains("now") && !t.contains('<'),
            "{t}"
        );
    }

    #[test]
    fn files_load_and_bad_ones_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("d.jsonl");
        std::fs::write(
            &j,
            "{\"text\": \"hi\", \"label\": \"a\"}\n\n{\"text\": \"yo\", \"label\": 2}\n",
        )
        .unwrap();
        assert_eq!(
            load(&j, &Fields::default()).unwrap(),
            vec![ex("hi", "a"), ex("yo", "2")]
        );
        let c = dir.path().join("d.csv");
        std::fs::write(&c, "body,cls\n\"hello, world\",x\nbye,y\n").unwrap();
        let f = Fields {
            text: "body".into(),
            label: "cls".into(),
        };
        assert_eq!(
            load(&c, &f).unwrap(),
            vec![ex("hello, world", "x"), ex("bye", "y")]
        );
        let e = load(&c, &Fields::default()).unwrap_err().to_string();
        assert!(e.contains("'text'") && e.contains("body, cls"), "{e}");
        std::fs::write(&j, "{\"txt\": \"hi\", \"label\": \"a\"}\n").unwrap();
        let e = load(&j, &Fields::default()).unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("'text'") && e.contains("txt"),
            "{e}"
        );
        std::fs::write(&j, "").unwrap();
        assert!(load(&j, &Fields::default())
            .unwrap_err()
            .to_string()
            .contains("no examples"));
        std::fs::write(&j, "{\"text\": \"  \", \"label\": \"a\"}\n").unwrap();
        assert!(load(&j, &Fields::default())
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let t = dir.path().join("d.txt");
        std::fs::write(&t, "x").unwrap();
        assert!(load(&t, &Fields::default())
            .unwrap_err()
            .to_string()
            .contains("*.jsonl"));
    }

    #[test]
    fn splits_are_deterministic_and_stratified() {
        let data: Vec<Example> = (0..100)
            .map(|i| ex(&format!("t{i}"), if i % 4 == 0 { "a" } else { "b" }))
            .collect();
        let s1 = stratified_split(data.clone(), 0.2, 0.1, 7).unwrap();
        let s2 = stratified_split(data.clone(), 0.2, 0.1, 7).unwrap();
        assert_eq!(s1.test, s2.test);
        assert_eq!(s1.train.len() + s1.valid.len() + s1.test.len(), 100);
        assert_eq!(s1.test.iter().filter(|e| e.label == "a").count(), 5);
        assert_eq!(s1.test.iter().filter(|e| e.label == "b").count(), 15);
        assert_ne!(
            stratified_split(data.clone(), 0.2, 0.1, 8).unwrap().test,
            s1.test
        );
        let a = anchor_split(data);
        assert_eq!((a.test.len(), a.valid.len(), a.train.len()), (20, 8, 72));
        assert_eq!(a.test[0].text, "t4");
    }

    #[test]
    fn stats_count_labels_and_lengths() {
        let s = stats(&[ex("a b c", "x"), ex("a", "y"), ex("a b", "x")]);
        assert_eq!(s.labels["x"], 2);
        assert_eq!(s.words, [2, 3, 3, 3]);
    }

    #[test]
    fn python_shuffle_matches_python() {
        // python3 -c "import random; v=list(range(20)); random.Random(0).shuffle(v); print(v)"
        let mut v: Vec<usize> = (0..20).collect();
        python_shuffle(&mut v, 0);
        assert_eq!(
            v,
            [10, 18, 16, 14, 0, 17, 11, 2, 3, 9, 5, 7, 4, 19, 6, 15, 8, 1, 13, 12]
        );
        let mut v: Vec<usize> = (0..1000).collect();
        python_shuffle(&mut v, 0);
        assert_eq!(v[..5], [439, 621, 160, 549, 237]);
        assert_eq!(v[995..], [430, 911, 776, 394, 864]);
    }
}
