//! What an entry records besides its bytes: who wrote it (its [`Writer`]) and, for a Turborepo
//! artifact, what turbo sent with it ([`Turbo`]: the task's duration, the commit, the signature
//! tag). One type, written by each backend in its own way on the request that stores the
//! entry, and read back by listing (`handler entries`, `handler purge`) and, for turbo's
//! fields, with the entry itself (turbo reads them on every hit):
//! - Azure: blob metadata set by the same request that commits the blob ([`Record::metadata`]),
//!   so no extra request and no extra role; keys are namespaced (`writer_*`), values are
//!   percent-encoded to the printable ASCII that metadata headers allow.
//! - Embedded store: a small JSON file beside the entry ([`Record::to_sidecar`]), versioned
//!   (`"v": 1`) and read with unknown fields ignored.
//!
//! Each part of the record is a field of [`Record`]: a key namespace of its own in the metadata
//! (`writer_*`, `turbo_*`) and a member of its own in the sidecar (`writer`, `turbo`).
//!
//! Entries written before records existed have none: their writer is `None`. What is read back
//! is checked again as it was on the way in (a turbo field that is no longer valid is dropped),
//! since someone with write access to storage could have changed it, and it goes into headers.

use std::collections::{BTreeMap, HashMap};

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The sidecar format's version; a reader accepts it and ignores fields it does not know.
pub const SIDECAR_VERSION: u32 = 1;

/// Longest text kept of one writer field or claim value (identity claims are short; this keeps
/// a record, and the metadata headers it becomes, small whatever an issuer puts in a claim).
pub const MAX_FIELD: usize = 256;

/// Metadata key prefix of the writer's fields.
const WRITER: &str = "writer_";
/// Metadata key prefix of the writer's identity claims (`writer_claim_repository`).
const CLAIM: &str = "writer_claim_";

/// Metadata values: everything outside printable ASCII, and `%` and space (leading and trailing
/// spaces of a header value are not kept), is percent-encoded.
const METADATA_VALUE: &AsciiSet = &CONTROLS.add(b'%').add(b' ').add(b'"');

/// Longest encoded metadata value. A blob's metadata (names and values) may total 8 KiB; a
/// record has at most 6 fields and the issuer profile's claims (8 at most), so values of this
/// size keep it under 6.5 KiB however many non-ASCII characters (9 bytes each when encoded) an
/// identity's claims hold. Longer values are cut at a character.
const MAX_METADATA_VALUE: usize = 400;

/// Metadata key prefix of turbo's fields.
const TURBO: &str = "turbo_";

/// Longest signature tag kept (`x-artifact-tag`): turbo's is 44 characters (base64 of an
/// HMAC-SHA256); room for a longer digest, not for a payload.
pub const MAX_TAG: usize = 256;
/// Longest commit id kept (`x-artifact-sha`): 40 hex digits for SHA-1, 64 for SHA-256.
pub const MAX_SHA: usize = 64;

/// What an entry records besides its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Who stored the entry; `None` for entries stored before records existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<Writer>,
    /// What turbo sent with a Turborepo artifact; `None` for Nx entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turbo: Option<Turbo>,
}

