//! The telemetry section: the log's shape (`NX_CACHE_LOG_FORMAT`), how many lines may wait for
//! the log's reader (`NX_CACHE_LOG_QUEUE`), and the token that opens `/metrics`
//! (`NX_CACHE_METRICS_TOKEN`).

use std::fmt;

use super::ConfigError;
use super::parse::Env;

/// Log output shape: JSON lines for Azure (Application Insights), readable text locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// A secret given as text (the metrics token). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(String);

impl SecretText {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `NX_CACHE_LOG_FORMAT`: JSON under the Functions host (Application Insights parses it), text
/// elsewhere, unless set.
pub fn load_log_format(env: &Env, under_functions: bool) -> Result<LogFormat, ConfigError> {
    let chosen = env.choice(
        "NX_CACHE_LOG_FORMAT",
        &[("json", LogFormat::Json), ("text", LogFormat::Text)],
    )?;
    Ok(chosen.unwrap_or(if under_functions {
        LogFormat::Json
    } else {
        LogFormat::Text
    }))
}

/// Lines that may wait for each log stream's writer before new ones are dropped (a few MiB at
/// most): serving never waits on logging.
pub const DEFAULT_LOG_QUEUE: usize = 8192;

/// `NX_CACHE_LOG_QUEUE`: the log queue's length in lines, 16 to 1,000,000.
pub fn load_log_queue(env: &Env) -> Result<usize, ConfigError> {
    let queue = env.count("NX_CACHE_LOG_QUEUE", DEFAULT_LOG_QUEUE, 1_000_000)?;
    if queue < 16 {
        return Err(ConfigError::new(
            "NX_CACHE_LOG_QUEUE",
            "must be at least 16 lines",
        ));
    }
    Ok(queue)
}

/// `NX_CACHE_METRICS_TOKEN`: turns `/metrics` on, for this bearer token only.
pub fn load_metrics_token(env: &Env) -> Result<Option<SecretText>, ConfigError> {
    let token = env
        .get("NX_CACHE_METRICS_TOKEN")
        .map(|t| t.trim().to_owned());
    if token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(ConfigError::new(
            "NX_CACHE_METRICS_TOKEN",
            "too short; use at least 16 random characters",
        ));
    }
    Ok(token.map(SecretText))
}
