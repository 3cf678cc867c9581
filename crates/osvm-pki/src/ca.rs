//! The certificate authority and what it has issued.
//!
//! Files under the PKI directory (0700):
//! - `ca.pem`, `ca.key` (0600): the CA certificate and its ECDSA P-256 key;
//! - `issued.jsonl`: a journal, one JSON record per line: an issued certificate (serial, SPIFFE
//!   ID, validity), a revocation, a CRL number. Issuing appends without waiting for the disk (a
//!   crashed process loses nothing; a crashed machine may lose the last lines, and the identity
//!   files then still hold the certificates); revocations and CRLs are synced before they count;
//! - `crl.pem`: the CRL, signed by the CA, reissued on every revocation.
//!
//! Serial numbers are 16 random bytes (positive), so two issued certificates never share one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Default lifetime of the CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default lifetime of a leaf certificate.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Validity of each CRL; it is reissued on every change anyway.
const CRL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// rcgen refused (bad parameters, a key it cannot use).
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// No CA exists yet.
    #[error("no CA in {0}; create one with `osvm cert ca init`")]
    NoCa(PathBuf),
    /// `ca init` on a directory that already has one.
    #[error("a CA already exists in {0}")]
    CaExists(PathBuf),
    /// The index file is malformed.
    #[error("{0} is malformed: {1}")]
    Index(PathBuf, String),
    /// No issued certificate matches.
    #[error("no issued certificate matches `{0}`")]
    NotFound(String),
    /// An identifier that cannot form a SPIFFE ID.
    #[error("invalid identity: {0}")]
    Invalid(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PkiError {
    let what = what.into();
    move |e| PkiError::Io(what, e)
}

/// One issued certificate in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedEntry {
    /// Serial number, hex.
    pub serial: String,
    /// The SPIFFE ID in its URI SAN.
    pub spiffe_id: String,
    /// The DNS name in its SAN.
    pub dns_name: String,
    /// Start of validity (Unix seconds).
    pub not_before: i64,
    /// End of validity (Unix seconds).
    pub not_after: i64,
    /// When it was revoked (Unix seconds), if it was.
    pub revoked_at: Option<i64>,
}

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Issued(IssuedEntry),
    Revoked { serial: String, at: i64 },
    Crl(u64),
}

#[derive(Debug, Default)]
struct Index {
    issued: Vec<IssuedEntry>,
    /// CRL number of the last CRL issued.
    crl_number: u64,
}

/// A certificate and its key, as issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The index entry.
    pub entry: IssuedEntry,
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
}

/// The PKI in one directory.
pub struct Pki {
    dir: PathBuf,
    trust_domain: String,
    /// The CA's issuer, read from its files once.
    issuer: std::sync::OnceLock<Issuer<'static, KeyPair>>,
}

/// A SPIFFE ID: `spiffe://<trust domain>/<stack>/<component>`.
pub fn spiffe_id(trust_domain: &str, stack: &str, component: &str) -> String {
    format!("spiffe://{trust_domain}/{stack}/{component}")
}

