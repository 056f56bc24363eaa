//! Cache keys: which namespace an entry lives in and its hash.
//!
//! Everything that comes from the URL is validated here, before it can reach a storage backend,
//! so a backend can build file paths or blob names from a key without further checks.

use std::fmt;

/// Longest hash accepted. Nx sends a decimal `u64` (at most 20 digits); older releases sent longer
/// hex or decimal digests, so the bound is generous but still keeps names short for storage.
pub const MAX_HASH_LEN: usize = 128;

/// Longest team name accepted (a DNS label's limit, which also keeps blob prefixes short).
pub const MAX_TEAM_LEN: usize = 63;

/// Why a path segment was refused; the message is shown to the client in a 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("malformed cache hash: expected 1 to {MAX_HASH_LEN} ASCII letters or digits")]
    Hash,
    #[error(
        "malformed team name: expected 1 to {MAX_TEAM_LEN} lowercase letters, digits or '-', starting with a letter or digit"
    )]
    Team,
}

/// A validated team name: `[a-z0-9][a-z0-9-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TeamName(String);

impl TeamName {
    pub fn parse(raw: &str) -> Result<Self, KeyError> {
        let bytes = raw.as_bytes();
        let valid_char = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
        let ok = !bytes.is_empty()
            && bytes.len() <= MAX_TEAM_LEN
            && bytes[0] != b'-'
            && bytes.iter().all(valid_char);
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(KeyError::Team)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TeamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated cache hash: 1 to [`MAX_HASH_LEN`] ASCII alphanumerics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(String);

impl Hash {
    pub fn parse(raw: &str) -> Result<Self, KeyError> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_HASH_LEN
            && raw.bytes().all(|b| b.is_ascii_alphanumeric());
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(KeyError::Hash)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where an entry lives: the org-wide cache, or one team's private cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Namespace {
    Org,
    Team(TeamName),
}

impl Namespace {
    /// Where the namespace's entries live, relative to the store's root: `org` or
    /// `teams/{team}` (also how `handler entries` names it).
    pub fn folder(&self) -> String {
        match self {
            Namespace::Org => "org".into(),
            Namespace::Team(team) => format!("teams/{team}"),
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Namespace::Org => f.write_str("org"),
            Namespace::Team(team) => write!(f, "team:{team}"),
        }
    }
}

/// The client API an entry was stored through. Each client's entries have names of their own
/// (see [`CacheKey::object_name`]): a request through one API never reads an entry of the other,
/// whose bytes it could not use (a Turborepo hash of 16 digits is also a valid Nx hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Client {
    Nx,
    Turbo,
}

impl Client {
    pub const ALL: [Client; 2] = [Client::Nx, Client::Turbo];

    pub fn as_str(self) -> &'static str {
        match self {
            Client::Nx => "nx",
            Client::Turbo => "turbo",
        }
    }

