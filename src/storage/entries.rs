//! `handler entries` and `handler purge`: which entries a filter selects (by client, namespace,
//! hash, writer, identity claim and time), how they are printed, and the purge of a selection,
//! on any [`Store`]. The CLI only parses flags into a [`Filter`] and prints what comes back.
//!
//! A purge deletes each selected entry in the version that was listed ([`Store::delete`]), so
//! an entry stored again after the listing stays. It stops at the first refusal for lack of a
//! right (the message names the role) and counts what it could not delete, and why.

use std::collections::BTreeMap;
use std::fmt::Write;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::record::{Writer, rfc3339};
use super::{Deleted, Entry, Store, StoreError};
use crate::auth::conditions::glob;
use crate::key::{Client, Hash, Namespace};

/// `--claim NAME=VALUE`: the writer's identity claim `NAME` matches `VALUE` (`*` matches any
/// run of characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimFilter {
    pub name: String,
    pub pattern: String,
}

impl ClaimFilter {
    /// Parses `NAME=VALUE`; the name must not be empty.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once('=') {
            Some((name, pattern)) if !name.trim().is_empty() => Ok(Self {
                name: name.trim().to_owned(),
                pattern: pattern.to_owned(),
            }),
            _ => Err(format!(
                "expected NAME=VALUE (e.g. repository=acme/web or ref=refs/heads/*), got '{text}'"
            )),
        }
    }
}

/// Parses `--since` / `--until`: an RFC 3339 time (`2026-11-01T10:00:00Z`) or a duration ago
/// (`2d`, `12h`, `30m`), relative to `now`.
pub fn parse_time(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(time);
    }
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(now - ago),
        Err(_) => Err(format!(
            "expected an RFC 3339 time (2026-11-01T10:00:00Z) or a duration ago (2d, 12h, 30m), got '{text}'"
        )),
    }
}

/// What `handler entries` and `handler purge` select. Clients are alternatives, and so are
/// namespaces (an entry in any of them); every other condition must hold. Nothing set selects
/// every entry.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `--nx`, `--turbo`: empty for both clients' entries.
    pub clients: Vec<Client>,
    /// `--org`, `--team NAME`: empty for every namespace.
    pub namespaces: Vec<Namespace>,
    pub hash: Option<Hash>,
    pub token_id: Option<String>,
    pub subject: Option<String>,
    pub rule: Option<String>,
    pub claims: Vec<ClaimFilter>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// Entries stored without a record of their writer (before records existed).
    pub no_writer: bool,
}

impl Filter {
    /// Whether no condition is set (a purge then needs `--all`).
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
            && self.namespaces.is_empty()
            && self.hash.is_none()
            && !self.selects_by_writer()
            && self.since.is_none()
            && self.until.is_none()
            && !self.no_writer
    }

    fn selects_by_writer(&self) -> bool {
        self.token_id.is_some()
            || self.subject.is_some()
            || self.rule.is_some()
            || !self.claims.is_empty()
    }

    /// Refuses filters that can select nothing by construction.
    pub fn check(&self) -> Result<(), String> {
        if self.no_writer && self.selects_by_writer() {
            return Err("--no-writer selects entries without a writer; it cannot be combined with --token-id, --subject, --rule or --claim".into());
        }
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since > until
        {
            return Err(format!(
                "--since {} is after --until {}",
                rfc3339(since),
                rfc3339(until)
            ));
        }
        Ok(())
    }

    /// Whether `entry` is selected.
    pub fn selects(&self, entry: &Entry) -> bool {
        if !self.clients.is_empty() && !self.clients.contains(&entry.key.client) {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(&entry.key.namespace) {
            return false;
        }
        if self.hash.as_ref().is_some_and(|h| *h != entry.key.hash) {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(created) = entry.created else {
                return false;
            };
            if self.since.is_some_and(|t| created < t) || self.until.is_some_and(|t| created > t) {
                return false;
            }
        }
        match &entry.record.writer {
            None => !self.selects_by_writer(),
            Some(_) if self.no_writer => false,
            Some(writer) => self.selects_writer(writer),
        }
    }

    fn selects_writer(&self, writer: &Writer) -> bool {
        let same = |wanted: &Option<String>, actual: Option<&str>| {
            wanted.as_deref().is_none_or(|w| Some(w) == actual)
        };
        same(&self.token_id, Some(&writer.token_id))
            && same(&self.subject, Some(&writer.subject))
            && same(&self.rule, writer.rule.as_deref())
            && self.claims.iter().all(|c| {
                writer
                    .claims
                    .get(&c.name)
                    .is_some_and(|value| glob(&c.pattern, value))
            })
    }
}

