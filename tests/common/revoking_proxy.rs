//! A TLS reverse proxy in front of Azurite that can "revoke" user delegation keys: after
//! [`RevokingProxy::revoke_all_keys`], every user-delegation SAS signed with a key seen so far is
//! refused with 403 `AuthenticationFailed`, as Azure does after
//! `az storage account revoke-delegation-keys`. Azurite itself does not implement revocation.
//!
//! A key is known by its start and expiry (`skt`, `ske`), which every SAS signed with it carries;
//! a key fetched after the revocation has another start and is accepted.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::azurite::Tls;

#[derive(Default)]
struct Keys {
    /// Every (skt, ske) seen in a SAS so far.
    seen: HashSet<(String, String)>,
    revoked: HashSet<(String, String)>,
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    keys: Arc<Mutex<Keys>>,
    refused: Arc<AtomicUsize>,
}

pub struct RevokingProxy {
    pub port: u16,
    keys: Arc<Mutex<Keys>>,
    /// SAS requests refused because their key was revoked.
    pub refused: Arc<AtomicUsize>,
    _server: tokio::task::JoinHandle<()>,
}

impl RevokingProxy {
    /// Listens on an ephemeral loopback port with `tls`'s leaf certificate and forwards every
    /// request to `upstream` (e.g. `https://127.0.0.1:PORT`), trusting `tls`'s CA.
    pub async fn start(tls: &Tls, upstream: &str) -> RevokingProxy {
        let client = reqwest::Client::builder()
            .tls_certs_merge([reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap()])
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let keys = Arc::new(Mutex::new(Keys::default()));
        let refused = Arc::new(AtomicUsize::new(0));
        let shared = Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client,
            keys: keys.clone(),
            refused: refused.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tls.serve(listener, app);
        RevokingProxy {
            port,
            keys,
            refused,
            _server: server,
        }
    }

    /// The blob endpoint to give the handler (https, the dev account).
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}/devstoreaccount1", self.port)
    }

    /// How many distinct user delegation keys have signed a SAS seen by the proxy.
    pub fn keys_seen(&self) -> usize {
        self.keys.lock().unwrap().seen.len()
    }

    /// Revokes every key seen so far.
    pub fn revoke_all_keys(&self) {
        let mut keys = self.keys.lock().unwrap();
        let seen = keys.seen.clone();
        keys.revoked.extend(seen);
    }
}

async fn forward(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let query = parts.uri.query().unwrap_or("");
    if let Some(key) = delegation_key_of(query) {
        let revoked = {
            let mut keys = shared.keys.lock().unwrap();
            keys.seen.insert(key.clone());
            keys.revoked.contains(&key)
        };
        if revoked {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            return authentication_failed();
        }
    }
    let request = Request::from_parts(parts, body);
    super::front::forward(&shared.client, &shared.upstream, request).await
}

/// `(skt, ske)` of a user-delegation SAS query, if it is one.
fn delegation_key_of(query: &str) -> Option<(String, String)> {
    let pairs: Vec<(String, String)> = url_pairs(query);
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    Some((get("skt")?, get("ske")?))
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

fn authentication_failed() -> Response {
    let body = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request. The user delegation key has been revoked.</Message></Error>";
    Response::builder()
        .status(StatusCode::FORBIDDEN)
        .header("content-type", "application/xml")
        .header("x-ms-error-code", "AuthenticationFailed")
        .body(Body::from(body))
        .unwrap()
}
