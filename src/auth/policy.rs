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
//! rule's name and a digest of the rule's conditions ([`Rule::digest`]: issuer, kind, audience
//! and claim conditions), and [`TrustPolicy::standing`] gives it the lesser of what it says and
//! what the rule grants today, or nothing once the rule is gone or its conditions changed (the
//! token was exchanged by an identity the rule may no longer admit).
//!
//! Every rule is checked, and every refusal kept: startup stops with the first, naming how many
//! more there are, and `handler check` lists each ([`TrustPolicy::review`]). What looks wrong
//! but may be right (a value that looks like a placeholder left from the docs) is a warning
//! ([`TrustPolicy::warnings`]), logged at startup and printed by `handler check`.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::Access;
use super::conditions::{Condition, echo, echo_text};
use super::issuers::{self, IssuerProfile, RuleFacts};
use crate::key::TeamName;

/// Lifetime of an exchanged token when its rule gives none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Shortest `ttl` a rule may give.
const MIN_TTL: Duration = Duration::from_secs(60);

/// The audience the docs of earlier releases used in every rule. Any other cache whose rules
/// expect it accepts the same identity tokens: an audience naming this deployment (its URL)
/// keeps a token asked for one cache from being replayed at another (`handler doctor` says so).
pub const GENERIC_AUDIENCE: &str = "nx-cache";

/// A checked policy.
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    rules: Vec<Rule>,
    /// One line each, naming the rule: worth a look, not refused.
    warnings: Vec<String>,
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
    /// [`Rule::digest`].
    digest: String,
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

