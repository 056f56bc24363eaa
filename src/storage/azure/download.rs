//! Proxied downloads (`NX_CACHE_DOWNLOAD=proxy`): one plain streamed GET of the blob through a
//! short-lived read-only SAS URL (the same URL redirect mode hands to clients), read with a small
//! fixed buffer.
//!
//! Why not the SDK's `download()`: it is a partitioned transfer that keeps `2 × parallel`
//! partitions in memory, and its HTTP client (reqwest) grows each connection's read buffer to
//! about 400 KiB. A client that requests a large entry and never reads it would pin all of that
//! for as long as it keeps the connection. Here a download holds one read buffer of
//! [`DOWNLOAD_CHUNK`] bytes besides what the client's own connection queues.

use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_platform_verifier::BuilderVerifierExt;

use super::StoreError;
use crate::limits::Pace;
use crate::storage::{ByteStream, DOWNLOAD_CHUNK};

/// Idle connections kept per storage host, for the next downloads.
const IDLE_CONNECTIONS: usize = 16;

pub struct Downloader {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Bound on the answer's head, and on any pause in its body.
    timeout: Duration,
}

impl Downloader {
    /// Trusts what the platform trusts (system roots, `SSL_CERT_FILE`), like the SDK's client.
    pub fn new(timeout: Duration) -> Result<Self, String> {
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
        Ok(Self { client, timeout })
    }

    /// GETs `url`: the blob's length and bytes, or `None` when storage says it does not exist.
    /// Errors never contain the URL (its signature).
    pub async fn get(&self, url: &str) -> Result<Option<(u64, ByteStream)>, StoreError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| StoreError::Backend("invalid download URL".into()))?;
        let response = tokio::time::timeout(self.timeout, self.client.get(uri))
            .await
            .map_err(|_| {
                StoreError::Backend(format!("download: no answer within {:?}", self.timeout))
            })?
            .map_err(|e| StoreError::Backend(format!("download failed: {}", without_url(&e))))?;
        let status = response.status();
        if status == hyper::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status != hyper::StatusCode::OK {
            let code = response
                .headers()
                .get("x-ms-error-code")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            return Err(StoreError::Backend(format!(
                "Azure answered {} {code}",
                status.as_u16()
            )));
        }
        let len = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| StoreError::Backend("download without a length".into()))?;
        let body = response
            .into_body()
            .into_data_stream()
            .map_err(std::io::Error::other);
        // Storage that stops sending mid-body must not hold the client's download forever.
        Ok(Some((
            len,
            Box::pin(Pace::idle_only(self.timeout).apply(body)),
        )))
    }
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
