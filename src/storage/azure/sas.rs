//! Service SAS signing with an account key, for connection-string mode (Azurite, custom
//! endpoints). The official Rust SDK has no shared-key credential, so every storage call in that
//! mode, and every download URL handed to a client, carries a service SAS made here.
//!
//! String-to-sign for service version 2020-12-06 and later (Microsoft: "Create a service SAS"):
//! `sp \n st \n se \n canonicalizedResource \n si \n sip \n spr \n sv \n sr \n snapshot \n ses \n
//! rscc \n rscd \n rsce \n rscl \n rsct`, where canonicalizedResource is
//! `/blob/{account}/{container}/{blob}`; the signature is base64(HMAC-SHA256(key, string)).

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The service version the handler signs for and sends.
pub const SAS_VERSION: &str = "2025-01-05";

/// Characters left as they are in a query value; everything else is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Which protocols a SAS allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    HttpsOnly,
    HttpsAndHttp,
}

impl Protocols {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocols::HttpsOnly => "https",
            Protocols::HttpsAndHttp => "https,http",
        }
    }
}

/// What one SAS grants: one blob, some permissions, a time window.
#[derive(Debug, Clone)]
pub struct BlobSas<'a> {
    pub account: &'a str,
    pub container: &'a str,
    pub blob: &'a str,
    /// Permission letters in Azure's order, e.g. `r`, or `cw`.
    pub permissions: &'a str,
    pub start: OffsetDateTime,
    pub expiry: OffsetDateTime,
    pub protocols: Protocols,
    pub version: &'a str,
}

impl BlobSas<'_> {
    /// An empty `blob` makes a container SAS (e.g. to list it); otherwise a blob SAS.
    fn canonical_resource(&self) -> String {
        if self.blob.is_empty() {
            format!("/blob/{}/{}", self.account, self.container)
        } else {
            format!("/blob/{}/{}/{}", self.account, self.container, self.blob)
        }
    }

    /// `sr`: `c` for a container, `b` for one blob.
    fn signed_resource(&self) -> &'static str {
        if self.blob.is_empty() { "c" } else { "b" }
    }

    /// The service-SAS string-to-sign (see the module docs for the field order).
    pub fn service_string_to_sign(&self) -> String {
        [
            self.permissions,
            &iso8601(self.start),
            &iso8601(self.expiry),
            &self.canonical_resource(),
            "", // signedIdentifier
            "", // signedIP
            self.protocols.as_str(),
            self.version,
            self.signed_resource(),
            "", // signedSnapshotTime
            "", // signedEncryptionScope
            "", // rscc
            "", // rscd
            "", // rsce
            "", // rscl
            "", // rsct
        ]
        .join("\n")
    }

    /// The query string of a service SAS signed with the account key.
    pub fn service_query(&self, account_key: &[u8]) -> String {
        let signature = sign(account_key, &self.service_string_to_sign());
        self.query(&[], &signature)
    }

    /// Builds the query string: the common fields, `extra` pairs, then the signature.
    pub(crate) fn query(&self, extra: &[(&str, &str)], signature: &str) -> String {
        let mut pairs: Vec<(&str, String)> = vec![
            ("sv", self.version.to_owned()),
            ("st", iso8601(self.start)),
            ("se", iso8601(self.expiry)),
            ("sr", self.signed_resource().to_owned()),
            ("sp", self.permissions.to_owned()),
            ("spr", self.protocols.as_str().to_owned()),
        ];
        pairs.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        pairs.push(("sig", signature.to_owned()));
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, QUERY_VALUE)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// base64(HMAC-SHA256(key, message)).
pub fn sign(key: &[u8], message: &str) -> String {
    use base64::Engine;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// `YYYY-MM-DDThh:mm:ssZ`, the form SAS fields use (whole seconds, UTC).
pub fn iso8601(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond")
        .format(&Rfc3339)
        .expect("a UTC time formats as RFC 3339")
}

/// Percent-encodes a blob name for a URL path, keeping `/` separators.
pub fn encode_blob_path(name: &str) -> String {
    name.split('/')
        .map(|segment| utf8_percent_encode(segment, QUERY_VALUE).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::azure::connection_string::DEV_ACCOUNT_KEY;
    use time::macros::datetime;

    fn dev_key() -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(DEV_ACCOUNT_KEY)
            .unwrap()
    }

    fn sas<'a>(blob: &'a str, permissions: &'a str, protocols: Protocols) -> BlobSas<'a> {
        BlobSas {
            account: "devstoreaccount1",
            container: "nx-cache",
            blob,
            permissions,
            start: datetime!(2026-11-25 13:00:00 UTC),
            expiry: datetime!(2026-11-25 13:10:00 UTC),
            protocols,
            // The version the reference implementation signed with.
            version: "2026-10-06",
        }
    }

    #[test]
    fn string_to_sign_has_the_documented_sixteen_fields() {
        let s = sas("org/1", "r", Protocols::HttpsOnly).service_string_to_sign();
        assert_eq!(
            s,
            "r\n2026-11-25T13:00:00Z\n2026-11-25T13:10:00Z\n/blob/devstoreaccount1/nx-cache/org/1\n\n\nhttps\n2026-10-06\nb\n\n\n\n\n\n\n"
        );
        assert_eq!(s.split('\n').count(), 16);
    }

    /// Reference signatures from Microsoft's Python SDK (azure-storage-blob 12.31.1,
    /// `generate_blob_sas` with the same account, key, blob, permissions, times and protocol).
    #[test]
    fn signatures_match_the_reference_implementation() {
        let read =
            sas("org/4809188201876735999", "r", Protocols::HttpsOnly).service_query(&dev_key());
        assert!(
            read.ends_with("sig=gw%2F%2BfgfGbI13YX9OCf5CdIKc1BTh7U0F60EFvaMa73Q%3D"),
            "{read}"
        );
        let write = sas("teams/web/42", "cw", Protocols::HttpsAndHttp).service_query(&dev_key());
        assert!(
            write.ends_with("sig=hz7szKz99BtSa5u7SttFQxiOPN61yCFZSHNb1R%2BIx94%3D"),
            "{write}"
        );
    }

    #[test]
    fn query_carries_every_field_encoded() {
        let query = sas("org/1", "r", Protocols::HttpsAndHttp).service_query(&dev_key());
        for field in [
            "sv=2026-10-06",
            "st=2026-11-25T13%3A00%3A00Z",
            "se=2026-11-25T13%3A10%3A00Z",
            "sr=b",
            "sp=r",
            "spr=https%2Chttp",
            "sig=",
        ] {
            assert!(query.contains(field), "{field} missing from {query}");
        }
    }

    #[test]
    fn an_empty_blob_name_signs_for_the_container() {
        let container = sas("", "l", Protocols::HttpsOnly);
        let lines: Vec<String> = container
            .service_string_to_sign()
            .split('\n')
            .map(str::to_owned)
            .collect();
        assert_eq!(lines[3], "/blob/devstoreaccount1/nx-cache");
        assert_eq!(lines[8], "c");
        assert!(container.service_query(&dev_key()).contains("sr=c"));
    }

    #[test]
    fn times_are_whole_seconds_utc() {
        let at = datetime!(2026-01-02 03:04:05.678 +02:00);
        assert_eq!(iso8601(at), "2026-01-02T01:04:05Z");
    }

    #[test]
    fn blob_paths_keep_separators() {
        assert_eq!(encode_blob_path("teams/web/42"), "teams/web/42");
        assert_eq!(encode_blob_path("a b/c"), "a%20b/c");
    }
}
