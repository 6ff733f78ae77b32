//! The root span of every HTTP request (tracing-actix-web's, named after the route),
//! continuing the caller's W3C trace when it sent a `traceparent` header. A claim's
//! trace then goes on through the outbox and Kafka into the persister.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderName;
use actix_web::Error;
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};

use crate::telemetry::trace;

pub struct RequestSpan;

/// Built once (by `&str`, actix would copy the name on every request).
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let span = tracing_actix_web::root_span!(level = tracing::Level::INFO, request);
        let caller = request
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok());
        trace::continue_trace(&span, caller);
        span
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}
