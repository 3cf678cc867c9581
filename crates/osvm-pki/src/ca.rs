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
/// A CA with less than this left is near expiry: `osvm doctor` and the daemon's log say so, and
/// it is time for `osvm cert ca rotate`.
pub const CA_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
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
    /// A rotation is already under way.
    #[error(
        "a CA rotation is under way in {0}; it ends when every leaf is reissued under the new CA \
         (or with `osvm cert ca finish-rotation`)"
    )]
    RotationInProgress(PathBuf),
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
    /// The tag of the CA that issued it (the first bytes of the CA's serial, hex).
    #[serde(default)]
    pub ca: String,
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

    /// Where the previous CA lives during a rotation.
    fn previous_dir(&self) -> PathBuf {
        self.dir.join("previous")
    }

    /// Whether a CA rotation is under way (the previous CA is still trusted).
    pub fn rotation_pending(&self) -> bool {
        self.previous_dir().join("ca.pem").exists()
    }

    /// The tag of the current CA (first bytes of its serial, hex).
    pub fn ca_tag(&self) -> Result<String, PkiError> {
        ca_tag_of(&self.ca_cert_path())
    }

    /// When the current CA stops being valid, in Unix seconds.
    pub fn ca_not_after(&self) -> Result<i64, PkiError> {
        let path = self.ca_cert_path();
        let pem = fs::read_to_string(&path).map_err(|_| PkiError::NoCa(self.dir.clone()))?;
        crate::tls::validity_of_pem(&pem)
            .map(|(_, not_after)| not_after)
            .ok_or_else(|| PkiError::Index(path, "not a certificate".into()))
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

    /// The CRL files [`Pki::crl_bundle_pem`] reads: the current CA's, then the previous CA's
    /// (present only during a rotation).
    pub fn crl_paths(&self) -> Vec<PathBuf> {
        vec![self.crl_path(), self.previous_dir().join("crl.pem")]
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
        let pem = self.create_ca_in(&self.dir, validity)?;
        self.append(&[], true)?;
        self.write_crl()?;
        Ok(pem)
    }

    /// Generates a CA key and certificate into `dir`.
    fn create_ca_in(&self, dir: &Path, validity: Duration) -> Result<String, PkiError> {
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
        write_private(&dir.join("ca.key"), &key.serialize_pem())?;
        write_private(&dir.join("ca.pem"), &cert.pem())?;
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
        load_issuer_from(&self.dir)
    }

    /// The trust bundle: the CA certificate, and during a rotation the previous one too.
    pub fn bundle_pem(&self) -> Result<String, PkiError> {
        let mut bundle = fs::read_to_string(self.ca_cert_path())
            .map_err(|_| PkiError::NoCa(self.dir.clone()))?;
        if let Ok(previous) = fs::read_to_string(self.previous_dir().join("ca.pem")) {
            bundle.push_str(&previous);
        }
        Ok(bundle)
    }

    /// The CRLs of the CA, and during a rotation of the previous one too.
    pub fn crl_bundle_pem(&self) -> Result<String, PkiError> {
        let mut crls = fs::read_to_string(self.crl_path())
            .map_err(io(format!("read {}", self.crl_path().display())))?;
        if let Ok(previous) = fs::read_to_string(self.previous_dir().join("crl.pem")) {
            crls.push_str(&previous);
        }
        Ok(crls)
    }

    /// Starts a CA rotation: the current CA becomes the previous one (still trusted, still
    /// signing its CRL) and a new CA issues from now on. Components must get new leaves; then
    /// [`Pki::finish_rotation`] drops the previous CA from the bundle.
    pub fn rotate_ca(&mut self, validity: Duration) -> Result<String, PkiError> {
        if !self.has_ca() {
            return Err(PkiError::NoCa(self.dir.clone()));
        }
        if self.rotation_pending() {
            return Err(PkiError::RotationInProgress(self.dir.clone()));
        }
        // At every instant `ca.pem` holds a valid CA and, once the copy below is written, the
        // bundle holds the old one too: readers never find a gap.
        let next = self.dir.join("next");
        let _ = fs::remove_dir_all(&next);
        fs::create_dir_all(&next).map_err(io(format!("create {}", next.display())))?;
        let pem = self.create_ca_in(&next, validity)?;
        let previous = self.previous_dir();
        fs::create_dir_all(&previous).map_err(io(format!("create {}", previous.display())))?;
        fs::set_permissions(&previous, fs::Permissions::from_mode(0o700))
            .map_err(io(format!("chmod {}", previous.display())))?;
        for name in ["ca.key", "crl.pem", "ca.pem"] {
            let text =
                fs::read_to_string(self.dir.join(name)).map_err(io(format!("read {name}")))?;
            write_private(&previous.join(name), &text)?;
        }
        for name in ["ca.key", "ca.pem"] {
            fs::rename(next.join(name), self.dir.join(name))
                .map_err(io(format!("install the new {name}")))?;
        }
        let _ = fs::remove_dir_all(&next);
        self.issuer = std::sync::OnceLock::new();
        self.write_crl()?;
        Ok(pem)
    }

    /// Ends a rotation: the previous CA leaves the bundle (its leaves are no longer trusted).
    pub fn finish_rotation(&self) -> Result<bool, PkiError> {
        if !self.rotation_pending() {
            return Ok(false);
        }
        let previous = self.previous_dir();
        // The certificate first, so that a half-finished removal reads as "no rotation".
        fs::remove_file(previous.join("ca.pem"))
            .map_err(io(format!("remove {}", previous.display())))?;
        fs::remove_dir_all(&previous).map_err(io(format!("remove {}", previous.display())))?;
        Ok(true)
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

    /// [`Pki::issue`], written as `cert.pem`, `key.pem` (0600) and `bundle.pem` into
    /// `dir/<component>` (created); returns that directory. For tools and tests: the daemon
    /// delivers identities with atomic replacement and ownership of its own.
    pub fn issue_into(
        &self,
        stack: &str,
        component: &str,
        validity: Duration,
        dir: &Path,
    ) -> Result<PathBuf, PkiError> {
        use std::os::unix::fs::OpenOptionsExt;
        let issued = self.issue(stack, component, validity)?;
        let dir = dir.join(component);
        fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        for (name, text, mode) in [
            ("cert.pem", issued.cert_pem.as_str(), 0o644),
            ("key.pem", issued.key_pem.as_str(), 0o600),
            ("bundle.pem", self.bundle_pem()?.as_str(), 0o644),
        ] {
            let path = dir.join(name);
            fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(mode)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
                .map_err(io(format!("write {}", path.display())))?;
        }
        Ok(dir)
    }

    /// osvm's MCP gateway's identity (`spiffe://<trust domain>/osvm/mcp-gateway`, valid for
    /// `validity`) with this CA's bundle and CRLs: what its TLS configuration, as a server of
    /// `osvm mcp serve --listen --tls` or as a client of servers with `tls = true`, is made of.
    /// No stack may be called `osvm` (stack validation), so no component gets this identity.
    pub fn issue_gateway(&self, validity: Duration) -> Result<crate::tls::Material, PkiError> {
        self.issue_server("mcp-gateway", validity)
    }

    /// Issues one of osvm's own servers (`spiffe://<trust domain>/osvm/<name>`, DNS name
    /// `<name>.osvm.osvm`) a certificate, with the bundle and CRLs to check its clients by.
    pub fn issue_server(
        &self,
        name: &str,
        validity: Duration,
    ) -> Result<crate::tls::Material, PkiError> {
        let issued = self.issue("osvm", name, validity)?;
        Ok(crate::tls::Material {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            bundle_pem: self.bundle_pem()?,
            crl_pem: self.crl_bundle_pem()?,
            trust_domain: self.trust_domain.clone(),
        })
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
            ca: self.ca_tag()?,
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

    /// Writes fresh CRLs: the CA's, listing the revoked certificates it issued, and during a
    /// rotation the previous CA's likewise. Returns the CA's.
    pub fn write_crl(&self) -> Result<String, PkiError> {
        let mut index = self.load_index()?;
        index.crl_number += 1;
        let current_tag = self.ca_tag()?;
        let mut slots: Vec<(PathBuf, String)> = vec![(self.dir.clone(), current_tag.clone())];
        if self.rotation_pending() {
            slots.push((
                self.previous_dir(),
                ca_tag_of(&self.previous_dir().join("ca.pem"))?,
            ));
        }
        let now = OffsetDateTime::now_utc();
        let mut current_pem = String::new();
        for (dir, tag) in &slots {
            let issuer = if *tag == current_tag {
                None
            } else {
                Some(load_issuer_from(dir)?)
            };
            let revoked_certs = index
                .issued
                .iter()
                .filter(|e| e.ca == *tag || (e.ca.is_empty() && *tag == current_tag))
                .filter_map(|e| {
                    Some(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(&unhex(&e.serial)?),
                        revocation_time: to_time(e.revoked_at?),
                        reason_code: Some(RevocationReason::Unspecified),
                        invalidity_date: None,
                    })
                })
                .collect();
            let params = CertificateRevocationListParams {
                this_update: now - time::Duration::minutes(1),
                next_update: now + time::Duration::seconds(CRL_VALIDITY.as_secs() as i64),
                crl_number: SerialNumber::from(index.crl_number),
                issuing_distribution_point: None,
                revoked_certs,
                key_identifier_method: KeyIdMethod::Sha256,
            };
            let crl = match &issuer {
                Some(previous) => params.signed_by(previous)?,
                None => params.signed_by(self.issuer()?)?,
            };
            let pem = crl.pem()?;
            write_private(&dir.join("crl.pem"), &pem)?;
            if *tag == current_tag {
                current_pem = pem;
            }
        }
        self.append(&[Record::Crl(index.crl_number)], true)?;
        Ok(current_pem)
    }
}

/// The tag of the CA certificate in `path`.
fn ca_tag_of(path: &Path) -> Result<String, PkiError> {
    let pem = fs::read_to_string(path).map_err(io(format!("read {}", path.display())))?;
    let der: rustls::pki_types::CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).map_err(
            |e: rustls::pki_types::pem::Error| PkiError::Index(path.to_path_buf(), e.to_string()),
        )?;
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| PkiError::Index(path.to_path_buf(), e.to_string()))?;
    let serial = x509.raw_serial();
    Ok(hex(&serial[..serial.len().min(4)]))
}

fn load_issuer_from(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key_pem = fs::read_to_string(dir.join("ca.key"))
        .map_err(io(format!("read {}", dir.join("ca.key").display())))?;
    let cert_pem = fs::read_to_string(dir.join("ca.pem"))
        .map_err(io(format!("read {}", dir.join("ca.pem").display())))?;
    Ok(Issuer::from_ca_cert_pem(
        &cert_pem,
        KeyPair::from_pem(&key_pem)?,
    )?)
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
