//! `/metrics`: what an operator charts for a unit, in the Prometheus / OpenMetrics text format
//! (`prometheus-client`). Requests by route and status, lookup latency, audit append latency
//! and failures, on-demand fetches by result, and — read at scrape time from the unit's status,
//! cache and journal — records held, link state, sync counters, audit backlog and journal size.
//! Labels never carry an NHS number or a staff id: routes are the matched templates.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use edge_proto::sync::FetchResult;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::cache::Cache;
use crate::journal::Journal;
use crate::status::{Link, Status};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The unit's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    latency: Family<Route, Histogram, fn() -> Histogram>,
    audit_append: Histogram,
    audit_failures: Counter,
    fetches: Family<FetchLabels, Counter>,
    unrecorded: Counter,
}

/// Values read at scrape time.
#[derive(Debug)]
struct Live {
    cache: Option<Arc<Cache>>,
    status: Arc<Status>,
    journal: Option<Journal>,
}

fn put<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    m: M,
) -> Result<(), std::fmt::Error> {
    let me = enc.encode_descriptor(name, help, None, m.metric_type())?;
    m.encode(me)
}

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let l = self.status.live();
        if let Some(c) = &self.cache {
            let records = ConstGauge::new(i64::try_from(c.len()).unwrap_or(i64::MAX));
            put(
                &mut enc,
                "kerbside_records",
                "Critical summaries held in the cohort cache.",
                records,
            )?;
        }
        put(
            &mut enc,
            "kerbside_link_up",
            "1 when the sync link to the hub is up.",
            ConstGauge::new(i64::from(l.link == Link::Up)),
        )?;
        put(
            &mut enc,
            "kerbside_sync_cursor",
            "The last hub feed sequence number applied.",
            ConstGauge::new(i64::try_from(l.cursor).unwrap_or(i64::MAX)),
        )?;
        put(
            &mut enc,
            "kerbside_sync_connects",
            "Connections made to the hub.",
            ConstCounter::new(l.connects),
        )?;
        put(
            &mut enc,
            "kerbside_sync_stalls",
            "Connections closed by the stall watchdog.",
            ConstCounter::new(l.link_stalls),
        )?;
        put(
            &mut enc,
            "kerbside_sync_batches",
            "Sync batches applied.",
            ConstCounter::new(l.batches_applied),
        )?;
        put(
            &mut enc,
            "kerbside_sync_records",
            "Records received from the hub.",
            ConstCounter::new(l.records_received),
        )?;
        put(
            &mut enc,
            "kerbside_audit_pending",
            "Audit events not yet acknowledged by the hub.",
            ConstGauge::new(i64::try_from(l.audit_pending).unwrap_or(i64::MAX)),
        )?;
        if let Some(j) = &self.journal {
            let st = j.status();
            put(
                &mut enc,
                "kerbside_journal_bytes",
                "Bytes of audit journal on disk.",
                ConstGauge::new(i64::try_from(st.bytes).unwrap_or(i64::MAX)),
            )?;
            put(
                &mut enc,
                "kerbside_journal_budget_bytes",
                "The audit journal's disk budget.",
                ConstGauge::new(i64::try_from(st.disk_budget_bytes).unwrap_or(i64::MAX)),
            )?;
            put(
                &mut enc,
                "kerbside_journal_fsyncs",
                "Journal segment fsyncs since start.",
                ConstCounter::new(st.fsyncs),
            )?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Metrics over the unit's status, cache and journal (each optional for tests).
    pub fn new(
        status: Arc<Status>,
        cache: Option<Arc<Cache>>,
        journal: Option<Journal>,
    ) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RouteStatus, Counter>::default();
        let latency: Family<Route, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let audit_append = latency_histogram();
        let audit_failures = Counter::default();
        let fetches = Family::<FetchLabels, Counter>::default();
        registry.register(
            "kerbside_lan_requests",
            "LAN API requests answered, by route template and HTTP status.",
            requests.clone(),
        );
        registry.register(
            "kerbside_lan_request_seconds",
            "LAN API request latency by route template (lookups: /v1/patients/{nhs}).",
            latency.clone(),
        );
        registry.register(
            "kerbside_audit_append_seconds",
            "Time to make one audit event durable in the journal.",
            audit_append.clone(),
        );
        registry.register(
            "kerbside_audit_append_failures",
            "Audit appends refused (journal full or failing): each is an access not answered.",
            audit_failures.clone(),
        );
        registry.register(
            "kerbside_fetches",
            "On-demand fetches from the hub for patients outside the cohort, by result.",
            fetches.clone(),
        );
        let unrecorded = Counter::default();
        registry.register(
            "kerbside_unrecorded_refusals",
            "Refusals without a valid token not journalled because the journal is into the reserve kept for authenticated accesses.",
            unrecorded.clone(),
        );
        registry.register_collector(Box::new(Live {
            cache,
            status,
            journal,
        }));
        Metrics {
            registry,
            requests,
            latency,
            audit_append,
            audit_failures,
            fetches,
            unrecorded,
        }
    }

    /// Refusals without a token left out of the journal (it is into its reserve).
    pub fn unrecorded_refusals(&self, n: u32) {
        self.unrecorded.inc_by(u64::from(n));
    }

    /// One request answered.
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&Route {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// One audit append, durable or refused.
    pub fn audit_append(&self, took: Duration, ok: bool) {
        self.audit_append.observe(took.as_secs_f64());
        if !ok {
            self.audit_failures.inc();
        }
    }

    /// One on-demand fetch.
    pub fn fetch(&self, r: &FetchResult) {
        let result = match r {
            FetchResult::Found { .. } => "found",
            FetchResult::NotFound => "not_found",
            FetchResult::Withdrawn => "withdrawn",
            FetchResult::NotConnected => "link_down",
            FetchResult::TimedOut => "timed_out",
            FetchResult::Busy => "busy",
            FetchResult::Refused { .. } => "refused",
        };
        self.fetches.get_or_create(&FetchLabels { result }).inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Count and time every routed request (a `route_layer`, so the route is the template).
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let t0 = std::time::Instant::now();
    let resp = next.run(req).await;
    m.request(&route, resp.status().as_u16(), t0.elapsed());
    resp
}

/// `GET /metrics`
pub async fn metrics(State(s): State<super::AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_requests_latency_audit_and_fetches() {
        let status = Arc::new(Status::new(
            edge_proto::ids::DeviceId::parse("LAS-AMB-0001").unwrap(),
            edge_proto::ids::UnitRole::Vehicle,
        ));
        let m = Metrics::new(status, None, None);
        m.request("/v1/patients/{nhs}", 200, Duration::from_millis(3));
        m.request("/v1/patients/{nhs}", 200, Duration::from_millis(4));
        m.audit_append(Duration::from_micros(800), false);
        m.fetch(&FetchResult::TimedOut);
        let text = m.encode();
        assert!(
            text.contains(
                "kerbside_lan_requests_total{route=\"/v1/patients/{nhs}\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("kerbside_lan_request_seconds_count{route=\"/v1/patients/{nhs}\"} 2"));
        assert!(text.contains("kerbside_audit_append_failures_total 1"));
        assert!(text.contains("kerbside_fetches_total{result=\"timed_out\"} 1"));
        assert!(text.contains("kerbside_link_up 0"));
        assert!(text.contains("kerbside_sync_connects_total 0"));
        assert!(text.ends_with("# EOF\n"));
    }
}
