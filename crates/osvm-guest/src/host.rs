//! What the host offers a microVM: which KVM (if any) can run a stock guest kernel, and the
//! TSC frequency the guest must be told.
//!
//! KVM is only used where the CPU has VMX or SVM and its module is loaded. `/dev/kvm` alone is
//! not enough: PVM (`kvm_pvm`, pagetable-based virtualization) serves `/dev/kvm` on hosts
//! without VMX/SVM but runs only PVM-patched guest kernels at speed; a stock Debian kernel under
//! it takes minutes and then fails. Everything else runs under QEMU's TCG, software emulation,
//! and says so.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use osvm_core::AccelChoice;

/// Which flavour of KVM serves `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmKind {
    /// Intel VT-x through `kvm_intel`.
    Vmx,
    /// AMD-V through `kvm_amd`.
    Svm,
    /// Pagetable-based VM (`kvm_pvm`): runs only PVM-patched guest kernels at speed.
    Pvm,
    /// No KVM usable.
    None,
}

impl KvmKind {
    /// Whether stock guests run with hardware acceleration.
    pub fn is_hardware(self) -> bool {
        matches!(self, Self::Vmx | Self::Svm)
    }

    /// Short name for reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Vmx => "VMX",
            Self::Svm => "SVM",
            Self::Pvm => "PVM",
            Self::None => "none",
        }
    }
}

/// What was found out about KVM.
#[derive(Debug, Clone)]
pub struct KvmProbe {
    /// The flavour of KVM.
    pub kind: KvmKind,
    /// Why `kind` is what it is, in words.
    pub detail: String,
    /// Result of opening `/dev/kvm` read-write.
    pub device: Result<(), String>,
}

impl KvmProbe {
    /// Looks at cpuinfo flags, loaded modules and `/dev/kvm`.
    pub fn probe() -> Self {
        let flags = fs::read_to_string("/proc/cpuinfo")
            .map(|text| parse_cpu_flags(&text))
            .unwrap_or_default();
        let module = |name: &str| Path::new("/sys/module").join(name).exists();
        let (vmx, svm) = (flags.contains("vmx"), flags.contains("svm"));
        let (kind, detail) = if module("kvm_pvm") {
            (
                KvmKind::Pvm,
                "PVM: present, but runs only PVM-patched guest kernels; stock Linux guests use \
                 QEMU TCG here"
                    .to_owned(),
            )
        } else if vmx && module("kvm_intel") {
            (
                KvmKind::Vmx,
                "VMX: cpu flag vmx, module kvm_intel loaded".to_owned(),
            )
        } else if svm && module("kvm_amd") {
            (
                KvmKind::Svm,
                "SVM: cpu flag svm, module kvm_amd loaded".to_owned(),
            )
        } else if vmx || svm {
            let (flag, module) = if vmx {
                ("vmx", "kvm_intel")
            } else {
                ("svm", "kvm_amd")
            };
            (
                KvmKind::None,
                format!("none: cpu has {flag} but {module} is not loaded (modprobe {module})"),
            )
        } else {
            (
                KvmKind::None,
                "none: no vmx/svm cpu flag (no hardware virtualization, or nested \
                 virtualization is off); guests use QEMU TCG"
                    .to_owned(),
            )
        };
        let device = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/kvm")
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err("absent: no KVM module is loaded".to_owned())
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(format!(
                "present but not openable read-write ({e}): add the user to group kvm"
            )),
            Err(e) => Err(format!("present but open failed: {e}")),
        };
        Self {
            kind,
            detail,
            device,
        }
    }

    /// Whether a stock guest kernel can run under KVM here; `Err` says why not.
    pub fn usable(&self) -> Result<(), String> {
        if !self.kind.is_hardware() {
            return Err(format!("KVM {}", self.detail));
        }
        self.device.clone().map_err(|why| format!("/dev/kvm {why}"))
    }
}

/// The accelerator a VM runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// QEMU's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator chosen for `choice` on a host probed as `kvm`, and the warning to show when
/// it is TCG; `Err` when `kvm` was asked for and cannot be had.
pub fn resolve_accel(
    choice: AccelChoice,
    kvm: &KvmProbe,
) -> Result<(Accel, Option<String>), String> {
    match (choice, kvm.usable()) {
        (AccelChoice::Kvm, Ok(())) | (AccelChoice::Auto, Ok(())) => Ok((Accel::Kvm, None)),
        (AccelChoice::Kvm, Err(why)) => Err(format!(
            "accel = \"kvm\" was asked for, but this host cannot run a stock guest kernel \
             under KVM: {why}. Use accel = \"auto\" or \"tcg\" to accept software emulation."
        )),
        (AccelChoice::Auto, Err(why)) => Ok((Accel::Tcg, Some(tcg_warning(&why)))),
        (AccelChoice::Tcg, _) => Ok((
            Accel::Tcg,
            Some(tcg_warning("the stack asks for accel = \"tcg\"")),
        )),
    }
}

/// The warning every TCG VM carries.
pub fn tcg_warning(why_not_kvm: &str) -> String {
    format!(
        "TCG: QEMU software emulation, several times slower than KVM, with the guest isolated \
         by the emulator rather than by hardware virtualization; KVM is not used because \
         {why_not_kvm}"
    )
}

