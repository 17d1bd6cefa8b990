//! Flower's message object model (flwr 1.42.0), byte for byte: every object is
//! `"<Type> <child ids, comma-separated> <body length>\0<body>"`, identified by the SHA-256 of
//! those bytes. A message is a tree: Message → RecordDict → records → Array → ArrayChunk. Arrays
//! travel as `.npy` v1.0 bytes (what `np.save` writes), cut into chunks.

use super::proto;
use crate::{Error, Result};
use prost::Message as _;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Bytes per array chunk: Flower's default (`FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`).
pub const CHUNK_BYTES: usize = 5_242_880;

/// One object: its id, its content (head and body) and its children's subtrees.
#[derive(Debug, Clone, PartialEq)]
pub struct Obj {
    pub id: String,
    pub content: Vec<u8>,
    pub children: Vec<Obj>,
}

impl Obj {
    /// An object of `kind` over `children` (duplicates kept once, in first-occurrence order).
    pub fn new(kind: &str, children: Vec<Obj>, body: &[u8]) -> Obj {
        let mut unique: Vec<Obj> = vec![];
        for c in children {
            if !unique.iter().any(|u| u.id == c.id) {
                unique.push(c);
            }
        }
        let ids: Vec<&str> = unique.iter().map(|c| c.id.as_str()).collect();
        let mut content = format!("{kind} {} {}", ids.join(","), body.len()).into_bytes();
        content.push(0);
        content.extend_from_slice(body);
        Obj {
            id: hex_sha256(&content),
            content,
            children: unique,
        }
    }

    /// The tree of ids Flower's PushMessages wants.
    pub fn tree(&self) -> proto::ObjectTree {
        proto::ObjectTree {
            object_id: self.id.clone(),
            children: self.children.iter().map(Obj::tree).collect(),
        }
    }

    /// Every object of the tree by id (each once).
    pub fn all(&self, out: &mut HashMap<String, Vec<u8>>) {
        out.entry(self.id.clone())
            .or_insert_with(|| self.content.clone());
        for c in &self.children {
            c.all(out);
        }
    }
}

/// Lowercase hex SHA-256.
pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Splits an object's content into type, child ids and body, checking the head and the id.
pub fn parse(id: &str, content: &[u8]) -> Result<(String, Vec<String>, Vec<u8>)> {
    let bad = |m: &str| Error::Invalid(format!("Flower object {id}: {m}"));
    if hex_sha256(content) != id {
        return Err(bad("its content does not hash to its id"));
    }
    let nul = content
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| bad("no head"))?;
    let head = std::str::from_utf8(&content[..nul]).map_err(|_| bad("head is not UTF-8"))?;
    let mut parts = head.splitn(3, ' ');
    let (kind, kids, len) = (
        parts.next().unwrap_or(""),
        parts
            .next()
            .ok_or_else(|| bad("head has no children field"))?,
        parts.next().ok_or_else(|| bad("head has no length"))?,
    );
    let body = &content[nul + 1..];
    if len.parse::<usize>().ok() != Some(body.len()) {
        return Err(bad("body length does not match its head"));
    }
    let children = if kids.is_empty() {
        vec![]
    } else {
        kids.split(',').map(String::from).collect()
    };
    Ok((kind.to_string(), children, body.to_vec()))
}

/// A JSON string as Python's `json.dumps` writes it (ASCII only: others as `\uXXXX`).
fn py_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `{"k": "v", ...}` as Python's `json.dumps` of a dict of strings.
fn py_dict(pairs: &[(String, String)]) -> String {
    let items: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}: {}", py_str(k), py_str(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// A JSON object's entries in their order (serde_json's map would sort them).
