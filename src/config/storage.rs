//! The storage section: which store serves the cache (the embedded store's directory, or an
//! Azure Blob container reached with an account key or Microsoft Entra tokens), how downloads
//! reach clients, and how often the health watch probes the store.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;
use super::connection_string::ConnectionString;
use super::downloads::{self, Download, Inline};
use super::parse::Env;

/// Default data directory of the embedded store, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "nx-cache-data";

/// Whether a GET (auto and redirect modes) first checks that the entry exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitCheck {
    /// A miss is the handler's own 404, a hit a 307; what is known to exist is remembered, so a
    /// repeated hit costs no storage call. Hits and misses are counted exactly.
    Exact,
    /// Zero storage calls per GET: every GET is a 307, and a missing entry is the storage's 404
    /// on the client's second request. Hits and misses cannot be told apart.
    None,
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
    /// Auto mode: which entries the handler answers itself, and the memory that may take.
    pub inline: Inline,
    /// Auto and redirect modes: check existence first (`NX_CACHE_HIT_CHECK`).
    pub hit_check: HitCheck,
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

/// `NX_CACHE_DIR`: the embedded store's directory (and the development secret's).
pub fn load_data_dir(env: &Env) -> PathBuf {
    env.get("NX_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// `NX_CACHE_HEALTH_INTERVAL`: how often the health watch probes the store, 1s to 5m.
pub fn load_health_interval(env: &Env) -> Result<Duration, ConfigError> {
    let interval = env.duration("NX_CACHE_HEALTH_INTERVAL", Duration::from_secs(5))?;
    if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&interval) {
        return Err(ConfigError::new(
            "NX_CACHE_HEALTH_INTERVAL",
            "must be between 1s and 5m",
        ));
    }
    Ok(interval)
}

/// Azure when a connection string, or an account (or endpoint) plus a container, is set;
/// otherwise the embedded local store.
pub fn load_backend(env: &Env) -> Result<Backend, ConfigError> {
    let connection_string = env.get("AZURE_STORAGE_CONNECTION_STRING");
    let account = env.get("AZURE_STORAGE_ACCOUNT");
    let endpoint = env.get("AZURE_STORAGE_BLOB_ENDPOINT");
    if connection_string.is_none() && account.is_none() && endpoint.is_none() {
        downloads::refuse_on_embedded(env)?;
        return Ok(Backend::Local);
    }
    let container = env.get("AZURE_STORAGE_CONTAINER").ok_or_else(|| {
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
            // Plain http would send download URLs (and their signatures) in clear; only an
            // emulator on this machine is reached that way.
            if !parsed.blob_endpoint.starts_with("https://")
                && !is_loopback_url(&parsed.blob_endpoint)
            {
                return Err(ConfigError::new(
                    "AZURE_STORAGE_CONNECTION_STRING",
                    format!(
                        "the blob endpoint {} is plain http; use DefaultEndpointsProtocol=https (plain http is allowed only for an emulator on 127.0.0.1 or localhost)",
                        parsed.blob_endpoint
                    ),
                ));
            }
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
            let client_id = env.get("AZURE_CLIENT_ID");
            (account, endpoint, AzureAuth::Token { client_id })
        }
    };
    let download = env
        .choice(
            "NX_CACHE_DOWNLOAD",
            &[
                ("auto", Download::Auto),
                ("redirect", Download::Redirect),
                ("proxy", Download::Proxy),
            ],
        )?
        .unwrap_or(Download::Auto);
    let inline = downloads::load_inline(env, download)?;
    let hit_check = env
        .choice(
            "NX_CACHE_HIT_CHECK",
            &[("exact", HitCheck::Exact), ("none", HitCheck::None)],
        )?
        .unwrap_or(HitCheck::Exact);
    let sas_ttl = env.duration("NX_CACHE_SAS_TTL", Duration::from_secs(300))?;
    if sas_ttl < Duration::from_secs(30) || sas_ttl > Duration::from_secs(3600) {
        return Err(ConfigError::new(
            "NX_CACHE_SAS_TTL",
            "must be between 30s and 1h: download URLs are meant to be short-lived",
        ));
    }
    let timeout = env.duration("NX_CACHE_STORAGE_TIMEOUT", Duration::from_secs(10))?;
    let strict = env.switch("NX_CACHE_STRICT_STORAGE", false)?;
    let prefix = env.get("NX_CACHE_BLOB_PREFIX").unwrap_or_default();
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
        inline,
        hit_check,
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

/// Whether a URL's host is this machine (`127.0.0.1`, `localhost`, `[::1]`).
fn is_loopback_url(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Flags;
    use crate::config::tests::load;

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
        assert_eq!(azure.download, Download::Auto);
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
            // An account key over plain http to a real account: the download URLs' signatures
            // would travel in clear.
            (
                vec![
                    (
                        "AZURE_STORAGE_CONNECTION_STRING",
                        "DefaultEndpointsProtocol=http;AccountName=acme;AccountKey=a2V5;EndpointSuffix=core.windows.net",
                    ),
                    ("AZURE_STORAGE_CONTAINER", "abc"),
                ],
                "AZURE_STORAGE_CONNECTION_STRING",
            ),
            (
                vec![
                    (
                        "AZURE_STORAGE_CONNECTION_STRING",
                        "AccountName=acme;AccountKey=a2V5;BlobEndpoint=http://storage.example.com/acme",
                    ),
                    ("AZURE_STORAGE_CONTAINER", "abc"),
                ],
                "AZURE_STORAGE_CONNECTION_STRING",
            ),
        ];
        // Plain http stays allowed for an emulator on this machine.
        for endpoint in [
            "http://127.0.0.1:10000/devstoreaccount1",
            "http://localhost:10000/devstoreaccount1",
            "http://[::1]:10000/devstoreaccount1",
        ] {
            let cs =
                format!("AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint={endpoint}");
            let config = load(
                &[
                    ("AZURE_STORAGE_CONNECTION_STRING", &cs),
                    ("AZURE_STORAGE_CONTAINER", "abc"),
                ],
                Flags::default(),
            );
            assert!(config.is_ok(), "{endpoint}: {config:?}");
        }
        for (vars, setting) in cases {
            let err = load(&vars, Flags::default()).unwrap_err();
            assert_eq!(err.setting, setting, "{vars:?}");
        }
    }
}