/// What the policy says today of a token exchanged under a rule.
#[derive(Debug, PartialEq, Eq)]
pub enum Standing<'a> {
    /// The rule is there, with the conditions the token was exchanged under: what it grants.
    Grants(&'a Scope),
    /// No rule has that name any more.
    Gone,
    /// The rule's issuer, audience or conditions changed since (or the token carries no digest
    /// of them: exchanged by a release before 0.3.0).
    Changed,
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
    /// is one line naming the (first) rule and the problem, and how many more rules are refused.
    pub fn parse(json: &str, max_ttl: Duration) -> Result<Self, String> {
        Self::review(json, max_ttl).map_err(|refused| refused.summary())
    }

    /// [`TrustPolicy::parse`], with every problem (one line per refused rule, each naming it)
    /// and the warnings of the rules.
    pub fn review(json: &str, max_ttl: Duration) -> Result<Self, Refused> {
        let refused = |problem: String| Refused {
            problems: vec![problem],
            warnings: Vec::new(),
        };
        let raw: RawPolicy = serde_json::from_str(json).map_err(|e| {
            refused(format!(
                "not a valid trust policy ({e}); expected {{\"rules\": [...]}}"
            ))
        })?;
        if raw.rules.is_empty() {
            return Err(refused("has no rules".into()));
        }
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(raw.rules.len());
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        for (index, raw) in raw.rules.into_iter().enumerate() {
            let label = if raw.name.is_empty() {
                format!("rule #{}", index + 1)
            } else {
                format!("rule '{}'", echo_text(&raw.name))
            };
            warnings.extend(
                placeholders(&raw)
                    .into_iter()
                    .map(|w| format!("{label}: {w}")),
            );
            let rule = match Rule::check(raw, max_ttl) {
                Ok(rule) => rule,
                Err(e) => {
                    problems.push(format!("{label}: {e}"));
                    continue;
                }
            };
            if !names.insert(rule.name.clone()) {
                problems.push(format!("{label}: another rule has the same name"));
                continue;
            }
            warnings.extend(
                rule.profile
                    .advise(&rule.facts())
                    .into_iter()
                    .map(|w| format!("{label}: {w}")),
            );
            rules.push(rule);
        }
        if !problems.is_empty() {
            return Err(Refused { problems, warnings });
        }
        Ok(Self { rules, warnings })
    }

    /// Values that look wrong but may be right, one line each naming the rule.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
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

    /// What a token exchanged under rule `name`, whose conditions then had the digest `digest`,
    /// may still do: its rule's grant as the policy says it today, nothing once no rule has that
    /// name, or nothing when the rule's conditions are not the ones the token was exchanged
    /// under (a token without a digest predates digests: its conditions are unknown).
    pub fn standing(&self, name: &str, digest: Option<&str>) -> Standing<'_> {
        match self.rules.iter().find(|r| r.name == name) {
            None => Standing::Gone,
            Some(rule) if digest == Some(rule.digest.as_str()) => Standing::Grants(&rule.grant),
            Some(_) => Standing::Changed,
        }
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
        let digest = digest_of(&raw.issuer, profile.kind(), &raw.audience, &conditions);
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
            digest,
        })
    }

    /// Whether every condition holds. A claim of a shape no condition holds for (a number, a
    /// list where the issuer sends a string) fails its condition, said at debug level.
    fn matches(&self, claims: &Map<String, Value>) -> bool {
        let lists = self.profile.list_claims();
        self.conditions.iter().all(|condition| {
            let list = lists.contains(&condition.claim.as_str());
            let Some(value) = claims.get(&condition.claim) else {
                return false;
            };
            if !Condition::fits(value, list) {
                tracing::debug!(rule = %self.name, claim = %condition.claim,
                    "the claim is not a string (nor a list this issuer sends as one): the condition on it does not hold");
            }
            condition.holds_for(value, list)
        })
    }

    /// A digest of what decides which identities the rule admits: its issuer, the issuer's kind,
    /// its audience and its claim conditions, in a canonical order (claims by name, each one's
    /// values sorted), so that reordering a rule's claims or a list's values does not change it,
    /// and changing any of them does. Its grant and ttl are not part of it: a token follows the
    /// grant anyway. Exchanged tokens carry it; 16 hexadecimal digits.
    pub fn digest(&self) -> &str {
        &self.digest
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

/// The digest of [`Rule::digest`].
fn digest_of(issuer: &str, kind: &str, audience: &str, conditions: &[Condition]) -> String {
    let mut canonical: Vec<(&str, Vec<&str>)> = conditions
        .iter()
        .map(|c| {
            let mut patterns: Vec<&str> = c.patterns.iter().map(String::as_str).collect();
            patterns.sort_unstable();
            patterns.dedup();
            (c.claim.as_str(), patterns)
        })
        .collect();
    canonical.sort();
    let text = serde_json::json!(["nx-azure-cache rule v1", issuer, kind, audience, canonical])
        .to_string();
    Sha256::digest(text.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A policy the server does not start with: every refused rule, and the warnings of all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// One line per problem, each naming its rule.
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

impl Refused {
    /// The first problem, and which rules more are refused: startup's one line.
    pub fn summary(&self) -> String {
        summary(&self.problems)
    }
}

fn summary(problems: &[String]) -> String {
    match problems {
        [] => "refused".into(),
        [one] => one.clone(),
        [first, rest @ ..] => {
            let names: Vec<&str> = rest
                .iter()
                .map(|p| p.split_once(": ").map_or(p.as_str(), |(label, _)| label))
                .collect();
            format!(
                "{first} (and {} more refused: {}; `handler check` lists each)",
                rest.len(),
                names.join(", ")
            )
        }
    }
}

/// The values of a rule that look like a placeholder left from an example, in words: `the
/// audience 'api://CACHE_APP_ID' looks like a placeholder (CACHE_APP_ID) ...`. Real values can
/// look like that (an environment named `PROD`), so these are warnings, never refusals.
fn placeholders(rule: &RawRule) -> Vec<String> {
    let mut values: Vec<(String, &str)> = vec![
        ("the issuer".into(), rule.issuer.as_str()),
        ("the audience".into(), rule.audience.as_str()),
    ];
    for (claim, condition) in &rule.claims.0 {
        let what = format!("the condition on {}", echo_text(claim));
        match condition {
            RawCondition::One(value) => values.push((what, value)),
            RawCondition::Any(list) => {
                values.extend(list.iter().map(|v| (what.clone(), v.as_str())))
            }
        }
    }
    values
        .into_iter()
        .filter_map(|(what, value)| {
            placeholder_in(value).map(|found| {
                format!(
                    "{what} has '{}', which looks like a placeholder ({}) left from an example: replace it with the real value (or ignore this if it is one)",
                    echo_text(value),
                    echo_text(&found)
                )
            })
        })
        .collect()
}

/// The part of `text` that looks like a placeholder: `$NAME` or `${NAME}`, `<...>`, or an
/// upper-case word such as `TENANT_ID` or `OWNER` (two or more characters, starting with a
/// letter, no lower case, not only hexadecimal digits, which an upper-case GUID is made of).
pub fn placeholder_in(text: &str) -> Option<String> {
    if let Some(at) = text.find('$') {
        let rest = &text[at + 1..];
        if rest.starts_with(|c: char| c == '{' || c == '_' || c.is_ascii_alphabetic()) {
            let end = rest
                .find(|c: char| !(c == '{' || c == '}' || c == '_' || c.is_ascii_alphanumeric()))
                .unwrap_or(rest.len());
            return Some(format!("${}", &rest[..end]));
        }
    }
    if let (Some(open), Some(close)) = (text.find('<'), text.rfind('>'))
        && open < close
    {
        return Some(text[open..=close].to_owned());
    }
    text.split(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
        .find(|word| {
            word.len() >= 2
                && word.starts_with(|c: char| c.is_ascii_uppercase())
                && !word.bytes().any(|b| b.is_ascii_lowercase())
                && !word.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .map(str::to_owned)
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
    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

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
        // GitHub sends every claim as a string: a number, a list or a boolean is not one, and
        // satisfies no condition (the token falls through to no rule, never a crash).
        let p = policy(json!([github_rule(
            "by-id",
            json!({"repository_id": "74", "repository": "acme/web"}),
            "read-only"
        )]))
        .unwrap();
        let aud = vec!["nx-cache".to_string()];
        let good = claims(json!({"repository_id": "74", "repository": "acme/web"}));
        assert!(matches!(
            p.decide(GITHUB, &aud, &good),
            Decision::Matched(_)
        ));
        for odd in [
            json!({"repository_id": 74, "repository": "acme/web"}),
            json!({"repository_id": "74", "repository": ["acme/web"]}),
            json!({"repository_id": ["74", "75"], "repository": "acme/web"}),
            json!({"repository_id": "74", "repository": {"name": "acme/web"}}),
            json!({"repository_id": "74", "repository": null}),
        ] {
            assert!(
                matches!(
                    p.decide(GITHUB, &aud, &claims(odd.clone())),
                    Decision::NoRule { .. }
                ),
                "{odd}"
            );
        }
        let p = policy(
            json!([{"name": "gl", "issuer": "https://gitlab.com", "audience": "nx-cache",
            "claims": {"project_path": "acme/web", "ref_protected": "true"},
            "grant": {"org": true, "access": "read-only"}}]),
        )
        .unwrap();
        let boolean = claims(json!({"project_path": "acme/web", "ref_protected": true}));
        assert!(matches!(
            p.decide("https://gitlab.com", &aud, &boolean),
            Decision::NoRule { .. }
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
            // An environment is no stand-in for the branch: any branch's run can name it.
            json!({"repository": "acme/web", "event_name": "workflow_dispatch", "environment": "production"}),
            json!({"repository_id": "5678", "environment": "production", "event_name": "push"}),
            // A wildcard only directly after a '/'.
            json!({"repository": "acme/web", "event_name": "push", "ref": "refs/heads/m*"}),
            json!({"repository": "acme/web", "event_name": "push", "ref": ["refs/heads/main", "refs/heads/release*"]}),
        ] {
            let err = refused(github_rule("web-main", claims.clone(), "read-write"));
            assert!(err.contains("\"ref\""), "{claims}: {err}");
        }
        for claims in [
            json!({"repository": "acme/web", "ref": "refs/heads/main", "event_name": "push"}),
            json!({"repository": "acme/web", "ref": ["refs/heads/main", "refs/heads/release/*"],
                   "event_name": ["push", "schedule", "workflow_dispatch"]}),
            json!({"repository_id": "5678", "ref": "refs/heads/main", "environment": "production",
                   "event_name": "push"}),
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
            json!({"project_path": "acme/web", "ref": "main", "ref_protected": "true", "ref_type": "branch"}),
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
        own["claims"]["ref_type"] = "branch".into();
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
        let b2c = rule(
            &format!("https://acme.b2clogin.com/tfp/{tid}/B2C_1_signin/v2.0/"),
            json!({"tid": tid, "oid": "11111111-1111-1111-1111-111111111111"}),
            "read-only",
        );
        assert!(policy(json!([b2c])).is_ok());
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
                   "claims": {"project_path": "acme/web", "ref": "main", "ref_protected": "true",
                              "ref_type": "branch"},
                   "grant": {"org": true, "teams": ["web"], "access": "read-write"}}),
            json!({"name": "devs", "issuer": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
                   "audience": "api://nx", "claims": {"tid": TENANT, "groups": "g"},
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
            "gl: read-write to org, team web for pipelines for protected branches named main of acme/web (GitLab)"
        );
        assert_eq!(
            words[2],
            format!("devs: read-only to org for members of group g of tenant {TENANT} (Entra ID)")
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
        let digest = p.rules()[0].digest().to_owned();
        let grant = |rule: Option<&str>, digest: Option<&str>| Grant {
            subject: "github:acme/web:refs/heads/main".into(),
            token_id: "t1".into(),
            org: true,
            teams: vec![
                TeamName::parse("web").unwrap(),
                TeamName::parse("api").unwrap(),
            ],
            access: Access::ReadWrite,
            rule: rule.map(str::to_owned),
            rule_digest: digest.map(str::to_owned),
            origin: None,
            expired: false,
        };
        let now = grant(Some("web-prs"), Some(&digest)).under_policy(Some(&p));
        assert_eq!(now.access, Access::ReadOnly);
        assert!(!now.org);
        assert_eq!(now.teams, vec![TeamName::parse("web").unwrap()]);
        for gone in [
            grant(Some("web-main"), Some(&digest)).under_policy(Some(&p)),
            grant(Some("web-prs"), Some(&digest)).under_policy(None),
            // Exchanged under other conditions of the same rule.
            grant(Some("web-prs"), Some("0123456789abcdef")).under_policy(Some(&p)),
            // Exchanged by 0.2.0, which carried no digest: its conditions are unknown.
            grant(Some("web-prs"), None).under_policy(Some(&p)),
        ] {
            assert!(!gone.org && gone.teams.is_empty(), "{gone:?}");
            assert_eq!(gone.access, Access::ReadOnly);
        }
        let issued = grant(None, None).under_policy(None);
        assert!(issued.org && issued.teams.len() == 2 && issued.access == Access::ReadWrite);
    }

    /// The digest of a rule changes with what decides whom it admits, and only with that.
    #[test]
    fn a_rule_digest_follows_its_issuer_audience_kind_and_conditions() {
        let digest = |rule: Value| {
            policy(json!([rule])).unwrap().rules()[0]
                .digest()
                .to_owned()
        };
        let base = json!({"name": "web-main", "issuer": GITHUB, "audience": "nx-cache",
            "claims": {"repository": "acme/web", "event_name": ["push", "schedule"],
                       "ref": ["refs/heads/main", "refs/heads/dev"]},
            "grant": {"teams": ["web"], "access": "read-write"}, "ttl": "2h"});
        let first = digest(base.clone());
        assert_eq!(first.len(), 16);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        let edited = |edit: &dyn Fn(&mut Value)| {
            let mut rule = base.clone();
            edit(&mut rule);
            digest(rule)
        };
        // The same conditions, written otherwise; another grant, ttl or name: the same digest.
        let text = format!(
            r#"{{"rules": [{{"name": "web-main", "issuer": "{GITHUB}", "audience": "nx-cache",
            "claims": {{"ref": ["refs/heads/dev", "refs/heads/main", "refs/heads/dev"],
                        "event_name": ["schedule", "push"], "repository": "acme/web"}},
            "grant": {{"teams": ["web"], "access": "read-write"}}}}]}}"#
        );
        assert_eq!(
            TrustPolicy::parse(&text, MAX).unwrap().rules()[0].digest(),
            first
        );
        for same in [
            edited(&|r| r["grant"] = json!({"org": true, "access": "read-only"})),
            edited(&|r| r["ttl"] = "1h".into()),
            edited(&|r| r["name"] = "renamed".into()),
            edited(&|r| r["kind"] = "github".into()),
        ] {
            assert_eq!(same, first);
        }
        // Whom it admits changed: another digest.
        for other in [
            edited(&|r| r["claims"]["ref"] = "refs/heads/main".into()),
            edited(&|r| r["claims"]["repository"] = "acme/api".into()),
            edited(&|r| r["claims"]["environment"] = "production".into()),
            edited(&|r| r["audience"] = "https://acme-nx-cache.azurewebsites.net".into()),
            edited(&|r| r["issuer"] = format!("{GITHUB}/acme").into()),
        ] {
            assert_ne!(other, first);
        }
    }

    #[test]
    fn write_rules_name_one_repository_or_project() {
        // Owner-wide pins: any member who may create a repository or project would write.
        for claims in [
            json!({"repository_owner": "acme", "ref": "refs/heads/main", "event_name": "push"}),
            json!({"repository_owner_id": "1234", "ref": "refs/heads/main", "event_name": "push"}),
            json!({"repository": "acme/*", "ref": "refs/heads/main", "event_name": "push"}),
            json!({"repository": "acme/web*", "ref": "refs/heads/main", "event_name": "push"}),
            json!({"repository": ["acme/web", "acme/*"], "ref": "refs/heads/main", "event_name": "push"}),
            json!({"sub": "repo:acme/*", "ref": "refs/heads/main", "event_name": "push"}),
            json!({"sub": "repository_owner:acme:*", "ref": "refs/heads/main", "event_name": "push"}),
        ] {
            let err = refused(github_rule("owner-wide", claims.clone(), "read-write"));
            assert!(err.contains("one repository"), "{claims}: {err}");
            assert!(
                err.contains("/REPO\" (or \"repository_id\""),
                "{claims}: {err}"
            );
            // The same pins stay valid for read-only rules.
            assert!(
                policy(json!([github_rule("ok", claims.clone(), "read-only")])).is_ok(),
                "{claims}"
            );
        }
        // The form to write names the rule's owner when it has one.
        let err = refused(github_rule(
            "owner-wide",
            json!({"repository_owner": "acme", "ref": "refs/heads/main", "event_name": "push"}),
            "read-write",
        ));
        assert!(err.contains("write \"repository\": \"acme/REPO\""), "{err}");
        for claims in [
            json!({"repository": "acme/web", "ref": "refs/heads/main", "event_name": "push"}),
            json!({"repository": ["acme/web", "acme/api"], "ref": "refs/heads/main", "event_name": "push"}),
            json!({"repository_owner": "acme", "repository_id": "5678", "ref": "refs/heads/main",
                   "event_name": "push"}),
            json!({"sub": "repo:acme/web:*", "ref": "refs/heads/main", "event_name": "push"}),
            json!({"sub": "repo:acme@1234/web@5678:ref:refs/heads/main", "ref": "refs/heads/main",
                   "event_name": "push"}),
        ] {
            assert!(
                policy(json!([github_rule("ok", claims.clone(), "read-write")])).is_ok(),
                "{claims}"
            );
        }
        let gitlab = |claims: Value| rule("https://gitlab.com", claims, "read-write");
        for claims in [
            json!({"namespace_path": "acme", "ref_protected": "true", "ref_type": "branch"}),
            json!({"namespace_id": "72", "ref_protected": "true", "ref_type": "branch"}),
            json!({"project_path": "acme/*", "ref_protected": "true", "ref_type": "branch"}),
            json!({"sub": "project_path:acme/web:ref_type:branch:ref:main", "ref_protected": "true",
                   "ref_type": "branch"}),
        ] {
            let err = refused(gitlab(claims.clone()));
            assert!(err.contains("one project"), "{claims}: {err}");
            assert!(err.contains("\"project_path\": \"GROUP/PROJECT\""), "{err}");
        }
        for claims in [
            json!({"project_path": "acme/web", "ref_protected": "true", "ref_type": "branch"}),
            json!({"project_path": "acme/team/web", "ref_protected": "true", "ref_type": "branch"}),
            json!({"project_id": "20", "ref_protected": "true", "ref_type": "branch"}),
        ] {
            assert!(policy(json!([gitlab(claims.clone())])).is_ok(), "{claims}");
        }
    }

    #[test]
    fn gitlab_write_rules_exclude_protected_tags() {
        let err = refused(rule(
            "https://gitlab.com",
            json!({"project_path": "acme/web", "ref_protected": "true"}),
            "read-write",
        ));
        assert!(err.contains("\"ref_type\": \"branch\""), "{err}");
        assert!(err.contains("tags"), "{err}");
        for ref_type in [json!("tag"), json!(["branch", "tag"]), json!("*")] {
            let err = refused(rule(
                "https://gitlab.com",
                json!({"project_path": "acme/web", "ref_protected": "true", "ref_type": ref_type}),
                "read-write",
            ));
            assert!(err.contains("ref_type"), "{err}");
        }
    }

    #[test]
    fn every_github_issuer_gets_the_github_checks() {
        let full =
            json!({"repository": "acme/web", "ref": "refs/heads/main", "event_name": "push"});
        let loose = json!({"repository_owner": "acme", "ref": "refs/heads/main"});
        for (issuer, kind) in [
            ("https://token.actions.githubusercontent.com", None),
            (
                "https://token.actions.githubusercontent.com/acme-enterprise",
                None,
            ),
            ("https://token.actions.acme.ghe.com", None),
            ("https://ghes.acme.example/_services/token", None),
            ("https://git.acme.example/oidc", Some("github")),
        ] {
            let with = |claims: &Value| {
                let mut r = rule(issuer, claims.clone(), "read-write");
                if let Some(kind) = kind {
                    r["kind"] = kind.into();
                }
                r
            };
            assert!(policy(json!([with(&full)])).is_ok(), "{issuer}");
            let err = refused(with(&loose));
            assert!(err.contains("one repository"), "{issuer}: {err}");
            let err = refused(with(&json!({"sub": "environment:production"})));
            assert!(err.contains("every GitHub repository"), "{issuer}: {err}");
        }
    }

    #[test]
    fn other_issuers_need_a_literal_before_any_wildcard() {
        for pattern in ["*", "*:*", ":*", "-*", "/*/*", "**", "*:acme"] {
            let err = refused(rule(
                "https://ci.example.com",
                json!({"sub": pattern}),
                "read-only",
            ));
            assert!(err.contains("no identity condition"), "{pattern}: {err}");
        }
        for pattern in ["pipeline:*", "p", "acme/web:*", ":7"] {
            let ok = rule(
                "https://ci.example.com",
                json!({"sub": pattern}),
                "read-only",
            );
            assert!(policy(json!([ok])).is_ok(), "{pattern}");
        }
    }

    #[test]
    fn entra_ids_are_guids_and_write_rules_pin_an_application() {
        let v1 = format!("https://sts.windows.net/{TENANT}/");
        let oid = "11111111-1111-1111-1111-111111111111";
        // A group alone does not pin who writes; an object or an app role does.
        let err = refused(rule(
            &v1,
            json!({"tid": TENANT, "groups": "anything"}),
            "read-write",
        ));
        assert!(err.contains("\"oid\""), "{err}");
        assert!(err.contains("roles"), "{err}");
        assert!(
            policy(json!([rule(
                &v1,
                json!({"tid": TENANT, "groups": "g"}),
                "read-only"
            )]))
            .is_ok()
        );
        for claims in [
            json!({"tid": TENANT, "oid": oid}),
            json!({"tid": TENANT, "roles": "Cache.Write"}),
            json!({"tid": TENANT, "oid": [oid, "22222222-2222-2222-2222-222222222222"]}),
        ] {
            assert!(
                policy(json!([rule(&v1, claims.clone(), "read-write")])).is_ok(),
                "{claims}"
            );
        }
        // Ids in the GUID shape, whatever the access.
        for (claims, field) in [
            (json!({"tid": TENANT, "oid": "o-1"}), "oid 'o-1'"),
            (json!({"tid": "TENANT_ID", "oid": oid}), "tid 'TENANT_ID'"),
            (
                json!({"tid": TENANT, "oid": oid, "appid": "APP_ID"}),
                "appid 'APP_ID'",
            ),
            (json!({"tid": TENANT, "oid": oid, "azp": "*"}), "azp '*'"),
            (json!({"tid": TENANT, "oid": [oid, "x"]}), "oid 'x'"),
        ] {
            for access in ["read-only", "read-write"] {
                let err = refused(rule(&v1, claims.clone(), access));
                assert!(err.contains(field), "{claims}: {err}");
                assert!(err.contains("GUID"), "{err}");
            }
        }
        // The tenant in the issuer, too: the docs' TENANT_ID left in never matches a token.
        for issuer in [
            "https://sts.windows.net/TENANT_ID/",
            "https://login.microsoftonline.com/TENANT_ID/v2.0",
            "https://login.microsoftonline.com/common/v2.0",
            "https://acme.b2clogin.com/acme.onmicrosoft.com/v2.0/",
        ] {
            let err = refused(rule(
                issuer,
                json!({"tid": TENANT, "oid": oid}),
                "read-only",
            ));
            assert!(err.contains("not a tenant id"), "{issuer}: {err}");
            assert!(err.contains(TENANT), "{err}");
        }
        let err = refused(rule(
            "https://sts.windows.net/TENANT_ID/",
            json!({"tid": TENANT, "oid": oid}),
            "read-only",
        ));
        assert!(
            err.contains(&format!("write e.g. \"https://sts.windows.net/{TENANT}/\"")),
            "{err}"
        );
        // A tid other than the issuer's tenant could never match that issuer's tokens.
        let other = "22222222-2222-2222-2222-222222222222";
        for (issuer, tid) in [
            (v1.clone(), json!(other)),
            (v1.clone(), json!([TENANT, other])),
            (
                format!("https://login.microsoftonline.com/{other}/v2.0"),
                json!(TENANT),
            ),
        ] {
            let err = refused(rule(&issuer, json!({"tid": tid, "oid": oid}), "read-only"));
            assert!(err.contains("is not the tenant of issuer"), "{err}");
        }
        assert!(
            policy(json!([rule(
                &format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
                json!({"tid": TENANT.to_uppercase(), "oid": oid}),
                "read-only"
            )]))
            .is_ok(),
            "upper case is a warning (below), not this refusal"
        );
        // Upper case never matches a token's id: a warning, with the spelling to write.
        let upper = policy(json!([rule(
            &v1,
            json!({"tid": TENANT, "oid": oid.to_uppercase().replace('1', "A")}),
            "read-only"
        )]))
        .unwrap();
        assert!(
            upper.warnings().iter().any(|w| w.contains("upper-case")),
            "{:?}",
            upper.warnings()
        );
    }

    #[test]
    fn placeholders_are_warnings_not_refusals() {
        for (text, found) in [
            ("api://CACHE_APP_ID", Some("CACHE_APP_ID")),
            (
                "https://token.actions.githubusercontent.com/ENTERPRISE",
                Some("ENTERPRISE"),
            ),
            ("OWNER/REPO", Some("OWNER")),
            ("$DEVELOPERS_ID", Some("$DEVELOPERS_ID")),
            ("${TENANT}", Some("${TENANT}")),
            ("<your group id>", Some("<your group id>")),
            ("acme/web", None),
            ("refs/heads/main", None),
            ("Cache.Write", None),
            ("72F988BF-86F1-41AF-91AB-2D7CD011DB47", None),
            ("api://6e74172b-be56-4843-9ff4-e66a39bb12e3", None),
            ("https://acme-nx-cache.azurewebsites.net", None),
            ("v2.0", None),
        ] {
            assert_eq!(placeholder_in(text).as_deref(), found, "{text}");
        }
        let p = policy(json!([
            {"name": "developers", "issuer": format!("https://sts.windows.net/{TENANT}/"),
             "audience": "api://CACHE_APP_ID",
             "claims": {"tid": TENANT, "groups": "DEVELOPERS_GROUP_OBJECT_ID"},
             "grant": {"org": true, "access": "read-only"}},
            github_rule("prs", json!({"repository": "OWNER/REPO"}), "read-only"),
        ]))
        .unwrap();
        let warnings = p.warnings();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0].starts_with("rule 'developers': the audience has 'api://CACHE_APP_ID'")
        );
        assert!(warnings[1].starts_with("rule 'developers': the condition on groups"));
        assert!(warnings[2].starts_with("rule 'prs': the condition on repository"));
        assert!(warnings.iter().all(|w| w.lines().count() == 1));
        let clean = policy(json!([github_rule(
            "ok",
            json!({"repository": "acme/web"}),
            "read-only"
        )]))
        .unwrap();
        assert!(clean.warnings().is_empty());
    }

    /// What `handler check` prints for a 0.2.0 policy: each rule that stops the server.
    #[test]
    fn every_refused_rule_is_listed_and_startup_names_the_first() {
        let text = json!({"rules": [
            github_rule("org-main", json!({"repository_owner": "acme", "ref": "refs/heads/main",
                                           "event_name": "push"}), "read-write"),
            github_rule("web-prs", json!({"repository": "acme/web"}), "read-only"),
            github_rule("web-deploy", json!({"repository": "acme/web", "environment": "production",
                                             "event_name": "workflow_dispatch"}), "read-write"),
            rule("https://gitlab.com", json!({"project_path": "acme/web", "ref_protected": "true"}),
                 "read-write"),
        ]})
        .to_string();
        let refused = TrustPolicy::review(&text, MAX).unwrap_err();
        assert_eq!(refused.problems.len(), 3, "{:?}", refused.problems);
        assert!(
            refused.problems[0].starts_with("rule 'org-main': read-write must name one repository")
        );
        assert!(refused.problems[1].starts_with("rule 'web-deploy': read-write needs a \"ref\""));
        assert!(refused.problems[2].starts_with("rule 'r': read-write needs \"ref_type\""));
        let line = TrustPolicy::parse(&text, MAX).unwrap_err();
        assert_eq!(line.lines().count(), 1);
        assert!(line.starts_with("rule 'org-main': "), "{line}");
        assert!(
            line.ends_with(
                "(and 2 more refused: rule 'web-deploy', rule 'r'; `handler check` lists each)"
            ),
            "{line}"
        );
    }
}
