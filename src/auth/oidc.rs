//! Verification of identity tokens: OIDC ID tokens (GitHub Actions, GitLab CI, any OIDC issuer)
//! and Microsoft Entra ID access tokens.
//!
//! - **Only trusted issuers are ever contacted.** The issuers are the ones the trust policy
//!   names, fixed at startup. A token's `iss` only selects among them (a token from any other
//!   issuer is refused before anything is fetched), and `jku`/`x5u` headers are ignored, so no
//!   token can make the server fetch a URL of its choosing. Discovery
//!   (`{issuer}/.well-known/openid-configuration`) and the JWKS it names are fetched over https
//!   (plain http only on loopback, for tests), without following redirects, within a timeout and
//!   a size limit.
//! - **Asymmetric signatures only**: RS256/384/512, PS256/384/512, ES256, ES384. Never HS* (a
//!   token "signed" with the issuer's public key as an HMAC secret is the classic confusion),
//!   never `none`; symmetric keys in a JWKS are ignored.
//! - **Keys are cached.** An unknown `kid` (the issuer rotated its keys) triggers a re-fetch, but
//!   at most once every [`MIN_REFRESH`] per issuer, so a real rotation is picked up within
//!   seconds and junk tokens cannot make the server hammer an issuer. Cached keys older than
//!   [`MAX_KEY_AGE`] are refreshed on use, and kept if the issuer cannot be reached.
//! - `exp`, `nbf`, `iat` and `iss` are checked with a small leeway; the audience is the trust
//!   policy's business ([`super::policy`]).
//! - **A claim appears once.** A JSON object may repeat a name, and the JSON parser keeps the
//!   last value silently, while another reader of the same token might take the first. A token
//!   that repeats `iss`, `aud`, `exp`, `nbf` or `iat` is refused; any other repeated claim is
//!   taken out of the claims, so no trust-rule condition on it holds (said at debug level).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::unix_now;

/// Fewest seconds between two key fetches from one issuer.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Cached keys older than this are refreshed on their next use.
pub const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
/// Bound on each fetch (discovery, JWKS).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest discovery document or JWKS read.
const MAX_DOCUMENT: usize = 256 * 1024;
/// Most keys kept per issuer.
const MAX_KEYS: usize = 64;
/// Largest identity token looked at.
const MAX_TOKEN: usize = 16 * 1024;
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY: u64 = 60;

/// Why an identity token was refused. Messages say what to fix and never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("the identity token is not a JWT")]
    Malformed,
    #[error("the identity token is refused: {0}")]
    Unsupported(&'static str),
    #[error(
        "the identity token is signed with {0}; only asymmetric signatures are accepted (RS256, ES256, ...)"
    )]
    Algorithm(String),
    #[error("no trust rule names the identity token's issuer")]
    UnknownIssuer,
    #[error("the identity token was signed with a key its issuer does not publish")]
    UnknownKey,
    #[error("the identity token's signature is not valid")]
    Signature,
    #[error("the identity token has expired; get a fresh one")]
    Expired,
    #[error("the identity token is not valid yet; check the clocks")]
    NotYetValid,
    #[error("the identity token lacks the claim '{0}'")]
    MissingClaim(String),
    #[error("the issuer's signing keys cannot be fetched right now; try again later")]
    Unavailable,
}

/// A verified identity token: who issued it, for whom, and every claim.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub claims: Map<String, Value>,
}

/// Verifies identity tokens of a fixed set of issuers.
pub struct Verifier {
    issuers: HashMap<String, IssuerKeys>,
    http: reqwest::Client,
}

/// One issuer's keys and when they were last fetched.
struct IssuerKeys {
    issuer: String,
    discovery: String,
    cache: RwLock<KeySet>,
    /// Held while fetching: one fetch per issuer at a time. Remembers the last attempt.
    refresh: tokio::sync::Mutex<Attempt>,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Key>,
    fetched: Option<Instant>,
}

#[derive(Clone)]
struct Key {
    decoding: DecodingKey,
    /// The JWK's `alg`, when it names one: tokens must then use exactly it.
    algorithm: Option<Algorithm>,
}

