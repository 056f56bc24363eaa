//! GitHub Actions OIDC ID tokens (github/docs, "OpenID Connect reference").
//!
//! - Issuer `https://token.actions.githubusercontent.com`, an enterprise's
//!   `https://token.actions.githubusercontent.com/SLUG`, GitHub Enterprise Cloud with data
//!   residency's `https://token.actions.SUBDOMAIN.ghe.com`, or GitHub Enterprise Server's
//!   `https://HOST/_services/token` (or any URL with `"kind": "github"`).
//! - **Identity.** Any GitHub user can mint a token with any audience from a repository of
//!   their own, so a rule must name an owner: `repository` (`acme/web`, `acme/*`),
//!   `repository_owner`, `repository_id`, `repository_owner_id`, or a `sub` that *begins* with
//!   the repository or owner component (`repo:acme/web:...`, the immutable
//!   `repo:acme@123/web@456:...`, `repository_owner:acme:...`, `repository_owner_id:123:...`).
//!   The admin of any repository chooses its `sub` template (`include_claim_keys`), so a `sub`
//!   such as `environment:production`, `ref:refs/heads/*` or `pull_request` is produced by every
//!   repository that picks that template. `job_workflow_ref` names the reusable workflow being
//!   called, not the caller, and `workflow_ref` is not a pin either.
//! - **Write access.** Owner-wide pins are for read-only rules: every member of an organization
//!   who may create a repository (GitHub's default) can create one, push a workflow to its
//!   `main` and get what an owner-wide read-write rule grants. So a read-write rule names one
//!   repository exactly in each value (`repository`, `repository_id`, or a `sub` beginning
//!   `repo:OWNER/REPO:`). `pull_request_target`, `issue_comment` and `workflow_run` runs carry
//!   the default branch's `ref` and run with the base repository's rights, yet anyone who opens
//!   a pull request (a fork's included) or writes a comment starts them, and they are exactly
//!   the workflows that end up building pull-request code. Only `event_name` tells them apart,
//!   so a read-write rule needs an `event_name` limited to [`WRITE_EVENTS`], and always a `ref`
//!   on `refs/heads/...` naming the protected branches, a `*` only right after a `/`
//!   (`refs/heads/release/*`, not `refs/heads/m*`). An `environment` may be added, never
//!   instead: a run from any branch can name an environment unless the environment's
//!   deployment-branch rules forbid it, and the cache cannot see those rules.

use serde_json::{Map, Value};

use super::{IssuerProfile, IssuerUrl, RuleFacts, claim, remaining};
use crate::auth::Access;
use crate::auth::conditions::{Condition, literal_prefix, on};

const PUBLIC_HOST: &str = "token.actions.githubusercontent.com";
/// GitHub Enterprise Cloud with data residency: `token.actions.SUBDOMAIN.ghe.com`.
const RESIDENCY_PREFIX: &str = "token.actions.";
const RESIDENCY_SUFFIX: &str = ".ghe.com";
/// GitHub Enterprise Server's issuer path.
const SERVER_PATH: &str = "/_services/token";

/// The events whose runs build only the repository's own branch code:
/// - `push`: the pushed commit, on the branch the rule's `ref` names;
/// - `schedule`: the default branch's latest commit;
/// - `workflow_dispatch`: started by someone with write access, on the ref they choose, which
///   the rule's `ref` confines to the protected branch.
///
/// Refused, with the reason: `merge_group` builds pull requests before they land, on a
/// temporary `gh-readonly-queue/...` ref, and a queue does not require reviews by itself;
/// `release` runs on a tag, which may point at any commit someone with write access pushed,
/// and nothing in the token says whether the tag is protected; `repository_dispatch` is started
/// through the API by any token with write access, with a payload its workflows commonly use to
/// pick what to build, and nothing in the ID token says what was built.
pub const WRITE_EVENTS: [&str; 3] = ["push", "schedule", "workflow_dispatch"];

pub struct GitHub;

