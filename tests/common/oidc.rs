//! A stand-in identity issuer on loopback: OIDC discovery and a JWKS of RS256 keys generated in
//! the test (rotatable), plus the token endpoints CI systems give their jobs:
//! - GitHub Actions: `GET /github/token?api-version=2.0&audience=AUD` with
//!   `Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN`, answering `{"value": "<jwt>"}`;
//! - the Azure CLI (`az account get-access-token`), through a stand-in `az` script that GETs
//!   `/az/token?resource=RESOURCE` and prints what the real CLI prints.
//!
//! Tokens it mints carry the claims the test sets, shaped like the real issuer's (see
//! `tests/keyless.rs`). It counts the discovery and JWKS requests it serves, so tests can check
//! when the server fetches keys, and can be made to fail them (an issuer outage).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

/// The bearer token the GitHub stand-in expects (the runner's `ACTIONS_ID_TOKEN_REQUEST_TOKEN`).
pub const RUNNER_REQUEST_TOKEN: &str = "runner-request-token-0123456789";

struct SigningKey {
    kid: String,
    private: rsa::RsaPrivateKey,
}

struct Shared {
    issuer: String,
    keys: Mutex<Vec<SigningKey>>,
    /// Claims of the tokens the CI endpoints hand out (`iss`, `aud`, times are added).
    ci_claims: Mutex<Value>,
    discovery_requests: AtomicUsize,
    jwks_requests: AtomicUsize,
    down: AtomicBool,
    /// RSA modulus size of the keys it makes.
    bits: usize,
}

pub struct Issuer {
    shared: Arc<Shared>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    _server: tokio::task::JoinHandle<()>,
}

impl Issuer {
    /// Starts an issuer whose `iss` is `http://127.0.0.1:PORT{path}` (path "" or e.g.
    /// `/TENANT/v2.0`), with one fresh RS256 key.
    pub async fn start(path: &str) -> Issuer {
        Self::start_with_bits(path, 2048).await
    }

    /// [`Issuer::start`] with RSA keys of `bits` bits (2048 or 4096, as real issuers use).
    pub async fn start_with_bits(path: &str, bits: usize) -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            issuer: format!("{base}{path}"),
            keys: Mutex::new(vec![new_key(bits)]),
            ci_claims: Mutex::new(json!({})),
            discovery_requests: AtomicUsize::new(0),
            jwks_requests: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            bits,
        });
        let root = path.trim_end_matches('/');
        let app = axum::Router::new()
            .route(
                &format!("{root}/.well-known/openid-configuration"),
                axum::routing::get(discovery),
            )
            .route(&format!("{root}/keys"), axum::routing::get(jwks))
            .route("/github/token", axum::routing::get(github_token))
            .route("/az/token", axum::routing::get(az_token))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Issuer {
            shared,
            base,
            _server: server,
        }
    }

    /// The `iss` of its tokens, exactly as a trust rule must name it.
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// Mints a token signed with the current key, with `claims` as they are (no defaults).
    pub fn sign(&self, claims: &Value) -> String {
        let keys = self.shared.keys.lock().unwrap();
        sign_with(keys.last().unwrap(), claims)
    }

    /// Mints a token signed with the current key whose payload is `payload` byte for byte: JSON
    /// no `Value` can hold, such as a claim given twice.
    pub fn sign_payload(&self, payload: &str) -> String {
        let keys = self.shared.keys.lock().unwrap();
        let key = keys.last().unwrap();
        let der = key.private.to_pkcs1_der().unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": key.kid});
        let message = format!("{}.{}", b64.encode(header.to_string()), b64.encode(payload));
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_rsa_der(der.as_bytes()),
            Algorithm::RS256,
        )
        .unwrap();
        format!("{message}.{signature}")
    }

    /// Mints a token signed with the current key, its header changed by `edit` (a `crit`
    /// extension, say) before signing.
    pub fn sign_with_header(&self, claims: &Value, edit: impl FnOnce(&mut Header)) -> String {
        let keys = self.shared.keys.lock().unwrap();
        let key = keys.last().unwrap();
        let der = key.private.to_pkcs1_der().unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        edit(&mut header);
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(der.as_bytes())).unwrap()
    }

    /// `claims` with this issuer's `iss`, the audience and a fresh 5-minute lifetime added.
    pub fn claims(&self, audience: &str, mut claims: Value) -> Value {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let object = claims.as_object_mut().unwrap();
        object.insert("iss".into(), self.issuer().into());
        object.insert("aud".into(), audience.into());
        object.entry("iat").or_insert(now.into());
        object.entry("nbf").or_insert((now - 600).into());
        object.entry("exp").or_insert((now + 300).into());
        object
            .entry("jti")
            .or_insert(uuid::Uuid::new_v4().to_string().into());
        claims
    }

    /// The public key of the current key as a JWK, for forging algorithm-confusion tokens.
    pub fn public_jwk(&self) -> Value {
        let keys = self.shared.keys.lock().unwrap();
        jwk_of(keys.last().unwrap())
    }

    /// The current key's public key, PKCS#1 DER (what a confused verifier would use as an HMAC
    /// secret).
    pub fn public_key_der(&self) -> Vec<u8> {
        use rsa::pkcs1::EncodeRsaPublicKey;
        let keys = self.shared.keys.lock().unwrap();
        let public = rsa::RsaPublicKey::from(&keys.last().unwrap().private);
        public.to_pkcs1_der().unwrap().as_bytes().to_vec()
    }

    /// Rotates: a new key signs from now on; the JWKS publishes only it.
    pub fn rotate(&self) -> String {
        let key = new_key(self.shared.bits);
        let kid = key.kid.clone();
        *self.shared.keys.lock().unwrap() = vec![key];
        kid
    }

    /// Sets the claims the CI token endpoints hand out (`iss`, `aud` and times are added).
    pub fn set_ci_claims(&self, claims: Value) {
        *self.shared.ci_claims.lock().unwrap() = claims;
    }

    /// Discovery and JWKS requests served so far.
    pub fn key_requests(&self) -> usize {
        self.shared.discovery_requests.load(Ordering::SeqCst)
            + self.shared.jwks_requests.load(Ordering::SeqCst)
    }

    /// Makes discovery and JWKS answer 503 (`true`) or work again.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Writes a stand-in `az` (the Azure CLI) into `dir`: `az account get-access-token
    /// --resource R --query accessToken -o tsv` prints a token of this issuer for audience `R`,
    /// and fails like the real CLI when not logged in (`AZ_STANDIN_LOGGED_OUT=1`). Put `dir`
    /// first on `PATH`.
    pub fn install_az(&self, dir: &Path) -> PathBuf {
        let script = format!(
            r#"#!/usr/bin/env bash
# Stand-in for the Azure CLI in tests: only `az account get-access-token`.
set -euo pipefail
if [ "${{AZ_STANDIN_LOGGED_OUT:-}}" = 1 ]; then
  echo "ERROR: Please run 'az login' to setup account." >&2
  exit 1
fi
[ "$1 $2" = "account get-access-token" ] || {{ echo "stand-in az: unsupported: $*" >&2; exit 2; }}
shift 2
resource= query= output=json
while [ $# -gt 0 ]; do
  case "$1" in
    --resource) resource=$2; shift 2 ;;
    --query) query=$2; shift 2 ;;
    -o|--output) output=$2; shift 2 ;;
    *) shift ;;
  esac