#[derive(Default)]
struct Attempt {
    at: Option<Instant>,
    failed: bool,
}

impl Verifier {
    /// A verifier for exactly these issuers (the trust policy's), each with the URL of its
    /// discovery document (the issuer's profile knows where it is).
    pub fn new(issuers: Vec<(String, String)>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot create the HTTP client for identity issuers: {e}"))?;
        let issuers = issuers
            .into_iter()
            .map(|(issuer, discovery)| {
                let keys = IssuerKeys {
                    discovery,
                    issuer: issuer.clone(),
                    cache: RwLock::new(KeySet::default()),
                    refresh: tokio::sync::Mutex::new(Attempt::default()),
                };
                (issuer, keys)
            })
            .collect();
        Ok(Self { issuers, http })
    }

    /// Verifies `token`'s issuer, key, algorithm, signature and times.
    pub async fn verify(&self, token: &str) -> Result<Identity, OidcError> {
        if token.len() > MAX_TOKEN {
            return Err(OidcError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| OidcError::Malformed)?;
        // RFC 7515 4.1.11: a recipient that does not understand an extension named in `crit`
        // must reject the token, and this server implements none.
        if header.crit.is_some() {
            return Err(OidcError::Unsupported(
                "it names critical header extensions (crit), and this cache implements none",
            ));
        }
        if !ASYMMETRIC.contains(&header.alg) {
            return Err(OidcError::Algorithm(format!("{:?}", header.alg)));
        }
        // The unverified payload only picks the issuer (and names the claims it repeats);
        // nothing else in it is used before the signature is checked with that issuer's key.
        let Payload { issuer, repeated } = unverified_payload(token)?;
        let keys = self.issuers.get(&issuer).ok_or(OidcError::UnknownIssuer)?;
        let key = keys.key(header.kid.as_deref(), &self.http).await?;
        if key.algorithm.is_some_and(|alg| alg != header.alg) {
            return Err(OidcError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&issuer]);
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.leeway = LEEWAY;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => OidcError::Expired,
                ErrorKind::ImmatureSignature => OidcError::NotYetValid,
                ErrorKind::InvalidSignature => OidcError::Signature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    OidcError::Algorithm(format!("{:?}", header.alg))
                }
                ErrorKind::MissingRequiredClaim(claim) => OidcError::MissingClaim(claim.clone()),
                _ => OidcError::Malformed,
            })?;
        let mut claims = data.claims;
        for name in &repeated {
            tracing::debug!(issuer = %issuer, claim = %crate::auth::conditions::echo_text(name),
                "the identity token repeats this claim: no trust-rule condition on it holds");
            claims.remove(name);
        }
        if claims
            .get("iat")
            .and_then(Value::as_u64)
            .is_some_and(|iat| iat > unix_now() + LEEWAY)
        {
            return Err(OidcError::NotYetValid);
        }
        let audiences = match claims.get("aud") {
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(many)) => many
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            _ => return Err(OidcError::MissingClaim("aud".into())),
        };
        Ok(Identity {
            issuer,
            audiences,
            claims,
        })
    }
}

impl Verifier {
    /// Fetches every issuer's keys now (for `handler doctor`): per issuer, how many signing keys
    /// it publishes, or why they cannot be fetched.
    pub async fn check_issuers(&self) -> Vec<(String, Result<usize, String>)> {
        let mut results = Vec::new();
        for keys in self.issuers.values() {
            let result = keys.fetch(&self.http).await.map(|found| found.len());
            results.push((keys.issuer.clone(), result));
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        results
    }
}

/// The algorithms an identity token may be signed with.
const ASYMMETRIC: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

impl IssuerKeys {
    /// The key `kid` names (or the only key, for a token without `kid`), fetching the issuer's
    /// keys when it is unknown or the cache is old, at most once per [`MIN_REFRESH`].
    async fn key(&self, kid: Option<&str>, http: &reqwest::Client) -> Result<Key, OidcError> {
        if let Some(key) = self.cached(kid, true) {
            return Ok(key);
        }
        let mut attempt = self.refresh.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(key) = self.cached(kid, true) {
            return Ok(key);
        }
        let recent = attempt.at.is_some_and(|at| at.elapsed() < MIN_REFRESH);
        if !recent {
            attempt.at = Some(Instant::now());
            match self.fetch(http).await {
                Ok(keys) => {
                    tracing::info!(issuer = %self.issuer, keys = keys.len(), "identity issuer keys fetched");
                    *self.cache.write().unwrap_or_else(|e| e.into_inner()) = KeySet {
                        keys,
                        fetched: Some(Instant::now()),
                    };
                    attempt.failed = false;
                }
                Err(problem) => {
                    tracing::warn!(issuer = %self.issuer, %problem, "cannot fetch the identity issuer's keys");
                    attempt.failed = true;
                }
            }
        }
        // A stale key is better than none while the issuer cannot be reached.
        match self.cached(kid, false) {
            Some(key) => Ok(key),
            None if attempt.failed => Err(OidcError::Unavailable),
            None => Err(OidcError::UnknownKey),
        }
    }

