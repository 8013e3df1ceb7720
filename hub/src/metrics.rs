//! `/metrics` on the hub's admin listener: what an operator charts for the hub, in the
//! Prometheus / OpenMetrics text format (`prometheus-client`).
//!
//! * `kerbside_hub_units_connected` — units with a live sync session (read at scrape time).
//! * `kerbside_hub_feed_head` — the change feed's head sequence number (read at scrape time).
//! * `kerbside_hub_ingest_bundles_total{result="accepted"|"rejected"}` — FHIR bundles ingested
//!   over the admin API.
//! * `kerbside_hub_ingest_items_total{result="accepted"|"rejected"}` — the clinical items of
//!   those bundles (an item rejected alone: its subject was someone else).
//! * `kerbside_hub_audit_events_stored_total`, `kerbside_hub_audit_duplicates_total`,
//!   `kerbside_hub_audit_problems_total` — audit uploads from units (problems: chain breaks,
//!   gaps, conflicting replays, events of another device, bad hashes).
//! * `kerbside_hub_fetches_total{outcome="found"|"not_found"|"withdrawn"}` — on-demand fetches
//!   answered.
//! * `kerbside_hub_units_refused_total` — unit connections refused (unknown or revoked unit).
//! * `kerbside_hub_fetches_refused_total{reason}` — on-demand fetches the hub refused, reading
//!   nothing (`no_token`, `bad_token`, `wrong_unit`, `denied_token`, `role`, `fetch_ceiling`,
//!   `audit_unavailable`).
//! * `kerbside_hub_fetch_alerts_total{kind="fetch_over_budget"|"fetch_ceiling"}` — fetch-budget
//!   alerts raised.
//! * `kerbside_hub_sessions_closed_total{reason="revoked"|"wiped"|"superseded"}` — live sync
//!   connections the hub closed itself (a revoked or wiped unit, or the older of two sessions
//!   on one unit certificate).
//! * `kerbside_hub_admin_requests_total{route,status}` — admin API requests by matched route
//!   template and HTTP status.
//!
//! Labels never carry an NHS number, a staff id or a device id.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use edge_proto::sync::FetchOutcome;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::server::Hub;
use crate::store::IngestReport;

