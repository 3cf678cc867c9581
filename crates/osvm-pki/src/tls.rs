//! rustls configurations for mutual TLS between components.
//!
//! Both sides present a certificate of the osvm CA and verify the other's: the chain must end
//! at the bundle, the certificate must not be on the CRL, and its SPIFFE ID must be in this
//! trust domain. The SPIFFE ID of the peer is what policy decisions use ([`peer_spiffe_id`]).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// What a component presents and trusts, in PEM.
#[derive(Debug, Clone)]
pub struct Material {
    /// Its certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The CA certificate(s) it trusts.
    pub bundle_pem: String,
    /// The CRL(s) it applies.
    pub crl_pem: String,
    /// The trust domain its peers must belong to.
    pub trust_domain: String,
}

/// Errors while building a configuration.
#[derive(Debug, thiserror::Error)]
#[error("tls configuration: {0}")]
pub struct TlsError(String);

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Parsed {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
}

fn parse(m: &Material) -> Result<Parsed, TlsError> {
    let chain = CertificateDer::pem_slice_iter(m.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let key = PrivateKeyDer::from_pem_slice(m.key_pem.as_bytes()).map_err(err)?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(m.bundle_pem.as_bytes()) {
        roots.add(c.map_err(err)?).map_err(err)?;
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(m.crl_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    Ok(Parsed {
        chain,
        key,
        roots: Arc::new(roots),
        crls,
    })
}

/// The SPIFFE ID (URI SAN starting `spiffe://`) of a certificate.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
            Some(u.to_string())
        }
        _ => None,
    })
}

/// The validity window (Unix seconds) of the first certificate in `pem`.
pub fn validity_of_pem(pem: &str) -> Option<(i64, i64)> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some((
        x509.validity().not_before.timestamp(),
        x509.validity().not_after.timestamp(),
    ))
}

/// The SPIFFE ID of the peer of an established connection.
pub fn peer_spiffe_id(peer_certificates: Option<&[CertificateDer<'_>]>) -> Option<String> {
    spiffe_id_of(peer_certificates?.first()?)
}

fn in_domain(cert: &CertificateDer<'_>, domain: &str) -> Result<(), Error> {
    match spiffe_id_of(cert) {
        Some(id) if id.starts_with(&format!("spiffe://{domain}/")) => Ok(()),
        Some(id) => Err(Error::General(format!(
            "peer {id} is not in trust domain {domain}"
        ))),
        None => Err(Error::General("peer certificate has no SPIFFE ID".into())),
    }
}

/// Checks client certificates with webpki (chain, validity, CRL), then the trust domain.
#[derive(Debug)]
struct DomainClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    domain: String,
    /// Whether a client must present a certificate (else one is asked for, and checked when
    /// given).
    mandatory: bool,
}

impl ClientCertVerifier for DomainClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        in_domain(end_entity, &self.domain)?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Checks server certificates with webpki (chain, validity, name, CRL), then the trust domain.
#[derive(Debug)]
struct DomainServerVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    domain: String,
}

impl ServerCertVerifier for DomainServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let ok =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        in_domain(end_entity, &self.domain)?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server config that requires a client certificate of this CA and trust domain, not revoked.
pub fn server_config(m: &Material) -> Result<ServerConfig, TlsError> {
    server_config_with(m, true)
}

/// [`server_config`] for a server that also admits clients without a certificate (the
/// dashboard, where a bearer token will do instead); a certificate that is presented is checked
/// the same way.
pub fn server_config_optional_client(m: &Material) -> Result<ServerConfig, TlsError> {
    server_config_with(m, false)
}

fn server_config_with(m: &Material, mandatory: bool) -> Result<ServerConfig, TlsError> {
    let p = parse(m)?;
    let inner = WebPkiClientVerifier::builder_with_provider(p.roots, provider())
        .with_crls(p.crls)
        .build()
        .map_err(err)?;
    let verifier = Arc::new(DomainClientVerifier {
        inner,
        domain: m.trust_domain.clone(),
        mandatory,
    });
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(p.chain, p.key)
        .map_err(err)
}

/// A client config that presents this component's certificate and checks the server's (chain,
/// name, CRL, trust domain).
pub fn client_config(m: &Material) -> Result<ClientConfig, TlsError> {
    let p = parse(m)?;
    let inner = WebPkiServerVerifier::builder_with_provider(p.roots, provider())
        .with_crls(p.crls)
        .build()
        .map_err(err)?;
    let verifier = Arc::new(DomainServerVerifier {
        inner,
        domain: m.trust_domain.clone(),
    });
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(p.chain, p.key)
        .map_err(err)
}
