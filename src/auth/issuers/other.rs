//! Any other issuer: a CI system this server has no profile for. Its claims mean nothing to the
//! server, so a rule only has to pin something: a condition whose every value has a letter or a
//! digit before its first `*` (`*`, `*:*` or `:*` match any token of the issuer), and write
//! access is the operator's judgement: `handler doctor` says so next to such a rule. A GitHub
//! Enterprise Server or a self-managed GitLab gets its own profile's checks with `"kind"`.

use serde_json::{Map, Value};

use super::{IssuerProfile, IssuerUrl, RuleFacts, remaining};
use crate::auth::conditions::literal_prefix;

pub struct Other;

impl IssuerProfile for Other {
    fn kind(&self) -> &'static str {
        "other"
    }

    fn name(&self) -> &'static str {
        "other issuer"
    }

    fn canonical(&self, _url: &IssuerUrl) -> Option<String> {
        None
    }

    fn check(&self, rule: &RuleFacts) -> Result<(), String> {
        let pinned = rule.conditions.iter().any(|c| {
            c.patterns
                .iter()
                .all(|p| literal_prefix(p).chars().any(char::is_alphanumeric))
        });
        if !pinned {
            return Err(format!(
                "has no identity condition: add a claim condition with a letter or digit before its first '*', e.g. \"sub\": \"pipeline:acme/web:*\" ('*', '*:*' or ':*' match any token of {})",
                rule.issuer
            ));
        }
        Ok(())
    }

    fn explain(&self, rule: &RuleFacts) -> String {
        format!(
            "tokens of {}{}; no write-access checks for this issuer (set \"kind\" if it is a GitHub Enterprise Server or a self-managed GitLab)",
            rule.issuer,
            remaining(rule.conditions, &[])
        )
    }

    fn subject(&self, issuer: &str, claims: &Map<String, Value>) -> String {
        super::host_and_sub(issuer, claims)
    }
}
