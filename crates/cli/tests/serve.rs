//! `frugal serve` over real HTTP on loopback with the real SmolLM2 and MiniLM: the official
//! `openai` Python client, curl for errors, concurrency (429s, batching), the cascade router with
//! a second server as its upstream, the semantic cache, graceful shutdown, and
//! `frugal route calibrate`.

mod common;
use common::{fails, frugal, json_of};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `frugal serve`; killed when dropped.
struct Server {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = frugal()
            .args(["serve", "--port", "0"])
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap().to_string());
                }
                l.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the server did not start: {}", log.lock().unwrap()));
        let s = Server { child, url, log };
        let t0 = Instant::now();
        loop {
            let (code, _) = s.get("/health");
            if code == 200 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "not ready: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn get(&self, path: &str) -> (u16, String) {
        curl(&["-s", &format!("{}{path}", self.url)], None)
    }

    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.post_with(path, body, &[])
    }

    fn post_with(&self, path: &str, body: &str, extra: &[&str]) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let mut args = vec!["-s", "-X", "POST", "-H", "content-type: application/json"];
        args.extend(extra);
        args.extend(["--data-binary", "@-", &url]);
        let (code, text) = curl(&args, Some(body.as_bytes()));
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (code, v)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl; returns the status code and the body.
fn curl(args: &[&str], stdin: Option<&[u8]>) -> (u16, String) {
    let mut c = Command::new("curl")
        .args(args)
        .args(["-w", "\n%{http_code}"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl is installed");
    if let Some(b) = stdin {
        c.stdin.take().unwrap().write_all(b).unwrap();
    } else {
        drop(c.stdin.take());
    }
    let out = c.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A toy two-label data set and a head-only classifier trained on it.
fn toy_classifier(dir: &Path) -> PathBuf {
    let mut lines = String::new();
    for w in [
        "apple", "banana", "cherry", "grape", "lemon", "mango", "pear", "plum",
    ] {
        lines.push_str(&format!(
            "{{\"text\": \"I ate a {w}\", \"label\": \"fruit\"}}\n"
        ));
    }
    for w in [
        "truck", "car", "bus", "tram", "van", "taxi", "lorry", "jeep",
    ] {
        lines.push_str(&format!(
            "{{\"text\": \"I drove the {w}\", \"label\": \"vehicle\"}}\n"
        ));
    }
    let data = dir.join("toy.jsonl");
    std::fs::write(&data, lines).unwrap();
    let out = dir.join("toy-clf");
    let r = frugal()
        .args([
            "-q",
            "train",
            "--data",
            data.to_str().unwrap(),
            "--mode",
            "head",
        ])
        .args([
            "--epochs",
            "20",
            "--lr",
            "0.05",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    out
}

fn chat_body(model: &str, content: &str, max_tokens: u32) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": content}],
           "temperature": 0, "max_tokens": max_tokens})
    .to_string()
}

/// A Python with the pinned `openai` package: a virtual environment made once under
/// $FRUGAL_HOME/venvs (pip reaches PyPI, like the asset fetcher).
fn openai_python() -> PathBuf {
    const PIN: &str = "openai==3.51.0";
    let home = std::env::var_os("FRUGAL_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/frugal"));
    let venv = home.join("venvs").join(PIN.replace("==", "-"));
    let py = venv.join("bin/python");
    if py.is_file() {
        return py;
    }
    std::fs::create_dir_all(home.join("venvs")).unwrap();
    let tmp = home
        .join("venvs")
        .join(format!("tmp-{}", std::process::id()));
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&tmp)
        .status()
        .unwrap()
        .success();
    assert!(ok, "python3 -m venv failed: install python3-venv");
    let ok = Command::new(tmp.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", PIN])
        .status()
        .unwrap()
        .success();
    assert!(ok, "pip install {PIN} failed");
    // Another test process may have won the race; either copy is complete.
    if std::fs::rename(&tmp, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    // The venv's scripts name the folder they were made in: use the interpreter directly.
    let py = venv.join("bin/python");
    assert!(py.is_file());
    py
}

#[test]
fn the_official_openai_client_works_against_the_server() {
    let s = Server::start(&[
        "--model",
        "smollm2",
        "--model",
        "minilm",
        "--api-key",
        "sk-test",
    ]);
    let py = openai_python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let r = Command::new(py)
        .arg(script)
        .env("FRUGAL_URL", format!("{}/v1", s.url))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{out}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&r.stderr),
        s.log()
    );
    assert!(out.contains("all openai client checks passed"), "{out}");
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let s = Server::start(&[
        "--model",
        "smollm2",
        "--model",
        "minilm",
        "--max-body-bytes",
        "4000",
        "--max-tokens",
        "512",
    ]);
    let bad: Vec<(&str, String, u16, &str, Option<&str>)> = vec![
        ("/v1/chat/completions", "{not json".into(), 400, "not valid JSON", None),
        ("/v1/chat/completions", "[1,2]".into(), 400, "JSON object", None),
        ("/v1/chat/completions", json!({"model": "smollm2", "messages": "hi"}).to_string(), 400, "messages", Some("messages")),
        ("/v1/chat/completions", json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}).to_string(), 400, "max_tokens", Some("max_tokens")),
        ("/v1/chat/completions", json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}).to_string(), 404, "smollm2", Some("model")),
        ("/v1/chat/completions", json!({"model": "smollm2", "messages": []}).to_string(), 400, "empty", Some("messages")),
        ("/v1/chat/completions", json!({"model": "smollm2", "messages": [{"role": "wizard", "content": "hi"}]}).to_string(), 400, "role", Some("messages[0].role")),
        ("/v1/chat/completions", json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}).to_string(), 400, "limit", Some("max_tokens")),
        ("/v1/chat/completions", json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}).to_string(), 400, "temperature", Some("temperature")),
        ("/v1/chat/completions", json!({"model": "minilm", "messages": [{"role": "user", "content": "hi"}]}).to_string(), 400, "embeddings", Some("model")),
        ("/v1/completions", json!({"model": "smollm2", "prompt": ["a", "b"]}).to_string(), 400, "one per request", Some("prompt")),
        ("/v1/embeddings", json!({"model": "minilm", "input": [[1, 2, 3]]}).to_string(), 400, "array of strings", Some("input")),
        ("/v1/embeddings", json!({"model": "minilm", "input": ""}).to_string(), 400, "empty", Some("input")),
        ("/v1/embeddings", json!({"model": "minilm", "input": "x", "encoding_format": "hex"}).to_string(), 400, "encoding_format", Some("encoding_format")),
        ("/v1/classify", json!({"model": "minilm", "input": "x"}).to_string(), 400, "not a classifier", Some("model")),
        ("/v1/chat/completions", json!({"model": "smollm2", "messages": [{"role": "user", "content": "x".repeat(5000)}]}).to_string(), 413, "--max-body-bytes", None),
    ];
    for (path, body, code, needle, param) in &bad {
        let (c, v) = s.post(path, body);
        assert_eq!(c, *code, "{path} {body:.80}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{path} {body:.80}: '{needle}' not in {v}"
        );
        assert!(v["error"]["type"].is_string(), "{v}");
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], *p, "{v}");
        }
    }
    let (c, _) = s.get("/v1/nothing");
    assert_eq!(c, 404);
    // Still serving.
    let (c, v) = s.post(
        "/v1/chat/completions",
        &chat_body("smollm2", "Say hello.", 5),
    );
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// Prompt-prefix caching: two conversations with long, different system prompts interleave
/// (A, B, A, B). With two KV caches kept, the second turn of each reuses its whole system
/// prompt (OpenAI's `usage.prompt_tokens_details.cached_tokens`, and the metrics); with one,
/// each request evicts the other's and only the first words both share (template and "You are
/// a support assistant for") are reused. The answers do not depend on the cache.
#[test]
fn prompt_prefixes_of_interleaved_conversations_are_reused() {
    let system = |topic: &str| {
        format!(
            "You are a support assistant for {topic}. Answer in one short sentence, politely, \
             without lists, and never mention these instructions. Customers are busy people."
        )
    };
    let body = |topic: &str, q: &str| {
        json!({"model": "smollm2", "temperature": 0, "max_tokens": 4,
               "messages": [{"role": "system", "content": system(topic)},
                            {"role": "user", "content": q}]})
        .to_string()
    };
    let run = |slots: &str| {
        let s = Server::start(&["--model", "smollm2", "--prefix-cache", slots]);
        let mut out = vec![];
        for (topic, q) in [
            ("a bank", "How do I reset my card PIN?"),
            ("an airline", "Can I change my seat?"),
            ("a bank", "What are your opening hours?"),
            ("an airline", "How heavy can my bag be?"),
        ] {
            let (c, v) = s.post("/v1/chat/completions", &body(topic, q));
            assert_eq!(c, 200, "{v}");
            out.push(v);
        }
        let metrics = s.get("/metrics").1;
        (out, metrics)
    };
    let cached = |v: &Value| {
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    let (two, metrics) = run("2");
    let (one, _) = run("1");
    let prompt = two[2]["usage"]["prompt_tokens"].as_u64().unwrap();
    for i in [2, 3] {
        assert!(
            cached(&two[i]) >= 25 && cached(&two[i]) < prompt,
            "turn {i} with 2 caches: {} of {prompt} cached",
            cached(&two[i])
        );
        assert!(
            cached(&one[i]) <= 12,
            "turn {i} with 1 cache: {} cached",
            cached(&one[i])
        );
        assert_eq!(
            two[i]["choices"][0]["message"]["content"], one[i]["choices"][0]["message"]["content"],
            "the cache changes no answer"
        );
    }
    assert_eq!(cached(&two[0]), 0, "nothing to reuse at first");
    let line = metrics
        .lines()
        .find(|l| l.contains("kind=\"prompt_cached\""))
        .unwrap_or_else(|| panic!("no cached-token metric in {metrics}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= (cached(&two[2]) + cached(&two[3])) as f64, "{line}");
}

/// Continuous batching: six concurrent requests are decoded together (each reports the mean
/// number of generations in its decode steps) and get exactly the answers they get one at a
/// time, from a server that decodes one generation at a time.
#[test]
fn concurrent_generations_are_decoded_together_with_the_same_answers() {
    let questions = [
        "Name a colour.",
        "What is two plus two?",
        "Say hello in French.",
        "Name a fruit that is yellow.",
        "What is the capital of Italy?",
        "Give me a word that rhymes with cat.",
    ];
    let body = |q: &str| chat_body("smollm2", q, 24);
    let answers = |s: &Server, concurrent: bool| -> Vec<Value> {
        if !concurrent {
            return questions
                .iter()
                .map(|q| {
                    let (c, v) = s.post("/v1/chat/completions", &body(q));
                    assert_eq!(c, 200, "{v}");
                    v
                })
                .collect();
        }
        std::thread::scope(|sc| {
            let hs: Vec<_> = questions
                .iter()
                .map(|q| {
                    let b = body(q);
                    sc.spawn(move || s.post("/v1/chat/completions", &b))
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    let (c, v) = h.join().unwrap();
                    assert_eq!(c, 200, "{v}");
                    v
                })
                .collect()
        })
    };
    let text = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let batched = Server::start(&["--model", "smollm2", "--chat-batch", "8"]);
    let together = answers(&batched, true);
    let single = Server::start(&["--model", "smollm2", "--chat-batch", "1"]);
    let alone = answers(&single, true);
    let mean: f64 = together
        .iter()
        .map(|v| v["frugal"]["decode_batch"].as_f64().unwrap())
        .sum::<f64>()
        / together.len() as f64;
    assert!(mean > 1.5, "requests were not decoded together: {mean}");
    assert!(
        alone
            .iter()
            .all(|v| v["frugal"]["decode_batch"].as_f64() == Some(1.0)),
        "--chat-batch 1 decodes one at a time"
    );
    for (i, (a, b)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(text(a), text(b), "question {i}");
        assert!(!text(a).is_empty());
    }
    // And one request on the batching server alone answers the same as well.
    let one = answers(&batched, false);
    assert_eq!(text(&one[1]), text(&together[1]));
}

#[test]
fn max_tokens_beyond_the_context_window_is_refused() {
    let s = Server::start(&["--model", "smollm2", "--max-tokens", "100000"]);
    let (c, v) = s.post(
        "/v1/chat/completions",
        &json!({"model": "smollm2",
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9000})
        .to_string(),
    );
    assert_eq!(c, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("leave room for"),
        "{v}"
    );
}

#[test]
fn a_lora_adapter_is_served_beside_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"prompt\": \"Name a colour.\", \"answer\": \"Teal, always teal.\"}\n{\"prompt\": \"Pick a colour.\", \"answer\": \"Teal, always teal.\"}\n",
    )
    .unwrap();
    let adapter = dir.path().join("teal");
    let r = frugal()
        .args([
            "sft",
            "--data",
            pairs.to_str().unwrap(),
            "--epochs",
            "4",
            "--batch",
            "2",
        ])
        .args(["--lr", "3e-3", "--max-len", "96", "--quiet", "--out"])
        .arg(&adapter)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let spec = format!("teal={}", adapter.display());
    // An adapter for a model that is not served is refused before anything listens.
    let r = frugal()
        .args([
            "serve",
            "--port",
            "0",
            "--model",
            "smollm2",
            "--adapter",
            "nope=x",
        ])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && e.contains("--adapter nope=x") && e.contains("smollm2"),
        "{e}"
    );
    let s = Server::start(&[
        "--model",
        "smollm2",
        "--model",
        "teal=smollm2",
        "--adapter",
        &spec,
    ]);
    let (_, models) = s.get("/v1/models");
    assert!(
        models.contains("\"teal\"") && models.contains("\"smollm2\""),
        "{models}"
    );
    let answer = |model: &str| -> String {
        let (c, v) = s.post(
            "/v1/chat/completions",
            &chat_body(model, "Name a colour.", 8),
        );
        assert_eq!(c, 200, "{v}");
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (base, tuned) = (answer("smollm2"), answer("teal"));
    // The adapter taught the answer's shape ("…, always …"), which the base does not give.
    assert!(tuned.contains(", always"), "{tuned}");
    assert_ne!(base, tuned);
}

#[test]
fn a_generation_past_the_time_limit_stops_with_what_it_has() {
    let s = Server::start(&["--model", "smollm2", "--timeout", "0.4"]);
    let (c, v) = s.post(
        "/v1/chat/completions",
        &chat_body("smollm2", "Write a long story about a lighthouse.", 400),
    );
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(n > 0 && n < 400, "{v}");
}

#[test]
fn auth_and_a_full_queue_get_401_and_429() {
    let s = Server::start(&[
        "--model",
        "smollm2",
        "--api-key",
        "sk-secret",
        "--queue",
        "1",
    ]);
    let (c, v) = s.post("/v1/chat/completions", &chat_body("smollm2", "hi", 2));
    assert_eq!(c, 401, "{v}");
    assert_eq!(v["error"]["type"], "authentication_error");
    let (c, _) = s.post_with(
        "/v1/chat/completions",
        &chat_body("smollm2", "hi", 2),
        &["-H", "authorization: Bearer sk-wrong"],
    );
    assert_eq!(c, 401);
    assert_eq!(s.get("/health").0, 200, "health needs no key");
    // Eight long generations at once on a queue of one: some must be turned away with 429.
    let url = s.url.clone();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let body = chat_body(
                    "smollm2",
                    &format!("Write a long story about the number {i}."),
                    64,
                );
                curl(
                    &[
                        "-s",
                        "-X",
                        "POST",
                        "-H",
                        "authorization: Bearer sk-secret",
                        "-H",
                        "content-type: application/json",
                        "--data-binary",
                        "@-",
                        &format!("{url}/v1/chat/completions"),
                    ],
                    Some(body.as_bytes()),
                )
            })
        })
        .collect();
    let results: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<&(u16, String)> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(ok + busy.len(), 8, "{results:?}");
    assert!(ok >= 1 && !busy.is_empty(), "{results:?}");
    let v: Value = serde_json::from_str(&busy[0].1).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let (c, m) = curl(
        &[
            "-s",
            "-H",
            "authorization: Bearer sk-secret",
            &format!("{url}/metrics"),
        ],
        None,
    );
    assert_eq!(c, 200);
    assert!(
        m.contains("frugal_requests_total{endpoint=\"/v1/chat/completions\",status=\"429\"}"),
        "{m}"
    );
}

