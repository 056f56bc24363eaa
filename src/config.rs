//! Configuration: environment variables and flags turned into one typed [`Config`].
//!
//! Every mistake becomes a [`ConfigError`] naming the setting and what is wrong with it, which
//! `main` prints as one line before exiting non-zero. Parsing takes a lookup function instead of
//! reading the process environment directly, so the rules are unit-tested without touching it.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::auth::{Secret, parse_algorithm};
use crate::storage::azure::connection_string::ConnectionString;

/// Default port when neither the Functions host nor the user names one.
pub const DEFAULT_PORT: u16 = 3000;
/// Default data directory of the embedded store, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "nx-cache-data";
/// Default cap on one artifact: 1 GiB.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 1 << 30;
pub const DEFAULT_ISSUER: &str = "nx-azure-cache";
pub const DEFAULT_AUDIENCE: &str = "nx-remote-cache";
/// File inside the data directory that holds the development secret.
pub const DEV_SECRET_FILE: &str = ".dev-jwt-secret";

/// A setting that is wrong, and why. Displayed as `NAME: problem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self {
            setting,
            problem: problem.into(),
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
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "read-write" => Ok(Mode::ReadWrite),
            "read-only" => Ok(Mode::ReadOnly),
            "no-cache" => Ok(Mode::NoCache),
            other => Err(format!(
                "expected read-write, read-only or no-cache, got '{other}'"
            )),
        }
    }
}

/// Log output shape: JSON lines for Azure (Application Insights), readable text locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Where the token secret comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// `NX_CACHE_JWT_SECRET`.
    Env(Secret),
    /// A development secret kept in the data directory, created on first run. Never used under
    /// Azure Functions.
    DevFile(PathBuf),
}

/// Token settings.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub secret: SecretSource,
    pub algorithm: Algorithm,
    pub issuer: String,
    pub audience: String,
    pub revoked: HashSet<String>,
}

/// How GET hits reach the client from Azure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Download {
    /// `307` to a short-lived read-only SAS URL: bytes go straight from storage to the client.
    Redirect,
    /// The handler streams the blob itself, for clients that cannot reach the storage account.
    Proxy,
}

/// How the handler authenticates to Azure Storage.
#[derive(Debug, Clone)]
pub enum AzureAuth {
    /// An account key from a connection string (Azurite, custom endpoints): service SAS.
    Key(ConnectionString),
    /// Microsoft Entra tokens (managed identity, workload identity, Azure CLI): no keys.
    Token {
        /// A user-assigned managed identity's client id (`AZURE_CLIENT_ID`).
        client_id: Option<String>,
    },
}

/// The Azure Blob backend's settings.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    pub account: String,
    /// Blob service endpoint without a trailing slash, e.g. `https://acct.blob.core.windows.net`.
    pub endpoint: String,
    pub container: String,
    pub auth: AzureAuth,
    /// Prepended to every blob name (`{prefix}org/{hash}`, `{prefix}teams/{team}/{hash}`).
    pub prefix: String,
    pub download: Download,
    /// Lifetime of a download URL.
    pub sas_ttl: Duration,
    /// Bound on every single storage call.
    pub timeout: Duration,
    /// When true, storage failures answer 5xx instead of a miss / not stored.
    pub strict: bool,
}

