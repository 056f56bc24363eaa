//! The downloads section: how the Azure backend answers a hit (`NX_CACHE_DOWNLOAD`). In auto
//! mode (the default) an entry of at most `NX_CACHE_INLINE_MAX` bytes is read by the handler and
//! answered with its bytes, a larger one is redirected to storage; in proxy mode a larger one is
//! streamed through the handler instead. The reads themselves (retries, single flight, the
//! memory copy) are in `storage::inline`; the numbers live here, beside their settings.
//!
//! The four settings mean something only in auto and proxy modes on Azure, so elsewhere they are
//! refused: an operator who sets `NX_CACHE_INLINE_MAX` with `NX_CACHE_DOWNLOAD=redirect` expects
//! small entries inline and would not get them.

use std::time::Duration;

use super::ConfigError;
use super::parse::{Env, parse_size};

/// How GET hits reach the client from Azure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Download {
    /// By size (the default): an entry of at most `NX_CACHE_INLINE_MAX` bytes is read whole by
    /// the handler and answered with its bytes, a larger one is redirected as in `Redirect`.
    Auto,
    /// `307` to a short-lived read-only SAS URL for every hit: bytes go straight from storage to
    /// the client.
    Redirect,
    /// Every hit through the handler, for clients that cannot reach the storage account: an
    /// entry of at most `NX_CACHE_INLINE_MAX` bytes read whole as in `Auto`, a larger one
    /// streamed.
    Proxy,
}

/// Default largest entry answered inline: 1 MiB (see docs/benchmarks.md, "Downloads by size").
pub const DEFAULT_INLINE_MAX: u64 = 1 << 20;
/// The smallest `NX_CACHE_INLINE_MAX` accepted: below it, most entries of a small library's
/// build would go back to redirects.
pub const MIN_INLINE_MAX: u64 = 256 << 10;
/// The largest `NX_CACHE_INLINE_MAX` accepted: an inline answer is held whole in memory, and
/// above one upload block (4 MiB) a request would hold more than an upload does, which the Flex
/// Consumption sizing in `infra/` counts on.
pub const MAX_INLINE_MAX: u64 = 4 << 20;

/// How small entries are answered (`NX_CACHE_DOWNLOAD=auto` and `proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inline {
    /// Entries of at most this many bytes are read whole by the handler and answered `200`
    /// (`NX_CACHE_INLINE_MAX`); larger ones get the `307` (streamed in proxy mode).
    pub max: u64,
    /// Time allowed to read one entry, retries included (`NX_CACHE_INLINE_BUDGET`); past it the
    /// GET is a miss.
    pub budget: Duration,
    /// Bytes of small entries held outside the memory copy at once: reads in progress and answers
    /// not yet sent (`NX_CACHE_INLINE_MEMORY`). Past it a small entry is answered as a large one
    /// (redirected, or streamed in proxy mode).
    pub memory: u64,
    /// Size of the memory copy of recently read small entries; 0 turns it off
    /// (`NX_CACHE_MEMORY_COPY`).
    pub copy: u64,
}

impl Default for Inline {
    fn default() -> Self {
        Self {
            max: DEFAULT_INLINE_MAX,
            budget: Duration::from_secs(5),
            memory: 64 << 20,
            copy: 32 << 20,
        }
    }
}

/// The settings of this section, for the refusals below.
const SETTINGS: [&str; 4] = [
    "NX_CACHE_INLINE_MAX",
    "NX_CACHE_INLINE_BUDGET",
    "NX_CACHE_INLINE_MEMORY",
    "NX_CACHE_MEMORY_COPY",
];

/// The section for an Azure backend that downloads by `download`.
pub fn load_inline(env: &Env, download: Download) -> Result<Inline, ConfigError> {
    if download == Download::Redirect {
        refuse_any(
            env,
            "applies only with NX_CACHE_DOWNLOAD=auto (the default) or proxy, not redirect",
        )?;
        return Ok(Inline::default());
    }
    let defaults = Inline::default();
    let max = env.size("NX_CACHE_INLINE_MAX")?.unwrap_or(defaults.max);
    if !(MIN_INLINE_MAX..=MAX_INLINE_MAX).contains(&max) {
        return Err(ConfigError::new(
            "NX_CACHE_INLINE_MAX",
            "must be between 256K and 4M: smaller sends most small entries back to redirects, larger holds more memory per request than an upload does",
        ));
    }
    let budget = env.duration("NX_CACHE_INLINE_BUDGET", defaults.budget)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(30)).contains(&budget) {
        return Err(ConfigError::new(
            "NX_CACHE_INLINE_BUDGET",
            "must be between 1s and 30s: the client waits that long for a miss when storage fails",
        ));
    }
    let memory = env
        .size("NX_CACHE_INLINE_MEMORY")?
        .unwrap_or(defaults.memory);
    if memory < max {
        return Err(ConfigError::new(
            "NX_CACHE_INLINE_MEMORY",
            format!(
                "{memory} bytes is less than NX_CACHE_INLINE_MAX ({max}): no entry of the largest inline size could ever be read"
            ),
        ));
    }
    if memory > 4 << 30 {
        return Err(ConfigError::new(
            "NX_CACHE_INLINE_MEMORY",
            "must be at most 4G",
        ));
    }
    let copy = match env.get("NX_CACHE_MEMORY_COPY") {
        None => defaults.copy,
        Some(raw) if raw.trim() == "0" => 0,
        Some(raw) => {
            parse_size(raw.trim()).map_err(|e| ConfigError::new("NX_CACHE_MEMORY_COPY", e))?
        }
    };
    Ok(Inline {
        max,
        budget,
        memory,
        copy,
    })
}

