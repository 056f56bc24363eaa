//! The handler's own reads of blobs, by plain GET (or HEAD) of a short-lived read-only SAS URL
//! (the same URL redirect mode hands to clients):
//! - streamed downloads (large entries in proxy mode, large Turborepo artifacts with a tag): one
//!   streamed GET, read with a small fixed buffer, resumed where it broke off
//!   ([`Downloader::get`], [`super::resume`]);
//! - inline reads of small entries (`NX_CACHE_DOWNLOAD=auto` and `proxy`): single attempts at reading a whole
//!   blob or its version, each failure marked transient or not, for the retries of
//!   [`crate::storage::inline`] ([`Downloader::read_whole`], [`Downloader::version`]).
//!
//! Why not the SDK's `download()`: it is a partitioned transfer that keeps `2 × parallel`
//! partitions in memory, and its HTTP client (reqwest) grows each connection's read buffer to
//! about 400 KiB. A client that requests a large entry and never reads it would pin all of that
//! for as long as it keeps the connection. Here a download holds one read buffer of
//! [`DOWNLOAD_CHUNK`] bytes besides what the client's own connection queues.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_platform_verifier::BuilderVerifierExt;

use super::StoreError;
use super::resume::{self, Source};
use crate::storage::health::Waker;
use crate::storage::inline::{Failure, Version, Whole};
use crate::storage::record::{Record, Turbo};
use crate::storage::{ByteStream, DOWNLOAD_CHUNK};

/// Idle connections kept per storage host, for the next downloads.
const IDLE_CONNECTIONS: usize = 16;

pub struct Downloader {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Bound on the answer's head, and on any pause in its body.
    timeout: Duration,
    /// Wakes the store's health watch when a streamed body breaks off.
    waker: Waker,
    /// Streamed downloads resumed after their body broke off, for `/metrics`.
    resumes: Arc<AtomicU64>,
}

impl Downloader {
    /// Trusts what the platform trusts (system roots, `SSL_CERT_FILE`), like the SDK's client.
    pub fn new(timeout: Duration, waker: Waker) -> Result<Self, String> {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| builder.with_platform_verifier())
            .map_err(|e| format!("cannot set up TLS for downloads: {e}"))?
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .http1_read_buf_exact_size(DOWNLOAD_CHUNK)
            .pool_max_idle_per_host(IDLE_CONNECTIONS)
            .build(connector);
        Ok(Self {
            client,
            timeout,
            waker,
            resumes: Arc::default(),
        })
    }

    /// One GET of `url`: the blob's length, turbo's fields of its record and its bytes, or `None`
    /// when storage says it does not exist; a failure before the body, marked transient or not
    /// for the caller's retries. Errors never contain the URL (its signature). A body that breaks
    /// off is resumed from where it stopped ([`resume`]).
    pub async fn get(&self, url: &str) -> Result<Option<Streamed>, Failure> {
        let response = self.bounded(self.send(hyper::Method::GET, url)).await?;
        if response.status() == hyper::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = success(response)?;
        let len = content_length(&response).ok_or_else(|| {
            Failure::permanent(StoreError::Backend("download without a length".into()))
        })?;
        let turbo = turbo_of(&response);
        let etag = etag(&response);
        // Storage that stops sending mid-body must not hold the client's download forever: a
        // silence as long as the storage timeout is a break, resumed like any other.
        let body = resume::paced(response, self.timeout);
        let body = match etag {
            Some(etag) if len > 0 => resume::resumable(
                Source {
                    client: self.client.clone(),
                    url: url.to_owned(),
                    etag,
                    len,
                    timeout: self.timeout,
                    waker: self.waker.clone(),
                    resumes: self.resumes.clone(),
                },
                body,
            ),
            // Without a version to ask for again, the rest could be of another blob.
            _ => body,
        };
        Ok(Some(Streamed { len, turbo, body }))
    }

    /// Streamed downloads resumed so far.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }
}

/// A blob being streamed from storage.
pub struct Streamed {
    pub len: u64,
    pub turbo: Option<Arc<Turbo>>,
    pub body: ByteStream,
}