done
json=$(curl -fsS --get --data-urlencode "resource=$resource" "{base}/az/token")
if [ "$query" = accessToken ] && [ "$output" = tsv ]; then
  printf '%s\n' "$json" | sed -e 's/.*"accessToken":"\([^"]*\)".*/\1/'
else
  printf '%s\n' "$json"
fi
"#,
            base = self.base
        );
        let path = dir.join("az");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

fn new_key(bits: usize) -> SigningKey {
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).unwrap();
    SigningKey {
        kid: uuid::Uuid::new_v4().simple().to_string(),
        private,
    }
}

fn sign_with(key: &SigningKey, claims: &Value) -> String {
    let der = key.private.to_pkcs1_der().unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(der.as_bytes())).unwrap()
}

fn jwk_of(key: &SigningKey) -> Value {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    json!({
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": key.kid,
        "n": b64.encode(key.private.n().to_bytes_be()),
        "e": b64.encode(key.private.e().to_bytes_be()),
    })
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Response {
    shared.discovery_requests.fetch_add(1, Ordering::SeqCst);
    if shared.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    axum::Json(json!({
        "issuer": shared.issuer,
        "jwks_uri": format!("{}/keys", shared.issuer.trim_end_matches('/')),
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }))
    .into_response()
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwks_requests.fetch_add(1, Ordering::SeqCst);
    if shared.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys: Vec<Value> = shared.keys.lock().unwrap().iter().map(jwk_of).collect();
    axum::Json(json!({ "keys": keys })).into_response()
}

fn mint(shared: &Shared, audience: &str) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = shared.ci_claims.lock().unwrap().clone();
    let object = claims.as_object_mut().unwrap();
    object.insert("iss".into(), shared.issuer.clone().into());
    object.insert("aud".into(), audience.into());
    object.insert("iat".into(), now.into());
    object.insert("nbf".into(), (now - 600).into());
    object.insert("exp".into(), (now + 300).into());
    object.insert("jti".into(), uuid::Uuid::new_v4().to_string().into());
    let keys = shared.keys.lock().unwrap();
    sign_with(keys.last().unwrap(), &claims)
}

async fn github_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(&format!("bearer {RUNNER_REQUEST_TOKEN}")));
    if !authorized || !query.contains_key("api-version") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let audience = query.get("audience").cloned().unwrap_or_default();
    axum::Json(json!({ "count": 1, "value": mint(&shared, &audience) })).into_response()
}

async fn az_token(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let resource = query.get("resource").cloned().unwrap_or_default();
    let token = mint(&shared, &resource);
    axum::Json(json!({
        "accessToken": token,
        "expiresOn": "2099-01-01 00:00:00.000000",
        "subscription": "00000000-0000-0000-0000-000000000000",
        "tenant": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "tokenType": "Bearer",
    }))
    .into_response()
}
