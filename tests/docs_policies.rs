//! `handler check`, the pre-deploy configuration check, on the settings operators write: every
//! trust policy printed in the docs passes it (so none of them stops a server), and settings the
//! server would refuse make it exit 1 with the one line startup would print.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn check(args: &[&str], settings: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app-settings.env");
    std::fs::write(&file, settings).unwrap();
    Command::new(env!("CARGO_BIN_EXE_handler"))
        .arg("check")
        .args(args)
        .arg("--env-file")
        .arg(&file)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // The process environment must not count when a settings file is given.
        .env("NX_CACHE_MODE", "not-a-mode")
        .output()
        .unwrap()
}

/// README.md and docs/*.md.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The fenced blocks of a Markdown text, with their info string.
fn fenced_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    for line in text.lines() {
        let fence = line.trim_start();
        match &mut current {
            None => {
                if let Some(info) = fence.strip_prefix("```") {
                    current = Some((info.trim().to_owned(), Vec::new()));
                }
            }
            Some((info, lines)) if fence.starts_with("```") => {
                blocks.push((std::mem::take(info), lines.join("\n")));
                current = None;
            }
            Some((_, lines)) => lines.push(line),
        }
    }
    blocks
}

/// The policies written inside a shell block (`cat > trust-policy.json <<EOF {"rules": ...}`),
/// with each `$VARIABLE` standing for its name.
fn policies_in_shell(block: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = block;
    while let Some(start) = rest.find("{\"rules\"") {
        let text = &rest[start..];
        let mut depth = 0;
        let mut end = None;
        for (at, c) in text.char_indices() {
            match c {
                '{' | '[' => depth += 1,
                '}' | ']' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(at + 1);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else { break };
        found.push(text[..end].replace('$', ""));
        rest = &text[end..];
    }
    found
}

/// Every trust policy in the docs, as a whole policy: `{"rules": [...]}` blocks as they are, a
/// single rule wrapped in one.
fn documented_policies() -> Vec<(String, serde_json::Value)> {
    let mut policies = Vec::new();
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut candidates = Vec::new();
        for (info, block) in fenced_blocks(&text) {
            if info == "json" {
                candidates.push(block);
            } else {
                candidates.extend(policies_in_shell(&block));
            }
        }
        for block in candidates {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&block) else {
                panic!("{}: a policy that is not JSON:\n{block}", file.display());
            };
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if value.get("rules").is_some() {
                policies.push((name, value));
            } else if value.get("issuer").is_some() && value.get("grant").is_some() {
                policies.push((name, serde_json::json!({ "rules": [value] })));
            }
        }
    }
    policies
}

#[test]
fn every_policy_in_the_docs_passes_the_startup_checks() {
    let policies = documented_policies();
    // keyless.md has four, deploy.md one; a parser that finds none would pass vacuously.
    assert!(policies.len() >= 5, "found only {}", policies.len());
    for (file, policy) in policies {
        let settings = format!(
            "NX_CACHE_JWT_SECRET={}\nNX_CACHE_TRUST_POLICY={}\n",
            common::TEST_SECRET,
            policy
        );
        let output = check(&["--functions"], &settings);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{file}: {policy}\n{stderr}{stdout}"
        );
        assert!(stdout.ends_with("configuration OK\n"), "{stdout}");
        // Each rule is explained.
        for rule in policy["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap();
            assert!(stdout.contains(&format!("  {name}: ")), "{name}: {stdout}");
        }
    }
}

#[test]
fn settings_the_server_would_refuse_fail_the_check_with_its_line() {
    let key_vault =
        "@Microsoft.KeyVault(SecretUri=https://acme.vault.azure.net/secrets/nx-cache-jwt/)";
    let refused_rule = serde_json::json!({"rules": [{"name": "web-main",
        "issuer": "https://token.actions.githubusercontent.com", "audience": "nx-cache",
        "claims": {"repository": "acme/web", "ref": "refs/heads/main"},
        "grant": {"teams": ["web"], "access": "read-write"}}]});
    let cases: Vec<(&[&str], String, &str)> = vec![
        (
            &["--functions"],
            format!("NX_CACHE_JWT_SECRET={key_vault}\nNX_CACHE_TRUST_POLICY={refused_rule}\n"),
            "configuration error: NX_CACHE_TRUST_POLICY: rule 'web-main': read-write needs an \"event_name\"",
        ),
        (
            &["--functions"],
            "AZURE_STORAGE_ACCOUNT=acme\n".to_owned(),
            "configuration error: NX_CACHE_JWT_SECRET: not set",
        ),
        (
            &[],
            "NX_CACHE_MODE=\"sometimes\"\n".to_owned(),
            "configuration error: NX_CACHE_MODE: expected read-write, read-only or no-cache, got 'sometimes'",
        ),
        (
            &[],
            format!(
                "NX_CACHE_JWT_SECRET={}\nNX_CACHE_MAX_SIZE=50G\nAZURE_STORAGE_ACCOUNT=acme\nAZURE_STORAGE_CONTAINER=nx-cache\n",
                common::TEST_SECRET
            ),
            "configuration error: NX_CACHE_MAX_SIZE: applies to the embedded store only",
        ),
        (
            &[],
            "this is not a setting\n".to_owned(),
            "line 1: expected NAME=VALUE",
        ),
    ];
    for (args, settings, expected) in cases {
        let output = check(args, &settings);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{settings}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(output.stdout.is_empty());
    }

    // What a deployment applies: a Key Vault reference for the secret, Azure storage, the
    // policy of the docs. The reference is noted, not checked.
    let good = format!(
        "# app settings\nNX_CACHE_JWT_SECRET={key_vault}\nAZURE_STORAGE_ACCOUNT=acme\nAZURE_STORAGE_CONTAINER=nx-cache\nNX_CACHE_MODE='read-write'\nNX_CACHE_LOG_FORMAT=json\n"
    );
    let output = check(&["--functions"], &good);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("note     NX_CACHE_JWT_SECRET: a Key Vault reference"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Azure container 'nx-cache' in storage account 'acme'"),
        "{stdout}"
    );
}
