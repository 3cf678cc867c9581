//! Which program boots a Hermit image on this host, and with which accelerator.
//!
//! uhyve (Hermit's own hypervisor) needs hardware KVM: VMX or SVM with its module loaded and
//! `/dev/kvm` usable. PVM, which serves `/dev/kvm` on hosts without them, does not run Hermit
//! (its kernel uses SSE and XGETBV in ring 0, which PVM does not emulate). Everywhere else
//! QEMU boots osvm's loader, under KVM where the host has hardware KVM and under TCG (software
//! emulation, with a warning) otherwise. A stack may pin either; a pinned launcher that cannot
//! run here is an error that says why, never a quiet switch to the other.

use std::path::PathBuf;

use osvm_core::{AccelChoice, LauncherChoice};
use osvm_guest::find_program;
use osvm_guest::host::{Accel, KvmProbe, resolve_accel};
use serde::{Deserialize, Serialize};

/// The program that runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Launcher {
    /// Hermit's hypervisor, on hardware KVM.
    Uhyve,
    /// QEMU booting osvm's loader.
    Qemu,
}

impl Launcher {
    /// The name used in stack files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uhyve => "uhyve",
            Self::Qemu => "qemu",
        }
    }
}

/// The launcher chosen for a start, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The launcher.
    pub launcher: Launcher,
    /// The accelerator (uhyve: always KVM).
    pub accel: Accel,
    /// Its program.
    pub program: PathBuf,
    /// Why this one, in words (shown by `osvm doctor`).
    pub reason: String,
    /// Set when the guest runs under TCG: says so loudly.
    pub warning: Option<String>,
}

/// What the choice depends on, found once per runtime.
#[derive(Debug, Clone)]
pub struct Host {
    /// The KVM probe.
    pub kvm: KvmProbe,
    /// `uhyve`, if installed.
    pub uhyve: Option<PathBuf>,
    /// `qemu-system-x86_64`, if installed.
    pub qemu: Option<PathBuf>,
}

impl Host {
    /// Looks at the host.
    pub fn probe() -> Self {
        Self {
            kvm: KvmProbe::probe(),
            uhyve: find_program("uhyve"),
            qemu: find_program("qemu-system-x86_64"),
        }
    }

    /// Why uhyve cannot run guests here, if it cannot.
    pub fn uhyve_unusable(&self) -> Option<String> {
        if !self.kvm.kind.is_hardware() {
            return Some(format!(
                "uhyve needs hardware KVM (VMX/SVM); this host has {}",
                self.kvm.detail
            ));
        }
        if let Err(e) = &self.kvm.device {
            return Some(format!("uhyve needs /dev/kvm, which is {e}"));
        }
        if self.uhyve.is_none() {
            return Some("uhyve is not installed (cargo install uhyve --locked)".into());
        }
        None
    }

    /// Chooses for a component's `launcher` and `accel` settings.
    pub fn choose(&self, launcher: LauncherChoice, accel: AccelChoice) -> Result<Choice, String> {
        let uhyve = || -> Result<Choice, String> {
            if accel == AccelChoice::Tcg {
                return Err(
                    "uhyve runs guests only under KVM, and accel = \"tcg\" was asked for".into(),
                );
            }
            if let Some(why) = self.uhyve_unusable() {
                return Err(why);
            }
            Ok(Choice {
                launcher: Launcher::Uhyve,
                accel: Accel::Kvm,
                program: self.uhyve.clone().expect("checked"),
                reason: format!("uhyve on hardware KVM ({})", self.kvm.kind.label()),
                warning: None,
            })
        };
        match launcher {
            LauncherChoice::Uhyve => {
                uhyve().map_err(|e| format!("launcher = \"uhyve\" was asked for, but {e}"))
            }
            LauncherChoice::Auto
                if accel != AccelChoice::Tcg && self.uhyve_unusable().is_none() =>
            {
                uhyve()
            }
            LauncherChoice::Auto | LauncherChoice::Qemu => {
                let program = self.qemu.clone().ok_or_else(|| {
                    "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)"
                        .to_owned()
                })?;
                let (accel, warning) = resolve_accel(accel, &self.kvm)?;
                let why_not_uhyve = self
                    .uhyve_unusable()
                    .unwrap_or_else(|| "launcher = \"qemu\" was asked for".into());
                let reason = match launcher {
                    LauncherChoice::Qemu => format!("QEMU ({}) as the stack asks", accel.as_str()),
                    _ => format!(
                        "QEMU ({}) with osvm's loader: {why_not_uhyve}",
                        accel.as_str()
                    ),
                };
                Ok(Choice {
                    launcher: Launcher::Qemu,
                    accel,
                    program,
                    reason,
                    warning,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use osvm_guest::host::KvmKind;

    fn host(kind: KvmKind, uhyve: bool) -> Host {
        Host {
            kvm: KvmProbe {
                kind,
                detail: format!("{} detail", kind.label()),
                device: Ok(()),
            },
            uhyve: uhyve.then(|| PathBuf::from("/usr/local/bin/uhyve")),
            qemu: Some(PathBuf::from("/usr/bin/qemu-system-x86_64")),
        }
    }

    #[test]
    fn uhyve_only_with_hardware_kvm_and_never_silently_replaced() {
        let c = host(KvmKind::Vmx, true)
            .choose(LauncherChoice::Auto, AccelChoice::Auto)
            .unwrap();
        assert_eq!((c.launcher, c.accel), (Launcher::Uhyve, Accel::Kvm));
        assert!(c.warning.is_none());

        // PVM: QEMU under TCG, with the warning, and the reason names PVM.
        let c = host(KvmKind::Pvm, true)
            .choose(LauncherChoice::Auto, AccelChoice::Auto)
            .unwrap();
        assert_eq!((c.launcher, c.accel), (Launcher::Qemu, Accel::Tcg));
        assert!(c.warning.is_some());
        assert!(c.reason.contains("PVM"), "{}", c.reason);

        // Hardware KVM without uhyve: QEMU on KVM.
        let c = host(KvmKind::Svm, false)
            .choose(LauncherChoice::Auto, AccelChoice::Auto)
            .unwrap();
        assert_eq!((c.launcher, c.accel), (Launcher::Qemu, Accel::Kvm));
        assert!(c.reason.contains("not installed"), "{}", c.reason);

        // Pinned uhyve where it cannot run: an error with the reason.
        let e = host(KvmKind::Pvm, true)
            .choose(LauncherChoice::Uhyve, AccelChoice::Auto)
            .unwrap_err();
        assert!(
            e.contains("launcher = \"uhyve\"") && e.contains("PVM"),
            "{e}"
        );
        let e = host(KvmKind::Vmx, true)
            .choose(LauncherChoice::Uhyve, AccelChoice::Tcg)
            .unwrap_err();
        assert!(e.contains("tcg"), "{e}");

        // Pinned QEMU on a uhyve host; TCG asked for.
        let c = host(KvmKind::Vmx, true)
            .choose(LauncherChoice::Qemu, AccelChoice::Tcg)
            .unwrap();
        assert_eq!((c.launcher, c.accel), (Launcher::Qemu, Accel::Tcg));
        // KVM asked for on PVM: refused.
        assert!(
            host(KvmKind::Pvm, false)
                .choose(LauncherChoice::Qemu, AccelChoice::Kvm)
                .is_err()
        );
    }
}
