//! Claim conditions of trust rules, and how they match: the vocabulary the policy engine and
//! the issuer profiles share.
//!
//! A condition is a list of patterns on one claim; any of them matches. A pattern is exact text
//! in which `*` matches any run of characters (`/` included). A claim that is itself a list
//! (Entra `groups`, `roles`) matches when any element matches. Numbers and booleans compare as
//! their JSON text.

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
    pub fn holds_for(&self, value: &Value) -> bool {
        match value {
            Value::Array(items) => items.iter().any(|item| self.holds_for_scalar(item)),
            scalar => self.holds_for_scalar(scalar),
        }
    }

    fn holds_for_scalar(&self, value: &Value) -> bool {
        let Some(text) = scalar_text(value) else {
            return false;
        };
        self.patterns.iter().any(|p| glob(p, &text))
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
    fn lists_numbers_and_echoes() {
        let groups = Condition {
            claim: "groups".into(),
            patterns: vec!["g2".into()],
        };
        assert!(groups.holds_for(&json!(["g1", "g2"])));
        assert!(!groups.holds_for(&json!(["g1"])));
        let id = Condition {
            claim: "repository_id".into(),
            patterns: vec!["74".into()],
        };
        assert!(id.holds_for(&json!(74)));
        assert!(!id.holds_for(&json!({"74": 1})));
        assert_eq!(echo(None), "(absent)");
        assert_eq!(echo(Some(&json!("a\nb"))), "a?b");
        assert_eq!(echo_text(&"x".repeat(100)).len(), ECHO_LIMIT + 3);
        assert_eq!(literal_prefix("acme/*x"), "acme/");
    }
}
