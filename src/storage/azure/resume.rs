//! A streamed download that goes on when storage's answer breaks off midway.
//!
//! Why: a download streamed through the handler (a large entry in proxy mode, a large Turborepo
//! artifact with a signature tag) has sent its status line and part of the body by the time the
//! read fails, so the failure can no longer be a miss, and a body cut short aborts an Nx run.
//! Azure answers a partition at its limit with `503`, `500` or a reset and asks clients to retry
//! with backoff. So when the body breaks off (an error, storage silent for the storage timeout,
//! or an early end), the rest of the same version is asked for again: `Range: bytes=N-` with
//! `If-Match` on the ETag of the first answer, after the pauses of [`retry::pause`], at most
//! [`MAX_RESUMES`] times per download. A blob replaced or deleted meanwhile (`412`, `404`), a
//! refusal (`403`: the URL expired) or the last resumption failing ends the body with the error:
//! the client sees it cut short, as it would have without this.
//!
//! Memory stays what a download holds: one read buffer at a time.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::limits::Pace;
use crate::storage::ByteStream;
use crate::storage::health::Waker;
use crate::storage::inline::retry;

/// Resumptions one download may make, over all its breaks: with the pauses of
/// [`retry::pause`] (up to 1 s each) and each request bounded by the storage timeout, a download
/// whose storage keeps failing ends within seconds, not never.
pub const MAX_RESUMES: u32 = 6;

/// What asking for the rest of a blob needs. Holds the download URL: never printed.
pub struct Source {
    pub client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    pub url: String,
    /// The version the first answer was of (its ETag): the rest must be of the same one.
    pub etag: String,
    pub len: u64,
    /// Bound on each answer's head, and on any pause in its body.
    pub timeout: Duration,
    /// Wakes the health watch: a break is a storage error a request met.
    pub waker: Waker,
    /// Counts resumptions for `/metrics`.
    pub resumes: Arc<AtomicU64>,
}

struct State {
    source: Source,
    body: ByteStream,
    /// Bytes passed on so far: where the rest starts.
    offset: u64,
    resumes: u32,
    done: bool,
}

/// The body of a download whose answer started with `first`, resumed from `source` when it
/// breaks off.
pub fn resumable(source: Source, first: ByteStream) -> ByteStream {
    let state = State {
        source,
        body: first,
        offset: 0,
        resumes: 0,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            if state.done {
                return None;
            }
            loop {
                let broke = match state.body.next().await {
                    Some(Ok(chunk)) => {
                        state.offset += chunk.len() as u64;
                        return Some((Ok(chunk), state));
                    }
                    Some(Err(error)) => error,
                    None if state.offset >= state.source.len => return None,
                    None => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "storage's answer ended after {} of {} bytes",
                            state.offset, state.source.len
                        ),
                    ),
                };
                match state.resume(broke).await {
                    Ok(rest) => state.body = rest,
                    Err(error) => {
                        state.done = true;
                        return Some((Err(error), state));
                    }
                }
            }
        },
    ))
}

impl State {
    /// The rest of the blob, asked for after the body broke off with `broke`; or the error that
    /// ends the download.
    async fn resume(&mut self, broke: io::Error) -> io::Result<ByteStream> {
        let mut last = broke.to_string();
        loop {
            self.source.waker.wake();
            if self.resumes >= MAX_RESUMES {
                return Err(io::Error::other(format!(
                    "{last} (gave up after {} resumptions)",
                    self.resumes
                )));
            }
            self.resumes += 1;
            self.source.resumes.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(retry::pause(self.resumes, retry::jitter())).await;
            match self.source.rest(self.offset).await {
                Ok(rest) => {
                    tracing::info!(
                        offset = self.offset,
                        len = self.source.len,
                        resumes = self.resumes,
                        broke = %broke,
                        "a streamed download broke off; it goes on from where it stopped"
                    );
                    return Ok(rest);
                }
                Err(Rest::Again(error)) => last = error,
                Err(Rest::Never(error)) => return Err(io::Error::other(error)),
            }
        }
    }
}

