//! Counters of what the cache did, for operators: exposed in Prometheus text format at
//! `/metrics` (off unless `NX_CACHE_METRICS_TOKEN` is set, and then only for that bearer token)
//! and written to the log once a minute while they change, where Application Insights picks them up.
//!
//! Besides the totals, hits, misses and bytes are counted per namespace (`org`, `team:NAME`, and
//! `turbo:org`, `turbo:team:NAME` for Turborepo artifacts), and so are the cache events turbo
//! reports (`POST /v8/artifacts/events`: hits and misses, local and remote, and the time remote
//! hits saved, as turbo measured the tasks). Namespaces come from validated, authorized
//! requests only, and at most [`MAX_NAMESPACES`] are told apart (the rest add up under
//! `other`), so a flood of team names can neither grow memory nor the scrape.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::auth::exchange::Reason;

/// How often the counters are logged (when they changed).
pub const LOG_EVERY: Duration = Duration::from_secs(60);
/// Namespaces counted apart; later ones are counted as `other`.
pub const MAX_NAMESPACES: usize = 200;

/// The request counters: Prometheus name, help, and which outcome each counts.
const COUNTERS: [(&str, &str); 13] = [
    (
        "nx_cache_hits_total",
        "GETs of an entry that exists (streamed, or redirected after an exact check)",
    ),
    (
        "nx_cache_redirects_total",
        "GETs redirected to storage unchecked (NX_CACHE_HIT_CHECK=none): hit or miss unknown",
    ),
    ("nx_cache_misses_total", "GETs answered 404: no such entry"),
    ("nx_cache_stores_total", "entries stored"),
    (
        "nx_cache_conflicts_total",
        "uploads refused because the entry exists",
    ),
    (
        "nx_cache_denials_total",
        "requests refused by token scope or server mode",
    ),
    (
        "nx_cache_unauthorized_total",
        "requests without a valid token",
    ),
    ("nx_cache_too_large_total", "uploads over the size limit"),
    (
        "nx_cache_bad_requests_total",
        "malformed requests and broken uploads",
    ),
    (
        "nx_cache_storage_errors_total",
        "requests degraded by a storage failure",
    ),
    (
        "nx_cache_busy_total",
        "GETs answered as misses because too many downloads were streaming",
    ),
    (
        "nx_cache_expired_tokens_total",
        "requests with a token expired less than NX_CACHE_EXPIRED_GRACE ago (no access, no 401)",
    ),
    (
        "nx_cache_unconfigured_total",
        "requests answered while the configuration is refused: GETs as misses, uploads refused",
    ),
];

/// What became of a request, attached by the handler to its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The entry exists: streamed by the handler, or `redirected` to storage after a check.
    Hit {
        bytes: u64,
        redirected: bool,
    },
    /// Redirected to storage without a check (`NX_CACHE_HIT_CHECK=none`): hit or miss unknown.
    Redirect,
    Miss,
    Stored {
        bytes: u64,
    },
    Conflict,
    /// The token or the server mode does not allow this request.
    Denied,
    TooLarge,
    Unauthorized,
    BadRequest,
    StorageError,
    /// A GET answered as a miss because too many downloads were streaming at once.
    Busy,
    /// A token that expired less than `NX_CACHE_EXPIRED_GRACE` ago: a miss, or not stored.
    Expired,
    /// `POST /token` gave a token.
    Exchanged,
    /// `POST /token` refused.
    ExchangeRefused,
    /// Answered while the configuration is refused (under the Functions host): a miss, an
    /// upload refused, no token exchanged.
    Unconfigured,
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Hit { .. } => "hit",
            Outcome::Redirect => "redirect",
            Outcome::Miss => "miss",
            Outcome::Stored { .. } => "stored",
            Outcome::Conflict => "conflict",
            Outcome::Denied => "denied",
            Outcome::TooLarge => "too-large",
            Outcome::Unauthorized => "unauthorized",
            Outcome::BadRequest => "bad-request",
            Outcome::StorageError => "storage-error",
            Outcome::Busy => "busy",
            Outcome::Expired => "expired",
            Outcome::Exchanged => "exchanged",
            Outcome::ExchangeRefused => "exchange-refused",
            Outcome::Unconfigured => "unconfigured",
        }
    }

    pub fn bytes(&self) -> u64 {
        match self {
            Outcome::Hit { bytes, .. } | Outcome::Stored { bytes } => *bytes,
            _ => 0,
        }
    }
}

