//! The HTTP endpoints.

use crate::api::{
    json_body, parse, ChatRequest, Classification, ClassifyRequest, CompletionRequest,
    EmbeddingRequest, Sampling, Usage,
};
use crate::cache::{pair_text, CachedAnswer, Lookup};
use crate::error::ApiError;
use crate::metrics::{CacheLabels, EndpointLabels, ModelLabels, RequestLabels, RouteLabels};
use crate::pricing::chat_text;
use crate::workers::{BatchJob, BatchOut, BatchWorker, ChatDone, ChatEvent, ChatJob, ChatWorker};
use crate::{unix_now, AppState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use frugal_models::chat::{GenerateOptions, Message, SamplingParams};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

type S = State<Arc<AppState>>;

/// Counts every request, checks the bearer token, and times the response.
pub async fn track(State(st): S, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let endpoint = match path {
        "/v1/chat/completions"
        | "/v1/completions"
        | "/v1/embeddings"
        | "/v1/classify"
        | "/v1/models"
        | "/health"
        | "/metrics" => path.to_string(),
        _ => "other".to_string(),
    };
    let t0 = Instant::now();
    // A body announced larger than the limit is refused before a byte of it is read.
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > st.cfg.max_body_bytes as u64) {
        let resp = ApiError::too_large(st.cfg.max_body_bytes).into_response();
        count_request(&st, &endpoint, resp.status().as_u16(), t0);
        return resp;
    }
    let resp = if authorised(&st, &req, &endpoint) {
        st.metrics.in_flight.inc();
        // A client that goes away drops this future mid-request: the guard still takes the
        // request out of flight and counts it once, as 499 (client closed request).
        let mut guard = InFlight {
            st: st.clone(),
            endpoint: endpoint.clone(),
            t0,
            armed: true,
        };
        let r = next.run(req).await;
        guard.armed = false;
        st.metrics.in_flight.dec();
        r
    } else {
        ApiError::unauthorized().into_response()
    };
    count_request(&st, &endpoint, resp.status().as_u16(), t0);
    resp
}

/// Status counted for a request whose client disconnected before the answer (nginx's 499).
const CLIENT_CLOSED: u16 = 499;

struct InFlight {
    st: Arc<AppState>,
    endpoint: String,
    t0: Instant,
    armed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.armed {
            self.st.metrics.in_flight.dec();
            count_request(&self.st, &self.endpoint, CLIENT_CLOSED, self.t0);
        }
    }
}

fn count_request(st: &AppState, endpoint: &str, status: u16, t0: Instant) {
    st.metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint: endpoint.to_string(),
            status,
        })
        .inc();
    st.metrics
        .latency
        .get_or_create(&EndpointLabels {
            endpoint: endpoint.to_string(),
        })
        .observe(t0.elapsed().as_secs_f64());
}