    fn cached(&self, kid: Option<&str>, fresh_only: bool) -> Option<Key> {
        let set = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let fresh = set.fetched.is_some_and(|at| at.elapsed() < MAX_KEY_AGE);
        if fresh_only && !fresh {
            return None;
        }
        match kid {
            Some(kid) => set.keys.get(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.values().next().cloned(),
            None => None,
        }
    }

    /// Discovery, then the JWKS it names. The error is for the log.
    async fn fetch(&self, http: &reqwest::Client) -> Result<HashMap<String, Key>, String> {
        let document = get_json(http, &self.discovery).await?;
        if document.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(format!(
                "the discovery document at {} names another issuer",
                self.discovery
            ));
        }
        let jwks_uri = document
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("the discovery document has no jwks_uri")?;
        if !allowed_url(jwks_uri) {
            return Err(format!("jwks_uri {jwks_uri} is not https"));
        }
        let jwks = get_json(http, jwks_uri).await?;
        let keys = parse_jwks(&jwks);
        if keys.is_empty() {
            return Err(format!("no usable signing key at {jwks_uri}"));
        }
        Ok(keys)
    }
}

/// Signing keys of a JWKS by `kid`: RSA and EC keys meant for signatures. Symmetric keys and
/// keys without `kid` are ignored.
fn parse_jwks(jwks: &Value) -> HashMap<String, Key> {
    let mut keys = HashMap::new();
    let Some(list) = jwks.get("keys").and_then(Value::as_array) else {
        return keys;
    };
    for value in list {
        if keys.len() == MAX_KEYS {
            break;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else {
            continue;
        };
        let asymmetric = matches!(
            jwk.algorithm,
            AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_)
        );
        let for_signing =
            !matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature);
        let (Some(kid), true, true) = (jwk.common.key_id.clone(), asymmetric, for_signing) else {
            continue;
        };
        let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let algorithm = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        keys.insert(
            kid,
            Key {
                decoding,
                algorithm,
            },
        );
    }
    keys
}

/// GETs a JSON document: no redirects, bounded in time and size.
async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let mut response = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("{url}: {}", e.without_url()))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("{url}: {}", e.without_url()))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_DOCUMENT {
            return Err(format!("{url} is larger than {MAX_DOCUMENT} bytes"));
        }
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url} is not JSON: {e}"))
}

