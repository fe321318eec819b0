//! Prometheus metrics: names, labels and buckets as documented constants,
//! registered once in a [`Metrics`] that owns its [`Registry`].
//!
//! Each agent has its own registry (not the process-global default) so tests
//! can run several agents in one process. Names follow
//! `callosum_<what>_<unit>`, `_total` for counters, base units (seconds,
//! bytes). Labels are low-cardinality: a pipeline name, a store name, an
//! error kind. METRICS.md at the repository root says what each metric
//! answers.
//!
//! The hot path resolves label values once: take a [`PipelineMetrics`] with
//! [`Metrics::pipeline`] or a [`StoreMetrics`] with [`Metrics::store`] when a
//! worker starts and update its handles directly. Taking the handles also
//! creates the series at zero, so dashboards and alerts see them before the
//! first event.

use callosum_api::ErrorKind;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Label naming a pipeline (`[[pipelines]] name`).
pub const LABEL_PIPELINE: &str = "pipeline";
/// Label naming a store (`[stores.<name>]`).
pub const LABEL_STORE: &str = "store";
/// Label naming where an error or retry happened: a pipeline name (sink
/// side: reading the log, mapping, applying) or a store name (source side:
/// capturing into the log).
pub const LABEL_COMPONENT: &str = "component";
/// Label of an error's kind, [`ErrorKind::label`].
pub const LABEL_KIND: &str = "kind";
/// Label of [`PIPELINE_STATE`]: a pipeline state's lowercase name.
pub const LABEL_STATE: &str = "state";

/// Counter `{store}`: row changes captured from the store and durably
/// appended to its change log.
pub const SOURCE_EVENTS_TOTAL: &str = "callosum_source_events_total";
/// Counter `{pipeline}`: row changes committed in the target.
pub const APPLIED_EVENTS_TOTAL: &str = "callosum_applied_events_total";
/// Counter `{pipeline}`: source transactions committed in the target.
pub const APPLIED_TRANSACTIONS_TOTAL: &str = "callosum_applied_transactions_total";
/// Gauge `{pipeline}`, seconds: age of the oldest committed source change
/// not yet applied; 0 when caught up.
pub const LAG_SECONDS: &str = "callosum_lag_seconds";
/// Gauge `{pipeline}`: events in the change log not yet applied.
pub const LOG_PENDING_EVENTS: &str = "callosum_log_pending_events";
/// Gauge `{pipeline}`: transactions in the dead-letter queue.
pub const DEAD_LETTER_EVENTS: &str = "callosum_dead_letter_events";
/// Histogram `{pipeline}`, seconds: duration of one target transaction
/// (begin → commit).
pub const APPLY_BATCH_DURATION_SECONDS: &str = "callosum_apply_batch_duration_seconds";
/// Histogram `{pipeline}`, seconds: source commit → target commit, per
/// source transaction.
pub const END_TO_END_LATENCY_SECONDS: &str = "callosum_end_to_end_latency_seconds";
/// Gauge `{store}`, bytes: PostgreSQL server WAL position minus the slot's
/// confirmed position.
pub const SOURCE_LAG_BYTES: &str = "callosum_source_lag_bytes";
/// Counter `{component, kind}`: errors, transient or permanent.
pub const ERRORS_TOTAL: &str = "callosum_errors_total";
/// Counter `{component}`: retries after a transient error.
pub const RETRIES_TOTAL: &str = "callosum_retries_total";
/// `pipeline`, `state`: 1 for the state `/status` shows, 0 for the others.
pub const PIPELINE_STATE: &str = "callosum_pipeline_state";
/// Label naming this agent as a lease holder (`[lease] holder`).
pub const LABEL_HOLDER: &str = "holder";
/// Gauge `{holder}`: 1 while this agent holds the lease and applies, 0 while
/// it is a standby. Only with `[lease]`.
pub const LEASE_ACTIVE: &str = "callosum_lease_active";
/// Gauge: the epoch of this agent's lease (0 while a standby that never
/// held it). Only with `[lease]`.
pub const LEASE_EPOCH: &str = "callosum_lease_epoch";