/// Which store serves the cache.
#[derive(Debug, Clone)]
pub enum Backend {
    Local,
    Azure(Box<AzureConfig>),
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
    /// Connections served at once; more wait in the accept backlog.
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive (`NX_CACHE_HEADER_TIMEOUT`).
    pub header_timeout: Duration,
    /// Longest pause allowed between two pieces of an upload's body (`NX_CACHE_BODY_TIMEOUT`).
    pub body_idle_timeout: Duration,
    /// Bearer token that `/metrics` requires; `None` turns the endpoint off.
    pub metrics_token: Option<String>,
    pub data_dir: PathBuf,
    pub backend: Backend,
    pub tokens: TokenConfig,
    pub log_format: LogFormat,
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
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());

        let functions_port = get("FUNCTIONS_CUSTOMHANDLER_PORT")
            .map(|v| parse_port("FUNCTIONS_CUSTOMHANDLER_PORT", &v))
            .transpose()?;
        let under_functions = functions_port.is_some();
        // A malformed PORT is reported even when a flag or the host's port would win.
        let env_port = get("PORT").map(|v| parse_port("PORT", &v)).transpose()?;
        let port = functions_port
            .or(flags.port)
            .or(env_port)
            .unwrap_or(DEFAULT_PORT);
        let bind = flags.bind.unwrap_or(IpAddr::from([127, 0, 0, 1]));

        let mode = get("NX_CACHE_MODE")
            .map(|v| Mode::parse(v.trim()).map_err(|e| ConfigError::new("NX_CACHE_MODE", e)))
            .transpose()?
            .unwrap_or(Mode::ReadWrite);

        let max_artifact_bytes = get("NX_CACHE_MAX_ARTIFACT_SIZE")
            .map(|v| {
                parse_size(v.trim()).map_err(|e| ConfigError::new("NX_CACHE_MAX_ARTIFACT_SIZE", e))
            })
            .transpose()?
            .unwrap_or(DEFAULT_MAX_ARTIFACT_BYTES);

        let max_connections = match get("NX_CACHE_MAX_CONNECTIONS") {
            None => 512,
            Some(raw) => match raw.trim().parse::<usize>() {
                Ok(n) if (1..=100_000).contains(&n) => n,
                _ => {
                    return Err(ConfigError::new(
                        "NX_CACHE_MAX_CONNECTIONS",
                        format!("expected a number from 1 to 100000, got '{raw}'"),
                    ));
                }
            },
        };

        let header_timeout =
            duration_setting(&get, "NX_CACHE_HEADER_TIMEOUT", Duration::from_secs(30))?;
        let body_idle_timeout =
            duration_setting(&get, "NX_CACHE_BODY_TIMEOUT", Duration::from_secs(30))?;

        let metrics_token = get("NX_CACHE_METRICS_TOKEN").map(|t| t.trim().to_owned());
        if metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::new(
                "NX_CACHE_METRICS_TOKEN",
                "too short; use at least 16 random characters",
            ));
        }

        let data_dir = get("NX_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));

        let secret = match get("NX_CACHE_JWT_SECRET") {
            // An unresolved Key Vault reference reaches the app as its literal text, which is
            // long enough to pass as a secret; every token would then fail verification.
            Some(value) if value.trim_start().starts_with("@Microsoft.KeyVault(") => {
                return Err(ConfigError::new(
                    "NX_CACHE_JWT_SECRET",
                    "is an unresolved Key Vault reference; grant the app's identity 'Key Vault Secrets User' on the secret and check the reference's SecretUri",
                ));
            }
            Some(value) => SecretSource::Env(
                Secret::new(value.into_bytes())
                    .map_err(|e| ConfigError::new("NX_CACHE_JWT_SECRET", e))?,
            ),
            None if under_functions => {
                return Err(ConfigError::new(
                    "NX_CACHE_JWT_SECRET",
                    "not set; it is required under Azure Functions (set it as an app setting or a Key Vault reference)",
                ));
            }
            None => SecretSource::DevFile(data_dir.join(DEV_SECRET_FILE)),
        };
        let algorithm = get("NX_CACHE_JWT_ALGORITHM")
            .map(|v| {
                parse_algorithm(v.trim()).map_err(|e| ConfigError::new("NX_CACHE_JWT_ALGORITHM", e))
            })
            .transpose()?
            .unwrap_or(Algorithm::HS256);
        let revoked = get("NX_CACHE_REVOKED_TOKENS")
            .map(|v| {
                v.split([',', ' ', '\n'])
                    .map(str::trim)
                    .filter(|id| !id.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let tokens = TokenConfig {
            secret,
            algorithm,
            issuer: get("NX_CACHE_JWT_ISSUER").unwrap_or_else(|| DEFAULT_ISSUER.into()),
            audience: get("NX_CACHE_JWT_AUDIENCE").unwrap_or_else(|| DEFAULT_AUDIENCE.into()),
            revoked,
        };

        let log_format = match get("NX_CACHE_LOG_FORMAT").as_deref().map(str::trim) {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(ConfigError::new(
                    "NX_CACHE_LOG_FORMAT",
                    format!("expected json or text, got '{other}'"),
                ));
            }
            None if under_functions => LogFormat::Json,
            None => LogFormat::Text,
        };

        let backend = load_backend(&get)?;

        Ok(Self {
            bind,
            port,
            under_functions,
            mode,
            max_artifact_bytes,
            max_connections,
            header_timeout,
            body_idle_timeout,
            metrics_token,
            data_dir,
            backend,
            tokens,
            log_format,
        })
    }
}

/// Azure when a connection string, or an account (or endpoint) plus a container, is set;
/// otherwise the embedded local store.
fn load_backend(get: &impl Fn(&str) -> Option<String>) -> Result<Backend, ConfigError> {
    let connection_string = get("AZURE_STORAGE_CONNECTION_STRING");
    let account = get("AZURE_STORAGE_ACCOUNT");
    let endpoint = get("AZURE_STORAGE_BLOB_ENDPOINT");
    if connection_string.is_none() && account.is_none() && endpoint.is_none() {
        return Ok(Backend::Local);
    }
    let container = get("AZURE_STORAGE_CONTAINER").ok_or_else(|| {
        ConfigError::new(
            "AZURE_STORAGE_CONTAINER",
            "not set; name the existing blob container that holds the cache",
        )
    })?;
    validate_container(&container)?;
    let (account, endpoint, auth) = match connection_string {
        Some(raw) => {
            let parsed = ConnectionString::parse(&raw)
                .map_err(|e| ConfigError::new("AZURE_STORAGE_CONNECTION_STRING", e))?;
            (
                parsed.account.clone(),
                parsed.blob_endpoint.clone(),
                AzureAuth::Key(parsed),
            )
        }
        None => {
            let endpoint = match (endpoint, &account) {
                (Some(endpoint), _) => {
                    let endpoint = endpoint.trim().trim_end_matches('/').to_owned();
                    if !endpoint.starts_with("https://") {
                        return Err(ConfigError::new(
                            "AZURE_STORAGE_BLOB_ENDPOINT",
                            format!(
                                "'{endpoint}' must be an https:// URL (tokens are never sent over plain http)"
                            ),
                        ));
                    }
                    endpoint
                }
                (None, Some(account)) => {
                    format!("https://{}.blob.core.windows.net", account.trim())
                }
                (None, None) => unreachable!("checked above"),
            };
            let account = match account {
                Some(account) => account.trim().to_owned(),
                None => account_from_endpoint(&endpoint).ok_or_else(|| {
                    ConfigError::new(
                        "AZURE_STORAGE_ACCOUNT",
                        "not set and not derivable from AZURE_STORAGE_BLOB_ENDPOINT",
                    )
                })?,
            };
            let client_id = get("AZURE_CLIENT_ID");
            (account, endpoint, AzureAuth::Token { client_id })
        }
    };
    let download = match get("NX_CACHE_DOWNLOAD").as_deref().map(str::trim) {
        None | Some("redirect") => Download::Redirect,
        Some("proxy") => Download::Proxy,
        Some(other) => {
            return Err(ConfigError::new(
                "NX_CACHE_DOWNLOAD",
                format!("expected redirect or proxy, got '{other}'"),
            ));
        }
    };
    let sas_ttl = duration_setting(get, "NX_CACHE_SAS_TTL", Duration::from_secs(300))?;
    if sas_ttl < Duration::from_secs(30) || sas_ttl > Duration::from_secs(3600) {
        return Err(ConfigError::new(
            "NX_CACHE_SAS_TTL",
            "must be between 30s and 1h: download URLs are meant to be short-lived",
        ));
    }
    let timeout = duration_setting(get, "NX_CACHE_STORAGE_TIMEOUT", Duration::from_secs(10))?;
    let strict = match get("NX_CACHE_STRICT_STORAGE").as_deref().map(str::trim) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ConfigError::new(
                "NX_CACHE_STRICT_STORAGE",
                format!("expected true or false, got '{other}'"),
            ));
        }
    };
    let prefix = get("NX_CACHE_BLOB_PREFIX").unwrap_or_default();
    if !prefix.is_empty()
        && (!prefix.ends_with('/') || prefix.starts_with('/') || prefix.contains(".."))
    {
        return Err(ConfigError::new(
            "NX_CACHE_BLOB_PREFIX",
            format!("'{prefix}' must end with '/' and must not start with '/' or contain '..'"),
        ));
    }
    Ok(Backend::Azure(Box::new(AzureConfig {
        account,
        endpoint,
        container,
        auth,
        prefix,
        download,
        sas_ttl,
        timeout,
        strict,
    })))
}