    /// Where this client's namespaces live, relative to the store's root: at the root for Nx
    /// (whose entries were the first), under `turbo/` for Turborepo.
    pub fn root(self) -> &'static str {
        match self {
            Client::Nx => "",
            Client::Turbo => "turbo/",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Client::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// The clients a listing covers: those named, once each and in order, or every client
    /// when none is named (`handler entries` and `purge` without `--nx` or `--turbo`).
    pub fn chosen(named: &[Client]) -> Vec<Client> {
        let mut clients = if named.is_empty() {
            Client::ALL.to_vec()
        } else {
            named.to_vec()
        };
        clients.sort();
        clients.dedup();
        clients
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One cache entry's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub client: Client,
    pub namespace: Namespace,
    pub hash: Hash,
}

impl CacheKey {
    /// An Nx key from raw URL segments (already percent-decoded by the router).
    pub fn parse(team: Option<&str>, hash: &str) -> Result<Self, KeyError> {
        Self::parse_for(Client::Nx, team, hash)
    }

    /// A key of `client` from a raw team name (`None`: the org-wide cache) and hash.
    pub fn parse_for(client: Client, team: Option<&str>, hash: &str) -> Result<Self, KeyError> {
        let namespace = match team {
            None => Namespace::Org,
            Some(team) => Namespace::Team(TeamName::parse(team)?),
        };
        Ok(Self {
            client,
            namespace,
            hash: Hash::parse(hash)?,
        })
    }

    /// The folder of the entry's namespace, relative to the store's root: `org`, `teams/{team}`,
    /// `turbo/org`, `turbo/teams/{team}`.
    pub fn folder(&self) -> String {
        folder_of(self.client, &self.namespace)
    }

    /// The entry's name relative to the store's root: `org/{hash}` or `teams/{team}/{hash}` for
    /// Nx, the same under `turbo/` for Turborepo.
    ///
    /// Both backends use it (file path under the data directory, blob name under the container's
    /// prefix), so one team's entries can never share a name with another's or with the org's,
    /// nor one client's with the other's.
    pub fn object_name(&self) -> String {
        format!("{}/{}", self.folder(), self.hash.as_str())
    }

    /// The key an object name (as [`CacheKey::object_name`] makes it) belongs to; `None` for a
    /// name that is no cache entry (a probe blob, a record file, a stray).
    pub fn from_object_name(name: &str) -> Option<Self> {
        let (client, rest) = match name.strip_prefix(Client::Turbo.root()) {
            Some(rest) => (Client::Turbo, rest),
            None => (Client::Nx, name),
        };
        let segments: Vec<&str> = rest.split('/').collect();
        match segments.as_slice() {
            ["org", hash] => Self::parse_for(client, None, hash).ok(),
            ["teams", team, hash] => Self::parse_for(client, Some(team), hash).ok(),
            _ => None,
        }
    }

    /// How the entry's namespace is named in logs, metrics and `handler usage`: `org` and
    /// `team:NAME` for Nx, `turbo:org` and `turbo:team:NAME` for Turborepo.
    pub fn label(&self) -> String {
        label_of(self.client, &self.namespace)
    }
}

/// The folder of `client`'s `namespace`: see [`CacheKey::folder`].
pub fn folder_of(client: Client, namespace: &Namespace) -> String {
    format!("{}{}", client.root(), namespace.folder())
}

/// The label of `client`'s `namespace`: see [`CacheKey::label`].
pub fn label_of(client: Client, namespace: &Namespace) -> String {
    match client {
        Client::Nx => namespace.to_string(),
        Client::Turbo => format!("turbo:{namespace}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nx_hashes_are_accepted() {
        for hash in [
            "4809188201876735999",
            "0",
            "a1B2c3",
            &"9".repeat(MAX_HASH_LEN),
        ] {
            assert!(Hash::parse(hash).is_ok(), "{hash}");
        }
    }

    #[test]
    fn malformed_hashes_are_refused() {
        let too_long = "1".repeat(MAX_HASH_LEN + 1);
        for hash in [
            "", "..", "../etc", "a/b", "a\\b", "12 3", "abc%2F", "é1", "1.2", "-1", &too_long,
        ] {
            assert_eq!(Hash::parse(hash), Err(KeyError::Hash), "{hash:?}");
        }
    }

    #[test]
    fn team_names_follow_dns_label_rules() {
        for team in ["web", "api-2", "0team", &"a".repeat(MAX_TEAM_LEN)] {
            assert!(TeamName::parse(team).is_ok(), "{team}");
        }
        let too_long = "a".repeat(MAX_TEAM_LEN + 1);
        for team in ["", "Web", "-web", "we_b", "..", "a/b", "wéb", &too_long] {
            assert_eq!(TeamName::parse(team), Err(KeyError::Team), "{team:?}");
        }
    }

    #[test]
    fn object_names_separate_namespaces() {
        let org = CacheKey::parse(None, "42").unwrap();
        let web = CacheKey::parse(Some("web"), "42").unwrap();
        let api = CacheKey::parse(Some("api"), "42").unwrap();
        assert_eq!(org.object_name(), "org/42");
        assert_eq!(web.object_name(), "teams/web/42");
        assert_ne!(web.object_name(), api.object_name());
    }

    /// A Turborepo hash is never an Nx entry's name, even when it is all digits.
    #[test]
    fn each_client_has_names_of_its_own() {
        let hash = "1234567890123456";
        for team in [None, Some("web"), Some("turbo")] {
            let nx = CacheKey::parse(team, hash).unwrap();
            let turbo = CacheKey::parse_for(Client::Turbo, team, hash).unwrap();
            assert_ne!(nx.object_name(), turbo.object_name());
            assert_ne!(nx.label(), turbo.label());
            for key in [nx, turbo] {
                assert_eq!(CacheKey::from_object_name(&key.object_name()), Some(key));
            }
        }
        let turbo = CacheKey::parse_for(Client::Turbo, Some("web"), "abc").unwrap();
        assert_eq!(turbo.object_name(), "turbo/teams/web/abc");
        assert_eq!(turbo.folder(), "turbo/teams/web");
        assert_eq!(turbo.label(), "turbo:team:web");
        // A team named `turbo` is an Nx namespace like any other.
        let team_turbo = CacheKey::parse(Some("turbo"), "1").unwrap();
        assert_eq!(team_turbo.object_name(), "teams/turbo/1");
        for stray in [
            ".nx-cache-probe",
            "org/1/2",
            "turbo/1",
            "turbo/turbo/org/1",
            "teams/Web/1",
            "org/1.77.record",
            "turbo/org/",
        ] {
            assert_eq!(CacheKey::from_object_name(stray), None, "{stray}");
        }
    }
}
