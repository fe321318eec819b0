//! Secrets that never print, and the URLs that may hold them.

use super::*;

/// A password or other secret. `Debug` and `Display` print `***`; call
/// [`Secret::expose`] at the one place the value is handed to a driver.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Decodes `%XX` escapes of a URL component. Invalid escapes are kept as is.
pub(super) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `url` with the password (if any) replaced by `***`, safe to print. A URL
/// that does not parse is shown only if it cannot hold a password (no `@`).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() && parsed.set_password(Some("***")).is_err() {
                return "<url not shown>".to_owned();
            }
            parsed.to_string()
        }
        Err(_) if !url.contains('@') => url.to_owned(),
        Err(_) => "<invalid url not shown>".to_owned(),
    }
}

/// The password inside `url`, percent-decoded, if there is one.
pub(super) fn url_password(url: &str) -> Result<Option<Secret>, ConfigError> {
    let parsed = url::Url::parse(url).map_err(|err| ConfigError::InvalidUrl {
        reason: err.to_string(),
    })?;
    Ok(parsed.password().map(|p| Secret::new(percent_decode(p))))
}

/// The database (first path segment) of `url`, percent-decoded.
pub(super) fn url_database(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let db = parsed.path().trim_start_matches('/');
    let db = db.split('/').next().unwrap_or_default();
    (!db.is_empty()).then(|| percent_decode(db))
}

pub(super) fn resolve_password(
    url: &str,
    password_env: &Option<String>,
    password_file: &Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    if let Some(var) = password_env {
        return std::env::var(var)
            .map(|v| Some(Secret::new(v)))
            .map_err(|_| ConfigError::PasswordEnv { var: var.clone() });
    }
    if let Some(path) = password_file {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::PasswordFile {
            path: path.clone(),
            error,
        })?;
        let password = text.trim();
        if password.is_empty() {
            return Err(ConfigError::EmptyPasswordFile { path: path.clone() });
        }
        return Ok(Some(Secret::new(password)));
    }
    url_password(url)
}

/// The admin token of `[http]`: from `token_env`, else `token_file`
/// (trimmed, not empty), else none.
pub(super) fn resolve_token(
    token_env: &Option<String>,
    token_file: &Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    if let Some(var) = token_env {
        return match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(Secret::new(v.trim()))),
            _ => Err(ConfigError::TokenEnv { var: var.clone() }),
        };
    }
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::TokenFile {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(ConfigError::TokenFile {
                path: path.clone(),
                reason: "it is empty; write the token into it".into(),
            });
        }
        return Ok(Some(Secret::new(token)));
    }
    Ok(None)
}