fn ok_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn to_time(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn write_private(path: &Path, content: &str) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("create {}", tmp.display())))?;
    f.write_all(content.as_bytes())
        .map_err(io(format!("write {}", tmp.display())))?;
    f.sync_all()
        .map_err(io(format!("sync {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io(format!("rename to {}", path.display())))
}

impl Pki {
    /// The PKI kept in `dir` for `trust_domain` (the CA need not exist yet).
    pub fn new(dir: &Path, trust_domain: &str) -> Result<Self, PkiError> {
        if !ok_label(trust_domain) {
            return Err(PkiError::Invalid(format!("trust domain `{trust_domain}`")));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            trust_domain: trust_domain.into(),
            issuer: std::sync::OnceLock::new(),
        })
    }

    /// The PKI in `dir`, its trust domain read from the CA certificate.
    pub fn open(dir: &Path) -> Result<Self, PkiError> {
        let path = dir.join("ca.pem");
        let pem = fs::read_to_string(&path).map_err(|_| PkiError::NoCa(dir.to_path_buf()))?;
        let der: rustls::pki_types::CertificateDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).map_err(
                |e: rustls::pki_types::pem::Error| PkiError::Index(path.clone(), e.to_string()),
            )?;
        let id = crate::tls::spiffe_id_of(&der)
            .ok_or_else(|| PkiError::Index(path.clone(), "the CA names no trust domain".into()))?;
        let domain = id.trim_start_matches("spiffe://").trim_end_matches('/');
        Self::new(dir, domain)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca_key_path(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("issued.jsonl")
    }

    /// Where the CRL is written.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    /// Whether a CA exists.
    pub fn has_ca(&self) -> bool {
        self.ca_cert_path().exists() && self.ca_key_path().exists()
    }

    /// Creates the CA (`osvm cert ca init`); refuses to replace an existing one.
    pub fn init_ca(&self, validity: Duration) -> Result<String, PkiError> {
        if self.has_ca() {
            return Err(PkiError::CaExists(self.dir.clone()));
        }
        fs::create_dir_all(&self.dir).map_err(io(format!("create {}", self.dir.display())))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(io(format!("chmod {}", self.dir.display())))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let serial = random_serial()?;
        // A name of its own (part of its serial), so that two CAs — a rotation's old and new,
        // or another host's — are never mistaken for each other while building a chain.
        let tag = hex(&serial.as_ref()[..4]);
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("osvm CA {tag} for {}", self.trust_domain),
        );
        dn.push(DnType::OrganizationName, "osvm");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::seconds(validity.as_secs() as i64);
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{}", self.trust_domain)
                .try_into()
                .map_err(|e: rcgen::Error| e)?,
        )];
        let cert = params.self_signed(&key)?;
        write_private(&self.ca_key_path(), &key.serialize_pem())?;
        write_private(&self.ca_cert_path(), &cert.pem())?;
        self.append(&[], true)?;
        self.write_crl()?;
        Ok(cert.pem())
    }

    fn issuer(&self) -> Result<&Issuer<'static, KeyPair>, PkiError> {
        if let Some(i) = self.issuer.get() {
            return Ok(i);
        }
        let loaded = self.load_issuer()?;
        Ok(self.issuer.get_or_init(|| loaded))
    }

    fn load_issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        if !self.has_ca() {
            return Err(PkiError::NoCa(self.dir.clone()));
        }
        let key_pem = fs::read_to_string(self.ca_key_path())
            .map_err(io(format!("read {}", self.ca_key_path().display())))?;
        let cert_pem = fs::read_to_string(self.ca_cert_path())
            .map_err(io(format!("read {}", self.ca_cert_path().display())))?;
        let key = KeyPair::from_pem(&key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&cert_pem, key)?)
    }

    /// The CA certificate (the trust bundle).
    pub fn bundle_pem(&self) -> Result<String, PkiError> {
        fs::read_to_string(self.ca_cert_path()).map_err(|_| PkiError::NoCa(self.dir.clone()))
    }

    fn load_index(&self) -> Result<Index, PkiError> {
        let text = match fs::read_to_string(self.index_path()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Index::default()),
            Err(e) => {
                return Err(PkiError::Io(
                    format!("read {}", self.index_path().display()),
                    e,
                ));
            }
        };
        let mut index = Index::default();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let record: Record = serde_json::from_str(line)
                .map_err(|e| PkiError::Index(self.index_path(), format!("line {}: {e}", n + 1)))?;
            match record {
                Record::Issued(e) => index.issued.push(e),
                Record::Revoked { serial, at } => {
                    for e in index.issued.iter_mut().filter(|e| e.serial == serial) {
                        e.revoked_at.get_or_insert(at);
                    }
                }
                Record::Crl(n) => index.crl_number = index.crl_number.max(n),
            }
        }
        Ok(index)
    }

    fn append(&self, records: &[Record], sync: bool) -> Result<(), PkiError> {
        let path = self.index_path();
        let mut text = String::new();
        for r in records {
            text.push_str(
                &serde_json::to_string(r)
                    .map_err(|e| PkiError::Index(path.clone(), e.to_string()))?,
            );
            text.push('\n');
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(format!("open {}", path.display())))?;
        f.write_all(text.as_bytes())
            .map_err(io(format!("append to {}", path.display())))?;
        if sync {
            f.sync_data()
                .map_err(io(format!("sync {}", path.display())))?;
        }
        Ok(())
    }

    /// Issues a certificate for component `component` of stack `stack`, valid for `validity`.
    pub fn issue(
        &self,
        stack: &str,
        component: &str,
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(
            stack,
            component,
            now - time::Duration::minutes(1),
            now + time::Duration::seconds(validity.as_secs() as i64),
        )
    }

    /// Issues a certificate valid between two instants (tests use it for expired ones).
    pub fn issue_between(
        &self,
        stack: &str,
        component: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, PkiError> {
        for (what, s) in [("stack", stack), ("component", component)] {
            if !ok_label(s) || s.contains('.') {
                return Err(PkiError::Invalid(format!("{what} `{s}`")));
            }
        }
        let issuer = self.issuer()?;
        let id = spiffe_id(&self.trust_domain, stack, component);
        let dns_name = format!("{component}.{stack}.osvm");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![dns_name.clone()])?;
        params
            .subject_alt_names
            .push(SanType::URI(id.clone().try_into()?));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{component}.{stack}"));
        params.distinguished_name = dn;
        let serial = random_serial()?;
        params.serial_number = Some(serial.clone());
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.signed_by(&key, issuer)?;
        let entry = IssuedEntry {
            serial: hex(serial.as_ref()),
            spiffe_id: id,
            dns_name,
            not_before: not_before.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
            revoked_at: None,
        };
        self.append(&[Record::Issued(entry.clone())], false)?;
        Ok(Issued {
            entry,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Every issued certificate, oldest first.
    pub fn list(&self) -> Result<Vec<IssuedEntry>, PkiError> {
        Ok(self.load_index()?.issued)
    }

    /// Revokes the certificates matching `what`: a serial (hex), or a component name (`name` or
    /// `stack/name`, every certificate of it). Reissues the CRL. Returns the revoked serials.
    pub fn revoke(&self, what: &str) -> Result<Vec<String>, PkiError> {
        let mut index = self.load_index()?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let matches = |e: &IssuedEntry| {
            e.serial.eq_ignore_ascii_case(what) || e.spiffe_id.ends_with(&format!("/{what}"))
        };
        let mut revoked = Vec::new();
        for e in index
            .issued
            .iter_mut()
            .filter(|e| matches(e) && e.revoked_at.is_none())
        {
            e.revoked_at = Some(now);
            revoked.push(e.serial.clone());
        }
        if revoked.is_empty() && !index.issued.iter().any(matches) {
            return Err(PkiError::NotFound(what.into()));
        }
        let records: Vec<Record> = revoked
            .iter()
            .map(|serial| Record::Revoked {
                serial: serial.clone(),
                at: now,
            })
            .collect();
        self.append(&records, true)?;
        self.write_crl()?;
        Ok(revoked)
    }

    /// Writes a fresh CRL (signed by the CA) listing every revoked certificate.
    pub fn write_crl(&self) -> Result<String, PkiError> {
        let issuer = self.issuer()?;
        let mut index = self.load_index()?;
        index.crl_number += 1;
        let now = OffsetDateTime::now_utc();
        let revoked_certs = index
            .issued
            .iter()
            .filter_map(|e| {
                Some(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&unhex(&e.serial)?),
                    revocation_time: to_time(e.revoked_at?),
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
            })
            .collect();
        let crl = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + time::Duration::seconds(CRL_VALIDITY.as_secs() as i64),
            crl_number: SerialNumber::from(index.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)?;
        let pem = crl.pem()?;
        write_private(&self.crl_path(), &pem)?;
        self.append(&[Record::Crl(index.crl_number)], true)?;
        Ok(pem)
    }
}

/// 16 random bytes with the top bit clear (serials are positive integers).
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(io("read /dev/urandom"))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
