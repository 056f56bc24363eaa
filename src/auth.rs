//! Bearer tokens: issuing them (`handler token issue`) and verifying them on every request.
//!
//! Tokens are JWTs signed with a shared secret (HS256 unless configured otherwise). The
//! algorithm is pinned on verification, so `alg: none` or a different algorithm is refused,
//! and the signature check (HMAC) is constant-time inside `jsonwebtoken`.
//!
//! A token carries its scope: the org-wide cache (`org`), a list of teams (`teams`), and whether
//! it may write (`access`). Read-only tokens go to developers and pull requests, read-write
//! tokens only to trusted CI: this is what stops cache poisoning.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::key::{Namespace, TeamName};

/// Shortest secret accepted for HS256: 32 bytes, the output size of its hash.
pub const MIN_SECRET_LEN: usize = 32;

/// Shortest secret for an algorithm: at least the size of its hash output (RFC 7518 §3.2).
pub fn min_secret_len(algorithm: Algorithm) -> usize {
    match algorithm {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => MIN_SECRET_LEN,
    }
}

/// The signing secret. Its `Debug` never shows the bytes, so it cannot leak through a log line.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps a secret for `algorithm`, refusing one shorter than that algorithm's hash output.
    pub fn new(bytes: Vec<u8>, algorithm: Algorithm) -> Result<Self, String> {
        let min = min_secret_len(algorithm);
        if bytes.len() < min {
            return Err(format!(
                "too short for {algorithm:?} ({} bytes); use at least {min} random bytes, e.g. `openssl rand -base64 {}`",
                bytes.len(),
                min.max(48)
            ));
        }
        Ok(Self(bytes))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What a token allows besides its namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// The claims inside a token. `org`, `teams` and `access` are this project's own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub jti: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    #[serde(default)]
    pub org: bool,
    #[serde(default)]
    pub teams: Vec<String>,
    pub access: Access,
}

/// What `handler token issue` asks for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub org: bool,
    pub teams: Vec<TeamName>,
    pub access: Access,
    pub expires_in: Duration,
    pub subject: String,
}

/// A verified token: who it is and what it may touch.
#[derive(Debug, Clone)]
pub struct Grant {
    pub subject: String,
    pub token_id: String,
    pub org: bool,
    pub teams: Vec<TeamName>,
    pub access: Access,
}

impl Grant {
    /// Whether the token covers this namespace at all.
    pub fn covers(&self, namespace: &Namespace) -> bool {
        match namespace {
            Namespace::Org => self.org,
            Namespace::Team(team) => self.teams.contains(team),
        }
    }

    pub fn can_write(&self, namespace: &Namespace) -> bool {
        self.covers(namespace) && self.access == Access::ReadWrite
    }
}

/// Why a request's token was refused. Each message tells the user what to fix; the Nx client
/// prints it after "Unauthorized:". No message ever echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no access token: set NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN to a token issued by `handler token issue`"
    )]
    Missing,
    #[error("the Authorization header must be `Bearer <token>`")]
    NotBearer,
    #[error("the access token is not a valid token for this cache; ask for a new one")]
    Invalid,
    #[error("the access token has expired; ask for a new one")]
    Expired,
    #[error("the access token is not valid yet; check the clock of the machine that issued it")]
    NotYetValid,
    #[error("the access token was issued for another cache (issuer or audience differ)")]
    WrongIssuer,
    #[error("the access token has been revoked; ask for a new one")]
    Revoked,
    #[error(
        "the access token lives longer than this cache accepts (NX_CACHE_MAX_TOKEN_LIFETIME); ask for a new one"
    )]
    TooLong,
}

/// Issues and verifies tokens with one secret and one pinned algorithm.
pub struct TokenAuthority {
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    revoked: HashSet<String>,
    /// Longest lifetime (`exp - iat`) issued or accepted.
    max_lifetime: Duration,
}

impl fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("revoked", &self.revoked.len())
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

