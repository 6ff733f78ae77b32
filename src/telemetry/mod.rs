//! Logging and metrics set-up. Logs are structured (`tracing`, JSON by default);
//! every metric instrument is declared in [`metrics`].

pub mod metrics;

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

use crate::config::LogSettings;

/// Installs the global tracing subscriber once; later calls are no-ops, so tests
/// may call it from every test.
pub fn init_logging(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.filter.as_str()));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if settings.format == "pretty" {
        registry.with(fmt::layer().with_target(true)).try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init()
    };
}
