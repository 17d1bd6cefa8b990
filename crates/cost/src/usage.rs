//! The user's real bill: a provider's usage export read line by line, priced with the layered
//! catalog, and the same traffic priced on other models.
//!
//! Read: JSON lines in OpenAI's usage-API shape (`organization.usage.completions.result`
//! objects, or the buckets and pages that hold them), logged API responses with a `usage` object
//! (Chat Completions, Responses, Anthropic Messages), and CSV with a header naming `model`,
//! `input_tokens`, `output_tokens` and optionally `cached_tokens`, `reasoning_tokens`,
//! `requests`, `batch`. Output tokens include reasoning tokens, as every provider reports them.

use crate::catalog::Catalog;
use crate::request::{HostedCost, Usage};
use crate::{Error, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// One line (or one result of a line) of a usage export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRecord {
    /// 1-based line of the file.
    pub line: usize,
    pub model: String,
    pub requests: u64,
    /// Tokens as billed: `output` includes reasoning tokens, `reasoning` stays 0.
    pub usage: Usage,
    /// Of the output tokens, those spent on hidden reasoning (informational).
    pub reasoning_in_output: u64,
    pub batch: bool,
}

fn bad(file: &str, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{file} line {line}: {msg}"))
}

/// Reads a usage export: CSV when `file` ends in `.csv` or the first line holds no `{`, else
/// JSON lines. Errors name the file and the line.
pub fn read(text: &str, file: &str) -> Result<Vec<UsageRecord>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let records = if first.is_empty() {
        vec![]
    } else if file.to_lowercase().ends_with(".csv") || !first.trim_start().starts_with('{') {
        read_csv(text, file)?
    } else {
        read_jsonl(text, file)?
    };
    if records.is_empty() {
        return Err(Error::Invalid(format!(
            "{file}: no usage records (expected JSON lines from a usage export or API responses, or a CSV with model,input_tokens,output_tokens columns)"
        )));
    }
    Ok(records)
}

fn read_jsonl(text: &str, file: &str) -> Result<Vec<UsageRecord>> {
    let mut out = vec![];
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        if l.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(l).map_err(|e| bad(file, line, format!("invalid JSON ({e})")))?;
        let before = out.len();
        collect(&v, line, file, &mut out)?;
        if out.len() == before && v.get("data").is_none() && v.get("results").is_none() {
            return Err(bad(
                file,
                line,
                "no token counts: expected a usage result (input_tokens, output_tokens, model) or a response with a `usage` object",
            ));
        }
    }
    Ok(out)
}

/// A count field: absent is 0; anything but a whole number ≥ 0 is an error naming it.
fn count(v: &Value, key: &str, file: &str, line: usize) -> Result<u64> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(x) => x.as_u64().ok_or_else(|| {
            bad(
                file,
                line,
                format!("`{key}` = {x} is not a whole number of tokens"),
            )
        }),
    }
}

/// The tokens a provider reports in a `usage` object, in any of the shapes it comes in: Chat
/// Completions (`prompt_tokens`, `completion_tokens`, their `_details`), Anthropic Messages
/// (`input_tokens` without the cache reads and writes), OpenAI's usage API and Responses
/// (`input_tokens`, `input_cached_tokens` or `input_tokens_details`). Returns the tokens as
/// billed (output includes reasoning) and, apart, the reasoning tokens among the output.
pub fn response_usage(u: &Value) -> std::result::Result<(Usage, u64), String> {
    let field = |v: &Value, key: &str| -> std::result::Result<u64, String> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(x) => x
                .as_u64()
                .ok_or_else(|| format!("`{key}` = {x} is not a whole number of tokens")),
        }
    };
    let c = |k: &str| field(u, k);
    let details = |outer: &str, k: &str| u.get(outer).map_or(Ok(0), |d| field(d, k));
    let (input, cached, output, reasoning) = if u.get("prompt_tokens").is_some() {
        // Chat Completions.
        (
            c("prompt_tokens")?,
            details("prompt_tokens_details", "cached_tokens")?,
            c("completion_tokens")?,
            details("completion_tokens_details", "reasoning_tokens")?,
        )
    } else if u.get("cache_read_input_tokens").is_some()
        || u.get("cache_creation_input_tokens").is_some()
    {
        // Anthropic Messages: input_tokens excludes the cache reads and writes.
        let read = c("cache_read_input_tokens")?;
        (
            c("input_tokens")? + read + c("cache_creation_input_tokens")?,
            read,
            c("output_tokens")?,
            0,
        )
    } else {
        // OpenAI's usage API results, and the Responses API.
        (
            c("input_tokens")?,
            c("input_cached_tokens")?.max(details("input_tokens_details", "cached_tokens")?),
            c("output_tokens")?,
            details("output_tokens_details", "reasoning_tokens")?,
        )
    };
    Ok((
        Usage {
            input: input as usize,
            cached_input: cached as usize,
            output: output as usize,
            reasoning: 0,
        },
        reasoning,
    ))
}

