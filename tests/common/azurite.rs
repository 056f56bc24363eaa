//! Azurite, the Azure Storage emulator (npm `azurite`, pinned in tests/e2e), one process per
//! test on an ephemeral port: plain http with the well-known account key, or https with
//! `--oauth basic` for the managed-identity path. Also a stand-in for the App Service managed
//! identity endpoint (`IDENTITY_ENDPOINT`), which the real `azure_identity` credential calls.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use nx_azure_cache::storage::azure::connection_string::{DEV_ACCOUNT, DEV_ACCOUNT_KEY};
use nx_azure_cache::storage::azure::sas::{iso8601, sign};

use super::{e2e_dir, ensure_npm_tools};

/// A CA and a leaf certificate for 127.0.0.1, written to a temporary directory.
pub struct Tls {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    /// The leaf certificate and its private key (PKCS#8), DER-encoded, for in-test servers.
    pub leaf_der: Vec<u8>,
    pub leaf_key_der: Vec<u8>,
}

impl Tls {
    pub fn generate() -> Tls {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("leaf.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("leaf.key"), leaf_key.serialize_pem()).unwrap();
        Tls {
            ca_pem: ca.pem(),
            dir,
            leaf_der: leaf.der().to_vec(),
            leaf_key_der: leaf_key.serialize_der(),
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Serves `app` over https on `listener` with the leaf certificate, one task per
    /// connection, until the returned task is dropped with its owner.
    pub fn serve(
        &self,
        listener: tokio::net::TcpListener,
        app: axum::Router,
    ) -> tokio::task::JoinHandle<()> {
        let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(
                    self.leaf_der.clone(),
                )],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.leaf_key_der.clone().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    }
}

/// A running Azurite blob service; killed when dropped. Its data lives in a temporary directory,
/// so a restart on the same port keeps what was stored.
pub struct Azurite {
    child: Child,
    pub port: u16,
    scheme: &'static str,
    location: std::sync::Arc<tempfile::TempDir>,
    /// Azurite's access log (one line per request it served).
    access_log: Arc<Mutex<Vec<String>>>,
}

impl Azurite {
    /// Plain http, account-key authentication.
    pub fn start() -> Azurite {
        Self::launch(None, 0, std::sync::Arc::new(tempfile::tempdir().unwrap()))
    }

    /// https with `--oauth basic`: accepts bearer tokens for https://storage.azure.com.
    pub fn start_oauth(tls: &Tls) -> Azurite {
        Self::launch(
            Some(tls),
            0,
            std::sync::Arc::new(tempfile::tempdir().unwrap()),
        )
    }

    /// Starts again on the same port and data directory (after [`Azurite::kill`]).
    pub fn restart(&mut self) {
        assert_eq!(self.scheme, "http", "restart is only used on plain http");
        *self = Self::launch(None, self.port, self.location.clone());
    }

    fn launch(
        tls: Option<&Tls>,
        port: u16,
        location: std::sync::Arc<tempfile::TempDir>,
    ) -> Azurite {
        ensure_npm_tools();
        let mut command = Command::new(e2e_dir().join("node_modules/.bin/azurite-blob"));
        command
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
            ])
            .arg(location.path())
            .args(["--loose", "--skipApiVersionCheck", "--disableTelemetry"]);
        if let Some(tls) = tls {
            let dir = tls.dir.path();
            command
                .arg("--cert")
                .arg(dir.join("leaf.pem"))
                .arg("--key")
                .arg(dir.join("leaf.key"))
                .args(["--oauth", "basic"]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let access_log = Arc::new(Mutex::new(Vec::new()));
        let log = access_log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.split("successfully listens on ").nth(1) {
                    let port = port
                        .trim()
                        .rsplit(':')
                        .next()
                        .unwrap()
                        .trim_end_matches('/')
                        .parse::<u16>();
                    if let (Some(sender), Ok(port)) = (tx.take(), port) {
                        let _ = sender.send(port);
                    }
                } else {
                    log.lock().unwrap().push(line);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("azurite did not start");
        Azurite {
            child,
            port,
            scheme: if tls.is_some() { "https" } else { "http" },
            location,
            access_log,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}/{DEV_ACCOUNT}", self.scheme, self.port)
    }

    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol={};AccountName={DEV_ACCOUNT};AccountKey={DEV_ACCOUNT_KEY};BlobEndpoint={};",
            self.scheme,
            self.endpoint()
        )
    }

    /// The settings of a handler that reaches `container` on this Azurite with its account key.
    pub fn key_env(&self, container: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_CONNECTION_STRING", self.connection_string()),
            ("AZURE_STORAGE_CONTAINER", container.to_string()),
        ]
    }