struct Ordered(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Ordered, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut v = vec![];
                while let Some(e) = m.next_entry()? {
                    v.push(e);
                }
                Ok(Ordered(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn ordered(body: &[u8], what: &str) -> Result<Vec<(String, serde_json::Value)>> {
    serde_json::from_slice::<Ordered>(body)
        .map(|o| o.0)
        .map_err(|e| Error::Invalid(format!("Flower {what} body is not a JSON object: {e}")))
}

/// `.npy` v1.0 bytes of a little-endian float32 C-order array, exactly as `np.save` writes them.
pub fn npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Padded with spaces and ended by a newline so that 10 + header length is a multiple of 64.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    while 10 + header.len() + 1 < total {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Shape and values of `.npy` bytes holding float32 or float64 (little-endian, C order).
pub fn npy_read(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    let bad = |m: String| Error::Invalid(format!("array data is not a usable .npy file: {m}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no .npy magic".into()));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("version {v}"))),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + hlen)
            .ok_or_else(|| bad("short header".into()))?,
    )
    .map_err(|_| bad("header is not text".into()))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[i..].trim_start())
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| bad("no descr".into()))?;
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err(bad("Fortran order; send C-order arrays".into()));
    }
    let shape_s = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape".into()))?;
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad(format!("shape ({shape_s})"))))
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    let data = &bytes[start + hlen..];
    let values: Vec<f32> = match descr {
        "<f4" => {
            if data.len() != n * 4 {
                return Err(bad(format!(
                    "{} bytes of data for shape {shape:?}",
                    data.len()
                )));
            }
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        "<f8" => {
            if data.len() != n * 8 {
                return Err(bad(format!(
                    "{} bytes of data for shape {shape:?}",
                    data.len()
                )));
            }
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect()
        }
        d => {
            return Err(bad(format!(
                "dtype {d}; frugal's models take little-endian float32 or float64 arrays"
            )))
        }
    };
    Ok((shape, values))
}

/// An Array object (float32) over its chunks.
pub fn array(shape: &[usize], data: &[f32]) -> Obj {
    let npy = npy_f32(shape, data);
    let chunks: Vec<Obj> = npy
        .chunks(CHUNK_BYTES)
        .map(|c| Obj::new("ArrayChunk", vec![], c))
        .collect();
    let mut unique: Vec<&str> = vec![];
    let idx: Vec<String> = chunks
        .iter()
        .map(|c| {
            let i = unique.iter().position(|u| *u == c.id).unwrap_or_else(|| {
                unique.push(&c.id);
                unique.len() - 1
            });
            i.to_string()
        })
        .collect();
    let shape_s: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let body = format!(
        "{{\"dtype\": \"float32\", \"shape\": [{}], \"stype\": \"numpy.ndarray\", \"arraychunk_ids\": [{}]}}",
        shape_s.join(", "),
        idx.join(", ")
    );
    Obj::new("Array", chunks, body.as_bytes())
}

/// An ArrayRecord of named float32 arrays, in the given order.
pub fn array_record(arrays: &[NamedArray]) -> Obj {
    let objs: Vec<Obj> = arrays.iter().map(|(_, s, d)| array(s, d)).collect();
    let pairs: Vec<(String, String)> = arrays
        .iter()
        .zip(&objs)
        .map(|((n, _, _), o)| (n.clone(), o.id.clone()))
        .collect();
    Obj::new("ArrayRecord", objs, py_dict(&pairs).as_bytes())
}

/// A value of a metric or config record.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Double(f64),
    Int(i64),
    Bool(bool),
    Str(String),
}

impl Value {
    /// The number, for int and double values.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Double(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
}

/// A MetricRecord (numbers only), in the given order.
pub fn metric_record(items: &[(&str, Value)]) -> Obj {
    use proto::metric_record_value::Value as V;
    let rec = proto::MetricRecord {
        items: items
            .iter()
            .map(|(k, v)| proto::metric_record::Item {
                key: k.to_string(),
                value: Some(proto::MetricRecordValue {
                    value: Some(match v {
                        Value::Int(i) => V::Sint64(*i),
                        Value::Double(d) => V::Double(*d),
                        Value::Bool(b) => V::Sint64(*b as i64),
                        Value::Str(_) => V::Double(f64::NAN),
                    }),
                }),
            })
            .collect(),
    };
    Obj::new("MetricRecord", vec![], &rec.encode_to_vec())
}