impl TokenAuthority {
    pub fn new(
        secret: &Secret,
        algorithm: Algorithm,
        issuer: &str,
        audience: &str,
        revoked: HashSet<String>,
        max_lifetime: Duration,
    ) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        // Tolerate a little clock skew between the machine that issued a token and this one.
        validation.leeway = 30;
        Self {
            algorithm,
            encoding: EncodingKey::from_secret(&secret.0),
            decoding: DecodingKey::from_secret(&secret.0),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            revoked,
            max_lifetime,
        }
    }

    /// Signs a new token. Every token gets a random id (`jti`) so it can be revoked alone.
    pub fn issue(&self, request: &TokenRequest) -> Result<String, String> {
        if !request.org && request.teams.is_empty() {
            return Err("a token needs a scope: pass --org and/or --team NAME".into());
        }
        if request.expires_in > self.max_lifetime {
            return Err(format!(
                "--expires-in {} is longer than this cache accepts ({}, NX_CACHE_MAX_TOKEN_LIFETIME)",
                humantime::format_duration(request.expires_in),
                humantime::format_duration(self.max_lifetime)
            ));
        }
        let now = unix_now();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: request.subject.clone(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(request.expires_in.as_secs()),
            org: request.org,
            teams: request
                .teams
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            access: request.access,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.encoding)
            .map_err(|e| format!("could not sign the token: {e}"))
    }

    /// Checks an `Authorization` header value and returns what the token grants.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Grant, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = bearer_token(header)?;
        self.verify(token)
    }

    /// Verifies a bare token: signature, pinned algorithm, expiry, not-before, issuer, audience,
    /// lifetime, revocation, and that its team names are well-formed.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => AuthError::WrongIssuer,
                _ => AuthError::Invalid,
            })?;
        let claims = data.claims;
        // `iat` is required by `Claims`; a lifetime over the cap means the token was minted by
        // something other than this cache's rules (or before the cap was lowered).
        if claims.exp.saturating_sub(claims.iat)
            > self.max_lifetime.as_secs() + self.validation.leeway
        {
            return Err(AuthError::TooLong);
        }
        if self.revoked.contains(&claims.jti) {
            return Err(AuthError::Revoked);
        }
        let teams = claims
            .teams
            .iter()
            .map(|t| TeamName::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| AuthError::Invalid)?;
        Ok(Grant {
            subject: claims.sub,
            token_id: claims.jti,
            org: claims.org,
            teams,
            access: claims.access,
        })
    }
}

