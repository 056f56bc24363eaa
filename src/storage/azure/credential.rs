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
//! The first source that returns a token is remembered and logged by name, and `handler doctor`
//! names it; tokens and secrets are never logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use azure_core::credentials::Secret;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_identity::{
    AzureCliCredential, ClientAssertionCredential, ClientSecretCredential,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential,
};

use super::certificate::CertificateAssertion;

/// Microsoft Entra ID's login host in the public cloud (`AZURE_AUTHORITY_HOST` changes it).
const PUBLIC_AUTHORITY: &str = "https://login.microsoftonline.com";

/// A credential and the name it is logged by.
type Source = (&'static str, Arc<dyn TokenCredential>);

/// No source has answered yet.
const UNKNOWN: usize = usize::MAX;

/// Tries each credential in order until one returns a token, then sticks to it.
pub struct CredentialChain {
    sources: Vec<Source>,
    chosen: AtomicUsize,
}

impl std::fmt::Debug for CredentialChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.sources.iter().map(|(name, _)| *name).collect();
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
        let mut sources: Vec<Source> = Vec::new();
        if let Some(source) = environment_credential(&env)? {
            sources.push(source);
        }
        if env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            let credential = WorkloadIdentityCredential::new(None)
                .map_err(|e| format!("workload identity is configured but unusable: {e}"))?;
            sources.push(("workload identity", credential));
        }
        let options = ManagedIdentityCredentialOptions {
            user_assigned_id: client_id.map(|id| UserAssignedId::ClientId(id.to_owned())),
            ..Default::default()
        };
        match ManagedIdentityCredential::new(Some(options)) {
            Ok(credential) => {
                let name = match client_id {
                    Some(_) => "managed identity (user-assigned)",
                    None => "managed identity (system-assigned)",
                };
                sources.push((name, credential));
            }
            Err(e) => tracing::debug!(error = %e, "managed identity unavailable"),
        }
        // On Azure (App Service / Functions set IDENTITY_ENDPOINT) the CLI is never the answer.
        if env("IDENTITY_ENDPOINT").is_none()
            && let Ok(credential) = AzureCliCredential::new(None)
        {
            sources.push(("Azure CLI", credential));
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
        self.sources.iter().map(|(name, _)| *name).collect()
    }

    /// Name of the source that produced the last token, if any did.
    pub fn chosen(&self) -> Option<&'static str> {
        self.sources
            .get(self.chosen.load(Ordering::Relaxed))
            .map(|(name, _)| *name)
    }
}

/// The environment credential: a service principal with a client secret or a certificate,
/// when `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and one of the two are set. A secret wins over a
/// certificate, as in the SDKs. Half a configuration (a tenant and a secret but no client id,
/// say) is an error naming what is missing.
fn environment_credential(env: &impl Fn(&str) -> Option<String>) -> Result<Option<Source>, String> {
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
        let credential = ClientSecretCredential::new(&tenant, client_id, Secret::new(secret), None)
            .map_err(unusable)?;
        return Ok(Some(("environment (client secret)", credential)));
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
    let credential =
        ClientAssertionCredential::new(tenant, client_id, assertion, None).map_err(unusable)?;
    Ok(Some(("environment (client certificate)", credential)))
}

#[async_trait]
impl TokenCredential for CredentialChain {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let chosen = self.chosen.load(Ordering::Relaxed);
        if let Some((_, credential)) = self.sources.get(chosen) {
            return credential.get_token(scopes, options).await;
        }
        let mut failures = Vec::new();
        for (index, (name, credential)) in self.sources.iter().enumerate() {
            match credential.get_token(scopes, options.clone()).await {
                Ok(token) => {
                    self.chosen.store(index, Ordering::Relaxed);
                    tracing::info!(credential = name, "Azure credential acquired a token");
                    return Ok(token);
                }
                Err(e) => failures.push(format!("{name}: {e}")),
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