/// A ConfigRecord, in the given order.
pub fn config_record(items: &[(&str, Value)]) -> Obj {
    use proto::config_record_value::Value as V;
    let rec = proto::ConfigRecord {
        items: items
            .iter()
            .map(|(k, v)| proto::config_record::Item {
                key: k.to_string(),
                value: Some(proto::ConfigRecordValue {
                    value: Some(match v {
                        Value::Int(i) => V::Sint64(*i),
                        Value::Double(d) => V::Double(*d),
                        Value::Bool(b) => V::Bool(*b),
                        Value::Str(s) => V::String(s.clone()),
                    }),
                }),
            })
            .collect(),
    };
    Obj::new("ConfigRecord", vec![], &rec.encode_to_vec())
}

/// A RecordDict of named records (each an ArrayRecord, MetricRecord or ConfigRecord object).
pub fn record_dict(records: Vec<(String, Obj)>) -> Obj {
    let pairs: Vec<(String, String)> = records
        .iter()
        .map(|(n, o)| (n.clone(), o.id.clone()))
        .collect();
    Obj::new(
        "RecordDict",
        records.into_iter().map(|(_, o)| o).collect(),
        py_dict(&pairs).as_bytes(),
    )
}

/// A Message object: its metadata (message id left empty, as Flower hashes it) and either
/// content (a RecordDict) or an error.
pub fn message(
    metadata: &proto::Metadata,
    content: Option<Obj>,
    error: Option<proto::Error>,
) -> Obj {
    let mut md = metadata.clone();
    md.message_id = String::new();
    let body = proto::Message {
        metadata: Some(md),
        content: None,
        error,
    }
    .encode_to_vec();
    Obj::new("Message", content.into_iter().collect(), &body)
}

/// A named float32 array: name, shape, values.
pub type NamedArray = (String, Vec<usize>, Vec<f32>);

/// The records of a received message, decoded.
#[derive(Debug, Default, Clone)]
pub struct Content {
    /// ArrayRecords by name: each array's name, shape and values, in the record's order.
    pub arrays: Vec<(String, Vec<NamedArray>)>,
    pub metrics: Vec<(String, Vec<(String, Value)>)>,
    pub configs: Vec<(String, Vec<(String, Value)>)>,
}

