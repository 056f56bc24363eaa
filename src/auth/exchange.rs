//! `POST /token`: a CI job or a developer sends the identity token it already has and gets a
//! short-lived token of this cache, scoped by the first trust rule that matches.
//!
//! Nothing to store in a CI system, nothing for a person to mint: the identity token proves
//! where the caller runs (repository, branch, pipeline, tenant and user), and the trust policy
//! decides what that is worth. Builds of protected branches get read-write tokens; pull requests
//! of the same repository get read-only ones, so a pull request cannot poison the cache.

use std::sync::Arc;

use super::conditions::scalar_text;
use super::issuers::IssuerProfile;
use super::oidc::{Identity, OidcError, Verifier};
use super::policy::{Ask, Decision, Rule, Scope, TrustPolicy};
use super::tokens::{Issued, Origin, TokenAuthority, TokenRequest};
use super::{AuthError, bearer_token};

/// Longest subject written into an exchanged token.
const MAX_SUBJECT: usize = 200;
/// Longest value of one build claim written into an exchanged token: real values (a commit
/// sha, a workflow path) are far shorter, and every request carries the token.
const MAX_BUILD_CLAIM: usize = 200;

/// Exchanges identity tokens for cache tokens.
pub struct Exchange {
    policy: TrustPolicy,
    verifier: Verifier,
    tokens: Arc<TokenAuthority>,
}

/// A successful exchange.
#[derive(Debug, Clone)]
pub struct Exchanged {
    pub issued: Issued,
    /// Where the identity came from, e.g. `github:acme/web:refs/heads/main`.
    pub subject: String,
    pub scope: Scope,
    pub rule: String,
}

/// An identity token that passed every check, and the rule that decides what it gets.
pub struct Verified<'a> {
    identity: Identity,
    rule: &'a Rule,
}

impl Verified<'_> {
    pub fn rule(&self) -> &str {
        &self.rule.name
    }
}

/// Why an exchange was refused, for the metrics' `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Missing,
    Malformed,
    Algorithm,
    Signature,
    Expired,
    UnknownIssuer,
    Audience,
    NoRule,
    Scope,
    Unavailable,
    BadRequest,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::Algorithm,
        Reason::Signature,
        Reason::Expired,
        Reason::UnknownIssuer,
        Reason::Audience,
        Reason::NoRule,
        Reason::Scope,
        Reason::Unavailable,
        Reason::BadRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::Algorithm => "algorithm",
            Reason::Signature => "signature",
            Reason::Expired => "expired",
            Reason::UnknownIssuer => "unknown-issuer",
            Reason::Audience => "audience",
            Reason::NoRule => "no-rule",
            Reason::Scope => "scope",
            Reason::Unavailable => "issuer-unavailable",
            Reason::BadRequest => "bad-request",
        }
    }
}

/// A refused exchange: the HTTP status (400, 401, 403 or 503), the reason and a message that
/// says what to fix. Never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }

    /// A request the server cannot make sense of (e.g. a malformed body).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, Reason::BadRequest, message)
    }
}

impl Exchange {
    pub fn new(policy: TrustPolicy, tokens: Arc<TokenAuthority>) -> Result<Self, String> {
        for rule in policy.rules() {
            if rule.ttl > tokens.max_lifetime() {
                return Err(format!(
                    "rule '{}': ttl is longer than NX_CACHE_MAX_TOKEN_LIFETIME",
                    rule.name
                ));
            }
        }
        let mut issuers: Vec<(String, String)> = Vec::new();
        for rule in policy.rules() {
            if !issuers.iter().any(|(issuer, _)| *issuer == rule.issuer) {
                issuers.push((rule.issuer.clone(), rule.discovery()));
            }
        }
        let verifier = Verifier::new(issuers)?;
        Ok(Self {
            policy,
            verifier,
            tokens,
        })
    }

    pub fn policy(&self) -> &TrustPolicy {
        &self.policy
    }

    /// Fetches every trusted issuer's keys now (`handler doctor`).
    pub async fn check_issuers(&self) -> Vec<(String, Result<usize, String>)> {
        self.verifier.check_issuers().await
    }

