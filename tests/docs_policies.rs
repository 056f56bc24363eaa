//! `handler check`, the pre-deploy configuration check, on the settings operators write: every
//! trust policy printed in the docs passes it once its placeholders are filled (so none of them
//! stops a server), placeholders left in are refused (an Entra ID id) or warned about, and
//! settings the server would refuse make it exit 1 with the line startup would print (each
//! refused trust rule on a line of its own).

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
/// with each `$VARIABLE` standing for its name (a placeholder like the others).
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

/// The example value of each placeholder the docs' policies use: what an operator writes there.
const EXAMPLES: [(&str, &str); 11] = [
    ("TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
    ("CACHE_APP_ID", "6e74172b-be56-4843-9ff4-e66a39bb12e3"),
    ("APP_ID", "6e74172b-be56-4843-9ff4-e66a39bb12e3"),
    (
        "WRITE_CONNECTION_SP_OBJECT_ID",
        "0f0e0d0c-aaaa-bbbb-cccc-111122223333",
    ),
    (
        "SERVICE_CONNECTION_SP_OBJECT_ID",
        "0f0e0d0c-aaaa-bbbb-cccc-111122223333",
    ),
    ("PIPELINE_SP_ID", "0f0e0d0c-aaaa-bbbb-cccc-111122223333"),
    (
        "READ_CONNECTION_SP_OBJECT_ID",
        "1a2b3c4d-aaaa-bbbb-cccc-444455556666",
    ),
    (
        "DEVELOPERS_GROUP_OBJECT_ID",
        "5b7c1e2a-3d4f-4a6b-8c9d-0e1f2a3b4c5d",
    ),
    ("DEVELOPERS_ID", "5b7c1e2a-3d4f-4a6b-8c9d-0e1f2a3b4c5d"),
    ("OWNER", "acme"),
    ("REPO", "web"),
];

/// `text` with each placeholder word of `only` (all of [`EXAMPLES`] when `None`) replaced by
/// its example value; whole words only (`APP_ID` is not the end of `CACHE_APP_ID`).
fn fill(text: &str, only: Option<&[&str]>) -> String {
    let mut filled = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, filled: &mut String| {
        let example = EXAMPLES
            .iter()
            .find(|(name, _)| name == word && only.is_none_or(|only| only.contains(name)));
        filled.push_str(example.map_or(word.as_str(), |(_, value)| value));
        word.clear();
    };
    for c in text.chars() {
        if c == '_' || c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut filled);
            filled.push(c);
        }
    }
    flush(&mut word, &mut filled);
    filled
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

fn policy_settings(policy: &str) -> String {
    format!(
        "NX_CACHE_JWT_SECRET={}\nNX_CACHE_TRUST_POLICY={policy}\n",
        common::TEST_SECRET
    )
}

