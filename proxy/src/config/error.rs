//! Configuration errors: each names the file, the line and the key, and all of a file's
//! errors are reported at once.

use std::fmt;

use serde::Serialize;

use super::lines::LineIndex;

/// One problem in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line; `None` when the error is about the file as a whole (unreadable, empty).
    pub line: Option<usize>,
    /// Dotted key path (`pools.api.servers.1.address`); empty when unknown.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file, line)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.reason)
    }
}

/// Every error found while loading a configuration; never empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects the semantic errors of one file, locating each key through the [`LineIndex`].
pub(crate) struct Collector<'a> {
    pub file: &'a str,
    pub index: LineIndex,
    pub errors: Vec<ConfigError>,
}

impl<'a> Collector<'a> {
    pub fn new(file: &'a str, text: &str) -> Self {
        Collector {
            file,
            index: LineIndex::build(text),
            errors: Vec::new(),
        }
    }

    /// Repeated keys, which serde would resolve silently (last one wins) or report at the
    /// wrong line; checked before deserialising.
    pub fn duplicate_keys(file: &'a str, text: &str) -> Result<Self, ConfigErrors> {
        let mut c = Collector::new(file, text);
        let dups = std::mem::take(&mut c.index.duplicates);
        for (key, line) in dups {
            // Keys inside a repeated mapping repeat too; report the outermost only.
            if c.errors.iter().any(|e| key.starts_with(&format!("{}.", e.key))) {
                continue;
            }
            c.errors.push(ConfigError {
                file: file.to_string(),
                line: Some(line),
                key,
                reason: "duplicate key".to_string(),
            });
        }
        if c.errors.is_empty() {
            Ok(c)
        } else {
            Err(ConfigErrors(c.errors))
        }
    }

    pub fn err(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        let key = key.into();
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line: self.index.line(&key),
            key,
            reason: reason.into(),
        });
    }

    pub fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// An error about a whole file (cannot be read).
pub(crate) fn file_error(file: &str, reason: impl Into<String>) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: file.to_string(),
        line: None,
        key: String::new(),
        reason: reason.into(),
    }])
}

/// Converts a serde_yaml error (syntax, unknown key, wrong type) into ours, keeping its line.
pub(crate) fn yaml_error(file: &str, e: &serde_yaml::Error) -> ConfigErrors {
    let line = e.location().map(|l| l.line());
    // serde_yaml appends " at line L column C" to the message; the line is ours to print.
    let msg = e.to_string();
    let reason = match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    // "pools.api.servers[0]: unknown field `foo`..." carries the path before the colon.
    let (key, reason) = match reason.split_once(": ") {
        Some((k, r)) if !k.contains(' ') => (k.replace('[', ".").replace(']', ""), r.to_string()),
        _ => (String::new(), reason),
    };
    ConfigErrors(vec![ConfigError {
        file: file.to_string(),
        line,
        key,
        reason,
    }])
}