    /// Verifies the identity token in `authorization` and finds the rule that decides: all that
    /// needs no request body, so a caller without a valid identity is answered before its body
    /// is read.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<Verified<'_>, Refusal> {
        let missing = || {
            Refusal::new(
                401,
                Reason::Missing,
                "no identity token: send `Authorization: Bearer <token>` with your CI system's OIDC ID token (audience as the trust policy says) or an Entra ID access token",
            )
        };
        let token = match authorization.map(bearer_token) {
            None | Some(Err(AuthError::Missing)) => return Err(missing()),
            Some(Err(_)) => {
                return Err(Refusal::new(
                    401,
                    Reason::Malformed,
                    "the Authorization header must be `Bearer <identity token>`",
                ));
            }
            Some(Ok(token)) => token,
        };
        let identity = self.verifier.verify(token).await.map_err(refusal_of)?;
        let rule = match self
            .policy
            .decide(&identity.issuer, &identity.audiences, &identity.claims)
        {
            Decision::Matched(rule) => rule,
            Decision::UnknownIssuer => return Err(refusal_of(OidcError::UnknownIssuer)),
            Decision::WrongAudience => {
                let mut expected: Vec<&str> = self
                    .policy
                    .rules()
                    .iter()
                    .filter(|r| r.issuer == identity.issuer)
                    .map(|r| r.audience.as_str())
                    .collect();
                expected.dedup();
                return Err(Refusal::new(
                    401,
                    Reason::Audience,
                    format!(
                        "the identity token's audience is not one this cache trusts for its issuer; request it for audience {}",
                        expected.join(" or ")
                    ),
                ));
            }
            Decision::NoRule { compared } => {
                return Err(Refusal::new(
                    403,
                    Reason::NoRule,
                    format!("no trust rule matches this identity: {compared}"),
                ));
            }
        };
        Ok(Verified { identity, rule })
    }

    /// Narrows the rule's grant to what was asked, and issues a token.
    pub fn grant(&self, verified: Verified<'_>, ask: &Ask) -> Result<Exchanged, Refusal> {
        let Verified { identity, rule } = verified;
        let scope = rule.grant.narrow(ask).map_err(|refused| {
            Refusal::new(
                403,
                Reason::Scope,
                format!(
                    "rule '{}' grants {}; refused: {}",
                    rule.name,
                    rule.grant.describe(),
                    refused.join(", ")
                ),
            )
        })?;
        if !scope.org && scope.teams.is_empty() {
            return Err(Refusal::bad_request(
                "the request asks for no scope: ask for \"org\": true or some \"teams\", or send no body",
            ));
        }
        let subject = subject_of(rule.profile(), &identity);
        let issued = self
            .tokens
            .issue(&TokenRequest {
                org: scope.org,
                teams: scope.teams.clone(),
                access: scope.access,
                expires_in: rule.ttl,
                subject: subject.clone(),
                rule: Some(rule.name.clone()),
                rule_digest: Some(rule.digest().to_owned()),
                origin: Some(origin_of(rule.profile(), &identity)),
            })
            .map_err(|e| Refusal::new(503, Reason::Unavailable, e))?;
        Ok(Exchanged {
            issued,
            subject,
            scope,
            rule: rule.name.clone(),
        })
    }
}

fn refusal_of(error: OidcError) -> Refusal {
    let reason = match &error {
        OidcError::Malformed | OidcError::Unsupported(_) | OidcError::MissingClaim(_) => {
            Reason::Malformed
        }
        OidcError::Algorithm(_) => Reason::Algorithm,
        OidcError::UnknownIssuer => Reason::UnknownIssuer,
        OidcError::UnknownKey | OidcError::Signature => Reason::Signature,
        OidcError::Expired | OidcError::NotYetValid => Reason::Expired,
        OidcError::Unavailable => Reason::Unavailable,
    };
    let status = if reason == Reason::Unavailable {
        503
    } else {
        401
    };
    Refusal::new(status, reason, error.to_string())
}

/// The issuer and the build claims (the profile's list) of an identity, for the exchanged token:
/// scalar claims only, printable and bounded.
pub fn origin_of(profile: &dyn IssuerProfile, identity: &Identity) -> Origin {
    let claims = profile
        .build_claims()
        .iter()
        .filter_map(|name| {
            let value = scalar_text(identity.claims.get(*name)?)?;
            let value: String = value
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .take(MAX_BUILD_CLAIM)
                .collect();
            Some(((*name).to_owned(), value))
        })
        .collect();
    Origin {
        iss: identity.issuer.clone(),
        claims,
    }
}