/// Why the rest could not be had: worth another attempt, or not.
enum Rest {
    Again(String),
    Never(String),
}

impl Source {
    /// One ranged GET of the blob from `offset` to its end, of the same version.
    async fn rest(&self, offset: u64) -> Result<ByteStream, Rest> {
        let request = hyper::Request::builder()
            .method(hyper::Method::GET)
            .uri(&self.url)
            .header(
                hyper::header::RANGE,
                format!("bytes={offset}-{}", self.len - 1),
            )
            .header(hyper::header::IF_MATCH, &self.etag)
            .body(Empty::new())
            .map_err(|_| Rest::Never("invalid download URL".into()))?;
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| Rest::Again(format!("storage: no answer within {:?}", self.timeout)))?
            .map_err(|_| Rest::Again("the connection to storage failed".into()))?;
        let status = response.status();
        if status != hyper::StatusCode::PARTIAL_CONTENT {
            let code = response
                .headers()
                .get("x-ms-error-code")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let error = format!("resuming: Azure answered {} {code}", status.as_u16());
            let again = matches!(status.as_u16(), 408 | 429)
                || (status.is_server_error() && !matches!(status.as_u16(), 501 | 505));
            return Err(if again {
                Rest::Again(error)
            } else {
                Rest::Never(error)
            });
        }
        let starts = format!("bytes {offset}-");
        let range_ok = response
            .headers()
            .get(hyper::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(&starts));
        if !range_ok {
            return Err(Rest::Never(
                "resuming: storage answered another range".into(),
            ));
        }
        Ok(paced(response, self.timeout))
    }
}

/// An answer's body as a stream of chunks that fails when storage is silent for `idle`.
pub fn paced(response: hyper::Response<hyper::body::Incoming>, idle: Duration) -> ByteStream {
    let body = response
        .into_body()
        .into_data_stream()
        .map_err(io::Error::other);
    Box::pin(Pace::idle_only(idle).apply(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a source that is never asked would hold: the tests below break no body.
    fn unused_source(len: u64) -> Source {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            )
            .https_or_http()
            .enable_http1()
            .build();
        Source {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
            // Port 9 (discard) on loopback: nothing answers there.
            url: "http://127.0.0.1:9/c/b".into(),
            etag: "\"0x1\"".into(),
            len,
            timeout: Duration::from_millis(200),
            waker: Waker::default(),
            resumes: Arc::default(),
        }
    }

    fn chunks(parts: Vec<io::Result<&'static [u8]>>) -> ByteStream {
        Box::pin(futures_util::stream::iter(
            parts
                .into_iter()
                .map(|p| p.map(Bytes::from_static))
                .collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn a_whole_answer_passes_unchanged() {
        let body = resumable(unused_source(6), chunks(vec![Ok(b"abc"), Ok(b"def")]));
        let got: Vec<Bytes> = body.try_collect().await.unwrap();
        assert_eq!(got.concat(), b"abcdef");
    }

    #[tokio::test(start_paused = true)]
    async fn a_break_that_cannot_be_resumed_ends_the_body_with_an_error() {
        let source = unused_source(6);
        let resumes = source.resumes.clone();
        let body = resumable(source, chunks(vec![Ok(b"abc")]));
        let got: Vec<io::Result<Bytes>> = body.collect().await;
        assert_eq!(got.len(), 2, "the bytes, then the error, then nothing");
        assert_eq!(got[0].as_ref().unwrap().as_ref(), b"abc");
        let error = got[1].as_ref().unwrap_err().to_string();
        assert!(error.contains("gave up after 6 resumptions"), "{error}");
        assert!(!error.contains("127.0.0.1:9/c/b"), "no URL: {error}");
        assert_eq!(resumes.load(Ordering::Relaxed), u64::from(MAX_RESUMES));
    }
}