/// Container names: 3 to 63 lowercase letters, digits and single hyphens, starting and ending
/// with a letter or digit (Azure's rule).
fn validate_container(name: &str) -> Result<(), ConfigError> {
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            "AZURE_STORAGE_CONTAINER",
            format!(
                "'{name}' is not a valid container name (3-63 lowercase letters, digits, single hyphens)"
            ),
        ))
    }
}

/// `https://ACCOUNT.blob.core.windows.net` -> `ACCOUNT`.
fn account_from_endpoint(endpoint: &str) -> Option<String> {
    let host = endpoint
        .strip_prefix("https://")?
        .split(['/', ':'])
        .next()?;
    let (account, rest) = host.split_once('.')?;
    rest.starts_with("blob.").then(|| account.to_owned())
}

fn duration_setting(
    get: &impl Fn(&str) -> Option<String>,
    setting: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match get(setting) {
        None => Ok(default),
        Some(raw) => humantime::parse_duration(raw.trim()).map_err(|_| {
            ConfigError::new(
                setting,
                format!("expected a duration such as 5m or 30s, got '{raw}'"),
            )
        }),
    }
}

fn parse_port(setting: &'static str, raw: &str) -> Result<u16, ConfigError> {
    raw.trim()
        .parse::<u16>()
        .map_err(|_| ConfigError::new(setting, format!("expected a port number, got '{raw}'")))
}