/// Lists the entries `filter` selects, calling `each` for each one. `progress` gets the number
/// of entries looked at so far.
pub async fn list(
    store: &dyn Store,
    filter: &Filter,
    each: &mut (dyn FnMut(Entry) + Send),
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), StoreError> {
    store
        .list(
            &filter.clients,
            &filter.namespaces,
            &mut |entry| {
                if filter.selects(&entry) {
                    each(entry)
                }
            },
            progress,
        )
        .await
}

/// One entry as a JSON object: `client` (`nx` or `turbo`), `namespace` (its folder: `org`,
/// `teams/NAME`, `turbo/org`, `turbo/teams/NAME`), `hash`, `bytes`, `created`, `writer`
/// (`null`, or `token_id`, `subject`, `kind`, `rule`, `issuer`, `claims`) and, for a Turborepo
/// artifact, `turbo` (`duration_ms`, `sha`, `tag`, each `null` when turbo sent none).
pub fn json(entry: &Entry) -> serde_json::Value {
    let writer = entry.record.writer.as_ref().map(|w| {
        serde_json::json!({
            "token_id": w.token_id,
            "subject": w.subject,
            "kind": w.kind.as_str(),
            "rule": w.rule,
            "issuer": w.issuer,
            "claims": w.claims,
        })
    });
    let mut value = serde_json::json!({
        "client": entry.key.client.as_str(),
        "namespace": entry.key.folder(),
        "hash": entry.key.hash.as_str(),
        "bytes": entry.bytes,
        "created": entry.created.map(rfc3339),
        "writer": writer,
    });
    if entry.key.client == Client::Turbo {
        let turbo = entry.record.turbo.clone().unwrap_or_default();
        value["turbo"] = serde_json::json!({
            "duration_ms": turbo.duration_ms,
            "sha": turbo.sha,
            "tag": turbo.tag,
        });
    }
    value
}

/// The header of [`table_row`]'s table.
pub fn table_header() -> String {
    format!(
        "{:<20} {:<24} {:>12}  {:<20}  {:<9}  {:<32}  {:<16}  {}",
        "namespace", "hash", "bytes", "created", "kind", "token id", "rule", "subject"
    )
}

/// One entry as a table row; `-` where there is nothing to say (no writer: `unknown`).
pub fn table_row(entry: &Entry) -> String {
    let (kind, token_id, rule, subject) = match &entry.record.writer {
        Some(w) => (
            w.kind.as_str(),
            w.token_id.as_str(),
            w.rule.as_deref().unwrap_or("-"),
            w.subject.as_str(),
        ),
        None => ("unknown", "-", "-", "-"),
    };
    format!(
        "{:<20} {:<24} {:>12}  {:<20}  {:<9}  {:<32}  {:<16}  {}",
        entry.key.folder(),
        entry.key.hash.as_str(),
        entry.bytes,
        entry.created.map(rfc3339).unwrap_or_else(|| "-".into()),
        kind,
        token_id,
        rule,
        subject
    )
}

/// What a purge did, or (dry run) would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeSummary {
    pub selected: u64,
    pub selected_bytes: u64,
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// Not deleted, by reason.
    pub kept: BTreeMap<String, u64>,
}

impl PurgeSummary {
    pub fn not_deleted(&self) -> u64 {
        self.kept.values().sum()
    }

    /// One line: `deleted 3 entries (1234 bytes); 1 not deleted: 1 stored again since listed`.
    pub fn line(&self, dry_run: bool) -> String {
        if dry_run {
            return format!(
                "dry run: would delete {} entries ({} bytes); nothing deleted (add --yes to delete)",
                self.selected, self.selected_bytes
            );
        }
        let mut line = format!(
            "deleted {} of {} selected entries ({} bytes)",
            self.deleted, self.selected, self.deleted_bytes
        );
        if !self.kept.is_empty() {
            let _ = write!(line, "; {} not deleted:", self.not_deleted());
            for (i, (reason, count)) in self.kept.iter().enumerate() {
                let _ = write!(line, "{} {count} {reason}", if i == 0 { "" } else { ";" });
            }
        }
        line
    }

