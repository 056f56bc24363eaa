//! Counters of what the cache did, for operators: exposed in Prometheus text format at
//! `/metrics` (off unless `NX_CACHE_METRICS_TOKEN` is set, and then only for that bearer token)
//! and written to the log once a minute while they change, where Application Insights picks them up.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::auth::exchange::Reason;
use crate::telemetry::Outcome;

/// How often the counters are logged (when they changed).
pub const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Metrics {
    hits: AtomicU64,
    redirects: AtomicU64,
    misses: AtomicU64,
    stores: AtomicU64,
    conflicts: AtomicU64,
    denials: AtomicU64,
    unauthorized: AtomicU64,
    too_large: AtomicU64,
    bad_requests: AtomicU64,
    storage_errors: AtomicU64,
    busy: AtomicU64,
    expired: AtomicU64,
    bytes_served: AtomicU64,
    bytes_stored: AtomicU64,
    /// Token exchanges by trust rule (rule names come from the policy: a bounded set).
    exchanges: Mutex<BTreeMap<String, u64>>,
    /// Refused exchanges by reason (a fixed set).
    refusals: Mutex<BTreeMap<Reason, u64>>,
}

impl Metrics {
    /// Counts one finished request.
    pub fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Hit { bytes } => {
                self.bytes_served.fetch_add(bytes, Ordering::Relaxed);
                &self.hits
            }
            Outcome::Redirect => &self.redirects,
            Outcome::Miss => &self.misses,
            Outcome::Stored { bytes } => {
                self.bytes_stored.fetch_add(bytes, Ordering::Relaxed);
                &self.stores
            }
            Outcome::Conflict => &self.conflicts,
            Outcome::Denied => &self.denials,
            Outcome::Unauthorized => &self.unauthorized,
            Outcome::TooLarge => &self.too_large,
            Outcome::BadRequest => &self.bad_requests,
            Outcome::StorageError => &self.storage_errors,
            Outcome::Busy => &self.busy,
            Outcome::Expired => &self.expired,
            // Counted by rule and by reason instead (`exchanged`, `exchange_refused`).
            Outcome::Exchanged | Outcome::ExchangeRefused => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
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

    fn values(&self) -> [(&'static str, &'static str, u64); 14] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            (
                "nx_cache_hits_total",
                "GETs answered with the entry's bytes",
                get(&self.hits),
            ),
            (
                "nx_cache_redirects_total",
                "GETs answered with a redirect to storage",
                get(&self.redirects),
            ),
            (
                "nx_cache_misses_total",
                "GETs answered 404",
                get(&self.misses),
            ),
            ("nx_cache_stores_total", "entries stored", get(&self.stores)),
            (
                "nx_cache_conflicts_total",
                "uploads refused because the entry exists",
                get(&self.conflicts),
            ),
            (
                "nx_cache_denials_total",
                "requests refused by token scope or server mode",
                get(&self.denials),
            ),
            (
                "nx_cache_unauthorized_total",
                "requests without a valid token",
                get(&self.unauthorized),
            ),
            (
                "nx_cache_too_large_total",
                "uploads over the size limit",
                get(&self.too_large),
            ),
            (
                "nx_cache_bad_requests_total",
                "malformed requests and broken uploads",
                get(&self.bad_requests),
            ),
            (
                "nx_cache_storage_errors_total",
                "requests degraded by a storage failure",
                get(&self.storage_errors),
            ),
            (
                "nx_cache_busy_total",
                "GETs answered as misses because too many downloads were streaming",
                get(&self.busy),
            ),
            (
                "nx_cache_expired_tokens_total",
                "requests with a token expired less than NX_CACHE_EXPIRED_GRACE ago (no access, no 401)",
                get(&self.expired),
            ),
            (
                "nx_cache_bytes_served_total",
                "bytes streamed to clients",
                get(&self.bytes_served),
            ),
            (
                "nx_cache_bytes_stored_total",
                "bytes of stored entries",
                get(&self.bytes_stored),
            ),
        ]
    }

    /// The counters in Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in self.values() {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let exchanges = self.exchanges.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str(
            "# HELP nx_cache_token_exchanges_total tokens given by POST /token, by trust rule\n",
        );
        out.push_str("# TYPE nx_cache_token_exchanges_total counter\n");
        for (rule, count) in exchanges.iter() {
            let _ = writeln!(
                out,
                "nx_cache_token_exchanges_total{{rule=\"{rule}\"}} {count}"
            );
        }
        drop(exchanges);
        let refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP nx_cache_token_exchange_refusals_total exchanges refused by POST /token, by reason\n");
        out.push_str("# TYPE nx_cache_token_exchange_refusals_total counter\n");
        for reason in Reason::ALL {
            let count = refusals.get(&reason).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "nx_cache_token_exchange_refusals_total{{reason=\"{}\"}} {count}",
                reason.as_str()
            );
        }
        out
    }

    /// Sum of all request counters, to tell whether anything happened since the last log line.
    fn requests(&self) -> u64 {
        self.values().iter().take(12).map(|(_, _, v)| v).sum()
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
                    let v = self.values();
                    tracing::info!(
                        hits = v[0].2,
                        redirects = v[1].2,
                        misses = v[2].2,
                        stores = v[3].2,
                        conflicts = v[4].2,
                        denials = v[5].2,
                        unauthorized = v[6].2,
                        too_large = v[7].2,
                        bad_requests = v[8].2,
                        storage_errors = v[9].2,
                        busy = v[10].2,
                        expired = v[11].2,
                        bytes_served = v[12].2,
                        bytes_stored = v[13].2,
                        "metrics"
                    );
                }
            }
        });
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

    #[test]
    fn outcomes_land_in_their_counters() {
        let metrics = Metrics::default();
        metrics.record(Outcome::Hit { bytes: 10 });
        metrics.record(Outcome::Hit { bytes: 5 });
        metrics.record(Outcome::Stored { bytes: 7 });
        metrics.record(Outcome::Miss);
        metrics.record(Outcome::StorageError);
        let text = metrics.prometheus();
        for line in [
            "nx_cache_hits_total 2",
            "nx_cache_bytes_served_total 15",
            "nx_cache_stores_total 1",
            "nx_cache_bytes_stored_total 7",
            "nx_cache_misses_total 1",
            "nx_cache_storage_errors_total 1",
            "nx_cache_conflicts_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert_eq!(metrics.requests(), 5);
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("", "abc"));
    }
}
