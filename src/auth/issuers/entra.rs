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
//!   connection's identity (`oid`) like any other.

use serde_json::{Map, Value};

use super::{IssuerProfile, IssuerUrl, RuleFacts, claim, remaining};
use crate::auth::conditions::{Condition, on};

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
        Ok(())
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