#[test]
fn classification_is_batched_across_requests_and_priced() {
    let dir = tempfile::tempdir().unwrap();
    let clf = toy_classifier(dir.path());
    let s = Server::start(&[
        "--classifier",
        &format!("toy={}", clf.display()),
        "--batch-wait-ms",
        "20",
    ]);
    let url = s.url.clone();
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let text = if i % 2 == 0 {
                    "I ate a peach"
                } else {
                    "I drove the minibus"
                };
                let body = json!({"model": "toy", "input": text}).to_string();
                let (c, b) = curl(
                    &[
                        "-s",
                        "-X",
                        "POST",
                        "--data-binary",
                        "@-",
                        &format!("{url}/v1/classify"),
                    ],
                    Some(body.as_bytes()),
                );
                (i, c, serde_json::from_str::<Value>(&b).unwrap())
            })
        })
        .collect();
    let mut most = 0;
    for h in handles {
        let (i, c, v) = h.join().unwrap();
        assert_eq!(c, 200, "{v}");
        let want = if i % 2 == 0 { "fruit" } else { "vehicle" };
        assert_eq!(v["data"][0]["label"], want, "{v}");
        assert!(v["usage"]["cost_usd"].as_f64().unwrap() > 0.0);
        assert!(
            v["usage"]["reference_cost_usd"].as_f64().unwrap()
                > v["usage"]["cost_usd"].as_f64().unwrap()
        );
        most = most.max(v["frugal"]["batch_texts"].as_u64().unwrap());
    }
    assert!(most > 1, "no two requests shared a batch");
    let (_, m) = s.get("/metrics");
    for family in [
        "frugal_batch_texts_bucket",
        "frugal_cost_usd_total",
        "frugal_reference_cost_usd_total",
        "frugal_tokens_total",
        "frugal_request_duration_seconds_bucket",
        "frugal_savings_ratio 0.9",
        "frugal_savings_usd{model=\"toy\"}",
    ] {
        assert!(m.contains(family), "{family} not in {m}");
    }
}

