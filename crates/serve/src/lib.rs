//! `frugal serve`: local models behind an OpenAI-compatible HTTP API.
//!
//! Chat models (GGUF) answer `/v1/chat/completions` and `/v1/completions` (streamed as server-sent
//! events when asked), encoders answer `/v1/embeddings`, and frugal's classifiers answer
//! `/v1/classify`. Every response's `usage` carries what it cost here and what the reference
//! hosted model would have charged. A cascade router (`route`) answers with the local model when
//! it is confident and forwards the rest to an upstream OpenAI-compatible endpoint; a semantic
//! cache (`cache`) reuses answers to near-identical requests.

pub mod api;
pub mod cache;
pub mod error;
mod handlers;
pub mod metrics;
pub mod pricing;
pub mod route;
pub mod workers;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::pricing::Pricing;
use crate::workers::{BatchFn, BatchWorker, ChatWorker};
use axum::routing::{get, post};
use frugal_models::assets::Store;
use frugal_models::chat::ChatModel;
use frugal_models::encoder::Encoder;
use frugal_models::resolve::{resolve_model, ModelPath};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How the server runs: models, limits, prices. Built by the CLI from its flags.
pub struct ServeConfig {
    /// `NAME=SPEC` or `SPEC` (asset name, `.gguf` file or encoder folder); the name defaults to
    /// the asset name or the file/folder stem.
    pub models: Vec<String>,
    /// `(NAME, checkpoint folder)` of `frugal train` classifiers.
    pub classifiers: Vec<(String, PathBuf)>,
    /// `(NAME, adapter folder)`: LoRA adapters merged into the chat model served as NAME.
    pub adapters: Vec<(String, PathBuf)>,
    /// Requests sent without `Authorization: Bearer KEY` get a 401 when set.
    pub api_key: Option<String>,
    /// Requests waiting per model before the server answers 429.
    pub queue: usize,
    /// Texts per batch for encoders and classifiers (1 turns dynamic batching off).
    pub max_batch: usize,
    /// How long a batch waits to fill.
    pub batch_wait: Duration,
    pub max_body_bytes: usize,
    /// Most tokens one completion may ask for.
    pub max_tokens: usize,
    /// Most prompt tokens one request may send (0: the model's context window).
    pub max_prompt_tokens: usize,
    /// A request's time limit, queueing included.
    pub timeout: Duration,
    pub pricing: Pricing,
    pub route: Option<route::RouteConfig>,
    pub cache: Option<cache::CacheConfig>,
    /// Precision of encoder and classifier inference, already resolved against the CPU.
    pub precision: frugal_models::lowp::Precision,
    /// KV caches kept per chat model for prompt-prefix reuse.
    pub prefix_slots: usize,
    /// Generations per chat model decoded together (1: one after another).
    pub chat_batch: usize,
}

/// Loaded models by name.
pub struct Loaded {
    pub chat: BTreeMap<String, ChatWorker>,
    pub encoders: BTreeMap<String, BatchWorker>,
    pub classifiers: BTreeMap<String, (BatchWorker, Vec<String>)>,
    /// The semantic cache's verifier and the index of its `same` label.
    pub cache_verifier: Option<(BatchWorker, usize)>,
}

impl Loaded {
    /// Every model name served, router included.
    pub fn names(&self, route: Option<&route::RouteConfig>) -> Vec<String> {
        let mut v: Vec<String> = self
            .chat
            .keys()
            .chain(self.encoders.keys())
            .chain(self.classifiers.keys())
            .cloned()
            .collect();
        if let Some(r) = route {
            v.push(r.name.clone());
        }
        v
    }
}

/// Shared by every request.
pub struct AppState {
    pub cfg: ServeConfig,
    pub loaded: OnceLock<Loaded>,
    pub load_error: OnceLock<String>,
    pub metrics: Metrics,
    pub next_id: AtomicU64,
    pub cache: Option<cache::SemanticCache>,
    pub http: reqwest::Client,
    pub started_unix: u64,
}

impl AppState {
    pub fn new(cfg: ServeConfig) -> Arc<AppState> {
        let cache = cfg.cache.clone().map(cache::SemanticCache::new);
        let timeout = cfg
            .route
            .as_ref()
            .map_or(Duration::from_secs(120), |r| r.upstream.timeout());
        Arc::new(AppState {
            cfg,
            loaded: OnceLock::new(),
            load_error: OnceLock::new(),
            metrics: Metrics::new(),
            next_id: AtomicU64::new(1),
            cache,
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .expect("an HTTP client with default TLS settings"),
            started_unix: unix_now(),
        })
    }