impl IssuerProfile for GitHub {
    fn kind(&self) -> &'static str {
        "github"
    }

    fn name(&self) -> &'static str {
        "GitHub"
    }

    fn canonical(&self, url: &IssuerUrl) -> Option<String> {
        if url.host == PUBLIC_HOST || is_residency_host(&url.host) {
            // The public issuer has no path; an enterprise's adds its slug.
            return Some(format!(
                "https://{}{}",
                url.host,
                url.path.trim_end_matches('/')
            ));
        }
        if url.path.trim_end_matches('/') == SERVER_PATH {
            return Some(format!("{}{SERVER_PATH}", url.origin()));
        }
        None
    }

    fn check(&self, rule: &RuleFacts) -> Result<(), String> {
        if !pins_identity(rule.conditions) {
            return Err(format!(
                "would trust every GitHub repository: add a condition on repository, repository_owner, repository_id, repository_owner_id or sub that names the owner, with no wildcard before it (e.g. \"repository\": \"acme/web\" or \"acme/*\"; a sub must begin with repo:OWNER/ or repository_owner:OWNER:, since any repository's admin chooses its sub template); a token's audience proves nothing, any workflow can ask for any audience ({})",
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
        let events = match on(conditions, "event_name") {
            None => "runs of any event".to_string(),
            Some(c) => {
                let names: Vec<String> = c.patterns.iter().map(|e| event_words(e)).collect();
                names.join(" and ")
            }
        };
        let mut words = events;
        if let Some(r) = on(conditions, "ref") {
            words.push_str(&format!(" to {}", r.describe()));
        }
        if let Some(e) = on(conditions, "environment") {
            words.push_str(&format!(" in environment {}", e.describe()));
        }
        words.push_str(&format!(" of {}", identity_words(conditions)));
        words.push_str(&remaining(
            conditions,
            &[
                "event_name",
                "ref",
                "environment",
                "repository",
                "repository_owner",
                "repository_id",
                "repository_owner_id",
            ],
        ));
        words
    }

    /// Which run of which workflow, at which commit, started by whom (GitHub's token claims).
    fn build_claims(&self) -> &'static [&'static str] {
        &[
            "repository",
            "ref",
            "sha",
            "run_id",
            "run_attempt",
            "workflow_ref",
            "event_name",
            "actor",
        ]
    }

    fn subject(&self, _issuer: &str, claims: &Map<String, Value>) -> String {
        format!(
            "github:{}:{}",
            claim(claims, "repository").unwrap_or("-"),
            claim(claims, "ref").or(claim(claims, "sub")).unwrap_or("-")
        )
    }
}

/// Whether some condition names a repository or an owner, in every one of its patterns.
fn pins_identity(conditions: &[Condition]) -> bool {
    conditions.iter().any(|c| {
        let pins: fn(&str) -> bool = match c.claim.as_str() {
            "repository" => |p| literal_prefix(p).contains('/'),
            "repository_owner" | "repository_id" | "repository_owner_id" => |p| !p.contains('*'),
            "sub" => sub_names_owner,
            _ => return false,
        };
        c.patterns.iter().all(|p| pins(p))
    })
}

/// Whether a `sub` pattern begins with a repository or owner component whose owner is literal:
/// `repo:OWNER/...`, `repo:OWNER@ID/...`, `repository:OWNER/...`, `repository_owner:OWNER:...`,
/// `repository_owner_id:ID:...`, `repository_id:ID:...`.
fn sub_names_owner(pattern: &str) -> bool {
    let literal = literal_prefix(pattern);
    let exact = !pattern.contains('*');
    if let Some(rest) = literal
        .strip_prefix("repo:")
        .or_else(|| literal.strip_prefix("repository:"))
    {
        // The owner must end within the literal part: `repo:acme/`, not `repo:acme*`.
        return rest
            .split_once('/')
            .is_some_and(|(owner, _)| !owner.is_empty() && !owner.contains(':'));
    }
    for component in [
        "repository_owner:",
        "repository_owner_id:",
        "repository_id:",
    ] {
        if let Some(rest) = literal.strip_prefix(component) {
            return match rest.split_once(':') {
                Some((value, _)) => !value.is_empty(),
                None => exact && !rest.is_empty(),
            };
        }
    }
    false
}

/// Whether `host` is a data-residency issuer: `token.actions.SUBDOMAIN.ghe.com`, one label.
fn is_residency_host(host: &str) -> bool {
    host.strip_prefix(RESIDENCY_PREFIX)
        .and_then(|rest| rest.strip_suffix(RESIDENCY_SUFFIX))
        .is_some_and(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Whether some condition names exactly one repository in every one of its patterns: an exact
/// `repository` (`acme/web`), an exact `repository_id`, or a `sub` that begins with an exact
/// repository component (`repo:acme/web:`, `repo:acme@12/web@34:`, `repository:acme/web:`,
/// `repository_id:34:`).
fn pins_one_repository(conditions: &[Condition]) -> bool {
    conditions.iter().any(|c| {
        let one: fn(&str) -> bool = match c.claim.as_str() {
            "repository" => one_repository,
            "repository_id" => |p| !p.contains('*'),
            "sub" => sub_names_one_repository,
            _ => return false,
        };
        c.patterns.iter().all(|p| one(p))
    })
}

/// `OWNER/REPO`, exactly: no wildcard, both parts present.
fn one_repository(pattern: &str) -> bool {
    !pattern.contains('*')
        && pattern.split_once('/').is_some_and(|(owner, name)| {
            !owner.is_empty() && !name.is_empty() && !name.contains('/')
        })
}

/// Whether a `sub` pattern begins with one exact repository, its component closed by a `:`
/// before any wildcard.
fn sub_names_one_repository(pattern: &str) -> bool {
    let literal = literal_prefix(pattern);
    if let Some(rest) = literal
        .strip_prefix("repo:")
        .or_else(|| literal.strip_prefix("repository:"))
    {
        return rest
            .split_once(':')
            .is_some_and(|(repository, _)| one_repository(repository));
    }
    literal
        .strip_prefix("repository_id:")
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(id, _)| !id.is_empty())
}

/// A branch pattern a read-write rule may name: `refs/heads/` and a branch whose every `*`
/// directly follows a `/` (`refs/heads/main`, `refs/heads/release/*`; not `refs/heads/m*`,
/// which also matches `my-experiment`, nor `refs/heads/*`).
fn is_branch_pattern(pattern: &str) -> bool {
    let Some(branch) = pattern.strip_prefix("refs/heads/") else {
        return false;
    };
    let bytes = branch.as_bytes();
    !branch.is_empty()
        && bytes
            .iter()
            .enumerate()
            .all(|(at, &b)| b != b'*' || (at > 0 && bytes[at - 1] == b'/'))
}

/// The owner a rule names, for the form a refusal shows (`acme`, else `OWNER`).
fn owner_of(conditions: &[Condition]) -> String {
    let from = |claim: &str, cut: fn(&str) -> Option<&str>| {
        on(conditions, claim)
            .and_then(|c| c.patterns.first())
            .and_then(|p| cut(p))
            .filter(|owner| !owner.is_empty() && !owner.contains('*'))
            .map(crate::auth::conditions::echo_text)
    };
    from("repository_owner", |p| Some(p))
        .or_else(|| from("repository", |p| p.split_once('/').map(|(o, _)| o)))
        .or_else(|| {
            from("sub", |p| {
                p.strip_prefix("repo:")
                    .and_then(|rest| rest.split_once('/'))
                    .map(|(o, _)| o)
            })
        })
        .unwrap_or_else(|| "OWNER".into())
}

/// A read-write rule: one repository, and only its own branch builds.
fn check_write(conditions: &[Condition]) -> Result<(), String> {
    if !pins_one_repository(conditions) {
        let owner = owner_of(conditions);
        return Err(format!(
            "read-write must name one repository exactly: with an owner-wide pin, any member of the organization who may create a repository (GitHub's default) could create one, push a workflow to its main branch and write any entry; write \"repository\": \"{owner}/REPO\" (or \"repository_id\", or a sub beginning \"repo:{owner}/REPO:\"), one rule or one exact value per repository, and keep owner-wide pins for read-only rules"
        ));
    }
    let allowed = WRITE_EVENTS.join(", ");
    let why = "runs triggered by pull_request_target, issue_comment or workflow_run carry the default branch's ref, yet anyone who opens a pull request (a fork's too) or a comment starts them and they build pull-request code (CVE-2025-36852); give pull requests a read-only rule";
    let Some(events) = on(conditions, "event_name") else {
        return Err(format!(
            "read-write needs an \"event_name\" condition limited to {allowed}, e.g. \"event_name\": \"push\": {why}"
        ));
    };
    if let Some(bad) = events
        .patterns
        .iter()
        .find(|e| !WRITE_EVENTS.contains(&e.as_str()))
    {
        return Err(format!(
            "read-write with event_name '{}': allow only {allowed} (exact names), e.g. \"event_name\": \"push\": {why}",
            crate::auth::conditions::echo_text(bad)
        ));
    }
    let Some(reference) = on(conditions, "ref") else {
        return Err(
            "read-write needs a \"ref\" condition naming the protected branches, e.g. \"ref\": \"refs/heads/main\": a push to any other branch, or of a tag, is not reviewed code; an \"environment\" may be added, never instead (a run from any branch can name an environment unless its deployment-branch rules forbid it, and this cache cannot see them)"
                .into(),
        );
    };
    if let Some(bad) = reference.patterns.iter().find(|p| !is_branch_pattern(p)) {
        return Err(format!(
            "read-write with \"ref\": \"{}\": name branches under refs/heads/, a '*' only directly after a '/', e.g. \"refs/heads/main\" or \"refs/heads/release/*\" (\"refs/heads/m*\" would also match my-experiment; a tag or another ref is not reviewed code)",
            crate::auth::conditions::echo_text(bad)
        ));
    }
    Ok(())
}

fn event_words(event: &str) -> String {
    match event {
        "push" => "pushes".into(),
        "schedule" => "scheduled runs".into(),
        "workflow_dispatch" => "manual runs (workflow_dispatch)".into(),
        other => format!("{other} runs"),
    }
}

/// `acme/web`, `repositories of acme`, ...
fn identity_words(conditions: &[Condition]) -> String {
    let mut parts = Vec::new();
    if let Some(c) = on(conditions, "repository") {
        parts.push(c.describe());
    }
    if let Some(c) = on(conditions, "repository_id") {
        parts.push(format!("repository id {}", c.describe()));
    }
    if let Some(c) = on(conditions, "repository_owner") {
        parts.push(format!("repositories of {}", c.describe()));
    }
    if let Some(c) = on(conditions, "repository_owner_id") {
        parts.push(format!("repositories of owner id {}", c.describe()));
    }
    if parts.is_empty() {
        if let Some(c) = on(conditions, "sub") {
            parts.push(format!("sub {}", c.describe()));
        } else {
            parts.push("any repository".into());
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subs_pin_only_when_they_begin_with_an_owner() {
        for pinned in [
            "repo:acme/web:ref:refs/heads/main",
            "repo:acme/*",
            "repo:acme@1234/web@5678:*",
            "repository_owner:acme:*",
            "repository_owner_id:1234:*",
            "repository_owner:acme",
            "repository_id:5678:environment:prod",
            "repository:acme/web:ref:refs/heads/main",
        ] {
            assert!(sub_names_owner(pinned), "{pinned}");
        }
        for loose in [
            "environment:production",
            "ref:refs/heads/*",
            "pull_request",
            "job_workflow_ref:acme/shared/.github/workflows/build.yml@refs/heads/main",
            "repo:*",
            "repo:acme*",
            "repo:*/web:*",
            "repository_owner:*",
            "repository_owner:acme*",
            "context:repo:acme/web",
        ] {
            assert!(!sub_names_owner(loose), "{loose}");
        }
    }

    #[test]
    fn write_pins_name_one_repository() {
        for one in [
            "repo:acme/web:ref:refs/heads/main",
            "repo:acme/web:*",
            "repo:acme@1234/web@5678:*",
            "repository:acme/web:*",
            "repository_id:5678:*",
        ] {
            assert!(sub_names_one_repository(one), "{one}");
        }
        for many in [
            "repo:acme/*",
            "repo:acme/web*",
            "repo:acme/web",
            "repository_owner:acme:*",
            "repository_owner_id:1234:*",
            "repo:*/web:*",
            "environment:production",
        ] {
            assert!(!sub_names_one_repository(many), "{many}");
        }
        assert!(one_repository("acme/web"));
        for many in ["acme/*", "acme/web*", "acme", "acme/", "/web", "*/web"] {
            assert!(!one_repository(many), "{many}");
        }
    }

    #[test]
    fn branch_wildcards_only_follow_a_slash() {
        for branch in [
            "refs/heads/main",
            "refs/heads/release/*",
            "refs/heads/release/*/hotfix/*",
        ] {
            assert!(is_branch_pattern(branch), "{branch}");
        }
        for not in [
            "refs/heads/m*",
            "refs/heads/*",
            "refs/heads/",
            "refs/heads/release*",
            "refs/heads/release/**",
            "refs/tags/v1",
            "refs/*/main",
            "*",
            "main",
        ] {
            assert!(!is_branch_pattern(not), "{not}");
        }
    }

    #[test]
    fn data_residency_hosts_are_one_label_under_ghe_com() {
        assert!(is_residency_host("token.actions.acme.ghe.com"));
        assert!(is_residency_host("token.actions.acme-eu.ghe.com"));
        for not in [
            "token.actions.ghe.com",
            "token.actions.a.b.ghe.com",
            "actions.acme.ghe.com",
            "token.actions.acme.ghe.com.evil.example",
        ] {
            assert!(!is_residency_host(not), "{not}");
        }
    }
}
