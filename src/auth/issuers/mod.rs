//! What is true of each identity issuer, in one place per issuer: its hosts and the spelling of
//! its `iss`, the claims that pin an identity, the claims that pin write access to builds of
//! protected branches, the subject format of exchanged tokens, and a rule in words.
//!
//! The policy engine ([`super::policy`]) knows none of it: it asks [`classify`] which profile an
//! issuer has, and the profile checks the rule. Adding a CI system is one file with one
//! [`IssuerProfile`], listed in [`PROFILES`].
//!
//! An issuer is recognised by its public host (GitHub Actions, with an enterprise's path or on a
//! data-residency `ghe.com` subdomain, gitlab.com, every Microsoft Entra authority host), or by
//! the `kind` a rule declares for a private instance (GitHub Enterprise Server, a self-managed
//! GitLab). Any other issuer gets the generic profile, which checks only that a rule pins
//! something.

mod entra;
mod github;
mod gitlab;
mod other;

use serde_json::{Map, Value};

use super::Access;
use super::conditions::{Condition, echo_text};

pub use entra::Entra;
pub use github::GitHub;
pub use gitlab::GitLab;
pub use other::Other;

/// The issuers this server knows, tried in order. [`Other`] is the fallback, not listed.
pub static PROFILES: [&dyn IssuerProfile; 3] = [&GitHub, &GitLab, &Entra];

/// What a profile sees of a rule.
pub struct RuleFacts<'a> {
    pub issuer: &'a str,
    pub conditions: &'a [Condition],
    pub access: Access,
}

/// One issuer's knowledge.
pub trait IssuerProfile: Sync + Send {
    /// What a rule's `"kind"` says for a private instance: `github`, `gitlab`, `entra`.
    fn kind(&self) -> &'static str;

    /// The issuer's name in messages: `GitHub`, `GitLab`, `Entra ID`.
    fn name(&self) -> &'static str;

    /// When `url` is one of this issuer's public issuers, in whatever spelling, the spelling
    /// its tokens carry in `iss`; otherwise `None`.
    fn canonical(&self, url: &IssuerUrl) -> Option<String>;

    /// Refuses a rule that would trust more identities than it names, or give write access to
    /// builds the issuer's tokens cannot tell are of a protected branch. One line, without the
    /// rule's name (the caller adds it).
    fn check(&self, rule: &RuleFacts) -> Result<(), String>;

    /// Things worth an operator's second look that are not wrong for sure (a warning at startup
    /// and in `handler check`), one line each, without the rule's name.
    fn advise(&self, _rule: &RuleFacts) -> Vec<String> {
        Vec::new()
    }

    /// The claims this issuer sends as lists of strings (Entra ID `groups`, `roles`): a
    /// condition on one of them holds when an element matches. Every other claim must be a
    /// string for a condition on it to hold.
    fn list_claims(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whom the rule trusts, in words: `pushes to refs/heads/main of acme/web`.
    fn explain(&self, rule: &RuleFacts) -> String;

    /// The subject of an exchanged token: where the identity comes from
    /// (`github:acme/web:refs/heads/main`).
    fn subject(&self, issuer: &str, claims: &Map<String, Value>) -> String;

    /// The identity claims an exchanged token carries (and every entry it writes records) to
    /// say which build it was: enough to find a run in the CI system, short enough to keep the
    /// token small. Names only; absent claims are left out.
    fn build_claims(&self) -> &'static [&'static str] {
        &[]
    }

    /// Where the issuer's OIDC discovery document is.
    fn discovery(&self, issuer: &str) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        )
    }
}

