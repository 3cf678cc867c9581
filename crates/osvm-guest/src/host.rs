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

/// What the host offers for confidential computing, each `Ok(what was found)` or `Err(why
/// not)`. osvm uses SEV-SNP and TDX for microVMs (`microvm = { confidential = ... }`); SGX is
/// reported for operators, osvm runs no enclaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfidentialProbe {
    /// AMD SEV-SNP.
    pub sev_snp: Result<String, String>,
    /// Intel TDX.
    pub tdx: Result<String, String>,
    /// Intel SGX.
    pub sgx: Result<String, String>,
}

/// The facts [`ConfidentialProbe`] judges, read from the host or given by a test.
#[derive(Debug, Clone, Default)]
pub struct ConfidentialFacts {
    /// The CPU's flags (`/proc/cpuinfo`).
    pub flags: BTreeSet<String>,
    /// Why KVM cannot run a guest with hardware virtualization here, if it cannot.
    pub kvm_unusable: Option<String>,
    /// `/sys/module/kvm_amd/parameters/sev_snp`, if the file exists.
    pub kvm_amd_sev_snp: Option<String>,
    /// `/sys/module/kvm_intel/parameters/tdx`, if the file exists.
    pub kvm_intel_tdx: Option<String>,
    /// `/dev/sev` exists (the AMD secure processor's driver).
    pub dev_sev: bool,
    /// `/dev/sgx_enclave` exists.
    pub dev_sgx_enclave: bool,
}

