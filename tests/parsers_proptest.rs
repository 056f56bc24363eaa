//! Property tests of every parser that sees outside input: hashes and team names, bearer
//! headers and tokens, connection strings, sizes. Nothing panics, and what is accepted is exactly
//! what the rules say. Case counts: `PROPTEST_CASES` (default 2,000 per property here).

use nx_azure_cache::auth::{Secret, TokenAuthority, TokenRules};
use nx_azure_cache::config::parse_size;
use nx_azure_cache::key::{CacheKey, Hash, MAX_HASH_LEN, MAX_TEAM_LEN, TeamName};
use nx_azure_cache::storage::azure::connection_string::ConnectionString;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig::with_cases(cases)
}

/// Strings rich in the characters that break path handling.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9./%\\\\ _~-]{0,160}",
        "(\\.\\.|%2[eEfF]|/|%00|[a-z0-9]){0,40}",
        "[0-9]{1,140}",
    ]
}

fn authority() -> TokenAuthority {
    TokenAuthority::new(
        &Secret::new(vec![9u8; 32], jsonwebtoken::Algorithm::HS256).unwrap(),
        &[],
        TokenRules {
            algorithm: jsonwebtoken::Algorithm::HS256,
            issuer: "iss".into(),
            audience: "aud".into(),
            revoked: Default::default(),
            max_lifetime: std::time::Duration::from_secs(90 * 24 * 3600),
            expired_grace: std::time::Duration::from_secs(12 * 3600),
            leeway: std::time::Duration::from_secs(30),
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hashes_are_accepted_exactly_by_the_rule(raw in hostile()) {
        let expected = !raw.is_empty() && raw.len() <= MAX_HASH_LEN && raw.bytes().all(|b| b.is_ascii_alphanumeric());
        prop_assert_eq!(Hash::parse(&raw).is_ok(), expected);
    }

    #[test]
    fn team_names_are_accepted_exactly_by_the_rule(raw in hostile()) {
        let b = raw.as_bytes();
        let expected = !b.is_empty() && b.len() <= MAX_TEAM_LEN && b[0] != b'-'
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        prop_assert_eq!(TeamName::parse(&raw).is_ok(), expected);
    }

    #[test]
    fn object_names_never_escape_their_namespace(team in hostile(), hash in hostile()) {
        if let Ok(key) = CacheKey::parse(Some(&team), &hash) {
            let name = key.object_name();
            prop_assert!(!name.contains(".."));
            prop_assert_eq!(name.split('/').count(), 3);
            prop_assert!(name.starts_with("teams/"));
        }
        if let Ok(key) = CacheKey::parse(None, &hash) {
            prop_assert_eq!(key.object_name().split('/').count(), 2);
        }
    }

    #[test]
    fn arbitrary_authorization_headers_are_refused_without_panicking(header in any::<String>()) {
        prop_assert!(authority().verify_header(Some(&header)).is_err());
    }

    #[test]
    fn arbitrary_jwt_shaped_tokens_are_refused(
        a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,60}"
    ) {
        let header = format!("Bearer {a}.{b}.{c}");
        prop_assert!(authority().verify_header(Some(&header)).is_err());
    }

    #[test]
    fn connection_strings_never_panic_nor_echo_keys(raw in any::<String>(), key in "[A-Za-z0-9+/]{40,60}") {
        let _ = ConnectionString::parse(&raw);
        // A malformed string with a key in it: the error never repeats the key.
        let malformed = format!("AccountName=a;AccountKey={key}*;Bogus");
        if let Err(e) = ConnectionString::parse(&malformed) {
            prop_assert!(!e.contains(&key));
        }
    }

    #[test]
    fn sizes_parse_to_digits_times_unit(n in 0u64..100_000, unit in prop::sample::select(vec!["", "K", "M", "G", "KiB", "MiB", "GiB", "B"])) {
        let parsed = parse_size(&format!("{n}{unit}"));
        let multiplier: u64 = match unit { "K" | "KiB" => 1 << 10, "M" | "MiB" => 1 << 20, "G" | "GiB" => 1 << 30, _ => 1 };
        if n == 0 {
            prop_assert!(parsed.is_err());
        } else {
            prop_assert_eq!(parsed.unwrap(), n * multiplier);
        }
    }

    #[test]
    fn arbitrary_size_strings_never_panic(raw in any::<String>()) {
        let _ = parse_size(&raw);
    }
}
