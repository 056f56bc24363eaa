//! The Azure Blob Storage backend: an existing container, reached with Microsoft Entra tokens
//! (managed identity) or, for Azurite and custom endpoints, an account key.
//!
//! - Downloads: by size (`NX_CACHE_DOWNLOAD=auto`, the default), an entry of at most
//!   `NX_CACHE_INLINE_MAX` bytes is read whole by the handler and answered with its bytes
//!   ([`crate::storage::inline`]: retries, single flight, the memory copy), a larger one gets a
//!   `307` to a short-lived, read-only SAS URL for the one blob (a user-delegation SAS with
//!   tokens, a service SAS with a key), built without any storage round trip. With
//!   `NX_CACHE_DOWNLOAD=redirect` every hit is redirected; with `proxy` the handler streams
//!   every blob itself.
//! - Uploads: the request body is cut into blocks that are staged one after another, then
//!   committed with `If-None-Match: *`. Staged blocks are invisible, so a cut-off upload leaves
//!   no blob, and the conditional commit makes create-if-absent race-safe. A body that fits in
//!   one block is sent as a single conditional Put Blob.
//! - Who wrote an entry ([`Record`]) is blob metadata (`x-ms-meta-writer_*`), sent with the
//!   Put Blob or Commit Block List that creates the blob: no extra request, no extra role.
//!   `handler entries` reads it back by listing with `include=metadata` (a reader role is
//!   enough); `handler purge` deletes with `If-Match` on the listed ETag.
//! - Entries remembered as existing (exact hit checks) are asked about again once their
//!   confirmation is older than [`super::CONFIRMED_FOR`]; an upload is answered `409` only after
//!   storage confirmed the blob exists just now.
//! - Blob names: `{prefix}org/{hash}` and `{prefix}teams/{team}/{hash}` for Nx, the same under
//!   `{prefix}turbo/` for Turborepo ([`CacheKey::object_name`]).
//! - Turbo's fields of an artifact's record (duration, tag) are blob metadata too
//!   (`x-ms-meta-turbo_*`), which Azure returns with Get Blob and Get Blob Properties: a read of
//!   an artifact learns them from the call it makes anyway (the exact check, the inline read,
//!   the proxied GET), and the remembered entries and the memory copy keep them with the size
//!   and the bytes. A Turborepo artifact's size is always checked (even with
//!   `NX_CACHE_HIT_CHECK=none`), and one with a signature tag is streamed through the handler
//!   whatever its size: turbo must find the tag in the answer, and storage's answer to a
//!   redirected client cannot carry it.
//! - Every storage call is bounded by `NX_CACHE_STORAGE_TIMEOUT`.
//!
//! The Rust SDK (`azure_storage_blob` 1.x) has no shared-key credential: in key mode every call
//! goes to a URL carrying a service SAS for exactly that blob and operation ([`sas`]).

/// The connection-string parser belongs to the configuration; re-exported here, where the key
/// it carries is used.
pub use crate::config::connection_string;
pub mod certificate;
pub mod credential;
pub mod delegation;
pub mod download;
pub mod resume;
pub mod sas;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::http::{
    ClientOptions, Etag, HttpClientOptions, RequestContent, StatusCode, Transport, Url,
    new_http_client,
};
use azure_storage_blob::models::{
    BlobClientDeleteOptions, BlobClientGetPropertiesResultHeaders,
    BlobContainerClientListBlobsOptions, BlobItem, BlockBlobClientCommitBlockListOptions,
    BlockBlobClientUploadOptions, BlockLookupList, ListBlobsIncludeItem,
};
use azure_storage_blob::{
    BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions,
    BlobServiceClient, BlobServiceClientOptions,
};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use time::OffsetDateTime;

use self::delegation::DelegationKeys;
use self::sas::{BlobSas, Protocols, SAS_VERSION, encode_blob_path};
use super::inline::{self, Failure, Found, InlineReads, Size, Version, Whole};
use super::known::{Known, KnownEntries};
use super::record::{Record, Turbo};
use super::usage::{Usage, is_legacy_name};
use super::{
    ByteStream, CONFIRMED_FOR, Deleted, Entry, Fetched, Head, Health, Hit, Store, StoreError,
    Stored, must_carry_tag,
};
use crate::config::{AzureAuth, AzureConfig, Download, HitCheck};
use crate::key::{CacheKey, Client, Namespace, folder_of};

/// Size of one staged block, and the largest body sent as a single Put Blob.
const BLOCK_SIZE: usize = 4 * 1024 * 1024;
/// How far back a SAS start time is set, for clocks that run behind.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// Lifetime of the SAS used by the handler's own calls in key mode.
const CALL_SAS_TTL: Duration = Duration::from_secs(15 * 60);
/// The scope of the storage tokens (what `azure_storage_blob`'s clients ask for).
const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// Name probed at startup and by the health watch: its absence is the normal answer.
const PROBE_BLOB: &str = ".nx-cache-probe";
/// Entries remembered as existing (exact hit checks): about 100 bytes each.
const KNOWN_ENTRIES: usize = 50_000;
/// Blobs per listing page (the service's maximum).
const LIST_PAGE: i32 = 5000;
/// Names looked at per leading digit when `handler doctor` looks for `@nx/azure-cache` entries.
const LEGACY_LOOK: i32 = 100;
/// Lifetime of the container SAS a listing uses in key mode (a long listing outlives
/// [`CALL_SAS_TTL`]).
const LIST_SAS_TTL: Duration = Duration::from_secs(3600);