/// A figure a part of the server reports about itself (a store's size and evictions, the log's
/// dropped lines), appended to `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    pub name: &'static str,
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    pub value: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    counters: [AtomicU64; COUNTERS.len()],
    bytes_served: AtomicU64,
    bytes_stored: AtomicU64,
    namespaces: Mutex<BTreeMap<String, NamespaceCounts>>,
    /// Token exchanges by trust rule (rule names come from the policy: a bounded set).
    exchanges: Mutex<BTreeMap<String, u64>>,
    /// Refused exchanges by reason (a fixed set).
    refusals: Mutex<BTreeMap<Reason, u64>>,
    /// 1 while the handler serves without a configuration (it was refused at startup).
    configuration_refused: AtomicU64,
}

/// What one namespace saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceCounts {
    pub hits: u64,
    pub misses: u64,
    pub bytes_stored: u64,
    /// Bytes that went through the handler (embedded store, small entries and proxy mode on
    /// Azure); redirected hits are served by storage.
    pub bytes_served: u64,
    /// The cache events turbo reported for this namespace.
    pub turbo: TurboEvents,
}

/// Cache events turbo reports (`POST /v8/artifacts/events`), added up: what its runs found in
/// their local and remote caches, and the time the remote hits saved (the durations turbo sent
/// with them, in milliseconds).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TurboEvents {
    pub remote_hits: u64,
    pub remote_misses: u64,
    pub local_hits: u64,
    pub local_misses: u64,
    pub time_saved_ms: u64,
}

impl TurboEvents {
    fn add(&mut self, other: &TurboEvents) {
        self.remote_hits += other.remote_hits;
        self.remote_misses += other.remote_misses;
        self.local_hits += other.local_hits;
        self.local_misses += other.local_misses;
        self.time_saved_ms = self.time_saved_ms.saturating_add(other.time_saved_ms);
    }

    fn is_empty(&self) -> bool {
        *self == TurboEvents::default()
    }
}

