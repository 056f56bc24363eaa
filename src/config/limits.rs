//! The limits section: what one client can make the server hold (connections, time, bytes in
//! flight) and the largest artifact stored. The behaviour behind these numbers is in
//! [`crate::limits`]; the numbers live here, beside their settings.

use std::time::Duration;

use super::ConfigError;
use super::parse::Env;

/// Default cap on one artifact: 1 GiB.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// How fast a body must arrive: at least `min_rate` bytes per second averaged over `window` of
/// waiting, and never a pause of `idle` or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Bytes per second; 0 turns the rate rule off (only the idle rule is left).
    pub min_rate: u64,
    pub window: Duration,
    pub idle: Duration,
}

/// What one client can make the server hold: connections, time, bytes in flight.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the accept backlog (`NX_CACHE_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive (`NX_CACHE_HEADER_TIMEOUT`).
    pub header_timeout: Duration,
    /// The pace every request body is held to (`NX_CACHE_MIN_BODY_RATE`,
    /// `NX_CACHE_BODY_RATE_WINDOW`, `NX_CACHE_BODY_TIMEOUT`).
    pub body: Pace,
    /// Refused uploads drained at once (`NX_CACHE_MAX_DRAINS`).
    pub max_drains: usize,
    /// Downloads streamed through the handler at once (`NX_CACHE_MAX_DOWNLOADS`).
    pub max_downloads: usize,
    /// A connection whose client reads nothing of its answer for this long is closed
    /// (`NX_CACHE_SEND_TIMEOUT`).
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: Duration::from_secs(30),
            body: Pace {
                min_rate: 64 * 1024,
                window: Duration::from_secs(20),
                idle: Duration::from_secs(30),
            },
            max_drains: 64,
            max_downloads: 128,
            send_timeout: Duration::from_secs(30),
        }
    }
}

/// `NX_CACHE_MAX_ARTIFACT_SIZE`: the largest artifact stored.
pub fn load_max_artifact_bytes(env: &Env) -> Result<u64, ConfigError> {
    Ok(env
        .size("NX_CACHE_MAX_ARTIFACT_SIZE")?
        .unwrap_or(DEFAULT_MAX_ARTIFACT_BYTES))
}

/// The limits section: every bound on what one client can make the server hold.
pub fn load_limits(env: &Env) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let min_rate = match env.get("NX_CACHE_MIN_BODY_RATE") {
        None => defaults.body.min_rate,
        Some(raw) => super::parse_size(raw.trim().trim_end_matches("/s"))
            .map_err(|e| ConfigError::new("NX_CACHE_MIN_BODY_RATE", e))?,
    };
    let window = env.duration("NX_CACHE_BODY_RATE_WINDOW", defaults.body.window)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(30)).contains(&window) {
        return Err(ConfigError::new(
            "NX_CACHE_BODY_RATE_WINDOW",
            "must be between 1s and 30s",
        ));
    }
    Ok(Limits {
        max_connections: env.count(
            "NX_CACHE_MAX_CONNECTIONS",
            defaults.max_connections,
            100_000,
        )?,
        header_timeout: env.duration("NX_CACHE_HEADER_TIMEOUT", defaults.header_timeout)?,
        body: Pace {
            min_rate,
            window,
            idle: env.duration("NX_CACHE_BODY_TIMEOUT", defaults.body.idle)?,
        },
        max_drains: env.count("NX_CACHE_MAX_DRAINS", defaults.max_drains, 100_000)?,
        max_downloads: env.count("NX_CACHE_MAX_DOWNLOADS", defaults.max_downloads, 100_000)?,
        send_timeout: env.duration("NX_CACHE_SEND_TIMEOUT", defaults.send_timeout)?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Flags;
    use crate::config::tests::load;
    use crate::config::tokens::DEFAULT_MAX_TOKEN_LIFETIME;
    use std::time::Duration;

    #[test]
    fn limits_and_token_lifetime() {
        let config = load(&[], Flags::default()).unwrap();
        assert_eq!(config.limits.body.min_rate, 64 * 1024);
        assert_eq!(config.tokens.rules.max_lifetime, DEFAULT_MAX_TOKEN_LIFETIME);
        let config = load(
            &[
                ("NX_CACHE_MIN_BODY_RATE", "16K/s"),
                ("NX_CACHE_BODY_RATE_WINDOW", "5s"),
                ("NX_CACHE_MAX_DRAINS", "3"),
                ("NX_CACHE_MAX_DOWNLOADS", "7"),
                ("NX_CACHE_SEND_TIMEOUT", "9s"),
                ("NX_CACHE_MAX_TOKEN_LIFETIME", "2h"),
            ],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(config.limits.body.min_rate, 16 * 1024);
        assert_eq!(config.limits.body.window, Duration::from_secs(5));
        assert_eq!(config.limits.max_drains, 3);
        assert_eq!(config.limits.max_downloads, 7);
        assert_eq!(config.limits.send_timeout, Duration::from_secs(9));
        assert_eq!(config.tokens.rules.max_lifetime, Duration::from_secs(7200));
    }
}