/// Parses a byte size: a plain number of bytes, or a number with `K`, `M`, `G` (or `KiB`, `MiB`,
/// `GiB`; all binary multiples).
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("expected a size such as 104857600, 100M or 1GiB, got '{raw}'"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "KB" => 1 << 10,
        "M" | "MiB" | "MB" => 1 << 20,
        "G" | "GiB" | "GB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{raw}'; use K, M or G"
            ));
        }
    };
    let bytes = number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size '{raw}' is too large"))?;
    if bytes == 0 {
        return Err("size must be greater than zero".into());
    }
    Ok(bytes)
}

/// Reads the development secret from `path`, creating it (48 random bytes, base64, mode 0600)
/// when it does not exist. Returns the secret and whether it was just created.
pub fn load_or_create_dev_secret(path: &Path) -> std::io::Result<(Secret, bool)> {
    use base64::Engine;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let secret = Secret::new(text.trim().as_bytes().to_vec())
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            Ok((secret, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut raw = [0u8; 48];
            getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
            let text = base64::engine::general_purpose::STANDARD.encode(raw);
            write_private(path, &text)?;
            let secret = Secret::new(text.into_bytes()).map_err(std::io::Error::other)?;
            Ok((secret, true))
        }
        Err(e) => Err(e),
    }
}

