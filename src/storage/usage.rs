//! What the cache holds, per namespace (`handler usage`): entries, bytes, oldest and newest
//! entry. Each backend lists its entries and adds them up here, one at a time, so memory stays
//! the same whatever the number of entries. Turborepo artifacts are rows of their own
//! (`turbo:org`, `turbo:team:NAME`), apart from the Nx entries of the same team.
//!
//! What usage cannot show is how much a cache saved: that is a count of hits, and storage holds
//! entries, not hits. `/metrics` (`nx_cache_turbo_time_saved_ms_total`, from the events turbo
//! reports) and the request log (the workbook) show it.
//!
//! Entries of the deprecated `@nx/azure-cache` plugin, which this cache replaces, are blobs named
//! by a bare Nx hash at the container root (this cache's are under `org/` and `teams/`): they are
//! added up apart ([`Usage::legacy`]), outside the total, so an operator sees what is left to
//! delete after moving off the plugin. Nothing of this cache ever reads or serves them.

use std::collections::BTreeMap;
use std::fmt::Write;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::key::CacheKey;

/// One namespace's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceUsage {
    pub entries: u64,
    pub bytes: u64,
    pub oldest: Option<OffsetDateTime>,
    pub newest: Option<OffsetDateTime>,
}

impl NamespaceUsage {
    fn add(&mut self, bytes: u64, time: Option<OffsetDateTime>) {
        self.entries += 1;
        self.bytes += bytes;
        if let Some(time) = time {
            self.oldest = Some(self.oldest.map_or(time, |t| t.min(time)));
            self.newest = Some(self.newest.map_or(time, |t| t.max(time)));
        }
    }

    fn merge(&mut self, other: &NamespaceUsage) {
        self.entries += other.entries;
        self.bytes += other.bytes;
        for time in [other.oldest, other.newest].into_iter().flatten() {
            self.oldest = Some(self.oldest.map_or(time, |t| t.min(time)));
            self.newest = Some(self.newest.map_or(time, |t| t.max(time)));
        }
    }
}

/// The row of `@nx/azure-cache` entries in `handler usage`.
pub const LEGACY_ROW: &str = "legacy @nx/azure-cache";

/// The figures of every namespace (`org`, `team:NAME`), in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub namespaces: BTreeMap<String, NamespaceUsage>,
    /// Names under the cache's prefix that are no cache entry (probe blobs, strays).
    pub skipped: u64,
    /// Entries of the deprecated `@nx/azure-cache` plugin: bare Nx hashes at the container root.
    pub legacy: NamespaceUsage,
}

/// Longest Nx hash: a decimal `u64` has at most 20 digits.
const MAX_NX_HASH: usize = 20;

/// Whether a blob name (from the container root) is an entry of the `@nx/azure-cache` plugin:
/// a bare Nx hash, 1 to 20 decimal digits, no folder.
pub fn is_legacy_name(name: &str) -> bool {
    (1..=MAX_NX_HASH).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_digit())
}

impl Usage {
    /// Counts the object `name` (relative to the cache's root or blob prefix). Names that are
    /// not a cache entry (`org/{hash}`, `teams/{team}/{hash}`) are counted as skipped.
    pub fn add(&mut self, name: &str, bytes: u64, time: Option<OffsetDateTime>) {
        match namespace_of(name) {
            Some(namespace) => self
                .namespaces
                .entry(namespace)
                .or_default()
                .add(bytes, time),
            None => self.skipped += 1,
        }
    }

    /// Counts an `@nx/azure-cache` entry (see [`is_legacy_name`]).
    pub fn add_legacy(&mut self, bytes: u64, time: Option<OffsetDateTime>) {
        self.legacy.add(bytes, time);
    }

    /// This cache's entries, every namespace (legacy entries are not this cache's).
    pub fn total(&self) -> NamespaceUsage {
        let mut total = NamespaceUsage::default();
        for usage in self.namespaces.values() {
            total.merge(usage);
        }
        total
    }