fn collect(v: &Value, line: usize, file: &str, out: &mut Vec<UsageRecord>) -> Result<()> {
    // Pages hold buckets; buckets hold results.
    for key in ["data", "results"] {
        if let Some(items) = v.get(key).and_then(Value::as_array) {
            for item in items {
                collect(item, line, file, out)?;
            }
            return Ok(());
        }
    }
    let model = v.get("model").and_then(Value::as_str);
    let (u, requests) = match v.get("usage") {
        // A logged API response.
        Some(u) if u.is_object() => (u, 1),
        _ if v.get("input_tokens").is_some() || v.get("output_tokens").is_some() => {
            (v, count(v, "num_model_requests", file, line)?.max(1))
        }
        _ => return Ok(()),
    };
    let model = model.ok_or_else(|| {
        bad(
            file,
            line,
            "no `model`: export the usage grouped by model (OpenAI: group_by=model)",
        )
    })?;
    let (usage, reasoning) = response_usage(u).map_err(|e| bad(file, line, e))?;
    let (input, cached) = (usage.input, usage.cached_input);
    if cached > input {
        return Err(bad(
            file,
            line,
            format!("{cached} cached input tokens is more than the {input} input tokens"),
        ));
    }
    out.push(UsageRecord {
        line,
        model: model.to_string(),
        requests,
        usage,
        reasoning_in_output: reasoning,
        batch: v.get("batch").and_then(Value::as_bool).unwrap_or(false),
    });
    Ok(())
}

fn read_csv(text: &str, file: &str) -> Result<Vec<UsageRecord>> {
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header: Vec<String> = r
        .headers()
        .map_err(|e| bad(file, 1, format!("unreadable CSV header ({e})")))?
        .iter()
        .map(|h| h.to_lowercase())
        .collect();
    let col = |names: &[&str]| header.iter().position(|h| names.contains(&h.as_str()));
    let model = col(&["model"]);
    let input = col(&["input_tokens", "prompt_tokens"]);
    let output = col(&["output_tokens", "completion_tokens"]);
    let (Some(model), Some(input), Some(output)) = (model, input, output) else {
        return Err(bad(
            file,
            1,
            format!(
                "the CSV header needs the columns model, input_tokens, output_tokens (optional: cached_tokens, reasoning_tokens, requests, batch); it has: {}",
                header.join(", ")
            ),
        ));
    };
    let cached = col(&[
        "cached_tokens",
        "input_cached_tokens",
        "cached_input_tokens",
    ]);
    let reasoning = col(&["reasoning_tokens"]);
    let requests = col(&["requests", "num_model_requests"]);
    let batch = col(&["batch"]);
    let mut out = vec![];
    for rec in r.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            bad(file, line, format!("unreadable CSV row ({e})"))
        })?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        let field = |i: Option<usize>, name: &str| -> Result<u64> {
            match i.and_then(|i| rec.get(i)).filter(|s| !s.is_empty()) {
                None => Ok(0),
                Some(s) => s.parse::<u64>().map_err(|_| {
                    bad(
                        file,
                        line,
                        format!("{name} '{s}' is not a whole number of tokens"),
                    )
                }),
            }
        };
        let m = rec.get(model).unwrap_or("").to_string();
        if m.is_empty() {
            return Err(bad(file, line, "the model column is empty"));
        }
        let (i, c) = (
            field(Some(input), "input_tokens")?,
            field(cached, "cached_tokens")?,
        );
        if c > i {
            return Err(bad(
                file,
                line,
                format!("{c} cached input tokens is more than the {i} input tokens"),
            ));
        }
        let b = match batch.and_then(|b| rec.get(b)).unwrap_or("") {
            "" | "false" | "0" | "no" => false,
            "true" | "1" | "yes" => true,
            other => {
                return Err(bad(
                    file,
                    line,
                    format!("batch '{other}' is not true or false"),
                ))
            }
        };
        out.push(UsageRecord {
            line,
            model: m,
            requests: field(requests, "requests")?.max(1),
            usage: Usage {
                input: i as usize,
                cached_input: c as usize,
                output: field(Some(output), "output_tokens")? as usize,
                reasoning: 0,
            },
            reasoning_in_output: field(reasoning, "reasoning_tokens")?,
            batch: b,
        });
    }
    Ok(out)
}

