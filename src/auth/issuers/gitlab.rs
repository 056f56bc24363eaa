//! GitLab CI ID tokens (GitLab docs, "OpenID Connect (OIDC) Authentication Using ID Tokens").
//!
//! - Issuer: the instance URL, `https://gitlab.com` or a self-managed `external_url` (a rule
//!   names that one with `"kind": "gitlab"`).
//! - **Identity.** `project_path` (`acme/web`, `acme/*`), `namespace_path`, `project_id`,
//!   `namespace_id`, or a `sub` (`project_path:acme/web:ref_type:branch:ref:main`) that names
//!   the group.
//! - **Write access.** Namespace pins are for read-only rules: every member of a group who may
//!   create a project (GitLab's default) can create one and run its pipelines, so a read-write
//!   rule names one project exactly in each value (`project_path` `acme/web`, or
//!   `project_id`). `ref` is only a branch name: a merge-request pipeline's `ref` is its source
//!   branch, and a fork can name its branch `main`. Only `ref_protected: "true"` says the
//!   pipeline runs for a protected branch or tag, and a protected tag can point at any commit,
//!   one never merged included, so a read-write rule needs `ref_protected: "true"` and
//!   `ref_type: "branch"`. Since GitLab 18.2.2, a merge-request pipeline from a fork that runs
//!   in the parent project carries the fork's `project_*` and `namespace_*` claims (the
//!   parent's are in `job_project_*`, added in 18.4 and backported to 18.3 and 18.2), so a pin
//!   on `project_path` does not match it; `job_project_*` is therefore never a write pin.
//!
//! Claim values are strings, except `runner_id` (a number), `user_identities` and
//! `groups_direct` (arrays); `ci_config_*` may be null.

use serde_json::{Map, Value};

use super::{IssuerProfile, IssuerUrl, RuleFacts, claim, remaining};
use crate::auth::Access;
use crate::auth::conditions::{Condition, literal_prefix, on};

pub struct GitLab;

impl IssuerProfile for GitLab {
    fn kind(&self) -> &'static str {
        "gitlab"
    }

    fn name(&self) -> &'static str {
        "GitLab"
    }

    fn canonical(&self, url: &IssuerUrl) -> Option<String> {
        (url.host == "gitlab.com").then(|| "https://gitlab.com".to_owned())
    }

    fn check(&self, rule: &RuleFacts) -> Result<(), String> {
        if !pins_identity(rule.conditions) {
            return Err(format!(
                "would trust every project of {}: add a condition on project_path, project_id, namespace_path, namespace_id or sub that names the group, with no wildcard before it (e.g. \"project_path\": \"acme/web\")",
                rule.issuer
            ));
        }
        if rule.access == Access::ReadWrite {
            check_write(rule.conditions)?;
        }
        Ok(())
    }

    fn explain(&self, rule: &RuleFacts) -> String {
        let conditions = rule.conditions;
        let only = |claim: &str, value: &str| {
            on(conditions, claim).is_some_and(|c| c.patterns.iter().all(|p| p == value))
        };
        let mut words = match (only("ref_protected", "true"), only("ref_type", "branch")) {
            (true, true) => "pipelines for protected branches".to_string(),
            (true, false) => "pipelines for protected refs".to_string(),
            (false, true) => "pipelines for branches".to_string(),
            (false, false) => "pipelines".to_string(),
        };
        if let Some(r) = on(conditions, "ref") {
            words.push_str(&format!(" named {}", r.describe()));
        }
        let mut owners = Vec::new();
        for (claim, label) in [
            ("project_path", ""),
            ("project_id", "project id "),
            ("namespace_path", "projects of "),
            ("namespace_id", "projects of namespace id "),
        ] {
            if let Some(c) = on(conditions, claim) {
                owners.push(format!("{label}{}", c.describe()));
            }
        }
        if owners.is_empty() {
            owners.push(match on(conditions, "sub") {
                Some(c) => format!("sub {}", c.describe()),
                None => "any project".into(),
            });
        }
        words.push_str(&format!(" of {}", owners.join(", ")));
        words.push_str(&remaining(
            conditions,
            &[
                "ref_protected",
                "ref_type",
                "ref",
                "project_path",
                "project_id",
                "namespace_path",
                "namespace_id",
            ],
        ));
        words
    }

    /// Which job of which pipeline, at which commit, started by whom.
    fn build_claims(&self) -> &'static [&'static str] {
        &[
            "project_path",
            "ref",
            "sha",
            "pipeline_id",
            "job_id",
            "user_login",
        ]
    }

    fn subject(&self, _issuer: &str, claims: &Map<String, Value>) -> String {
        format!(
            "gitlab:{}:{}:{}",
            claim(claims, "project_path").unwrap_or("-"),
            claim(claims, "ref_type").unwrap_or("-"),
            claim(claims, "ref").unwrap_or("-")
        )
    }
}

/// A read-write rule: one project, and only pipelines of its protected branches.
fn check_write(conditions: &[Condition]) -> Result<(), String> {
    let one_project = conditions.iter().any(|c| {
        let one: fn(&str) -> bool = match c.claim.as_str() {
            "project_path" => |p| {
                !p.contains('*')
                    && p.rsplit_once('/')
                        .is_some_and(|(group, name)| !group.is_empty() && !name.is_empty())
            },
            "project_id" => |p| !p.contains('*'),
            _ => return false,
        };
        c.patterns.iter().all(|p| one(p))
    });
    if !one_project {
        return Err(
            "read-write must name one project exactly: with a group-wide pin, any member of the group who may create a project (GitLab's default) could create one, protect its main branch and write any entry; write \"project_path\": \"GROUP/PROJECT\" (or \"project_id\"), one rule or one exact value per project, and keep namespace pins for read-only rules"
                .into(),
        );
    }
    let only = |claim: &str, value: &str| {
        on(conditions, claim).is_some_and(|c| c.patterns.iter().all(|p| p == value))
    };
    if !only("ref_protected", "true") {
        return Err(
            "read-write needs \"ref_protected\": \"true\": ref is only a branch name, which a merge-request pipeline (a fork's too) can carry; only pipelines for protected branches and tags have ref_protected \"true\""
                .into(),
        );
    }
    if !only("ref_type", "branch") {
        return Err(
            "read-write needs \"ref_type\": \"branch\" beside \"ref_protected\": \"true\": ref_protected is \"true\" for protected tags too, and a tag can point at any commit, one never merged included"
                .into(),
        );
    }
    Ok(())
}

/// Whether some condition names a project or a group, in every one of its patterns.
fn pins_identity(conditions: &[Condition]) -> bool {
    conditions.iter().any(|c| {
        let pins: fn(&str) -> bool = match c.claim.as_str() {
            "project_path" => |p| literal_prefix(p).contains('/'),
            "namespace_path" | "project_id" | "namespace_id" => |p| !p.contains('*'),
            "sub" => |p| {
                literal_prefix(p)
                    .strip_prefix("project_path:")
                    .is_some_and(|rest| rest.contains('/'))
            },
            _ => return false,
        };
        c.patterns.iter().all(|p| pins(p))
    })
}