/// The host's TSC frequency in kHz and where it came from. A Linux guest under TCG must be
/// given it (`tsc_early_khz=`): calibrating against the emulated PIT hangs it on most boots.
pub fn tsc_khz() -> Result<(u64, &'static str), String> {
    const SYSFS: &str = "/sys/devices/system/cpu/cpu0/tsc_freq_khz";
    if let Some(khz) = fs::read_to_string(SYSFS)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        return Ok((khz, SYSFS));
    }
    if let Some(mhz) = tsc_from_kernel_log() {
        return Ok(((mhz * 1000.0).round() as u64, "the kernel log"));
    }
    if let Some(mhz) = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| parse_cpu_mhz(&t))
    {
        return Ok(((mhz * 1000.0).round() as u64, "/proc/cpuinfo"));
    }
    Err(format!(
        "the TSC frequency is in neither {SYSFS}, the kernel log nor /proc/cpuinfo"
    ))
}

/// The TSC frequency the kernel logged, preferring its refined calibration; `None` when the log
/// is not readable (not root with `dmesg_restrict`) or has rotated past the boot messages.
fn tsc_from_kernel_log() -> Option<f64> {
    let mut kmsg = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/kmsg")
        .ok()?;
    let (mut detected, mut refined) = (None, None);
    // Each read returns one record; the ring buffer holds far fewer than this many.
    let mut record = vec![0u8; 8192];
    for _ in 0..200_000 {
        match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&record[..n]);
                let message = text.split_once(';').map_or(text.as_ref(), |(_, m)| m);
                if let Some(mhz) = parse_tsc_log_mhz(message) {
                    if message.contains("Refined") {
                        refined = Some(mhz);
                    } else {
                        detected = Some(mhz);
                    }
                }
            }
            // EPIPE: the record was overwritten while reading; the next read continues.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    refined.or(detected)
}

/// The `flags` of the first CPU in `/proc/cpuinfo`.
pub fn parse_cpu_flags(cpuinfo: &str) -> BTreeSet<String> {
    cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "flags").then_some(value)
        })
        .map(|flags| flags.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The `cpu MHz` of the first CPU in `/proc/cpuinfo`.
pub fn parse_cpu_mhz(cpuinfo: &str) -> Option<f64> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key.trim() == "cpu MHz" {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// The TSC frequency in MHz from a kernel log line such as `tsc: Detected 2445.404 MHz processor`
/// or `tsc: Refined TSC clocksource calibration: 2445.417 MHz`.
pub fn parse_tsc_log_mhz(line: &str) -> Option<f64> {
    let rest = line
        .split_once("tsc: Refined TSC clocksource calibration: ")
        .or_else(|| line.split_once("tsc: Detected "))?
        .1;
    let (number, unit) = rest.trim().split_once(' ')?;
    if !unit.starts_with("MHz") {
        return None;
    }
    number.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(kind: KvmKind, device: Result<(), String>) -> KvmProbe {
        KvmProbe {
            kind,
            detail: format!("{}: test", kind.label()),
            device,
        }
    }

    #[test]
    fn kvm_asked_for_on_a_pvm_host_is_an_error_naming_pvm() {
        let err = resolve_accel(AccelChoice::Kvm, &probe(KvmKind::Pvm, Ok(()))).unwrap_err();
        assert!(err.contains("accel = \"kvm\""), "{err}");
        assert!(err.contains("PVM"), "{err}");
    }

    #[test]
    fn auto_falls_to_tcg_with_a_warning_saying_why() {
        let (accel, warning) = resolve_accel(
            AccelChoice::Auto,
            &probe(KvmKind::None, Err("absent".into())),
        )
        .unwrap();
        assert_eq!(accel, Accel::Tcg);
        let warning = warning.unwrap();
        assert!(warning.contains("software emulation"), "{warning}");
        assert!(warning.contains("none"), "{warning}");
    }

    #[test]
    fn auto_uses_kvm_on_vmx_with_a_usable_device_and_kvm_needs_the_device() {
        assert_eq!(
            resolve_accel(AccelChoice::Auto, &probe(KvmKind::Vmx, Ok(()))).unwrap(),
            (Accel::Kvm, None)
        );
        assert!(
            resolve_accel(
                AccelChoice::Kvm,
                &probe(KvmKind::Svm, Err("permission denied".into()))
            )
            .unwrap_err()
            .contains("permission denied")
        );
    }

    #[test]
    fn cpu_flags_and_mhz_come_from_the_first_cpu() {
        let cpuinfo = "processor\t: 0\ncpu MHz\t\t: 2100.000\nflags\t\t: fpu vmx sse2\n\n\
                       processor\t: 1\ncpu MHz\t\t: 1800.000\nflags\t\t: fpu svm\n";
        let flags = parse_cpu_flags(cpuinfo);
        assert!(flags.contains("vmx") && !flags.contains("svm"));
        assert_eq!(parse_cpu_mhz(cpuinfo), Some(2100.0));
        assert!(parse_cpu_flags("processor\t: 0\nFeatures\t: fp asimd\n").is_empty());
    }

    #[test]
    fn tsc_lines_parse() {
        assert_eq!(
            parse_tsc_log_mhz("6,12,0,-;tsc: Detected 2445.404 MHz processor"),
            Some(2445.404)
        );
        assert_eq!(
            parse_tsc_log_mhz("tsc: Refined TSC clocksource calibration: 2445.417 MHz"),
            Some(2445.417)
        );
        assert_eq!(parse_tsc_log_mhz("tsc: Marking TSC unstable"), None);
        assert_eq!(parse_cpu_mhz("cpu MHz\t\t: 2100.000\n"), Some(2100.0));
    }
}