    /// An account SAS (all blob permissions) for the test's own setup and inspection calls.
    pub fn account_sas(&self) -> String {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode(DEV_ACCOUNT_KEY)
            .unwrap();
        let now = time::OffsetDateTime::now_utc();
        let (start, expiry) = (
            iso8601(now - Duration::from_secs(300)),
            iso8601(now + Duration::from_secs(3600)),
        );
        let (version, permissions) = ("2025-01-05", "rwdlac");
        let string_to_sign = format!(
            "{DEV_ACCOUNT}\n{permissions}\nb\nsco\n{start}\n{expiry}\n\nhttps,http\n{version}\n\n"
        );
        let signature = sign(&key, &string_to_sign);
        let encode = |v: &str| {
            percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        format!(
            "sv={version}&ss=b&srt=sco&sp={permissions}&st={}&se={}&spr={}&sig={}",
            encode(&start),
            encode(&expiry),
            encode("https,http"),
            encode(&signature)
        )
    }

    fn client(&self, tls: Option<&Tls>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder();
        if let Some(tls) = tls {
            builder = builder
                .tls_certs_merge([reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap()]);
        }
        builder.build().unwrap()
    }

    /// Creates a container (the handler itself never does).
    pub async fn create_container(&self, name: &str, tls: Option<&Tls>) {
        let url = format!(
            "{}/{name}?restype=container&{}",
            self.endpoint(),
            self.account_sas()
        );
        let response = self
            .client(tls)
            .put(url)
            .header("content-length", "0")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            201,
            "create container: {}",
            response.text().await.unwrap()
        );
    }

