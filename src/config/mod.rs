//! Configuration: environment variables and flags turned into one typed [`Config`].
//!
//! Every mistake becomes a [`ConfigError`] naming the setting and what is wrong with it, which
//! `main` prints as one line before exiting non-zero. Loading takes a lookup function instead of
//! reading the process environment directly, so the rules are unit-tested without touching it.
//!
//! One file per section, each with its types and its loader: [`tokens`] (token secrets and the
//! trust policy), [`limits`], [`storage`] (the embedded store or Azure), [`downloads`] (which
//! hits the Azure backend answers itself), [`retention`],
//! [`telemetry`] (logs and metrics); the parsers they share (durations, sizes, counts, choices)
//! are written once in [`parse`]. [`Config`] gathers the sections, plus where the server listens
//! and what it lets clients do. [`env_file`] reads the settings files `handler check` checks
//! before a deployment.

pub mod connection_string;
pub mod downloads;
pub mod env_file;
pub mod limits;
pub mod parse;
pub mod retention;
pub mod storage;
pub mod telemetry;
pub mod tokens;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use downloads::{Download, Inline};
pub use limits::{DEFAULT_MAX_ARTIFACT_BYTES, Limits, Pace};
pub use parse::{Env, parse_size};
pub use retention::RetentionConfig;
pub use storage::{AzureAuth, AzureConfig, Backend, DEFAULT_DATA_DIR, HitCheck};
pub use telemetry::{LogFormat, SecretText};
pub use tokens::{
    DEFAULT_AUDIENCE, DEFAULT_EXPIRED_GRACE, DEFAULT_ISSUER, DEFAULT_MAX_EXCHANGE_TTL,
    DEFAULT_MAX_TOKEN_LIFETIME, DEFAULT_TOKEN_LEEWAY, DEV_SECRET_FILE, SecretSource, TokenConfig,
    TrustConfig, load_or_create_dev_secret,
};

/// Default port when neither the Functions host nor the user names one.
pub const DEFAULT_PORT: u16 = 3000;

/// A setting that is wrong, and why. Displayed as `NAME: problem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
    /// When the setting has several problems (the trust policy's refused rules), each on its
    /// own line for `handler check`; `problem` sums them up in one line.
    pub each: Vec<String>,
    /// What `handler check` prints as warnings beside the refusal.
    pub warnings: Vec<String>,
}

impl ConfigError {
    pub fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self {
            setting,
            problem: problem.into(),
            each: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration error: {}: {}", self.setting, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// What the server lets clients do, whatever their tokens allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reads and writes (writes still need a read-write token).
    ReadWrite,
    /// Reads only: every PUT gets the not-stored answer.
    ReadOnly,
    /// Neither: every GET is a miss and every PUT is not stored.
    NoCache,
}

impl Mode {
    /// The setting's word for it: `read-write`, `read-only`, `no-cache`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ReadWrite => "read-write",
            Mode::ReadOnly => "read-only",
            Mode::NoCache => "no-cache",
        }
    }
}

/// The whole server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    /// True when started by the Azure Functions host (`FUNCTIONS_CUSTOMHANDLER_PORT` set).
    pub under_functions: bool,
    pub mode: Mode,
    pub max_artifact_bytes: u64,
    pub limits: Limits,
    /// Bearer token that `/metrics` requires; `None` turns the endpoint off.
    pub metrics_token: Option<SecretText>,
    pub data_dir: PathBuf,
    /// The embedded store's retention (`NX_CACHE_MAX_SIZE`, `NX_CACHE_MAX_AGE`): off by default.
    pub retention: RetentionConfig,
    pub backend: Backend,
    /// How often the health watch probes the store (`NX_CACHE_HEALTH_INTERVAL`).
    pub health_interval: Duration,
    pub tokens: TokenConfig,
    pub trust: TrustConfig,
    pub log_format: LogFormat,
    /// Lines that may wait for the log writer (`NX_CACHE_LOG_QUEUE`).
    pub log_queue: usize,
}

/// Values given on the command line; they lose to the Functions host's port.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub port: Option<u16>,
    pub bind: Option<IpAddr>,
}

