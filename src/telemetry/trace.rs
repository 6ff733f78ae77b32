//! OpenTelemetry traces: the tracer provider (sampling, optional OTLP/HTTP export)
//! and the W3C `traceparent` that carries a claim's trace through the Redis outbox
//! and Kafka into the persister's span.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TracingSettings;

/// Flushes and stops span export when dropped.
pub struct TraceGuard(Option<SdkTracerProvider>);

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            if let Err(err) = provider.shutdown() {
                eprintln!("flushing traces failed: {err}");
            }
        }
    }
}

/// The tracer behind every span, with a batch OTLP exporter when an endpoint is set.
pub fn tracer(settings: &TracingSettings) -> anyhow::Result<(TraceGuard, Tracer)> {
    if !(0.0..=1.0).contains(&settings.sample_ratio) {
        anyhow::bail!(
            "tracing.sample_ratio = {} is not within 0.0..=1.0",
            settings.sample_ratio
        );
    }
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        );
    let endpoint = settings.otlp_endpoint.trim();
    if !endpoint.is_empty() {
        let protocol = match settings.otlp_protocol.as_str() {
            "http/protobuf" => Protocol::HttpBinary,
            "http/json" => Protocol::HttpJson,
            other => anyhow::bail!(
                "tracing.otlp_protocol = {other:?}: expected \"http/protobuf\" or \"http/json\""
            ),
        };
        if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            anyhow::bail!("tracing.otlp_endpoint = {endpoint:?}: expected an http(s):// address");
        }
        let url = if endpoint.ends_with("/v1/traces") {
            endpoint.to_owned()
        } else {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(url)
            .with_timeout(Duration::from_millis(settings.otlp_timeout_ms))
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer("flashcoupon");
    Ok((TraceGuard(Some(provider)), tracer))
}

/// The W3C `traceparent` of `span`, or empty when the span is not being traced.
pub fn traceparent_of(span: &tracing::Span) -> String {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// The remote context a `traceparent` header names (empty context when malformed).
pub fn context_from(traceparent: &str) -> Context {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` a child of the caller's `traceparent`, if the caller sent a valid one.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    use opentelemetry::trace::TraceContextExt;
    let Some(tp) = traceparent else { return };
    let cx = context_from(tp);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_round_trips_and_a_malformed_one_is_ignored() {
        use opentelemetry::trace::TraceContextExt;
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = context_from(tp);
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_sampled());
        for bad in ["", "garbage", "00-0000-00f067aa0ba902b7-01"] {
            assert!(!context_from(bad).span().span_context().is_valid(), "{bad}");
        }
    }

    #[test]
    fn unknown_protocol_and_ratio_out_of_range_are_named() {
        let mut s = crate::config::Settings::defaults().tracing;
        s.sample_ratio = 1.5;
        let err = tracer(&s).err().unwrap().to_string();
        assert!(err.contains("1.5"), "{err}");
        s.sample_ratio = 1.0;
        s.otlp_endpoint = "http://127.0.0.1:4318".into();
        s.otlp_protocol = "grpc".into();
        let err = tracer(&s).err().unwrap().to_string();
        assert!(err.contains("grpc"), "{err}");
    }
}