fn authorised(st: &AppState, req: &Request, endpoint: &str) -> bool {
    let Some(key) = &st.cfg.api_key else {
        return true;
    };
    if endpoint == "/health" {
        return true;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Compare in constant time.
    given.is_some_and(|g| {
        g.len() == key.len()
            && g.bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

/// Any path not served.
pub async fn not_found(req: Request) -> Response {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        message: format!(
            "no endpoint {} {}; served: POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/classify; GET /v1/models, /health, /metrics",
            req.method(),
            req.uri().path()
        ),
        param: None,
        code: Some("unknown_url"),
    }
    .into_response()
}

/// 200 when the models are loaded, 503 while loading (or if loading failed).
pub async fn health(State(st): S) -> Response {
    if st.loaded.get().is_some() {
        (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
    } else if let Some(e) = st.load_error.get() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "error": e})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response()
    }
}

/// Prometheus text.
pub async fn metrics(State(st): S) -> Response {
    if let Some(l) = st.loaded.get() {
        for (name, w) in &l.chat {
            set_depth(&st, name, w.waiting());
        }
        for (name, w) in l
            .encoders
            .iter()
            .chain(l.classifiers.iter().map(|(n, (w, _))| (n, w)))
        {
            set_depth(&st, name, w.waiting());
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

fn set_depth(st: &AppState, model: &str, n: usize) {
    st.metrics
        .queue_depth
        .get_or_create(&ModelLabels {
            model: model.into(),
        })
        .set(n as i64);
}

/// `GET /v1/models`.
pub async fn models(State(st): S) -> Response {
    let loaded = match st.models() {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let data: Vec<Value> = loaded
        .names(st.cfg.route.as_ref())
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": st.started_unix, "owned_by": "frugal"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

fn body_bytes(st: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(st.cfg.max_body_bytes)
        } else if std::error::Error::source(&e)
            .is_some_and(|s| s.to_string().contains("designated timeout"))
            || e.to_string().contains("designated timeout")
        {
            ApiError::body_timeout()
        } else {
            ApiError::invalid(format!("cannot read the body: {e}"), None)
        }
    })
}

fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(|e| e.into_response())
}

fn new_id(st: &AppState, prefix: &str) -> String {
    format!(
        "{prefix}-{:x}{:06x}",
        st.started_unix,
        st.next_id.fetch_add(1, Ordering::Relaxed)
    )
}

fn with_headers(mut r: Response, answered_by: &str, cache: Option<&str>) -> Response {
    if let Ok(v) = HeaderValue::from_str(answered_by) {
        r.headers_mut().insert("x-frugal-model", v);
    }
    if let Some(v) = cache.and_then(|c| HeaderValue::from_str(c).ok()) {
        r.headers_mut().insert("x-frugal-cache", v);
    }
    r
}

// ---------- generation ----------

/// Chat or plain-text completion: they differ in prompt and response shapes only.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

/// A validated generation request.
struct Gen {
    model: String,
    prompt_ids: Vec<u32>,
    opts: GenerateOptions,
    stream: bool,
    include_usage: bool,
    /// The prompt as the reference hosted model would see it.
    reference_input: String,
    kind: Kind,
    /// Cache key and text, when the cache is on and this request may use it.
    cache_key: Option<(String, String)>,
}

/// The served model `name` of one kind (`map`): another kind of model is a 400 that says which
/// endpoint it belongs to, an unknown name a 404 listing those served.
fn find<'a, T>(
    st: &AppState,
    map: &'a std::collections::BTreeMap<String, T>,
    name: &str,
    what: &str,
) -> Result<&'a T, ApiError> {
    let l = st.models()?;
    if let Some(m) = map.get(name) {
        return Ok(m);
    }
    if l.names(None).iter().any(|n| n == name) {
        return Err(ApiError::invalid(
            format!(
                "`{name}` is not {what}; those served: {} (chat models answer /v1/chat/completions, encoders /v1/embeddings, classifiers /v1/classify)",
                map.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            Some("model"),
        ));
    }
    Err(ApiError::unknown_model(
        name,
        &l.names(st.cfg.route.as_ref()),
    ))
}

fn chat_worker<'a>(st: &'a AppState, name: &str) -> Result<&'a ChatWorker, ApiError> {
    find(st, &st.models()?.chat, name, "a chat model")
}

fn prepare(
    st: &AppState,
    w: &ChatWorker,
    model: &str,
    prompt: &str,
    s: &Sampling,
    default_max: usize,
    kind: Kind,
) -> Result<Gen, ApiError> {
    if let Some(n) = s.n {
        if n != 1 {
            return Err(ApiError::invalid(
                format!("`n` is {n}; this server returns one choice per request (n = 1)"),
                Some("n"),
            ));
        }
    }
    let (asked, param) = match (s.max_completion_tokens, s.max_tokens) {
        (Some(m), _) => (Some(m as usize), "max_completion_tokens"),
        (None, m) => (m.map(|m| m as usize), "max_tokens"),
    };
    if asked == Some(0) {
        return Err(ApiError::invalid(
            format!("`{param}` must be at least 1"),
            Some(param),
        ));
    }
    if let Some(m) = asked.filter(|&m| m > st.cfg.max_tokens) {
        return Err(ApiError::invalid(
            format!(
                "`{param}` is {m}, above this server's limit of {} tokens per completion (--max-tokens)",
                st.cfg.max_tokens
            ),
            Some(param),
        ));
    }
    let ids = w
        .model
        .tokenizer
        .encode(prompt)
        .map_err(|e| ApiError::internal(format!("tokenising the prompt: {e}")))?;
    if ids.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
    }
    let limit = st.cfg.max_prompt_tokens;
    if limit > 0 && ids.len() > limit {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                format!(
                    "the prompt is {} tokens; this server takes at most {limit} a request (--max-prompt-tokens); shorten it",
                    ids.len()
                ),
                Some("messages"),
            )
        });
    }
    let ctx = w.model.context_length();
    if ids.len() >= ctx {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                format!(
                    "the prompt is {} tokens but `{model}`'s context window holds {ctx}; shorten it",
                    ids.len()
                ),
                Some("messages"),
            )
        });
    }
    let room = ctx - ids.len();
    let max = match asked {
        Some(m) if m > room => {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(
                    format!(
                        "`{param}` is {m} but the prompt's {} tokens leave room for {room} in `{model}`'s context window of {ctx}; ask for at most {room}",
                        ids.len()
                    ),
                    Some(param),
                )
            })
        }
        Some(m) => m,
        None => default_max.min(st.cfg.max_tokens).min(room),
    };
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("`temperature` is {temperature}; it must be between 0 and 2"),
            Some("temperature"),
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            format!("`top_p` is {top_p}; it must be above 0 and at most 1"),
            Some("top_p"),
        ));
    }
    let stop = s.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::invalid(
            format!("`stop` has {} sequences; at most 4", stop.len()),
            Some("stop"),
        ));
    }
    let seed = s
        .seed
        .unwrap_or_else(|| st.next_id.load(Ordering::Relaxed) ^ unix_now());
    let cache_key = st.cfg.cache.as_ref().map(|_| {
        (
            format!(
                "{model}|{kind}|{max}|{temperature}|{top_p}|{stop:?}",
                kind = kind as u8
            ),
            prompt.to_string(),
        )
    });
    Ok(Gen {
        model: model.to_string(),
        prompt_ids: ids,
        opts: GenerateOptions {
            max_tokens: max,
            sampling: SamplingParams {
                temperature,
                top_k: 0,
                top_p,
                repeat_penalty: 1.0,
                repeat_last_n: 64,
                seed,
            },
            stop,
        },
        stream: s.stream,
        include_usage: s.stream_options.as_ref().is_some_and(|o| o.include_usage),
        reference_input: String::new(),
        kind,
        cache_key,
    })
}

