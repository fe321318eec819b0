//! TLS to a PostgreSQL store (`tls`, `tls_ca_file`), with rustls: the
//! client config for tokio-postgres (catalog and sink connections) and the
//! upgrade of the replication connection (`SSLRequest`, then the handshake).
//! A Unix-socket connection stays plain, as with libpq.

use callosum_api::{ConnectorError, ErrorKind, TlsFailure, TlsMode, TlsSettings};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::sync::Arc;

/// The rustls client config of `settings`, `None` for `disable`. Fails when
/// the CA file cannot be read or holds no certificate.
pub(crate) fn client_config(
    store: &str,
    settings: &TlsSettings,
) -> Result<Option<Arc<ClientConfig>>, ConnectorError> {
    let verifier: Arc<dyn ServerCertVerifier> = match settings.mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::Require => Arc::new(AnyCertificate(provider())),
        TlsMode::VerifyCa => Arc::new(AnyHostName(webpki_verifier(store, settings)?)),
        TlsMode::VerifyFull => webpki_verifier(store, settings)?,
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_setup_error(store, &e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// The tokio-postgres TLS connector of `settings` (`None` for `disable`).
pub(crate) fn make_connect(
    store: &str,
    settings: &TlsSettings,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, ConnectorError> {
    Ok(client_config(store, settings)?
        .map(|c| tokio_postgres_rustls::MakeRustlsConnect::new((*c).clone())))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_setup_error(store: &str, reason: &str) -> ConnectorError {
    ConnectorError::new(
        ErrorKind::Config,
        format!("postgres store `{store}`: cannot set up TLS: {reason}"),
    )
}

/// The CA certificates of `tls_ca_file`, or the Mozilla roots.
fn roots(store: &str, settings: &TlsSettings) -> Result<RootCertStore, ConnectorError> {
    let mut roots = RootCertStore::empty();
    let Some(path) = &settings.ca_file else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let unreadable = |reason: String| {
        ConnectorError::new(
            ErrorKind::Config,
            format!(
                "postgres store `{store}`: cannot read the CA certificates of tls_ca_file {}: {reason}",
                path.display()
            ),
        )
        .with_hint("tls_ca_file must be a PEM file of the CA that signed the server's certificate, readable by the agent")
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(e.to_string()))?;
    if certificates.is_empty() {
        return Err(unreadable("it holds no certificate".into()));
    }
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|e| unreadable(e.to_string()))?;
    }
    Ok(roots)
}

fn webpki_verifier(
    store: &str,
    settings: &TlsSettings,
) -> Result<Arc<WebPkiServerVerifier>, ConnectorError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots(store, settings)?), provider())
        .build()
        .map_err(|e| tls_setup_error(store, &e.to_string()))
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not checked.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require`: any certificate; the handshake's signatures are still checked
/// against it, so the session is encrypted to whoever holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What an operator reads when the TLS handshake or the server's
/// certificate fails: which store, what was wrong, what to change.
pub(crate) fn tls_failure(store: &str, err: &rustls::Error) -> ConnectorError {
    let failure = match err {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => TlsFailure::NameMismatch,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            TlsFailure::UnknownIssuer
        }
        rustls::Error::InvalidCertificate(reason) => TlsFailure::Certificate(format!("{reason:?}")),
        other => TlsFailure::Handshake(other.to_string()),
    };
    failure.to_error("postgres", store)
}

/// A connection that asked for TLS and was told the server has none.
pub(crate) fn tls_refused(store: &str) -> ConnectorError {
    TlsFailure::Refused.to_error("postgres", store)
}

/// The rustls error in `err`'s source chain, if any.
pub(crate) fn rustls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                    return Some(tls);
                }
            }
        }
        current = e.source();
    }
    None
}

/// A connected tokio-postgres client and the task driving its connection.
pub(crate) struct Connected {
    pub client: tokio_postgres::Client,
    pub task: tokio::task::JoinHandle<()>,
}

/// Connects a tokio-postgres client, encrypted as `tls` says (`config`'s
/// `ssl_mode` was set from it by `pg_config`), and spawns its connection
/// task. A TLS failure is a [`ErrorKind::ServerConfig`] error naming the
/// store and what to change; other failures as [`crate::error::from_sql`].
pub(crate) async fn connect(
    store: &str,
    config: &tokio_postgres::Config,
    tls: &TlsSettings,
    doing: &str,
) -> Result<Connected, ConnectorError> {
    fn spawn<F>(store: &str, connection: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
    {
        let store = store.to_string();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::warn!(store = %store, error = %err, "postgres connection failed");
            }
        })
    }
    let failed = |err: tokio_postgres::Error| connect_error(store, tls.mode, doing, err);
    match make_connect(store, tls)? {
        None => {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(failed)?;
            Ok(Connected {
                client,
                task: spawn(store, connection),
            })
        }
        Some(make) => {
            let (client, connection) = config.connect(make).await.map_err(failed)?;
            Ok(Connected {
                client,
                task: spawn(store, connection),
            })
        }
    }
}

fn connect_error(
    store: &str,
    mode: TlsMode,
    doing: &str,
    err: tokio_postgres::Error,
) -> ConnectorError {
    if mode != TlsMode::Disable {
        if let Some(tls) = rustls_error(&err) {
            return tls_failure(store, tls);
        }
        // tokio-postgres says so in the error's source
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = cause {
            if e.to_string().contains("does not support TLS") {
                return tls_refused(store);
            }
            cause = e.source();
        }
    }
    crate::error::from_sql(store, doing, err)
}