impl Metrics {
    /// Counts one finished request. `namespace` is `org` or `team:NAME` for cache requests.
    pub fn record(&self, outcome: Outcome, namespace: Option<&str>) {
        let index = match outcome {
            Outcome::Hit { .. } => 0,
            Outcome::Redirect => 1,
            Outcome::Miss => 2,
            Outcome::Stored { .. } => 3,
            Outcome::Conflict => 4,
            Outcome::Denied => 5,
            Outcome::Unauthorized => 6,
            Outcome::TooLarge => 7,
            Outcome::BadRequest => 8,
            Outcome::StorageError => 9,
            Outcome::Busy => 10,
            Outcome::Expired => 11,
            Outcome::Unconfigured => 12,
            // Counted by rule and by reason instead (`exchanged`, `exchange_refused`).
            Outcome::Exchanged | Outcome::ExchangeRefused => return,
        };
        self.counters[index].fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Hit {
                bytes,
                redirected: false,
            } => {
                self.bytes_served.fetch_add(bytes, Ordering::Relaxed);
            }
            Outcome::Stored { bytes } => {
                self.bytes_stored.fetch_add(bytes, Ordering::Relaxed);
            }
            _ => {}
        }
        let Some(namespace) = namespace else { return };
        let update = |counts: &mut NamespaceCounts| match outcome {
            Outcome::Hit { bytes, redirected } => {
                counts.hits += 1;
                if !redirected {
                    counts.bytes_served += bytes;
                }
            }
            Outcome::Miss => counts.misses += 1,
            Outcome::Stored { bytes } => counts.bytes_stored += bytes,
            _ => {}
        };
        if matches!(
            outcome,
            Outcome::Hit { .. } | Outcome::Miss | Outcome::Stored { .. }
        ) {
            self.in_namespace(namespace, update);
        }
    }

    /// Adds the cache events turbo reported for `namespace` (one the request's token covers).
    pub fn turbo_events(&self, namespace: &str, events: &TurboEvents) {
        self.in_namespace(namespace, |counts| counts.turbo.add(events));
    }

    /// Updates `namespace`'s counts, or `other`'s once [`MAX_NAMESPACES`] are told apart.
    fn in_namespace(&self, namespace: &str, update: impl FnOnce(&mut NamespaceCounts)) {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        let key = if namespaces.contains_key(namespace) || namespaces.len() < MAX_NAMESPACES {
            namespace
        } else {
            "other"
        };
        update(namespaces.entry(key.to_owned()).or_default());
    }

    /// Counts a token exchange under `rule`.
    pub fn exchanged(&self, rule: &str) {
        let mut by_rule = self.exchanges.lock().unwrap_or_else(|e| e.into_inner());
        *by_rule.entry(rule.to_owned()).or_default() += 1;
    }

    /// Counts a refused token exchange.
    pub fn exchange_refused(&self, reason: Reason) {
        let mut by_reason = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        *by_reason.entry(reason).or_default() += 1;
    }

    /// One namespace's counts so far.
    pub fn namespace(&self, namespace: &str) -> NamespaceCounts {
        let namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        namespaces.get(namespace).copied().unwrap_or_default()
    }

    fn value(&self, index: usize) -> u64 {
        self.counters[index].load(Ordering::Relaxed)
    }

    /// The counters in Prometheus text exposition format, followed by the store's own figures.
    pub fn prometheus(&self, figures: &[Figure]) -> String {
        let mut out = String::new();
        for (index, (name, help)) in COUNTERS.iter().enumerate() {
            counter(&mut out, name, help, &[("", self.value(index))]);
        }
        counter(
            &mut out,
            "nx_cache_bytes_served_total",
            "bytes streamed to clients by the handler",
            &[("", self.bytes_served.load(Ordering::Relaxed))],
        );
        counter(
            &mut out,
            "nx_cache_bytes_stored_total",
            "bytes of stored entries",
            &[("", self.bytes_stored.load(Ordering::Relaxed))],
        );
        let namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        let labelled = |field: fn(&NamespaceCounts) -> u64| {
            namespaces
                .iter()
                .map(|(ns, counts)| (format!("namespace=\"{ns}\""), field(counts)))
                .collect::<Vec<_>>()
        };
        for (name, help, field) in [
            (
                "nx_cache_namespace_hits_total",
                "hits by namespace (org, team:NAME)",
                (|c: &NamespaceCounts| c.hits) as fn(&NamespaceCounts) -> u64,
            ),
            (
                "nx_cache_namespace_misses_total",
                "misses by namespace",
                |c: &NamespaceCounts| c.misses,
            ),
            (
                "nx_cache_namespace_bytes_stored_total",
                "bytes stored by namespace",
                |c: &NamespaceCounts| c.bytes_stored,
            ),
            (
                "nx_cache_namespace_bytes_served_total",
                "bytes sent by the handler by namespace (embedded store; on Azure small entries and proxy mode)",
                |c: &NamespaceCounts| c.bytes_served,
            ),
        ] {
            let values = labelled(field);
            let values: Vec<(&str, u64)> = values.iter().map(|(l, v)| (l.as_str(), *v)).collect();
            counter(&mut out, name, help, &values);
        }
        turbo_counters(&mut out, &namespaces);
        drop(namespaces);
        let exchanges = self.exchanges.lock().unwrap_or_else(|e| e.into_inner());
        let values: Vec<(String, u64)> = exchanges
            .iter()
            .map(|(rule, n)| (format!("rule=\"{rule}\""), *n))
            .collect();
        drop(exchanges);
        let values: Vec<(&str, u64)> = values.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            &mut out,
            "nx_cache_token_exchanges_total",
            "tokens given by POST /token, by trust rule",
            &values,
        );
        let refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let values: Vec<(String, u64)> = Reason::ALL
            .iter()
            .map(|r| {
                let n = refusals.get(r).copied().unwrap_or(0);
                (format!("reason=\"{}\"", r.as_str()), n)
            })
            .collect();
        drop(refusals);
        let values: Vec<(&str, u64)> = values.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            &mut out,
            "nx_cache_token_exchange_refusals_total",
            "exchanges refused by POST /token, by reason",
            &values,
        );
        let refused = Figure {
            name: "nx_cache_configuration_refused",
            help: "1 when the configuration was refused at startup and the handler answers misses (its log says why)",
            kind: "gauge",
            value: self.configuration_refused.load(Ordering::Relaxed),
        };
        for figure in std::iter::once(&refused).chain(figures) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}",
                name = figure.name,
                help = figure.help,
                kind = figure.kind,
                value = figure.value
            );
        }
        out
    }

    /// Marks the handler as serving without a configuration (`nx_cache_configuration_refused`).
    pub fn set_configuration_refused(&self) {
        self.configuration_refused.store(1, Ordering::Relaxed);
    }

    /// Sum of all request counters, to tell whether anything happened since the last log line.
    fn requests(&self) -> u64 {
        (0..COUNTERS.len()).map(|i| self.value(i)).sum()
    }

    /// Logs the counters every [`LOG_EVERY`] while requests come in.
    pub fn spawn_logger(self: std::sync::Arc<Self>) {
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(LOG_EVERY).await;
                let now = self.requests();
                if now != last {
                    last = now;
                    tracing::info!(
                        hits = self.value(0),
                        redirects = self.value(1),
                        misses = self.value(2),
                        stores = self.value(3),
                        conflicts = self.value(4),
                        denials = self.value(5),
                        unauthorized = self.value(6),
                        too_large = self.value(7),
                        bad_requests = self.value(8),
                        storage_errors = self.value(9),
                        busy = self.value(10),
                        expired = self.value(11),
                        bytes_served = self.bytes_served.load(Ordering::Relaxed),
                        bytes_stored = self.bytes_stored.load(Ordering::Relaxed),
                        "metrics"
                    );
                }
            }
        });
    }
}

