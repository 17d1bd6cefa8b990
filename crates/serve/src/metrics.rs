//! `/metrics` in the Prometheus text format: requests, tokens, latency, queue depth, and the money
//! spent here beside what the reference hosted model would have charged (the savings).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub answered_by: String,
}

fn latency_histogram() -> Histogram {
    // 5 ms … ~80 s
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 10))
}

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    pub tokens: Family<TokenLabels, Counter>,
    pub cost_usd: Family<ModelLabels, Counter<f64, AtomicU64>>,
    pub reference_cost_usd: Family<ModelLabels, Counter<f64, AtomicU64>>,
    /// Reference cost minus cost, per model (a router's upstream answers count as negative).
    pub savings_usd: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    /// 1 − all costs ÷ all reference costs so far.
    pub savings_ratio: Gauge<f64, AtomicU64>,
    totals: std::sync::Mutex<(f64, f64)>,
    pub queue_depth: Family<ModelLabels, Gauge>,
    pub batch_size: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub cache: Family<CacheLabels, Counter>,
    pub routed: Family<RouteLabels, Counter>,
    pub in_flight: Gauge,
    pub rss_bytes: Gauge,
    pub peak_rss_bytes: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("frugal");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        let latency = Family::<EndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request to its response (to the first byte of a stream)",
            latency.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens processed, by model and kind (prompt, completion, input)",
            tokens.clone(),
        );
        let cost_usd = Family::<ModelLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "cost_usd",
            "Measured cost of the responses computed here (machine time and energy)",
            cost_usd.clone(),
        );
        let reference_cost_usd = Family::<ModelLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "reference_cost_usd",
            "What the reference hosted model would have charged for the same responses",
            reference_cost_usd.clone(),
        );
        let savings_usd = Family::<ModelLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "savings_usd",
            "Reference cost minus the cost here, per model (upstream answers count against it)",
            savings_usd.clone(),
        );
        let savings_ratio = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "savings_ratio",
            "1 - total cost here / total reference cost (0.95: 95% cheaper than the reference)",
            savings_ratio.clone(),
        );
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Requests waiting for a model",
            queue_depth.clone(),
        );
        let batch_size = Family::<ModelLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            batch_histogram,
        );
        registry.register(
            "batch_texts",
            "Texts per batch run by an encoder or classifier",
            batch_size.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Semantic cache lookups by result (hit, miss, guarded)",
            cache.clone(),
        );
        let routed = Family::<RouteLabels, Counter>::default();
        registry.register(
            "routed",
            "Cascade router answers by who answered (local, upstream)",
            routed.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests being served now",
            in_flight.clone(),
        );
        let rss_bytes = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the server process",
            rss_bytes.clone(),
        );
        let peak_rss_bytes = Gauge::default();
        registry.register(
            "process_peak_resident_memory_bytes",
            "Peak resident memory of the server process since it started",
            peak_rss_bytes.clone(),
        );
        Metrics {
            rss_bytes,
            peak_rss_bytes,
            registry,
            requests,
            latency,
            tokens,
            cost_usd,
            reference_cost_usd,
            savings_usd,
            savings_ratio,
            totals: std::sync::Mutex::new((0.0, 0.0)),
            queue_depth,
            batch_size,
            cache,
            routed,
            in_flight,
        }
    }

    /// Counts tokens of one kind.
    pub fn add_tokens(&self, model: &str, kind: &str, n: usize) {
        self.tokens
            .get_or_create(&TokenLabels {
                model: model.into(),
                kind: kind.into(),
            })
            .inc_by(n as u64);
    }

    /// Adds a response's two costs.
    pub fn add_cost(&self, model: &str, cost: f64, reference: f64) {
        let l = ModelLabels {
            model: model.into(),
        };
        self.cost_usd.get_or_create(&l).inc_by(cost);
        self.reference_cost_usd.get_or_create(&l).inc_by(reference);
        self.savings_usd.get_or_create(&l).inc_by(reference - cost);
        let mut t = self.totals.lock().expect("metrics lock");
        t.0 += cost;
        t.1 += reference;
        if t.1 > 0.0 {
            self.savings_ratio.set(1.0 - t.0 / t.1);
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let kb = |key: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok())
            };
            if let Some(v) = kb("VmRSS:") {
                self.rss_bytes.set(v * 1024);
            }
            if let Some(v) = kb("VmHWM:") {
                self.peak_rss_bytes.set(v * 1024);
            }
        }
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String cannot fail");
        s
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