    /// Writes a blob directly (not through the handler), e.g. to seed a container.
    pub async fn put_blob(
        &self,
        client: &reqwest::Client,
        container: &str,
        name: &str,
        body: Vec<u8>,
    ) {
        let url = format!(
            "{}/{container}/{name}?{}",
            self.endpoint(),
            self.account_sas()
        );
        let response = client
            .put(url)
            .header("x-ms-blob-type", "BlockBlob")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "put {name}");
    }

    /// Deletes a blob directly (not through the handler): someone in the portal, the lifecycle
    /// policy, retention, a purge from another machine.
    pub async fn delete_blob(&self, client: &reqwest::Client, container: &str, name: &str) {
        let url = format!(
            "{}/{container}/{name}?{}",
            self.endpoint(),
            self.account_sas()
        );
        let response = client.delete(url).send().await.unwrap();
        assert_eq!(response.status(), 202, "delete {name}");
    }

    /// A plain-http client for [`Azurite::put_blob`].
    pub fn http_client(&self) -> reqwest::Client {
        self.client(None)
    }

    /// Blob names in a container.
    pub async fn list_blobs(&self, container: &str, tls: Option<&Tls>) -> Vec<String> {
        let url = format!(
            "{}/{container}?restype=container&comp=list&{}",
            self.endpoint(),
            self.account_sas()
        );
        let body = self
            .client(tls)
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.split("<Name>")
            .skip(1)
            .map(|s| s.split("</Name>").next().unwrap().to_owned())
            .collect()
    }

    /// Waits until Azurite's access log holds every request answered so far: it writes the log
    /// asynchronously, so a request of the test's own, answered after everything before it,
    /// marks the point up to which the log is complete. Call before counting requests.
    pub async fn settle(&self, tls: Option<&Tls>) {
        let marker = format!("settled-{}", uuid::Uuid::new_v4().simple());
        self.list_blobs(&marker, tls).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.requests_matching(&marker) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "Azurite logged nothing"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Access-log lines (requests Azurite served) that contain `needle`.
    pub fn requests_matching(&self, needle: &str) -> usize {
        self.access_log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The emulator's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes the process (SIGSTOP): connections are accepted by the kernel, never answered.
    pub fn pause(&self) {
        signal(&self.child, "-STOP");
    }

    pub fn resume(&self) {
        signal(&self.child, "-CONT");
    }

    /// Stops the process (SIGTERM) and waits for it: Azurite saves its metadata on the way out,
    /// so a [`Azurite::restart`] finds what was stored (SIGKILL would lose it, an emulator quirk).
    pub fn stop(&mut self) {
        signal(&self.child, "-TERM");
        let _ = self.child.wait();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, which: &str) {
    let status = Command::new("kill")
        .args([which, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

impl Drop for Azurite {
    fn drop(&mut self) {
        signal_quietly(&self.child);
        self.kill();
    }
}

fn signal_quietly(child: &Child) {
    let _ = Command::new("kill")
        .args(["-CONT", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The identity endpoint's state: its header secret, request count, tokens handed out.
type IdentityState = (
    String,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<Mutex<Vec<String>>>,
);

/// A stand-in for the App Service managed-identity endpoint: answers token requests with an
/// (unsigned) Entra-shaped JWT that Azurite's `--oauth basic` accepts.
pub struct IdentityEndpoint {
    pub url: String,
    pub secret: String,
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
    /// Every access token handed out, so tests can look for them where they must not be.
    pub issued: Arc<Mutex<Vec<String>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl IdentityEndpoint {
    pub async fn start() -> IdentityEndpoint {
        use axum::extract::{Query, State};
        use axum::http::{HeaderMap, StatusCode};
        use std::collections::HashMap;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let secret = "identity-header-secret".to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let issued = Arc::new(Mutex::new(Vec::new()));
        let state = (secret.clone(), requests.clone(), issued.clone());
        let app = axum::Router::new()
            .route(
                "/msi/token",
                axum::routing::get(
                    |State((secret, requests, issued)): State<IdentityState>,
                     headers: HeaderMap,
                     Query(query): Query<HashMap<String, String>>| async move {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let header_ok = headers
                            .get("x-identity-header")
                            .and_then(|v| v.to_str().ok())
                            == Some(secret.as_str());
                        if !header_ok
                            || query.get("resource").map(String::as_str)
                                != Some("https://storage.azure.com")
                        {
                            return (StatusCode::BAD_REQUEST, String::new());
                        }
                        let (token, body) = token_response();
                        issued.lock().unwrap().push(token);
                        (StatusCode::OK, body)
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/msi/token", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        IdentityEndpoint {
            url,
            secret,
            requests,
            issued,
            _server: server,
        }
    }

    /// The settings that point a handler at `blob_endpoint` (Azurite, or a proxy in front of
    /// it) with this managed identity, trusting the test CA.
    pub fn handler_env(
        &self,
        blob_endpoint: String,
        container: &str,
        tls: &Tls,
    ) -> Vec<(&'static str, String)> {
        let mut env = token_storage_env(blob_endpoint, container, tls);
        env.extend([
            ("IDENTITY_ENDPOINT", self.url.clone()),
            ("IDENTITY_HEADER", self.secret.clone()),
        ]);
        env
    }
}

/// The settings every handler that reaches Azurite with an Entra ID token needs: the account,
/// `blob_endpoint` (Azurite, or a proxy in front of it), the container, and the test CA.
fn token_storage_env(
    blob_endpoint: String,
    container: &str,
    tls: &Tls,
) -> Vec<(&'static str, String)> {
    vec![
        ("AZURE_STORAGE_ACCOUNT", "devstoreaccount1".into()),
        ("AZURE_STORAGE_BLOB_ENDPOINT", blob_endpoint),
        ("AZURE_STORAGE_CONTAINER", container.into()),
        ("SSL_CERT_FILE", tls.ca_file().display().to_string()),
    ]
}

/// An access token and the JSON answer that carries it.
fn token_response() -> (String, String) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let claims = serde_json::json!({
        "aud": "https://storage.azure.com",
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
        "oid": "0b5f2e9c-6d8a-4c1e-9f3b-2a7d4e6c8b10",
        "tid": tenant,
        "appid": "e2e-managed-identity",
    });
    let token = format!(
        "{}.{}.{}",
        b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        b64.encode(claims.to_string()),
        b64.encode("not-checked-by-azurite")
    );
    let body = serde_json::json!({
        "access_token": token,
        "expires_on": (now + 3600).to_string(),
        "resource": "https://storage.azure.com",
        "token_type": "Bearer",
    })
    .to_string();
    (token, body)
}

/// How the stand-in Entra ID token endpoint authenticates a service principal.
#[derive(Clone)]
pub enum ClientProof {
    /// `client_secret` must be this.
    Secret(String),
    /// `client_assertion` must be an RS256 JWT signed by this key, whose `x5t` is the SHA-1
    /// thumbprint of this certificate (DER).
    Certificate {
        public_key: rsa::RsaPublicKey,
        certificate_der: Vec<u8>,
    },
}

/// A stand-in for Microsoft Entra ID's token endpoint (`POST {authority}/{tenant}/oauth2/v2.0/
/// token`, client credentials), over https with the test CA as the real credential requires.
/// It checks the form the way Entra ID does for a secret or a certificate assertion, and
/// answers with an Entra-shaped access token that Azurite's `--oauth basic` accepts.
pub struct EntraTokenEndpoint {
    /// The authority host (`AZURE_AUTHORITY_HOST`): `https://127.0.0.1:PORT`.
    pub authority: String,
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
    /// Requests refused, with the reason.
    pub refused: Arc<Mutex<Vec<String>>>,
    _server: tokio::task::JoinHandle<()>,
}

pub const SERVICE_PRINCIPAL_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const SERVICE_PRINCIPAL_CLIENT_ID: &str = "3c9e1b52-7a4d-4f0e-9b6a-2d8c5e1f0a77";

impl EntraTokenEndpoint {
    pub async fn start(tls: &Tls, proof: ClientProof) -> EntraTokenEndpoint {
        use axum::extract::State;
        use axum::http::StatusCode;
        use std::collections::HashMap;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = format!("https://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let endpoint = format!("{authority}/{SERVICE_PRINCIPAL_TENANT}/oauth2/v2.0/token");
        type EntraState = (
            ClientProof,
            String,
            Arc<AtomicUsize>,
            Arc<Mutex<Vec<String>>>,
        );
        let state: EntraState = (proof, endpoint, requests.clone(), refused.clone());
        let app = axum::Router::new()
            .route(
                &format!("/{SERVICE_PRINCIPAL_TENANT}/oauth2/v2.0/token"),
                axum::routing::post(
                    |State((proof, endpoint, requests, refused)): State<EntraState>,
                     axum::Form(form): axum::Form<HashMap<String, String>>| async move {
                        requests.fetch_add(1, Ordering::SeqCst);
                        match check_client(&form, &proof, &endpoint) {
                            Ok(()) => {
                                let (token, _) = token_response();
                                let body = serde_json::json!({
                                    "token_type": "Bearer", "expires_in": 3599,
                                    "ext_expires_in": 3599, "access_token": token,
                                });
                                (StatusCode::OK, body.to_string())
                            }
                            Err(reason) => {
                                refused.lock().unwrap().push(reason.clone());
                                let body = serde_json::json!({
                                    "error": "invalid_client", "error_description": reason,
                                });
                                (StatusCode::UNAUTHORIZED, body.to_string())
                            }
                        }
                    },
                ),
            )
            .with_state(state);
        let server = tls.serve(listener, app);
        EntraTokenEndpoint {
            authority,
            requests,
            refused,
            _server: server,
        }
    }

    /// The settings of a handler that reaches `blob_endpoint` as this service principal.
    pub fn handler_env(
        &self,
        blob_endpoint: String,
        container: &str,
        tls: &Tls,
        proof: (&'static str, String),
    ) -> Vec<(&'static str, String)> {
        let mut env = token_storage_env(blob_endpoint, container, tls);
        env.extend([
            ("AZURE_TENANT_ID", SERVICE_PRINCIPAL_TENANT.into()),
            ("AZURE_CLIENT_ID", SERVICE_PRINCIPAL_CLIENT_ID.into()),
            ("AZURE_AUTHORITY_HOST", self.authority.clone()),
            proof,
        ]);
        env
    }
}

/// What Entra ID checks of a client-credentials request: the grant, the client, the scope, and
/// the secret or the signed assertion.
fn check_client(
    form: &std::collections::HashMap<String, String>,
    proof: &ClientProof,
    endpoint: &str,
) -> Result<(), String> {
    use base64::Engine;
    let field = |name: &str| form.get(name).map(String::as_str);
    if field("grant_type") != Some("client_credentials") {
        return Err(format!("grant_type {:?}", field("grant_type")));
    }
    if field("client_id") != Some(SERVICE_PRINCIPAL_CLIENT_ID) {
        return Err(format!("client_id {:?}", field("client_id")));
    }
    if field("scope") != Some("https://storage.azure.com/.default") {
        return Err(format!("scope {:?}", field("scope")));
    }
    match proof {
        ClientProof::Secret(secret) => (field("client_secret") == Some(secret.as_str()))
            .then_some(())
            .ok_or_else(|| "wrong client_secret".to_string()),
        ClientProof::Certificate {
            public_key,
            certificate_der,
        } => {
            if field("client_assertion_type")
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return Err("client_assertion_type".into());
            }
            let assertion = field("client_assertion").ok_or("no client_assertion")?;
            let header = jsonwebtoken::decode_header(assertion).map_err(|e| e.to_string())?;
            let thumbprint = aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                certificate_der,
            );
            let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(thumbprint);
            if header.x5t.as_deref() != Some(expected.as_str()) {
                return Err(format!("x5t {:?}", header.x5t));
            }
            use rsa::traits::PublicKeyParts;
            let key = jsonwebtoken::DecodingKey::from_rsa_raw_components(
                &public_key.n().to_bytes_be(),
                &public_key.e().to_bytes_be(),
            );
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.set_audience(&[endpoint]);
            validation.set_issuer(&[SERVICE_PRINCIPAL_CLIENT_ID]);
            validation.sub = Some(SERVICE_PRINCIPAL_CLIENT_ID.into());
            jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation)
                .map(|_| ())
                .map_err(|e| format!("client_assertion: {e}"))
        }
    }
}