/// The profile of a rule's issuer: recognised from the URL, or named by the rule's `kind`.
/// Refuses a known issuer spelled otherwise than its tokens spell it (it would never match), and
/// a `kind` that contradicts the URL.
pub fn classify(issuer: &str, kind: Option<&str>) -> Result<&'static dyn IssuerProfile, String> {
    let url = IssuerUrl::parse(issuer)?;
    for profile in PROFILES {
        if let Some(canonical) = profile.canonical(&url) {
            if canonical != issuer {
                return Err(format!(
                    "issuer '{}' is {}'s, spelled otherwise than its tokens' iss (which is compared exactly): write \"{canonical}\"",
                    echo_text(issuer),
                    profile.name()
                ));
            }
            if let Some(kind) = kind.filter(|k| *k != profile.kind()) {
                return Err(format!(
                    "kind '{}' does not fit issuer {issuer}, which is {}'s (kind \"{}\")",
                    echo_text(kind),
                    profile.name(),
                    profile.kind()
                ));
            }
            return Ok(profile);
        }
    }
    match kind {
        None => Ok(&Other),
        Some(kind) => PROFILES
            .iter()
            .copied()
            .find(|p| p.kind() == kind)
            .ok_or_else(|| {
                let kinds: Vec<&str> = PROFILES.iter().map(|p| p.kind()).collect();
                format!(
                    "kind '{}' is not one of {} (leave it out for any other issuer)",
                    echo_text(kind),
                    kinds.join(", ")
                )
            }),
    }
}

/// An issuer URL taken apart: https (plain http only to this machine, for tests), no query or
/// fragment. The host is kept as written and also normalised (lower case, no trailing dot), so
/// a profile can recognise its hosts in any spelling and say which spelling is right.
#[derive(Debug, Clone)]
pub struct IssuerUrl {
    pub scheme: String,
    /// `user@` before the host, if any (never part of a real issuer).
    pub userinfo: bool,
    /// Lower case, without a trailing dot.
    pub host: String,
    /// `None` for the scheme's default port (written or not).
    pub port: Option<u16>,
    /// Everything from the first `/` after the host, possibly empty.
    pub path: String,
}

impl IssuerUrl {
    pub fn parse(issuer: &str) -> Result<Self, String> {
        let problem = || {
            format!(
                "issuer '{}' must be an https URL without query or fragment, exactly as the tokens' iss (plain http only for 127.0.0.1 or localhost)",
                echo_text(issuer)
            )
        };
        if issuer.contains(['?', '#']) || issuer.contains(char::is_whitespace) {
            return Err(problem());
        }
        let (scheme, rest) = issuer.split_once("://").ok_or_else(problem)?;
        let scheme = scheme.to_ascii_lowercase();
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((_, host_port)) => (true, host_port),
            None => (false, authority),
        };
        let (host, port) = split_port(host_port).ok_or_else(problem)?;
        let host = host.to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host).to_owned();
        if host.is_empty() {
            return Err(problem());
        }
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return Err(problem()),
        };
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if scheme == "http" && !loopback {
            return Err(problem());
        }
        Ok(Self {
            scheme,
            userinfo,
            host,
            port: port.filter(|p| *p != default_port),
            path: path.to_owned(),
        })
    }

    /// `https://HOST[:PORT]` from the normalised parts.
    pub fn origin(&self) -> String {
        match self.port {
            Some(port) => format!("{}://{}:{port}", self.scheme, self.host),
            None => format!("{}://{}", self.scheme, self.host),
        }
    }
}

