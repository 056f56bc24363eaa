//! The trust policy (`NX_CACHE_TRUST_POLICY`): which identity tokens may be exchanged for which
//! grant.
//!
//! ```json
//! {"rules": [
//!   {"name": "web-main", "issuer": "https://token.actions.githubusercontent.com", "audience": "nx-cache",
//!    "claims": {"repository": "acme/web", "ref": "refs/heads/main"},
//!    "grant": {"teams": ["web"], "access": "read-write"}, "ttl": "2h"}
//! ]}
//! ```
//!
//! Rules are tried in order; the first whose issuer, audience and every claim condition hold
//! decides. A condition is a string (exact, `*` matching any run of characters) or a list (any
//! of them); a claim that is itself a list (Entra `groups`, `roles`) matches when any element
//! does. Numbers and booleans are compared as their JSON text.
//!
//! Checked at startup, a mistake being one line naming the rule. Above all, a rule must pin an
//! identity: trusting `token.actions.githubusercontent.com` without naming a repository owner
//! hands the cache to every GitHub user (anyone can mint a token with any audience). So for the
//! public issuers a rule needs a condition on a claim that names an owner (GitHub: `repository`,
//! `repository_owner`, ids or `sub`; GitLab.com: project or namespace; Entra ID: `tid` plus an
//! object, group or role), with no wildcard before the owner; for any other issuer, at least one
//! condition that is not a bare `*`.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::Access;
use crate::key::TeamName;

/// Lifetime of an exchanged token when its rule gives none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Shortest `ttl` a rule may give.
const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest value echoed per claim in a refusal.
const ECHO_LIMIT: usize = 80;

/// A checked policy.
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    rules: Vec<Rule>,
}

/// One rule: who (issuer, audience, claims) gets what (scope, lifetime).
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub issuer: String,
    pub audience: String,
    conditions: Vec<Condition>,
    pub grant: Scope,
    pub ttl: Duration,
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

#[derive(Debug, Clone)]
struct Condition {
    claim: String,
    /// Any of these matches.
    patterns: Vec<String>,
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
        check_issuer(&raw.issuer)?;
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
        check_identity(&raw.issuer, &conditions)?;
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
        })
    }

    fn matches(&self, claims: &Map<String, Value>) -> bool {
        self.conditions.iter().all(|condition| {
            claims
                .get(&condition.claim)
                .is_some_and(|value| condition.holds_for(value))
        })
    }
}

impl Condition {
    fn holds_for(&self, value: &Value) -> bool {
        match value {
            Value::Array(items) => items.iter().any(|item| self.holds_for_scalar(item)),
            scalar => self.holds_for_scalar(scalar),
        }
    }

    fn holds_for_scalar(&self, value: &Value) -> bool {
        let Some(text) = scalar_text(value) else {
            return false;
        };
        self.patterns.iter().any(|p| glob(p, &text))
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
        let mut parts = Vec::new();
        if self.org {
            parts.push("org".to_string());
        }
        parts.extend(self.teams.iter().map(|t| format!("team {}", t.as_str())));
        format!("{} access to {}", self.access.as_str(), parts.join(", "))
    }
}

/// `*` matches any run of characters (including none and `/`); everything else is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently made to cover up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star_pi, star_ti)) = star {
            pi = star_pi + 1;
            ti = star_ti + 1;
            star = Some((star_pi, star_ti + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// A claim value as text for matching: strings as they are, numbers and booleans as JSON.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A claim value for a refusal message: short, printable.
fn echo(value: Option<&Value>) -> String {
    match value {
        None => "(absent)".into(),
        Some(Value::Array(items)) => {
            let texts: Vec<String> = items.iter().filter_map(scalar_text).collect();
            echo_text(&format!("[{}]", texts.join(",")))
        }
        Some(other) => scalar_text(other)
            .map(|t| echo_text(&t))
            .unwrap_or_else(|| "(not text)".into()),
    }
}

fn echo_text(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(ECHO_LIMIT)
        .collect();
    if text.chars().count() > ECHO_LIMIT {
        format!("{clean}...")
    } else {
        clean
    }
}

/// Issuers are https URLs (plain http only on this machine, for tests), without query or
/// fragment: they are compared exactly with the tokens' `iss` and keys are fetched from them.
fn check_issuer(issuer: &str) -> Result<(), String> {
    let problem = || {
        format!(
            "issuer '{}' must be an https URL without query or fragment, exactly as the tokens' iss (plain http only for 127.0.0.1 or localhost)",
            echo_text(issuer)
        )
    };
    let uri: hyper::Uri = issuer.parse().map_err(|_| problem())?;
    let host = uri.host().ok_or_else(problem)?;
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let scheme_ok = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => loopback,
        _ => false,
    };
    if !scheme_ok
        || uri.query().is_some()
        || issuer.contains('#')
        || issuer.contains(char::is_whitespace)
    {
        return Err(problem());
    }
    Ok(())
}

/// The kind of issuer, for the identity conditions a rule must carry.
enum IssuerKind {
    GitHub,
    GitLabCom,
    Entra,
    Other,
}

fn issuer_kind(issuer: &str) -> IssuerKind {
    let github = "https://token.actions.githubusercontent.com";
    if issuer == github || issuer.starts_with(&format!("{github}/")) {
        IssuerKind::GitHub
    } else if issuer.trim_end_matches('/') == "https://gitlab.com" {
        IssuerKind::GitLabCom
    } else if issuer.starts_with("https://sts.windows.net/")
        || issuer.starts_with("https://login.microsoftonline.com/")
    {
        IssuerKind::Entra
    } else {
        IssuerKind::Other
    }
}

/// Claims whose value starts with an owner (`acme/web`, `repo:acme/web:...`): a pattern pins an
/// identity when its literal part before any `*` reaches past the owner (contains a `/`).
const OWNER_PATHS: &[&str] = &[
    "repository",
    "workflow_ref",
    "job_workflow_ref",
    "project_path",
    "sub",
];
/// Claims that name one identity exactly (owners, ids, tenants, objects, groups, roles): a
/// pattern pins only when it has no `*` at all.
const EXACT_IDS: &[&str] = &[
    "repository_owner",
    "repository_id",
    "repository_owner_id",
    "namespace_path",
    "namespace_id",
    "project_id",
    "tid",
    "oid",
    "groups",
    "roles",
];

/// Whether one pattern on `claim` names an identity rather than a family of them.
fn pins(claim: &str, pattern: &str) -> bool {
    let literal = pattern.split('*').next().unwrap_or("");
    if EXACT_IDS.contains(&claim) {
        !pattern.contains('*')
    } else if OWNER_PATHS.contains(&claim) {
        !pattern.contains('*') || literal.contains('/')
    } else {
        pattern.chars().any(|c| c != '*')
    }
}

fn pinned<'a>(conditions: &'a [Condition], claims: &[&str]) -> Option<&'a Condition> {
    conditions.iter().find(|c| {
        claims.contains(&c.claim.as_str()) && c.patterns.iter().all(|p| pins(&c.claim, p))
    })
}