impl Config {
    /// Builds the configuration from flags and an environment lookup. Empty values count as unset.
    pub fn load(flags: &Flags, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env::new(&env);
        let functions_port = env.port("FUNCTIONS_CUSTOMHANDLER_PORT")?;
        let under_functions = functions_port.is_some();
        // A malformed PORT is reported even when a flag or the host's port would win.
        let env_port = env.port("PORT")?;
        let port = functions_port
            .or(flags.port)
            .or(env_port)
            .unwrap_or(DEFAULT_PORT);
        let bind = flags.bind.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let mode = env
            .choice(
                "NX_CACHE_MODE",
                &[
                    ("read-write", Mode::ReadWrite),
                    ("read-only", Mode::ReadOnly),
                    ("no-cache", Mode::NoCache),
                ],
            )?
            .unwrap_or(Mode::ReadWrite);
        let max_artifact_bytes = limits::load_max_artifact_bytes(&env)?;
        let limits = limits::load_limits(&env)?;
        let metrics_token = telemetry::load_metrics_token(&env)?;
        let health_interval = storage::load_health_interval(&env)?;
        let data_dir = storage::load_data_dir(&env);
        let tokens = tokens::load_tokens(
            &env,
            tokens::Listening {
                under_functions,
                bind,
                data_dir: &data_dir,
            },
        )?;
        let trust = tokens::load_trust(&env, &tokens)?;
        let log_format = telemetry::load_log_format(&env, under_functions)?;
        let log_queue = telemetry::load_log_queue(&env)?;
        let backend = storage::load_backend(&env)?;
        let retention = retention::load_retention(&env, &backend)?;
        Ok(Self {
            bind,
            port,
            under_functions,
            mode,
            max_artifact_bytes,
            limits,
            metrics_token,
            data_dir,
            retention,
            backend,
            health_interval,
            tokens,
            trust,
            log_format,
            log_queue,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    pub(crate) fn load(vars: &[(&str, &str)], flags: Flags) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&flags, |name| map.get(name).cloned())
    }

    pub(crate) const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_serve_locally_with_a_dev_secret() {
        let config = load(&[], Flags::default()).unwrap();
        assert_eq!(config.port, DEFAULT_PORT);
        assert_eq!(config.bind.to_string(), "127.0.0.1");
        assert_eq!(config.mode, Mode::ReadWrite);
        assert_eq!(config.max_artifact_bytes, DEFAULT_MAX_ARTIFACT_BYTES);
        assert!(!config.under_functions);
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(matches!(config.tokens.secret, SecretSource::DevFile(_)));
    }

    #[test]
    fn port_precedence_functions_then_flag_then_env() {
        let flag = Flags {
            port: Some(4000),
            bind: None,
        };
        let with_fn = load(
            &[
                ("FUNCTIONS_CUSTOMHANDLER_PORT", "5000"),
                ("PORT", "6000"),
                ("NX_CACHE_JWT_SECRET", SECRET),
            ],
            flag.clone(),
        )
        .unwrap();
        assert_eq!(with_fn.port, 5000);
        assert!(with_fn.under_functions);
        assert_eq!(with_fn.log_format, LogFormat::Json);
        assert_eq!(load(&[("PORT", "6000")], flag).unwrap().port, 4000);
        assert_eq!(
            load(&[("PORT", "6000")], Flags::default()).unwrap().port,
            6000
        );
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases = [
            ("PORT", "http"),
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "70000"),
            ("NX_CACHE_MODE", "sometimes"),
            ("NX_CACHE_MAX_ARTIFACT_SIZE", "lots"),
            ("NX_CACHE_JWT_SECRET", "short"),
            ("NX_CACHE_JWT_ALGORITHM", "none"),
            ("NX_CACHE_LOG_FORMAT", "xml"),
            ("NX_CACHE_LOG_QUEUE", "8"),
            ("NX_CACHE_MAX_CONNECTIONS", "0"),
            ("NX_CACHE_HEADER_TIMEOUT", "soon"),
            ("NX_CACHE_BODY_TIMEOUT", "-1s"),
            ("NX_CACHE_METRICS_TOKEN", "short"),
            ("NX_CACHE_MIN_BODY_RATE", "fast"),
            ("NX_CACHE_BODY_RATE_WINDOW", "5m"),
            ("NX_CACHE_MAX_DRAINS", "0"),
            ("NX_CACHE_MAX_DOWNLOADS", "many"),
            ("NX_CACHE_SEND_TIMEOUT", "never"),
            ("NX_CACHE_HEALTH_INTERVAL", "1h"),
            ("NX_CACHE_MAX_TOKEN_LIFETIME", "forever"),
            (
                "NX_CACHE_JWT_SECRET",
                "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/nx/)",
            ),
        ];
        for (name, value) in cases {
            let err = load(&[(name, value)], Flags::default()).unwrap_err();
            assert_eq!(err.setting, name, "{name}={value}");
            assert!(
                err.to_string()
                    .starts_with(&format!("configuration error: {name}: "))
            );
        }
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let config = load(
            &[
                ("NX_CACHE_JWT_SECRET", SECRET),
                ("NX_CACHE_METRICS_TOKEN", "metrics-token-0123456789"),
                (
                    "AZURE_STORAGE_CONNECTION_STRING",
                    "UseDevelopmentStorage=true",
                ),
                ("AZURE_STORAGE_CONTAINER", "nx1"),
            ],
            Flags::default(),
        )
        .unwrap();
        let debug = format!("{config:?}");
        for secret in [SECRET, "metrics-token-0123456789", "Eby8vdM02xNO"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }
}