/// Where an identity comes from, for the exchanged token's subject and the logs, in the
/// issuer's own format (`github:acme/web:refs/heads/main`, `gitlab:acme/web:branch:main`,
/// `entra:dev@acme.example:OID`, or `HOST:SUB` for any other issuer); printable and short.
pub fn subject_of(profile: &dyn IssuerProfile, identity: &Identity) -> String {
    profile
        .subject(&identity.issuer, &identity.claims)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_SUBJECT)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn identity(issuer: &str, claims: Value) -> Identity {
        Identity {
            issuer: issuer.into(),
            audiences: vec!["nx-cache".into()],
            claims: claims.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn subjects_say_where_an_identity_comes_from() {
        let cases = [
            (
                identity(
                    "https://token.actions.githubusercontent.com",
                    json!({"repository": "acme/web", "ref": "refs/heads/main", "sub": "repo:acme/web:ref:refs/heads/main"}),
                ),
                "github:acme/web:refs/heads/main",
            ),
            (
                identity(
                    "https://gitlab.com",
                    json!({"project_path": "acme/web", "ref_type": "branch", "ref": "main"}),
                ),
                "gitlab:acme/web:branch:main",
            ),
            (
                identity(
                    "https://sts.windows.net/t/",
                    json!({"tid": "t", "oid": "o-1", "upn": "dev@acme.example"}),
                ),
                "entra:dev@acme.example:o-1",
            ),
            (
                identity(
                    "https://login.microsoftonline.com/t/v2.0",
                    json!({"tid": "t", "oid": "o-2", "azp": "app-1"}),
                ),
                "entra:app-1:o-2",
            ),
            (
                identity(
                    "https://ci.example.com/oidc",
                    json!({"sub": "pipeline:7\n"}),
                ),
                "ci.example.com:pipeline:7?",
            ),
        ];
        let subject = |identity: &Identity| {
            let profile = crate::auth::issuers::classify(&identity.issuer, None).unwrap();
            subject_of(profile, identity)
        };
        for (identity, expected) in cases {
            assert_eq!(subject(&identity), expected);
        }
        let long = identity("https://x.example", json!({"sub": "s".repeat(1000)}));
        assert_eq!(subject(&long).chars().count(), MAX_SUBJECT);
    }

    #[test]
    fn exchanged_tokens_carry_the_build_claims_of_their_issuer() {
        let github = identity(
            "https://token.actions.githubusercontent.com",
            json!({"repository": "acme/web", "ref": "refs/heads/main", "sha": "95d18d66",
                   "run_id": "12345678901", "run_attempt": "1", "actor": "octocat",
                   "event_name": "push", "workflow_ref": "acme/web/.github/workflows/b.yml@refs/heads/main",
                   "repository_owner": "acme", "runner_environment": "github-hosted"}),
        );
        let profile = crate::auth::issuers::classify(&github.issuer, None).unwrap();
        let origin = origin_of(profile, &github);
        assert_eq!(origin.iss, "https://token.actions.githubusercontent.com");
        let names: Vec<&str> = origin.claims.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "actor",
                "event_name",
                "ref",
                "repository",
                "run_attempt",
                "run_id",
                "sha",
                "workflow_ref"
            ]
        );
        let gitlab = identity(
            "https://gitlab.com",
            json!({"project_path": "acme/web", "pipeline_id": "574", "job_id": 302,
                   "user_login": "dev\n", "ref_type": "branch"}),
        );
        let profile = crate::auth::issuers::classify(&gitlab.issuer, None).unwrap();
        let origin = origin_of(profile, &gitlab);
        assert_eq!(origin.claims["job_id"], "302", "numbers as text");
        assert_eq!(origin.claims["user_login"], "dev?", "printable");
        assert!(
            !origin.claims.contains_key("ref_type"),
            "only the profile's list"
        );
        let entra = identity(
            "https://login.microsoftonline.com/t/v2.0",
            json!({"tid": "t", "oid": "o-2", "azp": "app-1", "groups": ["g"]}),
        );
        let profile = crate::auth::issuers::classify(&entra.issuer, None).unwrap();
        let names: Vec<String> = origin_of(profile, &entra).claims.into_keys().collect();
        assert_eq!(names, ["azp", "oid"]);
    }
}