    /// The loaded models, or 503 while loading.
    pub fn models(&self) -> Result<&Loaded, ApiError> {
        self.loaded.get().ok_or_else(ApiError::loading)
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The HTTP routes.
pub fn app(state: Arc<AppState>) -> axum::Router {
    use axum::extract::DefaultBodyLimit;
    axum::Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/classify", post(handlers::classify))
        .route("/v1/models", get(handlers::models))
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::track,
        ))
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        // A body that sends nothing for this long is cut off (408).
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_STALL_TIMEOUT,
        ))
        .with_state(state)
}

/// How long a client may take to send its request headers before the connection is closed.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a request body may stall (no bytes) before the request is refused with 408.
pub const BODY_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then finishes the requests in flight.
/// Unlike `axum::serve`, a client that sends its headers slower than [`HEADER_READ_TIMEOUT`]
/// loses its connection instead of holding it.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    // Out of file descriptors and the like: wait, then accept again.
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A name for a model spec: `NAME=SPEC` names it; otherwise the asset name or file stem.
pub fn split_name(spec: &str) -> (String, String) {
    if let Some((n, s)) = spec.split_once('=') {
        if !n.is_empty() && !n.contains('/') {
            return (n.to_string(), s.to_string());
        }
    }
    let p = std::path::Path::new(spec);
    let name = p
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| spec.to_string());
    (name, spec.to_string())
}

