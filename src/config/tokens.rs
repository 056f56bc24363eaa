//! The tokens and trust section: this cache's token secrets (current, previous, the development
//! secret of a laptop), the rules every token is issued and verified under, and the trust
//! policy of `POST /token`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::ConfigError;
use super::parse::Env;
use crate::auth::policy::TrustPolicy;
use crate::auth::{Secret, TokenRules, parse_algorithm};

pub const DEFAULT_ISSUER: &str = "nx-azure-cache";
pub const DEFAULT_AUDIENCE: &str = "nx-remote-cache";
/// File inside the data directory that holds the development secret.
pub const DEV_SECRET_FILE: &str = ".dev-jwt-secret";
/// Default cap on a token's lifetime (`exp - iat`), at issue and at verification.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Default cap on the lifetime of an exchanged token (a trust rule's `ttl`).
pub const DEFAULT_MAX_EXCHANGE_TTL: Duration = Duration::from_secs(12 * 3600);
/// Default grace period of a recently expired token (no access, but no 401).
pub const DEFAULT_EXPIRED_GRACE: Duration = Duration::from_secs(12 * 3600);
/// Default clock skew tolerated on this cache's own tokens.
pub const DEFAULT_TOKEN_LEEWAY: Duration = Duration::from_secs(30);

/// Where the token secret comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// `NX_CACHE_JWT_SECRET`.
    Env(Secret),
    /// A development secret kept in the data directory, created on first run. Never used under
    /// Azure Functions.
    DevFile(PathBuf),
}

/// Token settings: the secrets, and the rules every token is issued and verified under.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub secret: SecretSource,
    /// Earlier secrets that still verify (`NX_CACHE_JWT_PREVIOUS_SECRETS`); never used to sign.
    pub previous: Vec<Secret>,
    pub rules: TokenRules,
}

/// Keyless access: the trust policy for `POST /token` (`NX_CACHE_TRUST_POLICY`). `None` turns
/// the exchange off.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    pub policy: Option<TrustPolicy>,
}

/// Where the server listens and who started it: the token section needs both to decide
/// whether the development secret may be used.
pub struct Listening<'a> {
    pub under_functions: bool,
    pub bind: IpAddr,
    pub data_dir: &'a Path,
}