/// Refuses a rule that would trust every repository, project or tenant of its issuer.
fn check_identity(issuer: &str, conditions: &[Condition]) -> Result<(), String> {
    match issuer_kind(issuer) {
        IssuerKind::GitHub => {
            let claims = [
                "repository",
                "repository_owner",
                "repository_id",
                "repository_owner_id",
                "sub",
                "workflow_ref",
                "job_workflow_ref",
            ];
            if pinned(conditions, &claims).is_none() {
                return Err(format!(
                    "would trust every GitHub repository: add a condition on repository, repository_owner, repository_id, repository_owner_id or sub that names the owner, with no wildcard before it (e.g. \"repository\": \"acme/web\" or \"acme/*\"); a token's audience proves nothing, any workflow can ask for any audience ({issuer})"
                ));
            }
        }
        IssuerKind::GitLabCom => {
            let claims = [
                "project_path",
                "project_id",
                "namespace_path",
                "namespace_id",
                "sub",
            ];
            if pinned(conditions, &claims).is_none() {
                return Err(
                    "would trust every gitlab.com project: add a condition on project_path, project_id, namespace_path, namespace_id or sub that names the group, with no wildcard before it (e.g. \"project_path\": \"acme/web\")"
                        .into(),
                );
            }
        }
        IssuerKind::Entra => {
            if pinned(conditions, &["tid"]).is_none() {
                return Err(
                    "an Entra ID rule needs an exact \"tid\" condition (your tenant id)".into(),
                );
            }
            if pinned(conditions, &["oid", "sub", "groups", "roles"]).is_none() {
                return Err(
                    "an Entra ID rule needs an exact condition on oid, groups or roles: every account of the tenant can get a token for the cache's app registration"
                        .into(),
                );
            }
        }
        IssuerKind::Other => {
            let any = conditions
                .iter()
                .any(|c| c.patterns.iter().all(|p| pins(&c.claim, p)));
            if !any {
                return Err(format!(
                    "has no identity condition: add at least one claim condition that is not a bare '*' (e.g. on sub) for {issuer}"
                ));
            }
        }
    }
    Ok(())
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
    fn globs() {
        for (pattern, text, expected) in [
            ("acme/web", "acme/web", true),
            ("acme/web", "acme/webx", false),
            ("acme/*", "acme/web", true),
            ("acme/*", "acme/", true),
            ("acme/*", "acmex/web", false),
            ("refs/heads/release/*", "refs/heads/release/1.2", true),
            ("*", "", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("*main", "refs/heads/main", true),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob(pattern, text), expected, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        // Text, not `json!`: the policy's own order of claims is kept in refusals.
        let text = r#"{"rules": [
            {"name": "web-main", "issuer": "https://token.actions.githubusercontent.com", "audience": "nx-cache",
             "claims": {"repository": "acme/web", "ref": "refs/heads/main"},
             "grant": {"teams": ["web"], "access": "read-write"}, "ttl": "2h"},
            {"name": "web-prs", "issuer": "https://token.actions.githubusercontent.com", "audience": "nx-cache",
             "claims": {"repository": "acme/web"},
             "grant": {"org": true, "teams": ["web"], "access": "read-only"}}
        ]}"#;
        let p = TrustPolicy::parse(text, MAX).unwrap();
        let aud = vec!["nx-cache".to_string()];
        let main = claims(json!({"repository": "acme/web", "ref": "refs/heads/main"}));
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
                assert_eq!(compared, "repository=acme/api ref=refs/pull/7/merge")
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
                "every gitlab.com project",
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
}
