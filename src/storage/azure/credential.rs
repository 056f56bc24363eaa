//! The token credential chain, in the order of the SDKs' default credential (the Rust SDK has
//! none to reuse), which is what the `@nx/azure-cache` plugin accepted:
//! 1. the environment credential, for a handler run outside Azure: a service principal's
//!    `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET`, or
//!    `AZURE_CLIENT_CERTIFICATE_PATH` (a PEM certificate with its key, [`super::certificate`]);
//!    `AZURE_AUTHORITY_HOST` names another cloud's login host;
//! 2. workload identity, when a federated token file is configured;
//! 3. managed identity (system-assigned, or user-assigned by `AZURE_CLIENT_ID`);
//! 4. the Azure CLI, on a developer's laptop (never on App Service / Functions).
//!
//! The first source that returns a token is remembered and logged by name; tokens and secrets
//! are never logged. `handler doctor` asks every source in turn ([`CredentialChain::try_each`])
//! and names each one's answer, so a source that got no token is never mistaken for a missing
//! role.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::Secret;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, RetryOptions};
use azure_identity::{
    AzureCliCredential, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};

use super::certificate::CertificateAssertion;

/// Microsoft Entra ID's login host in the public cloud (`AZURE_AUTHORITY_HOST` changes it).
const PUBLIC_AUTHORITY: &str = "https://login.microsoftonline.com";

/// A credential, the name it is logged by, and what it is built from (so that an operator whose
/// source got no token knows where to look).
struct Source {
    name: &'static str,
    needs: &'static str,
    credential: Arc<dyn TokenCredential>,
}

/// What one source answered when asked for a token ([`CredentialChain::try_each`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub source: &'static str,
    /// What the source is built from, in words: the settings to check when it got no token.
    pub needs: &'static str,
    /// `Err` holds the source's own error, on one line.
    pub result: Result<(), String>,
}

/// No source has answered yet.
const UNKNOWN: usize = usize::MAX;

/// Tries each credential in order until one returns a token, then sticks to it.
pub struct CredentialChain {
    sources: Vec<Source>,
    chosen: AtomicUsize,
}

impl std::fmt::Debug for CredentialChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.sources.iter().map(|source| source.name).collect();
        f.debug_struct("CredentialChain")
            .field("sources", &names)
            .finish()
    }
}

impl CredentialChain {
    /// Builds the chain from the environment (`env` is a lookup, for tests).
    pub fn from_env(
        client_id: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        Self::build(client_id, env, ClientOptions::default())
    }

    /// The same chain with each credential's own retries off, for `handler doctor`: a source
    /// whose endpoint cannot be reached answers with its first error, instead of retrying for a
    /// minute and being cut off by a timeout that hides why.
    pub fn without_retries(
        client_id: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let options = ClientOptions {
            retry: RetryOptions::none(),
            ..Default::default()
        };
        Self::build(client_id, env, options)
    }

    fn build(
        client_id: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        client_options: ClientOptions,
    ) -> Result<Self, String> {
        let mut sources: Vec<Source> = Vec::new();
        if let Some(source) = environment_credential(&env, &client_options)? {
            sources.push(source);
        }
        if env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            let options = WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: client_options.clone(),
                },
                ..Default::default()
            };
            let credential = WorkloadIdentityCredential::new(Some(options))
                .map_err(|e| format!("workload identity is configured but unusable: {e}"))?;
            sources.push(Source {
                name: "workload identity",
                needs: "AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID and AZURE_TENANT_ID, and the login host",
                credential,
            });
        }
        let options = ManagedIdentityCredentialOptions {
            user_assigned_id: client_id.map(|id| UserAssignedId::ClientId(id.to_owned())),
            client_options: client_options.clone(),
        };
        match ManagedIdentityCredential::new(Some(options)) {
            Ok(credential) => {
                let (name, needs) = match client_id {
                    Some(_) => (
                        "managed identity (user-assigned)",
                        "an identity assigned to the app whose client id is AZURE_CLIENT_ID; only on Azure",
                    ),
                    None => (
                        "managed identity (system-assigned)",
                        "the app's system-assigned identity; only on Azure",
                    ),
                };
                sources.push(Source {
                    name,
                    needs,
                    credential,
                });
            }
            Err(e) => tracing::debug!(error = %e, "managed identity unavailable"),
        }
        // On Azure (App Service / Functions set IDENTITY_ENDPOINT) the CLI is never the answer.
        if env("IDENTITY_ENDPOINT").is_none()
            && let Ok(credential) = AzureCliCredential::new(None)
        {
            sources.push(Source {
                name: "Azure CLI",
                needs: "`az login` on this machine",
                credential,
            });
        }
        if sources.is_empty() {
            return Err("no Azure credential source is available (a service principal's AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH, workload identity, managed identity or the Azure CLI)".into());
        }
        Ok(Self {
            sources,
            chosen: AtomicUsize::new(UNKNOWN),
        })
    }

    /// The sources, in the order they are tried.
    pub fn names(&self) -> Vec<&'static str> {
        self.sources.iter().map(|source| source.name).collect()
    }

    /// Name of the source that produced the last token, if any did.
    pub fn chosen(&self) -> Option<&'static str> {
        self.sources
            .get(self.chosen.load(Ordering::Relaxed))
            .map(|source| source.name)
    }

    /// Asks each source in order for a token, each within `bound`, until one returns one (which
    /// is then the chosen source); what each source asked answered, in order. For `handler
    /// doctor`: the chain's own error after a timeout would say neither which source was asked
    /// nor why it failed.
    pub async fn try_each(&self, scopes: &[&str], bound: Duration) -> Vec<Attempt> {
        let mut attempts = Vec::new();
        for (index, source) in self.sources.iter().enumerate() {
            let result = match tokio::time::timeout(
                bound,
                source.credential.get_token(scopes, None),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(one_line(&super::with_causes(&e))),
                Err(_) => Err(format!("no token within {bound:?}")),
            };
            let got = result.is_ok();
            attempts.push(Attempt {
                source: source.name,
                needs: source.needs,
                result,
            });
            if got {
                self.chosen.store(index, Ordering::Relaxed);
                break;
            }
        }
        attempts
    }
}