/// What one model's share of the traffic cost.
#[derive(Debug, Clone, Serialize)]
pub struct ModelBill {
    /// The name as the export spells it.
    pub model: String,
    /// The catalog entry it resolved to.
    pub priced_as: String,
    pub source: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub usd: f64,
    pub notes: Vec<String>,
}

/// Prices every record with its own model. A model the catalog does not know is an error that
/// names it, its lines and the near matches (never $0).
pub fn bill(records: &[UsageRecord], catalog: &Catalog, file: &str) -> Result<Vec<ModelBill>> {
    let mut bills: BTreeMap<&str, ModelBill> = BTreeMap::new();
    let mut unknown: BTreeMap<&str, (Vec<usize>, String)> = BTreeMap::new();
    for r in records {
        let price = match catalog.get(&r.model) {
            Ok(p) => p,
            Err(e) => {
                let u = unknown.entry(&r.model).or_insert((vec![], e.to_string()));
                u.0.push(r.line);
                continue;
            }
        };
        let c = HostedCost::bill(price, r.usage, r.batch).ok_or_else(|| {
            bad(
                file,
                r.line,
                format!(
                    "model '{}' is priced by measured throughput, not per token",
                    r.model
                ),
            )
        })?;
        let b = bills.entry(&r.model).or_insert_with(|| ModelBill {
            model: r.model.clone(),
            priced_as: price.name.clone(),
            source: format!("{} ({})", price.source, price.as_of),
            requests: 0,
            input_tokens: 0,
            cached_input_tokens: 0,
            output_tokens: 0,
            reasoning_tokens: 0,
            usd: 0.0,
            notes: vec![],
        });
        b.requests += r.requests;
        b.input_tokens += r.usage.input as u64;
        b.cached_input_tokens += r.usage.cached_input as u64;
        b.output_tokens += r.usage.output as u64;
        b.reasoning_tokens += r.reasoning_in_output;
        b.usd += c.usd;
        for n in c.notes {
            if !b.notes.contains(&n) {
                b.notes.push(n);
            }
        }
    }
    if !unknown.is_empty() {
        let lines: Vec<String> = unknown
            .iter()
            .map(|(_, (lines, why))| {
                let shown: Vec<String> = lines.iter().take(5).map(|l| l.to_string()).collect();
                format!(
                    "line{} {}{}: {why}",
                    if lines.len() > 1 { "s" } else { "" },
                    shown.join(", "),
                    if lines.len() > 5 { ", …" } else { "" }
                )
            })
            .collect();
        return Err(Error::Invalid(format!(
            "{file}: {} model{} not in the catalog, so the bill cannot be priced:\n  {}",
            unknown.len(),
            if unknown.len() > 1 { "s" } else { "" },
            lines.join("\n  ")
        )));
    }
    Ok(bills.into_values().collect())
}

