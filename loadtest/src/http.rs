//! The HTTP client: hyper's pooled HTTP/1.1 client (no TLS, no redirects, no cookie
//! jar) because the generator shares the cores with the service and must spend as
//! little CPU per request as possible; plus the few admin calls the checks need.

use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Why a request got no HTTP answer.
#[derive(Debug)]
pub enum SendError {
    Timeout,
    Transport(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Timeout => write!(f, "no answer within the timeout"),
            SendError::Transport(e) => write!(f, "{e}"),
        }
    }
}

/// Idle connections are dropped after this, before the service closes them: a request
/// sent on a connection the server is closing at that moment fails ("connection closed
/// before message completed", or the server's 408). The service waits 5 s for the
/// first request of a new connection (the pool may open one it does not use at once)
/// and `server.keep_alive_secs` between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A pooled client for one target.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    base: String,
    timeout: Duration,
}

impl HttpClient {
    /// `pool` is the number of idle connections kept (the concurrency, at least).
    pub fn new(base: &str, timeout: Duration, pool: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let inner = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(connector);
        HttpClient {
            inner,
            base: base.to_owned(),
            timeout,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The full URI of `path` on the target.
    pub fn uri(&self, path: &str) -> anyhow::Result<Uri> {
        format!("{}{}", self.base, path)
            .parse()
            .with_context(|| format!("bad URL {}{}", self.base, path))
    }

    /// Sends `request` and reads the whole answer, within the timeout.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), SendError> {
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| SendError::Transport(error_chain(&e)))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| SendError::Transport(error_chain(&e)))?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout),
        }
    }

    /// Opens `connections` connections (one GET /health/live on each, all at once)
    /// so they wait idle in the pool when the clock starts. Answers how many opened.
    pub async fn warm_up(&self, connections: usize) -> anyhow::Result<usize> {
        let uri = self.uri("/health/live")?;
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let client = self.clone();
            let request = Request::get(uri.clone()).body(Full::default())?;
            calls.spawn(async move { client.send(request).await.is_ok() });
        }
        let mut opened = 0;
        while let Some(done) = calls.join_next().await {
            opened += usize::from(matches!(done, Ok(true)));
        }
        Ok(opened)
    }

    /// A JSON call (admin or health), with the bearer `token` if given.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.json_with_headers(method, path, token, body, &[]).await
    }

    /// [`Self::json`] with extra request headers (name, value).
    pub async fn json_with_headers(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut builder = Request::builder().method(method).uri(self.uri(path)?);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let payload = match body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v)?)
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(payload))?;
        let (status, bytes) = self
            .send(request)
            .await
            .map_err(|e| anyhow!("{} {path}: {e}", self.base))?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, value))
    }
}

/// The error and its causes on one line ("connection refused" is in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