/// An error message on one line: credential errors can span several (Entra's descriptions, the
/// Azure CLI's output), and `handler doctor` prints one line per source.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The environment credential: a service principal with a client secret or a certificate,
/// when `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and one of the two are set. A secret wins over a
/// certificate, as in the SDKs. Half a configuration (a tenant and a secret but no client id,
/// say) is an error naming what is missing.
fn environment_credential(
    env: &impl Fn(&str) -> Option<String>,
    client_options: &ClientOptions,
) -> Result<Option<Source>, String> {
    let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let secret = get("AZURE_CLIENT_SECRET");
    let certificate = get("AZURE_CLIENT_CERTIFICATE_PATH");
    if secret.is_none() && certificate.is_none() {
        return Ok(None);
    }
    let (Some(tenant), Some(client_id)) = (get("AZURE_TENANT_ID"), get("AZURE_CLIENT_ID")) else {
        return Err(
            "AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH is set: the environment credential also needs AZURE_TENANT_ID and AZURE_CLIENT_ID (the service principal's tenant and application id)"
                .into(),
        );
    };
    let unusable = |e: azure_core::Error| format!("the environment credential is unusable: {e}");
    if let Some(secret) = secret {
        let options = ClientSecretCredentialOptions {
            client_options: client_options.clone(),
        };
        let credential =
            ClientSecretCredential::new(&tenant, client_id, Secret::new(secret), Some(options))
                .map_err(unusable)?;
        return Ok(Some(Source {
            name: "environment (client secret)",
            needs: "AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, and the login host (AZURE_AUTHORITY_HOST, by default https://login.microsoftonline.com)",
            credential,
        }));
    }
    let path = certificate.unwrap_or_default();
    let authority = get("AZURE_AUTHORITY_HOST").unwrap_or_else(|| PUBLIC_AUTHORITY.into());
    let endpoint = format!(
        "{}/{tenant}/oauth2/v2.0/token",
        authority.trim_end_matches('/')
    );
    let assertion = CertificateAssertion::from_pem_file(
        std::path::Path::new(&path),
        get("AZURE_CLIENT_CERTIFICATE_PASSWORD").as_deref(),
        &client_id,
        &endpoint,
    )
    .map_err(|e| format!("AZURE_CLIENT_CERTIFICATE_PATH: {e}"))?;
    let options = ClientAssertionCredentialOptions {
        client_options: client_options.clone(),
    };
    let credential = ClientAssertionCredential::new(tenant, client_id, assertion, Some(options))
        .map_err(unusable)?;
    Ok(Some(Source {
        name: "environment (client certificate)",
        needs: "AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_CERTIFICATE_PATH, and the login host (AZURE_AUTHORITY_HOST, by default https://login.microsoftonline.com)",
        credential,
    }))
}

#[async_trait]
impl TokenCredential for CredentialChain {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let chosen = self.chosen.load(Ordering::Relaxed);
        if let Some(source) = self.sources.get(chosen) {
            return source.credential.get_token(scopes, options).await;
        }
        let mut failures = Vec::new();
        for (index, source) in self.sources.iter().enumerate() {
            match source.credential.get_token(scopes, options.clone()).await {
                Ok(token) => {
                    self.chosen.store(index, Ordering::Relaxed);
                    tracing::info!(
                        credential = source.name,
                        "Azure credential acquired a token"
                    );
                    return Ok(token);
                }
                Err(e) => failures.push(format!("{}: {e}", source.name)),
            }
        }
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            format!(
                "no Azure credential could get a token ({})",
                failures.join("; ")
            ),
        ))
    }
}
