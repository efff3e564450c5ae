//! Operational metrics for the hospital's monitoring (Prometheus, OpenMetrics text), served at
//! `GET /api/v1/metrics` to the IT administrator's token.
//!
//! What is counted, and why each label cannot carry PHI:
//!
//! * `cleave_http_requests_total{route, method, status}`: every routed HTTPS request. `route`
//!   is the route *template* (`/dicomweb/studies/{study}`), never the path with its UIDs;
//!   `method` is one of the methods the router knows (anything else is `other`).
//! * `cleave_ingest_instances_total{via, outcome}`: instances offered by STOW-RS or DIMSE
//!   C-STORE, by outcome (`stored`, `bad-object`, `storage-failure`, `not-authorized`).
//! * `cleave_ingest_phase_seconds{via, phase}`: a histogram of how long each step of a
//!   stored instance took: `receive` (reading, de-identifying and sealing it as it arrives,
//!   so it includes the sender's own pace), `vault` (match and durable study link),
//!   `blob_sync` (the blob made durable), `index` (the clinical index's durable commit),
//!   `audit` (the audit entry's durable append). The last four are what a sender waits for
//!   after its last byte, and show what the storage's fsyncs cost.
//! * `cleave_dimse_associations_total{outcome}`: `accepted` or `refused`.
//! * `cleave_audit_entries`: entries in the audit log; `cleave_audit_syslog_backlog`: those
//!   not yet sent to the ATNA collector (absent when forwarding is off). Read at scrape time.
//!
//! Labels are fixed strings chosen here, so their number is bounded whatever clients send.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct IngestLabels {
    pub via: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PhaseLabels {
    pub via: &'static str,
    pub phase: &'static str,
}

/// Bucket bounds in seconds: from a fast disk's fsync (100 µs) to a large instance's receive.
const PHASE_BUCKETS: [f64; 18] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

fn phase_histogram() -> Histogram {
    Histogram::new(PHASE_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub outcome: &'static str,
}

/// The broker's metrics and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    pub http: Family<HttpLabels, Counter>,
    ingest: Family<IngestLabels, Counter>,
    phases: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    associations: Family<OutcomeLabel, Counter>,
    audit_entries: Gauge,
    syslog_backlog: Gauge,
}

impl Metrics {
    pub(crate) fn new(syslog: bool) -> Self {
        let mut registry = Registry::with_prefix("cleave");
        let http = Family::<HttpLabels, Counter>::default();
        registry.register("http_requests", "HTTPS requests by route template, method and status", http.clone());
        let ingest = Family::<IngestLabels, Counter>::default();
        registry.register("ingest_instances", "Instances offered by STOW-RS or DIMSE C-STORE, by outcome", ingest.clone());
        let phases = Family::<PhaseLabels, Histogram, fn() -> Histogram>::new_with_constructor(phase_histogram as fn() -> Histogram);
        registry.register("ingest_phase_seconds", "Time each step of a stored instance took", phases.clone());
        let associations = Family::<OutcomeLabel, Counter>::default();
        registry.register("dimse_associations", "DICOM TLS associations, accepted or refused", associations.clone());
        let audit_entries = Gauge::default();
        registry.register("audit_entries", "Entries in the audit log", audit_entries.clone());
        let syslog_backlog = Gauge::default();
        if syslog {
            registry.register("audit_syslog_backlog", "Audit entries not yet sent to the ATNA collector", syslog_backlog.clone());
        }
        Metrics { registry, http, ingest, phases, associations, audit_entries, syslog_backlog }
    }

    /// The OpenMetrics text, with the gauges read now.
    pub(crate) fn encode(&self, audit_entries: u64, syslog_next: Option<u64>) -> Result<String, std::fmt::Error> {
        self.audit_entries.set(i64::try_from(audit_entries).unwrap_or(i64::MAX));
        if let Some(next) = syslog_next {
            self.syslog_backlog.set(i64::try_from(audit_entries.saturating_sub(next)).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Counts one instance offered for ingest.
    pub(crate) fn ingested(&self, via: &'static str, outcome: &'static str) {
        self.ingest.get_or_create(&IngestLabels { via, outcome }).inc();
    }

    /// Records the steps of one stored instance, and the time its audit entry took.
    pub(crate) fn ingest_phases(&self, via: &'static str, t: &crate::ingest::Timings, audit: std::time::Duration) {
        for (phase, d) in [("receive", t.receive), ("vault", t.vault), ("blob_sync", t.blob_sync), ("index", t.index), ("audit", audit)] {
            self.phases.get_or_create(&PhaseLabels { via, phase }).observe(d.as_secs_f64());
        }
    }

    /// Counts one DICOM TLS association decision.
    pub(crate) fn association(&self, outcome: &'static str) {
        self.associations.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

/// An HTTP method as a bounded label value.
pub(crate) fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_counters_and_gauges_with_their_labels() {
        let m = Metrics::new(true);
        m.http.get_or_create(&HttpLabels { route: "/dicomweb/studies/{study}".into(), method: "GET", status: 200 }).inc();
        m.ingested("dimse", "stored");
        let text = m.encode(10, Some(7)).unwrap();
        assert!(text.contains(r#"cleave_http_requests_total{route="/dicomweb/studies/{study}",method="GET",status="200"} 1"#), "{text}");
        assert!(text.contains(r#"cleave_ingest_instances_total{via="dimse",outcome="stored"} 1"#), "{text}");
        assert!(text.contains("cleave_audit_entries 10") && text.contains("cleave_audit_syslog_backlog 3"), "{text}");
        assert!(!Metrics::new(false).encode(1, None).unwrap().contains("syslog"));
        let t = crate::ingest::Timings {
            receive: std::time::Duration::from_millis(3),
            vault: std::time::Duration::from_micros(300),
            blob_sync: std::time::Duration::from_micros(200),
            index: std::time::Duration::from_micros(150),
        };
        m.ingest_phases("dimse", &t, std::time::Duration::from_micros(120));
        let text = m.encode(10, Some(7)).unwrap();
        assert!(text.contains(r#"cleave_ingest_phase_seconds_count{via="dimse",phase="receive"} 1"#), "{text}");
        assert!(text.contains(r#"cleave_ingest_phase_seconds_bucket{le="0.00025",via="dimse",phase="blob_sync"} 1"#), "{text}");
        assert!(text.contains(r#"cleave_ingest_phase_seconds_bucket{le="0.0001",via="dimse",phase="audit"} 0"#), "{text}");
    }
}