/// https, or plain http to this machine (tests).
fn allowed_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return false;
    };
    match uri.scheme_str() {
        Some("https") => true,
        Some("http") => uri.host().is_some_and(|host| {
            host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}

/// What is read of a token's payload before its signature is checked.
#[derive(Debug, PartialEq, Eq)]
struct Payload {
    issuer: String,
    /// The names the payload gives more than once.
    repeated: Vec<String>,
}

/// The claims that decide whether a token is valid at all; repeated, they are refused.
const REGISTERED: [&str; 5] = ["iss", "aud", "exp", "nbf", "iat"];

/// Every member of a JSON object in order, a repeated name included (a `Map` keeps the last).
struct Members(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// The `iss` of a token's payload and the names it repeats, read without verifying anything; a
/// payload whose time claims are not integers, or that repeats a registered claim, is refused
/// here.
fn unverified_payload(token: &str) -> Result<Payload, OidcError> {
    let payload = token.split('.').nth(1).ok_or(OidcError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| OidcError::Malformed)?;
    let Members(members) = serde_json::from_slice(&bytes).map_err(|_| OidcError::Malformed)?;
    // One pass with a set: the payload is not verified yet, so its size (up to MAX_TOKEN) is the
    // caller's choice, and the work must stay linear in it.
    let mut seen = std::collections::HashSet::with_capacity(members.len());
    let mut named_twice = std::collections::HashSet::new();
    let mut repeated: Vec<String> = Vec::new();
    for (name, _) in &members {
        if !seen.insert(name.as_str()) && named_twice.insert(name.as_str()) {
            repeated.push(name.clone());
        }
    }
    if repeated
        .iter()
        .any(|name| REGISTERED.contains(&name.as_str()))
    {
        return Err(OidcError::Unsupported(
            "it gives iss, aud, exp, nbf or iat more than once",
        ));
    }
    // NumericDate claims must be integers: the JWT library would round a float and skip a
    // string, and `iat` is checked by this module, so either could slip past a time check.
    // Refusing on the unverified payload is safe: nothing is granted before the signature.
    if members
        .iter()
        .any(|(name, value)| ["exp", "nbf", "iat"].contains(&name.as_str()) && !value.is_u64())
    {
        return Err(OidcError::Unsupported(
            "exp, nbf and iat must be integers (seconds since the epoch)",
        ));
    }
    let issuer = members
        .iter()
        .find(|(name, _)| name == "iss")
        .and_then(|(_, value)| value.as_str())
        .map(str::to_owned)
        .ok_or_else(|| OidcError::MissingClaim("iss".into()))?;
    Ok(Payload { issuer, repeated })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_urls_are_fetched() {
        assert!(allowed_url(
            "https://token.actions.githubusercontent.com/.well-known/jwks"
        ));
        assert!(allowed_url("http://127.0.0.1:8080/keys"));
        assert!(allowed_url("http://localhost/keys"));
        assert!(!allowed_url("http://169.254.169.254/metadata"));
        assert!(!allowed_url("http://example.com/keys"));
        assert!(!allowed_url("file:///etc/passwd"));
        assert!(!allowed_url("not a url"));
    }

    #[test]
    fn symmetric_and_unnamed_keys_are_ignored() {
        let jwks = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "good", "use": "sig", "alg": "RS256", "n": "sXch", "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "weird", "kid": "x"}
        ]});
        let keys = parse_jwks(&jwks);
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, vec!["ec", "good"]);
        assert_eq!(keys["good"].algorithm, Some(Algorithm::RS256));
        assert_eq!(keys["ec"].algorithm, None);
    }

    #[test]
    fn the_issuer_is_read_before_anything_is_verified() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = |payload: &str| format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(payload));
        assert_eq!(
            unverified_payload(&token(r#"{"iss":"https://x"}"#)).unwrap(),
            Payload {
                issuer: "https://x".into(),
                repeated: vec![]
            }
        );
        assert_eq!(unverified_payload("a.b").unwrap_err(), OidcError::Malformed);
        assert!(matches!(
            unverified_payload(&token(r#"{"sub":"x"}"#)),
            Err(OidcError::MissingClaim(_))
        ));
        // A repeated claim is named (the JSON parser would keep its last value silently).
        assert_eq!(
            unverified_payload(&token(
                r#"{"iss":"https://x","repository":"acme/evil","repository":"acme/web","ref":"a","repository":"x"}"#
            ))
            .unwrap()
            .repeated,
            vec!["repository".to_string()]
        );
        // A repeated registered claim refuses the token.
        for payload in [
            r#"{"iss":"https://x","iss":"https://y"}"#,
            r#"{"iss":"https://x","exp":1,"exp":2}"#,
            r#"{"iss":"https://x","aud":"a","aud":"b"}"#,
        ] {
            assert!(
                matches!(
                    unverified_payload(&token(payload)),
                    Err(OidcError::Unsupported(_))
                ),
                "{payload}"
            );
        }
    }
}
