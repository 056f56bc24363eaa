//! The retention section: how much the embedded store keeps (`NX_CACHE_MAX_SIZE`,
//! `NX_CACHE_MAX_AGE`). Off by default. On Azure, retention is the storage account's lifecycle
//! management, so the two settings are refused there. The eviction itself is in
//! `storage::local::retention`.

use std::time::Duration;

use super::ConfigError;
use super::parse::Env;
use super::storage::Backend;

/// The retention settings of the embedded store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionConfig {
    /// `NX_CACHE_MAX_SIZE`: the store is kept under this many bytes.
    pub max_size: Option<u64>,
    /// `NX_CACHE_MAX_AGE`: entries not read (or written) for this long are deleted.
    pub max_age: Option<Duration>,
}

impl RetentionConfig {
    pub fn is_on(&self) -> bool {
        self.max_size.is_some() || self.max_age.is_some()
    }
}

/// The retention section: limits of the embedded store (Azure has lifecycle management).
pub fn load_retention(env: &Env, backend: &Backend) -> Result<RetentionConfig, ConfigError> {
    let max_size = env.size("NX_CACHE_MAX_SIZE")?;
    let max_age = env.optional_duration("NX_CACHE_MAX_AGE")?;
    if max_age.is_some_and(|age| age < Duration::from_secs(60)) {
        return Err(ConfigError::new("NX_CACHE_MAX_AGE", "must be at least 1m"));
    }
    let retention = RetentionConfig { max_size, max_age };
    if retention.is_on() && matches!(backend, Backend::Azure(_)) {
        let setting = if max_size.is_some() {
            "NX_CACHE_MAX_SIZE"
        } else {
            "NX_CACHE_MAX_AGE"
        };
        return Err(ConfigError::new(
            setting,
            "applies to the embedded store only; on Azure, retention is the storage account's lifecycle management (retentionDays in infra/main.bicep)",
        ));
    }
    Ok(retention)
}

#[cfg(test)]
mod tests {
    use crate::config::Flags;
    use crate::config::tests::load;
    use std::time::Duration;

    #[test]
    fn retention_is_for_the_embedded_store() {
        let config = load(
            &[("NX_CACHE_MAX_SIZE", "50G"), ("NX_CACHE_MAX_AGE", "30d")],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(config.retention.max_size, Some(50 << 30));
        assert_eq!(
            config.retention.max_age,
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        let err = load(
            &[
                ("NX_CACHE_MAX_SIZE", "50G"),
                ("AZURE_STORAGE_ACCOUNT", "acme"),
                ("AZURE_STORAGE_CONTAINER", "nx-cache"),
            ],
            Flags::default(),
        )
        .unwrap_err();
        assert_eq!(err.setting, "NX_CACHE_MAX_SIZE");
        assert!(err.problem.contains("lifecycle"), "{err}");
    }
}
