//! This cache's own tokens: issuing them (`handler token issue`, `POST /token`) and verifying them
//! on every request.
//!
//! Tokens are JWTs signed with a shared secret (HS256 unless configured otherwise). The
//! algorithm is pinned on verification, so `alg: none` or a different algorithm is refused,
//! and the signature check (HMAC) is constant-time inside `jsonwebtoken`.
//!
//! A token carries its scope: the org-wide cache (`org`), a list of teams (`teams`), and whether
//! it may write (`access`). Read-only tokens go to developers and pull requests, read-write
//! tokens only to trusted CI: this is what stops cache poisoning.
//!
//! Two things keep a build from being aborted by its own token (a 401 aborts an Nx run):
//! - **Rotation without a cliff.** New tokens are signed with `NX_CACHE_JWT_SECRET`; tokens signed
//!   with a secret listed in `NX_CACHE_JWT_PREVIOUS_SECRETS` still verify. Every token names its
//!   secret by a key id (`kid`, a truncated hash of the secret), so verification picks the one
//!   secret instead of trying each.
//! - **A grace period.** A token that is authentic but expired less than `NX_CACHE_EXPIRED_GRACE`
//!   ago gets a grant marked expired: no access (a miss, or "not stored"), but no 401.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Access, AuthError, Grant, bearer_token, unix_now};
use crate::key::TeamName;

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

    /// The key id tokens signed with this secret carry: 16 hex digits of a hash of the secret,
    /// which says which secret signed without revealing anything usable about it.
    pub fn key_id(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(b"nx-azure-cache key id\0");
        hash.update(&self.0);
        hash.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The claims inside a token. `org`, `teams`, `access` and `rule` are this project's own.
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
    /// The trust rule a token was exchanged under (`POST /token`); absent on issued tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The digest of that rule's conditions at the exchange (`Rule::digest`), so that a token
    /// gets nothing from its rule once the conditions it was exchanged under change.
    #[serde(rename = "rcd", default, skip_serializing_if = "Option::is_none")]
    pub rule_digest: Option<String>,
    /// Where an exchanged token's identity came from (`src`), recorded with every entry it
    /// writes; absent on issued tokens.
    #[serde(default, rename = "src", skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// The identity behind an exchanged token: its issuer and the claims that say which build it
/// was (the issuer profile's list, e.g. GitHub's `repository`, `sha`, `run_id`). Carried inside
/// the token, compactly (`{"iss": ..., "c": {...}}`), because Nx sends the token with every
/// upload and the server keeps no state per token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub iss: String,
    #[serde(
        default,
        rename = "c",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub claims: std::collections::BTreeMap<String, String>,
}

/// What `handler token issue` or an exchange asks for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub org: bool,
    pub teams: Vec<TeamName>,
    pub access: Access,
    pub expires_in: Duration,
    pub subject: String,
    pub rule: Option<String>,
    /// The digest of the rule's conditions, for an exchanged token.
    pub rule_digest: Option<String>,
    /// The identity an exchanged token was issued to; `None` for `handler token issue`.
    pub origin: Option<Origin>,
}

/// A signed token, its id (`jti`, for `NX_CACHE_REVOKED_TOKENS`) and when it expires (Unix
/// seconds).
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub token_id: String,
    pub expires_at: u64,
}

/// The rules every token is issued and verified under (besides the secrets).
#[derive(Debug, Clone)]
pub struct TokenRules {
    pub algorithm: Algorithm,
    pub issuer: String,
    pub audience: String,
    /// Token ids (`jti`) refused (`NX_CACHE_REVOKED_TOKENS`).
    pub revoked: HashSet<String>,
    /// Longest lifetime (`exp - iat`) issued or accepted (`NX_CACHE_MAX_TOKEN_LIFETIME`).
    pub max_lifetime: Duration,
    /// How long after its expiry a token still gets a no-access grant instead of a 401
    /// (`NX_CACHE_EXPIRED_GRACE`).
    pub expired_grace: Duration,
    /// Clock skew tolerated between the issuing machine and this one (`NX_CACHE_TOKEN_LEEWAY`).
    pub leeway: Duration,
}