/// `host[:port]` (IPv6 in brackets) into the host and the port, if one is written.
fn split_port(host_port: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if host_port.starts_with('[') {
        let end = host_port.find(']')?;
        let (host, rest) = host_port.split_at(end + 1);
        (host, rest.strip_prefix(':'))
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    let port = match port {
        None => None,
        Some(port) => Some(port.parse::<u16>().ok()?),
    };
    Some((host, port))
}

/// A claim of `claims` as text.
pub(super) fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

/// `HOST:SUB`: the subject of a token from an issuer without a profile of its own.
pub(super) fn host_and_sub(issuer: &str, claims: &Map<String, Value>) -> String {
    let host = issuer
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("-");
    format!("{host}:{}", claim(claims, "sub").unwrap_or("-"))
}

/// The conditions a profile did not put into words: `with claim X`.
pub(super) fn remaining(conditions: &[Condition], described: &[&str]) -> String {
    conditions
        .iter()
        .filter(|c| !described.contains(&c.claim.as_str()))
        .map(|c| format!(" with {} {}", c.claim, c.describe()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_issuers_are_recognised_and_misspellings_refused() {
        let github = "https://token.actions.githubusercontent.com";
        assert_eq!(classify(github, None).unwrap().kind(), "github");
        assert_eq!(
            classify(&format!("{github}/acme-enterprise"), None)
                .unwrap()
                .kind(),
            "github"
        );
        assert_eq!(
            classify("https://token.actions.acme.ghe.com", None)
                .unwrap()
                .kind(),
            "github"
        );
        assert_eq!(
            classify("https://gitlab.com", None).unwrap().kind(),
            "gitlab"
        );
        for entra in [
            "https://login.microsoftonline.com/TID/v2.0",
            "https://sts.windows.net/TID/",
            "https://login.microsoftonline.us/TID/v2.0",
            "https://login.partner.microsoftonline.cn/TID/v2.0",
            "https://sts.chinacloudapi.cn/TID/",
            "https://login.windows.net/TID/v2.0",
            "https://contoso.ciamlogin.com/TID/v2.0",
            "https://contoso.b2clogin.com/TID/v2.0/",
        ] {
            assert_eq!(classify(entra, None).unwrap().kind(), "entra", "{entra}");
        }
        for (spelling, canonical) in [
            (
                "https://TOKEN.actions.githubusercontent.com",
                "https://token.actions.githubusercontent.com",
            ),
            (
                "https://token.actions.githubusercontent.com:443",
                "https://token.actions.githubusercontent.com",
            ),
            (
                "https://token.actions.githubusercontent.com.",
                "https://token.actions.githubusercontent.com",
            ),
            (
                "https://token.actions.githubusercontent.com/",
                "https://token.actions.githubusercontent.com",
            ),
            (
                "https://user@token.actions.githubusercontent.com",
                "https://token.actions.githubusercontent.com",
            ),
            (
                "https://token.actions.ACME.ghe.com/",
                "https://token.actions.acme.ghe.com",
            ),
            ("https://GitLab.com", "https://gitlab.com"),
            ("https://gitlab.com/", "https://gitlab.com"),
            (
                "https://Login.MicrosoftOnline.com/TID/v2.0",
                "https://login.microsoftonline.com/TID/v2.0",
            ),
            (
                "https://sts.windows.net:443/TID/",
                "https://sts.windows.net/TID/",
            ),
        ] {
            let err = classify(spelling, None)
                .err()
                .unwrap_or_else(|| panic!("{spelling}"));
            assert!(err.contains(&format!("write \"{canonical}\"")), "{err}");
        }
        assert_eq!(
            classify("https://ghes.acme.example/_services/token", None)
                .unwrap()
                .kind(),
            "github"
        );
        assert_eq!(
            classify("https://git.acme.example", Some("gitlab"))
                .unwrap()
                .kind(),
            "gitlab"
        );
        assert_eq!(
            classify("https://ci.example.com", None).unwrap().kind(),
            "other"
        );
        assert!(
            classify("https://gitlab.com", Some("github"))
                .err()
                .unwrap()
                .contains("does not fit")
        );
        assert!(
            classify("https://ci.example.com", Some("circleci"))
                .err()
                .unwrap()
                .contains("not one of github, gitlab, entra")
        );
        assert!(classify("http://token.actions.githubusercontent.com", None).is_err());
        assert!(classify("http://127.0.0.1:8080/issuer", None).is_ok());
    }

    #[test]
    fn discovery_documents_are_where_each_issuer_publishes_them() {
        let discovery = |issuer: &str| classify(issuer, None).unwrap().discovery(issuer);
        assert_eq!(
            discovery("https://token.actions.githubusercontent.com"),
            "https://token.actions.githubusercontent.com/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery("https://login.microsoftonline.com/t1/v2.0"),
            "https://login.microsoftonline.com/t1/v2.0/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery("https://sts.windows.net/t1/"),
            "https://login.microsoftonline.com/t1/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery("https://sts.chinacloudapi.cn/t1/"),
            "https://login.partner.microsoftonline.cn/t1/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery("https://gitlab.com"),
            "https://gitlab.com/.well-known/openid-configuration"
        );
    }
}