/// Extracts the token from `Bearer <token>` (the scheme is case-insensitive, RFC 7235).
fn bearer_token(header: &str) -> Result<&str, AuthError> {
    let (scheme, token) = header.split_once(' ').ok_or(AuthError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses a JWT algorithm name; only the HMAC family makes sense with a shared secret.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "HS384" => Ok(Algorithm::HS384),
        "HS512" => Ok(Algorithm::HS512),
        other => Err(format!("expected HS256, HS384 or HS512, got '{other}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn authority(revoked: &[&str]) -> TokenAuthority {
        let secret = Secret::new(vec![7u8; 32], Algorithm::HS256).unwrap();
        TokenAuthority::new(
            &secret,
            Algorithm::HS256,
            "iss-test",
            "aud-test",
            revoked.iter().map(|s| s.to_string()).collect(),
            90 * DAY,
        )
    }

    fn request(org: bool, teams: &[&str], access: Access) -> TokenRequest {
        TokenRequest {
            org,
            teams: teams.iter().map(|t| TeamName::parse(t).unwrap()).collect(),
            access,
            expires_in: Duration::from_secs(3600),
            subject: "tester".into(),
        }
    }

    fn team(name: &str) -> Namespace {
        Namespace::Team(TeamName::parse(name).unwrap())
    }

    /// Builds a token with arbitrary header and claims, signed (or not) with `key`.
    fn forge(header_json: &str, claims: &serde_json::Value, key: &[u8]) -> String {
        use hmac::{Hmac, Mac};
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signing_input = format!(
            "{}.{}",
            b64.encode(header_json),
            b64.encode(claims.to_string())
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            b64.encode(mac.finalize().into_bytes())
        )
    }

    fn claims_json(exp_offset: i64, nbf_offset: i64) -> serde_json::Value {
        let now = unix_now() as i64;
        serde_json::json!({
            "iss": "iss-test", "aud": "aud-test", "sub": "x", "jti": "id1",
            "iat": now, "nbf": now + nbf_offset, "exp": now + exp_offset,
            "org": true, "teams": [], "access": "read-write"
        })
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Secret::new(vec![1; MIN_SECRET_LEN - 1], Algorithm::HS256).is_err());
        assert!(Secret::new(vec![1; MIN_SECRET_LEN], Algorithm::HS256).is_ok());
        assert_eq!(
            format!("{:?}", Secret::new(vec![1; 40], Algorithm::HS256).unwrap()),
            "Secret(<redacted>)"
        );
    }

    #[test]
    fn secrets_are_at_least_as_long_as_the_hash_output() {
        // RFC 7518 section 3.2: HS384 needs 48 bytes, HS512 64.
        for (algorithm, min) in [
            (Algorithm::HS256, 32),
            (Algorithm::HS384, 48),
            (Algorithm::HS512, 64),
        ] {
            let short = Secret::new(vec![1; min - 1], algorithm).unwrap_err();
            assert!(short.contains(&format!("at least {min}")), "{short}");
            assert!(Secret::new(vec![1; min], algorithm).is_ok());
        }
    }

    #[test]
    fn lifetimes_are_capped_at_issue_and_at_verification() {
        let auth = authority(&[]);
        let mut too_long = request(true, &[], Access::ReadWrite);
        too_long.expires_in = 91 * DAY;
        let refused = auth.issue(&too_long).unwrap_err();
        assert!(refused.contains("NX_CACHE_MAX_TOKEN_LIFETIME"), "{refused}");
        too_long.expires_in = 90 * DAY;
        assert!(auth.verify(&auth.issue(&too_long).unwrap()).is_ok());

        // A token minted elsewhere with the secret: 500000 years, or no `iat` at all.
        let h = r#"{"alg":"HS256"}"#;
        let mut forever = claims_json(600, 0);
        forever["exp"] = serde_json::json!(unix_now() + 500_000 * 365 * 24 * 3600);
        assert_eq!(
            auth.verify(&forge(h, &forever, &[7u8; 32])).unwrap_err(),
            AuthError::TooLong
        );
        let mut no_iat = claims_json(600, 0);
        no_iat.as_object_mut().unwrap().remove("iat");
        assert_eq!(
            auth.verify(&forge(h, &no_iat, &[7u8; 32])).unwrap_err(),
            AuthError::Invalid
        );
    }

    #[test]
    fn issued_token_round_trips_with_its_scope() {
        let auth = authority(&[]);
        let token = auth
            .issue(&request(false, &["web"], Access::ReadOnly))
            .unwrap();
        let grant = auth
            .verify_header(Some(&format!("Bearer {token}")))
            .unwrap();
        assert!(grant.covers(&team("web")));
        assert!(!grant.covers(&team("api")));
        assert!(!grant.covers(&Namespace::Org));
        assert!(!grant.can_write(&team("web")));
        assert_eq!(grant.subject, "tester");
    }

    #[test]
    fn read_write_org_token_cannot_touch_teams() {
        let auth = authority(&[]);
        let token = auth.issue(&request(true, &[], Access::ReadWrite)).unwrap();
        let grant = auth.verify(&token).unwrap();
        assert!(grant.can_write(&Namespace::Org));
        assert!(!grant.covers(&team("web")));
    }

    #[test]
    fn a_token_without_scope_is_not_issued() {
        assert!(
            authority(&[])
                .issue(&request(false, &[], Access::ReadWrite))
                .is_err()
        );
    }

    #[test]
    fn header_shapes() {
        let auth = authority(&[]);
        assert_eq!(auth.verify_header(None).unwrap_err(), AuthError::Missing);
        assert_eq!(
            auth.verify_header(Some("Bearer ")).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            auth.verify_header(Some("Basic abc")).unwrap_err(),
            AuthError::NotBearer
        );
        assert_eq!(
            auth.verify_header(Some("Bearer")).unwrap_err(),
            AuthError::NotBearer
        );
        assert_eq!(
            auth.verify_header(Some("bearer a.b.c")).unwrap_err(),
            AuthError::Invalid
        );
    }

    #[test]
    fn tampered_and_foreign_tokens_are_refused() {
        let auth = authority(&[]);
        let good = forge(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &claims_json(600, 0),
            &[7u8; 32],
        );
        assert!(
            auth.verify(&good).is_ok(),
            "the forge helper must make valid tokens"
        );
        let wrong_key = forge(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &claims_json(600, 0),
            &[8u8; 32],
        );
        assert_eq!(auth.verify(&wrong_key).unwrap_err(), AuthError::Invalid);
        let other_alg = forge(
            r#"{"alg":"HS512","typ":"JWT"}"#,
            &claims_json(600, 0),
            &[7u8; 32],
        );
        assert_eq!(auth.verify(&other_alg).unwrap_err(), AuthError::Invalid);
        let unsigned = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(claims_json(600, 0).to_string())
        );
        assert_eq!(auth.verify(&unsigned).unwrap_err(), AuthError::Invalid);
        assert_eq!(auth.verify("not-a-jwt").unwrap_err(), AuthError::Invalid);
    }

    #[test]
    fn time_and_audience_rules() {
        let auth = authority(&[]);
        let h = r#"{"alg":"HS256"}"#;
        let expired = forge(h, &claims_json(-3600, -7200), &[7u8; 32]);
        assert_eq!(auth.verify(&expired).unwrap_err(), AuthError::Expired);
        let future = forge(h, &claims_json(7200, 3600), &[7u8; 32]);
        assert_eq!(auth.verify(&future).unwrap_err(), AuthError::NotYetValid);
        let mut no_exp = claims_json(600, 0);
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            auth.verify(&forge(h, &no_exp, &[7u8; 32])).unwrap_err(),
            AuthError::Invalid
        );
        let mut wrong_aud = claims_json(600, 0);
        wrong_aud["aud"] = "someone-else".into();
        assert_eq!(
            auth.verify(&forge(h, &wrong_aud, &[7u8; 32])).unwrap_err(),
            AuthError::WrongIssuer
        );
        let mut wrong_iss = claims_json(600, 0);
        wrong_iss["iss"] = "someone-else".into();
        assert_eq!(
            auth.verify(&forge(h, &wrong_iss, &[7u8; 32])).unwrap_err(),
            AuthError::WrongIssuer
        );
        let mut bad_team = claims_json(600, 0);
        bad_team["teams"] = serde_json::json!(["../org"]);
        assert_eq!(
            auth.verify(&forge(h, &bad_team, &[7u8; 32])).unwrap_err(),
            AuthError::Invalid
        );
    }

    #[test]
    fn revoked_token_ids_are_refused() {
        let h = r#"{"alg":"HS256"}"#;
        let token = forge(h, &claims_json(600, 0), &[7u8; 32]);
        assert!(authority(&["other"]).verify(&token).is_ok());
        assert_eq!(
            authority(&["id1"]).verify(&token).unwrap_err(),
            AuthError::Revoked
        );
    }

    #[test]
    fn algorithms() {
        assert_eq!(parse_algorithm("HS512").unwrap(), Algorithm::HS512);
        assert!(parse_algorithm("RS256").is_err());
        assert!(parse_algorithm("none").is_err());
    }
}