    fn keep(&mut self, reason: &str, count: u64) {
        if count > 0 {
            *self.kept.entry(reason.to_owned()).or_default() += count;
        }
    }
}

/// Why an entry was not deleted, in the summary.
const CHANGED: &str = "stored again since they were listed (left)";
const GONE: &str = "already gone";

/// Lists what `filter` selects, then (unless `dry_run`) deletes it entry by entry, calling
/// `selected` for each selected entry and `deleted` for each one deleted (the audit line).
/// The selection is held in memory between the listing and the deletes (a few hundred bytes an
/// entry), so a listing page is never read while it is being deleted from.
pub async fn purge(
    store: &dyn Store,
    filter: &Filter,
    dry_run: bool,
    selected: &mut (dyn FnMut(&Entry) + Send),
    deleted: &mut (dyn FnMut(&Entry) + Send),
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<PurgeSummary, StoreError> {
    let mut chosen = Vec::new();
    list(store, filter, &mut |entry| chosen.push(entry), progress).await?;
    let mut summary = PurgeSummary::default();
    for entry in &chosen {
        summary.selected += 1;
        summary.selected_bytes += entry.bytes;
        selected(entry);
    }
    if dry_run {
        return Ok(summary);
    }
    for (done, entry) in chosen.iter().enumerate() {
        match store.delete(entry).await {
            Ok(Deleted::Deleted) => {
                summary.deleted += 1;
                summary.deleted_bytes += entry.bytes;
                deleted(entry);
            }
            Ok(Deleted::Changed) => summary.keep(CHANGED, 1),
            Ok(Deleted::Gone) => summary.keep(GONE, 1),
            Err(StoreError::Forbidden(why)) => {
                // Every other delete would be refused alike.
                summary.keep(&format!("refused: {why}"), (chosen.len() - done) as u64);
                break;
            }
            Err(e) => summary.keep(&format!("failed: {e}"), 1),
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{CacheKey, TeamName};
    use crate::storage::record::{Record, WriterKind};
    use time::macros::datetime;

    fn entry(team: Option<&str>, hash: &str, writer: Option<(&str, &str, Option<&str>)>) -> Entry {
        let record = Record {
            turbo: None,
            writer: writer.map(|(token_id, subject, rule)| Writer {
                token_id: token_id.into(),
                subject: subject.into(),
                kind: if rule.is_some() {
                    WriterKind::Exchanged
                } else {
                    WriterKind::Issued
                },
                rule: rule.map(Into::into),
                issuer: None,
                claims: [("ref".to_string(), "refs/heads/main".to_string())].into(),
                stored: datetime!(2026-11-02 10:00 UTC),
            }),
        };
        Entry {
            key: CacheKey::parse(team, hash).unwrap(),
            bytes: 10,
            created: Some(datetime!(2026-11-02 10:00 UTC)),
            record,
            version: "1".into(),
        }
    }

    #[test]
    fn each_condition_selects_what_it_says() {
        let issued = entry(None, "1", Some(("t1", "ci", None)));
        let exchanged = entry(
            Some("web"),
            "2",
            Some(("t2", "github:acme/web", Some("web-main"))),
        );
        let bare = entry(Some("web"), "3", None);
        let mut artifact = entry(Some("web"), "4", Some(("t4", "turbo-ci", None)));
        artifact.key.client = Client::Turbo;
        let all = [&issued, &exchanged, &bare, &artifact];
        let picks = |filter: Filter| -> Vec<&str> {
            filter.check().unwrap();
            all.iter()
                .filter(|e| filter.selects(e))
                .map(|e| e.key.hash.as_str())
                .collect()
        };
        assert_eq!(picks(Filter::default()), ["1", "2", "3", "4"]);
        assert_eq!(
            picks(Filter {
                clients: vec![Client::Turbo],
                ..Default::default()
            }),
            ["4"]
        );
        assert_eq!(
            picks(Filter {
                clients: vec![Client::Nx],
                ..Default::default()
            }),
            ["1", "2", "3"]
        );
        assert!(
            !Filter {
                clients: vec![Client::Turbo],
                ..Default::default()
            }
            .is_empty()
        );
        let json = json(&artifact);
        assert_eq!(json["client"], "turbo");
        assert_eq!(json["namespace"], "turbo/teams/web");
        assert_eq!(json["turbo"]["duration_ms"], serde_json::Value::Null);
        assert!(table_row(&artifact).starts_with("turbo/teams/web "));
        let web = Namespace::Team(TeamName::parse("web").unwrap());
        assert_eq!(
            picks(Filter {
                namespaces: vec![Namespace::Org],
                ..Default::default()
            }),
            ["1"]
        );
        assert_eq!(
            picks(Filter {
                namespaces: vec![web.clone()],
                ..Default::default()
            }),
            ["2", "3", "4"]
        );
        assert_eq!(
            picks(Filter {
                hash: Hash::parse("2").ok(),
                ..Default::default()
            }),
            ["2"]
        );
        assert_eq!(
            picks(Filter {
                token_id: Some("t1".into()),
                ..Default::default()
            }),
            ["1"]
        );
        assert_eq!(
            picks(Filter {
                subject: Some("github:acme/web".into()),
                ..Default::default()
            }),
            ["2"]
        );
        assert_eq!(
            picks(Filter {
                rule: Some("web-main".into()),
                ..Default::default()
            }),
            ["2"]
        );
        let claim = |text: &str| Filter {
            claims: vec![ClaimFilter::parse(text).unwrap()],
            ..Default::default()
        };
        assert_eq!(picks(claim("ref=refs/heads/*")), ["1", "2", "4"]);
        assert_eq!(picks(claim("ref=refs/tags/*")), Vec::<&str>::new());
        assert_eq!(
            picks(claim("sha=*")),
            Vec::<&str>::new(),
            "absent claims match nothing"
        );
        assert_eq!(
            picks(Filter {
                no_writer: true,
                ..Default::default()
            }),
            ["3"]
        );
        let at = |t: OffsetDateTime| Some(t);
        assert_eq!(
            picks(Filter {
                since: at(datetime!(2026-11-02 11:00 UTC)),
                ..Default::default()
            }),
            Vec::<&str>::new()
        );
        assert_eq!(
            picks(Filter {
                until: at(datetime!(2026-11-02 11:00 UTC)),
                ..Default::default()
            }),
            ["1", "2", "3", "4"]
        );
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert!(ClaimFilter::parse("repository").is_err());
        assert!(ClaimFilter::parse("=x").is_err());
        assert_eq!(ClaimFilter::parse("a=b=c").unwrap().pattern, "b=c");
        let now = datetime!(2026-11-10 00:00 UTC);
        assert_eq!(
            parse_time("2d", now).unwrap(),
            datetime!(2026-11-08 00:00 UTC)
        );
        assert_eq!(
            parse_time("2026-11-01T10:00:00Z", now).unwrap(),
            datetime!(2026-11-01 10:00 UTC)
        );
        assert!(parse_time("yesterday", now).is_err());
        let mixed = Filter {
            no_writer: true,
            rule: Some("r".into()),
            ..Default::default()
        };
        assert!(mixed.check().is_err());
        let backwards = Filter {
            since: Some(datetime!(2026-11-02 0:00 UTC)),
            until: Some(datetime!(2026-11-01 0:00 UTC)),
            ..Default::default()
        };
        assert!(backwards.check().unwrap_err().contains("after"));
        assert!(Filter::default().is_empty());
    }

    #[test]
    fn json_lines_name_the_namespace_and_the_writer() {
        let value = json(&entry(
            Some("web"),
            "2",
            Some(("t2", "s", Some("web-main"))),
        ));
        assert_eq!(value["namespace"], "teams/web");
        assert_eq!(value["writer"]["kind"], "exchanged");
        assert_eq!(value["writer"]["claims"]["ref"], "refs/heads/main");
        assert_eq!(value["created"], "2026-11-02T10:00:00Z");
        assert!(json(&entry(None, "3", None))["writer"].is_null());
        assert_eq!(json(&entry(None, "3", None))["namespace"], "org");
    }
}