#[test]
fn every_policy_in_the_docs_passes_the_startup_checks() {
    let policies = documented_policies();
    // keyless.md has four, deploy.md one; a parser that finds none would pass vacuously.
    assert!(policies.len() >= 5, "found only {}", policies.len());
    for (file, policy) in policies {
        let policy: serde_json::Value =
            serde_json::from_str(&fill(&policy.to_string(), None)).unwrap();
        let settings = policy_settings(&policy.to_string());
        let output = check(&["--functions"], &settings);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{file}: {policy}\n{stderr}{stdout}"
        );
        assert!(stdout.ends_with("configuration OK\n"), "{stdout}");
        // Every placeholder is filled: nothing looks like one any more.
        assert!(!stdout.contains("WARNING"), "{file}: {stdout}");
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

/// The Azure Pipelines policy of docs/keyless.md as printed there, placeholders and all.
fn pipeline_policy() -> serde_json::Value {
    documented_policies()
        .into_iter()
        .find(|(file, policy)| {
            file == "keyless.md" && policy.to_string().contains("\"web-pipeline-prs\"")
        })
        .map(|(_, policy)| policy)
        .expect("the Azure Pipelines policy in docs/keyless.md")
}

/// A docs policy copied without replacing `TENANT_ID` is refused, naming each rule and the
/// field; the placeholders whose shape nothing fixes (an audience, a group) are warnings.
#[test]
fn placeholders_left_in_a_docs_policy_are_refused_or_warned_about() {
    let printed = pipeline_policy().to_string();
    let output = check(&["--functions"], &policy_settings(&printed));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    for (line, rule) in lines.iter().zip(["web-pipeline", "web-pipeline-prs"]) {
        assert!(
            line.starts_with(&format!(
                "handler: configuration error: NX_CACHE_TRUST_POLICY: rule '{rule}': the tenant 'TENANT_ID' in issuer"
            )),
            "{line}"
        );
        assert!(
            line.contains(
                "write e.g. \"https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/\""
            ),
            "{line}"
        );
    }
    assert!(
        stdout.contains("WARNING  rule 'web-pipeline': the audience has 'api://CACHE_APP_ID'"),
        "{stdout}"
    );

    // The tenant filled in, the other ids left: the oids are refused for their shape...
    let tenant_only = fill(&printed, Some(&["TENANT_ID"]));
    let output = check(&["--functions"], &policy_settings(&tenant_only));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("rule 'web-pipeline': oid 'WRITE_CONNECTION_SP_OBJECT_ID' is not a GUID"),
        "{stderr}"
    );
    // ... and with them filled, the audience is only a warning: the server would start.
    let ids = fill(
        &printed,
        Some(&[
            "TENANT_ID",
            "WRITE_CONNECTION_SP_OBJECT_ID",
            "READ_CONNECTION_SP_OBJECT_ID",
        ]),
    );
    let output = check(&["--functions"], &policy_settings(&ids));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for rule in ["web-pipeline", "web-pipeline-prs"] {
        assert!(
            stdout.contains(&format!(
                "WARNING  rule '{rule}': the audience has 'api://CACHE_APP_ID', which looks like a placeholder (CACHE_APP_ID)"
            )),
            "{stdout}"
        );
    }
    assert!(stdout.ends_with("configuration OK\n"), "{stdout}");
}

/// `handler check` on a policy 0.2.0 started with names each rule 0.3.0 refuses, one line each,
/// so an operator sees everything to change at once; startup's one line names the first and
/// counts the others.
#[test]
fn check_names_every_rule_of_a_0_2_0_policy_that_would_stop_the_server() {
    let github = "https://token.actions.githubusercontent.com";
    let audience = "https://acme-nx-cache.azurewebsites.net";
    let policy = serde_json::json!({"rules": [
        {"name": "org-main", "issuer": github, "audience": audience,
         "claims": {"repository_owner": "acme", "ref": "refs/heads/main", "event_name": "push"},
         "grant": {"org": true, "access": "read-write"}},
        {"name": "web-deploy", "issuer": github, "audience": audience,
         "claims": {"repository": "acme/web", "environment": "production", "event_name": "workflow_dispatch"},
         "grant": {"teams": ["web"], "access": "read-write"}},
        {"name": "web-prs", "issuer": github, "audience": audience,
         "claims": {"repository": "acme/web"},
         "grant": {"teams": ["web"], "access": "read-only"}},
        {"name": "gitlab-protected", "issuer": "https://gitlab.com", "audience": audience,
         "claims": {"project_path": "acme/web", "ref_protected": "true"},
         "grant": {"teams": ["web"], "access": "read-write"}},
        {"name": "devs-write", "issuer": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
         "audience": "api://6e74172b-be56-4843-9ff4-e66a39bb12e3",
         "claims": {"tid": "72f988bf-86f1-41af-91ab-2d7cd011db47", "groups": "5b7c1e2a-3d4f-4a6b-8c9d-0e1f2a3b4c5d"},
         "grant": {"teams": ["web"], "access": "read-write"}}
    ]})
    .to_string();
    let output = check(&["--functions"], &policy_settings(&policy));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        ("org-main", "read-write must name one repository exactly"),
        ("web-deploy", "read-write needs a \"ref\" condition"),
        (
            "gitlab-protected",
            "read-write needs \"ref_type\": \"branch\"",
        ),
        ("devs-write", "read-write needs an exact \"oid\""),
    ];
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, (rule, why)) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(&format!(
                "handler: configuration error: NX_CACHE_TRUST_POLICY: rule '{rule}': {why}"
            )),
            "{line}"
        );
    }
    assert!(output.stdout.is_empty());
}
