//! Microsoft Entra ID access tokens (entra-docs: access token claims, national clouds).
//!
//! - Issuers on every Entra authority host: the public cloud (`login.microsoftonline.com`, v2;
//!   `sts.windows.net`, v1, which US Government tenants also use), US Government
//!   (`login.microsoftonline.us`), China (`login.partner.microsoftonline.cn`, v2;
//!   `sts.chinacloudapi.cn`, v1; `login.chinacloudapi.cn`), the `login.windows.net` alias,
//!   External ID (`*.ciamlogin.com`, where people may sign themselves up) and B2C
//!   (`*.b2clogin.com`).
//! - **Identity.** Every account of a tenant (and, on External ID and B2C, anyone who signs up)
//!   can get a token for the cache's app registration, and a Global Administrator even when
//!   "assignment required" is on. So a rule needs an exact `tid` plus an exact `oid`, `groups`
//!   or `roles`.
//! - **Write access.** A token of an Azure Pipelines service connection says which service
//!   principal asks, not which branch is built or whether it is a pull-request build: that is
//!   the service connection's Branch control check in Azure DevOps, and a second, read-only
//!   connection for pull requests (docs/keyless.md). A read-write rule pins the write
//!   connection's identity: an exact `oid`, or an app role (`roles`) only it is assigned. A
//!   group (`groups`) alone is not enough: its members are managed outside the policy, by
//!   whoever may add members (a Global Administrator may add themselves).
//! - **Shapes.** Entra ID only issues GUIDs as tenant, object and application ids: the tenant
//!   in the issuer URL and every `tid`, `oid`, `appid` and `azp` value must have that shape
//!   (`TENANT_ID` left from the docs never matches a token, and nothing would say so).
//!   `groups`, `roles` and `wids` are lists in the token.

use serde_json::{Map, Value};

use super::{IssuerProfile, IssuerUrl, RuleFacts, claim, remaining};
use crate::auth::Access;
use crate::auth::conditions::{Condition, echo_text, on};

/// Exact authority hosts.
const HOSTS: [&str; 7] = [
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.partner.microsoftonline.cn",
    "login.chinacloudapi.cn",
    "login.windows.net",
    "sts.windows.net",
    "sts.chinacloudapi.cn",
];
/// Host suffixes of tenant-named authorities: External ID and B2C.
const HOST_SUFFIXES: [&str; 2] = [".ciamlogin.com", ".b2clogin.com"];
/// A GUID, for the forms refusals show.
const EXAMPLE_GUID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The claims that hold GUIDs, and where an operator finds the right one.
const GUID_CLAIMS: [(&str, &str); 4] = [
    (
        "tid",
        "your tenant id: az account show --query tenantId -o tsv",
    ),
    (
        "oid",
        "an object id: az ad sp show --id APPLICATION_ID --query id -o tsv for a service principal",
    ),
    (
        "appid",
        "an application (client) id: az ad app list --display-name NAME --query [].appId -o tsv",
    ),
    (
        "azp",
        "an application (client) id: az ad app list --display-name NAME --query [].appId -o tsv",
    ),
];

pub struct Entra;

impl IssuerProfile for Entra {
    fn kind(&self) -> &'static str {
        "entra"
    }

    fn name(&self) -> &'static str {
        "Entra ID"
    }

    fn canonical(&self, url: &IssuerUrl) -> Option<String> {
        let known = HOSTS.contains(&url.host.as_str())
            || HOST_SUFFIXES.iter().any(|s| url.host.ends_with(s));
        (known && url.scheme == "https").then(|| format!("https://{}{}", url.host, url.path))
    }

    fn check(&self, rule: &RuleFacts) -> Result<(), String> {
        check_shapes(rule)?;
        let exact = |claims: &[&str]| {
            rule.conditions
                .iter()
                .any(|c| claims.contains(&c.claim.as_str()) && c.is_exact())
        };
        if !exact(&["tid"]) {
            return Err(
                "an Entra ID rule needs an exact \"tid\" condition (your tenant id)".into(),
            );
        }
        if !exact(&["oid", "groups", "roles"]) {
            return Err(
                "an Entra ID rule needs an exact condition on oid, groups or roles: every account of the tenant (and a Global Administrator even with assignment required) can get a token for the cache's app registration"
                    .into(),
            );
        }
        if rule.access == Access::ReadWrite && !exact(&["oid", "roles"]) {
            return Err(format!(
                "read-write needs an exact \"oid\" (the write pipeline's service principal, e.g. \"oid\": \"{EXAMPLE_GUID}\") or \"roles\" (an app role only it is assigned): a group's members are managed outside this policy, and a Global Administrator may add themselves; keep \"groups\" for read-only rules"
            ));
        }
        Ok(())
    }

    fn list_claims(&self) -> &'static [&'static str] {
        &["groups", "roles", "wids", "amr"]
    }

    fn advise(&self, rule: &RuleFacts) -> Vec<String> {
        let mut advice = Vec::new();
        for condition in rule.conditions {
            if !GUID_CLAIMS
                .iter()
                .any(|(claim, _)| *claim == condition.claim)
            {
                continue;
            }
            for pattern in &condition.patterns {
                if pattern.bytes().any(|b| b.is_ascii_uppercase()) {
                    advice.push(format!(
                        "{} '{}' has upper-case letters: tokens carry ids in lower case and conditions compare exactly; write \"{}\"",
                        condition.claim,
                        echo_text(pattern),
                        echo_text(&pattern.to_ascii_lowercase())
                    ));
                }
            }
        }
        advice
    }

    fn explain(&self, rule: &RuleFacts) -> String {
        let conditions = rule.conditions;
        let mut parts = Vec::new();
        for (claim, label) in [
            ("oid", "object "),
            ("groups", "members of group "),
            ("roles", "holders of app role "),
        ] {
            if let Some(c) = on(conditions, claim) {
                parts.push(format!("{label}{}", c.describe()));
            }
        }
        let tenant = on(conditions, "tid")
            .map(Condition::describe)
            .unwrap_or_default();
        format!(
            "{} of tenant {tenant}{}",
            parts.join(", "),
            remaining(conditions, &["oid", "groups", "roles", "tid"])
        )
    }

    /// The identity (object id) and the application it signed in with.
    fn build_claims(&self) -> &'static [&'static str] {
        &["oid", "appid", "azp"]
    }

    fn subject(&self, issuer: &str, claims: &Map<String, Value>) -> String {
        let Some(oid) = claim(claims, "oid") else {
            return super::host_and_sub(issuer, claims);
        };
        let name = ["upn", "preferred_username", "unique_name", "appid", "azp"]
            .iter()
            .find_map(|n| claim(claims, n))
            .unwrap_or("-");
        format!("entra:{name}:{oid}")
    }

    /// The v1 issuers (`https://sts.windows.net/{tid}/`, `https://sts.chinacloudapi.cn/{tid}/`)
    /// publish their discovery document under their cloud's login host.
    fn discovery(&self, issuer: &str) -> String {
        for (v1, login) in [
            (
                "https://sts.windows.net/",
                "https://login.microsoftonline.com",
            ),
            (
                "https://sts.chinacloudapi.cn/",
                "https://login.partner.microsoftonline.cn",
            ),
        ] {
            if let Some(tenant) = issuer.strip_prefix(v1) {
                let tenant = tenant.trim_end_matches('/');
                return format!("{login}/{tenant}/.well-known/openid-configuration");
            }
        }
        format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        )
    }
}