/// The same traffic priced on `price`: every record's tokens carried over as they are (other
/// tokenizers count somewhat differently), cached shares and batch flags kept. `None` for a
/// model not billed per token.
pub fn price_as(records: &[UsageRecord], price: &crate::ModelPrice) -> Option<f64> {
    records
        .iter()
        .map(|r| HostedCost::bill(price, r.usage, r.batch).map(|c| c.usd))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::builtin().with_price_map(crate::price_map::tests::fixture())
    }

    #[test]
    fn reads_openai_usage_results_buckets_and_logged_responses() {
        let text = concat!(
            "\u{feff}{\"object\":\"organization.usage.completions.result\",\"input_tokens\":1000,\"output_tokens\":500,\"input_cached_tokens\":200,\"num_model_requests\":3,\"model\":\"gpt-5\",\"batch\":false}\n",
            "\n",
            "{\"object\":\"page\",\"data\":[{\"object\":\"bucket\",\"results\":[{\"input_tokens\":10,\"output_tokens\":5,\"model\":\"gpt-4o\",\"batch\":true,\"num_model_requests\":1}]}]}\n",
            "{\"model\":\"gpt-5\",\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":30,\"prompt_tokens_details\":{\"cached_tokens\":8},\"completion_tokens_details\":{\"reasoning_tokens\":20}}}\n",
            "{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":10,\"output_tokens\":7}}\n",
        );
        let r = read(text, "usage.jsonl").unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(
            (r[0].line, r[0].requests, r[0].usage.cached_input),
            (1, 3, 200)
        );
        assert_eq!(
            (r[1].line, r[1].model.as_str(), r[1].batch),
            (3, "gpt-4o", true)
        );
        assert_eq!(
            (r[2].usage.input, r[2].usage.cached_input, r[2].usage.output),
            (40, 8, 30)
        );
        assert_eq!(r[2].reasoning_in_output, 20);
        assert_eq!((r[3].usage.input, r[3].usage.cached_input), (115, 100));
        // Priced by hand: gpt-5 (800 × 1.25 + 200 × 0.125 + 500 × 10) + (32 × 1.25 + 8 ×
        // 0.125 + 30 × 10); gpt-4o batch 10 × 1.25 + 5 × 5; claude 15 × 3 + 100 × 0.3 + 7 × 15.
        let bills = bill(&r, &catalog(), "usage.jsonl").unwrap();
        let usd = |m: &str| bills.iter().find(|b| b.model == m).unwrap().usd;
        let gpt5 =
            (800.0 * 1.25 + 200.0 * 0.125 + 5000.0 + 32.0 * 1.25 + 8.0 * 0.125 + 300.0) / 1e6;
        assert!((usd("gpt-5") - gpt5).abs() < 1e-15);
        assert!((usd("gpt-4o") - (12.5 + 25.0) / 1e6).abs() < 1e-15);
        assert!((usd("claude-sonnet-4-5") - (45.0 + 30.0 + 105.0) / 1e6).abs() < 1e-15);
        let g = bills.iter().find(|b| b.model == "gpt-5").unwrap();
        assert_eq!((g.requests, g.reasoning_tokens), (4, 20));
        // The same traffic on gpt-4o: standard and batch lines as they were.
        let c = catalog();
        let alt = price_as(&r, c.get("gpt-4o").unwrap()).unwrap();
        assert!(alt > 0.0);
        assert_eq!(price_as(&r, c.get("smollm2").unwrap()), None);
    }

    #[test]
    fn reads_csv_and_names_bad_lines() {
        let text = "model,input_tokens,cached_tokens,output_tokens,requests\ngpt-5,1000,0,500,2\nopenai/gpt-5,100,50,10,\n";
        let r = read(text, "bill.csv").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[1].line, r[1].usage.cached_input, r[1].requests),
            (3, 50, 1)
        );
        let e = read(
            "model,input_tokens,output_tokens\ngpt-5,1000,x\n",
            "bill.csv",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("bill.csv line 2") && e.contains("output_tokens 'x'"),
            "{e}"
        );
        let e = read("model,tokens\ngpt-5,1\n", "bill.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("input_tokens"), "{e}");
        let e = read(
            "model,input_tokens,cached_tokens,output_tokens\ngpt-5,10,20,1\n",
            "b.csv",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2") && e.contains("more than"), "{e}");
    }

    #[test]
    fn bad_json_lines_and_unknown_models_are_named_by_line() {
        let e = read(
            "{\"model\":\"gpt-5\",\"input_tokens\":1,\"output_tokens\":1}\n{oops\n",
            "u.jsonl",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("u.jsonl line 2") && e.contains("invalid JSON"),
            "{e}"
        );
        let e = read("{\"input_tokens\":1,\"output_tokens\":1}\n", "u.jsonl")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("group_by=model"), "{e}");
        let e = read(
            "{\"model\":\"gpt-5\",\"input_tokens\":-4,\"output_tokens\":1}\n",
            "u.jsonl",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 1") && e.contains("input_tokens"), "{e}");
        let e = read("{\"hello\":1}\n", "u.jsonl").unwrap_err().to_string();
        assert!(e.contains("no token counts"), "{e}");
        assert!(read("\n\n", "u.jsonl")
            .unwrap_err()
            .to_string()
            .contains("no usage records"));
        let text = "model,input_tokens,output_tokens\ngpt-5,1,1\ngpt-9-turbo,1,1\nclaude-sonet-4-5,1,1\ngpt-9-turbo,2,2\n";
        let r = read(text, "b.csv").unwrap();
        let e = bill(&r, &catalog(), "b.csv").unwrap_err().to_string();
        assert!(
            e.contains("2 models not in the catalog")
                && e.contains("lines 3, 5")
                && e.contains("gpt-9-turbo")
                && e.contains("claude-sonnet-4-5"),
            "{e}"
        );
    }
}