/// How the handler signs its calls and its download URLs.
enum Access {
    Key {
        key: Vec<u8>,
    },
    Token {
        service: Arc<BlobServiceClient>,
        /// The same, tried once ([`Tries::Once`]).
        service_once: Arc<BlobServiceClient>,
        keys: Arc<DelegationKeys>,
        credential: Arc<credential::CredentialChain>,
    },
}

/// How many times the SDK tries a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tries {
    /// As its retry policy says (up to 8 retries of 408, 429 and 5xx answers): uploads,
    /// listings, the exact checks of redirect mode and of uploads.
    Retried,
    /// Once: the health probe, which must say what storage does now (retried, a probe met by
    /// 503s takes the whole storage timeout to report an outage), and the checks of inline reads,
    /// which retry within their own budget.
    Once,
}

pub struct AzureStore {
    config: AzureConfig,
    access: Access,
    /// Shared by every client, so connections are pooled across requests.
    client_options: ClientOptions,
    /// The same, without the SDK's retries ([`Tries::Once`]).
    once_options: ClientOptions,
    /// Proxied downloads, by plain GET of a read-only SAS URL.
    downloads: download::Downloader,
    /// Entries seen to exist, so a repeated hit costs no storage call (exact hit checks).
    known: KnownEntries,
    /// Small entries read whole and answered with their bytes (auto mode).
    inline: InlineReads,
    /// Whether storage answered lately. While it does not, GETs are misses instead of redirects:
    /// a client sent to an unreachable store would abort the whole build.
    health: Health,
}

impl AzureStore {
    /// Builds the store. No network call is made here; see [`Store::ready`] for the checks.
    pub fn new(config: AzureConfig) -> Result<Self, String> {
        let client_options = ClientOptions {
            transport: Some(Transport::new(new_http_client(Some(HttpClientOptions {
                automatic_decompression: false,
            })))),
            ..Default::default()
        };
        let once_options = ClientOptions {
            retry: azure_core::http::RetryOptions::none(),
            ..client_options.clone()
        };
        let access = match &config.auth {
            AzureAuth::Key(connection) => Access::Key {
                key: connection.key.clone(),
            },
            AzureAuth::Token { client_id } => {
                let credential = Arc::new(credential::CredentialChain::from_env(
                    client_id.as_deref(),
                    |name| std::env::var(name).ok(),
                )?);
                tracing::info!(chain = ?credential.names(), "Azure credentials, tried in this order");
                let url = Url::parse(&config.endpoint)
                    .map_err(|e| format!("invalid blob endpoint '{}': {e}", config.endpoint))?;
                let service_with = |options: &ClientOptions| {
                    BlobServiceClient::new(
                        url.clone(),
                        Some(credential.clone()),
                        Some(BlobServiceClientOptions {
                            client_options: options.clone(),
                            ..Default::default()
                        }),
                    )
                    .map(Arc::new)
                    .map_err(|e| format!("cannot create the blob client: {e}"))
                };
                let service = service_with(&client_options)?;
                let service_once = service_with(&once_options)?;
                let keys = Arc::new(DelegationKeys::new(service.clone(), config.timeout));
                Access::Token {
                    service,
                    service_once,
                    keys,
                    credential,
                }
            }
        };
        let health = Health::default();
        let downloads = download::Downloader::new(config.timeout, health.waker())?;
        let inline = InlineReads::new(config.inline);
        Ok(Self {
            config,
            access,
            client_options,
            once_options,
            downloads,
            known: KnownEntries::new(KNOWN_ENTRIES, CONFIRMED_FOR),
            inline,
            health,
        })
    }

    /// Writes and deletes a small probe blob: proves the identity (or key) may create blobs,
    /// which the read-only startup probe cannot tell. Used by `handler doctor` only.
    pub async fn check_write(&self) -> Result<(), StoreError> {
        let name = format!(
            "{}.nx-cache-doctor/{}",
            self.config.prefix,
            uuid::Uuid::new_v4().simple()
        );
        let client = self.blob_client(&name, "cwd")?;
        let where_ = self.container_label();
        let written = self
            .bounded(
                "write probe",
                client
                    .block_blob_client()
                    .upload(Bytes::from_static(b"probe").into(), None),
            )
            .await?;
        if let Err(e) = written {
            let code = error_code(&e).unwrap_or_default();
            return Err(StoreError::Backend(match e.http_status() {
                Some(StatusCode::Forbidden) => format!(
                    "the handler may read but not write {where_} ({code}); grant its identity 'Storage Blob Data Contributor' on the container (Reader is not enough)"
                ),
                _ => format!("writing a probe blob to {where_} failed: {}", backend(e)),
            }));
        }
        self.bounded("delete probe", client.delete(None))
            .await?
            .map_err(|e| {
                StoreError::Backend(format!(
                    "deleting the probe blob {name} failed: {}",
                    backend(e)
                ))
            })?;
        Ok(())
    }

