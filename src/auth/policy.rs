//! The trust policy (`NX_CACHE_TRUST_POLICY`): which identity tokens may be exchanged for which
//! grant.
//!
//! ```json
//! {"rules": [
//!   {"name": "web-main", "issuer": "https://token.actions.githubusercontent.com", "audience": "nx-cache",
//!    "claims": {"repository": "acme/web", "ref": "refs/heads/main", "event_name": "push"},
//!    "grant": {"teams": ["web"], "access": "read-write"}, "ttl": "2h"}
//! ]}
//! ```
//!
//! Rules are tried in order; the first whose issuer, audience and every claim condition hold
//! decides ([`super::conditions`] says how a condition matches).
//!
//! Checked at startup, a mistake being one line naming the rule. The engine is issuer-neutral:
//! what a rule must say to trust an issuer's tokens (the claims that pin an identity, the
//! claims that pin write access to builds of protected branches) is the issuer's profile's
//! business ([`super::issuers`]), chosen from the issuer URL or the rule's `kind`.
//!
//! A rule also decides what the tokens exchanged under it may do **now**: a token carries its
//! rule's name, and [`TrustPolicy::current`] gives it the lesser of what it says and what the
//! rule grants today, or nothing once the rule is gone.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::Access;
use super::conditions::{Condition, echo, echo_text};
use super::issuers::{self, IssuerProfile, RuleFacts};
use crate::key::TeamName;

/// Lifetime of an exchanged token when its rule gives none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Shortest `ttl` a rule may give.
const MIN_TTL: Duration = Duration::from_secs(60);

/// A checked policy.
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    rules: Vec<Rule>,
}

/// One rule: who (issuer, audience, claims) gets what (scope, lifetime).
#[derive(Clone)]
pub struct Rule {
    pub name: String,
    pub issuer: String,
    pub audience: String,
    conditions: Vec<Condition>,
    pub grant: Scope,
    pub ttl: Duration,
    /// What the server knows of the issuer (recognised, or the rule's `kind`).
    profile: &'static dyn IssuerProfile,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("kind", &self.profile.kind())
            .field("audience", &self.audience)
            .field("conditions", &self.conditions)
            .field("grant", &self.grant)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The namespaces and access of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub org: bool,
    pub teams: Vec<TeamName>,
    pub access: Access,
}

/// What an exchange may ask for: less than its rule grants (least privilege), never more.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    pub org: Option<bool>,
    pub teams: Option<Vec<String>>,
    pub access: Option<Access>,
}