/// Issues tokens with the current secret and verifies them with any configured secret.
pub struct TokenAuthority {
    rules: TokenRules,
    /// Key id of the current secret, written in every new token's header.
    signing_kid: String,
    encoding: EncodingKey,
    /// Every secret that verifies, by key id, the current one first.
    verifying: Vec<(String, DecodingKey)>,
    validation: Validation,
    /// Tokens whose signature, algorithm, not-before, issuer and audience were found good, by
    /// their exact text: a client sends the same token with every request of a build, and the
    /// signature check costs more than the rest of a cache request. What depends on the clock or
    /// the settings (expiry, grace, lifetime, revocation) is checked on every request. Only
    /// authentic tokens get in, at most [`VERIFIED_TOKENS`] (the map is emptied when full).
    verified: Mutex<HashMap<Box<str>, Claims>>,
}

/// Authentic tokens remembered at once (a few hundred bytes each).
const VERIFIED_TOKENS: usize = 4096;

impl fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("algorithm", &self.rules.algorithm)
            .field("issuer", &self.rules.issuer)
            .field("audience", &self.rules.audience)
            .field("revoked", &self.rules.revoked.len())
            .field("max_lifetime", &self.rules.max_lifetime)
            .field("signing_kid", &self.signing_kid)
            .field("secrets", &self.verifying.len())
            .finish_non_exhaustive()
    }
}