/// The tenant in the issuer URL and every `tid`, `oid`, `appid`, `azp` value are GUIDs, and
/// `tid` names the issuer's tenant.
fn check_shapes(rule: &RuleFacts) -> Result<(), String> {
    let tenant = issuer_tenant(rule.issuer)?;
    for condition in rule.conditions {
        let Some((claim, hint)) = GUID_CLAIMS.iter().find(|(c, _)| *c == condition.claim) else {
            continue;
        };
        if let Some(bad) = condition.patterns.iter().find(|p| !is_guid(p)) {
            return Err(format!(
                "{claim} '{}' is not a GUID, and Entra ID issues nothing else there ({hint}): write e.g. \"{claim}\": \"{EXAMPLE_GUID}\"",
                echo_text(bad)
            ));
        }
    }
    // An issuer's tokens carry its own tenant in `tid`: any other value could never match.
    if let (Some(tenant), Some(tid)) = (tenant, on(rule.conditions, "tid"))
        && let Some(other) = tid
            .patterns
            .iter()
            .find(|p| !p.eq_ignore_ascii_case(&tenant))
    {
        return Err(format!(
            "tid '{}' is not the tenant of issuer {}, whose tokens all carry tid {tenant}: write \"tid\": \"{tenant}\", or the issuer of that tenant",
            echo_text(other),
            echo_text(rule.issuer)
        ));
    }
    Ok(())
}

/// The tenant id in an Entra ID issuer URL (`None` when the issuer is no URL, which the policy
/// refuses elsewhere), or why the issuer names no tenant id.
fn issuer_tenant(issuer: &str) -> Result<Option<String>, String> {
    if let Ok(url) = IssuerUrl::parse(issuer) {
        // B2C may spell its issuer `https://HOST/tfp/TENANT_ID/POLICY/v2.0/`.
        let path = url.path.trim_start_matches('/');
        let (prefix, path) = match path.strip_prefix("tfp/") {
            Some(rest) => ("tfp/", rest),
            None => ("", path),
        };
        let (tenant, rest) = path.split_once('/').unwrap_or((path, ""));
        if !is_guid(tenant) {
            // The issuer as it should be: the same, with a tenant id in the tenant's place.
            let rest = if tenant.is_empty() { "v2.0" } else { rest };
            let example = format!("{}/{prefix}{EXAMPLE_GUID}/{rest}", url.origin());
            return Err(format!(
                "the tenant '{}' in issuer {} is not a tenant id (Entra ID issuers name the tenant by its GUID: az account show --query tenantId -o tsv): write e.g. \"{}\"",
                echo_text(tenant),
                echo_text(issuer),
                echo_text(&example)
            ));
        }
        return Ok(Some(tenant.to_owned()));
    }
    Ok(None)
}

/// `8-4-4-4-12` hexadecimal digits, the shape of every Entra ID id.
pub fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_have_their_shape() {
        assert!(is_guid("72f988bf-86f1-41af-91ab-2d7cd011db47"));
        assert!(is_guid("72F988BF-86F1-41AF-91AB-2D7CD011DB47"));
        for not in [
            "TENANT_ID",
            "o-1",
            "",
            "72f988bf-86f1-41af-91ab-2d7cd011db4",
            "72f988bf-86f1-41af-91ab-2d7cd011db47-",
            "72f988bf86f141af91ab2d7cd011db47",
            "72f988bg-86f1-41af-91ab-2d7cd011db47",
            "72f988bf-86f1-41af-91ab-*",
        ] {
            assert!(!is_guid(not), "{not}");
        }
    }
}