/// What turbo sends with an artifact (`PUT /v8/artifacts/{hash}` headers) and reads back with
/// it: on a hit (`x-artifact-duration`, `x-artifact-tag`) and from a dry run's query
/// (`taskDurationMs`, `tag`). Every field is checked when it arrives and when it is read back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turbo {
    /// `x-artifact-duration`: how long the task ran, in milliseconds (what a hit saves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `x-artifact-sha`: the git commit the artifact was built at (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    /// `x-artifact-tag`: the artifact's signature in signature mode (base64), returned
    /// unchanged; turbo counts a hit without it (or with another) as a miss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl Turbo {
    /// The fields from the headers of an upload; the error names the header that is wrong.
    pub fn parse(
        duration: Option<&str>,
        sha: Option<&str>,
        tag: Option<&str>,
    ) -> Result<Self, String> {
        let duration_ms = duration
            .map(|text| {
                parse_duration(text).ok_or_else(|| {
                    format!(
                        "x-artifact-duration must be a whole number of milliseconds, got '{}'",
                        printable(text)
                    )
                })
            })
            .transpose()?;
        let sha = sha
            .map(|text| {
                is_sha(text).then(|| text.to_owned()).ok_or_else(|| {
                    format!("x-artifact-sha must be a commit id (1 to {MAX_SHA} hex digits)")
                })
            })
            .transpose()?;
        let tag = tag
            .map(|text| {
                is_tag(text).then(|| text.to_owned()).ok_or_else(|| {
                    format!("x-artifact-tag must be base64, 1 to {MAX_TAG} characters")
                })
            })
            .transpose()?;
        Ok(Self {
            duration_ms,
            sha,
            tag,
        })
    }

    /// The same fields with every one that does not pass [`Turbo::parse`]'s checks dropped: what
    /// is read back from storage.
    fn checked(self) -> Self {
        Self {
            duration_ms: self.duration_ms,
            sha: self.sha.filter(|s| is_sha(s)),
            tag: self.tag.filter(|t| is_tag(t)),
        }
    }
}

/// A duration as turbo sends it: digits only, a `u64`.
fn parse_duration(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn is_sha(text: &str) -> bool {
    (1..=MAX_SHA).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Base64, standard or URL-safe alphabet, padding at the end only.
fn is_tag(text: &str) -> bool {
    let data = text.trim_end_matches('=');
    (1..=MAX_TAG).contains(&text.len())
        && text.len() - data.len() <= 2
        && !data.is_empty()
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
}

/// Whether the token that wrote an entry was issued by an operator or exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriterKind {
    /// `handler token issue`.
    Issued,
    /// `POST /token`, under a trust rule.
    Exchanged,
}

impl WriterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WriterKind::Issued => "issued",
            WriterKind::Exchanged => "exchanged",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "issued" => Some(WriterKind::Issued),
            "exchanged" => Some(WriterKind::Exchanged),
            _ => None,
        }
    }
}

/// Who stored an entry, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    /// The token's id (`jti`), as `NX_CACHE_REVOKED_TOKENS` takes it.
    pub token_id: String,
    pub subject: String,
    pub kind: WriterKind,
    /// The trust rule an exchanged token was issued under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The identity issuer of an exchanged token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The identity claims that say which build wrote it (the issuer profile's list).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub stored: OffsetDateTime,
}

/// The sidecar file: the record and its format version.
#[derive(Serialize, Deserialize)]
struct Sidecar {
    v: u32,
    #[serde(flatten)]
    record: Record,
}

impl Writer {
    /// A writer with every text field cut to [`MAX_FIELD`] and control characters replaced, and
    /// only claim names that can be metadata names (letters, digits, `_`, not first a digit).
    pub fn bounded(mut self) -> Self {
        self.token_id = printable(&self.token_id);
        self.subject = printable(&self.subject);
        self.rule = self.rule.as_deref().map(printable);
        self.issuer = self.issuer.as_deref().map(printable);
        self.claims = std::mem::take(&mut self.claims)
            .into_iter()
            .filter(|(name, _)| is_metadata_name(name))
            .map(|(name, value)| (name, printable(&value)))
            .collect();
        self
    }
}