impl TokenAuthority {
    /// Signs with `current`; verifies with `current` and every one of `previous`.
    pub fn new(current: &Secret, previous: &[Secret], rules: TokenRules) -> Self {
        let mut validation = Validation::new(rules.algorithm);
        validation.set_issuer(&[&rules.issuer]);
        validation.set_audience(&[&rules.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        // Expiry is checked here, not by the library: a recently expired token gets a grant
        // marked expired instead of an error.
        validation.validate_exp = false;
        validation.leeway = rules.leeway.as_secs();
        let mut verifying = vec![(current.key_id(), DecodingKey::from_secret(&current.0))];
        for secret in previous {
            let kid = secret.key_id();
            if !verifying.iter().any(|(known, _)| *known == kid) {
                verifying.push((kid, DecodingKey::from_secret(&secret.0)));
            }
        }
        Self {
            signing_kid: current.key_id(),
            encoding: EncodingKey::from_secret(&current.0),
            verifying,
            validation,
            rules,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// The longest lifetime a new token may have.
    pub fn max_lifetime(&self) -> Duration {
        self.rules.max_lifetime
    }

    /// Signs a new token with the current secret. Every token gets a random id (`jti`) so it can
    /// be revoked alone, and the key id of the secret that signed it.
    pub fn issue(&self, request: &TokenRequest) -> Result<Issued, String> {
        if !request.org && request.teams.is_empty() {
            return Err("a token needs a scope: pass --org and/or --team NAME".into());
        }
        if request.expires_in > self.rules.max_lifetime {
            return Err(format!(
                "--expires-in {} is longer than this cache accepts ({}, NX_CACHE_MAX_TOKEN_LIFETIME)",
                humantime::format_duration(request.expires_in),
                humantime::format_duration(self.rules.max_lifetime)
            ));
        }
        let now = unix_now();
        let claims = Claims {
            iss: self.rules.issuer.clone(),
            aud: self.rules.audience.clone(),
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
            rule: request.rule.clone(),
            rule_digest: request.rule_digest.clone(),
            origin: request.origin.clone(),
        };
        let mut header = Header::new(self.rules.algorithm);
        header.kid = Some(self.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| format!("could not sign the token: {e}"))?;
        Ok(Issued {
            token,
            token_id: claims.jti,
            expires_at: claims.exp,
        })
    }

    /// Checks an `Authorization` header value and returns what the token grants.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Grant, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = bearer_token(header)?;
        self.verify(token)
    }

    /// Verifies a bare token: key id, signature, pinned algorithm, not-before, issuer, audience,
    /// lifetime, revocation, expiry (with the grace period), and that its team names are
    /// well-formed.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let claims = self.authentic_claims(token)?;
        let now = unix_now();
        let leeway = self.rules.leeway.as_secs();
        // `iat` is required by `Claims`. A lifetime over the cap, or an `iat` in the future
        // (which would stretch a capped lifetime), means the token was not minted by this
        // cache's rules (or was minted before the cap was lowered).
        if claims.exp.saturating_sub(claims.iat) > self.rules.max_lifetime.as_secs() + leeway {
            return Err(AuthError::TooLong);
        }
        if claims.iat > now + leeway {
            return Err(AuthError::NotYetValid);
        }
        if self.rules.revoked.contains(&claims.jti) {
            return Err(AuthError::Revoked);
        }
        let expired = now > claims.exp.saturating_add(leeway);
        if expired && now - claims.exp > self.rules.expired_grace.as_secs() {
            return Err(AuthError::Expired);
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
            rule: claims.rule,
            rule_digest: claims.rule_digest,
            origin: claims.origin,
            expired,
        })
    }

    /// The claims of a token signed by one of this cache's secrets, checked for algorithm,
    /// not-before, issuer and audience (not yet for expiry): remembered, or checked now.
    fn authentic_claims(&self, token: &str) -> Result<Claims, AuthError> {
        let remembered = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        if let Some(claims) = remembered {
            return Ok(claims);
        }
        let claims = self.check_signature(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_TOKENS {
            verified.clear();
        }
        verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// Checks a token's header, signature, algorithm, not-before, issuer and audience.
    fn check_signature(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        // RFC 7515 4.1.11: an extension named in `crit` must be understood; none is here.
        if header.crit.is_some() {
            return Err(AuthError::Invalid);
        }
        let keys: Vec<&DecodingKey> = match &header.kid {
            Some(kid) => {
                let key = self
                    .verifying
                    .iter()
                    .find(|(known, _)| known == kid)
                    .map(|(_, key)| key)
                    .ok_or(AuthError::UnknownKey)?;
                vec![key]
            }
            // Tokens issued before key ids existed: each secret in turn (there are few).
            None => self.verifying.iter().map(|(_, key)| key).collect(),
        };
        let mut last = AuthError::Invalid;
        for key in keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                            AuthError::WrongIssuer
                        }
                        _ => AuthError::Invalid,
                    };
                    // Only a bad signature is worth trying the next secret for.
                    if *e.kind() != ErrorKind::InvalidSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
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
    use crate::key::Namespace;
    use base64::Engine;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn rules(revoked: &[&str]) -> TokenRules {
        TokenRules {
            algorithm: Algorithm::HS256,
            issuer: "iss-test".into(),
            audience: "aud-test".into(),
            revoked: revoked.iter().map(|s| s.to_string()).collect(),
            max_lifetime: 90 * DAY,
            expired_grace: Duration::from_secs(12 * 3600),
            leeway: Duration::from_secs(30),
        }
    }

    fn secret(byte: u8) -> Secret {
        Secret::new(vec![byte; 32], Algorithm::HS256).unwrap()
    }

    fn authority(revoked: &[&str]) -> TokenAuthority {
        TokenAuthority::new(&secret(7), &[], rules(revoked))
    }

    fn request(org: bool, teams: &[&str], access: Access) -> TokenRequest {
        TokenRequest {
            org,
            teams: teams.iter().map(|t| TeamName::parse(t).unwrap()).collect(),
            access,
            expires_in: Duration::from_secs(3600),
            subject: "tester".into(),
            rule: None,
            rule_digest: None,
            origin: None,
        }
    }

    fn issue(auth: &TokenAuthority, request: &TokenRequest) -> String {
        auth.issue(request).unwrap().token
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
        assert!(auth.verify(&issue(&auth, &too_long)).is_ok());

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
        let token = issue(&auth, &request(false, &["web"], Access::ReadOnly));
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
        let token = issue(&auth, &request(true, &[], Access::ReadWrite));
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
        // Past the grace period (12 h here): refused.
        let expired = forge(h, &claims_json(-13 * 3600, -14 * 3600), &[7u8; 32]);
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
    fn a_recently_expired_token_gets_an_expired_grant_not_an_error() {
        let auth = authority(&[]);
        let h = r#"{"alg":"HS256"}"#;
        let recent = forge(h, &claims_json(-3600, -7200), &[7u8; 32]);
        let grant = auth.verify(&recent).unwrap();
        assert!(grant.expired);
        assert_eq!(grant.subject, "x");
        // Within the leeway it is not expired at all.
        let barely = forge(h, &claims_json(-10, -7200), &[7u8; 32]);
        assert!(!auth.verify(&barely).unwrap().expired);
        // Revocation wins over the grace period.
        let revoked = authority(&["id1"]);
        assert_eq!(revoked.verify(&recent).unwrap_err(), AuthError::Revoked);
    }

    #[test]
    fn an_issued_at_in_the_future_is_refused() {
        // It would stretch a capped lifetime: iat and exp a century ahead, nbf now.
        let mut claims = claims_json(600, 0);
        let century = 100 * 365 * 24 * 3600;
        claims["iat"] = serde_json::json!(unix_now() + century);
        claims["exp"] = serde_json::json!(unix_now() + century + 600);
        let token = forge(r#"{"alg":"HS256"}"#, &claims, &[7u8; 32]);
        assert_eq!(
            authority(&[]).verify(&token).unwrap_err(),
            AuthError::NotYetValid
        );
    }

    #[test]
    fn authentic_tokens_are_remembered_within_a_bound_and_still_time_checked() {
        let auth = authority(&[]);
        let token = issue(&auth, &request(true, &[], Access::ReadOnly));
        assert!(auth.verify(&token).is_ok());
        assert!(auth.verify(&token).is_ok(), "the remembered token");
        // A remembered token is matched by its exact text: one byte off is checked afresh.
        let mut tampered = token.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(auth.verify(&tampered).is_err());
        // Expiry is checked on every use: a token that expired long ago, signed and valid
        // otherwise, is refused even once remembered.
        let old = forge(
            r#"{"alg":"HS256"}"#,
            &claims_json(-30 * 24 * 3600, -31 * 24 * 3600),
            &[7u8; 32],
        );
        let forged_auth = authority(&[]);
        assert_eq!(forged_auth.verify(&old).unwrap_err(), AuthError::Expired);
        assert_eq!(
            forged_auth.verified.lock().unwrap().len(),
            1,
            "authentic, so remembered"
        );
        assert_eq!(forged_auth.verify(&old).unwrap_err(), AuthError::Expired);
        for _ in 0..VERIFIED_TOKENS + 10 {
            let token = issue(&auth, &request(true, &[], Access::ReadOnly));
            auth.verify(&token).unwrap();
        }
        assert!(auth.verified.lock().unwrap().len() <= VERIFIED_TOKENS);
    }

    #[test]
    fn critical_extensions_and_loose_times_are_refused() {
        let good = forge(r#"{"alg":"HS256"}"#, &claims_json(600, 0), &[7u8; 32]);
        assert!(authority(&[]).verify(&good).is_ok());
        let crit = forge(
            r#"{"alg":"HS256","crit":["exp-with-tz"],"exp-with-tz":"UTC"}"#,
            &claims_json(600, 0),
            &[7u8; 32],
        );
        assert_eq!(
            authority(&[]).verify(&crit).unwrap_err(),
            AuthError::Invalid
        );
        let now = unix_now();
        for (name, value) in [
            ("iat", serde_json::json!((now + 24 * 3600).to_string())),
            ("iat", serde_json::json!(now as f64 + 0.5)),
            ("exp", serde_json::json!(now as f64 + 600.0)),
            ("nbf", serde_json::json!(now.to_string())),
        ] {
            let mut claims = claims_json(600, 0);
            claims[name] = value.clone();
            let token = forge(r#"{"alg":"HS256"}"#, &claims, &[7u8; 32]);
            assert!(authority(&[]).verify(&token).is_err(), "{name}={value}");
        }
    }

    #[test]
    fn previous_secrets_verify_and_new_tokens_use_the_current_one() {
        let old = TokenAuthority::new(&secret(1), &[], rules(&[]));
        let rotated = TokenAuthority::new(&secret(2), &[secret(1)], rules(&[]));
        let forgotten = TokenAuthority::new(&secret(2), &[], rules(&[]));
        let before = issue(&old, &request(true, &[], Access::ReadWrite));
        assert!(
            rotated.verify(&before).is_ok(),
            "an old token survives the rotation"
        );
        assert_eq!(
            forgotten.verify(&before).unwrap_err(),
            AuthError::UnknownKey
        );
        let after = issue(&rotated, &request(true, &[], Access::ReadWrite));
        let kid = jsonwebtoken::decode_header(&after).unwrap().kid.unwrap();
        assert_eq!(kid, secret(2).key_id(), "signed with the current secret");
        assert_ne!(secret(1).key_id(), secret(2).key_id());
        assert_eq!(kid.len(), 16);
        assert!(
            old.verify(&after).is_err(),
            "the old server cannot read new tokens"
        );
    }

    #[test]
    fn a_token_names_its_key_so_one_secret_is_tried() {
        let rotated = TokenAuthority::new(&secret(2), &[secret(1)], rules(&[]));
        // Signed with the previous secret but claiming the current key id: refused, although
        // trying every secret would have accepted it.
        let claims = claims_json(600, 0);
        let header = format!(r#"{{"alg":"HS256","kid":"{}"}}"#, secret(2).key_id());
        let mislabelled = forge(&header, &claims, &[1u8; 32]);
        assert_eq!(
            rotated.verify(&mislabelled).unwrap_err(),
            AuthError::Invalid
        );
        // Tokens issued before key ids existed carry none: each secret is tried.
        let legacy = forge(r#"{"alg":"HS256"}"#, &claims, &[1u8; 32]);
        assert!(rotated.verify(&legacy).is_ok());
    }

    #[test]
    fn exchanged_tokens_carry_their_rule() {
        let auth = authority(&[]);
        let mut asked = request(false, &["web"], Access::ReadOnly);
        asked.rule = Some("web-prs".into());
        asked.rule_digest = Some("0123456789abcdef".into());
        let issued = auth.issue(&asked).unwrap();
        assert!(issued.expires_at >= unix_now() + 3599);
        let grant = auth.verify(&issued.token).unwrap();
        assert_eq!(grant.rule.as_deref(), Some("web-prs"));
        assert_eq!(grant.rule_digest.as_deref(), Some("0123456789abcdef"));
        assert!(!grant.expired);
        // A token of an earlier release: a rule, no digest.
        let mut before = request(false, &["web"], Access::ReadOnly);
        before.rule = Some("web-prs".into());
        let grant = auth.verify(&auth.issue(&before).unwrap().token).unwrap();
        assert_eq!(grant.rule_digest, None);
    }

    #[test]
    fn algorithms() {
        assert_eq!(parse_algorithm("HS512").unwrap(), Algorithm::HS512);
        assert!(parse_algorithm("RS256").is_err());
        assert!(parse_algorithm("none").is_err());
    }

    /// Nx sends the token with every request: with a GitHub build's claims it stays well under
    /// 2 KiB (what many proxies and header limits tolerate without thought).
    #[test]
    fn an_exchanged_token_with_its_build_claims_stays_small() {
        let auth = authority(&[]);
        let mut exchanged = request(false, &["web"], Access::ReadWrite);
        exchanged.subject = "github:acme-corporation/web-frontend:refs/heads/main".into();
        exchanged.rule = Some("web-frontend-main".into());
        let claims = [
            ("repository", "acme-corporation/web-frontend"),
            ("ref", "refs/heads/main"),
            ("sha", "95d18d66afd2c0609f6c41bd537a827beb698e64"),
            ("run_id", "12345678901"),
            ("run_attempt", "12"),
            (
                "workflow_ref",
                "acme-corporation/web-frontend/.github/workflows/build-and-test.yml@refs/heads/main",
            ),
            ("event_name", "workflow_dispatch"),
            ("actor", "a-rather-long-github-login"),
        ];
        exchanged.origin = Some(Origin {
            iss: "https://token.actions.githubusercontent.com".into(),
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
        let token = auth.issue(&exchanged).unwrap().token;
        assert!(token.len() < 1536, "{} bytes", token.len());
        let grant = auth.verify(&token).unwrap();
        assert_eq!(
            grant.origin, exchanged.origin,
            "carried through verification"
        );
    }
}