/// turbo's events by namespace (only namespaces that reported any): the four kinds of event,
/// and the time remote hits saved.
fn turbo_counters(out: &mut String, namespaces: &BTreeMap<String, NamespaceCounts>) {
    let reporting: Vec<(&String, &TurboEvents)> = namespaces
        .iter()
        .map(|(ns, counts)| (ns, &counts.turbo))
        .filter(|(_, events)| !events.is_empty())
        .collect();
    let mut events = Vec::new();
    for (ns, counts) in &reporting {
        for (source, event, value) in [
            ("remote", "hit", counts.remote_hits),
            ("remote", "miss", counts.remote_misses),
            ("local", "hit", counts.local_hits),
            ("local", "miss", counts.local_misses),
        ] {
            events.push((
                format!("namespace=\"{ns}\",source=\"{source}\",event=\"{event}\""),
                value,
            ));
        }
    }
    let events: Vec<(&str, u64)> = events.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    counter(
        out,
        "nx_cache_turbo_events_total",
        "cache events turbo reported (POST /v8/artifacts/events), by namespace, source and event",
        &events,
    );
    let saved: Vec<(String, u64)> = reporting
        .iter()
        .map(|(ns, counts)| (format!("namespace=\"{ns}\""), counts.time_saved_ms))
        .collect();
    let saved: Vec<(&str, u64)> = saved.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    counter(
        out,
        "nx_cache_turbo_time_saved_ms_total",
        "time saved by remote hits, as turbo reported it (the sum of the durations of its REMOTE HIT events), in milliseconds, by namespace",
        &saved,
    );
}