impl Record {
    /// The record as blob metadata (name without `x-ms-meta-`, value): nothing for an entry
    /// without a writer.
    pub fn metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::new();
        let mut put = |name: String, value: &str| {
            metadata.insert(name, encode_value(value));
        };
        if let Some(turbo) = &self.turbo {
            if let Some(duration) = turbo.duration_ms {
                put(format!("{TURBO}duration_ms"), &duration.to_string());
            }
            if let Some(sha) = &turbo.sha {
                put(format!("{TURBO}sha"), sha);
            }
            if let Some(tag) = &turbo.tag {
                put(format!("{TURBO}tag"), tag);
            }
        }
        let Some(writer) = &self.writer else {
            return metadata;
        };
        put(format!("{WRITER}token_id"), &writer.token_id);
        put(format!("{WRITER}subject"), &writer.subject);
        put(format!("{WRITER}kind"), writer.kind.as_str());
        if let Some(rule) = &writer.rule {
            put(format!("{WRITER}rule"), rule);
        }
        if let Some(issuer) = &writer.issuer {
            put(format!("{WRITER}issuer"), issuer);
        }
        put(format!("{WRITER}stored"), &rfc3339(writer.stored));
        for (name, value) in &writer.claims {
            put(format!("{CLAIM}{name}"), value);
        }
        metadata
    }

    /// The record read back from blob metadata (names compared without case, as the service
    /// does). A blob without a complete writer (no token id, kind or time) has none; one without
    /// any `turbo_*` field has no turbo fields.
    pub fn from_metadata<'a>(metadata: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut fields: HashMap<String, String> = HashMap::new();
        let mut claims = BTreeMap::new();
        let mut turbo: Option<Turbo> = None;
        for (name, value) in metadata {
            let name = name.to_ascii_lowercase();
            let value = decode_value(value);
            if let Some(claim) = name.strip_prefix(CLAIM) {
                claims.insert(claim.to_owned(), value);
            } else if let Some(field) = name.strip_prefix(WRITER) {
                fields.insert(field.to_owned(), value);
            } else if let Some(field) = name.strip_prefix(TURBO) {
                let turbo = turbo.get_or_insert_with(Turbo::default);
                match field {
                    "duration_ms" => turbo.duration_ms = parse_duration(&value),
                    "sha" => turbo.sha = Some(value),
                    "tag" => turbo.tag = Some(value),
                    _ => {}
                }
            }
        }
        let writer = (|| {
            Some(Writer {
                token_id: fields.remove("token_id")?,
                subject: fields.remove("subject").unwrap_or_default(),
                kind: WriterKind::parse(fields.get("kind")?)?,
                rule: fields.remove("rule"),
                issuer: fields.remove("issuer"),
                claims,
                stored: OffsetDateTime::parse(fields.get("stored")?, &Rfc3339).ok()?,
            })
        })();
        Record {
            writer,
            turbo: turbo.map(Turbo::checked),
        }
    }

    /// Turbo's fields of a record read back from blob metadata, without the writer: what a read
    /// of a Turborepo artifact needs (its answer carries them).
    pub fn turbo_from_metadata<'a>(
        metadata: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<Turbo> {
        let turbo = metadata.into_iter().filter(|(name, _)| {
            name.get(..TURBO.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(TURBO))
        });
        Self::from_metadata(turbo).turbo
    }

    /// Whether there is nothing to record (no writer, no turbo fields): no metadata, no sidecar.
    pub fn is_empty(&self) -> bool {
        self.writer.is_none() && self.turbo.is_none()
    }

    /// The sidecar file's bytes: `{"v":1,"writer":{...},"turbo":{...}}`.
    pub fn to_sidecar(&self) -> Vec<u8> {
        serde_json::to_vec(&SidecarRef {
            v: SIDECAR_VERSION,
            writer: &self.writer,
            turbo: &self.turbo,
        })
        .unwrap_or_default()
    }

    /// A record read from a sidecar file; `None` when the bytes are no record (cut short by a
    /// crash, say).
    pub fn from_sidecar(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Sidecar>(bytes)
            .ok()
            .map(|sidecar| Record {
                turbo: sidecar.record.turbo.map(Turbo::checked),
                ..sidecar.record
            })
    }
}

/// What is written: the version and the record's fields (no `flatten`, which buffers).
#[derive(Serialize)]
struct SidecarRef<'a> {
    v: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    writer: &'a Option<Writer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    turbo: &'a Option<Turbo>,
}

/// RFC 3339 to the second (`2026-11-01T10:00:00Z`).
pub fn rfc3339(time: OffsetDateTime) -> String {
    time.replace_nanosecond(0)
        .unwrap_or(time)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Whether `name` can follow `x-ms-meta-`: a C# identifier of ASCII letters, digits and `_`.
fn is_metadata_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 64
}

/// Text cut to [`MAX_FIELD`] characters, control characters replaced by `?`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_FIELD)
        .collect()
}

