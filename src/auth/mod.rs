//! Who may use the cache, and for what.
//!
//! - [`tokens`]: this cache's own tokens (HMAC JWTs): issuing them, verifying them on every
//!   request, rotating the secret without a cliff, and the grace period of a token that expired
//!   during a build.
//! - [`policy`]: the trust policy: which identity tokens, from which issuers, may be exchanged
//!   for which grant. Checked at startup; a mistake stops the server.
//! - [`oidc`]: verification of identity tokens (OIDC ID tokens, Entra ID access tokens): OIDC
//!   discovery and a JWKS cache per trusted issuer, signature, algorithm and time checks.
//! - [`issuers`]: what is true of each identity issuer (GitHub, GitLab, Entra ID): its hosts,
//!   the claims that pin an identity and write access, its subject format; [`conditions`]: claim
//!   conditions and how they match.
//! - [`exchange`]: `POST /token`: a verified identity token in, a short-lived token of this
//!   cache out, scoped by the first rule that matches.
//!
//! The API layer sees one thing of all this on a cache request: a [`Grant`]. It never learns
//! where a grant came from (issued by an operator or exchanged).

pub mod conditions;
pub mod exchange;
pub mod issuers;
pub mod oidc;
pub mod policy;
pub mod tokens;

use serde::{Deserialize, Serialize};

use crate::key::{Namespace, TeamName};

pub use tokens::{
    Issued, MIN_SECRET_LEN, Origin, Secret, TokenAuthority, TokenRequest, TokenRules,
    min_secret_len, parse_algorithm,
};

/// What a token allows besides its namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
        }
    }
}

/// A verified token: who it is and what it may touch.
#[derive(Debug, Clone)]
pub struct Grant {
    pub subject: String,
    pub token_id: String,
    pub org: bool,
    pub teams: Vec<TeamName>,
    pub access: Access,
    /// The trust rule the token was exchanged under, if it was exchanged.
    pub rule: Option<String>,
    /// The digest of that rule's conditions when the token was exchanged
    /// ([`policy::Rule::digest`]); absent on tokens exchanged before 0.3.0.
    pub rule_digest: Option<String>,
    /// The identity it was exchanged for (issuer, build claims), if it was exchanged: recorded
    /// as the writer of what the token stores.
    pub origin: Option<Origin>,
    /// Authentic, but expired less than `NX_CACHE_EXPIRED_GRACE` ago. Such a token reads and
    /// writes nothing, yet is not answered 401: a 401 aborts the build the token expired in.
    pub expired: bool,
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

    /// An exchanged token's grant as its trust rule allows it **now**: the lesser of what the
    /// token says and what the rule grants today, so making a rule read-only, moving it to
    /// other teams or removing it reaches tokens already issued. A token whose rule (or whole
    /// policy) is gone, or whose rule's conditions changed since it was exchanged (its identity
    /// may be one the rule no longer admits), has no access: its GETs are misses and its PUTs
    /// are refused, never a 401 that would abort the build; the job gets a token under the
    /// rule as it is now by exchanging again. Tokens issued by an operator (`handler token
    /// issue`) have no rule and are left as they are.
    pub fn under_policy(mut self, policy: Option<&policy::TrustPolicy>) -> Grant {
        let Some(rule) = &self.rule else {
            return self;
        };
        let standing = policy.map(|p| p.standing(rule, self.rule_digest.as_deref()));
        match standing {
            Some(policy::Standing::Grants(scope)) => {
                self.org &= scope.org;
                self.teams.retain(|team| scope.teams.contains(team));
                self.access = self.access.min(scope.access);
                return self;
            }
            Some(policy::Standing::Changed) => {
                tracing::warn!(rule = %rule, subject = %self.subject, token_id = %self.token_id,
                    "the conditions of the trust rule this token was exchanged under have changed since (or the token predates 0.3.0): no access (GETs are misses, uploads refused) until the job exchanges its identity again");
            }
            Some(policy::Standing::Gone) | None => {
                tracing::warn!(rule = %rule, subject = %self.subject, token_id = %self.token_id,
                    "the trust rule this token was exchanged under no longer exists: no access (GETs are misses, uploads refused)");
            }
        }
        self.org = false;
        self.teams.clear();
        self.access = Access::ReadOnly;
        self
    }
}

/// Why a request's token was refused. Each message tells the user what to fix; the Nx client
/// prints it after "Unauthorized:". No message ever echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no access token: set NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN to a token of this cache (from POST /token or `handler token issue`)"
    )]
    Missing,
    #[error("the Authorization header must be `Bearer <token>`")]
    NotBearer,
    #[error("the access token is not a valid token for this cache; ask for a new one")]
    Invalid,
    #[error(
        "the access token was signed with a secret this cache no longer accepts; ask for a new one"
    )]
    UnknownKey,
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

/// Extracts the token from `Bearer <token>` (the scheme is case-insensitive, RFC 7235).
pub fn bearer_token(header: &str) -> Result<&str, AuthError> {
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

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
