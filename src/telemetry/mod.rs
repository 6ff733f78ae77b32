//! Logging, traces and metrics set-up. Logs are structured (`tracing`, JSON by
//! default); when an OTLP endpoint is configured, spans become OpenTelemetry spans
//! and are exported (see [`trace`]); every metric instrument is declared in [`metrics`].

pub mod metrics;
pub mod trace;

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

use crate::config::{LogSettings, TracingSettings};

/// Installs the global subscriber (logs and OpenTelemetry spans) once; later calls
/// are no-ops, so tests may call it from every test. The returned guard flushes
/// exported spans when dropped; keep it until the process ends.
pub fn init(log: &LogSettings, tracing: &TracingSettings) -> anyhow::Result<trace::TraceGuard> {
    let (guard, tracer) = trace::tracer(tracing)?;
    let log_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(log.filter.as_str()));
    // Spans go nowhere without an exporter, and building them is a third of the
    // claim path's CPU: without `tracing.otlp_endpoint` no OpenTelemetry span is made.
    let spans = (!tracing.otlp_endpoint.trim().is_empty()).then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(EnvFilter::new(tracing.filter.as_str()))
    });
    let registry = tracing_subscriber::registry().with(spans);
    let _ = if log.format == "pretty" {
        registry
            .with(fmt::layer().with_target(true).with_filter(log_filter))
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_filter(log_filter),
            )
            .try_init()
    };
    Ok(guard)
}