/// The tokens section: secrets (current, previous), algorithm, issuer and audience, lifetimes.
pub fn load_tokens(env: &Env, listening: Listening) -> Result<TokenConfig, ConfigError> {
    let algorithm = env
        .get("NX_CACHE_JWT_ALGORITHM")
        .map(|v| {
            parse_algorithm(v.trim()).map_err(|e| ConfigError::new("NX_CACHE_JWT_ALGORITHM", e))
        })
        .transpose()?
        .unwrap_or(Algorithm::HS256);
    let secret = match env.get("NX_CACHE_JWT_SECRET") {
        Some(value) => SecretSource::Env(secret_value("NX_CACHE_JWT_SECRET", &value, algorithm)?),
        None if listening.under_functions => {
            return Err(ConfigError::new(
                "NX_CACHE_JWT_SECRET",
                "not set; it is required under Azure Functions (set it as an app setting or a Key Vault reference)",
            ));
        }
        // The development secret, and the token printed with it, exist only for loopback.
        None if !listening.bind.is_loopback() => {
            let bind = listening.bind;
            return Err(ConfigError::new(
                "NX_CACHE_JWT_SECRET",
                format!(
                    "not set; it is required when listening on {bind}, a non-loopback address (the development secret is for 127.0.0.1 only)"
                ),
            ));
        }
        None => SecretSource::DevFile(listening.data_dir.join(DEV_SECRET_FILE)),
    };
    // Comma-separated: base64 and hex secrets never contain a comma.
    let previous = env
        .get("NX_CACHE_JWT_PREVIOUS_SECRETS")
        .map(|list| {
            list.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| secret_value("NX_CACHE_JWT_PREVIOUS_SECRETS", s, algorithm))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let revoked: HashSet<String> = env
        .get("NX_CACHE_REVOKED_TOKENS")
        .map(|v| {
            v.split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let leeway = env.duration("NX_CACHE_TOKEN_LEEWAY", DEFAULT_TOKEN_LEEWAY)?;
    if leeway > Duration::from_secs(300) {
        return Err(ConfigError::new(
            "NX_CACHE_TOKEN_LEEWAY",
            "must be at most 5m",
        ));
    }
    let expired_grace = env.duration("NX_CACHE_EXPIRED_GRACE", DEFAULT_EXPIRED_GRACE)?;
    if expired_grace > Duration::from_secs(7 * 24 * 3600) {
        return Err(ConfigError::new(
            "NX_CACHE_EXPIRED_GRACE",
            "must be at most 7d: past it a forgotten token must be noticed (401)",
        ));
    }
    Ok(TokenConfig {
        secret,
        previous,
        rules: TokenRules {
            algorithm,
            issuer: env
                .get("NX_CACHE_JWT_ISSUER")
                .unwrap_or_else(|| DEFAULT_ISSUER.into()),
            audience: env
                .get("NX_CACHE_JWT_AUDIENCE")
                .unwrap_or_else(|| DEFAULT_AUDIENCE.into()),
            revoked,
            max_lifetime: env
                .duration("NX_CACHE_MAX_TOKEN_LIFETIME", DEFAULT_MAX_TOKEN_LIFETIME)?,
            expired_grace,
            leeway,
        },
    })
}

/// A signing secret from an app setting: refused when it is an unresolved Key Vault reference or
/// too short for the algorithm. Surrounding whitespace is trimmed: a trailing newline from a
/// paste or a vault is never key material, and the server and `handler token issue` trim alike.
fn secret_value(
    setting: &'static str,
    value: &str,
    algorithm: Algorithm,
) -> Result<Secret, ConfigError> {
    // An unresolved Key Vault reference reaches the app as its literal text, which is long
    // enough to pass as a secret; every token would then fail verification.
    if is_key_vault_reference(value) {
        return Err(ConfigError::new(
            setting,
            "is an unresolved Key Vault reference; grant the app's identity 'Key Vault Secrets User' on the secret and check the reference's SecretUri",
        ));
    }
    Secret::new(value.trim().as_bytes().to_vec(), algorithm)
        .map_err(|e| ConfigError::new(setting, e))
}

/// Whether an app setting's value is an App Service Key Vault reference
/// (`@Microsoft.KeyVault(...)`): the platform resolves it, and an unresolved one reaches the
/// app as this literal text.
pub fn is_key_vault_reference(value: &str) -> bool {
    value.trim_start().starts_with("@Microsoft.KeyVault(")
}

/// The trust section: the policy of `POST /token`, as JSON text or `@/path/to/file.json`.
pub fn load_trust(env: &Env, tokens: &TokenConfig) -> Result<TrustConfig, ConfigError> {
    let default_max_ttl = DEFAULT_MAX_EXCHANGE_TTL.min(tokens.rules.max_lifetime);
    let max_ttl = env.duration("NX_CACHE_MAX_EXCHANGE_TTL", default_max_ttl)?;
    if max_ttl > tokens.rules.max_lifetime {
        return Err(ConfigError::new(
            "NX_CACHE_MAX_EXCHANGE_TTL",
            "must not be longer than NX_CACHE_MAX_TOKEN_LIFETIME",
        ));
    }
    let Some(raw) = env.get("NX_CACHE_TRUST_POLICY") else {
        return Ok(TrustConfig { policy: None });
    };
    let text = match raw.trim().strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path.trim()).map_err(|e| {
            ConfigError::new(
                "NX_CACHE_TRUST_POLICY",
                format!("cannot read the policy file {}: {e}", path.trim()),
            )
        })?,
        None => raw,
    };
    let policy = TrustPolicy::review(&text, max_ttl).map_err(|refused| ConfigError {
        each: refused.problems.clone(),
        warnings: refused.warnings.clone(),
        ..ConfigError::new("NX_CACHE_TRUST_POLICY", refused.summary())
    })?;
    Ok(TrustConfig {
        policy: Some(policy),
    })
}

/// Reads the development secret from `path`, creating it (48 random bytes, base64, mode 0600)
/// when it does not exist. Returns the secret and whether it was just created.
pub fn load_or_create_dev_secret(
    path: &Path,
    algorithm: Algorithm,
) -> std::io::Result<(Secret, bool)> {
    use base64::Engine;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let secret = Secret::new(text.trim().as_bytes().to_vec(), algorithm)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            Ok((secret, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                // The data folder is private to this user (the embedded store keeps it 0700).
                let mut folder = std::fs::DirBuilder::new();
                folder.recursive(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::DirBuilderExt;
                    folder.mode(0o700);
                }
                folder.create(parent)?;
            }
            let mut raw = [0u8; 48];
            getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
            let text = base64::engine::general_purpose::STANDARD.encode(raw);
            write_private(path, &text)?;
            let secret =
                Secret::new(text.into_bytes(), algorithm).map_err(std::io::Error::other)?;
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
    use crate::config::tests::{SECRET, load};
    use crate::config::{Config, Flags};

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
    fn secrets_are_trimmed_and_sized_for_their_algorithm() {
        // A trailing newline from a vault or a paste is not key material.
        let padded = format!("  {SECRET}\n");
        let trimmed = load(&[("NX_CACHE_JWT_SECRET", &padded)], Flags::default()).unwrap();
        let plain = load(&[("NX_CACHE_JWT_SECRET", SECRET)], Flags::default()).unwrap();
        let sign = |config: &Config| {
            let SecretSource::Env(secret) = &config.tokens.secret else {
                panic!("an env secret")
            };
            crate::auth::TokenAuthority::new(secret, &[], config.tokens.rules.clone())
        };
        let token = sign(&trimmed)
            .issue(&crate::auth::TokenRequest {
                org: true,
                teams: vec![],
                access: crate::auth::Access::ReadOnly,
                expires_in: Duration::from_secs(60),
                subject: "t".into(),
                rule: None,
                rule_digest: None,
                origin: None,
            })
            .unwrap()
            .token;
        assert!(sign(&plain).verify(&token).is_ok());

        // 32 bytes is enough for HS256, not for HS512.
        let err = load(
            &[
                ("NX_CACHE_JWT_SECRET", SECRET),
                ("NX_CACHE_JWT_ALGORITHM", "HS512"),
            ],
            Flags::default(),
        )
        .unwrap_err();
        assert_eq!(err.setting, "NX_CACHE_JWT_SECRET");
        assert!(err.problem.contains("at least 64"), "{err}");
    }

    #[test]
    fn previous_secrets_grace_and_leeway() {
        let config = load(
            &[
                ("NX_CACHE_JWT_SECRET", SECRET),
                (
                    "NX_CACHE_JWT_PREVIOUS_SECRETS",
                    " old-secret-0123456789abcdef0123456789 ,\nolder-secret-0123456789abcdef012345678\n",
                ),
                ("NX_CACHE_EXPIRED_GRACE", "1h"),
                ("NX_CACHE_TOKEN_LEEWAY", "0s"),
            ],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(config.tokens.previous.len(), 2, "two secrets, trimmed");
        assert_eq!(config.tokens.rules.expired_grace, Duration::from_secs(3600));
        assert_eq!(config.tokens.rules.leeway, Duration::ZERO);
        let defaults = load(&[], Flags::default()).unwrap();
        assert_eq!(defaults.tokens.rules.expired_grace, DEFAULT_EXPIRED_GRACE);
        assert_eq!(defaults.tokens.rules.leeway, DEFAULT_TOKEN_LEEWAY);
        assert!(defaults.tokens.previous.is_empty());
        assert!(!defaults.retention.is_on(), "retention is off by default");
        for (name, value) in [
            ("NX_CACHE_JWT_PREVIOUS_SECRETS", "short"),
            (
                "NX_CACHE_JWT_PREVIOUS_SECRETS",
                "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/old/)",
            ),
            ("NX_CACHE_EXPIRED_GRACE", "8d"),
            ("NX_CACHE_TOKEN_LEEWAY", "1h"),
            ("NX_CACHE_MAX_EXCHANGE_TTL", "100d"),
            ("NX_CACHE_TRUST_POLICY", "{\"rules\": []}"),
            ("NX_CACHE_TRUST_POLICY", "@/nonexistent/policy.json"),
            ("NX_CACHE_MAX_SIZE", "lots"),
            ("NX_CACHE_MAX_AGE", "10s"),
        ] {
            let err = load(&[(name, value)], Flags::default()).unwrap_err();
            assert_eq!(err.setting, name, "{name}={value}: {err}");
        }
    }

    #[test]
    fn the_development_secret_is_for_loopback_only() {
        let public = Flags {
            port: None,
            bind: Some(IpAddr::from([0, 0, 0, 0])),
        };
        let err = load(&[], public.clone()).unwrap_err();
        assert_eq!(err.setting, "NX_CACHE_JWT_SECRET");
        assert!(err.problem.contains("0.0.0.0"), "{err}");
        assert!(load(&[("NX_CACHE_JWT_SECRET", SECRET)], public).is_ok());
        let v6_loopback = Flags {
            port: None,
            bind: Some("::1".parse().unwrap()),
        };
        assert!(matches!(
            load(&[], v6_loopback).unwrap().tokens.secret,
            SecretSource::DevFile(_)
        ));
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
        assert_eq!(config.mode, crate::config::Mode::ReadOnly);
        assert_eq!(config.tokens.rules.revoked.len(), 3);
        assert!(config.tokens.rules.revoked.contains("b"));
    }

    #[test]
    fn dev_secret_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(DEV_SECRET_FILE);
        let (_, created) = load_or_create_dev_secret(&path, Algorithm::HS256).unwrap();
        assert!(created);
        let first = std::fs::read(&path).unwrap();
        let (_, created_again) = load_or_create_dev_secret(&path, Algorithm::HS256).unwrap();
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
