//! The root span of every HTTP request, named after the route, continuing the caller's
//! W3C trace when it sent a `traceparent` header (a claim's trace then goes on through
//! the outbox and Kafka into the persister). It finds the route template once per
//! request ([`MatchedRoute`]), for the span and for `http_server_request_duration_seconds`,
//! and fills the span's other fields only when a subscriber records the span.

use std::collections::HashSet;
use std::sync::{OnceLock, PoisonError, RwLock};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, USER_AGENT};
use actix_web::http::{Method, Version};
use actix_web::{Error, HttpMessage};
use tracing::field::{display, Empty};
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder};

use crate::telemetry::trace;

pub struct RequestSpan;

/// Built once (by `&str`, actix would copy the name on every request).
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The route of a request that matched none.
const UNMATCHED: &str = "unmatched";

/// The route template a request matched ("/api/v1/campaigns/{id}/issues"), or
/// "unmatched". The root span puts it in the request's extensions, so the router's
/// patterns are matched against the path once more per request, not twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchedRoute(pub &'static str);

impl MatchedRoute {
    /// The one the root span stored, or found now if there is none.
    pub fn of(request: &actix_web::HttpRequest) -> Self {
        if let Some(known) = request.extensions().get::<MatchedRoute>() {
            return *known;
        }
        MatchedRoute(request.match_pattern().map_or(UNMATCHED, interned))
    }
}

/// A route template as `&'static str`. The templates are the app's own routes, a
/// fixed handful, so each is leaked once and no request after that allocates one.
fn interned(route: String) -> &'static str {
    static ROUTES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(Default::default);
    if let Some(known) = routes
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(route.as_str())
    {
        return known;
    }
    let mut routes = routes.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = routes.get(route.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(route.into_boxed_str());
    routes.insert(leaked);
    leaked
}

/// The method as OpenTelemetry names it: the standard ones, and `_OTHER` for any
/// other, so a client cannot create a metric series per made-up method.
pub fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

fn flavor(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2.0",
        Version::HTTP_3 => "3.0",
        _ => "other",
    }
}

impl RootSpanBuilder for RequestSpan {
    /// The fields of tracing-actix-web's `root_span!`, whose route look-up would be a
    /// second one; the span's values are computed only when it is enabled.
    fn on_request_start(request: &ServiceRequest) -> Span {
        let route = MatchedRoute::of(request.request());
        request.extensions_mut().insert(route);
        let method = method_name(request.method());
        let span = tracing::info_span!(
            "HTTP request",
            http.method = method,
            http.route = route.0,
            http.flavor = flavor(request.version()),
            http.scheme = Empty,
            http.host = Empty,
            http.client_ip = Empty,
            http.user_agent = request
                .headers()
                .get(USER_AGENT)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(""),
            http.target = request.uri().path_and_query().map_or("", |p| p.as_str()),
            http.status_code = Empty,
            otel.name = format!("{method} {}", route.0),
            otel.kind = "server",
            otel.status_code = Empty,
            request_id = Empty,
            exception.message = Empty,
            exception.details = Empty,
        );
        if span.is_disabled() {
            return span;
        }
        if let Some(id) = request.extensions().get::<RequestId>() {
            span.record("request_id", display(id));
        }
        let connection = request.connection_info();
        span.record("http.scheme", connection.scheme());
        span.record("http.host", connection.host());
        span.record(
            "http.client_ip",
            connection.realip_remote_addr().unwrap_or(""),
        );
        drop(connection);
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use actix_web::{web, App, HttpResponse};

    #[test]
    fn a_route_template_is_interned_once() {
        let first = interned("/api/v1/campaigns/{id}".to_owned());
        let again = interned("/api/v1/campaigns/{id}".to_owned());
        assert_eq!(first, "/api/v1/campaigns/{id}");
        assert!(std::ptr::eq(first, again), "the same leaked str");
    }

    #[test]
    fn unknown_methods_share_one_name() {
        assert_eq!(method_name(&Method::POST), "POST");
        let made_up = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_name(&made_up), "_OTHER");
    }

    #[actix_web::test]
    async fn the_matched_route_is_the_template_or_unmatched() {
        let app = actix_web::test::init_service(App::new().route(
            "/api/v1/campaigns/{id}",
            web::get().to(|req: actix_web::HttpRequest| async move {
                HttpResponse::Ok().body(MatchedRoute::of(&req).0)
            }),
        ))
        .await;
        let request = TestRequest::get().uri("/api/v1/campaigns/7").to_request();
        let body = actix_web::test::call_and_read_body(&app, request).await;
        assert_eq!(body, "/api/v1/campaigns/{id}");

        let unrouted = TestRequest::get().uri("/nowhere").to_http_request();
        assert_eq!(MatchedRoute::of(&unrouted), MatchedRoute(UNMATCHED));
    }
}
