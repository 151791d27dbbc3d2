//! TLS configuration with rustls (ring provider): the client port and HTTPS monitoring from
//! `tls { cert_file, key_file, ca_file, verify, timeout }` / `--tls*` flags, and the client
//! side of stanza's own connections to an external NATS server.

use crate::config::options::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("tls: {what} {path}: {msg}")]
    File {
        what: &'static str,
        path: String,
        msg: String,
    },
    #[error("tls: {0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let list: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::File {
            what,
            path: path.display().to_string(),
            msg: e.to_string(),
        })?
        .collect();
    let list = list.map_err(|e| TlsError::File {
        what,
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    if list.is_empty() {
        return Err(TlsError::File {
            what,
            path: path.display().to_string(),
            msg: "no certificate found".into(),
        });
    }
    Ok(list)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "key file",
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    roots_from(&[path])
}

fn roots_from(paths: &[&Path]) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for path in paths {
        for c in certs("ca file", path)? {
            store
                .add(c)
                .map_err(|e| TlsError::Config(format!("ca file {}: {e}", path.display())))?;
        }
    }
    Ok(store)
}

/// The server side: certificate and key, and client certificates required when `verify`.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_file = tls
        .cert_file
        .as_deref()
        .ok_or_else(|| TlsError::Config("missing 'cert_file' in tls configuration".into()))?;
    let key_file = tls
        .key_file
        .as_deref()
        .ok_or_else(|| TlsError::Config("missing 'key_file' in tls configuration".into()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if tls.verify || tls.verify_and_map {
        let ca = tls.ca_file.as_deref().ok_or_else(|| {
            TlsError::Config("'verify' needs a 'ca_file' to check client certificates".into())
        })?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(ca)?),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(certs("certificate file", cert_file)?, key(key_file)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// HTTPS monitoring: the client port's certificate, never asking for a client certificate
/// (the reference serves monitoring without client authentication even with `verify`, so
/// browsers, curl and the prometheus exporter can read it).
pub fn monitoring_server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut plain_auth = tls.clone();
    plain_auth.verify = false;
    plain_auth.verify_and_map = false;
    server_config(&plain_auth)
}

/// The client side (stanza's connections to an external NATS server, and `stanza bench`):
/// the server's certificate is checked against every CA file given.
pub fn client_config(
    cas: &[&Path],
    cert: Option<&Path>,
    key_file: Option<&Path>,
    insecure: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification))
    } else {
        if cas.is_empty() {
            return Err(TlsError::Config(
                "a CA file (tls_client_cacert / tls { client_ca }) is needed to verify the NATS server; or use -secure".into(),
            ));
        }
        builder.with_root_certificates(roots_from(cas)?)
    };
    let config = match (cert, key_file) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(certs("client certificate", c)?, key(k)?)
            .map_err(|e| TlsError::Config(e.to_string()))?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|e| TlsError::Config(format!("{host}: {e}")))
}

/// `-secure`: TLS without checking the server's certificate, as the reference allows.
#[derive(Debug)]
struct NoVerification;

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