/// The embedded store answers every hit itself: the section's settings are refused there.
pub fn refuse_on_embedded(env: &Env) -> Result<(), ConfigError> {
    refuse_any(
        env,
        "applies to the Azure backend only (NX_CACHE_DOWNLOAD=auto); the embedded store answers every hit itself",
    )
}

fn refuse_any(env: &Env, why: &str) -> Result<(), ConfigError> {
    match SETTINGS.into_iter().find(|name| env.get(name).is_some()) {
        Some(setting) => Err(ConfigError::new(setting, why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::load;
    use crate::config::{Backend, Flags};

    const AZURE: [(&str, &str); 2] = [
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            "UseDevelopmentStorage=true",
        ),
        ("AZURE_STORAGE_CONTAINER", "nx-cache"),
    ];

    fn azure(extra: &[(&str, &str)]) -> Result<crate::config::AzureConfig, ConfigError> {
        let vars = [&AZURE[..], extra].concat();
        match load(&vars, Flags::default())?.backend {
            Backend::Azure(azure) => Ok(*azure),
            Backend::Local => panic!("azure expected"),
        }
    }

    #[test]
    fn auto_is_the_default_with_its_numbers() {
        let config = azure(&[]).unwrap();
        assert_eq!(config.download, Download::Auto);
        assert_eq!(config.inline, Inline::default());
        assert_eq!(config.inline.max, 1 << 20);
        let config = azure(&[
            ("NX_CACHE_INLINE_MAX", "256K"),
            ("NX_CACHE_INLINE_BUDGET", "2s"),
            ("NX_CACHE_INLINE_MEMORY", "1M"),
            ("NX_CACHE_MEMORY_COPY", "0"),
        ])
        .unwrap();
        assert_eq!(
            config.inline,
            Inline {
                max: 256 << 10,
                budget: Duration::from_secs(2),
                memory: 1 << 20,
                copy: 0,
            }
        );
    }

    #[test]
    fn mistakes_name_the_setting() {
        for (name, value) in [
            ("NX_CACHE_INLINE_MAX", "100K"),
            ("NX_CACHE_INLINE_MAX", "8M"),
            ("NX_CACHE_INLINE_MAX", "big"),
            ("NX_CACHE_INLINE_BUDGET", "1m"),
            ("NX_CACHE_INLINE_BUDGET", "soon"),
            ("NX_CACHE_INLINE_MEMORY", "512K"),
            ("NX_CACHE_INLINE_MEMORY", "5G"),
            ("NX_CACHE_MEMORY_COPY", "-1"),
        ] {
            let err = azure(&[(name, value)]).unwrap_err();
            assert_eq!(err.setting, name, "{name}={value}: {err}");
        }
    }

    #[test]
    fn the_settings_are_refused_where_they_mean_nothing() {
        let err = azure(&[
            ("NX_CACHE_DOWNLOAD", "redirect"),
            ("NX_CACHE_MEMORY_COPY", "64M"),
        ])
        .unwrap_err();
        assert_eq!(err.setting, "NX_CACHE_MEMORY_COPY");
        assert!(err.problem.contains("not redirect"), "{err}");
        assert!(azure(&[("NX_CACHE_DOWNLOAD", "redirect")]).is_ok());
        // Proxy mode reads small entries whole too.
        let config = azure(&[
            ("NX_CACHE_DOWNLOAD", "proxy"),
            ("NX_CACHE_INLINE_MAX", "2M"),
        ])
        .unwrap();
        assert_eq!(config.inline.max, 2 << 20);
        let err = load(&[("NX_CACHE_INLINE_MAX", "1M")], Flags::default()).unwrap_err();
        assert_eq!(err.setting, "NX_CACHE_INLINE_MAX");
        assert!(err.problem.contains("embedded store"), "{err}");
    }
}
