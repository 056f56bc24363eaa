//! A service principal's certificate, for the environment credential
//! (`AZURE_CLIENT_CERTIFICATE_PATH`): the handler signs a client assertion with the
//! certificate's private key, as Microsoft Entra ID's certificate credentials are documented
//! (a JWT with `aud` = the token endpoint, `iss` = `sub` = the client id, a fresh `jti`, five
//! minutes of life, and the certificate's SHA-1 thumbprint in `x5t`).
//!
//! `azure_identity`'s own certificate credential needs OpenSSL, which the static build of the
//! handler does without; this is the same assertion with aws-lc-rs, already in the tree through
//! rustls. The file is PEM holding the certificate and its unencrypted RSA private key (PKCS#8
//! or PKCS#1), as the Azure CLI writes it (`az ad sp create-for-rbac --create-cert`). PKCS#12
//! files (`.pfx`, `.p12`) and encrypted keys are refused with the command that converts them.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lc_rs::rsa::KeyPair;
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use azure_core::http::ClientMethodOptions;
use azure_identity::ClientAssertion;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Lifetime of one assertion.
const ASSERTION_LIFETIME: u64 = 300;

/// Signs client assertions with a certificate's key.
pub struct CertificateAssertion {
    key: KeyPair,
    /// `x5t`: the certificate's SHA-1 thumbprint, base64url.
    thumbprint: String,
    client_id: String,
    /// The token endpoint: the assertion's audience.
    audience: String,
}

impl std::fmt::Debug for CertificateAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAssertion")
            .field("thumbprint", &self.thumbprint)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl CertificateAssertion {
    /// Reads `path`. `token_endpoint` is where the assertion is sent
    /// (`{authority}/{tenant}/oauth2/v2.0/token`). Errors say what to fix, never the key.
    pub fn from_pem_file(
        path: &Path,
        password: Option<&str>,
        client_id: &str,
        token_endpoint: &str,
    ) -> Result<Self, String> {
        let shown = path.display();
        let extension = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if matches!(extension.as_deref(), Some("pfx" | "p12")) {
            return Err(format!(
                "{shown} is PKCS#12; convert it to PEM with its key unencrypted: openssl pkcs12 -in {shown} -out cert.pem -nodes"
            ));
        }
        if password.is_some() {
            return Err(
                "AZURE_CLIENT_CERTIFICATE_PASSWORD is set, but only a PEM file with an unencrypted key is read; decrypt it: openssl pkcs12 -in cert.pfx -out cert.pem -nodes (or openssl rsa -in key.pem -out plain.pem)"
                    .into(),
            );
        }
        let text = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        if text
            .windows(b"ENCRYPTED PRIVATE KEY".len())
            .any(|w| w == b"ENCRYPTED PRIVATE KEY")
        {
            return Err(format!(
                "{shown} holds an encrypted private key; decrypt it: openssl pkcs8 -in {shown} -out plain.pem"
            ));
        }
        let certificate = CertificateDer::from_pem_slice(&text)
            .map_err(|_| format!("{shown} holds no PEM certificate"))?;
        let key = match PrivateKeyDer::from_pem_slice(&text)
            .map_err(|_| format!("{shown} holds no PEM private key"))?
        {
            PrivateKeyDer::Pkcs8(der) => KeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => KeyPair::from_der(der.secret_pkcs1_der()),
            _ => return Err(format!("the private key in {shown} is not an RSA key")),
        }
        .map_err(|_| format!("the private key in {shown} is not a usable RSA key"))?;
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            certificate.as_ref(),
        );
        Ok(Self {
            key,
            thumbprint: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref()),
            client_id: client_id.to_owned(),
            audience: token_endpoint.to_owned(),
        })
    }

    /// A signed assertion, valid for five minutes from `now` (seconds since the epoch).
    fn sign(&self, now: u64) -> Result<String, String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": self.thumbprint});
        let claims = serde_json::json!({
            "aud": self.audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "iat": now,
            "nbf": now,
            "exp": now + ASSERTION_LIFETIME,
        });
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "signing the client assertion failed".to_string())?;
        Ok(format!("{input}.{}", b64.encode(signature)))
    }
}

#[async_trait]
impl ClientAssertion for CertificateAssertion {
    async fn secret(
        &self,
        _options: Option<ClientMethodOptions<'_>>,
    ) -> azure_core::Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.sign(now).map_err(|e| {
            azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_with_key() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        use rsa::pkcs8::EncodePrivateKey;
        let rsa_key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let pkcs8 = rsa_key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let key = rcgen::KeyPair::from_pem(&pkcs8).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["nx-cache".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sp.pem");
        std::fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        (dir, path, cert.der().to_vec())
    }

    #[test]
    fn assertions_carry_the_thumbprint_and_the_endpoint() {
        let (_dir, path, der) = pem_with_key();
        let endpoint = "https://login.microsoftonline.com/tenant/oauth2/v2.0/token";
        let assertion = CertificateAssertion::from_pem_file(&path, None, "app", endpoint).unwrap();
        let token = assertion.sign(1_000).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = token.split('.').collect();
        let header: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        let thumbprint =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
        assert_eq!(header["x5t"], b64.encode(thumbprint.as_ref()));
        assert_eq!(header["alg"], "RS256");
        assert_eq!(claims["aud"], endpoint);
        assert_eq!(
            (&claims["iss"], &claims["sub"]),
            (&"app".into(), &"app".into())
        );
        assert_eq!(claims["exp"], 1_300);
        // The signature verifies with the certificate's public key.
        use aws_lc_rs::signature::KeyPair as _;
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            assertion.key.public_key().as_ref(),
        );
        let signature = b64.decode(parts[2]).unwrap();
        public
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .unwrap();
    }

    #[test]
    fn files_it_cannot_read_are_refused_with_what_to_do() {
        let (dir, path, _) = pem_with_key();
        let endpoint = "https://login.microsoftonline.com/t/oauth2/v2.0/token";
        let pfx = dir.path().join("sp.pfx");
        std::fs::write(&pfx, b"binary").unwrap();
        for (file, password, expected) in [
            (pfx.as_path(), None, "openssl pkcs12"),
            (
                path.as_path(),
                Some("secret"),
                "AZURE_CLIENT_CERTIFICATE_PASSWORD",
            ),
            (
                dir.path().join("missing.pem").as_path(),
                None,
                "cannot read",
            ),
        ] {
            let err =
                CertificateAssertion::from_pem_file(file, password, "app", endpoint).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        let only_cert = dir.path().join("cert.pem");
        let text = std::fs::read_to_string(&path).unwrap();
        let cert_part = &text[..text.find("-----BEGIN PRIVATE KEY").unwrap()];
        std::fs::write(&only_cert, cert_part).unwrap();
        let err =
            CertificateAssertion::from_pem_file(&only_cert, None, "app", endpoint).unwrap_err();
        assert!(err.contains("no PEM private key"), "{err}");
    }
}