/// Buckets of [`APPLY_BATCH_DURATION_SECONDS`]: 1 ms to 10 s.
pub const APPLY_BATCH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of [`END_TO_END_LATENCY_SECONDS`]: 1 ms to 60 s (the 50 ms p99
/// target falls between two fine buckets).
pub const END_TO_END_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Every Callosum metric, registered in its own registry.
///
/// Cloning the vectors is cheap (they are reference-counted); share the
/// whole struct behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    pub source_events_total: IntCounterVec,
    pub applied_events_total: IntCounterVec,
    pub applied_transactions_total: IntCounterVec,
    pub lag_seconds: GaugeVec,
    pub log_pending_events: IntGaugeVec,
    pub dead_letter_events: IntGaugeVec,
    pub apply_batch_duration_seconds: HistogramVec,
    pub end_to_end_latency_seconds: HistogramVec,
    pub source_lag_bytes: IntGaugeVec,
    pub errors_total: IntCounterVec,
    pub retries_total: IntCounterVec,
    pub pipeline_state: IntGaugeVec,
    pub lease_active: IntGaugeVec,
    pub lease_epoch: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn int_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = HistogramVec::new(opts, labels).expect("valid histogram");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

impl Metrics {
    /// Creates a fresh registry with every Callosum metric and, on Linux, the
    /// process metrics (`process_cpu_seconds_total`,
    /// `process_resident_memory_bytes`, …).
    ///
    /// Panics only on a programming error (an invalid or duplicate metric
    /// definition), which the unit tests catch.
    pub fn new() -> Self {
        let r = Registry::new();
        let pipeline = &[LABEL_PIPELINE];
        let store = &[LABEL_STORE];
        let metrics = Self {
            source_events_total: counter(
                &r,
                SOURCE_EVENTS_TOTAL,
                "Row changes captured from the store and durably appended to its change log.",
                store,
            ),
            applied_events_total: counter(
                &r,
                APPLIED_EVENTS_TOTAL,
                "Row changes committed in the pipeline's target.",
                pipeline,
            ),
            applied_transactions_total: counter(
                &r,
                APPLIED_TRANSACTIONS_TOTAL,
                "Source transactions committed in the pipeline's target.",
                pipeline,
            ),
            lag_seconds: {
                let metric = GaugeVec::new(
                    Opts::new(
                        LAG_SECONDS,
                        "Age in seconds of the oldest committed source change not yet applied; 0 when caught up.",
                    ),
                    pipeline,
                )
                .expect("valid gauge");
                r.register(Box::new(metric.clone()))
                    .expect("metric registered once");
                metric
            },
            log_pending_events: int_gauge(
                &r,
                LOG_PENDING_EVENTS,
                "Row changes in the change log not yet applied by the pipeline.",
                pipeline,
            ),
            dead_letter_events: int_gauge(
                &r,
                DEAD_LETTER_EVENTS,
                "Transactions in the pipeline's dead-letter queue.",
                pipeline,
            ),
            apply_batch_duration_seconds: histogram(
                &r,
                APPLY_BATCH_DURATION_SECONDS,
                "Duration in seconds of one target transaction, begin to commit.",
                pipeline,
                APPLY_BATCH_BUCKETS,
            ),
            end_to_end_latency_seconds: histogram(
                &r,
                END_TO_END_LATENCY_SECONDS,
                "Seconds from a transaction's source commit to its target commit.",
                pipeline,
                END_TO_END_BUCKETS,
            ),
            source_lag_bytes: int_gauge(
                &r,
                SOURCE_LAG_BYTES,
                "PostgreSQL: bytes of WAL between the server's current position and the slot's confirmed position.",
                store,
            ),
            errors_total: counter(
                &r,
                ERRORS_TOTAL,
                "Errors by component (pipeline or store name) and kind.",
                &[LABEL_COMPONENT, LABEL_KIND],
            ),
            retries_total: counter(
                &r,
                RETRIES_TOTAL,
                "Retries after a transient error, by component (pipeline or store name).",
                &[LABEL_COMPONENT],
            ),
            pipeline_state: int_gauge(
                &r,
                PIPELINE_STATE,
                "1 for the pipeline's current state as /status shows it (starting, streaming, retrying, halted, stopped, standby), 0 for the others.",
                &[LABEL_PIPELINE, LABEL_STATE],
            ),
            lease_active: int_gauge(
                &r,
                LEASE_ACTIVE,
                "1 while this agent holds the lease and applies, 0 while it is a standby.",
                &[LABEL_HOLDER],
            ),
            lease_epoch: {
                let metric = IntGauge::new(
                    LEASE_EPOCH,
                    "Epoch of this agent's lease; every target transaction it commits carries it.",
                )
                .expect("valid gauge");
                r.register(Box::new(metric.clone()))
                    .expect("metric registered once");
                metric
            },
            registry: r,
        };
        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registered once");
        metrics
    }

    /// Sets [`PIPELINE_STATE`]: for each `(pipeline, state)`, 1 for `state`
    /// and 0 for every other of `all_states`, so that each pipeline has one
    /// series per state and an alert can match `state="halted"`.
    pub fn set_pipeline_states<'a>(
        &self,
        pipelines: impl IntoIterator<Item = (&'a str, &'a str)>,
        all_states: &[&str],
    ) {
        for (pipeline, current) in pipelines {
            for state in all_states {
                self.pipeline_state
                    .with_label_values(&[pipeline, state])
                    .set(i64::from(*state == current));
            }
        }
    }

    /// The registry holding every metric, to register more collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The handles of pipeline `name`; creates its series at zero.
    pub fn pipeline(&self, name: &str) -> PipelineMetrics {
        let labels = &[name];
        PipelineMetrics {
            name: name.to_owned(),
            applied_events: self.applied_events_total.with_label_values(labels),
            applied_transactions: self.applied_transactions_total.with_label_values(labels),
            lag_seconds: self.lag_seconds.with_label_values(labels),
            log_pending_events: self.log_pending_events.with_label_values(labels),
            dead_letter_events: self.dead_letter_events.with_label_values(labels),
            apply_batch_duration: self.apply_batch_duration_seconds.with_label_values(labels),
            end_to_end_latency: self.end_to_end_latency_seconds.with_label_values(labels),
            retries: self.retries_total.with_label_values(labels),
            errors: self.errors_for(name),
        }
    }

    /// `callosum_errors_total` with a zero series of every kind for
    /// `component`, so that the first error is an increase and not a new
    /// series that `rate()` and `increase()` would miss.
    fn errors_for(&self, component: &str) -> IntCounterVec {
        for kind in ErrorKind::ALL {
            self.errors_total
                .with_label_values(&[component, kind.label()]);
        }
        self.errors_total.clone()
    }

    /// The handles of store `name`; creates its series at zero.
    pub fn store(&self, name: &str) -> StoreMetrics {
        let labels = &[name];
        StoreMetrics {
            name: name.to_owned(),
            source_events: self.source_events_total.with_label_values(labels),
            source_lag_bytes: self.source_lag_bytes.with_label_values(labels),
            retries: self.retries_total.with_label_values(labels),
            errors: self.errors_for(name),
        }
    }

    /// Counts one error of `kind` in `component` (a pipeline or store name).
    pub fn record_error(&self, component: &str, kind: ErrorKind) {
        self.errors_total
            .with_label_values(&[component, kind.label()])
            .inc();
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let families = self.registry.gather();
        let mut buffer = Vec::new();
        // Encoding gathered families into memory only fails on invalid
        // families, which registration already rejected.
        if let Err(err) = TextEncoder::new().encode(&families, &mut buffer) {
            tracing::error!(error = %err, "failed to encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// One pipeline's metric handles (label values resolved once).
#[derive(Clone)]
pub struct PipelineMetrics {
    name: String,
    /// [`APPLIED_EVENTS_TOTAL`].
    pub applied_events: IntCounter,
    /// [`APPLIED_TRANSACTIONS_TOTAL`].
    pub applied_transactions: IntCounter,
    /// [`LAG_SECONDS`].
    pub lag_seconds: Gauge,
    /// [`LOG_PENDING_EVENTS`].
    pub log_pending_events: IntGauge,
    /// [`DEAD_LETTER_EVENTS`].
    pub dead_letter_events: IntGauge,
    /// [`APPLY_BATCH_DURATION_SECONDS`].
    pub apply_batch_duration: Histogram,
    /// [`END_TO_END_LATENCY_SECONDS`].
    pub end_to_end_latency: Histogram,
    /// [`RETRIES_TOTAL`] with `component` = this pipeline.
    pub retries: IntCounter,
    errors: IntCounterVec,
}

impl std::fmt::Debug for PipelineMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineMetrics")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PipelineMetrics {
    /// Counts one error of `kind` in this pipeline ([`ERRORS_TOTAL`]).
    pub fn record_error(&self, kind: ErrorKind) {
        self.errors
            .with_label_values(&[self.name.as_str(), kind.label()])
            .inc();
    }

    /// Records one applied source transaction: its events, and the latency
    /// from its source commit (`commit_time_micros`, as in
    /// `TransactionMeta`) to `now_micros` (the target commit), both
    /// microseconds since the Unix epoch. A negative latency (clock skew
    /// between hosts) is recorded as 0.
    pub fn record_applied_transaction(
        &self,
        events: u64,
        commit_time_micros: i64,
        now_micros: i64,
    ) {
        self.applied_transactions.inc();
        self.applied_events.inc_by(events);
        let latency = now_micros.saturating_sub(commit_time_micros).max(0) as f64 / 1e6;
        self.end_to_end_latency.observe(latency);
    }
}

/// One store's metric handles (label values resolved once).
#[derive(Clone)]
pub struct StoreMetrics {
    name: String,
    /// [`SOURCE_EVENTS_TOTAL`].
    pub source_events: IntCounter,
    /// [`SOURCE_LAG_BYTES`].
    pub source_lag_bytes: IntGauge,
    /// [`RETRIES_TOTAL`] with `component` = this store.
    pub retries: IntCounter,
    errors: IntCounterVec,
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreMetrics")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl StoreMetrics {
    /// Counts one error of `kind` in this store's capture ([`ERRORS_TOTAL`]).
    pub fn record_error(&self, kind: ErrorKind) {
        self.errors
            .with_label_values(&[self.name.as_str(), kind.label()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[&str] = &[
        SOURCE_EVENTS_TOTAL,
        APPLIED_EVENTS_TOTAL,
        APPLIED_TRANSACTIONS_TOTAL,
        LAG_SECONDS,
        LOG_PENDING_EVENTS,
        DEAD_LETTER_EVENTS,
        APPLY_BATCH_DURATION_SECONDS,
        END_TO_END_LATENCY_SECONDS,
        SOURCE_LAG_BYTES,
        ERRORS_TOTAL,
        RETRIES_TOTAL,
        PIPELINE_STATE,
    ];

    #[test]
    fn names_follow_the_convention() {
        for name in ALL {
            assert!(name.starts_with("callosum_"), "{name}");
        }
        for window in [APPLY_BATCH_BUCKETS, END_TO_END_BUCKETS] {
            assert_eq!(window[0], 0.001);
            assert!(window.windows(2).all(|w| w[0] < w[1]));
        }
        assert_eq!(*APPLY_BATCH_BUCKETS.last().unwrap(), 10.0);
        assert_eq!(*END_TO_END_BUCKETS.last().unwrap(), 60.0);
    }

    #[test]
    fn encode_contains_every_metric_after_use() {
        let metrics = Metrics::new();
        let pipeline = metrics.pipeline("crm_to_erp");
        let store = metrics.store("crm");
        store.source_events.inc_by(3);
        store.source_lag_bytes.set(4096);
        store.retries.inc();
        store.record_error(ErrorKind::Connection);
        pipeline.record_applied_transaction(3, 1_000_000, 1_020_000);
        pipeline.lag_seconds.set(1.5);
        pipeline.log_pending_events.set(7);
        pipeline.dead_letter_events.set(1);
        pipeline.apply_batch_duration.observe(0.02);
        pipeline.record_error(ErrorKind::Constraint);
        metrics.record_error("crm_to_erp", ErrorKind::Constraint);
        metrics.set_pipeline_states([("crm_to_erp", "streaming")], &["streaming", "halted"]);

        let text = metrics.encode();
        for name in ALL {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing in\n{text}"
            );
        }
        for line in [
            "callosum_source_events_total{store=\"crm\"} 3",
            "callosum_source_lag_bytes{store=\"crm\"} 4096",
            "callosum_applied_events_total{pipeline=\"crm_to_erp\"} 3",
            "callosum_applied_transactions_total{pipeline=\"crm_to_erp\"} 1",
            "callosum_lag_seconds{pipeline=\"crm_to_erp\"} 1.5",
            "callosum_log_pending_events{pipeline=\"crm_to_erp\"} 7",
            "callosum_dead_letter_events{pipeline=\"crm_to_erp\"} 1",
            "callosum_errors_total{component=\"crm_to_erp\",kind=\"constraint\"} 2",
            "callosum_errors_total{component=\"crm\",kind=\"connection\"} 1",
            "callosum_retries_total{component=\"crm\"} 1",
            "callosum_end_to_end_latency_seconds_bucket{pipeline=\"crm_to_erp\",le=\"0.025\"} 1",
            "callosum_end_to_end_latency_seconds_bucket{pipeline=\"crm_to_erp\",le=\"0.01\"} 0",
            "callosum_apply_batch_duration_seconds_count{pipeline=\"crm_to_erp\"} 1",
        ] {
            assert!(text.contains(line), "`{line}` missing in\n{text}");
        }
        assert!(text.contains("# TYPE callosum_apply_batch_duration_seconds histogram"));
        assert!(text.contains("# TYPE callosum_lag_seconds gauge"));
        assert!(text.contains("# TYPE callosum_errors_total counter"));
    }

    #[test]
    fn series_exist_at_zero_once_handles_are_taken() {
        let metrics = Metrics::new();
        let _pipeline = metrics.pipeline("p1");
        let text = metrics.encode();
        assert!(
            text.contains("callosum_applied_events_total{pipeline=\"p1\"} 0"),
            "{text}"
        );
        for kind in ErrorKind::ALL {
            let line = format!(
                "callosum_errors_total{{component=\"p1\",kind=\"{}\"}} 0",
                kind.label()
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(
            text.contains("callosum_retries_total{component=\"p1\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn negative_latency_is_recorded_as_zero() {
        let metrics = Metrics::new();
        let pipeline = metrics.pipeline("p");
        pipeline.record_applied_transaction(1, 2_000_000, 1_000_000);
        assert_eq!(pipeline.end_to_end_latency.get_sample_sum(), 0.0);
    }

    #[test]
    fn several_registries_coexist() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.pipeline("p").applied_events.inc();
        assert!(a
            .encode()
            .contains("callosum_applied_events_total{pipeline=\"p\"} 1"));
        assert!(!b.encode().contains("pipeline=\"p\""));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_registered() {
        let text = Metrics::new().encode();
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