/// Decodes a pulled message from its objects (`objects` by id): the metadata of its Message
/// object and its content.
pub fn decode_message(
    root: &str,
    objects: &HashMap<String, Vec<u8>>,
) -> Result<(proto::Metadata, Option<proto::Error>, Content)> {
    let get = |id: &str| -> Result<(String, Vec<String>, Vec<u8>)> {
        let c = objects
            .get(id)
            .ok_or_else(|| Error::Invalid(format!("Flower object {id} was not pulled")))?;
        parse(id, c)
    };
    let (kind, kids, body) = get(root)?;
    if kind != "Message" {
        return Err(Error::Invalid(format!(
            "object {root} is a {kind}, not a Message"
        )));
    }
    let msg = proto::Message::decode(body.as_slice())
        .map_err(|e| Error::Invalid(format!("Message object {root}: {e}")))?;
    let metadata = msg.metadata.unwrap_or_default();
    let mut content = Content::default();
    let Some(rd) = kids.first() else {
        return Ok((metadata, msg.error, content));
    };
    let (kind, _, body) = get(rd)?;
    if kind != "RecordDict" {
        return Err(Error::Invalid(format!(
            "object {rd} is a {kind}, not a RecordDict"
        )));
    }
    for (name, id) in ordered(&body, "RecordDict")? {
        let id = id.as_str().unwrap_or_default().to_string();
        let (kind, _, body) = get(&id)?;
        match kind.as_str() {
            "ArrayRecord" => {
                let mut arrays = vec![];
                for (aname, aid) in ordered(&body, "ArrayRecord")? {
                    let aid = aid.as_str().unwrap_or_default().to_string();
                    let (k, chunk_ids, abody) = get(&aid)?;
                    if k != "Array" {
                        return Err(Error::Invalid(format!("object {aid} is a {k}, not an Array")));
                    }
                    let meta: serde_json::Value = serde_json::from_slice(&abody)
                        .map_err(|e| Error::Invalid(format!("Array {aid}: {e}")))?;
                    if meta["stype"] != "numpy.ndarray" {
                        return Err(Error::Invalid(format!(
                            "array '{aname}' is stored as {}; frugal reads numpy.ndarray arrays",
                            meta["stype"]
                        )));
                    }
                    let mut npy = vec![];
                    for i in meta["arraychunk_ids"].as_array().into_iter().flatten() {
                        let cid = i
                            .as_u64()
                            .and_then(|i| chunk_ids.get(i as usize))
                            .ok_or_else(|| Error::Invalid(format!("Array {aid}: bad chunk index {i}")))?;
                        npy.extend(get(cid)?.2);
                    }
                    let (shape, data) = npy_read(&npy)
                        .map_err(|e| Error::Invalid(format!("array '{aname}': {e}")))?;
                    arrays.push((aname, shape, data));
                }
                content.arrays.push((name, arrays));
            }
            "MetricRecord" | "ConfigRecord" => {
                let items = if kind == "MetricRecord" {
                    use proto::metric_record_value::Value as V;
                    proto::MetricRecord::decode(body.as_slice())
                        .map_err(|e| Error::Invalid(format!("MetricRecord {id}: {e}")))?
                        .items
                        .into_iter()
                        .filter_map(|it| {
                            let v = match it.value?.value? {
                                V::Double(d) => Value::Double(d),
                                V::Sint64(i) => Value::Int(i),
                                V::Uint64(u) => Value::Int(u as i64),
                                _ => return None,
                            };
                            Some((it.key, v))
                        })
                        .collect()
                } else {
                    use proto::config_record_value::Value as V;
                    proto::ConfigRecord::decode(body.as_slice())
                        .map_err(|e| Error::Invalid(format!("ConfigRecord {id}: {e}")))?
                        .items
                        .into_iter()
                        .filter_map(|it| {
                            let v = match it.value?.value? {
                                V::Double(d) => Value::Double(d),
                                V::Sint64(i) => Value::Int(i),
                                V::Uint64(u) => Value::Int(u as i64),
                                V::Bool(b) => Value::Bool(b),
                                V::String(s) => Value::Str(s),
                                _ => return None,
                            };
                            Some((it.key, v))
                        })
                        .collect()
                };
                if kind == "MetricRecord" {
                    content.metrics.push((name, items));
                } else {
                    content.configs.push((name, items));
                }
            }
            other => {
                return Err(Error::Invalid(format!(
                    "record '{name}' is a {other}; frugal reads ArrayRecord, MetricRecord and ConfigRecord"
                )))
            }
        }
    }
    Ok((metadata, msg.error, content))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test vectors established against flwr 1.42.0 and numpy (shared/notes/flower-fleet-api.md).
    #[test]
    fn arrays_and_records_hash_exactly_as_flower_does() {
        let zeros = array(&[2, 3], &[0.0; 6]);
        assert_eq!(npy_f32(&[2, 3], &[0.0; 6]).len(), 152);
        assert_eq!(
            zeros.children[0].id,
            "83184cc9c814ee3493aa215b97040a4a2ab345bd0e81cd85584c82e0e9a97104"
        );
        assert_eq!(
            zeros.id,
            "6c0cd2596e171acc522cfcbb3837234a376907e548365693357505c61ea990ec"
        );
        let ones = array(&[4], &[1.0; 4]);
        assert_eq!(
            ones.children[0].id,
            "3a774b47bd1e335843360c08be63c7fe46b6a85f92484ed2b323cd2e74706534"
        );
        assert_eq!(
            ones.id,
            "2a72b7456afa0402bb3a14fa56fb919a7032aecced6faacd58cd6ff380595061"
        );
        let rec = array_record(&[
            ("w".into(), vec![2, 3], vec![0.0; 6]),
            ("b".into(), vec![4], vec![1.0; 4]),
        ]);
        assert_eq!(
            rec.id,
            "b3c1b998227e5be92fa419f971efbd8418f73fb41ea92be7e073f1c8b142da1d"
        );
        let cfg = config_record(&[("lr", Value::Double(0.1)), ("server-round", Value::Int(1))]);
        assert_eq!(
            cfg.id,
            "7d667e96c30f21b238591d52f3f235b8f2c926c77c8d804471eb60ea1b1f5ef2"
        );
        assert!(cfg.content.starts_with(b"ConfigRecord  37\x00"));
        let m = metric_record(&[
            ("train_loss", Value::Double(1.0)),
            ("num-examples", Value::Int(10)),
        ]);
        assert_eq!(
            m.id,
            "408a1d72eb88183bbc85f9cd9790734887d6423062b96e738a2693e885c5590a"
        );
        let rd = record_dict(vec![("arrays".into(), rec), ("config".into(), cfg)]);
        assert_eq!(
            rd.id,
            "c621bd349e98016b776380293fd0996dcec5cf2d58fb72270eef090aa2cbd1db"
        );
    }

    #[test]
    fn a_message_round_trips_through_its_objects() {
        let rd = record_dict(vec![
            (
                "arrays".into(),
                array_record(&[(
                    "classifier.weight".into(),
                    vec![2, 2],
                    vec![1.0, -2.0, 3.5, 0.25],
                )]),
            ),
            (
                "config".into(),
                config_record(&[("server-round", Value::Int(3)), ("lr", Value::Double(0.5))]),
            ),
        ]);
        let md = proto::Metadata {
            run_id: 7,
            message_id: "ignored".into(),
            message_type: "train".into(),
            ..Default::default()
        };
        let m = message(&md, Some(rd), None);
        let mut objects = HashMap::new();
        m.all(&mut objects);
        assert_eq!(objects.len(), 6);
        let (md2, err, c) = decode_message(&m.id, &objects).unwrap();
        assert!(err.is_none());
        assert_eq!(
            (
                md2.run_id,
                md2.message_type.as_str(),
                md2.message_id.as_str()
            ),
            (7, "train", "")
        );
        assert_eq!(
            c.arrays[0].1[0],
            (
                "classifier.weight".into(),
                vec![2, 2],
                vec![1.0, -2.0, 3.5, 0.25]
            )
        );
        assert_eq!(
            c.configs[0].1,
            vec![
                ("server-round".into(), Value::Int(3)),
                ("lr".into(), Value::Double(0.5))
            ]
        );
        // A tampered object is refused by its id.
        let mut bad = objects.clone();
        let first = m.children[0].id.clone();
        bad.get_mut(&first).unwrap().push(b' ');
        assert!(decode_message(&m.id, &bad)
            .unwrap_err()
            .to_string()
            .contains("does not hash"));
    }

    #[test]
    fn npy_headers_match_numpy_for_every_rank_and_bad_arrays_are_named() {
        for (shape, want) in [
            (vec![], "()"),
            (vec![4], "(4,)"),
            (vec![3, 1, 2], "(3, 1, 2)"),
            (vec![0], "(0,)"),
        ] {
            let n: usize = shape.iter().product();
            let b = npy_f32(&shape, &vec![0.5; n]);
            assert_eq!((b.len() - n * 4) % 64, 0);
            let h = std::str::from_utf8(&b[10..b.len() - n * 4]).unwrap();
            assert!(h.contains(&format!("'shape': {want}, }}")), "{h}");
            assert_eq!(npy_read(&b).unwrap(), (shape, vec![0.5; n]));
        }
        let mut b = npy_f32(&[2], &[1.0, 2.0]);
        let at = b.windows(3).position(|w| w == b"<f4").unwrap();
        b[at..at + 3].copy_from_slice(b"<i8");
        assert!(npy_read(&b).unwrap_err().to_string().contains("dtype <i8"));
        assert!(py_str("é\"").contains("\\u00e9\\\""));
    }
}
