//! A plain-http reverse proxy on loopback whose upstream can be switched while clients use it,
//! the way the Azure Functions front end moves requests to a new worker when the app restarts
//! (e.g. after an app setting changed). Each request goes to the upstream current when it
//! arrives, so switching never breaks a client's connection.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

pub struct Front {
    pub base_url: String,
    upstream: Arc<Mutex<String>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Front {
    /// Starts in front of `upstream` (e.g. `http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> Front {
        let current = Arc::new(Mutex::new(upstream.to_owned()));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let state = (current.clone(), client);
        let app = axum::Router::new()
            .fallback(
                |State((current, client)): State<(Arc<Mutex<String>>, reqwest::Client)>,
                 request: Request| async move {
                    let upstream = current.lock().unwrap().clone();
                    forward(&client, &upstream, request).await
                },
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Front {
            base_url,
            upstream: current,
            _server: server,
        }
    }

    /// Sends every request from now on to `upstream`.
    pub fn switch_to(&self, upstream: &str) {
        *self.upstream.lock().unwrap() = upstream.to_owned();
    }
}

/// Forwards `request` to `upstream` + its path and query, bodies buffered (test sizes), and
/// answers with the upstream's answer.
pub async fn forward(client: &reqwest::Client, upstream: &str, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let url = format!("{}{path_and_query}", upstream.trim_end_matches('/'));
    let body = axum::body::to_bytes(body, 256 << 20).await.unwrap();
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" && name != "connection" {
            headers.append(name, value.clone());
        }
    }
    let answer = match client
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != "transfer-encoding" && name != "connection" {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).unwrap()
}