/// Creates a file readable by its owner only; fails if it already exists.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)], flags: Flags) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&flags, |name| map.get(name).cloned())
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

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
    fn functions_without_secret_is_an_error() {
        let err = load(
            &[("FUNCTIONS_CUSTOMHANDLER_PORT", "5000")],
            Flags::default(),
        )
        .unwrap_err();
        assert_eq!(err.setting, "NX_CACHE_JWT_SECRET");
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
            ("NX_CACHE_MAX_CONNECTIONS", "0"),
            ("NX_CACHE_HEADER_TIMEOUT", "soon"),
            ("NX_CACHE_BODY_TIMEOUT", "-1s"),
            ("NX_CACHE_METRICS_TOKEN", "short"),
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
    fn modes_and_revocations() {
        let config = load(
            &[
                ("NX_CACHE_MODE", "read-only"),
                ("NX_CACHE_REVOKED_TOKENS", "a, b,,c"),
            ],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(config.mode, Mode::ReadOnly);
        assert_eq!(config.tokens.revoked.len(), 3);
        assert!(config.tokens.revoked.contains("b"));
    }

    #[test]
    fn azure_backend_selection() {
        assert!(matches!(
            load(&[], Flags::default()).unwrap().backend,
            Backend::Local
        ));
        let mi = load(
            &[
                ("AZURE_STORAGE_ACCOUNT", "acme"),
                ("AZURE_STORAGE_CONTAINER", "nx-cache"),
                ("AZURE_CLIENT_ID", "abc"),
            ],
            Flags::default(),
        )
        .unwrap();
        let Backend::Azure(azure) = mi.backend else {
            panic!("azure expected")
        };
        assert_eq!(azure.endpoint, "https://acme.blob.core.windows.net");
        assert!(matches!(azure.auth, AzureAuth::Token { client_id: Some(ref id) } if id == "abc"));
        assert_eq!(azure.download, Download::Redirect);
        assert_eq!(azure.sas_ttl, Duration::from_secs(300));

        let by_endpoint = load(
            &[
                (
                    "AZURE_STORAGE_BLOB_ENDPOINT",
                    "https://acme.blob.core.chinacloudapi.cn/",
                ),
                ("AZURE_STORAGE_CONTAINER", "c-1"),
            ],
            Flags::default(),
        )
        .unwrap();
        let Backend::Azure(azure) = by_endpoint.backend else {
            panic!("azure expected")
        };
        assert_eq!(azure.account, "acme");
        assert_eq!(azure.endpoint, "https://acme.blob.core.chinacloudapi.cn");

        let cs = load(
            &[
                (
                    "AZURE_STORAGE_CONNECTION_STRING",
                    "UseDevelopmentStorage=true",
                ),
                ("AZURE_STORAGE_CONTAINER", "nx1"),
                ("NX_CACHE_DOWNLOAD", "proxy"),
            ],
            Flags::default(),
        )
        .unwrap();
        let Backend::Azure(azure) = cs.backend else {
            panic!("azure expected")
        };
        assert!(matches!(azure.auth, AzureAuth::Key(_)));
        assert_eq!(azure.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(azure.download, Download::Proxy);
    }

    #[test]
    fn azure_mistakes_name_the_setting() {
        let base = [
            ("AZURE_STORAGE_ACCOUNT", "acme"),
            ("AZURE_STORAGE_CONTAINER", "nx-cache"),
        ];
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![("AZURE_STORAGE_ACCOUNT", "acme")],
                "AZURE_STORAGE_CONTAINER",
            ),
            (
                vec![
                    ("AZURE_STORAGE_ACCOUNT", "acme"),
                    ("AZURE_STORAGE_CONTAINER", "Bad_Name"),
                ],
                "AZURE_STORAGE_CONTAINER",
            ),
            (
                vec![
                    (
                        "AZURE_STORAGE_BLOB_ENDPOINT",
                        "http://x.blob.core.windows.net",
                    ),
                    ("AZURE_STORAGE_CONTAINER", "abc"),
                ],
                "AZURE_STORAGE_BLOB_ENDPOINT",
            ),
            (
                vec![
                    ("AZURE_STORAGE_CONNECTION_STRING", "AccountName=a"),
                    ("AZURE_STORAGE_CONTAINER", "abc"),
                ],
                "AZURE_STORAGE_CONNECTION_STRING",
            ),
            (
                [&base[..], &[("NX_CACHE_DOWNLOAD", "teleport")]].concat(),
                "NX_CACHE_DOWNLOAD",
            ),
            (
                [&base[..], &[("NX_CACHE_SAS_TTL", "1d")]].concat(),
                "NX_CACHE_SAS_TTL",
            ),
            (
                [&base[..], &[("NX_CACHE_SAS_TTL", "soon")]].concat(),
                "NX_CACHE_SAS_TTL",
            ),
            (
                [&base[..], &[("NX_CACHE_STORAGE_TIMEOUT", "x")]].concat(),
                "NX_CACHE_STORAGE_TIMEOUT",
            ),
            (
                [&base[..], &[("NX_CACHE_STRICT_STORAGE", "maybe")]].concat(),
                "NX_CACHE_STRICT_STORAGE",
            ),
            (
                [&base[..], &[("NX_CACHE_BLOB_PREFIX", "no-slash")]].concat(),
                "NX_CACHE_BLOB_PREFIX",
            ),
        ];
        for (vars, setting) in cases {
            let err = load(&vars, Flags::default()).unwrap_err();
            assert_eq!(err.setting, setting, "{vars:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("100M").unwrap(), 100 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        for bad in ["", "M", "1T", "-1", "0", "99999999999999999999G", "1.5G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dev_secret_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(DEV_SECRET_FILE);
        let (_, created) = load_or_create_dev_secret(&path).unwrap();
        assert!(created);
        let first = std::fs::read(&path).unwrap();
        let (_, created_again) = load_or_create_dev_secret(&path).unwrap();
        assert!(!created_again);
        assert_eq!(std::fs::read(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