/// `value` percent-encoded, cut at a character so it stays within [`MAX_METADATA_VALUE`].
fn encode_value(value: &str) -> String {
    let mut encoded = String::new();
    let mut buffer = [0u8; 4];
    for c in value.chars() {
        let piece = utf8_percent_encode(c.encode_utf8(&mut buffer), METADATA_VALUE).to_string();
        if encoded.len() + piece.len() > MAX_METADATA_VALUE {
            break;
        }
        encoded.push_str(&piece);
    }
    encoded
}

fn decode_value(value: &str) -> String {
    percent_decode_str(value).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn writer() -> Writer {
        Writer {
            token_id: "0123abcd".into(),
            subject: "github:acme/web:refs/heads/main".into(),
            kind: WriterKind::Exchanged,
            rule: Some("web-main".into()),
            issuer: Some("https://token.actions.githubusercontent.com".into()),
            claims: [
                ("repository".to_string(), "acme/web".to_string()),
                ("actor".to_string(), "Zoë 100% \"quoted\" ".to_string()),
            ]
            .into(),
            stored: datetime!(2026-11-01 10:00:00 UTC),
        }
    }

    #[test]
    fn metadata_round_trips_in_header_safe_ascii() {
        let record = Record {
            writer: Some(writer()),
            turbo: Some(turbo()),
        };
        let metadata = record.metadata();
        assert_eq!(metadata["turbo_duration_ms"], "1234");
        assert_eq!(metadata["turbo_tag"], turbo().tag.unwrap());
        for (name, value) in &metadata {
            assert!(is_metadata_name(name), "{name}");
            assert!(
                value
                    .bytes()
                    .all(|b| (0x21..0x7f).contains(&b) && b != b'"'),
                "{name}: {value}"
            );
        }
        assert_eq!(
            metadata["writer_claim_actor"],
            "Zo%C3%AB%20100%25%20%22quoted%22%20"
        );
        // The service may hand names back in another case.
        let upper: Vec<(String, String)> = metadata
            .iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
            .collect();
        let back = Record::from_metadata(upper.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(back, record);
        // Metadata that is not a writer's (or not a whole one) gives no writer.
        let foreign = [("owner", "someone"), ("writer_subject", "x")];
        assert_eq!(Record::from_metadata(foreign), Record::default());
        assert!(Record::default().metadata().is_empty());
    }

    #[test]
    fn the_sidecar_is_versioned_json_and_tolerates_what_it_does_not_know() {
        let record = Record {
            writer: Some(writer()),
            turbo: Some(turbo()),
        };
        let bytes = record.to_sidecar();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["writer"]["kind"], "exchanged");
        assert_eq!(json["writer"]["stored"], "2026-11-01T10:00:00Z");
        assert_eq!(json["turbo"]["duration_ms"], 1234);
        assert_eq!(Record::from_sidecar(&bytes), Some(record));
        let later = br#"{"v":2,"writer":null,"provenance":{"slsa":5}}"#;
        assert_eq!(Record::from_sidecar(later), Some(Record::default()));
        // A sidecar written before turbo's fields existed reads as it did.
        let nx_only = Record {
            writer: Some(writer()),
            ..Record::default()
        };
        assert!(
            !String::from_utf8(nx_only.to_sidecar())
                .unwrap()
                .contains("turbo")
        );
        assert_eq!(Record::from_sidecar(b""), None);
        assert_eq!(Record::from_sidecar(b"{\"v\":1,\"wri"), None);
    }

    /// Whatever an identity's claims hold, the metadata stays within what a blob may carry.
    #[test]
    fn metadata_fits_a_blob_whatever_the_claims_hold() {
        let mut wide = writer();
        wide.subject = "ü".repeat(1000);
        wide.rule = Some("規".repeat(1000));
        wide.issuer = Some("%".repeat(1000));
        // As many claims as the longest issuer profile lists.
        for name in (0..8).map(|i| format!("claim_{i}")) {
            wide.claims.insert(name, "🦀".repeat(1000));
        }
        let record = Record {
            writer: Some(wide.bounded()),
            turbo: Some(Turbo {
                duration_ms: Some(u64::MAX),
                sha: Some("f".repeat(MAX_SHA)),
                tag: Some("A".repeat(MAX_TAG)),
            }),
        };
        let metadata = record.metadata();
        let size: usize = metadata
            .iter()
            .map(|(k, v)| "x-ms-meta-".len() + k.len() + v.len())
            .sum();
        assert!(size < 8 * 1024, "{size} bytes");
        let back = Record::from_metadata(metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let subject = back.writer.unwrap().subject;
        assert!(
            subject.chars().all(|c| c == 'ü') && !subject.is_empty(),
            "cut at a character"
        );
    }

    fn turbo() -> Turbo {
        Turbo {
            duration_ms: Some(1234),
            sha: Some("5a4da53a169cb32458e42e7c65f20e4664bc7cfa".into()),
            tag: Some("kP0XVq5Hn1h9Yc9DaeSQq0H0yq5pC7ZbZ6t1x0Yh0mA=".into()),
        }
    }

    #[test]
    fn turbo_fields_are_checked_on_the_way_in() {
        let fields = turbo();
        assert_eq!(
            Turbo::parse(Some("1234"), fields.sha.as_deref(), fields.tag.as_deref()),
            Ok(fields)
        );
        assert_eq!(Turbo::parse(None, None, None), Ok(Turbo::default()));
        for bad in ["", "12.5", "-1", "1e3", " 1", "99999999999999999999999"] {
            let error = Turbo::parse(Some(bad), None, None).unwrap_err();
            assert!(error.starts_with("x-artifact-duration"), "{bad:?}: {error}");
        }
        for bad in ["", "xyz", "5a4d 53", &"a".repeat(MAX_SHA + 1)] {
            let error = Turbo::parse(None, Some(bad), None).unwrap_err();
            assert!(error.starts_with("x-artifact-sha"), "{bad:?}: {error}");
        }
        for bad in [
            "",
            "=",
            "ab\r\nx-injected: 1",
            "a b",
            "ab===",
            "a=b",
            &"A".repeat(MAX_TAG + 1),
        ] {
            let error = Turbo::parse(None, None, Some(bad)).unwrap_err();
            assert!(error.starts_with("x-artifact-tag"), "{bad:?}: {error}");
        }
        for good in ["AAAA", "ab-_", "YQ==", "YWI="] {
            assert!(Turbo::parse(None, None, Some(good)).is_ok(), "{good}");
        }
    }

    /// What comes back from storage is checked as it was on the way in: a field someone
    /// changed in storage into something else is dropped, never put in a header.
    #[test]
    fn turbo_fields_read_back_are_checked_again() {
        let metadata = [
            ("turbo_duration_ms", "12.5"),
            ("TURBO_SHA", "not%20hex"),
            ("turbo_tag", "YWI%3D"),
            ("writer_subject", "ignored without a token id"),
        ];
        let turbo = Record::turbo_from_metadata(metadata).unwrap();
        assert_eq!(turbo.duration_ms, None);
        assert_eq!(turbo.sha, None);
        assert_eq!(turbo.tag.as_deref(), Some("YWI="));
        assert_eq!(
            Record::turbo_from_metadata([("writer_kind", "issued")]),
            None
        );
        let sidecar = br#"{"v":1,"turbo":{"duration_ms":5,"tag":"a\nb","sha":"abc"}}"#;
        let record = Record::from_sidecar(sidecar).unwrap();
        assert_eq!(
            record.turbo,
            Some(Turbo {
                duration_ms: Some(5),
                sha: Some("abc".into()),
                tag: None
            })
        );
    }

    #[test]
    fn writers_are_bounded_and_printable() {
        let mut long = writer();
        long.subject = format!("a\nb{}", "x".repeat(1000));
        long.claims.insert("bad-name".into(), "v".into());
        long.claims.insert("9lives".into(), "v".into());
        let bounded = long.bounded();
        assert_eq!(bounded.subject.chars().count(), MAX_FIELD);
        assert!(bounded.subject.starts_with("a?b"));
        assert_eq!(
            bounded.claims.keys().collect::<Vec<_>>(),
            vec!["actor", "repository"]
        );
    }
}
