//! How a connection to a store is encrypted: the `tls` and `tls_ca_file`
//! keys of a `[stores.<name>]`, the same words as libpq's `sslmode`. Each
//! connector builds its TLS client (rustls) from these.

use std::fmt;
use std::path::PathBuf;

/// `tls` of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP (the default; for a server on the same host or a private
    /// network only).
    #[default]
    Disable,
    /// Encrypted, without checking who the server is. Fails, rather than
    /// falling back to plain TCP, when the server does not offer TLS.
    Require,
    /// Encrypted, and the server's certificate must be signed by the CA
    /// (`tls_ca_file`, else the Mozilla roots); its host name is not checked.
    VerifyCa,
    /// Encrypted, signed by the CA, and issued for the host name (or IP
    /// address) of the url.
    VerifyFull,
}

impl TlsMode {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// The mode named by a config word.
    pub fn parse(word: &str) -> Option<TlsMode> {
        [
            TlsMode::Disable,
            TlsMode::Require,
            TlsMode::VerifyCa,
            TlsMode::VerifyFull,
        ]
        .into_iter()
        .find(|m| m.as_str() == word)
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A store's TLS settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: TlsMode,
    /// PEM file of the CA certificates that may sign the server's
    /// certificate (`verify-ca`, `verify-full`); `None`: the Mozilla roots.
    pub ca_file: Option<PathBuf>,
}

impl TlsSettings {
    /// Whether the connection is encrypted.
    pub fn enabled(&self) -> bool {
        self.mode != TlsMode::Disable
    }
}

/// Why a TLS connection to a store failed, in the operator's terms; each
/// connector sorts its TLS library's errors into these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server answered the TLS request with "no".
    Refused,
    /// The certificate is not signed by a trusted CA.
    UnknownIssuer,
    /// The certificate is not issued for the url's host name or address.
    NameMismatch,
    /// The certificate is refused for another reason (expired, bad usage).
    Certificate(String),
    /// The handshake failed otherwise (protocol, cipher).
    Handshake(String),
}

impl TlsFailure {
    /// The permanent error naming `engine`'s store `store`, what was wrong
    /// and what to change ([`crate::ErrorKind::ServerConfig`]: retrying
    /// cannot help, and the connection is never made without TLS instead).
    pub fn to_error(&self, engine: &str, store: &str) -> crate::ConnectorError {
        let (what, hint) = match self {
            TlsFailure::Refused => (
                "TLS is required (tls) but the server does not accept TLS connections".to_string(),
                "turn TLS on in the server (PostgreSQL: ssl = on with ssl_cert_file and ssl_key_file; MariaDB/MySQL: ssl_cert, ssl_key and ssl_ca), or set tls = \"disable\" for a server reached only over a trusted network",
            ),
            TlsFailure::UnknownIssuer => (
                "TLS: the server's certificate is not signed by a trusted CA".to_string(),
                "set tls_ca_file to the PEM file of the CA that signed the server's certificate",
            ),
            TlsFailure::NameMismatch => (
                "TLS: the server's certificate is not issued for the host name of the url".to_string(),
                "connect with the host name the certificate names (or add it to the certificate), or use tls = \"verify-ca\" to skip the name check",
            ),
            TlsFailure::Certificate(reason) => (
                format!("TLS: the server's certificate is refused: {reason}"),
                "check the server's certificate (validity dates, key usage) and tls_ca_file",
            ),
            TlsFailure::Handshake(reason) => (
                format!("TLS: the handshake failed: {reason}"),
                "check the server's TLS settings (certificate, key, protocol versions) and the store's tls",
            ),
        };
        crate::ConnectorError::new(
            crate::ErrorKind::ServerConfig,
            format!("{engine} store `{store}`: {what}"),
        )
        .with_hint(hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_the_words_they_print() {
        for mode in [
            TlsMode::Disable,
            TlsMode::Require,
            TlsMode::VerifyCa,
            TlsMode::VerifyFull,
        ] {
            assert_eq!(TlsMode::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(TlsMode::parse("prefer"), None);
        assert_eq!(TlsMode::parse("verify_full"), None);
    }
}