/// The policy's verdict on a verified identity token.
#[derive(Debug)]
pub enum Decision<'a> {
    Matched(&'a Rule),
    /// No rule names this issuer.
    UnknownIssuer,
    /// Rules name the issuer, but none the token's audience.
    WrongAudience,
    /// Issuer and audience are trusted, but no rule's claims match. `compared` lists the claims
    /// the rules look at, with the token's values (`repository=acme/web ref=refs/pull/7/merge`).
    NoRule {
        compared: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    issuer: String,
    /// The issuer's kind, for a private instance (`github`, `gitlab`, `entra`).
    kind: Option<String>,
    audience: String,
    #[serde(default)]
    claims: Claims,
    grant: RawGrant,
    ttl: Option<String>,
}

/// Claim conditions in the order the policy gives them (refusals list them in that order).
#[derive(Default)]
struct Claims(Vec<(String, RawCondition)>);

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Claims;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of claim conditions")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Claims, A::Error> {
                let mut claims = Vec::new();
                while let Some((name, condition)) = map.next_entry::<String, RawCondition>()? {
                    if claims.iter().any(|(known, _)| *known == name) {
                        return Err(serde::de::Error::custom(format!(
                            "claim '{name}' is given twice"
                        )));
                    }
                    claims.push((name, condition));
                }
                Ok(Claims(claims))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawCondition {
    One(String),
    Any(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    #[serde(default)]
    org: bool,
    #[serde(default)]
    teams: Vec<String>,
    access: Access,
}

impl TrustPolicy {
    /// Parses and checks a policy. `max_ttl` is the server-wide cap on a rule's `ttl`. The error
    /// is one line naming the rule and the problem.
    pub fn parse(json: &str, max_ttl: Duration) -> Result<Self, String> {
        let raw: RawPolicy = serde_json::from_str(json).map_err(|e| {
            format!("not a valid trust policy ({e}); expected {{\"rules\": [...]}}")
        })?;
        if raw.rules.is_empty() {
            return Err("has no rules".into());
        }
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (index, raw) in raw.rules.into_iter().enumerate() {
            let label = if raw.name.is_empty() {
                format!("rule #{}", index + 1)
            } else {
                format!("rule '{}'", raw.name)
            };
            let rule = Rule::check(raw, max_ttl).map_err(|e| format!("{label}: {e}"))?;
            if !names.insert(rule.name.clone()) {
                return Err(format!("{label}: another rule has the same name"));
            }
            rules.push(rule);
        }
        Ok(Self { rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The distinct issuers the policy trusts: the only ones keys are ever fetched from.
    pub fn issuers(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for rule in &self.rules {
            if !seen.contains(&rule.issuer) {
                seen.push(rule.issuer.clone());
            }
        }
        seen
    }

    pub fn trusts_issuer(&self, issuer: &str) -> bool {
        self.rules.iter().any(|r| r.issuer == issuer)
    }

    /// What a token exchanged under rule `name` may still do: its rule's grant as the policy
    /// says it today, or `None` when no rule has that name any more.
    pub fn current(&self, name: &str) -> Option<&Scope> {
        self.rules.iter().find(|r| r.name == name).map(|r| &r.grant)
    }

    /// The first rule whose issuer, audience and claim conditions all hold.
    pub fn decide(
        &self,
        issuer: &str,
        audiences: &[String],
        claims: &Map<String, Value>,
    ) -> Decision<'_> {
        let for_issuer: Vec<&Rule> = self.rules.iter().filter(|r| r.issuer == issuer).collect();
        if for_issuer.is_empty() {
            return Decision::UnknownIssuer;
        }
        let candidates: Vec<&Rule> = for_issuer
            .into_iter()
            .filter(|r| audiences.contains(&r.audience))
            .collect();
        if candidates.is_empty() {
            return Decision::WrongAudience;
        }
        if let Some(rule) = candidates.iter().find(|r| r.matches(claims)) {
            return Decision::Matched(rule);
        }
        let mut names: Vec<&str> = Vec::new();
        for rule in &candidates {
            for condition in &rule.conditions {
                if !names.contains(&condition.claim.as_str()) {
                    names.push(&condition.claim);
                }
            }
        }
        let compared = names
            .iter()
            .map(|name| format!("{name}={}", echo(claims.get(*name))))
            .collect::<Vec<_>>()
            .join(" ");
        Decision::NoRule { compared }
    }
}

impl Rule {
    fn check(raw: RawRule, max_ttl: Duration) -> Result<Self, String> {
        let name_ok = (1..=64).contains(&raw.name.len())
            && raw
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err("a rule needs a name of 1 to 64 letters, digits, '-', '_' or '.'".into());
        }
        let profile = issuers::classify(&raw.issuer, raw.kind.as_deref())?;
        if raw.audience.trim().is_empty() || raw.audience.contains('*') {
            return Err("needs an audience (exact, no wildcard), e.g. \"nx-cache\"".into());
        }
        let mut conditions = Vec::new();
        for (claim, condition) in raw.claims.0 {
            if ["iss", "aud", "exp", "nbf", "iat"].contains(&claim.as_str()) {
                return Err(format!(
                    "the claim '{claim}' is checked by the server itself; use \"issuer\"/\"audience\" instead of a condition on it"
                ));
            }
            let patterns = match condition {
                RawCondition::One(p) => vec![p],
                RawCondition::Any(list) => list,
            };
            if patterns.is_empty() || patterns.iter().any(|p| p.is_empty()) {
                return Err(format!(
                    "the condition on '{claim}' needs a non-empty value or list of values"
                ));
            }
            conditions.push(Condition { claim, patterns });
        }
        profile.check(&RuleFacts {
            issuer: &raw.issuer,
            conditions: &conditions,
            access: raw.grant.access,
        })?;
        let teams = raw
            .grant
            .teams
            .iter()
            .map(|t| TeamName::parse(t).map_err(|e| format!("grant: team '{t}': {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if !raw.grant.org && teams.is_empty() {
            return Err("grant needs a scope: \"org\": true and/or \"teams\": [...]".into());
        }
        let ttl = match &raw.ttl {
            None => DEFAULT_TTL.min(max_ttl),
            Some(text) => humantime::parse_duration(text.trim())
                .map_err(|_| format!("ttl '{text}' is not a duration such as 30m or 2h"))?,
        };
        if ttl < MIN_TTL {
            return Err(format!(
                "ttl {} is shorter than a minute",
                humantime::format_duration(ttl)
            ));
        }
        if ttl > max_ttl {
            return Err(format!(
                "ttl {} is longer than this server's maximum ({}, NX_CACHE_MAX_EXCHANGE_TTL)",
                humantime::format_duration(ttl),
                humantime::format_duration(max_ttl)
            ));
        }
        Ok(Rule {
            name: raw.name,
            issuer: raw.issuer,
            audience: raw.audience,
            conditions,
            grant: Scope {
                org: raw.grant.org,
                teams,
                access: raw.grant.access,
            },
            ttl,
            profile,
        })
    }

    fn matches(&self, claims: &Map<String, Value>) -> bool {
        self.conditions.iter().all(|condition| {
            claims
                .get(&condition.claim)
                .is_some_and(|value| condition.holds_for(value))
        })
    }

    fn facts(&self) -> RuleFacts<'_> {
        RuleFacts {
            issuer: &self.issuer,
            conditions: &self.conditions,
            access: self.grant.access,
        }
    }

    /// The issuer's profile: `github`, `gitlab`, `entra` or `other`.
    pub fn kind(&self) -> &'static str {
        self.profile.kind()
    }

    /// The rule in words, for an operator to review what it really grants:
    /// `web-main: read-write to team web for pushes to refs/heads/main of acme/web (GitHub)`.
    pub fn explain(&self) -> String {
        format!(
            "{}: {} for {} ({})",
            self.name,
            self.grant.words(),
            self.profile.explain(&self.facts()),
            self.profile.name()
        )
    }

    /// The subject of a token exchanged under this rule: where the identity comes from.
    pub fn subject(&self, claims: &Map<String, Value>) -> String {
        self.profile.subject(&self.issuer, claims)
    }

    /// What the server knows of the rule's issuer.
    pub fn profile(&self) -> &'static dyn IssuerProfile {
        self.profile
    }

    /// Where the rule's issuer publishes its discovery document.
    pub fn discovery(&self) -> String {
        self.profile.discovery(&self.issuer)
    }
}

impl Scope {
    /// The scope an exchange asked for, when it is within this one; otherwise the parts that
    /// were refused (`read-write`, `org`, `team api`).
    pub fn narrow(&self, ask: &Ask) -> Result<Scope, Vec<String>> {
        let mut refused = Vec::new();
        let org = match ask.org {
            Some(true) if !self.org => {
                refused.push("org".to_string());
                false
            }
            Some(wanted) => wanted,
            None => self.org,
        };
        let teams = match &ask.teams {
            None => self.teams.clone(),
            Some(asked) => {
                let mut teams: Vec<TeamName> = Vec::new();
                for name in asked {
                    match TeamName::parse(name) {
                        Ok(team) if self.teams.contains(&team) => {
                            if !teams.contains(&team) {
                                teams.push(team);
                            }
                        }
                        _ => refused.push(format!("team {}", echo_text(name))),
                    }
                }
                teams
            }
        };
        let access = match ask.access {
            Some(Access::ReadWrite) if self.access == Access::ReadOnly => {
                refused.push("read-write".to_string());
                Access::ReadOnly
            }
            Some(wanted) => wanted,
            None => self.access,
        };
        if refused.is_empty() {
            Ok(Scope { org, teams, access })
        } else {
            Err(refused)
        }
    }

    /// `read-write access to org, team web`: for messages.
    pub fn describe(&self) -> String {
        format!("{} access to {}", self.access.as_str(), self.namespaces())
    }

    /// `read-write to org, team web`: for a rule in words.
    pub fn words(&self) -> String {
        format!("{} to {}", self.access.as_str(), self.namespaces())
    }

    fn namespaces(&self) -> String {
        let mut parts = Vec::new();
        if self.org {
            parts.push("org".to_string());
        }
        parts.extend(self.teams.iter().map(|t| format!("team {}", t.as_str())));
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GITHUB: &str = "https://token.actions.githubusercontent.com";
    const MAX: Duration = Duration::from_secs(12 * 3600);

    fn policy(rules: Value) -> Result<TrustPolicy, String> {
        TrustPolicy::parse(&json!({ "rules": rules }).to_string(), MAX)
    }

    fn github_rule(name: &str, claims: Value, access: &str) -> Value {
        json!({"name": name, "issuer": GITHUB, "audience": "nx-cache", "claims": claims,
               "grant": {"teams": ["web"], "access": access}})
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn the_first_matching_rule_decides() {
        // Text, not `json!`: the policy's own order of claims is kept in refusals.
        let text = r#"{"rules": [
            {"name": "web-main", "issuer": "https://token.actions.githubusercontent.com", "audience": "nx-cache",
             "claims": {"repository": "acme/web", "ref": "refs/heads/main", "event_name": "push"},
             "grant": {"teams": ["web"], "access": "read-write"}, "ttl": "2h"},
            {"name": "web-prs", "issuer": "https://token.actions.githubusercontent.com", "audience": "nx-cache",
             "claims": {"repository": "acme/web"},
             "grant": {"org": true, "teams": ["web"], "access": "read-only"}}
        ]}"#;
        let p = TrustPolicy::parse(text, MAX).unwrap();
        let aud = vec!["nx-cache".to_string()];
        let main = claims(
            json!({"repository": "acme/web", "ref": "refs/heads/main", "event_name": "push"}),
        );
        let Decision::Matched(rule) = p.decide(GITHUB, &aud, &main) else {
            panic!("main matches")
        };
        assert_eq!(rule.name, "web-main");
        assert_eq!(rule.ttl, Duration::from_secs(2 * 3600));
        assert_eq!(rule.grant.access, Access::ReadWrite);
        let pr = claims(json!({"repository": "acme/web", "ref": "refs/pull/7/merge"}));
        let Decision::Matched(rule) = p.decide(GITHUB, &aud, &pr) else {
            panic!("pull request matches the second rule")
        };
        assert_eq!(rule.name, "web-prs");
        assert_eq!(rule.ttl, DEFAULT_TTL);
        let other = claims(json!({"repository": "acme/api", "ref": "refs/pull/7/merge"}));
        match p.decide(GITHUB, &aud, &other) {
            Decision::NoRule { compared } => {
                assert_eq!(
                    compared,
                    "repository=acme/api ref=refs/pull/7/merge event_name=(absent)"
                )
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            p.decide(GITHUB, &["other".into()], &main),
            Decision::WrongAudience
        ));
        assert!(matches!(
            p.decide("https://evil.example", &aud, &main),
            Decision::UnknownIssuer
        ));
    }

    #[test]
    fn lists_numbers_and_claims_that_are_lists() {
        let entra = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0";
        let p = policy(json!([{
            "name": "devs", "issuer": entra, "audience": "api://nx-cache",
            "claims": {"tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                       "groups": ["11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"],
                       "ver": "2.0"},
            "grant": {"org": true, "access": "read-only"}, "ttl": "8h"
        }]))
        .unwrap();
        let aud = vec!["api://nx-cache".to_string()];
        let member = claims(
            json!({"tid": "72f988bf-86f1-41af-91ab-2d7cd011db47", "ver": "2.0",
            "groups": ["00000000-0000-0000-0000-000000000000", "22222222-2222-2222-2222-222222222222"]}),
        );
        assert!(
            matches!(p.decide(entra, &aud, &member), Decision::Matched(r) if r.ttl == Duration::from_secs(8 * 3600))
        );
        let outsider = claims(
            json!({"tid": "72f988bf-86f1-41af-91ab-2d7cd011db47", "ver": "2.0",
            "groups": ["00000000-0000-0000-0000-000000000000"]}),
        );
        assert!(matches!(
            p.decide(entra, &aud, &outsider),
            Decision::NoRule { .. }
        ));
        let no_groups =
            claims(json!({"tid": "72f988bf-86f1-41af-91ab-2d7cd011db47", "ver": "2.0"}));
        match p.decide(entra, &aud, &no_groups) {
            Decision::NoRule { compared } => {
                assert!(compared.contains("groups=(absent)"), "{compared}")
            }
            d => panic!("{d:?}"),
        }
        // A number claim compared as its text.
        let p = policy(json!([github_rule(
            "by-id",
            json!({"repository_id": "74"}),
            "read-only"
        )]))
        .unwrap();
        let numeric = claims(json!({"repository_id": 74}));
        assert!(matches!(
            p.decide(GITHUB, &["nx-cache".into()], &numeric),
            Decision::Matched(_)
        ));
    }

    #[test]
    fn rules_that_trust_every_repository_or_tenant_are_refused() {
        let entra = "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/";
        let cases = [
            (
                github_rule("none", json!({}), "read-only"),
                "every GitHub repository",
            ),
            (
                github_rule("star", json!({"repository": "*"}), "read-only"),
                "every GitHub repository",
            ),
            (
                github_rule("any-owner", json!({"repository": "*/web"}), "read-only"),
                "every GitHub repository",
            ),
            (
                github_rule(
                    "owner-prefix",
                    json!({"repository_owner": "ac*"}),
                    "read-only",
                ),
                "every GitHub repository",
            ),
            (
                github_rule("sub-star", json!({"sub": "repo:*"}), "read-only"),
                "every GitHub repository",
            ),
            (
                github_rule("sub-prefix", json!({"sub": "repo:acme*"}), "read-only"),
                "every GitHub repository",
            ),
            (
                github_rule("ref-only", json!({"ref": "refs/heads/main"}), "read-write"),
                "every GitHub repository",
            ),
            (
                github_rule(
                    "one-bad-of-two",
                    json!({"repository": ["acme/web", "*"]}),
                    "read-only",
                ),
                "every GitHub repository",
            ),
            (
                json!({"name": "gl", "issuer": "https://gitlab.com", "audience": "nx-cache",
                    "claims": {"ref_protected": "true"}, "grant": {"org": true, "access": "read-write"}}),
                "every project of https://gitlab.com",
            ),
            (
                json!({"name": "tenant-only", "issuer": entra, "audience": "api://x",
                    "claims": {"tid": "72f988bf-86f1-41af-91ab-2d7cd011db47"},
                    "grant": {"org": true, "access": "read-only"}}),
                "oid, groups or roles",
            ),
            (
                json!({"name": "no-tenant", "issuer": entra, "audience": "api://x",
                    "claims": {"roles": "cache.read"},
                    "grant": {"org": true, "access": "read-only"}}),
                "tid",
            ),
            (
                json!({"name": "generic", "issuer": "https://ci.example.com", "audience": "nx-cache",
                    "claims": {"sub": "*"}, "grant": {"org": true, "access": "read-only"}}),
                "no identity condition",
            ),
        ];
        for (rule, expected) in cases {
            let name = rule["name"].as_str().unwrap().to_owned();
            let err = policy(json!([rule])).unwrap_err();
            assert!(err.starts_with(&format!("rule '{name}': ")), "{err}");
            assert!(err.contains(expected), "{name}: {err}");
            assert_eq!(err.lines().count(), 1);
        }
        // What does pin an identity.
        for claims in [
            json!({"repository": "acme/web"}),
            json!({"repository": "acme/*"}),
            json!({"repository_owner": "acme"}),
            json!({"repository_owner_id": "1234"}),
            json!({"sub": "repo:acme/web:ref:refs/heads/main"}),
            json!({"sub": "repo:acme/*"}),
            json!({"repository": ["acme/web", "acme/api"], "ref": "*"}),
        ] {
            assert!(
                policy(json!([github_rule("ok", claims.clone(), "read-only")])).is_ok(),
                "{claims}"
            );
        }
    }

    #[test]
    fn other_mistakes_name_the_rule() {
        let base = || github_rule("r", json!({"repository": "acme/web"}), "read-only");
        let with = |edit: &dyn Fn(&mut Value)| {
            let mut rule = base();
            edit(&mut rule);
            policy(json!([rule]))
        };
        /// An edit that breaks the rule, and a word the error must contain.
        type Mistake = (Box<dyn Fn(&mut Value)>, &'static str);
        let cases: Vec<Mistake> = vec![
            (
                Box::new(|r| r["issuer"] = "http://token.actions.githubusercontent.com".into()),
                "https",
            ),
            (
                Box::new(|r| r["issuer"] = "https://x.example/?a=b".into()),
                "https",
            ),
            (Box::new(|r| r["audience"] = "".into()), "audience"),
            (Box::new(|r| r["audience"] = "*".into()), "audience"),
            (
                Box::new(|r| r["grant"] = json!({"access": "read-only"})),
                "scope",
            ),
            (
                Box::new(|r| r["grant"] = json!({"teams": ["Bad_Team"], "access": "read-only"})),
                "Bad_Team",
            ),
            (
                Box::new(|r| r["grant"] = json!({"org": true, "access": "admin"})),
                "valid trust policy",
            ),
            (
                Box::new(|r| r["ttl"] = "2d".into()),
                "NX_CACHE_MAX_EXCHANGE_TTL",
            ),
            (Box::new(|r| r["ttl"] = "soon".into()), "duration"),
            (
                Box::new(|r| r["ttl"] = "10s".into()),
                "shorter than a minute",
            ),
            (
                Box::new(|r| r["claims"]["aud"] = "x".into()),
                "checked by the server",
            ),
            (Box::new(|r| r["claims"]["ref"] = json!([])), "non-empty"),
            (Box::new(|r| r["name"] = "has space".into()), "name"),
            (
                Box::new(|r| r["surprise"] = true.into()),
                "valid trust policy",
            ),
        ];
        for (edit, expected) in cases {
            let err = with(&*edit).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        assert!(
            policy(json!([base(), base()]))
                .unwrap_err()
                .contains("same name")
        );
        assert!(
            TrustPolicy::parse("{\"rules\": []}", MAX)
                .unwrap_err()
                .contains("no rules")
        );
        assert!(TrustPolicy::parse("not json", MAX).is_err());
        // Loopback http is allowed (tests), with any path.
        let mut local = base();
        local["issuer"] = "http://127.0.0.1:8080/issuer".into();
        assert!(policy(json!([local])).is_ok());
    }

    #[test]
    fn an_exchange_may_ask_for_less_never_more() {
        let scope = Scope {
            org: true,
            teams: vec![TeamName::parse("web").unwrap()],
            access: Access::ReadWrite,
        };
        let narrowed = scope
            .narrow(&Ask {
                org: Some(false),
                teams: None,
                access: Some(Access::ReadOnly),
            })
            .unwrap();
        assert!(!narrowed.org);
        assert_eq!(narrowed.access, Access::ReadOnly);
        assert_eq!(narrowed.describe(), "read-only access to team web");
        let read_only = Scope {
            access: Access::ReadOnly,
            ..scope.clone()
        };
        let refused = read_only
            .narrow(&Ask {
                org: None,
                teams: Some(vec!["web".into(), "api".into()]),
                access: Some(Access::ReadWrite),
            })
            .unwrap_err();
        assert_eq!(refused, vec!["team api", "read-write"]);
        assert_eq!(scope.narrow(&Ask::default()).unwrap(), scope);
    }

    fn refused(rule: Value) -> String {
        let name = rule["name"].as_str().unwrap().to_owned();
        let err = policy(json!([rule])).unwrap_err();
        assert!(err.starts_with(&format!("rule '{name}': ")), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    }

    fn rule(issuer: &str, claims: Value, access: &str) -> Value {
        json!({"name": "r", "issuer": issuer, "audience": "nx-cache", "claims": claims,
               "grant": {"teams": ["web"], "access": access}})
    }

    #[test]
    fn github_write_access_needs_an_event_of_the_repositorys_own_branch_code() {
        let main = json!({"repository": "acme/web", "ref": "refs/heads/main"});
        // The rule the docs used to show: pull_request_target runs carry refs/heads/main too.
        let err = refused(github_rule("web-main", main.clone(), "read-write"));
        assert!(err.contains("pull_request_target"), "{err}");
        assert!(err.contains("event_name"), "{err}");
        for events in [
            json!("pull_request_target"),
            json!("pull_request"),
            json!("issue_comment"),
            json!("workflow_run"),
            json!("merge_group"),
            json!("release"),
            json!("repository_dispatch"),
            json!("*"),
            json!("pu*"),
            json!(["push", "workflow_run"]),
        ] {
            let mut claims = main.clone();
            claims["event_name"] = events.clone();
            let err = refused(github_rule("web-main", claims, "read-write"));
            assert!(err.contains("pull_request_target"), "{events}: {err}");
        }
        // The branch must be named: a push to any branch, or of a tag, is not reviewed code.
        for claims in [
            json!({"repository": "acme/web", "event_name": "push"}),
            json!({"repository": "acme/web", "event_name": "push", "ref": "refs/heads/*"}),
            json!({"repository": "acme/web", "event_name": "push", "ref": "*"}),
            json!({"repository": "acme/web", "event_name": "push", "ref": "refs/tags/v1"}),
            json!({"repository": "acme/web", "event_name": "push", "environment": "prod*"}),
        ] {
            let err = refused(github_rule("web-main", claims.clone(), "read-write"));
            assert!(err.contains("\"ref\""), "{claims}: {err}");
        }
        for claims in [
            json!({"repository": "acme/web", "ref": "refs/heads/main", "event_name": "push"}),
            json!({"repository": "acme/web", "ref": ["refs/heads/main", "refs/heads/release/*"],
                   "event_name": ["push", "schedule", "workflow_dispatch"]}),
            json!({"repository_id": "5678", "environment": "production", "event_name": "push"}),
        ] {
            assert!(
                policy(json!([github_rule("ok", claims.clone(), "read-write")])).is_ok(),
                "{claims}"
            );
        }
        // Read-only rules need no event: pull requests get read-only tokens.
        assert!(policy(json!([github_rule("prs", main, "read-only")])).is_ok());
    }

    #[test]
    fn github_pins_name_the_caller_not_a_template_or_a_called_workflow() {
        for claims in [
            json!({"sub": "environment:production"}),
            json!({"sub": "ref:refs/heads/*"}),
            json!({"sub": "pull_request"}),
            json!({"job_workflow_ref": "acme/shared/.github/workflows/build.yml@refs/heads/main"}),
            json!({"workflow_ref": "acme/web/.github/workflows/build.yml@refs/heads/main"}),
        ] {
            let err = refused(github_rule("loose", claims.clone(), "read-only"));
            assert!(err.contains("every GitHub repository"), "{claims}: {err}");
        }
        for claims in [
            json!({"sub": "repo:acme@1234/web@5678:*"}),
            json!({"sub": "repository_owner_id:1234:*"}),
            json!({"sub": "repo:acme/web:pull_request"}),
        ] {
            assert!(
                policy(json!([github_rule("ok", claims.clone(), "read-only")])).is_ok(),
                "{claims}"
            );
        }
    }

    #[test]
    fn gitlab_write_access_needs_a_protected_ref() {
        let err = refused(rule(
            "https://gitlab.com",
            json!({"project_path": "acme/web", "ref": "main"}),
            "read-write",
        ));
        assert!(err.contains("ref_protected"), "{err}");
        let err = refused(rule(
            "https://gitlab.com",
            json!({"project_path": "acme/web", "ref": "main", "ref_protected": ["true", "false"]}),
            "read-write",
        ));
        assert!(err.contains("ref_protected"), "{err}");
        let ok = rule(
            "https://gitlab.com",
            json!({"project_path": "acme/web", "ref": "main", "ref_protected": "true"}),
            "read-write",
        );
        assert!(policy(json!([ok])).is_ok());
        // A self-managed instance, declared as GitLab, gets the same checks.
        let mut own = rule(
            "https://git.acme.example",
            json!({"project_path": "acme/web", "ref": "main"}),
            "read-write",
        );
        own["kind"] = "gitlab".into();
        assert!(refused(own.clone()).contains("ref_protected"));
        own["claims"]["ref_protected"] = "true".into();
        assert!(policy(json!([own])).is_ok());
        // So does GitHub Enterprise Server, recognised by its issuer path.
        let err = refused(rule(
            "https://ghes.acme.example/_services/token",
            json!({"repository": "acme/web", "ref": "refs/heads/main"}),
            "read-write",
        ));
        assert!(err.contains("pull_request_target"), "{err}");
    }

    #[test]
    fn every_entra_authority_needs_a_tenant_and_an_identity() {
        let tid = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        for issuer in [
            format!("https://login.microsoftonline.us/{tid}/v2.0"),
            format!("https://login.partner.microsoftonline.cn/{tid}/v2.0"),
            format!("https://sts.chinacloudapi.cn/{tid}/"),
            format!("https://login.windows.net/{tid}/v2.0"),
            format!("https://acme.ciamlogin.com/{tid}/v2.0"),
            format!("https://acme.b2clogin.com/{tid}/v2.0/"),
        ] {
            let err = refused(rule(
                &issuer,
                json!({"scp": "user_impersonation"}),
                "read-only",
            ));
            assert!(err.contains("tid"), "{issuer}: {err}");
            let err = refused(rule(&issuer, json!({"tid": tid, "scp": "x"}), "read-only"));
            assert!(err.contains("oid, groups or roles"), "{issuer}: {err}");
        }
        let gov = rule(
            &format!("https://login.microsoftonline.us/{tid}/v2.0"),
            json!({"tid": tid, "oid": "11111111-1111-1111-1111-111111111111"}),
            "read-write",
        );
        assert!(policy(json!([gov])).is_ok());
    }

    #[test]
    fn misspelled_known_issuers_are_refused_with_the_right_spelling() {
        for (issuer, canonical) in [
            (
                "https://Token.Actions.GithubUserContent.com",
                "https://token.actions.githubusercontent.com",
            ),
            (
                "https://token.actions.githubusercontent.com:443",
                "https://token.actions.githubusercontent.com",
            ),
            ("https://gitlab.com.", "https://gitlab.com"),
            (
                "https://me@login.microsoftonline.com/t/v2.0",
                "https://login.microsoftonline.com/t/v2.0",
            ),
        ] {
            let err = refused(rule(issuer, json!({"repository": "acme/web"}), "read-only"));
            assert!(err.contains(canonical), "{issuer}: {err}");
        }
    }

    #[test]
    fn rules_explain_themselves() {
        let p = policy(json!([
            github_rule(
                "web-main",
                json!({"repository": "acme/web", "ref": "refs/heads/main", "event_name": "push"}),
                "read-write"
            ),
            json!({"name": "gl", "issuer": "https://gitlab.com", "audience": "nx-cache",
                   "claims": {"project_path": "acme/web", "ref": "main", "ref_protected": "true"},
                   "grant": {"org": true, "teams": ["web"], "access": "read-write"}}),
            json!({"name": "devs", "issuer": "https://login.microsoftonline.com/t/v2.0",
                   "audience": "api://nx", "claims": {"tid": "t", "groups": "g"},
                   "grant": {"org": true, "access": "read-only"}}),
            json!({"name": "ci", "issuer": "https://ci.example.com", "audience": "nx",
                   "claims": {"sub": "pipeline:7"}, "grant": {"org": true, "access": "read-only"}}),
        ]))
        .unwrap();
        let words: Vec<String> = p.rules().iter().map(Rule::explain).collect();
        assert_eq!(
            words[0],
            "web-main: read-write to team web for pushes to refs/heads/main of acme/web (GitHub)"
        );
        assert_eq!(
            words[1],
            "gl: read-write to org, team web for pipelines for protected refs named main of acme/web (GitLab)"
        );
        assert_eq!(
            words[2],
            "devs: read-only to org for members of group g of tenant t (Entra ID)"
        );
        assert!(words[3].contains("no write-access checks"), "{}", words[3]);
    }

    #[test]
    fn tokens_get_what_their_rule_grants_now() {
        use crate::auth::Grant;
        let p = policy(json!([github_rule(
            "web-prs",
            json!({"repository": "acme/web"}),
            "read-only"
        ),]))
        .unwrap();
        let grant = |rule: Option<&str>| Grant {
            subject: "github:acme/web:refs/heads/main".into(),
            token_id: "t1".into(),
            org: true,
            teams: vec![
                TeamName::parse("web").unwrap(),
                TeamName::parse("api").unwrap(),
            ],
            access: Access::ReadWrite,
            rule: rule.map(str::to_owned),
            origin: None,
            expired: false,
        };
        let now = grant(Some("web-prs")).under_policy(Some(&p));
        assert_eq!(now.access, Access::ReadOnly);
        assert!(!now.org);
        assert_eq!(now.teams, vec![TeamName::parse("web").unwrap()]);
        for gone in [
            grant(Some("web-main")).under_policy(Some(&p)),
            grant(Some("web-prs")).under_policy(None),
        ] {
            assert!(!gone.org && gone.teams.is_empty(), "{gone:?}");
            assert_eq!(gone.access, Access::ReadOnly);
        }
        let issued = grant(None).under_policy(None);
        assert!(issued.org && issued.teams.len() == 2 && issued.access == Access::ReadWrite);
    }
}
