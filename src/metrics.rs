//! Prometheus metrics: the families the server keeps, and their exposition
//! (OpenMetrics text, which Prometheus' classic text parser also reads) for
//! `GET /metrics`.
//!
//! Counters and histograms are updated where things happen (a request
//! answered, an event delivered, a group commit); gauges of the store
//! (checkpoints, sessions, bytes, failed) are read from the storage
//! interface at each scrape. No label takes an unbounded value: `method` is
//! one of the protocol's methods or `unknown`, `code` is `ok` or one of the
//! error codes, `kind` and `path` are fixed sets.

use crate::storage::commit::CommitObserver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// The content type of [`Metrics::encode`]'s text for a client that asks
/// for OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type for every other client (Prometheus' classic text
/// format; the text is valid in both).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    path: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    format_version: String,
    durability: &'static str,
}

/// What the store reports at a scrape (see [`Metrics::set_store`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreGauges {
    pub checkpoints: u64,
    pub sessions: u64,
    pub sessions_created: u64,
    pub global_sequence: u64,
    pub event_sequence: u64,
    /// sled's files and the state segments.
    pub bytes_on_disk: u64,
    pub live_bytes: u64,
    pub dead_bytes: u64,
    /// The state segments' files.
    pub segment_bytes: u64,
}

/// Every metric of one server (one registry).
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabel, Histogram>,
    http_requests: Family<HttpLabels, Counter>,
    connections: Gauge,
    subscriptions: Gauge,
    events_delivered: Counter,
    events_lagged: Counter,
    checkpoints: Gauge,
    sessions: Gauge,
    sessions_created: Gauge,
    global_sequence: Gauge,
    event_sequence: Gauge,
    bytes: Family<KindLabel, Gauge>,
    commit_batch: Histogram,
    fsync_seconds: Histogram,
    store_failed: Gauge,
    ready: Gauge,
    build_info: Family<BuildLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Request latency buckets: 100 µs to about 13 s, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("checkpointd");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by method (`unknown` for anything else) and result code (`ok` or the error code)",
            requests.clone(),
        );
        let latency = Family::<MethodLabel, Histogram>::new_with_constructor(latency_buckets as fn() -> Histogram);
        registry.register(
            "request_duration_seconds",
            "Time from reading a request to having its reply ready, by method",
            latency.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Plain HTTP requests answered, by path (`other` for unknown ones) and status",
            http_requests.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let connections = gauge(&mut registry, "connections", "WebSocket clients connected now");
        let subscriptions = gauge(&mut registry, "subscriptions", "Event subscriptions open now");
        let events_delivered = counter(&mut registry, "events_delivered", "Events queued for subscribers");
        let events_lagged =
            counter(&mut registry, "events_lagged", "Subscriptions ended because their client fell behind");
        let checkpoints = gauge(&mut registry, "checkpoints", "Checkpoints stored");
        let sessions = gauge(&mut registry, "sessions", "Sessions stored");
        let sessions_created = gauge(&mut registry, "sessions_created", "Sessions ever created in this data directory");
        let global_sequence = gauge(&mut registry, "global_sequence", "Last checkpoint sequence number handed out");
        let event_sequence = gauge(&mut registry, "event_sequence", "Last journal event sequence handed out");
        let bytes = Family::<KindLabel, Gauge>::default();
        registry.register(
            "storage_bytes",
            "Bytes of storage: on_disk (every file), segments (the state segments' files), live and dead (segment bytes records point to, and those nothing points to until compaction)",
            bytes.clone(),
        );
        let commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register("group_commit_writes", "Writes made durable by one group commit", commit_batch.clone());
        let fsync_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "fsync_duration_seconds",
            "Time one group commit's sync (or full flush) took",
            fsync_seconds.clone(),
        );
        let store_failed =
            gauge(&mut registry, "store_failed", "1 once the store failed a write to disk and refuses writes, else 0");
        let ready = gauge(&mut registry, "ready", "1 while /readyz answers 200, else 0");
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register("build_info", "Always 1; the labels say what runs", build_info.clone());
        Metrics {
            registry,
            requests,
            latency,
            http_requests,
            connections,
            subscriptions,
            events_delivered,
            events_lagged,
            checkpoints,
            sessions,
            sessions_created,
            global_sequence,
            event_sequence,
            bytes,
            commit_batch,
            fsync_seconds,
            store_failed,
            ready,
            build_info,
        }
    }

    /// One request answered: `method` as the client sent it (any other
    /// than the protocol's counts as `unknown`), `code` as on the wire.
    pub fn request(&self, method: &str, code: &'static str, took: Duration) {
        let method = crate::protocol::known_method(method).unwrap_or("unknown");
        self.requests.get_or_create(&RequestLabels { method, code }).inc();
        self.latency.get_or_create(&MethodLabel { method }).observe(took.as_secs_f64());
    }

    /// One plain HTTP request answered.
    pub fn http_request(&self, path: &str, code: u16) {
        let path = match path {
            "/healthz" => "/healthz",
            "/readyz" => "/readyz",
            "/metrics" => "/metrics",
            _ => "other",
        };
        self.http_requests.get_or_create(&HttpLabels { path, code }).inc();
    }

    pub fn event_delivered(&self) {
        self.events_delivered.inc();
    }

    pub fn subscription_lagged(&self) {
        self.events_lagged.inc();
    }

    /// What every scrape reads afresh: connections, subscriptions, whether
    /// the store failed and whether the server is ready.
    pub fn set_live(&self, connections: usize, subscriptions: usize, store_failed: bool, ready: bool) {
        self.connections.set(clamp(connections as u64));
        self.subscriptions.set(clamp(subscriptions as u64));
        self.store_failed.set(i64::from(store_failed));
        self.ready.set(i64::from(ready));
    }

    /// The store's counts and sizes, as of this scrape.
    pub fn set_store(&self, s: &StoreGauges) {
        self.checkpoints.set(clamp(s.checkpoints));
        self.sessions.set(clamp(s.sessions));
        self.sessions_created.set(clamp(s.sessions_created));
        self.global_sequence.set(clamp(s.global_sequence));
        self.event_sequence.set(clamp(s.event_sequence));
        for (kind, value) in [
            ("on_disk", s.bytes_on_disk),
            ("segments", s.segment_bytes),
            ("live", s.live_bytes),
            ("dead", s.dead_bytes),
        ] {
            self.bytes.get_or_create(&KindLabel { kind }).set(clamp(value));
        }
    }

    /// The build and the store it serves (`checkpointd_build_info`).
    pub fn set_build(&self, format_version: u32, durability: crate::config::Durability) {
        let labels = BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            format_version: format_version.to_string(),
            durability: durability.as_str(),
        };
        self.build_info.get_or_create(&labels).set(1);
    }

    /// The exposition text (OpenMetrics; ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl CommitObserver for Metrics {
    fn committed(&self, writes: u64, sync: Duration) {
        self.commit_batch.observe(writes as f64);
        self.fsync_seconds.observe(sync.as_secs_f64());
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded() {
        let m = Metrics::new();
        for i in 0..100 {
            m.request(&format!("no_such_method_{i}"), "unknown_method", Duration::from_millis(1));
            m.http_request(&format!("/x{i}"), 404);
        }
        m.request("checkpoint", "ok", Duration::from_millis(2));
        let text = m.encode();
        let unknown = text.lines().filter(|l| l.starts_with("checkpointd_requests_total{")).count();
        assert_eq!(unknown, 2, "{text}");
        assert!(text.contains(r#"checkpointd_requests_total{method="unknown",code="unknown_method"} 100"#), "{text}");
        assert!(text.contains(r#"checkpointd_http_requests_total{path="other",code="404"} 100"#), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
