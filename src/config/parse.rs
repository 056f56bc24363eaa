//! The parsers every section shares, written once: durations, sizes, counts, ports, choices
//! and switches. Each failure is a [`ConfigError`] naming the setting.

use std::time::Duration;

use super::ConfigError;

/// The environment as the section loaders see it: a lookup in which an empty (or blank) value
/// counts as unset, so `NAME=` in an app setting means the default.
pub struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Env<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { lookup }
    }

    /// The raw value, untrimmed (secrets and policies trim themselves).
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    /// A duration such as `5m` or `30s`.
    pub fn duration(
        &self,
        setting: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match self.get(setting) {
            None => Ok(default),
            Some(raw) => humantime::parse_duration(raw.trim()).map_err(|_| {
                ConfigError::new(
                    setting,
                    format!("expected a duration such as 5m or 30s, got '{raw}'"),
                )
            }),
        }
    }

    /// A duration, set or not (no default).
    pub fn optional_duration(
        &self,
        setting: &'static str,
    ) -> Result<Option<Duration>, ConfigError> {
        match self.get(setting) {
            None => Ok(None),
            Some(_) => self.duration(setting, Duration::ZERO).map(Some),
        }
    }

    /// A byte size (see [`parse_size`]), set or not.
    pub fn size(&self, setting: &'static str) -> Result<Option<u64>, ConfigError> {
        self.get(setting)
            .map(|v| parse_size(v.trim()).map_err(|e| ConfigError::new(setting, e)))
            .transpose()
    }

    /// A count from 1 to `max`.
    pub fn count(
        &self,
        setting: &'static str,
        default: usize,
        max: usize,
    ) -> Result<usize, ConfigError> {
        match self.get(setting) {
            None => Ok(default),
            Some(raw) => match raw.trim().parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ConfigError::new(
                    setting,
                    format!("expected a number from 1 to {max}, got '{raw}'"),
                )),
            },
        }
    }

    /// A port number, set or not.
    pub fn port(&self, setting: &'static str) -> Result<Option<u16>, ConfigError> {
        self.get(setting)
            .map(|raw| {
                raw.trim().parse::<u16>().map_err(|_| {
                    ConfigError::new(setting, format!("expected a port number, got '{raw}'"))
                })
            })
            .transpose()
    }

    /// One of a fixed set of words, set or not: `expected a, b or c, got 'x'`.
    pub fn choice<T: Copy>(
        &self,
        setting: &'static str,
        choices: &[(&str, T)],
    ) -> Result<Option<T>, ConfigError> {
        let Some(raw) = self.get(setting) else {
            return Ok(None);
        };
        let raw = raw.trim();
        match choices.iter().find(|(name, _)| *name == raw) {
            Some((_, value)) => Ok(Some(*value)),
            None => {
                let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
                Err(ConfigError::new(
                    setting,
                    format!("expected {}, got '{raw}'", one_of(&names)),
                ))
            }
        }
    }

    /// A switch: `true`/`1` or `false`/`0`.
    pub fn switch(&self, setting: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(setting).as_deref().map(str::trim) {
            None => Ok(default),
            Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(other) => Err(ConfigError::new(
                setting,
                format!("expected true or false, got '{other}'"),
            )),
        }
    }
}

/// A value for a message: at most 80 characters, control characters replaced.
pub fn shorten(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(80)
        .collect();
    if text.chars().count() > 80 {
        format!("{clean}...")
    } else {
        clean
    }
}

/// `a`, `a or b`, `a, b or c`.
fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Parses a byte size: a plain number of bytes, or a number with `K`, `M`, `G` (or `KiB`, `MiB`,
/// `GiB`; all binary multiples).
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("expected a size such as 104857600, 100M or 1GiB, got '{raw}'"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "KB" => 1 << 10,
        "M" | "MiB" | "MB" => 1 << 20,
        "G" | "GiB" | "GB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{raw}'; use K, M or G"
            ));
        }
    };
    let bytes = number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size '{raw}' is too large"))?;
    if bytes == 0 {
        return Err("size must be greater than zero".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("100M").unwrap(), 100 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        for bad in ["", "M", "1T", "-1", "0", "99999999999999999999G", "1.5G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn choices_list_every_word_and_blank_is_unset() {
        let lookup = |name: &str| match name {
            "A" => Some("rw".to_owned()),
            "B" => Some("  ".to_owned()),
            _ => None,
        };
        let env = Env::new(&lookup);
        let choices = [("read-write", 1), ("read-only", 2), ("no-cache", 3)];
        let err = env.choice("A", &choices).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration error: A: expected read-write, read-only or no-cache, got 'rw'"
        );
        assert_eq!(env.choice("B", &choices).unwrap(), None);
        assert_eq!(one_of(&["json", "text"]), "json or text");
    }
}
