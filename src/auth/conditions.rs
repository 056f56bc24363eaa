//! Claim conditions of trust rules, and how they match: the vocabulary the policy engine and
//! the issuer profiles share.
//!
//! A condition is a list of patterns on one claim; any of them matches. A pattern is exact text
//! in which `*` matches any run of characters (`/` included). A condition holds only for a claim
//! that is a string, or, for the claims an issuer sends as lists (Entra ID `groups`, `roles`:
//! the issuer's profile says which), a list with a string that matches. A number, a boolean, an
//! object, or a list where the issuer sends a string never satisfies a condition: no real issuer
//! sends a pinned claim that way, and matching one as its text would let a token that is not
//! what it claims pass a pin. A claim that appears twice in a token's payload is taken out of it
//! before any condition is looked at ([`super::oidc`]).

use serde_json::Value;

/// Longest value echoed per claim in a refusal.
const ECHO_LIMIT: usize = 80;

/// One claim condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub claim: String,
    /// Any of these matches.
    pub patterns: Vec<String>,
}

impl Condition {
    /// Whether the condition holds for a claim's value: a string one of the patterns matches,
    /// or, when `list` (the issuer sends this claim as a list), a list holding such a string.
    pub fn holds_for(&self, value: &Value, list: bool) -> bool {
        match value {
            Value::String(text) => self.holds_for_text(text),
            Value::Array(items) if list => items
                .iter()
                .any(|item| item.as_str().is_some_and(|text| self.holds_for_text(text))),
            _ => false,
        }
    }

    fn holds_for_text(&self, text: &str) -> bool {
        self.patterns.iter().any(|p| glob(p, text))
    }

    /// Whether a value has a shape this condition can hold for at all (see [`Self::holds_for`]).
    pub fn fits(value: &Value, list: bool) -> bool {
        match value {
            Value::String(_) => true,
            Value::Array(items) => list && items.iter().all(Value::is_string),
            _ => false,
        }
    }

    /// Whether every pattern is exact text (no `*`).
    pub fn is_exact(&self) -> bool {
        self.patterns.iter().all(|p| !p.contains('*'))
    }

    /// The patterns for a message: `a`, `a or b`.
    pub fn describe(&self) -> String {
        let quoted: Vec<String> = self.patterns.iter().map(|p| echo_text(p)).collect();
        match quoted.as_slice() {
            [] => String::new(),
            [one] => one.clone(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
        }
    }
}

/// The condition on `claim`, if the rule has one.
pub fn on<'a>(conditions: &'a [Condition], claim: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.claim == claim)
}

/// `*` matches any run of characters (including none and `/`); everything else is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently made to cover up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star_pi, star_ti)) = star {
            pi = star_pi + 1;
            ti = star_ti + 1;
            star = Some((star_pi, star_ti + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// The literal text of a pattern before its first `*` (the whole pattern when it has none).
pub fn literal_prefix(pattern: &str) -> &str {
    pattern.split('*').next().unwrap_or("")
}

/// A claim value as text for matching: strings as they are, numbers and booleans as JSON.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A claim value for a refusal message: short, printable.
pub fn echo(value: Option<&Value>) -> String {
    match value {
        None => "(absent)".into(),
        Some(Value::Array(items)) => {
            let texts: Vec<String> = items.iter().filter_map(scalar_text).collect();
            echo_text(&format!("[{}]", texts.join(",")))
        }
        Some(other) => scalar_text(other)
            .map(|t| echo_text(&t))
            .unwrap_or_else(|| "(not text)".into()),
    }
}

/// Text from a token or a policy, made safe for a one-line message: control characters
/// replaced, at most [`ECHO_LIMIT`] characters.
pub fn echo_text(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(ECHO_LIMIT)
        .collect();
    if text.chars().count() > ECHO_LIMIT {
        format!("{clean}...")
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        for (pattern, text, expected) in [
            ("acme/web", "acme/web", true),
            ("acme/web", "acme/webx", false),
            ("acme/*", "acme/web", true),
            ("acme/*", "acme/", true),
            ("acme/*", "acmex/web", false),
            ("refs/heads/release/*", "refs/heads/release/1.2", true),
            ("*", "", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("*main", "refs/heads/main", true),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob(pattern, text), expected, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn only_strings_and_the_lists_an_issuer_sends_hold() {
        let groups = Condition {
            claim: "groups".into(),
            patterns: vec!["g2".into()],
        };
        assert!(groups.holds_for(&json!(["g1", "g2"]), true));
        assert!(!groups.holds_for(&json!(["g1"]), true));
        assert!(groups.holds_for(&json!("g2"), true));
        // A list where the issuer sends a string is not the string.
        assert!(!groups.holds_for(&json!(["g2"]), false));
        let id = Condition {
            claim: "repository_id".into(),
            patterns: vec!["74".into()],
        };
        assert!(id.holds_for(&json!("74"), false));
        for not_a_string in [
            json!(74),
            json!(["74"]),
            json!({"74": 1}),
            json!(null),
            json!(true),
        ] {
            assert!(!id.holds_for(&not_a_string, false), "{not_a_string}");
            assert!(!Condition::fits(&not_a_string, false), "{not_a_string}");
        }
        let truth = Condition {
            claim: "ref_protected".into(),
            patterns: vec!["true".into()],
        };
        assert!(!truth.holds_for(&json!(true), false));
        assert!(truth.holds_for(&json!("true"), false));
        assert!(Condition::fits(&json!(["a", "b"]), true));
        assert!(!Condition::fits(&json!(["a", 1]), true));
        assert_eq!(echo(None), "(absent)");
        assert_eq!(echo(Some(&json!("a\nb"))), "a?b");
        assert_eq!(echo_text(&"x".repeat(100)).len(), ECHO_LIMIT + 3);
        assert_eq!(literal_prefix("acme/*x"), "acme/");
    }
}