/// Turbo's fields of the blob's record, from the answer's `x-ms-meta-turbo_*` headers (Azure
/// returns a blob's metadata with Get Blob and Get Blob Properties: no call of its own).
fn turbo_of<B>(response: &hyper::Response<B>) -> Option<Arc<Turbo>> {
    let metadata = response.headers().iter().filter_map(|(name, value)| {
        Some((
            name.as_str().strip_prefix("x-ms-meta-")?,
            value.to_str().ok()?,
        ))
    });
    Record::turbo_from_metadata(metadata).map(Arc::new)
}

impl Downloader {
    /// One GET of a whole blob that should be `len` bytes: its bytes and version tag (ETag), or
    /// `None` when storage says it does not exist. The whole attempt is bounded by the storage
    /// timeout. A body that ends early is a transient failure (the next attempt reads it again);
    /// a blob of another length was replaced since its size was learnt: a permanent failure.
    pub async fn read_whole(&self, url: &str, len: u64) -> Result<Option<Whole>, Failure> {
        let read = async {
            let response = self.send(hyper::Method::GET, url).await?;
            if response.status() == hyper::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let response = success(response)?;
            let tag = etag(&response);
            let turbo = turbo_of(&response);
            if content_length(&response) != Some(len) {
                return Err(Failure::permanent(StoreError::Backend(format!(
                    "the blob is not the {len} bytes it was found to be (replaced since?)"
                ))));
            }
            let mut body = response.into_body();
            let mut bytes = Vec::with_capacity(len as usize);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| {
                    Failure::transient(StoreError::Backend(format!(
                        "the read broke off after {} of {len} bytes",
                        bytes.len()
                    )))
                })?;
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            if bytes.len() as u64 != len {
                return Err(Failure::transient(StoreError::Backend(format!(
                    "the read ended after {} of {len} bytes",
                    bytes.len()
                ))));
            }
            Ok(Some(Whole { bytes, tag, turbo }))
        };
        self.bounded(read).await
    }

    /// One HEAD of a blob: its length and version tag now, or `None` when it does not exist.
    pub async fn version(&self, url: &str) -> Result<Option<Version>, Failure> {
        let head = async {
            let response = self.send(hyper::Method::HEAD, url).await?;
            if response.status() == hyper::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let response = success(response)?;
            let len = content_length(&response).ok_or_else(|| {
                Failure::permanent(StoreError::Backend(
                    "blob properties without a length".into(),
                ))
            })?;
            Ok(Some(Version {
                len,
                tag: etag(&response),
                turbo: turbo_of(&response),
            }))
        };
        self.bounded(head).await
    }

    async fn send(
        &self,
        method: hyper::Method,
        url: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Failure> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(url)
            .body(Empty::new())
            .map_err(|_| Failure::permanent(StoreError::Backend("invalid download URL".into())))?;
        self.client.request(request).await.map_err(|e| {
            Failure::transient(StoreError::Backend(format!(
                "storage read failed: {}",
                without_url(&e)
            )))
        })
    }

    async fn bounded<T>(
        &self,
        attempt: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(Failure::transient(StoreError::Backend(format!(
                    "storage read: no answer within {:?}",
                    self.timeout
                ))))
            })
    }
}

/// The response if it is a `200`, else a failure naming Azure's status and error code: transient
/// for what Azure asks clients to retry (408, 429, 5xx but 501 and 505), permanent for the rest.
fn success(
    response: hyper::Response<hyper::body::Incoming>,
) -> Result<hyper::Response<hyper::body::Incoming>, Failure> {
    let status = response.status();
    if status == hyper::StatusCode::OK {
        return Ok(response);
    }
    let code = response
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let error = StoreError::Backend(format!("Azure answered {} {code}", status.as_u16()));
    let transient = matches!(status.as_u16(), 408 | 429)
        || (status.is_server_error() && !matches!(status.as_u16(), 501 | 505));
    Err(if transient {
        Failure::transient(error)
    } else {
        Failure::permanent(error)
    })
}

fn content_length<B>(response: &hyper::Response<B>) -> Option<u64> {
    response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn etag<B>(response: &hyper::Response<B>) -> Option<String> {
    Some(
        response
            .headers()
            .get(hyper::header::ETAG)?
            .to_str()
            .ok()?
            .to_owned(),
    )
}

/// A client error's description without the source chain's URL (hyper-util errors do not carry
/// the URL, but their sources are described generically to be sure).
fn without_url(error: &hyper_util::client::legacy::Error) -> String {
    if error.is_connect() {
        "cannot connect to storage".into()
    } else {
        "the connection to storage failed".into()
    }
}