/// Writes one counter family: `values` are (labels, value), labels empty for an unlabelled one.
fn counter(out: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, value) in values {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Compares a presented bearer token with the configured one in constant time. Both are hashed
/// first, so neither the content nor the length of the expected token shows in the timing.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let presented = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    presented.ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(bytes: u64) -> Outcome {
        Outcome::Hit {
            bytes,
            redirected: false,
        }
    }

    #[test]
    fn outcomes_land_in_their_counters() {
        let metrics = Metrics::default();
        metrics.record(hit(10), Some("org"));
        metrics.record(hit(5), Some("team:web"));
        metrics.record(
            Outcome::Hit {
                bytes: 1000,
                redirected: true,
            },
            Some("team:web"),
        );
        metrics.record(Outcome::Stored { bytes: 7 }, Some("team:web"));
        metrics.record(Outcome::Miss, Some("team:web"));
        metrics.record(Outcome::StorageError, Some("team:web"));
        let text = metrics.prometheus(&[Figure {
            name: "nx_cache_store_bytes",
            help: "bytes in the store",
            kind: "gauge",
            value: 42,
        }]);
        for line in [
            "nx_cache_hits_total 3",
            "nx_cache_bytes_served_total 15",
            "nx_cache_stores_total 1",
            "nx_cache_bytes_stored_total 7",
            "nx_cache_misses_total 1",
            "nx_cache_storage_errors_total 1",
            "nx_cache_conflicts_total 0",
            "nx_cache_namespace_hits_total{namespace=\"org\"} 1",
            "nx_cache_namespace_hits_total{namespace=\"team:web\"} 2",
            "nx_cache_namespace_misses_total{namespace=\"team:web\"} 1",
            "nx_cache_namespace_bytes_stored_total{namespace=\"team:web\"} 7",
            "nx_cache_namespace_bytes_served_total{namespace=\"team:web\"} 5",
            "# TYPE nx_cache_store_bytes gauge",
            "nx_cache_store_bytes 42",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert_eq!(metrics.requests(), 6);
    }

    #[test]
    fn a_flood_of_namespaces_is_bounded() {
        let metrics = Metrics::default();
        for i in 0..(MAX_NAMESPACES + 500) {
            metrics.record(Outcome::Miss, Some(&format!("team:t{i}")));
        }
        let text = metrics.prometheus(&[]);
        let labelled = text
            .lines()
            .filter(|l| l.starts_with("nx_cache_namespace_misses_total{"))
            .count();
        assert_eq!(
            labelled,
            MAX_NAMESPACES + 1,
            "{MAX_NAMESPACES} namespaces and other"
        );
        assert_eq!(metrics.namespace("other").misses, 500);
        // A namespace already counted keeps its own line.
        metrics.record(Outcome::Miss, Some("team:t0"));
        assert_eq!(metrics.namespace("team:t0").misses, 2);
    }

    #[test]
    fn turbo_events_add_up_per_namespace_with_the_time_saved() {
        let metrics = Metrics::default();
        let batch = TurboEvents {
            remote_hits: 2,
            remote_misses: 1,
            local_hits: 3,
            local_misses: 0,
            time_saved_ms: 1500,
        };
        metrics.turbo_events("turbo:team:web", &batch);
        metrics.turbo_events("turbo:team:web", &batch);
        metrics.record(hit(10), Some("org"));
        let text = metrics.prometheus(&[]);
        for line in [
            "nx_cache_turbo_events_total{namespace=\"turbo:team:web\",source=\"remote\",event=\"hit\"} 4",
            "nx_cache_turbo_events_total{namespace=\"turbo:team:web\",source=\"remote\",event=\"miss\"} 2",
            "nx_cache_turbo_events_total{namespace=\"turbo:team:web\",source=\"local\",event=\"hit\"} 6",
            "nx_cache_turbo_time_saved_ms_total{namespace=\"turbo:team:web\"} 3000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(
            !text.contains("nx_cache_turbo_time_saved_ms_total{namespace=\"org\"}"),
            "a namespace without events has no event lines"
        );
        // The events' namespaces are bounded with the others.
        for i in 0..(MAX_NAMESPACES + 10) {
            metrics.turbo_events(&format!("turbo:team:t{i}"), &batch);
        }
        assert_eq!(metrics.namespace("other").turbo.remote_hits, 2 * 12);
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("", "abc"));
    }
}
