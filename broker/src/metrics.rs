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
//! * `cleave_dimse_associations_total{outcome}`: `accepted` or `refused`.
//! * `cleave_audit_entries`: entries in the audit log; `cleave_audit_syslog_backlog`: those
//!   not yet sent to the ATNA collector (absent when forwarding is off). Read at scrape time.
//!
//! Labels are fixed strings chosen here, so their number is bounded whatever clients send.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
pub(crate) struct OutcomeLabel {
    pub outcome: &'static str,
}

/// The broker's metrics and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    pub http: Family<HttpLabels, Counter>,
    ingest: Family<IngestLabels, Counter>,
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
        let associations = Family::<OutcomeLabel, Counter>::default();
        registry.register("dimse_associations", "DICOM TLS associations, accepted or refused", associations.clone());
        let audit_entries = Gauge::default();
        registry.register("audit_entries", "Entries in the audit log", audit_entries.clone());
        let syslog_backlog = Gauge::default();
        if syslog {
            registry.register("audit_syslog_backlog", "Audit entries not yet sent to the ATNA collector", syslog_backlog.clone());
        }
        Metrics { registry, http, ingest, associations, audit_entries, syslog_backlog }
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
    }
}