impl ConfidentialProbe {
    /// Reads the host.
    pub fn probe(kvm: &KvmProbe) -> Self {
        let param = |p: &str| fs::read_to_string(p).ok().map(|v| v.trim().to_owned());
        Self::judge(&ConfidentialFacts {
            flags: parse_cpu_flags(&fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
            kvm_unusable: kvm.usable().err(),
            kvm_amd_sev_snp: param("/sys/module/kvm_amd/parameters/sev_snp"),
            kvm_intel_tdx: param("/sys/module/kvm_intel/parameters/tdx"),
            dev_sev: Path::new("/dev/sev").exists(),
            dev_sgx_enclave: Path::new("/dev/sgx_enclave").exists(),
        })
    }

    /// Judges `facts`: the first thing missing for each technology, or what was found.
    pub fn judge(facts: &ConfidentialFacts) -> Self {
        let flag = |f: &str| facts.flags.contains(f);
        let on = |v: &Option<String>| matches!(v.as_deref(), Some("Y" | "y" | "1"));
        let in_a_vm = if flag("hypervisor") {
            "; this host is itself a virtual machine, whose hypervisor would have to pass it on"
        } else {
            ""
        };
        let sev_snp = if !flag("sev_snp") {
            Err(format!(
                "the CPU offers no SEV-SNP (no sev_snp flag in /proc/cpuinfo){in_a_vm}"
            ))
        } else if let Some(why) = &facts.kvm_unusable {
            Err(format!("KVM with hardware virtualization is needed: {why}"))
        } else if !on(&facts.kvm_amd_sev_snp) {
            Err(format!(
                "kvm_amd runs without SEV-SNP (/sys/module/kvm_amd/parameters/sev_snp: {})",
                facts.kvm_amd_sev_snp.as_deref().unwrap_or("missing")
            ))
        } else if !facts.dev_sev {
            Err("/dev/sev is missing (the AMD secure processor's driver, ccp)".to_owned())
        } else {
            Ok("sev_snp CPU flag, kvm_amd sev_snp=Y, /dev/sev".to_owned())
        };
        let tdx = if !flag("tdx_host_platform") {
            Err(format!(
                "the CPU or its firmware offers no TDX (no tdx_host_platform flag in /proc/cpuinfo){in_a_vm}"
            ))
        } else if let Some(why) = &facts.kvm_unusable {
            Err(format!("KVM with hardware virtualization is needed: {why}"))
        } else if !on(&facts.kvm_intel_tdx) {
            Err(format!(
                "kvm_intel runs without TDX (/sys/module/kvm_intel/parameters/tdx: {})",
                facts.kvm_intel_tdx.as_deref().unwrap_or("missing")
            ))
        } else {
            Ok("tdx_host_platform CPU flag, kvm_intel tdx=Y".to_owned())
        };
        let sgx = if !flag("sgx") {
            Err(format!(
                "the CPU offers no SGX (no sgx flag in /proc/cpuinfo){in_a_vm}"
            ))
        } else if !facts.dev_sgx_enclave {
            Err(
                "/dev/sgx_enclave is missing (a kernel without SGX, or SGX off in the firmware)"
                    .to_owned(),
            )
        } else {
            Ok("sgx CPU flag, /dev/sgx_enclave (osvm runs no enclaves)".to_owned())
        };
        Self { sev_snp, tdx, sgx }
    }

    /// What `choice` needs, available or not.
    pub fn of(&self, choice: osvm_core::ConfidentialChoice) -> &Result<String, String> {
        match choice {
            osvm_core::ConfidentialChoice::SevSnp => &self.sev_snp,
            osvm_core::ConfidentialChoice::Tdx => &self.tdx,
        }
    }
}

/// Why a microVM asking for `choice` cannot start here; osvm never starts it unprotected.
/// Where the host has it, osvm's microVM (QEMU's `microvm` machine booting the kernel
/// directly, no firmware) still cannot give it: SEV-SNP and TDX guests need the `q35` machine
/// with firmware built for them (OVMF, TDVF), which osvm does not drive yet.
pub fn confidential_refusal(
    choice: osvm_core::ConfidentialChoice,
    probe: &ConfidentialProbe,
) -> String {
    let name = choice.as_str();
    match probe.of(choice) {
        Err(why) => format!(
            "confidential = \"{name}\" was asked for and this host cannot give it: {why}; \
             osvm does not run the guest unprotected"
        ),
        Ok(found) => format!(
            "confidential = \"{name}\" was asked for; the host has it ({found}), but osvm's \
             microVM (QEMU's microvm machine, direct kernel boot, no firmware) cannot run \
             confidential guests yet: they need the q35 machine with firmware built for {name}; \
             osvm does not run the guest unprotected"
        ),
    }
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

    #[test]
    fn confidential_computing_is_judged_by_the_first_thing_missing() {
        let flags = |f: &[&str]| f.iter().map(|s| (*s).to_owned()).collect();
        // This machine's kind: a VM with PVM, no such CPU flags.
        let none = ConfidentialProbe::judge(&ConfidentialFacts {
            flags: flags(&["hypervisor", "sse2"]),
            kvm_unusable: Some("KVM is PVM".into()),
            ..Default::default()
        });
        let why = none.sev_snp.clone().unwrap_err();
        assert!(
            why.contains("no sev_snp flag") && why.contains("virtual machine"),
            "{why}"
        );
        assert!(
            none.tdx
                .clone()
                .unwrap_err()
                .contains("no tdx_host_platform flag")
        );
        assert!(none.sgx.clone().unwrap_err().contains("no sgx flag"));
        // The CPU has it, KVM is not usable.
        let no_kvm = ConfidentialProbe::judge(&ConfidentialFacts {
            flags: flags(&["sev_snp"]),
            kvm_unusable: Some("/dev/kvm missing".into()),
            ..Default::default()
        });
        assert!(
            no_kvm
                .sev_snp
                .unwrap_err()
                .contains("hardware virtualization")
        );
        // kvm_amd without SNP, then without /dev/sev, then everything.
        let mut facts = ConfidentialFacts {
            flags: flags(&["sev_snp", "sgx"]),
            kvm_amd_sev_snp: Some("N".into()),
            ..Default::default()
        };
        let why = ConfidentialProbe::judge(&facts).sev_snp.unwrap_err();
        assert!(why.contains("sev_snp: N"), "{why}");
        facts.kvm_amd_sev_snp = Some("Y".into());
        let why = ConfidentialProbe::judge(&facts).sev_snp.unwrap_err();
        assert!(why.contains("/dev/sev"), "{why}");
        facts.dev_sev = true;
        facts.dev_sgx_enclave = true;
        let all = ConfidentialProbe::judge(&facts);
        assert!(all.sev_snp.is_ok() && all.sgx.is_ok());
        // Present or not, a start is refused with the reason, never run unprotected.
        let refusal = confidential_refusal(osvm_core::ConfidentialChoice::SevSnp, &all);
        assert!(
            refusal.contains("q35") && refusal.contains("unprotected"),
            "{refusal}"
        );
        let refusal = confidential_refusal(osvm_core::ConfidentialChoice::Tdx, &none);
        assert!(refusal.contains("no tdx_host_platform flag"), "{refusal}");
    }

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
