//! The user delegation key: fetched with the handler's Entra token, cached, renewed in the
//! background well before it expires, and used to sign read-only download URLs
//! (user-delegation SAS, via the official `azure_storage_sas` crate). Never fetched per request.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use azure_core::http::RequestContent;
use azure_storage_blob::BlobServiceClient;
use azure_storage_blob::models::KeyInfo;
use azure_storage_common::models::UserDelegationKey;
use azure_storage_sas::{SasBuilder, SasProtocol};
use time::OffsetDateTime;

use super::StoreError;
use super::sas::{BlobSas, Protocols};

/// How long a requested key is valid (Azure allows up to 7 days).
const KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Renew when less than this is left, so a fresh key is always in hand.
const RENEW_MARGIN: Duration = Duration::from_secs(6 * 3600);
/// Pause before retrying a failed renewal.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How a renewal's error begins when storage answered with an HTTP status.
const ANSWERED: &str = "Azure answered";

/// Whether a renewal's error is storage refusing the caller (`403`): the one case a role fixes.
pub fn is_refusal(error: &str) -> bool {
    error == format!("{ANSWERED} 403")
}

pub struct DelegationKeys {
    service: Arc<BlobServiceClient>,
    timeout: Duration,
    current: RwLock<Option<UserDelegationKey>>,
}

impl DelegationKeys {
    pub fn new(service: Arc<BlobServiceClient>, timeout: Duration) -> Self {
        Self {
            service,
            timeout,
            current: RwLock::new(None),
        }
    }

    /// Gets a key unless the cached one has more than [`RENEW_MARGIN`] left.
    pub async fn ensure_fresh(&self) -> Result<(), String> {
        if self.time_left().is_some_and(|left| left > RENEW_MARGIN) {
            return Ok(());
        }
        self.renew().await
    }

    /// Gets a new key now, whatever the cached one's expiry: the cached one was refused.
    pub async fn replace(&self) -> Result<(), String> {
        self.renew().await
    }

    fn time_left(&self) -> Option<Duration> {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        let expiry = guard.as_ref()?.signed_expiry?;
        let left = expiry - OffsetDateTime::now_utc();
        left.try_into().ok()
    }

    async fn renew(&self) -> Result<(), String> {
        let now = OffsetDateTime::now_utc();
        let info = KeyInfo {
            start: Some(now - Duration::from_secs(5 * 60)),
            expiry: Some(now + KEY_LIFETIME),
            ..Default::default()
        };
        let content = RequestContent::try_from(info).map_err(|e| e.to_string())?;
        let call = self.service.get_user_delegation_key(content, None);
        let response = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|e| match e.http_status() {
                Some(status) => format!("{ANSWERED} {status}"),
                None => super::with_causes(&e),
            })?;
        let key = response.into_model().map_err(|e| e.to_string())?;
        tracing::info!(expires = ?key.signed_expiry, "user delegation key obtained");
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
        Ok(())
    }

    /// Keeps the key fresh for as long as the process runs.
    pub fn spawn_renewal(self: Arc<Self>) {
        tokio::spawn(async move {
            loop {
                let wait = match self.ensure_fresh().await {
                    Ok(()) => self
                        .time_left()
                        .map(|left| left.saturating_sub(RENEW_MARGIN) + Duration::from_secs(1))
                        .unwrap_or(RETRY_AFTER),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot renew the user delegation key; retrying");
                        RETRY_AFTER
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// Signs a read-only SAS for one blob with the cached key; the query string is returned.
    pub fn sign_read(&self, fields: &BlobSas<'_>) -> Result<String, StoreError> {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        let key = guard
            .as_ref()
            .filter(|k| k.signed_expiry.is_some_and(|e| e > fields.expiry))
            .ok_or_else(|| StoreError::Backend("no valid user delegation key yet".into()))?;
        let protocol = match fields.protocols {
            Protocols::HttpsOnly => SasProtocol::Https,
            Protocols::HttpsAndHttp => SasProtocol::HttpsAndHttp,
        };
        let builder = SasBuilder::new(fields.account, key, fields.expiry)
            .map_err(|e| StoreError::Backend(format!("invalid user delegation key: {e}")))?
            .start(fields.start)
            .protocol(protocol)
            .blob(fields.container, fields.blob)
            .read();
        Ok(builder.build())
    }
}