/// Queues a generation; its events arrive on the returned channel.
fn start(
    st: &AppState,
    w: &ChatWorker,
    g: &Gen,
) -> Result<mpsc::UnboundedReceiver<ChatEvent>, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let now = Instant::now();
    w.submit(
        &g.model,
        ChatJob {
            prompt_ids: g.prompt_ids.clone(),
            opts: g.opts.clone(),
            events: tx,
            deadline: now + st.cfg.timeout,
            enqueued: now,
        },
    )?;
    set_depth(st, &g.model, w.waiting());
    Ok(rx)
}

/// Waits for a generation to finish.
async fn finish(
    st: &AppState,
    mut rx: mpsc::UnboundedReceiver<ChatEvent>,
) -> Result<ChatDone, ApiError> {
    let limit = st.cfg.timeout + Duration::from_secs(5);
    let wait = async {
        while let Some(ev) = rx.recv().await {
            if let ChatEvent::Done(d) = ev {
                return d.map_err(|e| {
                    if e.contains("timed out") {
                        ApiError::timeout(st.cfg.timeout.as_secs_f64())
                    } else {
                        ApiError::internal(e)
                    }
                });
            }
        }
        Err(ApiError::internal("the model's worker stopped"))
    };
    tokio::time::timeout(limit, wait)
        .await
        .map_err(|_| ApiError::timeout(st.cfg.timeout.as_secs_f64()))?
}

/// Usage and costs of a local generation, counted into the metrics.
fn gen_usage(st: &AppState, g: &Gen, d: &ChatDone) -> Result<Usage, ApiError> {
    let gen = &d.generation;
    let secs = gen.prompt_secs + gen.gen_secs;
    let p = &st.cfg.pricing;
    let usage = Usage {
        prompt_tokens: gen.prompt_tokens,
        completion_tokens: gen.completion_tokens,
        total_tokens: gen.prompt_tokens + gen.completion_tokens,
        prompt_tokens_details: Some(crate::api::PromptTokensDetails {
            cached_tokens: gen.cached_tokens,
        }),
        cost_usd: p.local_usd(secs),
        reference_cost_usd: p.hosted_usd(&p.reference, &g.reference_input, &gen.text)?,
        reference_model: p.reference.name.clone(),
    };
    st.metrics
        .add_tokens(&g.model, "prompt", usage.prompt_tokens);
    st.metrics
        .add_tokens(&g.model, "prompt_cached", gen.cached_tokens);
    st.metrics
        .add_tokens(&g.model, "completion", usage.completion_tokens);
    st.metrics
        .add_cost(&g.model, usage.cost_usd, usage.reference_cost_usd);
    Ok(usage)
}

fn completion_body(
    id: &str,
    g: &Gen,
    answered_by: &str,
    text: &str,
    finish: &str,
    usage: &Usage,
    extra: Value,
) -> Value {
    let choice = match g.kind {
        Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish, "logprobs": null}),
        Kind::Text => json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": null}),
    };
    json!({
        "id": id,
        "object": if g.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": unix_now(),
        "model": answered_by,
        "choices": [choice],
        "usage": usage,
        "frugal": extra,
    })
}

/// One streamed chunk.
fn chunk(
    id: &str,
    kind: Kind,
    model: &str,
    text: Option<&str>,
    role: bool,
    finish: Option<&str>,
) -> Event {
    let choice = match kind {
        Kind::Chat => {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null})
        }
        Kind::Text => {
            json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null})
        }
    };
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    Event::default().data(
        json!({"id": id, "object": object, "created": unix_now(), "model": model, "choices": [choice]})
            .to_string(),
    )
}

fn usage_chunk(id: &str, kind: Kind, model: &str, usage: &Usage) -> Event {
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    Event::default().data(
        json!({"id": id, "object": object, "created": unix_now(), "model": model, "choices": [], "usage": usage})
            .to_string(),
    )
}

