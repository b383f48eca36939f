//! The worker's Prometheus metrics (served on `--metrics-addr`). Label values are bounded:
//! outcomes are a fixed set, providers are the built-in names, and models are the first
//! [`MAX_MODELS`] seen (later ones are `other`).
//!
//! - claims: `agentplane_worker_claim_duration_seconds` (the claim transaction),
//!   `agentplane_worker_claim_batch_size` (tasks per claim), `agentplane_worker_claim_errors_total`;
//! - queue wait: `agentplane_worker_queue_wait_seconds` (from due to claimed);
//! - attempts: `agentplane_worker_attempts_total{outcome}`,
//!   `agentplane_worker_attempt_duration_seconds{outcome}`, `agentplane_worker_attempts_in_flight`;
//! - lease expiries: `agentplane_worker_lease_expiries_total` (expired leases this worker reaped);
//! - provider calls: `agentplane_worker_provider_call_duration_seconds{provider,model,result}`,
//!   `agentplane_worker_provider_time_to_first_token_seconds{provider,model}`,
//!   `agentplane_worker_provider_tokens_total{provider,model,kind}`,
//!   `agentplane_worker_provider_cost_micros_total{provider,model}`,
//!   `agentplane_worker_provider_unpriced_calls_total{provider,model}`,
//!   `agentplane_worker_provider_retries_total{provider,code}`;
//! - the database pool: `agentplane_db_pool_connections{state}`,
//!   `agentplane_db_pool_max_connections`.

use std::sync::{Arc, LazyLock};

use agentplane_telemetry::metrics::{BeforeScrape, BoundedLabel, LATENCY_BUCKETS, register};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use sqlx::PgPool;

/// Distinct model names kept as label values.
pub(crate) const MAX_MODELS: usize = 50;

/// The worker's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) claim_duration: Histogram,
    pub(crate) claim_batch_size: Histogram,
    pub(crate) claim_errors: IntCounter,
    pub(crate) queue_wait: Histogram,
    pub(crate) attempts: IntCounterVec,
    pub(crate) attempt_duration: HistogramVec,
    pub(crate) attempts_in_flight: IntGauge,
    pub(crate) lease_expiries: IntCounter,
    pub(crate) provider_call_duration: HistogramVec,
    pub(crate) provider_first_token: HistogramVec,
    pub(crate) provider_tokens: IntCounterVec,
    pub(crate) provider_cost_micros: IntCounterVec,
    pub(crate) provider_unpriced_calls: IntCounterVec,
    pub(crate) provider_retries: IntCounterVec,
    pub(crate) models: BoundedLabel,
    pool_connections: IntGaugeVec,
    pool_max: IntGauge,
}

/// The process's metrics (one registry, however many workers a test starts).
pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric"),
    )
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    register(
        registry,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        )
        .expect("valid metric"),
    )
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric"))
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        Self {
            claim_duration: histogram(
                &registry,
                "agentplane_worker_claim_duration_seconds",
                "Duration of one claim transaction",
                LATENCY_BUCKETS,
            ),
            claim_batch_size: histogram(
                &registry,
                "agentplane_worker_claim_batch_size",
                "Tasks claimed per claim transaction",
                &[
                    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0,
                ],
            ),
            claim_errors: counter(
                &registry,
                "agentplane_worker_claim_errors_total",
                "Claim transactions that failed",
            ),
            queue_wait: histogram(
                &registry,
                "agentplane_worker_queue_wait_seconds",
                "Time from a task being due to its claim",
                LATENCY_BUCKETS,
            ),
            attempts: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "agentplane_worker_attempts_total",
                        "Attempts ended, by outcome (succeeded, failed, retryable_failure, \
                         released, abandoned)",
                    ),
                    &["outcome"],
                )
                .expect("valid metric"),
            ),
            attempt_duration: histogram_vec(
                &registry,
                "agentplane_worker_attempt_duration_seconds",
                "Run time of an attempt, from claim to its ending, by outcome",
                &["outcome"],
            ),
            attempts_in_flight: register(
                &registry,
                IntGauge::new(
                    "agentplane_worker_attempts_in_flight",
                    "Attempts running on this worker",
                )
                .expect("valid metric"),
            ),
            lease_expiries: counter(
                &registry,
                "agentplane_worker_lease_expiries_total",
                "Expired leases this worker reaped (requeued or failed)",
            ),
            provider_call_duration: histogram_vec(
                &registry,
                "agentplane_worker_provider_call_duration_seconds",
                "Duration of a model call, by provider, model and result (ok, error)",
                &["provider", "model", "result"],
            ),
            provider_first_token: histogram_vec(
                &registry,
                "agentplane_worker_provider_time_to_first_token_seconds",
                "Time from a model call's start to its first streamed piece",
                &["provider", "model"],
            ),
            provider_tokens: counter_vec(
                &registry,
                "agentplane_worker_provider_tokens_total",
                "Tokens of finished model calls, by provider, model and kind (input and output \
                 totals; cache_read, cache_write and reasoning are parts of them)",
                &["provider", "model", "kind"],
            ),
            provider_cost_micros: counter_vec(
                &registry,
                "agentplane_worker_provider_cost_micros_total",
                "Cost of finished model calls in micro-dollars, by provider and model",
                &["provider", "model"],
            ),
            provider_unpriced_calls: counter_vec(
                &registry,
                "agentplane_worker_provider_unpriced_calls_total",
                "Finished model calls the price table has no price for (recorded at cost 0)",
                &["provider", "model"],
            ),
            provider_retries: counter_vec(
                &registry,
                "agentplane_worker_provider_retries_total",
                "Model calls retried within an attempt, by provider and failure code",
                &["provider", "code"],
            ),
            models: BoundedLabel::new(MAX_MODELS),
            pool_connections: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "agentplane_db_pool_connections",
                        "Database connections of the pool, by state (idle, in_use)",
                    ),
                    &["state"],
                )
                .expect("valid metric"),
            ),
            pool_max: register(
                &registry,
                IntGauge::new(
                    "agentplane_db_pool_max_connections",
                    "The pool's connection limit",
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }

    /// Copies the pool's statistics into the gauges; runs before each scrape.
    pub(crate) fn before_scrape(&'static self, pool: PgPool, max_connections: u32) -> BeforeScrape {
        Arc::new(move || {
            let size = i64::from(pool.size());
            let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
            self.pool_connections.with_label_values(&["idle"]).set(idle);
            self.pool_connections
                .with_label_values(&["in_use"])
                .set(size.saturating_sub(idle));
            self.pool_max.set(i64::from(max_connections));
            Box::pin(async {})
        })
    }
}