/// Loads every model and starts its worker. Errors name the flag and model.
pub fn load(cfg: &ServeConfig, store: &Store) -> Result<Loaded, String> {
    let mut loaded = Loaded {
        chat: BTreeMap::new(),
        encoders: BTreeMap::new(),
        classifiers: BTreeMap::new(),
        cache_verifier: None,
    };
    let mut taken = std::collections::BTreeSet::new();
    let mut claim = |name: &str, flag: &str| -> Result<(), String> {
        if cfg.route.as_ref().is_some_and(|r| r.name == name) || !taken.insert(name.to_string()) {
            return Err(format!(
                "{flag}: the name `{name}` is used twice; give one a name with NAME=SPEC"
            ));
        }
        Ok(())
    };
    for (i, (name, dir)) in cfg.adapters.iter().enumerate() {
        if cfg.adapters[..i].iter().any(|(n, _)| n == name) {
            return Err(format!(
                "--adapter {name}={}: `{name}` already has an adapter; serve the base under another name for a second one",
                dir.display()
            ));
        }
    }
    for spec in &cfg.models {
        let (name, spec) = split_name(spec);
        claim(&name, "--model")?;
        match resolve_model(&spec, store).map_err(|e| format!("--model {spec}: {e}"))? {
            ModelPath::Gguf(p) => {
                let mut m = ChatModel::load(&p).map_err(|e| format!("--model {spec}: {e}"))?;
                for (_, dir) in cfg.adapters.iter().filter(|(n, _)| *n == name) {
                    let flag = format!("--adapter {name}={}", dir.display());
                    let ad = frugal_models::chat::lora::Adapter::load(dir)
                        .map_err(|e| format!("{flag}: {e}"))?;
                    m.apply_adapter(&ad).map_err(|e| format!("{flag}: {e}"))?;
                }
                let w = ChatWorker::spawn(
                    &name,
                    Arc::new(m),
                    cfg.queue,
                    cfg.prefix_slots,
                    cfg.chat_batch,
                );
                loaded.chat.insert(name, w);
            }
            ModelPath::HfDir(dir) => {
                let mut enc = Encoder::load(&dir).map_err(|e| format!("--model {spec}: {e}"))?;
                enc.model
                    .set_precision(cfg.precision)
                    .map_err(|e| format!("--model {spec}: {e}"))?;
                let w = BatchWorker::spawn(
                    &name,
                    embed_fn(enc),
                    cfg.queue,
                    cfg.max_batch,
                    cfg.batch_wait,
                );
                loaded.encoders.insert(name, w);
            }
        }
    }
    if let Some((name, dir)) = cfg
        .adapters
        .iter()
        .find(|(n, _)| !loaded.chat.contains_key(n))
    {
        return Err(format!(
            "--adapter {name}={}: no chat model is served as `{name}` (served: {})",
            dir.display(),
            loaded.chat.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    for (name, dir) in &cfg.classifiers {
        claim(name, "--classifier")?;
        let (w, labels) = classifier_worker(cfg, name, dir)
            .map_err(|e| format!("--classifier {name}={}: {e}", dir.display()))?;
        loaded.classifiers.insert(name.clone(), (w, labels));
    }
    if let Some(r) = &cfg.route {
        r.check(&loaded)?;
    }
    if let Some(c) = &cfg.cache {
        if !loaded.encoders.contains_key(&c.encoder) {
            return Err(format!(
                "--cache needs an encoder to compare requests: serve one with --model {} (or set --cache-model)",
                c.encoder
            ));
        }
        if let Some(v) = &c.verifier {
            let at = |e: String| format!("--cache-verifier {}: {e}", v.dir.display());
            let (w, labels) = classifier_worker(cfg, "cache-verifier", &v.dir).map_err(at)?;
            loaded.cache_verifier = Some((w, cache::same_label(&labels).map_err(at)?));
        }
    }
    if loaded.chat.is_empty() && loaded.encoders.is_empty() && loaded.classifiers.is_empty() {
        return Err("no models to serve: give --model or --classifier".into());
    }
    Ok(loaded)
}

fn embed_fn(enc: Encoder) -> BatchFn {
    Box::new(move |texts: &[&str]| {
        let counts = enc.tokenize(texts).map_err(|e| e.to_string())?;
        let e = enc
            .embed(texts, 64, &mut |_| {})
            .map_err(|e| e.to_string())?;
        Ok(e.vectors
            .into_iter()
            .zip(counts)
            .map(|(v, t)| (v, t.ids.len()))
            .collect())
    })
}

/// A `frugal train` checkpoint loaded at the served precision behind a batching worker, and its
/// labels.
fn classifier_worker(
    cfg: &ServeConfig,
    name: &str,
    dir: &std::path::Path,
) -> Result<(BatchWorker, Vec<String>), String> {
    let (mut clf, info) =
        frugal_train::classifier::Classifier::load(dir).map_err(|e| e.to_string())?;
    clf.encoder
        .model
        .set_precision(cfg.precision)
        .map_err(|e| e.to_string())?;
    let w = BatchWorker::spawn(
        name,
        classify_fn(clf, cfg.max_batch),
        cfg.queue,
        cfg.max_batch,
        cfg.batch_wait,
    );
    Ok((w, info.labels))
}

fn classify_fn(clf: frugal_train::classifier::Classifier, batch: usize) -> BatchFn {
    Box::new(move |texts: &[&str]| {
        let counts = clf.encoder.tokenize(texts).map_err(|e| e.to_string())?;
        let p = clf
            .predict(texts, batch.clamp(1, 64))
            .map_err(|e| e.to_string())?;
        Ok(p.into_iter()
            .zip(counts)
            .map(|(v, t)| (v, t.ids.len()))
            .collect())
    })
}

/// Binds, loads the models in the background (`/health` answers 503 until they are ready), and
/// serves until `shutdown` resolves; then it stops accepting and finishes the requests in flight.
pub async fn run(
    cfg: ServeConfig,
    addr: std::net::SocketAddr,
    store: Store,
    on_bound: impl FnOnce(std::net::SocketAddr),
    on_ready: impl FnOnce(Vec<String>) + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e} (is the port taken? use --port)"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let state = AppState::new(cfg);
    on_bound(bound);
    let s = state.clone();
    let loading = tokio::task::spawn_blocking(move || match load(&s.cfg, &store) {
        Ok(l) => {
            on_ready(l.names(s.cfg.route.as_ref()));
            let _ = s.loaded.set(l);
            Ok(())
        }
        Err(e) => {
            let _ = s.load_error.set(e.clone());
            Err(e)
        }
    });
    let server = tokio::spawn(serve_http(listener, app(state.clone()), shutdown));
    // A model that fails to load stops the server with its error.
    loading
        .await
        .map_err(|e| format!("loading the models: {e}"))??;
    server
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServeConfig {
        let pricing = Pricing::new(
            &frugal_cost::Catalog::builtin(),
            &frugal_cost::hardware::Profiles::builtin(),
            "gpt-4o",
            "text-embedding-3-small",
            None,
            frugal_cost::request::Billing::default(),
        )
        .unwrap();
        ServeConfig {
            models: vec![],
            classifiers: vec![],
            adapters: vec![],
            api_key: None,
            queue: 4,
            max_batch: 4,
            batch_wait: Duration::from_millis(1),
            max_body_bytes: 1 << 20,
            max_tokens: 16,
            max_prompt_tokens: 0,
            timeout: Duration::from_secs(5),
            pricing,
            route: None,
            cache: None,
            precision: Default::default(),
            prefix_slots: 4,
            chat_batch: 8,
        }
    }

    /// Until the models are loaded, /health and the API answer 503 (the API with an OpenAI
    /// error object); once loaded, /health answers 200.
    #[tokio::test]
    async fn health_is_503_while_loading() {
        let state = AppState::new(config());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = app(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        let r = http
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let r = http
            .get(format!("http://{addr}/v1/models"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "loading");
        let _ = state.loaded.set(Loaded {
            chat: BTreeMap::new(),
            encoders: BTreeMap::new(),
            classifiers: BTreeMap::new(),
            cache_verifier: None,
        });
        let r = http
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}
