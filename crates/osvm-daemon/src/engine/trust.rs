//! Identity glue: each instance's certificate issued at start, renewed before it expires,
//! copied into running instances and announced to them (`identity_reload`); CA rotations
//! carried through every running component of the trust domain; CA expiry warned about.

use super::*;

/// Why a component's identity could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The host uid that owns its key could not be found.
    #[error("identity: {0}")]
    Owner(osvm_core::RuntimeError),
    /// The CA could not issue or write it.
    #[error("identity: {0}")]
    Pki(#[from] osvm_pki::PkiError),
}

/// A component's identity to write (see [`Engine::identity_job`]).
pub(super) struct IdentityJob {
    state_dir: PathBuf,
    to: identity::Recipient,
    uid: u32,
}

impl IdentityJob {
    /// Issues the certificate and writes the identity files.
    pub(super) fn deliver(&self) -> Result<Delivered, IdentityError> {
        Ok(identity::deliver(&self.state_dir, &self.to, self.uid)?)
    }

    /// Where they are written.
    pub(super) fn dir(&self) -> PathBuf {
        identity::identity_dir(&self.state_dir, &self.to.stack, &self.to.component)
    }
}

/// How often CA rotations under way are followed.
pub(super) const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

/// How often the CAs in use are checked for nearing expiry.
pub(super) const CA_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// RFC 3339 (UTC, seconds) of Unix time `secs`.
pub(super) fn humantime_secs(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Engine {
    /// The trust domains of the stacks this engine runs.
    pub(super) fn trust_domains(&self) -> std::collections::BTreeSet<String> {
        self.stacks
            .values()
            .map(|s| s.trust_domain.clone())
            .collect()
    }

    /// Carries CA rotations (`osvm cert ca rotate`) through: first every running component of
    /// the trust domain gets the bundle with both CAs, then each gets a leaf of the new CA, and
    /// when all have one the previous CA leaves the bundle (and the components' bundles).
    pub(super) fn follow_ca_rotations(&mut self, now: Instant) {
        let state_dir = self.runtime.config().state_dir.clone();
        let domains = self.trust_domains();
        for domain in domains {
            let Ok(pki) = osvm_pki::Pki::new(&identity::pki_dir(&state_dir, &domain), &domain)
            else {
                continue;
            };
            let running: Vec<usize> = (0..self.units.len())
                .filter(|i| {
                    self.units[*i].instance.is_some() && self.stack_of(*i).trust_domain == domain
                })
                .collect();
            if !pki.rotation_pending() {
                self.rotations.remove(&domain);
                continue;
            }
            match self.rotations.get(&domain).copied() {
                None => {
                    self.rotations.insert(domain.clone(), now);
                    for &i in &running {
                        let stack = self.stack_of(i).clone();
                        let name = self.units[i].component.name.clone();
                        match identity::refresh_trust(&state_dir, &stack, &name) {
                            Ok(()) => self.push_identity(i),
                            Err(e) => self.emit(i, EventKind::IdentityTrustFailed, &e.to_string()),
                        }
                    }
                    for &i in &running {
                        self.units[i].renew_at = Some(now);
                    }
                    self.note(
                        EventKind::CaRotation,
                        &format!(
                            "trust domain {domain}: both CAs trusted; reissuing {} leaves",
                            running.len()
                        ),
                    );
                }
                Some(since) => {
                    let done = running
                        .iter()
                        .all(|&i| self.units[i].delivered_at.is_some_and(|t| t >= since));
                    if done {
                        match pki.finish_rotation() {
                            Ok(_) => {
                                for &i in &running {
                                    let stack = self.stack_of(i).clone();
                                    let name = self.units[i].component.name.clone();
                                    if identity::refresh_trust(&state_dir, &stack, &name).is_ok() {
                                        self.push_identity(i);
                                        self.reload_identity(i);
                                    }
                                }
                                self.rotations.remove(&domain);
                                self.note(
                                    EventKind::CaRotationFinished,
                                    &format!(
                                        "trust domain {domain}: the previous CA left the bundle"
                                    ),
                                );
                            }
                            Err(e) => self.note(EventKind::CaRotationFailed, &e.to_string()),
                        }
                    }
                }
            }
        }
    }

    /// Logs `ca-expiring` for every CA in use that has less than
    /// [`osvm_pki::ca::CA_EXPIRY_WARNING`] left (or has expired).
    pub(super) fn check_ca_expiry(&mut self) {
        let state_dir = self.runtime.config().state_dir.clone();
        let domains = self.trust_domains();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for domain in domains {
            let Ok(pki) = osvm_pki::Pki::new(&identity::pki_dir(&state_dir, &domain), &domain)
            else {
                continue;
            };
            let Ok(not_after) = pki.ca_not_after() else {
                continue;
            };
            let left = not_after - now;
            if left < osvm_pki::ca::CA_EXPIRY_WARNING.as_secs() as i64 {
                let when = if left <= 0 {
                    "has expired".to_string()
                } else {
                    format!("expires in {} h", left / 3600)
                };
                self.note(
                    EventKind::CaExpiring,
                    &format!(
                        "the CA of trust domain {domain} {when}; run `osvm cert --trust-domain {domain} ca rotate`"
                    ),
                );
            }
        }
    }

    /// Spreads renewals of the components over their window, the same for a component every
    /// time (a hash of its key).
    pub(super) fn renewal_seed(&self, i: usize) -> u64 {
        self.units[i]
            .life
            .record
            .key()
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
    }

    /// Issues and writes unit `i`'s identity; schedules its renewal.
    pub(super) fn deliver_identity(
        &mut self,
        i: usize,
        now: Instant,
        renewal: bool,
    ) -> Result<Delivered, IdentityError> {
        let job = self.identity_job(i)?;
        let delivered = job.deliver()?;
        self.identity_delivered(i, now, &delivered, renewal);
        Ok(delivered)
    }

    /// What writing unit `i`'s identity needs, to be done by [`IdentityJob::deliver`] on any
    /// thread (a start's own): the component's host uid, and its trust domain's CA, made here
    /// first (with its event) so that starts running at once never make one each.
    pub(super) fn identity_job(&mut self, i: usize) -> Result<IdentityJob, IdentityError> {
        let to = identity::Recipient::of(self.stack_of(i), &self.units[i].component.name);
        let state_dir = self.runtime.config().state_dir.clone();
        // The key belongs to the component's own host uid (root of its sandbox).
        let uid = self
            .runtime
            .component_ids(&to.stack, &to.component)
            .map_err(IdentityError::Owner)?
            .host_base;
        if identity::ensure_ca(&state_dir, &to.trust_domain)? {
            self.emit_ca_created(i, &state_dir, &to.trust_domain);
        }
        Ok(IdentityJob { state_dir, to, uid })
    }

    fn emit_ca_created(&mut self, i: usize, state_dir: &std::path::Path, trust_domain: &str) {
        let detail = format!(
            "a CA for trust domain {trust_domain} in {}",
            identity::pki_dir(state_dir, trust_domain).display()
        );
        self.emit(i, EventKind::CaCreated, &detail);
    }

    /// Unit `i`'s identity was written: its renewal is scheduled and the delivery announced.
    pub(super) fn identity_delivered(
        &mut self,
        i: usize,
        now: Instant,
        delivered: &Delivered,
        renewal: bool,
    ) {
        if delivered.created_ca {
            let state_dir = self.runtime.config().state_dir.clone();
            let domain = self.stack_of(i).trust_domain.clone();
            self.emit_ca_created(i, &state_dir, &domain);
        }
        let seed = self.renewal_seed(i);
        let ttl = self.stack_of(i).certificate_ttl;
        self.units[i].renew_at = Some(now + identity::renew_after(ttl, seed));
        self.units[i].delivered_at = Some(now);
        let expires = humantime_secs(delivered.not_after);
        self.emit(
            i,
            if renewal {
                EventKind::IdentityRenewed
            } else {
                EventKind::Identity
            },
            &format!(
                "{} (serial {}), valid until {expires}, at {}",
                delivered.spiffe_id,
                delivered.serial,
                identity::INSIDE
            ),
        );
    }

    /// Copies unit `i`'s identity files into its running instance (a sandbox sees a copy, not
    /// the host directory).
    pub(super) fn push_identity(&mut self, i: usize) {
        let Some(inst) = self.units[i].instance.clone() else {
            return;
        };
        let state_dir = self.runtime.config().state_dir.clone();
        let dir = identity::identity_dir(
            &state_dir,
            &self.units[i].life.record.stack,
            &self.units[i].component.name,
        );
        if let Err(e) = inst.refresh_identity(&dir) {
            self.emit(i, EventKind::IdentityDeliveryFailed, &e.to_string());
        }
    }

    /// Tells unit `i` its identity was renewed, as its `identity_reload` says.
    pub(super) fn reload_identity(&mut self, i: usize) {
        let Some(reload) = self.units[i].component.identity_reload.clone() else {
            return;
        };
        let Some(inst) = self.units[i].instance.clone() else {
            return;
        };
        match reload {
            osvm_core::stack::IdentityReload::Signal(sig) => match inst.signal(sig) {
                Ok(()) => self.emit(i, EventKind::IdentityReload, &format!("sent signal {sig}")),
                Err(e) => self.emit(i, EventKind::IdentityReloadFailed, &e.to_string()),
            },
            osvm_core::stack::IdentityReload::Exec(cmd) => {
                match inst.exec(&cmd, Duration::from_secs(5)) {
                    Ok(out) if out.code == Some(0) => {
                        self.emit(i, EventKind::IdentityReload, &format!("{} -> 0", cmd[0]))
                    }
                    Ok(out) => self.emit(
                        i,
                        EventKind::IdentityReloadFailed,
                        &format!(
                            "{} -> {:?}: {}",
                            cmd[0],
                            out.code,
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    ),
                    Err(e) => self.emit(i, EventKind::IdentityReloadFailed, &e.to_string()),
                }
            }
        }
    }
}
