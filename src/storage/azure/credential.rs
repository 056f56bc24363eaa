//! The token credential chain, in the spirit of the SDKs' default credential (the Rust SDK has
//! none to reuse): workload identity when a federated token file is configured, managed identity
//! (system-assigned, or user-assigned by `AZURE_CLIENT_ID`), then the Azure CLI for a developer's
//! laptop. The first source that returns a token is remembered and logged by name; tokens
//! themselves are never logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_identity::{
    AzureCliCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential,
};

/// No source has answered yet.
const UNKNOWN: usize = usize::MAX;

/// Tries each credential in order until one returns a token, then sticks to it.
pub struct CredentialChain {
    sources: Vec<(&'static str, Arc<dyn TokenCredential>)>,
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
        let mut sources: Vec<(&'static str, Arc<dyn TokenCredential>)> = Vec::new();
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
            return Err("no Azure credential source is available (managed identity, workload identity or Azure CLI)".into());
        }
        Ok(Self {
            sources,
            chosen: AtomicUsize::new(UNKNOWN),
        })
    }

    /// Name of the source that produced the last token, if any did.
    pub fn chosen(&self) -> Option<&'static str> {
        self.sources
            .get(self.chosen.load(Ordering::Relaxed))
            .map(|(name, _)| *name)
    }
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