/// The OpenMetrics text content type `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The hub's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    units_connected: Gauge,
    feed_head: Gauge,
    crl_expired: Gauge,
    bundles: Family<ResultLabel, Counter>,
    items: Family<ResultLabel, Counter>,
    audit_stored: Counter,
    audit_duplicates: Counter,
    audit_problems: Counter,
    fetches: Family<OutcomeLabel, Counter>,
    refused: Counter,
    admin_requests: Family<RouteStatus, Counter>,
    fetches_refused: Family<ReasonLabel, Counter>,
    fetch_alerts: Family<KindLabel, Counter>,
    sessions_closed: Family<ReasonLabel, Counter>,
    renewals: Family<ReasonLabel, Counter>,
    renewal_ca_expires: Gauge,
    prefetches: Family<ReasonLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, every counter at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let units_connected = Gauge::default();
        let feed_head = Gauge::default();
        let crl_expired = Gauge::default();
        registry.register(
            "kerbside_hub_crl_expired",
            "1 when the fleet CRL the hub enforces is past its nextUpdate (re-sign it with `edge-provision crl`).",
            crl_expired.clone(),
        );
        let bundles = Family::<ResultLabel, Counter>::default();
        let items = Family::<ResultLabel, Counter>::default();
        let audit_stored = Counter::default();
        let audit_duplicates = Counter::default();
        let audit_problems = Counter::default();
        let fetches = Family::<OutcomeLabel, Counter>::default();
        let refused = Counter::default();
        let admin_requests = Family::<RouteStatus, Counter>::default();
        let fetches_refused = Family::<ReasonLabel, Counter>::default();
        let fetch_alerts = Family::<KindLabel, Counter>::default();
        let sessions_closed = Family::<ReasonLabel, Counter>::default();
        let renewals = Family::<ReasonLabel, Counter>::default();
        let renewal_ca_expires = Gauge::default();
        let prefetches = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "kerbside_hub_prefetches",
            "ED-kiosk pre-fetches: per kiosk queued, pending (kiosk not connected) and delivered; per conveyance why nothing was pushed.",
            prefetches.clone(),
        );
        registry.register(
            "kerbside_hub_cert_renewals",
            "Unit certificate renewals asked of the hub over the sync, by result (renewed, or why refused).",
            renewals.clone(),
        );
        registry.register(
            "kerbside_hub_renewal_ca_expiry_seconds",
            "Seconds until the hub's renewal CA expires (0 without one); replace it well before (`edge-provision ca renewal-ca --force`).",
            renewal_ca_expires.clone(),
        );
        registry.register(
            "kerbside_hub_fetches_refused",
            "On-demand fetches the hub refused, reading nothing, by reason.",
            fetches_refused.clone(),
        );
        registry.register(
            "kerbside_hub_fetch_alerts",
            "Fetch-budget alerts raised, by kind.",
            fetch_alerts.clone(),
        );
        registry.register(
            "kerbside_hub_sessions_closed",
            "Live sync connections the hub closed itself (revoked, wiped, superseded).",
            sessions_closed.clone(),
        );
        registry.register(
            "kerbside_hub_units_connected",
            "Units with a live sync session.",
            units_connected.clone(),
        );
        registry.register(
            "kerbside_hub_feed_head",
            "The change feed's head sequence number.",
            feed_head.clone(),
        );
        registry.register(
            "kerbside_hub_ingest_bundles",
            "FHIR bundles ingested over the admin API, by result.",
            bundles.clone(),
        );
        registry.register(
            "kerbside_hub_ingest_items",
            "Clinical items of ingested bundles, by result (rejected: an item about someone else, refused alone).",
            items.clone(),
        );
        registry.register(
            "kerbside_hub_audit_events_stored",
            "Audit events uploaded by units and stored durably (new, not replays).",
            audit_stored.clone(),
        );
        registry.register(
            "kerbside_hub_audit_duplicates",
            "Audit events uploaded again that were already stored (idempotent replays).",
            audit_duplicates.clone(),
        );
        registry.register(
            "kerbside_hub_audit_problems",
            "Audit problems found on arrival: chain breaks, gaps, conflicting replays, foreign or bad events.",
            audit_problems.clone(),
        );
        registry.register(
            "kerbside_hub_fetches",
            "On-demand fetches answered to units, by outcome.",
            fetches.clone(),
        );
        registry.register(
            "kerbside_hub_units_refused",
            "Unit connections refused (unknown to the fleet inventory, or revoked).",
            refused.clone(),
        );
        registry.register(
            "kerbside_hub_admin_requests",
            "Admin API requests answered, by route template and HTTP status.",
            admin_requests.clone(),
        );
        // Every result label exists from the start, so a chart shows 0 rather than nothing.
        for result in ["accepted", "rejected"] {
            let _ = bundles.get_or_create(&ResultLabel { result });
            let _ = items.get_or_create(&ResultLabel { result });
        }
        for outcome in ["found", "not_found", "withdrawn"] {
            let _ = fetches.get_or_create(&OutcomeLabel { outcome });
        }
        Metrics {
            registry,
            units_connected,
            feed_head,
            crl_expired,
            bundles,
            items,
            audit_stored,
            audit_duplicates,
            audit_problems,
            fetches,
            refused,
            admin_requests,
            fetches_refused,
            fetch_alerts,
            sessions_closed,
            renewals,
            renewal_ca_expires,
            prefetches,
        }
    }

    /// One pre-fetch step (`queued`, `pending`, `delivered`) or why a conveyance pushed nothing.
    pub fn prefetch(&self, reason: &'static str) {
        self.prefetches.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// One certificate renewal asked for: `renewed` or the refusal's reason.
    pub fn renewal(&self, reason: &'static str) {
        self.renewals.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Seconds left on the hub's renewal CA.
    pub fn set_renewal_ca_expiry(&self, seconds: i64) {
        self.renewal_ca_expires.set(seconds.max(0));
    }

    /// One ingest over the admin API.
    pub fn ingest(&self, report: &IngestReport) {
        let alone = report.rejected.iter().filter(|r| r.entry.is_some()).count() as u64;
        let whole = report.rejected.len() as u64 - alone;
        self.count(&self.bundles, "accepted", report.accepted);
        self.count(&self.bundles, "rejected", whole);
        self.count(&self.items, "accepted", report.items_accepted);
        self.count(&self.items, "rejected", alone);
    }

    fn count(&self, family: &Family<ResultLabel, Counter>, result: &'static str, n: u64) {
        family.get_or_create(&ResultLabel { result }).inc_by(n);
    }

    /// One audit upload stored.
    pub fn audit(&self, new: u64, duplicates: u64, problems: usize) {
        self.audit_stored.inc_by(new);
        self.audit_duplicates.inc_by(duplicates);
        self.audit_problems.inc_by(problems as u64);
    }

    /// One on-demand fetch answered.
    pub fn fetch(&self, outcome: &FetchOutcome) {
        let outcome = match outcome {
            FetchOutcome::Found { .. } => "found",
            FetchOutcome::NotFound => "not_found",
            FetchOutcome::Withdrawn => "withdrawn",
            FetchOutcome::Refused { reason } => {
                self.fetches_refused
                    .get_or_create(&ReasonLabel {
                        reason: reason.as_str(),
                    })
                    .inc();
                "refused"
            }
        };
        self.fetches.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// One fetch-budget alert raised.
    pub fn fetch_alert(&self, kind: &'static str) {
        self.fetch_alerts.get_or_create(&KindLabel { kind }).inc();
    }

    /// One live sync connection closed by the hub (`revoked`, `wiped`, `superseded`).
    pub fn session_closed(&self, reason: &'static str) {
        self.sessions_closed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// One unit connection refused.
    pub fn refused(&self) {
        self.refused.inc();
    }

    /// One admin request answered.
    pub fn admin_request(&self, route: &str, status: u16) {
        self.admin_requests
            .get_or_create(&RouteStatus {
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    /// The text exposition, with the scrape-time gauges set first.
    pub fn encode(&self, units_connected: usize, feed_head: u64, crl_expired: bool) -> String {
        self.crl_expired.set(i64::from(crl_expired));
        self.units_connected
            .set(i64::try_from(units_connected).unwrap_or(i64::MAX));
        self.feed_head
            .set(i64::try_from(feed_head).unwrap_or(i64::MAX));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Count every routed admin request (a `route_layer`, so the route is the matched template).
pub async fn track(State(hub): State<Arc<Hub>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    hub.metrics.admin_request(&route, resp.status().as_u16());
    resp
}
