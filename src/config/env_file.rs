//! Settings files for `handler check`: the app settings a deployment is about to apply, checked
//! offline before they go live.
//!
//! One `NAME=VALUE` per line; blank lines and lines starting with `#` are skipped; the value is
//! the rest of the line as written, with one pair of matching surrounding quotes removed (so
//! `NX_CACHE_MODE="read-only"` means `read-only`). No escapes, no variable expansion: a trust
//! policy is one line of JSON (`jq -c`).

use super::tokens::is_key_vault_reference;

/// Settings whose value may be an App Service Key Vault reference (`@Microsoft.KeyVault(...)`):
/// the platform resolves them at run time, so an offline check cannot see the secret.
const SECRET_SETTINGS: [&str; 2] = ["NX_CACHE_JWT_SECRET", "NX_CACHE_JWT_PREVIOUS_SECRETS"];

/// Stands in for a secret that only the platform can resolve: long enough for any algorithm.
const RESOLVED_LATER: &str = "key-vault-reference-resolved-by-the-platform-at-run-time-0123456";

/// Parses a settings file. The error names the line.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut settings: Vec<(String, String)> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((name, value)) = trimmed.split_once('=') else {
            return Err(format!(
                "line {}: expected NAME=VALUE, got '{}'",
                number + 1,
                super::parse::shorten(trimmed)
            ));
        };
        let name = name.trim();
        let valid =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(format!(
                "line {}: '{}' is not a setting name",
                number + 1,
                super::parse::shorten(name)
            ));
        }
        let value = unquote(value);
        if let Some(existing) = settings.iter_mut().find(|(known, _)| known == name) {
            existing.1 = value.to_owned();
        } else {
            settings.push((name.to_owned(), value.to_owned()));
        }
    }
    Ok(settings)
}

/// One pair of matching quotes around the whole value is not part of it.
fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(quote) && value.ends_with(quote) {
            return &value[1..value.len() - 1];
        }
    }
    value
}

/// Replaces Key Vault references of secret settings with a stand-in the checks accept, and
/// returns a note for each (the platform resolves them; the check cannot). A Key Vault
/// reference in any other setting is left as it is, and is checked as the text it is.
pub fn stand_in_for_key_vault_references(settings: &mut [(String, String)]) -> Vec<String> {
    let mut notes = Vec::new();
    for (name, value) in settings.iter_mut() {
        if SECRET_SETTINGS.contains(&name.as_str()) && is_key_vault_reference(value) {
            *value = RESOLVED_LATER.to_owned();
            notes.push(format!(
                "{name}: a Key Vault reference, resolved by the platform when the app starts (not checked offline; /health and the log tell if it does not resolve)"
            ));
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_quotes_and_mistakes() {
        let text = "# settings\n\nNX_CACHE_MODE=\"read-only\"\nNX_CACHE_TRUST_POLICY={\"rules\": [{\"a\": \"b=c\"}]}\n  PORT='8080'\r\nEMPTY=\nNX_CACHE_MODE=no-cache\n";
        let settings = parse(text).unwrap();
        assert_eq!(
            settings,
            vec![
                ("NX_CACHE_MODE".to_owned(), "no-cache".to_owned()),
                (
                    "NX_CACHE_TRUST_POLICY".to_owned(),
                    "{\"rules\": [{\"a\": \"b=c\"}]}".to_owned()
                ),
                ("PORT".to_owned(), "8080".to_owned()),
                ("EMPTY".to_owned(), String::new()),
            ]
        );
        assert!(parse("just words\n").unwrap_err().starts_with("line 1: "));
        assert!(
            parse("OK=1\nBAD NAME=2\n")
                .unwrap_err()
                .starts_with("line 2: ")
        );
    }

    #[test]
    fn key_vault_references_of_secrets_are_noted_not_checked() {
        let mut settings = vec![
            (
                "NX_CACHE_JWT_SECRET".to_owned(),
                "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/nx/)".to_owned(),
            ),
            (
                "NX_CACHE_MODE".to_owned(),
                "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/m/)".to_owned(),
            ),
        ];
        let notes = stand_in_for_key_vault_references(&mut settings);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].starts_with("NX_CACHE_JWT_SECRET: a Key Vault reference"));
        assert_eq!(settings[0].1, RESOLVED_LATER);
        assert!(settings[1].1.starts_with("@Microsoft.KeyVault("));
    }
}