    /// The credential sources of token mode, in the order they are tried.
    pub fn credential_chain(&self) -> Vec<&'static str> {
        match &self.access {
            Access::Token { credential, .. } => credential.names(),
            Access::Key { .. } => Vec::new(),
        }
    }

    /// In token mode, asks each credential source in order for a storage token, each within the
    /// storage timeout and with its own retries off, until one gets one: what each answered
    /// (`handler doctor`). `None` in key mode. The sources are built from the environment as
    /// the store's own are, and the one that got a token is what the store's chain then uses.
    pub async fn try_credentials(&self) -> Option<Result<Vec<credential::Attempt>, String>> {
        let Access::Token { credential, .. } = &self.access else {
            return None;
        };
        let AzureAuth::Token { client_id } = &self.config.auth else {
            return None;
        };
        let probe =
            match credential::CredentialChain::without_retries(client_id.as_deref(), |name| {
                std::env::var(name).ok()
            }) {
                Ok(probe) => probe,
                Err(e) => return Some(Err(e)),
            };
        let attempts = probe.try_each(&[STORAGE_SCOPE], self.config.timeout).await;
        // The store asks its sources in the same order: a token got here is got there too.
        if attempts.iter().any(|a| a.result.is_ok()) {
            credential
                .try_each(&[STORAGE_SCOPE], self.config.timeout)
                .await;
        }
        Some(Ok(attempts))
    }

    /// Starts the background work: renewal of the user delegation key (token mode). The health
    /// watch ([`crate::storage::health`]) is started by the server for every backend.
    pub fn start_background_tasks(self: &Arc<Self>) {
        if let Access::Token { keys, .. } = &self.access {
            keys.clone().spawn_renewal();
        }
    }

    /// Passes a storage result through, marking storage unhealthy when it failed and waking the
    /// health watch, whose probe at once confirms the outage or clears a passing error.
    fn observe<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result
            && !e.is_client_fault()
        {
            self.health.record(&Err(StoreError::Backend(e.to_string())));
            self.health.wake();
        }
        result
    }

    fn blob_name(&self, key: &CacheKey) -> String {
        format!("{}{}", self.config.prefix, key.object_name())
    }

    fn blob_url(&self, name: &str) -> String {
        format!(
            "{}/{}/{}",
            self.config.endpoint,
            self.config.container,
            encode_blob_path(name)
        )
    }

    fn protocols(&self) -> Protocols {
        if self.config.endpoint.starts_with("https://") {
            Protocols::HttpsOnly
        } else {
            // Only Azurite or a local emulator is reached over plain http.
            Protocols::HttpsAndHttp
        }
    }

    fn sas_fields<'a>(&'a self, name: &'a str, permissions: &'a str, ttl: Duration) -> BlobSas<'a> {
        let now = OffsetDateTime::now_utc();
        BlobSas {
            account: &self.config.account,
            container: &self.config.container,
            blob: name,
            permissions,
            start: now - CLOCK_SKEW,
            expiry: now + ttl,
            protocols: self.protocols(),
            version: SAS_VERSION,
        }
    }

    /// A client for one blob. In key mode its URL carries a service SAS with `permissions`.
    fn blob_client(&self, name: &str, permissions: &str) -> Result<BlobClient, StoreError> {
        self.blob_client_tried(name, permissions, Tries::Retried)
    }

    fn blob_client_tried(
        &self,
        name: &str,
        permissions: &str,
        tries: Tries,
    ) -> Result<BlobClient, StoreError> {
        let options = BlobClientOptions {
            client_options: self.options(tries).clone(),
            ..Default::default()
        };
        match &self.access {
            Access::Key { key } => {
                let query = self
                    .sas_fields(name, permissions, CALL_SAS_TTL)
                    .service_query(key);
                let url = Url::parse(&format!("{}?{query}", self.blob_url(name)))
                    .map_err(|e| StoreError::Backend(format!("invalid blob URL: {e}")))?;
                BlobClient::new(url, None, Some(options)).map_err(backend)
            }
            Access::Token {
                service,
                service_once,
                ..
            } => {
                let service = if tries == Tries::Once {
                    service_once
                } else {
                    service
                };
                Ok(service.blob_client(&self.config.container, name))
            }
        }
    }

    fn options(&self, tries: Tries) -> &ClientOptions {
        match tries {
            Tries::Retried => &self.client_options,
            Tries::Once => &self.once_options,
        }
    }

    /// The URL a client downloads from: read-only, this blob only, short-lived.
    fn download_url(&self, name: &str) -> Result<String, StoreError> {
        let fields = self.sas_fields(name, "r", self.config.sas_ttl);
        let query = match &self.access {
            Access::Key { key } => fields.service_query(key),
            Access::Token { keys, .. } => keys.sign_read(&fields)?,
        };
        Ok(format!("{}?{query}", self.blob_url(name)))
    }

    /// Runs one storage call under the configured timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = azure_core::Result<T>>,
    ) -> Result<azure_core::Result<T>, StoreError> {
        tokio::time::timeout(self.config.timeout, call)
            .await
            .map_err(|_| {
                StoreError::Backend(format!(
                    "{what}: no answer within {:?}",
                    self.config.timeout
                ))
            })
    }

    async fn upload_single(
        &self,
        client: &BlobClient,
        body: Bytes,
        record: &Record,
    ) -> Result<Stored, StoreError> {
        let options = BlockBlobClientUploadOptions {
            metadata: metadata_of(record),
            ..Default::default()
        }
        .if_not_exists();
        let result = self
            .bounded(
                "upload",
                client
                    .block_blob_client()
                    .upload(body.into(), Some(options)),
            )
            .await?;
        match result {
            Ok(_) => Ok(Stored::Created),
            Err(e) if e.http_status() == Some(StatusCode::Conflict) => Ok(Stored::AlreadyExists),
            Err(e) => Err(backend(e)),
        }
    }

    /// Stages the body block by block, then commits if the blob is still absent.
    async fn upload_blocks(
        &self,
        client: &BlobClient,
        first: Bytes,
        mut buffer: BytesMut,
        mut body: ByteStream,
        expected: u64,
        record: &Record,
    ) -> Result<Stored, StoreError> {
        let blocks = client.block_blob_client();
        // Block ids are unique per upload, so concurrent uploads of one hash never mix blocks.
        let upload_id = uuid::Uuid::new_v4().simple().to_string();
        let mut ids: Vec<Vec<u8>> = Vec::new();
        let mut received = first.len() as u64;
        let mut pending = Some(first);
        loop {
            if let Some(block) = pending.take() {
                let id = format!("{upload_id}-{:08}", ids.len()).into_bytes();
                let len = block.len() as u64;
                let staged = self
                    .bounded(
                        "stage block",
                        blocks.stage_block(&id, len, block.into(), None),
                    )
                    .await?;
                staged.map_err(backend)?;
                ids.push(id);
            }
            let Some(chunk) = fill_block(&mut body, &mut buffer).await? else {
                break;
            };
            received += chunk.len() as u64;
            pending = Some(chunk);
        }
        if received != expected {
            return Err(StoreError::Incomplete { expected, received });
        }
        let list = BlockLookupList {
            latest: Some(ids),
            ..Default::default()
        };
        let options = BlockBlobClientCommitBlockListOptions {
            if_none_match: Some("*".into()),
            metadata: metadata_of(record),
            ..Default::default()
        };
        let content = RequestContent::try_from(list).map_err(backend)?;
        let committed = self
            .bounded(
                "commit block list",
                blocks.commit_block_list(content, Some(options)),
            )
            .await?;
        match committed {
            Ok(_) => Ok(Stored::Created),
            Err(e) if e.http_status() == Some(StatusCode::Conflict) => Ok(Stored::AlreadyExists),
            // A concurrent upload that committed first discards this one's staged blocks.
            Err(e) if self.blob_exists(client).await.unwrap_or(false) => {
                tracing::debug!(error = %e, "commit lost a race; the entry exists");
                Ok(Stored::AlreadyExists)
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn blob_exists(&self, client: &BlobClient) -> Result<bool, StoreError> {
        self.bounded("get blob properties", client.exists())
            .await?
            .map_err(backend)
    }

    /// `container 'C' in storage account 'A'`: how every storage problem names its place.
    fn container_label(&self) -> String {
        format!(
            "container '{}' in storage account '{}'",
            self.config.container, self.config.account
        )
    }

    /// Checks the container and the permissions; the error says what is missing, in words.
    async fn check(&self) -> Result<(), StoreError> {
        let where_ = self.container_label();
        if let Access::Token {
            keys, credential, ..
        } = &self.access
        {
            keys.ensure_fresh().await.map_err(|e| {
                // A role is the fix only when storage refused a token; without a token, or
                // without an answer, no role is missing yet.
                let advice = if credential.chosen().is_none() {
                    "no Azure credential got a token, so no role is the problem yet: check the credentials (`handler doctor` asks each one and names its error)"
                } else if delegation::is_refusal(&e) {
                    "grant the handler's identity 'Storage Blob Delegator' on the account"
                } else {
                    "check the network path to the account's blob endpoint (AZURE_STORAGE_BLOB_ENDPOINT, a storage firewall)"
                };
                StoreError::Backend(format!(
                    "cannot get a user delegation key from account '{}' ({e}); {advice}",
                    self.config.account
                ))
            })?;
        }
        let probe = self.blob_client_tried(
            &format!("{}{PROBE_BLOB}", self.config.prefix),
            "r",
            Tries::Once,
        )?;
        let outcome = self
            .bounded("probe", probe.get_properties(None))
            .await
            .map_err(|e| {
                StoreError::Backend(format!(
                    "cannot reach {where_} at {}: {e}",
                    self.config.endpoint
                ))
            })?;
        let error = match outcome {
            Ok(_) => return self.check_download_urls().await,
            Err(e) => e,
        };
        let code = error_code(&error).unwrap_or_default();
        let problem = match (error.http_status(), code.as_str()) {
            (Some(StatusCode::NotFound), "BlobNotFound") => {
                return self.check_download_urls().await;
            }
            (Some(StatusCode::NotFound), _) => format!(
                "{where_} does not exist; create it (the handler never creates it) or fix AZURE_STORAGE_CONTAINER"
            ),
            (Some(StatusCode::Forbidden), "AuthorizationPermissionMismatch") => format!(
                "the handler's identity may not read {where_}; grant it 'Storage Blob Data Contributor' on the container"
            ),
            (Some(StatusCode::Forbidden), _) => format!(
                "{where_} refused the handler's credentials ({code}); check the account key or the identity's role assignments"
            ),
            (None, _) => format!("cannot reach {where_} at {}: {error}", self.config.endpoint),
            (Some(status), _) => format!("{where_} answered {status} ({code}) to a probe: {error}"),
        };
        Err(StoreError::Backend(problem))
    }
}

/// What storage made of a download URL the handler signed.
enum UrlProbe {
    Accepted,
    Refused(String),
}

impl AzureStore {
    /// In token mode, fetches the probe blob through a download URL signed with the current user
    /// delegation key. After `az storage account revoke-delegation-keys` storage refuses every
    /// URL signed with an older key, and a refused URL aborts the client's build; the token-based
    /// probe cannot see that. On a refusal the key is replaced at once, and storage counts as
    /// unavailable (GETs are misses) until a URL signed with the new key is accepted.
    async fn check_download_urls(&self) -> Result<(), StoreError> {
        let Access::Token { keys, .. } = &self.access else {
            // Key mode: the probe itself went through a SAS signed with the account key.
            return Ok(());
        };
        let UrlProbe::Refused(code) = self.probe_download_url().await? else {
            return Ok(());
        };
        tracing::warn!(
            code,
            "storage refused a download URL signed with the current user delegation key (revoked?); getting a new key"
        );
        keys.replace().await.map_err(|e| {
            StoreError::Backend(format!(
                "storage refuses download URLs signed with the user delegation key ({code}) and no new key could be had: {e}"
            ))
        })?;
        match self.probe_download_url().await? {
            UrlProbe::Accepted => {
                tracing::info!(
                    "download URLs signed with the new user delegation key are accepted"
                );
                Ok(())
            }
            UrlProbe::Refused(code) => Err(StoreError::Backend(format!(
                "storage refuses download URLs signed with a fresh user delegation key ({code})"
            ))),
        }
    }

    async fn probe_download_url(&self) -> Result<UrlProbe, StoreError> {
        let url = self.download_url(&format!("{}{PROBE_BLOB}", self.config.prefix))?;
        let url = Url::parse(&url)
            .map_err(|e| StoreError::Backend(format!("invalid download URL: {e}")))?;
        let options = BlobClientOptions {
            client_options: self.once_options.clone(),
            ..Default::default()
        };
        // No credential: the URL's signature is what is being tested.
        let client = BlobClient::new(url, None, Some(options)).map_err(backend)?;
        match self
            .bounded("download URL probe", client.get_properties(None))
            .await?
        {
            Ok(_) => Ok(UrlProbe::Accepted),
            Err(e) if e.http_status() == Some(StatusCode::NotFound) => Ok(UrlProbe::Accepted),
            Err(e) if e.http_status() == Some(StatusCode::Forbidden) => Ok(UrlProbe::Refused(
                error_code(&e).unwrap_or_else(|| "403".into()),
            )),
            Err(e) => Err(backend(e)),
        }
    }
}

/// Reads from `body` until `buffer` holds a whole block or the body ends; returns the block.
async fn fill_block(
    body: &mut ByteStream,
    buffer: &mut BytesMut,
) -> Result<Option<Bytes>, StoreError> {
    while buffer.len() < BLOCK_SIZE {
        match body.next().await {
            Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(StoreError::Body(e)),
            None => break,
        }
    }
    if buffer.is_empty() {
        return Ok(None);
    }
    let take = buffer.len().min(BLOCK_SIZE);
    Ok(Some(buffer.split_to(take).freeze()))
}

/// An SDK error as an attempt's failure: transient without an answer (connection trouble) and
/// for what Azure asks clients to retry (408, 429, 5xx but 501 and 505).
fn sdk_failure(error: azure_core::Error) -> Failure {
    let transient = match error.http_status().map(u16::from) {
        None => true,
        Some(status) => {
            matches!(status, 408 | 429)
                || (500..600).contains(&status) && !matches!(status, 501 | 505)
        }
    };
    let error = backend(error);
    if transient {
        Failure::transient(error)
    } else {
        Failure::permanent(error)
    }
}

fn error_code(error: &azure_core::Error) -> Option<String> {
    match error.kind() {
        azure_core::error::ErrorKind::HttpResponse { error_code, .. } => error_code.clone(),
        _ => None,
    }
}

/// Storage errors as the rest of the handler sees them. The SDK's messages carry no secrets
/// (it redacts query strings such as SAS signatures in its errors and logs).
fn backend(error: azure_core::Error) -> StoreError {
    let status = error.http_status().map(|s| u16::from(s).to_string());
    let code = error_code(&error);
    match (status, code) {
        (Some(status), Some(code)) => {
            StoreError::Backend(format!("Azure answered {status} {code}"))
        }
        (Some(status), None) => StoreError::Backend(format!("Azure answered {status}")),
        _ => StoreError::Backend(with_causes(&error)),
    }
}

/// An error with its causes (`outer: cause: root cause`): the SDK's retry policy wraps a
/// credential's failure in a message that names none of it.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[async_trait]
impl Store for AzureStore {
    fn describe(&self) -> String {
        let auth = match &self.access {
            Access::Key { .. } => "account key (service SAS)",
            Access::Token { .. } => "Microsoft Entra token (user-delegation SAS)",
        };
        let download = match self.config.download {
            Download::Auto => format!(
                "size (entries up to {} bytes answered by the handler, larger ones redirected)",
                self.config.inline.max
            ),
            Download::Redirect => "redirect".into(),
            Download::Proxy => format!(
                "proxy (entries up to {} bytes answered whole by the handler, larger ones streamed)",
                self.config.inline.max
            ),
        };
        format!(
            "Azure Blob container '{}' at {} ({auth}, downloads by {download}, blob prefix '{}')",
            self.config.container, self.config.endpoint, self.config.prefix
        )
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Hit>, StoreError> {
        let name = self.blob_name(key);
        // A Turborepo artifact's answer depends on its record (a tag must reach turbo): its
        // size and record are always known before it is answered.
        let exact = key.client == Client::Turbo;
        match self.config.download {
            Download::Auto => match self.inline.fetch(self, &name, exact).await? {
                Found::Missing => Ok(None),
                Found::Whole(bytes, turbo) => Ok(Some(Hit {
                    fetched: Fetched::Bytes(bytes),
                    turbo,
                })),
                Found::Large(len, turbo) => self.large(&name, len, turbo).await,
            },
            Download::Redirect => {
                if !self.health.is_healthy() {
                    return Err(StoreError::Backend(
                        "storage is unavailable (health watch)".into(),
                    ));
                }
                let (len, turbo) = match (self.config.hit_check, exact) {
                    // No storage round trip: a missing blob is Azure's 404, which Nx takes as a
                    // miss.
                    (HitCheck::None, false) => (None, None),
                    _ => match self.known_size(&name).await? {
                        Some(known) => (Some(known.size), known.turbo),
                        None => return Ok(None),
                    },
                };
                self.large(&name, len, turbo).await
            }
            // Small entries whole, as in auto mode (a body cut short after a 200 aborts an Nx
            // run); larger ones streamed, as clients may not reach storage.
            Download::Proxy => match self.inline.fetch(self, &name, exact).await? {
                Found::Missing => Ok(None),
                Found::Whole(bytes, turbo) => Ok(Some(Hit {
                    fetched: Fetched::Bytes(bytes),
                    turbo,
                })),
                Found::Large(..) => self.observe(self.proxy_download(&name).await),
            },
        }
    }

    async fn exists(&self, key: &CacheKey) -> Result<bool, StoreError> {
        // Asked of storage every time, never answered from memory: an upload refused as
        // existing must be of an entry that exists now (it may have been deleted behind this
        // instance's back). Nx uploads only what it missed, so this costs a call only when the
        // entry is stored by someone else meanwhile, or when it is new (as before).
        Ok(self.blob_size(&self.blob_name(key)).await?.is_some())
    }

    async fn head(&self, key: &CacheKey) -> Result<Option<Head>, StoreError> {
        // Remembered (confirmed within CONFIRMED_FOR, with turbo's fields), or one Get Blob
        // Properties, which brings the metadata along.
        let known = self.known_size(&self.blob_name(key)).await?;
        Ok(known.map(|known| Head {
            len: known.size,
            turbo: known.turbo,
        }))
    }

    async fn put_if_absent(
        &self,
        key: &CacheKey,
        len: u64,
        body: ByteStream,
        record: &Record,
    ) -> Result<Stored, StoreError> {
        let stored = self.observe(self.upload(key, len, body, record).await)?;
        if stored == Stored::Created {
            let name = self.blob_name(key);
            let turbo = record.turbo.clone().map(Arc::new);
            self.inline.discard(&name);
            self.known.insert(&name, len, turbo);
        }
        Ok(stored)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.check().await
    }

    fn health(&self) -> &Health {
        &self.health
    }

    fn figures(&self) -> Vec<crate::metrics::Figure> {
        let mut figures = match self.config.download {
            Download::Auto | Download::Proxy => self.inline.figures(),
            Download::Redirect => Vec::new(),
        };
        figures.push(crate::metrics::Figure {
            name: "nx_cache_download_resumes_total",
            help: "streamed downloads asked of storage again from where their body broke off",
            kind: "counter",
            value: self.downloads.resumes(),
        });
        figures
    }

    async fn usage(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<Usage, StoreError> {
        // The whole container, even with a blob prefix: `@nx/azure-cache` entries are at its
        // root, and an operator moving off the plugin wants them in view.
        let options = BlobContainerClientListBlobsOptions {
            maxresults: Some(LIST_PAGE),
            ..Default::default()
        };
        let mut usage = Usage::default();
        let mut listed = 0u64;
        self.each_page(options, &mut |items| {
            for item in items {
                let Some(name) = item.name else { continue };
                let properties = item.properties.unwrap_or_default();
                let time = properties.creation_time.or(properties.last_modified);
                let bytes = properties.content_length.unwrap_or(0);
                if is_legacy_name(&name) {
                    usage.add_legacy(bytes, properties.last_modified.or(time));
                } else if let Some(relative) = name.strip_prefix(&self.config.prefix) {
                    usage.add(relative, bytes, time);
                }
                listed += 1;
            }
            progress(listed);
        })
        .await?;
        Ok(usage)
    }

    async fn list(
        &self,
        clients: &[Client],
        namespaces: &[Namespace],
        each: &mut (dyn FnMut(Entry) + Send),
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), StoreError> {
        let prefix = &self.config.prefix;
        let clients = Client::chosen(clients);
        let prefixes: Vec<String> = match (clients.as_slice(), namespaces) {
            // Everything under the prefix: each name is parsed into its client's key.
            ([_, _], []) => vec![prefix.clone()],
            // Nx's namespaces are at the prefix's root, beside `turbo/`: listed by their own.
            ([Client::Nx], []) => vec![format!("{prefix}org/"), format!("{prefix}teams/")],
            (chosen, []) => chosen
                .iter()
                .map(|c| format!("{prefix}{}", c.root()))
                .collect(),
            (chosen, namespaces) => chosen
                .iter()
                .flat_map(|c| namespaces.iter().map(|n| folder_of(*c, n)))
                .map(|folder| format!("{prefix}{folder}/"))
                .collect(),
        };
        let mut listed = 0u64;
        for prefix in prefixes {
            let options = BlobContainerClientListBlobsOptions {
                prefix: Some(prefix),
                maxresults: Some(LIST_PAGE),
                include: Some(vec![ListBlobsIncludeItem::Metadata]),
                ..Default::default()
            };
            self.each_page(options, &mut |items| {
                for entry in items.into_iter().filter_map(|item| self.entry_of(item)) {
                    listed += 1;
                    each(entry);
                }
                progress(listed);
            })
            .await?;
        }
        Ok(())
    }

    async fn delete(&self, entry: &Entry) -> Result<Deleted, StoreError> {
        let name = self.blob_name(&entry.key);
        let client = self.blob_client(&name, "d")?;
        let options = BlobClientDeleteOptions {
            // Only the version that was listed: one stored again since is left alone.
            if_match: Some(Etag::from(entry.version.clone())),
            ..Default::default()
        };
        let result = self
            .bounded("delete blob", client.delete(Some(options)))
            .await?;
        self.known.remove(&name);
        match result {
            Ok(_) => Ok(Deleted::Deleted),
            Err(e) if e.http_status() == Some(StatusCode::PreconditionFailed) => {
                Ok(Deleted::Changed)
            }
            Err(e) if e.http_status() == Some(StatusCode::NotFound) => Ok(Deleted::Gone),
            Err(e) if e.http_status() == Some(StatusCode::Forbidden) => {
                let code = error_code(&e).unwrap_or_else(|| "403".into());
                Err(StoreError::Forbidden(format!(
                    "{} refused to delete {name} ({code}): deleting needs the role 'Storage Blob Data Contributor' on the container (or a custom role with Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete); a reader role lists only",
                    self.container_label()
                )))
            }
            Err(e) => Err(backend(e)),
        }
    }
}

/// The record as the metadata of the request that creates the blob; none for no writer.
fn metadata_of(record: &Record) -> Option<std::collections::HashMap<String, String>> {
    Some(record.metadata()).filter(|m| !m.is_empty())
}

impl AzureStore {
    /// How many `@nx/azure-cache` entries (bare Nx hashes at the container root) a quick look
    /// finds: one small listing per leading digit, never the whole container (`handler doctor`;
    /// `handler usage` counts them all). Names that merely start with a digit are not counted.
    pub async fn legacy_entries(&self) -> Result<u64, StoreError> {
        let container = self.container_client()?;
        let mut found = 0;
        for digit in '0'..='9' {
            let options = BlobContainerClientListBlobsOptions {
                prefix: Some(digit.to_string()),
                maxresults: Some(LEGACY_LOOK),
                ..Default::default()
            };
            let mut pages = container
                .list_blobs(Some(options))
                .map_err(backend)?
                .into_pages();
            if let Some(page) = self
                .bounded("list blobs", pages.try_next())
                .await?
                .map_err(backend)?
            {
                let page = page.into_model().map_err(backend)?;
                found += page
                    .blob_items
                    .iter()
                    .filter(|item| item.name.as_deref().is_some_and(is_legacy_name))
                    .count() as u64;
            }
        }
        Ok(found)
    }

    /// A client for the container: with the handler's token, or in key mode with a container
    /// SAS that may list.
    fn container_client(&self) -> Result<BlobContainerClient, StoreError> {
        match &self.access {
            Access::Token { service, .. } => {
                Ok(service.blob_container_client(&self.config.container))
            }
            Access::Key { key } => {
                let query = self.sas_fields("", "l", LIST_SAS_TTL).service_query(key);
                let url = format!("{}/{}?{query}", self.config.endpoint, self.config.container);
                let url = Url::parse(&url)
                    .map_err(|e| StoreError::Backend(format!("invalid container URL: {e}")))?;
                let options = BlobContainerClientOptions {
                    client_options: self.client_options.clone(),
                    ..Default::default()
                };
                BlobContainerClient::new(url, None, Some(options)).map_err(backend)
            }
        }
    }

    /// Lists the container as `options` say, page by page (each page bounded by the storage
    /// timeout), handing each page's blobs to `page`: memory holds one page.
    async fn each_page(
        &self,
        options: BlobContainerClientListBlobsOptions<'_>,
        page: &mut (dyn FnMut(Vec<BlobItem>) + Send),
    ) -> Result<(), StoreError> {
        let container = self.container_client()?;
        let mut pages = container
            .list_blobs(Some(options))
            .map_err(backend)?
            .into_pages();
        while let Some(next) = self
            .bounded("list blobs", pages.try_next())
            .await?
            .map_err(backend)?
        {
            page(next.into_model().map_err(backend)?.blob_items);
        }
        Ok(())
    }

    /// A listed blob as an entry: `None` for a name that is no entry of this cache.
    fn entry_of(&self, item: BlobItem) -> Option<Entry> {
        let name = item.name?;
        let relative = name.strip_prefix(&self.config.prefix)?;
        let key = CacheKey::from_object_name(relative)?;
        let properties = item.properties.unwrap_or_default();
        let record = item
            .metadata
            .and_then(|m| m.values)
            .map(|values| {
                Record::from_metadata(values.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            })
            .unwrap_or_default();
        let created = record
            .writer
            .as_ref()
            .map(|w| w.stored)
            .or(properties.creation_time)
            .or(properties.last_modified);
        Some(Entry {
            key,
            bytes: properties.content_length.unwrap_or(0),
            created,
            record,
            version: properties.etag.map(String::from).unwrap_or_default(),
        })
    }

    /// The size (and turbo's fields) of blob `name` if it exists: remembered (confirmed within
    /// [`CONFIRMED_FOR`]), or asked of storage ([`Self::blob_size`]).
    async fn known_size(&self, name: &str) -> Result<Option<Known>, StoreError> {
        let checked = self.check_size(name, Tries::Retried).await;
        self.observe(checked.map_err(|f| f.error))
    }

    /// The size of blob `name` if it exists, asked of storage now (bounded by the storage
    /// timeout; any trouble is an error, which the API answers as a miss or "not stored" at
    /// once). The answer is remembered, a missing blob forgotten.
    async fn blob_size(&self, name: &str) -> Result<Option<Known>, StoreError> {
        let asked = self.ask_size(name, Tries::Retried).await;
        self.observe(asked.map_err(|f| f.error))
    }

    /// [`AzureStore::known_size`] unobserved, its failure marked transient or not: tried once
    /// by auto mode, which retries it itself.
    async fn check_size(&self, name: &str, tries: Tries) -> Result<Option<Known>, Failure> {
        if let Some(known) = self.known.get(name) {
            return Ok(Some(known));
        }
        self.ask_size(name, tries).await
    }

    /// [`AzureStore::blob_size`] unobserved, its failure marked transient or not.
    async fn ask_size(&self, name: &str, tries: Tries) -> Result<Option<Known>, Failure> {
        let client = self
            .blob_client_tried(name, "r", tries)
            .map_err(Failure::permanent)?;
        let properties = self
            .bounded("get blob properties", client.get_properties(None))
            .await
            .map_err(Failure::transient)?;
        let known = match properties {
            Ok(response) => {
                let size = response
                    .content_length()
                    .map_err(|e| Failure::permanent(backend(e)))?
                    .unwrap_or(0);
                // The answer carries the blob's metadata: turbo's fields cost no call of their own.
                let metadata = response.metadata().unwrap_or_default();
                let turbo = Record::turbo_from_metadata(
                    metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                );
                Some(Known {
                    size,
                    turbo: turbo.map(Arc::new),
                })
            }
            Err(e) if e.http_status() == Some(StatusCode::NotFound) => None,
            Err(e) => return Err(sdk_failure(e)),
        };
        match &known {
            Some(known) => self.known.insert(name, known.size, known.turbo.clone()),
            None => {
                self.known.remove(name);
                self.inline.discard(name);
            }
        }
        Ok(known)
    }

    /// One streamed GET of the blob through the handler (a large entry in proxy mode, and a large
    /// Turborepo artifact with a tag), with turbo's fields from the same answer. A failure before
    /// the body is retried within the read budget (the client has had nothing yet); one in the
    /// body is resumed ([`resume`]).
    async fn proxy_download(&self, name: &str) -> Result<Option<Hit>, StoreError> {
        let url = self.download_url(name)?;
        let streamed = self
            .inline
            .retried(&self.health, || self.downloads.get(&url))
            .await?;
        Ok(streamed.map(|streamed| Hit {
            fetched: Fetched::Stream {
                len: streamed.len,
                body: streamed.body,
            },
            turbo: streamed.turbo,
        }))
    }

    /// A hit too large to answer inline: a redirect to storage, unless its answer must carry a
    /// tag (then streamed through the handler).
    async fn large(
        &self,
        name: &str,
        len: Option<u64>,
        turbo: Option<Arc<Turbo>>,
    ) -> Result<Option<Hit>, StoreError> {
        if must_carry_tag(turbo.as_deref()) {
            return self.observe(self.proxy_download(name).await);
        }
        let url = self.download_url(name)?;
        Ok(Some(Hit {
            fetched: Fetched::Redirect { url, len },
            turbo,
        }))
    }

    async fn upload(
        &self,
        key: &CacheKey,
        len: u64,
        mut body: ByteStream,
        record: &Record,
    ) -> Result<Stored, StoreError> {
        let client = self.blob_client(&self.blob_name(key), "rcw")?;
        let mut buffer = BytesMut::with_capacity(BLOCK_SIZE.min(len as usize + 1));
        let first = fill_block(&mut body, &mut buffer)
            .await?
            .unwrap_or_default();
        if (first.len() as u64) < len && first.len() == BLOCK_SIZE {
            return self
                .upload_blocks(&client, first, buffer, body, len, record)
                .await;
        }
        // The whole body fits in one block: check it is all there, then one conditional put.
        if let Some(extra) = fill_block(&mut body, &mut buffer).await? {
            let received = (first.len() + extra.len()) as u64;
            return Err(StoreError::Incomplete {
                expected: len,
                received,
            });
        }
        if first.len() as u64 != len {
            return Err(StoreError::Incomplete {
                expected: len,
                received: first.len() as u64,
            });
        }
        self.upload_single(&client, first, record).await
    }
}

/// Single attempts at the storage calls of inline reads (auto and proxy modes);
/// [`InlineReads`] retries them, so none of them marks storage unhealthy (the health watch, woken
/// by each failure, decides that).
#[async_trait]
impl inline::Source for AzureStore {
    async fn size(&self, name: &str, exact: bool) -> Result<Size, Failure> {
        let known = match (self.config.hit_check, exact) {
            (HitCheck::None, false) => match self.known.get(name) {
                Some(known) => Some(known),
                None => return Ok(Size::Unchecked),
            },
            _ => self.check_size(name, Tries::Once).await?,
        };
        Ok(match known {
            Some(known) => Size::Known(known.size, known.turbo),
            None => Size::Missing,
        })
    }

    async fn version(&self, name: &str) -> Result<Option<Version>, Failure> {
        let url = self.download_url(name).map_err(Failure::permanent)?;
        self.downloads.version(&url).await
    }

    async fn read(&self, name: &str, len: u64) -> Result<Option<Whole>, Failure> {
        let url = self.download_url(name).map_err(Failure::permanent)?;
        let read = self.downloads.read_whole(&url, len).await;
        if let Err(failure) = &read
            && !failure.transient
        {
            // Replaced since its size was learnt, or refused: learn it again next time.
            self.known.remove(name);
        }
        read
    }

    fn forget(&self, name: &str) {
        self.known.remove(name);
    }

    fn health(&self) -> &Health {
        &self.health
    }
}