/// A whole answer already known (cache hit, or an answer from upstream) sent as a stream.
fn stream_text(
    id: String,
    g: &Gen,
    model: &str,
    text: &str,
    finish: &str,
    usage: &Usage,
) -> Response {
    let mut events = vec![];
    if g.kind == Kind::Chat {
        events.push(chunk(&id, g.kind, model, None, true, None));
    }
    events.push(chunk(&id, g.kind, model, Some(text), false, None));
    events.push(chunk(&id, g.kind, model, None, false, Some(finish)));
    if g.include_usage {
        events.push(usage_chunk(&id, g.kind, model, usage));
    }
    events.push(Event::default().data("[DONE]"));
    let s = futures_util::stream::iter(events.into_iter().map(Ok::<Event, Infallible>));
    Sse::new(s).into_response()
}

struct Streaming {
    st: Arc<AppState>,
    g: Gen,
    id: String,
    rx: mpsc::UnboundedReceiver<ChatEvent>,
    out: VecDeque<Event>,
    done: bool,
    cache_vector: Option<Vec<f32>>,
}

/// Streams a local generation as server-sent events, ending with `data: [DONE]`.
fn stream_local(
    st: Arc<AppState>,
    g: Gen,
    id: String,
    rx: mpsc::UnboundedReceiver<ChatEvent>,
    cache_vector: Option<Vec<f32>>,
) -> Response {
    let mut out = VecDeque::new();
    if g.kind == Kind::Chat {
        out.push_back(chunk(&id, g.kind, &g.model, None, true, None));
    }
    let state = Streaming {
        st,
        g,
        id,
        rx,
        out,
        done: false,
        cache_vector,
    };
    let s = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(ev) = s.out.pop_front() {
                return Some((Ok::<Event, Infallible>(ev), s));
            }
            if s.done {
                return None;
            }
            match s.rx.recv().await {
                Some(ChatEvent::Text(t)) => {
                    let ev = chunk(&s.id, s.g.kind, &s.g.model, Some(&t), false, None);
                    s.out.push_back(ev);
                }
                Some(ChatEvent::Done(Ok(d))) => {
                    let finish = d.generation.finish_reason.as_str();
                    s.out.push_back(chunk(
                        &s.id,
                        s.g.kind,
                        &s.g.model,
                        None,
                        false,
                        Some(finish),
                    ));
                    match gen_usage(&s.st, &s.g, &d) {
                        Ok(u) => {
                            if s.g.include_usage {
                                s.out
                                    .push_back(usage_chunk(&s.id, s.g.kind, &s.g.model, &u));
                            }
                        }
                        Err(e) => s.out.push_back(Event::default().data(e.body().to_string())),
                    }
                    remember(&s.st, &s.g, s.cache_vector.take(), &d, &s.g.model);
                    s.out.push_back(Event::default().data("[DONE]"));
                    s.done = true;
                }
                Some(ChatEvent::Done(Err(e))) => {
                    s.out
                        .push_back(Event::default().data(ApiError::internal(e).body().to_string()));
                    s.out.push_back(Event::default().data("[DONE]"));
                    s.done = true;
                }
                None => s.done = true,
            }
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

fn remember(st: &AppState, g: &Gen, vector: Option<Vec<f32>>, d: &ChatDone, answered_by: &str) {
    if let (Some(cache), Some(v), Some((key, text))) = (&st.cache, vector, &g.cache_key) {
        if d.timed_out {
            return;
        }
        cache.insert(
            key,
            v,
            text,
            CachedAnswer {
                text: d.generation.text.clone(),
                finish_reason: d.generation.finish_reason.as_str().into(),
                prompt_tokens: d.generation.prompt_tokens,
                completion_tokens: d.generation.completion_tokens,
                answered_by: answered_by.into(),
            },
        );
    }
}

/// Looks the request up in the semantic cache: the lookup, the request's vector (to store the
/// answer under), and the embedding's cost.
async fn probe_cache(st: &AppState, g: &Gen) -> Result<Option<(Lookup, Vec<f32>, f64)>, ApiError> {
    let (Some(cache), Some((key, text))) = (&st.cache, &g.cache_key) else {
        return Ok(None);
    };
    let l = st.models()?;
    let enc = &cache.cfg.encoder;
    let w = l
        .encoders
        .get(enc)
        .ok_or_else(|| ApiError::internal("the cache's encoder is not loaded"))?;
    let out = run_batch(st, w, enc, vec![text.clone()]).await?;
    let v = out.rows.into_iter().next().map(|r| r.0).unwrap_or_default();
    let mut lookup = cache.lookup(key, &v, text);
    let mut secs = out.compute_secs;
    if let (
        Lookup::Hit {
            similarity,
            cached_text,
            ..
        },
        Some((vw, same)),
        Some(vc),
    ) = (&lookup, &l.cache_verifier, &cache.cfg.verifier)
    {
        let judged =
            run_batch(st, vw, "cache-verifier", vec![pair_text(cached_text, text)]).await?;
        secs += judged.compute_secs;
        let p_same = judged
            .rows
            .first()
            .and_then(|r| r.0.get(*same).copied())
            .unwrap_or(0.0);
        if p_same < vc.min_prob {
            lookup = Lookup::Unverified {
                similarity: *similarity,
                p_same,
            };
        }
    }
    st.metrics
        .cache
        .get_or_create(&CacheLabels {
            result: lookup.as_str().into(),
        })
        .inc();
    Ok(Some((lookup, v, secs)))
}

/// Runs a validated generation: cache, then the local model, streamed or whole.
async fn generate(st: Arc<AppState>, w: &ChatWorker, g: Gen) -> Result<Response, ApiError> {
    let id = new_id(
        &st,
        if g.kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
    );
    let probe = probe_cache(&st, &g).await?;
    let cache_state = probe.as_ref().map(|p| p.0.as_str());
    if let Some((
        Lookup::Hit {
            answer, similarity, ..
        },
        _,
        secs,
    )) = &probe
    {
        let p = &st.cfg.pricing;
        let usage = Usage {
            prompt_tokens_details: None,
            prompt_tokens: answer.prompt_tokens,
            completion_tokens: answer.completion_tokens,
            total_tokens: answer.prompt_tokens + answer.completion_tokens,
            cost_usd: p.local_usd(*secs),
            reference_cost_usd: p.hosted_usd(&p.reference, &g.reference_input, &answer.text)?,
            reference_model: p.reference.name.clone(),
        };
        st.metrics
            .add_cost(&g.model, usage.cost_usd, usage.reference_cost_usd);
        let r = if g.stream {
            stream_text(
                id,
                &g,
                &answer.answered_by,
                &answer.text,
                &answer.finish_reason,
                &usage,
            )
        } else {
            let extra = json!({"answered_by": answer.answered_by, "cache": "hit", "similarity": similarity});
            Json(completion_body(
                &id,
                &g,
                &answer.answered_by,
                &answer.text,
                &answer.finish_reason,
                &usage,
                extra,
            ))
            .into_response()
        };
        return Ok(with_headers(r, &answer.answered_by, Some("hit")));
    }
    let vector = probe.map(|p| p.1);
    let rx = start(&st, w, &g)?;
    if g.stream {
        let model = g.model.clone();
        let r = stream_local(st, g, id, rx, vector);
        return Ok(with_headers(r, &model, cache_state));
    }
    let d = finish(&st, rx).await?;
    let usage = gen_usage(&st, &g, &d)?;
    remember(&st, &g, vector, &d, &g.model);
    let extra = json!({
        "answered_by": g.model,
        "cache": cache_state,
        "mean_logprob": d.generation.mean_logprob(),
        "queue_s": d.queue_secs,
        "decode_batch": d.decode_batch,
        "prompt_tokens_per_s": d.generation.prompt_tokens_per_s(),
        "tokens_per_s": d.generation.tokens_per_s(),
    });
    let body = completion_body(
        &id,
        &g,
        &g.model,
        &d.generation.text,
        d.generation.finish_reason.as_str(),
        &usage,
        extra,
    );
    Ok(with_headers(
        Json(body).into_response(),
        &g.model,
        cache_state,
    ))
}

/// Validates messages: (role, text) pairs.
fn messages_of(req: &ChatRequest) -> Result<Vec<(String, String)>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` is empty; give at least one message, e.g. [{\"role\": \"user\", \"content\": \"Hi\"}]",
            Some("messages"),
        ));
    }
    req.messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        format!("`messages[{i}].role` is `{other}`; use system, developer, user or assistant"),
                        Some(&format!("messages[{i}].role")),
                    ))
                }
            };
            Ok((role.to_string(), m.text(i)?))
        })
        .collect()
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(st): S, body: Result<Bytes, BytesRejection>) -> Response {
    respond(chat_inner(st, body).await)
}

async fn chat_inner(
    st: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let v = json_body(&body_bytes(&st, body)?)?;
    let req: ChatRequest = parse(&v)?;
    let s: Sampling = parse(&v)?;
    let msgs = messages_of(&req)?;
    let route = st.cfg.route.as_ref().filter(|r| r.name == req.model);
    let local = match route {
        Some(r) => match &r.chat {
            Some(c) => c.local.clone(),
            None => {
                return Err(ApiError::invalid(
                    format!(
                        "`{}` routes only /v1/classify; its route file has no [chat] section",
                        req.model
                    ),
                    Some("model"),
                ))
            }
        },
        None => req.model.clone(),
    };
    let w = chat_worker(&st, &local)?;
    let messages: Vec<Message> = msgs
        .iter()
        .map(|(r, c)| Message::new(r, c.clone()))
        .collect();
    let prompt = w.model.render(&messages).map_err(|e| {
        ApiError::invalid(
            format!("the chat template refused the messages: {e}"),
            Some("messages"),
        )
    })?;
    let mut g = prepare(&st, w, &local, &prompt, &s, 512, Kind::Chat)?;
    g.reference_input = chat_text(&msgs);
    // The cache compares what was said, not the chat template's boilerplate around it.
    if let Some(k) = g.cache_key.as_mut() {
        k.1 = g.reference_input.clone();
    }
    if route.is_some() {
        return route_chat(st.clone(), w, g, v).await;
    }
    let w = w.clone();
    generate(st, &w, g).await
}

/// `POST /v1/completions`.
pub async fn completions(State(st): S, body: Result<Bytes, BytesRejection>) -> Response {
    respond(completions_inner(st, body).await)
}

async fn completions_inner(
    st: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let v = json_body(&body_bytes(&st, body)?)?;
    let req: CompletionRequest = parse(&v)?;
    let s: Sampling = parse(&v)?;
    let prompts = req.prompt.into_vec();
    if prompts.len() != 1 {
        return Err(ApiError::invalid(
            format!(
                "`prompt` has {} prompts; send one per request",
                prompts.len()
            ),
            Some("prompt"),
        ));
    }
    if prompts[0].is_empty() {
        return Err(ApiError::invalid("`prompt` is empty", Some("prompt")));
    }
    let w = chat_worker(&st, &req.model)?.clone();
    let mut g = prepare(&st, &w, &req.model, &prompts[0], &s, 16, Kind::Text)?;
    g.reference_input = prompts[0].clone();
    generate(st, &w, g).await
}

// ---------- the cascade router: chat ----------

/// Answers with the local model when its mean token log-probability reaches the threshold;
/// otherwise forwards the request to the upstream.
async fn route_chat(
    st: Arc<AppState>,
    w: &ChatWorker,
    g: Gen,
    body: Value,
) -> Result<Response, ApiError> {
    let r = st.cfg.route.as_ref().expect("routing");
    let c = r.chat.as_ref().expect("a chat route");
    let id = new_id(&st, "chatcmpl");
    let rx = start(&st, w, &g)?;
    let d = finish(&st, rx).await?;
    let local = gen_usage(&st, &g, &d)?;
    let confidence = d.generation.mean_logprob();
    if confidence >= c.threshold {
        st.metrics
            .routed
            .get_or_create(&RouteLabels {
                answered_by: "local".into(),
            })
            .inc();
        let extra = json!({"answered_by": g.model, "routed": "local", "confidence": confidence, "threshold": c.threshold});
        let text = &d.generation.text;
        let finish = d.generation.finish_reason.as_str();
        let resp = if g.stream {
            stream_text(id, &g, &g.model, text, finish, &local)
        } else {
            Json(completion_body(
                &id, &g, &g.model, text, finish, &local, extra,
            ))
            .into_response()
        };
        return Ok(with_headers(resp, &g.model, None));
    }
    let mut fwd = body;
    fwd["model"] = json!(c.upstream_model);
    fwd["stream"] = json!(false);
    if let Some(o) = fwd.as_object_mut() {
        o.remove("stream_options");
    }
    let up = crate::route::post_upstream(&st.http, r, "chat/completions", &fwd)
        .await
        .map_err(ApiError::upstream)?;
    let text = up["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let finish = up["choices"][0]["finish_reason"]
        .as_str()
        .unwrap_or("stop")
        .to_string();
    let answered_by = up["model"]
        .as_str()
        .unwrap_or(&c.upstream_model)
        .to_string();
    let up_usd = upstream_usd(&st, &up, &g.reference_input, &text)?;
    st.metrics
        .routed
        .get_or_create(&RouteLabels {
            answered_by: "upstream".into(),
        })
        .inc();
    st.metrics.add_cost(&answered_by, up_usd, 0.0);
    let usage = Usage {
        prompt_tokens_details: None,
        prompt_tokens: up["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
        completion_tokens: up["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize,
        total_tokens: up["usage"]["total_tokens"].as_u64().unwrap_or(0) as usize,
        cost_usd: local.cost_usd + up_usd,
        reference_cost_usd: local.reference_cost_usd,
        reference_model: local.reference_model.clone(),
    };
    let resp = if g.stream {
        stream_text(id, &g, &answered_by, &text, &finish, &usage)
    } else {
        let extra = json!({"answered_by": answered_by, "routed": "upstream", "confidence": confidence,
                           "threshold": c.threshold, "local_cost_usd": local.cost_usd, "upstream_cost_usd": up_usd});
        Json(completion_body(
            &id,
            &g,
            &answered_by,
            &text,
            &finish,
            &usage,
            extra,
        ))
        .into_response()
    };
    Ok(with_headers(resp, &answered_by, None))
}

/// What the upstream charged, by the route's `price_as` model (or the reference): from the token
/// counts it reports, else counted here.
fn upstream_usd(st: &AppState, up: &Value, input: &str, output: &str) -> Result<f64, ApiError> {
    let p = &st.cfg.pricing;
    let price = p.upstream.as_ref().unwrap_or(&p.reference);
    match p.reported_usd(price, &up["usage"]) {
        Some(usd) => Ok(usd),
        None => p.hosted_usd(price, input, output),
    }
}

// ---------- embeddings and classification ----------

/// Runs texts through a batching worker.
async fn run_batch(
    st: &AppState,
    w: &BatchWorker,
    name: &str,
    texts: Vec<String>,
) -> Result<BatchOut, ApiError> {
    let (tx, rx) = oneshot::channel();
    w.submit(
        name,
        BatchJob {
            texts,
            reply: tx,
            deadline: Instant::now() + st.cfg.timeout,
        },
    )?;
    set_depth(st, name, w.waiting());
    let out = tokio::time::timeout(st.cfg.timeout + Duration::from_secs(5), rx)
        .await
        .map_err(|_| ApiError::timeout(st.cfg.timeout.as_secs_f64()))?
        .map_err(|_| ApiError::internal("the model's worker stopped"))?
        .map_err(|e| {
            if e.contains("timed out") {
                ApiError::timeout(st.cfg.timeout.as_secs_f64())
            } else {
                ApiError::internal(e)
            }
        })?;
    st.metrics
        .batch_size
        .get_or_create(&ModelLabels { model: name.into() })
        .observe(out.batch_texts as f64);
    Ok(out)
}

/// The texts of `input`, checked: 1 to 2048 non-empty strings.
fn inputs(v: &Value, what: &str) -> Result<Vec<String>, ApiError> {
    let texts = match &v["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .map(|s| s.as_str().unwrap_or_default().to_string())
            .collect(),
        Value::Null => {
            return Err(ApiError::invalid(
                format!("`input` is missing: give the text(s) to {what}"),
                Some("input"),
            ))
        }
        _ => return Err(ApiError::invalid(
            "`input` must be a string or an array of strings (token-id arrays are not supported)",
            Some("input"),
        )),
    };
    if texts.is_empty() || texts.len() > 2048 {
        return Err(ApiError::invalid(
            format!("`input` has {} texts; send 1 to 2048", texts.len()),
            Some("input"),
        ));
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::invalid(
            format!("`input[{i}]` is empty"),
            Some("input"),
        ));
    }
    Ok(texts)
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(st): S, body: Result<Bytes, BytesRejection>) -> Response {
    respond(embeddings_inner(st, body).await)
}

async fn embeddings_inner(
    st: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    use base64::Engine;
    let v = json_body(&body_bytes(&st, body)?)?;
    let texts = inputs(&v, "embed")?;
    let req: EmbeddingRequest = parse(&v)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("`encoding_format` is `{other}`; use float or base64"),
                Some("encoding_format"),
            ))
        }
    };
    let l = st.models()?;
    let w = find(&st, &l.encoders, &req.model, "an encoder")?;
    let joined = texts.join("\n");
    let out = run_batch(&st, w, &req.model, texts).await?;
    let tokens: usize = out.rows.iter().map(|r| r.1).sum();
    let data: Vec<Value> = out
        .rows
        .iter()
        .enumerate()
        .map(|(i, (vec, _))| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vec.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vec)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let p = &st.cfg.pricing;
    let usage = Usage {
        prompt_tokens_details: None,
        prompt_tokens: tokens,
        completion_tokens: 0,
        total_tokens: tokens,
        cost_usd: p.local_usd(out.compute_secs),
        reference_cost_usd: p.hosted_usd(&p.embed_reference, &joined, "")?,
        reference_model: p.embed_reference.name.clone(),
    };
    st.metrics.add_tokens(&req.model, "input", tokens);
    st.metrics
        .add_cost(&req.model, usage.cost_usd, usage.reference_cost_usd);
    let body = json!({"object": "list", "data": data, "model": req.model, "usage": usage,
                      "frugal": {"batch_texts": out.batch_texts}});
    Ok(with_headers(Json(body).into_response(), &req.model, None))
}

fn classification(i: usize, probs: &[f32], labels: &[String]) -> Classification {
    let best = probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(k, _)| k);
    Classification {
        index: i,
        label: labels.get(best).cloned().unwrap_or_default(),
        probabilities: labels
            .iter()
            .zip(probs)
            .map(|(l, p)| (l.clone(), json!(p)))
            .collect(),
        margin: crate::route::margin(probs),
    }
}

/// `POST /v1/classify`: `{"model", "input"}` → a label and probabilities per text.
pub async fn classify(State(st): S, body: Result<Bytes, BytesRejection>) -> Response {
    respond(classify_inner(st, body).await)
}

async fn classify_inner(
    st: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let v = json_body(&body_bytes(&st, body)?)?;
    let texts = inputs(&v, "classify")?;
    let req: ClassifyRequest = parse(&v)?;
    let l = st.models()?;
    let route = st.cfg.route.as_ref().filter(|r| r.name == req.model);
    let name = match route {
        Some(r) => match &r.classify {
            Some(c) => c.local.clone(),
            None => {
                return Err(ApiError::invalid(
                    format!(
                        "`{}` routes only chat; its route file has no [classify] section",
                        req.model
                    ),
                    Some("model"),
                ))
            }
        },
        None => req.model.clone(),
    };
    let (w, labels) = find(&st, &l.classifiers, &name, "a classifier")?;
    let out = run_batch(&st, w, &name, texts.clone()).await?;
    let tokens: usize = out.rows.iter().map(|r| r.1).sum();
    let p = &st.cfg.pricing;
    // The reference: the hosted model reads each text and answers with its label.
    let mut reference = 0.0;
    let mut data: Vec<Value> = vec![];
    for (i, (probs, _)) in out.rows.iter().enumerate() {
        let c = classification(i, probs, labels);
        reference += p.hosted_usd(&p.reference, &texts[i], &c.label)?;
        let mut item = serde_json::to_value(&c).expect("serialisable");
        item["answered_by"] = json!(name);
        data.push(item);
    }
    let mut usage = Usage {
        prompt_tokens_details: None,
        prompt_tokens: tokens,
        completion_tokens: 0,
        total_tokens: tokens,
        cost_usd: p.local_usd(out.compute_secs),
        reference_cost_usd: reference,
        reference_model: p.reference.name.clone(),
    };
    st.metrics.add_tokens(&name, "input", tokens);
    st.metrics
        .add_cost(&name, usage.cost_usd, usage.reference_cost_usd);
    let mut answered_by = name.clone();
    let mut extra = json!({"batch_texts": out.batch_texts});
    if let Some(r) = route {
        let c = r.classify.as_ref().expect("a classify route");
        let doubtful: Vec<usize> = data
            .iter()
            .enumerate()
            .filter(|(_, d)| d["margin"].as_f64().unwrap_or(0.0) < c.threshold)
            .map(|(i, _)| i)
            .collect();
        if !doubtful.is_empty() {
            let fwd_texts: Vec<&str> = doubtful.iter().map(|&i| texts[i].as_str()).collect();
            let answers = crate::route::classify_upstream(&st.http, r, &fwd_texts, labels)
                .await
                .map_err(ApiError::upstream)?;
            let up_model = answers
                .first()
                .map_or(c.upstream_model.clone(), |a| a.model.clone());
            let mut up_usd = 0.0;
            for (&i, a) in doubtful.iter().zip(&answers) {
                let usage = match a.tokens {
                    Some((i, o)) => json!({"usage": {"prompt_tokens": i, "completion_tokens": o}}),
                    None => Value::Null,
                };
                up_usd += upstream_usd(&st, &usage, &texts[i], &a.label)?;
                if let Some(text) = &a.answer {
                    data[i]["upstream_answer"] = json!(text);
                }
                if a.label.is_empty() {
                    // The upstream's answer names no label: the local answer stands.
                    data[i]["upstream_unparsed"] = json!(true);
                    continue;
                }
                data[i]["local_label"] = data[i]["label"].clone();
                data[i]["local_margin"] = data[i]["margin"].clone();
                data[i]["label"] = json!(a.label);
                data[i]["probabilities"] = a.probabilities.clone().unwrap_or(Value::Null);
                data[i]["margin"] = json!(a.margin);
                data[i]["answered_by"] = json!(up_model);
            }
            usage.cost_usd += up_usd;
            st.metrics.add_cost(&up_model, up_usd, 0.0);
            answered_by = if doubtful.len() == texts.len() {
                up_model
            } else {
                format!("{name}+{up_model}")
            };
        }
        st.metrics
            .routed
            .get_or_create(&RouteLabels {
                answered_by: "local".into(),
            })
            .inc_by((texts.len() - doubtful.len()) as u64);
        st.metrics
            .routed
            .get_or_create(&RouteLabels {
                answered_by: "upstream".into(),
            })
            .inc_by(doubtful.len() as u64);
        extra["escalated"] = json!(doubtful.len());
        extra["threshold"] = json!(c.threshold);
    }
    let body = json!({"object": "list", "model": answered_by, "data": data, "usage": usage, "frugal": extra});
    Ok(with_headers(Json(body).into_response(), &answered_by, None))
}
