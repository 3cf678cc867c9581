//! Identities delivered into components.
//!
//! Each component gets `cert.pem` (SPIFFE ID `spiffe://<trust domain>/<stack>/<component>`,
//! DNS name `<component>.<stack>.osvm`), `key.pem`, `bundle.pem` (the CA) and `crl.pem` in
//! `<state dir>/identities/<stack>/<component>/`, which the sandbox sees read-only at
//! `/run/osvm/identity`. The CA of the stack's trust domain is created on first use. Files are
//! replaced one by one through a rename (never half-written); the key is readable only by the
//! sandbox's own uid.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use osvm_core::stack::Stack;
use osvm_pki::{Pki, PkiError};

/// Where the identity directory appears inside a sandbox.
pub const INSIDE: &str = "/run/osvm/identity";

/// One delivery.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The host directory to bind at [`INSIDE`].
    pub dir: PathBuf,
    /// The certificate's serial.
    pub serial: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// When it expires (Unix seconds).
    pub not_after: i64,
    /// Whether the CA had to be created for this delivery.
    pub created_ca: bool,
}

/// The PKI directory of a trust domain.
pub fn pki_dir(state_dir: &Path, trust_domain: &str) -> PathBuf {
    state_dir.join("pki").join(trust_domain)
}

fn replace(
    dir: &Path,
    name: &str,
    content: &str,
    mode: u32,
    owner: Option<u32>,
) -> Result<(), PkiError> {
    let tmp = dir.join(format!(".{name}.new"));
    let io = |what: &str, e: std::io::Error| PkiError::Io(format!("{what} {}", tmp.display()), e);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    // Written whole, then renamed over the old file: a reader sees the old file or the new
    // one. Not synced to disk: these files are derived (the CA's journal is the durable
    // record) and written again at every start of the component, so after a power loss the
    // next start replaces whatever is left. A sync per file made every start wait for the
    // disk on the engine thread: four per component, most of a 1,000-component apply.
    f.write_all(content.as_bytes())
        .map_err(|e| io("write", e))?;
    if let Some(uid) = owner {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(uid)).map_err(|e| io("chown", e))?;
    }
    fs::rename(&tmp, dir.join(name)).map_err(|e| io("rename", e))
}

/// Where the identity files of `stack/component` live on the host.
pub fn identity_dir(state_dir: &Path, stack: &str, component: &str) -> PathBuf {
    state_dir.join("identities").join(stack).join(component)
}

/// Whose identity [`deliver`] writes: a component of a stack, in a trust domain.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// The stack's trust domain (whose CA issues).
    pub trust_domain: String,
    /// The stack.
    pub stack: String,
    /// The component.
    pub component: String,
    /// The certificate's lifetime.
    pub ttl: Duration,
}

impl Recipient {
    /// `component` of `stack`.
    pub fn of(stack: &Stack, component: &str) -> Self {
        Self {
            trust_domain: stack.trust_domain.clone(),
            stack: stack.name.clone(),
            component: component.to_owned(),
            ttl: stack.certificate_ttl,
        }
    }
}

/// Creates the CA of `trust_domain` unless it exists; returns whether it did. Called before
/// deliveries that may run at once (each start writes its identity on its own thread), so that
/// no two of them make a CA each.
pub fn ensure_ca(state_dir: &Path, trust_domain: &str) -> Result<bool, PkiError> {
    made_ca(&Pki::new(&pki_dir(state_dir, trust_domain), trust_domain)?)
}

/// Creates `pki`'s CA unless it exists; returns whether it did.
fn made_ca(pki: &Pki) -> Result<bool, PkiError> {
    if pki.has_ca() {
        return Ok(false);
    }
    pki.init_ca(osvm_pki::ca::CA_VALIDITY)?;
    Ok(true)
}

/// Issues a certificate for `to` and writes its identity files; `uid` owns the key (the
/// sandbox's root, as seen from the host).
pub fn deliver(state_dir: &Path, to: &Recipient, uid: u32) -> Result<Delivered, PkiError> {
    let pki = Pki::new(&pki_dir(state_dir, &to.trust_domain), &to.trust_domain)?;
    let created_ca = made_ca(&pki)?;
    let issued = pki.issue(&to.stack, &to.component, to.ttl)?;
    let dir = identity_dir(state_dir, &to.stack, &to.component);
    fs::create_dir_all(&dir).map_err(|e| PkiError::Io(format!("create {}", dir.display()), e))?;
    // Root's alone on the way; the directory itself is what the sandbox sees (bound
    // read-only by the sandbox's monitor, which walks the path as root), so it lists its files.
    for d in [
        state_dir.join("identities"),
        state_dir.join("identities").join(&to.stack),
    ] {
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
    }
    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
    let crl = pki.crl_bundle_pem()?;
    // The key first: a reader that sees the new certificate also finds its key.
    replace(&dir, "key.pem", &issued.key_pem, 0o400, Some(uid))?;
    replace(&dir, "bundle.pem", &pki.bundle_pem()?, 0o444, None)?;
    replace(&dir, "crl.pem", &crl, 0o444, None)?;
    replace(&dir, "cert.pem", &issued.cert_pem, 0o444, None)?;
    Ok(Delivered {
        dir,
        serial: issued.entry.serial,
        spiffe_id: issued.entry.spiffe_id,
        not_after: issued.entry.not_after,
        created_ca,
    })
}

/// Rewrites only the trust material (bundle and CRLs) of a component's identity: the first step
/// of a CA rotation, so that every component trusts the new CA before any presents a leaf of it.
pub fn refresh_trust(state_dir: &Path, stack: &Stack, component: &str) -> Result<(), PkiError> {
    let pki = Pki::new(
        &pki_dir(state_dir, &stack.trust_domain),
        &stack.trust_domain,
    )?;
    let dir = identity_dir(state_dir, &stack.name, component);
    if !dir.exists() {
        return Ok(());
    }
    replace(&dir, "crl.pem", &pki.crl_bundle_pem()?, 0o444, None)?;
    replace(&dir, "bundle.pem", &pki.bundle_pem()?, 0o444, None)
}

/// When a certificate of lifetime `ttl` issued at `not_before` should be renewed: at half its
/// life, plus up to a tenth of it of jitter (`seed` spreads components apart).
pub fn renew_after(ttl: Duration, seed: u64) -> Duration {
    let tenth = (ttl / 10).as_millis().max(1) as u64;
    ttl / 2 + Duration::from_millis(seed % tenth)
}

/// How long until the certificate in `dir` needs renewing (zero when it is missing, expired or
/// past half its life).
pub fn due_in(dir: &Path, ttl: Duration, seed: u64) -> Duration {
    let Some((not_before, not_after)) = fs::read_to_string(dir.join("cert.pem"))
        .ok()
        .and_then(|pem| osvm_pki::tls::validity_of_pem(&pem))
    else {
        return Duration::ZERO;
    };
    let now = crate::store::now_ms() as i64 / 1000;
    if now >= not_after {
        return Duration::ZERO;
    }
    let due = not_before + renew_after(ttl, seed).as_secs() as i64;
    Duration::from_secs(due.saturating_sub(now).max(0) as u64)
}