    /// A table for people: one row per namespace and a total line.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let row = |out: &mut String, name: &str, u: &NamespaceUsage| {
            let _ = writeln!(
                out,
                "{name:<24} {:>10} {:>14} {:>12}  {:<20}  {:<20}",
                u.entries,
                u.bytes,
                human_bytes(u.bytes),
                time_text(u.oldest),
                time_text(u.newest)
            );
        };
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>14} {:>12}  {:<20}  {:<20}",
            "namespace", "entries", "bytes", "", "oldest", "newest"
        );
        for (name, usage) in &self.namespaces {
            row(&mut out, name, usage);
        }
        row(&mut out, "total", &self.total());
        if self.legacy.entries > 0 {
            row(&mut out, LEGACY_ROW, &self.legacy);
            let _ = writeln!(
                out,
                "({LEGACY_ROW}: entries of the deprecated plugin at the container root, not in the total; this cache never reads them: docs/migrate-from-nx-azure-cache.md says how to delete them)"
            );
        }
        out
    }

    /// JSON for scripts: `{"namespaces": [{"namespace", "entries", "bytes", "oldest", "newest"}],
    /// "total": {...}, "skipped": N, "legacy": {...}}` (times RFC 3339, or null; `legacy` is the
    /// `@nx/azure-cache` entries, not in the total).
    pub fn json(&self) -> String {
        let entry = |name: Option<&str>, u: &NamespaceUsage| {
            let mut value = serde_json::json!({
                "entries": u.entries,
                "bytes": u.bytes,
                "oldest": u.oldest.and_then(|t| t.format(&Rfc3339).ok()),
                "newest": u.newest.and_then(|t| t.format(&Rfc3339).ok()),
            });
            if let Some(name) = name {
                value["namespace"] = name.into();
            }
            value
        };
        serde_json::json!({
            "namespaces": self.namespaces.iter().map(|(n, u)| entry(Some(n), u)).collect::<Vec<_>>(),
            "total": entry(None, &self.total()),
            "skipped": self.skipped,
            "legacy": entry(None, &self.legacy),
        })
        .to_string()
    }
}

/// `org/123` → `org`, `teams/web/123` → `team:web`, `turbo/teams/web/abc` → `turbo:team:web`;
/// `None` for a name that is no cache entry.
pub fn namespace_of(name: &str) -> Option<String> {
    CacheKey::from_object_name(name).map(|key| key.label())
}

fn time_text(time: Option<OffsetDateTime>) -> String {
    time.and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

/// `1536` → `1.5 KiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn entries_add_up_per_namespace() {
        let mut usage = Usage::default();
        usage.add("org/1", 10, Some(datetime!(2026-11-01 10:00 UTC)));
        usage.add("org/2", 20, Some(datetime!(2026-11-03 10:00 UTC)));
        usage.add("teams/web/3", 5, Some(datetime!(2026-11-02 10:00 UTC)));
        usage.add(".nx-cache-probe", 0, None);
        usage.add("teams/Bad_Team/4", 1, None);
        usage.add("org/x/y", 1, None);
        usage.add("turbo/teams/web/0123456789abcdef", 7, None);
        usage.add("turbo/1", 1, None);
        assert_eq!(usage.skipped, 4);
        let turbo = usage.namespaces["turbo:team:web"];
        assert_eq!((turbo.entries, turbo.bytes), (1, 7));
        let org = usage.namespaces["org"];
        assert_eq!((org.entries, org.bytes), (2, 30));
        assert_eq!(org.oldest, Some(datetime!(2026-11-01 10:00 UTC)));
        assert_eq!(org.newest, Some(datetime!(2026-11-03 10:00 UTC)));
        let total = usage.total();
        assert_eq!((total.entries, total.bytes), (4, 42));
        assert_eq!(total.oldest, Some(datetime!(2026-11-01 10:00 UTC)));
        let table = usage.table();
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("team:web") && l.contains(" 5 ")),
            "{table}"
        );
        assert!(
            table.lines().last().unwrap().starts_with("total"),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&usage.json()).unwrap();
        assert_eq!(json["namespaces"][1]["namespace"], "team:web");
        assert_eq!(json["namespaces"][2]["namespace"], "turbo:team:web");
        assert_eq!(json["total"]["bytes"], 42);
        assert_eq!(json["total"]["oldest"], "2026-11-01T10:00:00Z");
    }

    #[test]
    fn legacy_entries_are_apart_from_the_total() {
        for name in ["1", "4809188201876735999", "18446744073709551615"] {
            assert!(is_legacy_name(name), "{name}");
        }
        for name in [
            "",
            "org/1",
            "1/2",
            "abc",
            "123456789012345678901",
            "12a",
            ".nx-cache-probe",
            "turbo/org/1234567890123456",
            "turbo/teams/web/1234567890123456",
        ] {
            assert!(!is_legacy_name(name), "{name}");
        }
        let mut usage = Usage::default();
        usage.add("org/1", 10, None);
        assert!(!usage.table().contains(LEGACY_ROW));
        usage.add_legacy(100, Some(datetime!(2026-01-01 0:00 UTC)));
        usage.add_legacy(200, Some(datetime!(2026-02-01 0:00 UTC)));
        assert_eq!(usage.total().bytes, 10);
        let table = usage.table();
        let row = table.lines().find(|l| l.starts_with(LEGACY_ROW)).unwrap();
        assert!(row.contains(" 2 ") && row.contains(" 300 "), "{row}");
        assert!(row.contains("2026-01-01T00:00:00Z"), "{row}");
        let json: serde_json::Value = serde_json::from_str(&usage.json()).unwrap();
        assert_eq!(json["legacy"]["entries"], 2);
        assert_eq!(json["total"]["entries"], 1);
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
