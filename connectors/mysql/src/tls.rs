//! TLS to a MariaDB/MySQL store (`tls`, `tls_ca_file`): mysql_async's rustls
//! options for every connection (binlog, catalog, sink), and its TLS errors
//! in the operator's terms.

use callosum_api::{ConnectorError, TlsFailure, TlsMode, TlsSettings};
use mysql_async::{DriverError, Error, IoError, SslOpts};

/// The driver's TLS options of `settings`, `None` for `disable`. With TLS
/// set the driver refuses a server without it instead of going on in clear.
pub(crate) fn ssl_opts(settings: &TlsSettings) -> Option<SslOpts> {
    let with_ca = |opts: SslOpts| match &settings.ca_file {
        Some(ca) => opts
            .with_root_certs(vec![ca.clone().into()])
            .with_disable_built_in_roots(true),
        None => opts,
    };
    match settings.mode {
        TlsMode::Disable => None,
        TlsMode::Require => Some(SslOpts::default().with_danger_accept_invalid_certs(true)),
        // refused by the config: mysql_async 0.37 skips the name check by
        // matching "NotValidForName" in the error text, which rustls 0.23
        // no longer prints; kept as close as the driver allows
        TlsMode::VerifyCa => {
            Some(with_ca(SslOpts::default()).with_danger_skip_domain_validation(true))
        }
        TlsMode::VerifyFull => Some(with_ca(SslOpts::default())),
    }
}

/// The TLS failure in a connection error, named for the operator; `None`
/// when `err` is not about TLS.
pub(crate) fn tls_failure(err: &Error, store: &str) -> Option<ConnectorError> {
    let failure = match err {
        Error::Driver(DriverError::NoClientSslFlagFromServer) => TlsFailure::Refused,
        Error::Io(IoError::Tls(tls)) => match rustls_error(tls) {
            Some(e) => sort(e),
            None => TlsFailure::Handshake(tls.to_string()),
        },
        Error::Io(IoError::Io(io)) => sort(
            io.get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())?,
        ),
        _ => return None,
    };
    Some(failure.to_error("mysql", store))
}

fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

fn sort(err: &rustls::Error) -> TlsFailure {
    use rustls::CertificateError;
    match err {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => TlsFailure::NameMismatch,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            TlsFailure::UnknownIssuer
        }
        rustls::Error::InvalidCertificate(reason) => TlsFailure::Certificate(format!("{reason:?}")),
        other => TlsFailure::Handshake(other.to_string()),
    }
}
