//! Azure Storage connection strings (`AZURE_STORAGE_CONNECTION_STRING`), as the Azure portal,
//! Azurite and the Nx Azure cache plugin write them.
//!
//! The official Rust SDK has no parser, so this is a small one. Supported forms:
//! - `DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k;EndpointSuffix=core.windows.net`
//! - `...;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;` (Azurite, custom endpoints)
//! - `UseDevelopmentStorage=true` (Azurite's well-known account on 127.0.0.1:10000)
//!
//! Connection strings that carry only a `SharedAccessSignature` are refused: without the account
//! key the handler cannot sign the short-lived per-blob URLs it hands to clients.

use std::fmt;

/// Azurite's well-known development account (public, documented by Microsoft).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development key (public, documented by Microsoft).
pub const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A parsed connection string: where the blob service is and the key that signs for it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub account: String,
    /// The account key, decoded from base64.
    pub key: Vec<u8>,
    /// The blob service endpoint, without a trailing slash.
    pub blob_endpoint: String,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("account", &self.account)
            .field("key", &"<redacted>")
            .field("blob_endpoint", &self.blob_endpoint)
            .finish()
    }
}

impl ConnectionString {
    /// Parses a connection string. Errors never include the key.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut protocol = None;
        let mut account = None;
        let mut key = None;
        let mut blob_endpoint = None;
        let mut suffix = None;
        let mut development = false;
        let mut proxy = None;
        let mut sas = false;
        for part in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{}' is not a Name=value pair", redact(part)))?;
            match name.trim() {
                "DefaultEndpointsProtocol" => protocol = Some(value.trim()),
                "AccountName" => account = Some(value.trim()),
                "AccountKey" => key = Some(value.trim()),
                "BlobEndpoint" => blob_endpoint = Some(value.trim()),
                "EndpointSuffix" => suffix = Some(value.trim()),
                "UseDevelopmentStorage" => development = value.trim().eq_ignore_ascii_case("true"),
                "DevelopmentStorageProxyUri" => proxy = Some(value.trim()),
                "SharedAccessSignature" => sas = true,
                // Endpoints of other services are irrelevant to a blob cache.
                "QueueEndpoint" | "TableEndpoint" | "FileEndpoint" => {}
                other => return Err(format!("unknown connection string field '{other}'")),
            }
        }
        if development {
            let base = proxy.unwrap_or("http://127.0.0.1:10000");
            return Ok(Self {
                account: DEV_ACCOUNT.into(),
                key: decode_key(DEV_ACCOUNT_KEY)?,
                blob_endpoint: format!("{}/{DEV_ACCOUNT}", base.trim_end_matches('/')),
            });
        }
        let account = account
            .filter(|a| !a.is_empty())
            .ok_or("AccountName is missing")?;
        let key = match key {
            Some(key) => decode_key(key)?,
            None if sas => {
                return Err("SharedAccessSignature connection strings are not supported: \
                    the handler signs per-blob download URLs and needs AccountKey (or use managed identity)"
                    .into());
            }
            None => return Err("AccountKey is missing".into()),
        };
        let blob_endpoint = match blob_endpoint {
            Some(endpoint) => {
                if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                    return Err(format!(
                        "BlobEndpoint '{endpoint}' must start with https:// or http://"
                    ));
                }
                endpoint.trim_end_matches('/').to_owned()
            }
            None => {
                let protocol = protocol.unwrap_or("https");
                if protocol != "https" && protocol != "http" {
                    return Err(format!(
                        "DefaultEndpointsProtocol must be https or http, got '{protocol}'"
                    ));
                }
                let suffix = suffix.unwrap_or("core.windows.net");
                format!("{protocol}://{account}.blob.{suffix}")
            }
        };
        Ok(Self {
            account: account.to_owned(),
            key,
            blob_endpoint,
        })
    }
}

fn decode_key(key: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| "AccountKey is not valid base64".to_string())
}

/// Hides a value in an error message: a malformed part may be a key.
fn redact(part: &str) -> String {
    let shown: String = part.chars().take(12).collect();
    if shown.len() < part.len() {
        format!("{shown}...")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "a2V5LWJ5dGVzLWZvci10ZXN0aW5nLW9ubHk=";

    #[test]
    fn development_storage() {
        let cs = ConnectionString::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(cs.account, DEV_ACCOUNT);
        assert_eq!(cs.blob_endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(cs.key.len(), 64);
    }

    #[test]
    fn azurite_style_with_blob_endpoint() {
        let raw = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;"
        );
        let cs = ConnectionString::parse(&raw).unwrap();
        assert_eq!(cs.blob_endpoint, "http://127.0.0.1:10000/devstoreaccount1");
    }

    #[test]
    fn portal_style_builds_the_public_endpoint() {
        let raw = format!(
            "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={KEY};EndpointSuffix=core.usgovcloudapi.net"
        );
        let cs = ConnectionString::parse(&raw).unwrap();
        assert_eq!(cs.account, "acme");
        assert_eq!(cs.key, b"key-bytes-for-testing-only");
        assert_eq!(cs.blob_endpoint, "https://acme.blob.core.usgovcloudapi.net");
        let default =
            ConnectionString::parse(&format!("AccountName=acme;AccountKey={KEY}")).unwrap();
        assert_eq!(default.blob_endpoint, "https://acme.blob.core.windows.net");
    }

    #[test]
    fn mistakes_are_explained_without_the_key() {
        let cases = [
            ("AccountKey=abc", "AccountName"),
            ("AccountName=a", "AccountKey is missing"),
            ("AccountName=a;AccountKey=***", "base64"),
            (
                "AccountName=a;SharedAccessSignature=sv=x&sig=y",
                "not supported",
            ),
            ("AccountName=a;AccountKey=abcd;Bogus=1", "unknown"),
            (
                "AccountName=a;AccountKey=abcd;BlobEndpoint=ftp://x",
                "https://",
            ),
            (
                "AccountName=a;AccountKey=abcd;DefaultEndpointsProtocol=ftp",
                "https or http",
            ),
            ("justakeywithoutequalsXXXXXXXXXXXXXXXX", "Name=value"),
        ];
        for (raw, expected) in cases {
            let err = ConnectionString::parse(raw).unwrap_err();
            assert!(err.contains(expected), "{raw}: {err}");
            assert!(
                !err.contains("XXXXXXXXXXXX"),
                "must not echo secrets: {err}"
            );
        }
        let debug = format!(
            "{:?}",
            ConnectionString::parse("UseDevelopmentStorage=true").unwrap()
        );
        assert!(!debug.contains("Eby8"), "{debug}");
    }
}