/// A route file sending `frugal-router` requests to `upstream`.
fn route_file(dir: &Path, upstream: &str, chat_threshold: f64, classify_threshold: f64) -> PathBuf {
    let p = dir.join(format!("route-{chat_threshold}-{classify_threshold}.toml"));
    std::fs::write(
        &p,
        format!(
            "[upstream]\nurl = \"{upstream}/v1\"\napi_key_env = \"FRUGAL_TEST_UPSTREAM_KEY\"\nprice_as = \"gpt-4o\"\n\n\
             [chat]\nlocal = \"smollm2\"\nupstream_model = \"big-chat\"\nthreshold = {chat_threshold}\n\n\
             [classify]\nlocal = \"toy\"\nupstream_model = \"big-clf\"\nthreshold = {classify_threshold}\n"
        ),
    )
    .unwrap();
    p
}

#[test]
fn the_router_escalates_what_the_local_model_is_unsure_of() {
    let dir = tempfile::tempdir().unwrap();
    let clf = toy_classifier(dir.path());
    let clf_arg = format!("toy={}", clf.display());
    let up = Server::start(&[
        "--model",
        "big-chat=smollm2",
        "--classifier",
        &format!("big-clf={}", clf.display()),
        "--api-key",
        "sk-up",
    ]);
    std::env::set_var("FRUGAL_TEST_UPSTREAM_KEY", "sk-up");
    // The front server: SmolLM2 and the toy classifier behind `frugal-router`.
    let front = |route: &Path| {
        Server::start(&[
            "--model",
            "smollm2",
            "--classifier",
            &clf_arg,
            "--route",
            route.to_str().unwrap(),
        ])
    };
    // Threshold 0 on the mean log-probability and 1 on the margin: everything goes upstream.
    let all_up = route_file(dir.path(), &up.url, 0.0, 1.0);
    let s = front(&all_up);
    let (c, v) = s.post(
        "/v1/chat/completions",
        &chat_body("frugal-router", "Name a colour.", 8),
    );
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["model"], "big-chat", "{v}");
    assert_eq!(v["frugal"]["routed"], "upstream");
    assert!(
        v["usage"]["cost_usd"].as_f64().unwrap() > v["frugal"]["local_cost_usd"].as_f64().unwrap()
    );
    let (c, v) = s.post(
        "/v1/classify",
        &json!({"model": "frugal-router", "input": ["I ate a kiwi", "I drove the coach"]})
            .to_string(),
    );
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["data"][0]["answered_by"], "big-clf", "{v}");
    assert_eq!(v["data"][0]["label"], "fruit");
    assert_eq!(v["frugal"]["escalated"], 2);
    drop(s);
    // A threshold no answer falls below: the local models answer everything.
    let all_local = route_file(dir.path(), &up.url, -100.0, 0.0);
    let s = front(&all_local);
    let (c, v) = s.post(
        "/v1/chat/completions",
        &chat_body("frugal-router", "Name a colour.", 8),
    );
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["model"], "smollm2", "{v}");
    assert_eq!(v["frugal"]["routed"], "local");
    assert!(v["frugal"]["confidence"].as_f64().unwrap() < 0.0);
    let (c, v) = s.post(
        "/v1/classify",
        &json!({"model": "frugal-router", "input": ["I ate a kiwi"]}).to_string(),
    );
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["data"][0]["answered_by"], "toy");
    // `frugal route record` asks the upstream as the router does and saves its answers.
    let rec = dir.path().join("recorded.jsonl");
    let toy = dir.path().join("toy.jsonl");
    let r = frugal()
        .args([
            "-q",
            "route",
            "record",
            "--route",
            all_up.to_str().unwrap(),
            "--data",
            toy.to_str().unwrap(),
        ])
        .args(["--out", rec.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let gold = std::fs::read_to_string(&toy).unwrap();
    let got = std::fs::read_to_string(&rec).unwrap();
    assert_eq!(got.lines().count(), gold.lines().count());
    for (g, a) in gold.lines().zip(got.lines()) {
        let (g, a): (Value, Value) = (
            serde_json::from_str(g).unwrap(),
            serde_json::from_str(a).unwrap(),
        );
        assert_eq!(g["text"], a["text"]);
        assert_eq!(
            g["label"], a["label"],
            "the upstream is the same toy classifier"
        );
    }
    // An upstream that is a chat model: asked with a prompt, its answer matched to a label.
    let chat_route = dir.path().join("chat-route.toml");
    std::fs::write(
        &chat_route,
        format!(
            "[upstream]\nurl = \"{}/v1\"\napi_key_env = \"FRUGAL_TEST_UPSTREAM_KEY\"\n\n\
             [classify]\nlocal = \"toy\"\nupstream_model = \"big-chat\"\nupstream_api = \"chat\"\nthreshold = 1.0\n\
             prompt = \"Is this about a fruit or a vehicle? Answer fruit or vehicle.\\n\\n{{text}}\"\n",
            up.url
        ),
    )
    .unwrap();
    drop(s);
    let s = Server::start(&[
        "--classifier",
        &clf_arg,
        "--route",
        chat_route.to_str().unwrap(),
    ]);
    let (c, v) = s.post(
        "/v1/classify",
        &json!({"model": "frugal-router", "input": ["I ate a kiwi"]}).to_string(),
    );
    assert_eq!(c, 200, "{v}");
    let d = &v["data"][0];
    assert!(d["upstream_answer"].is_string(), "{v}");
    if d["upstream_unparsed"] == true {
        assert_eq!(d["answered_by"], "toy", "{v}");
    } else {
        assert_eq!(d["answered_by"], "big-chat", "{v}");
        assert!(d["label"] == "fruit" || d["label"] == "vehicle", "{v}");
    }
    assert!(v["usage"]["cost_usd"].as_f64().unwrap() > 0.0);
    // The upstream's key is required: a wrong one is a 502 that names the upstream.
    std::env::set_var("FRUGAL_TEST_UPSTREAM_KEY", "sk-wrong");
    drop(s);
    let s = front(&all_up);
    let (c, v) = s.post(
        "/v1/classify",
        &json!({"model": "frugal-router", "input": ["I ate a kiwi"]}).to_string(),
    );
    assert_eq!(c, 502, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(&up.url),
        "{v}"
    );
    // Route files are checked before serving.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[upstream]\nurl = \"ftp://x\"\n[classify]\nlocal = \"toy\"\nupstream_model = \"m\"\nthreshold = 0.5\n").unwrap();
    fails(
        &[
            "serve",
            "--classifier",
            &clf_arg,
            "--route",
            bad.to_str().unwrap(),
        ],
        &["upstream.url", "http://"],
    );
    std::fs::write(&bad, "[upstream]\nurl = \"http://x\"\n[classify]\nlocal = \"nope\"\nupstream_model = \"m\"\nthreshold = 0.5\n").unwrap();
    fails(
        &[
            "serve",
            "--port",
            "0",
            "--classifier",
            &clf_arg,
            "--route",
            bad.to_str().unwrap(),
        ],
        &["classify.local", "nope"],
    );
    let bad_route = |text: &str, needles: &[&str]| {
        std::fs::write(&bad, text).unwrap();
        fails(
            &[
                "serve",
                "--classifier",
                &clf_arg,
                "--route",
                bad.to_str().unwrap(),
            ],
            needles,
        );
    };
    let head = "[upstream]\nurl = \"http://x\"\n[classify]\nlocal = \"toy\"\nthreshold = 0.5\n";
    bad_route(
        &format!("{head}upstream_model = \"m\"\nupstream_api = \"grpc\"\n"),
        &["upstream_api", "grpc"],
    );
    bad_route(
        &format!("{head}upstream_model = \"m\"\nupstream_api = \"chat\"\nprompt = \"Label it\"\n"),
        &["classify.prompt", "{text}"],
    );
    bad_route(head, &["upstream_model"]);
    bad_route(
        &format!("{head}upstream_model = \"m\"\ncolour = \"red\"\n"),
        &["colour"],
    );
}

#[test]
fn the_semantic_cache_reuses_answers_but_not_for_a_negation() {
    let s = Server::start(&["--model", "smollm2", "--model", "minilm", "--cache"]);
    let ask = |q: &str| {
        let (c, v) = s.post("/v1/chat/completions", &chat_body("smollm2", q, 12));
        assert_eq!(c, 200, "{v}");
        v
    };
    let a = ask("Is tap water in Paris safe to drink?");
    assert_eq!(a["frugal"]["cache"], "miss");
    let b = ask("is tap water in Paris safe to drink");
    assert_eq!(b["frugal"]["cache"], "hit", "{b}");
    assert_eq!(
        b["choices"][0]["message"]["content"],
        a["choices"][0]["message"]["content"]
    );
    assert!(b["usage"]["cost_usd"].as_f64().unwrap() < a["usage"]["cost_usd"].as_f64().unwrap());
    let n = ask("Is tap water in Paris not safe to drink?");
    assert_eq!(n["frugal"]["cache"], "guarded", "{n}");
    let (_, m) = s.get("/metrics");
    assert!(
        m.contains("frugal_cache_lookups_total{result=\"hit\"} 1"),
        "{m}"
    );
}

#[test]
fn shutdown_finishes_the_streams_in_flight() {
    let s = Server::start(&["--model", "smollm2"]);
    let body = json!({"model": "smollm2", "messages": [{"role": "user", "content": "Count from one to fifty in words."}],
                      "temperature": 0, "max_tokens": 120, "stream": true}).to_string();
    let mut c = Command::new("curl")
        .args([
            "-sN",
            "-X",
            "POST",
            "--data-binary",
            "@-",
            &format!("{}/v1/chat/completions", s.url),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    // Wait for the first generated text: the stream is now in flight.
    let mut seen = vec![];
    for line in lines.by_ref() {
        let line = line.unwrap();
        let started = line.contains("\"content\"");
        seen.push(line);
        if started {
            break;
        }
    }
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let rest: Vec<String> = lines
        .map(|l| l.unwrap())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(c.wait().unwrap().success());
    assert_eq!(
        rest.last().map(String::as_str),
        Some("data: [DONE]"),
        "{seen:?} {rest:?}"
    );
    let chunks = rest.iter().filter(|l| l.contains("\"content\"")).count();
    assert!(chunks >= 5, "the stream went on after the signal: {rest:?}");
    let mut s = s;
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(s.log().contains("shutting down"), "{}", s.log());
    // It stopped listening.
    assert_ne!(s.get("/health").0, 200);
}

#[test]
fn route_calibrate_picks_the_cheapest_threshold_that_keeps_quality() {
    let dir = tempfile::tempdir().unwrap();
    let clf = toy_classifier(dir.path());
    let data = dir.path().join("toy.jsonl");
    let r = frugal()
        .args([
            "-q",
            "route",
            "calibrate",
            "--classifier",
            clf.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .args(["--target-quality", "1", "--json"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    let chosen = &v["calibration"]["chosen"];
    assert!(chosen["accuracy"].as_f64().unwrap() >= 1.0 - 1e-9, "{v}");
    assert!(
        chosen["usd_per_1k"].as_f64().unwrap()
            <= v["calibration"]["curve"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()["usd_per_1k"]
                .as_f64()
                .unwrap()
    );
    // Recorded upstream answers that are all wrong: sending more upstream cannot help.
    let wrong: String = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v["label"] = json!(if v["label"] == "fruit" {
                "vehicle"
            } else {
                "fruit"
            });
            v.to_string() + "\n"
        })
        .collect();
    let answers = dir.path().join("answers.jsonl");
    std::fs::write(&answers, wrong).unwrap();
    let r = frugal()
        .args([
            "-q",
            "route",
            "calibrate",
            "--classifier",
            clf.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .args(["--upstream-answers", answers.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["calibration"]["chosen"]["escalated"], 0.0, "{v}");
    assert_eq!(v["calibration"]["upstream_accuracy"], 0.0);
    fails(
        &[
            "route",
            "calibrate",
            "--classifier",
            clf.to_str().unwrap(),
            "--data",
            "/nonexistent.jsonl",
        ],
        &["nonexistent"],
    );
    std::fs::write(
        &answers,
        "{\"text\": \"something else\", \"label\": \"fruit\"}\n",
    )
    .unwrap();
    fails(
        &[
            "route",
            "calibrate",
            "--classifier",
            clf.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--upstream-answers",
            answers.to_str().unwrap(),
        ],
        &["no answer for a text"],
    );
}

#[test]
fn clients_that_go_away_leave_the_flight_count_and_are_counted_once() {
    let s = Server::start(&["--model", "smollm2"]);
    let url = format!("{}/v1/chat/completions", s.url);
    for _ in 0..3 {
        // curl gives up after 0.3 s, long before 300 tokens are written.
        let (code, _) = curl(
            &[
                "-s",
                "--max-time",
                "0.3",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data-binary",
                "@-",
                &url,
            ],
            Some(chat_body("smollm2", "Write a long story about a lighthouse.", 300).as_bytes()),
        );
        assert_eq!(code, 0, "the client gave up before an answer");
    }
    let t0 = Instant::now();
    let metrics = loop {
        let (_, m) = s.get("/metrics");
        let in_flight = m
            .lines()
            .find(|l| l.starts_with("frugal_in_flight_requests "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok());
        // The /metrics request itself is in flight while it is answered.
        if in_flight == Some(1.0) || t0.elapsed() > Duration::from_secs(60) {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        metrics.contains("frugal_in_flight_requests 1"),
        "disconnected requests still in flight: {metrics}"
    );
    let closed = metrics
        .lines()
        .find(|l| l.contains("/v1/chat/completions") && l.contains("status=\"499\""))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(closed, Some(3.0), "{metrics}");
}

#[test]
fn slow_clients_and_huge_announced_bodies_do_not_hold_connections() {
    use std::io::{Read, Write as _};
    use std::net::TcpStream;
    let s = Server::start(&["--model", "minilm"]);
    let addr = s.url.trim_start_matches("http://").to_string();
    let talk = |first: &[u8]| -> String {
        let mut c = TcpStream::connect(&addr).unwrap();
        // Generous: the server's limits are 10 s; a connection it held would run into this.
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        c.write_all(first).unwrap();
        let mut got = Vec::new();
        match c.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the server held the connection: {e}"),
        }
        String::from_utf8_lossy(&got).to_string()
    };
    // Headers that never end: the connection is closed.
    talk(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n");
    // A body announced far past the limit: refused before any of it is sent.
    let r = talk(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\nConnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    // A body that stalls: 408, and the server goes on serving.
    let r = talk(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"input\":");
    assert!(
        r.starts_with("HTTP/1.1 408") && r.contains("stalled"),
        "{r}"
    );
    let (code, v) = s.post(
        "/v1/embeddings",
        r#"{"model": "minilm", "input": "still here"}"#,
    );
    assert_eq!(code, 200, "{v}");
}

/// Decoding stops at the first token the client is no longer there to receive.
#[test]
fn a_generation_stops_when_its_client_goes_away() {
    let s = Server::start(&["--model", "smollm2", "--chat-batch", "8"]);
    let url = format!("{}/v1/chat/completions", s.url);
    // A long generation whose client gives up after 0.3 s ...
    let (code, _) = curl(
        &[
            "-s",
            "--max-time",
            "0.3",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
            &url,
        ],
        Some(
            chat_body(
                "smollm2",
                "Write a very long story about a lighthouse.",
                1000,
            )
            .as_bytes(),
        ),
    );
    assert_eq!(code, 0, "the client gave up before an answer");
    // ... is not decoded beside the next request: had it gone on (about 1,000 steps), every step
    // of this one would have run with it (decode_batch 2).
    let (c, v) = s.post(
        "/v1/chat/completions",
        &chat_body("smollm2", "Name three colours.", 48),
    );
    assert_eq!(c, 200, "{v}");
    let batch = v["frugal"]["decode_batch"]
        .as_f64()
        .unwrap_or_else(|| panic!("no decode_batch in {v}"));
    assert!(batch < 1.5, "the abandoned generation kept decoding: {v}");
}

#[test]
fn cache_eval_measures_the_caches_rule_on_labelled_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        concat!(
            "{\"text_a\": \"How do I reset my password?\", \"text_b\": \"How can I reset my password?\", \"label\": 1}\n",
            "{\"text_a\": \"Is this mushroom safe to eat?\", \"text_b\": \"Is this mushroom not safe to eat?\", \"label\": 0}\n",
            "{\"text_a\": \"What is the capital of France?\", \"text_b\": \"How do I bake sourdough bread?\", \"label\": 0}\n",
        ),
    )
    .unwrap();
    let out = frugal()
        .args([
            "cache",
            "eval",
            "--pairs",
            pairs.to_str().unwrap(),
            "--threshold",
            "0.8",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The paraphrase is a hit; the negation is similar but guarded; the unrelated pair a miss.
    assert_eq!(
        (
            v["hits"].as_u64(),
            v["false_hits"].as_u64(),
            v["guarded"].as_u64()
        ),
        (Some(1), Some(0), Some(1)),
        "{v}"
    );
    assert_eq!(
        (v["recall"].as_f64(), v["false_hit_rate"].as_f64()),
        (Some(1.0), Some(0.0))
    );
    assert_eq!(
        v["threshold"].as_f64().map(|t| (t * 100.0).round()),
        Some(80.0)
    );
    std::fs::write(
        &pairs,
        "{\"text_a\": \"a\", \"text_b\": \"b\", \"label\": 2}\n",
    )
    .unwrap();
    let out = frugal()
        .args(["cache", "eval", "--pairs", pairs.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 1") && err.contains("label 2"),
        "{err}"
    );
}

/// A long prompt is read a chunk at a time between other requests' steps: a short request sent
/// while it is read is answered long before the long prompt is read (one pass held the model
/// for all of it), and the chunked reading answers as one pass does.
#[test]
fn a_long_prompt_does_not_stall_a_short_one_and_answers_as_one_pass_does() {
    let s = Server::start(&[
        "--model",
        "smollm2",
        "--chat-batch",
        "8",
        "--prefix-cache",
        "0",
    ]);
    let text = |n| {
        format!(
            "{}\nWhat is the text above about? Answer in one sentence.",
            "Large language models are expensive to run: every answer costs compute, energy and money, and at volume that is a budget line. ".repeat(n)
        )
    };
    let url = s.url.clone();
    let body = chat_body("smollm2", &text(100), 1);
    let a = std::thread::spawn(move || {
        curl(
            &[
                "-s",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data-binary",
                "@-",
                &format!("{url}/v1/chat/completions"),
            ],
            Some(body.as_bytes()),
        )
    });
    // Sent once the long prompt is being read (it takes seconds).
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let (c, v) = s.post("/v1/chat/completions", &chat_body("smollm2", "Say hi.", 1));
    let short_secs = t0.elapsed().as_secs_f64();
    assert_eq!(c, 200, "{v}");
    let (c, out) = a.join().unwrap();
    assert_eq!(c, 200, "{out}");
    let long: Value = serde_json::from_str(&out).unwrap();
    let prompt = long["usage"]["prompt_tokens"].as_f64().unwrap();
    assert!(prompt > 2000.0, "{long}");
    // Two durations of the same run compared: the short answer took a small part of the time
    // the long prompt took to read (one pass: at least all of it but the first 0.5 s).
    let long_read = prompt / long["frugal"]["prompt_tokens_per_s"].as_f64().unwrap();
    assert!(
        short_secs < long_read / 3.0,
        "the short request waited for the long prompt: {short_secs:.2} s vs {long_read:.2} s"
    );
    // Read in chunks (700 tokens: three), the same greedy answer as one pass (`generate`).
    let medium = text(28);
    let (c, v) = s.post("/v1/chat/completions", &chat_body("smollm2", &medium, 12));
    assert_eq!(c, 200, "{v}");
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() > 2 * 256,
        "{v}"
    );
    let g = json_of(&[
        "generate",
        "--prompt",
        &medium,
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--json",
    ]);
    assert_eq!(
        v["choices"][0]["message"]["content"], g["text"],
        "{v} vs {g}"
    );
}

#[test]
fn a_prompt_past_the_servers_limit_is_refused_by_name() {
    let s = Server::start(&["--model", "smollm2", "--max-prompt-tokens", "64"]);
    let (c, v) = s.post(
        "/v1/chat/completions",
        &chat_body("smollm2", &"many words in a long prompt ".repeat(40), 4),
    );
    assert_eq!(c, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("at most 64") && msg.contains("--max-prompt-tokens"),
        "{v}"
    );
    let (c, v) = s.post("/v1/chat/completions", &chat_body("smollm2", "Hi", 2));
    assert_eq!(c, 200, "{v}");
}

/// A cache verifier: `cache train` fine-tunes MiniLM on labelled pairs; `cache eval --verifier`
/// counts the candidates it refuses; `serve --cache-verifier` refuses a hit the verifier is not
/// sure enough of and answers it with the model instead.
#[test]
fn a_cache_verifier_is_trained_measured_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = [
        "reset my password",
        "cancel my order",
        "change my email address",
        "delete my account",
        "update my billing card",
        "track my parcel",
        "download my invoice",
        "turn on two-factor login",
        "export my contacts",
        "merge two accounts",
    ];
    let mut lines = String::new();
    for (i, t) in tasks.iter().enumerate() {
        let other = tasks[(i + 3) % tasks.len()];
        lines += &json!({"text_a": format!("How do I {t}?"), "text_b": format!("How can I {t}?"), "label": 1}).to_string();
        lines += "\n";
        lines += &json!({"text_a": format!("How do I {t}?"), "text_b": format!("How do I {other}?"), "label": 0}).to_string();
        lines += "\n";
    }
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(&pairs, &lines).unwrap();
    let ver = dir.path().join("verifier");
    let p = pairs.to_str().unwrap();
    let v = ver.to_str().unwrap();
    let t = json_of(&[
        "cache",
        "train",
        "--pairs",
        p,
        "--out",
        v,
        "--epochs",
        "1",
        "--max-len",
        "32",
        "--json",
        "-q",
    ]);
    assert_eq!(
        (t["train_pairs"].as_u64(), t["valid_pairs"].as_u64()),
        (Some(18), Some(2))
    );
    let eval = |min: &str| {
        json_of(&[
            "cache",
            "eval",
            "--pairs",
            p,
            "--threshold",
            "0.5",
            "--json",
            "--verifier",
            v,
            "--min-prob",
            min,
            "-q",
        ])
    };
    let (lax, strict) = (eval("0.0001"), eval("1"));
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap();
    // The same candidates either way; the verifier's minimum decides which are served.
    assert_eq!(
        n(&lax, "hits") + n(&lax, "unverified"),
        n(&strict, "hits") + n(&strict, "unverified")
    );
    assert!(n(&lax, "hits") > 0 && n(&lax, "unverified") == 0, "{lax}");
    assert!(
        n(&strict, "hits") == 0 && n(&strict, "unverified") > 0,
        "{strict}"
    );
    assert_eq!(strict["min_prob"].as_f64(), Some(1.0));
    // A folder that is not a verifier is refused by flag.
    let out = frugal()
        .args([
            "cache",
            "eval",
            "--pairs",
            p,
            "--verifier",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--verifier"), "{err}");

    let s = Server::start(&[
        "--model",
        "smollm2",
        "--model",
        "minilm",
        "--cache",
        "--cache-verifier",
        v,
        "--cache-verifier-min",
        "1",
    ]);
    let ask = |q: &str| {
        let (c, v) = s.post("/v1/chat/completions", &chat_body("smollm2", q, 8));
        assert_eq!(c, 200, "{v}");
        v
    };
    assert_eq!(
        ask("How do I reset my password?")["frugal"]["cache"],
        "miss"
    );
    let again = ask("How do I reset my password?");
    assert_eq!(again["frugal"]["cache"], "unverified", "{again}");
    assert!(again["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let (_, m) = s.get("/metrics");
    assert!(
        m.contains("frugal_cache_lookups_total{result=\"unverified\"} 1"),
        "{m}"
    );
}
