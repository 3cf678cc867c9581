//! Virtualization probes: KVM and its flavour, what QEMU microVMs need besides KVM (QEMU, its
//! microvm machine, the vsock backend, a guest kernel, the TSC frequency), and the Hermit launcher.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::command::{COMMAND_TIMEOUT, run_command};
use super::parse::{parse_cpu_flags, parse_cpu_mhz, parse_tsc_log_mhz};
use super::{AREA_HERMIT, AREA_KVM, AREA_MICROVM, Check, ProbeError, read_value};

// ---------------------------------------------------------------------------------------------
// KVM
// ---------------------------------------------------------------------------------------------

/// Which flavour of KVM serves `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KvmKind {
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
    fn is_hardware(self) -> bool {
        matches!(self, Self::Vmx | Self::Svm)
    }

    /// Short name for the report.
    fn label(self) -> &'static str {
        match self {
            Self::Vmx => "VMX",
            Self::Svm => "SVM",
            Self::Pvm => "PVM",
            Self::None => "none",
        }
    }
}

/// What was found out about KVM.
#[derive(Debug)]
pub(super) struct KvmProbe {
    /// The flavour of KVM.
    pub(super) kind: KvmKind,
    /// Why `kind` is what it is, in words.
    kind_detail: String,
    /// Result of opening `/dev/kvm` read-write.
    device: Result<(), String>,
}

impl KvmProbe {
    /// Looks at cpuinfo flags, loaded modules and `/dev/kvm`.
    pub(super) fn probe() -> Self {
        let flags = fs::read_to_string("/proc/cpuinfo")
            .map(|text| parse_cpu_flags(&text))
            .unwrap_or_default();
        let module = |name: &str| Path::new("/sys/module").join(name).exists();
        let (vmx, svm) = (flags.contains("vmx"), flags.contains("svm"));
        let (kind, kind_detail) = if module("kvm_pvm") {
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
            kind_detail,
            device,
        }
    }

    /// Rows for `/dev/kvm` and the KVM kind.
    pub(super) fn checks(&self) -> Vec<Check> {
        let device = match &self.device {
            Ok(()) => Check::yes(AREA_KVM, "/dev/kvm", "present and opens read-write"),
            Err(why) => Check::no(AREA_KVM, "/dev/kvm", why.clone()),
        };
        let kind = Check {
            area: AREA_KVM,
            name: "kind".to_owned(),
            available: self.kind.is_hardware() && self.device.is_ok(),
            detail: self.kind_detail.clone(),
        };
        vec![device, kind]
    }
}

// ---------------------------------------------------------------------------------------------
// microVMs and Hermit
// ---------------------------------------------------------------------------------------------

/// Rows for QEMU, its microvm machine, the vsock backend, a guest kernel and the TSC frequency.
pub(super) fn microvm_checks(is_root: bool) -> Vec<Check> {
    const QEMU: &str = "qemu-system-x86_64";
    let qemu = match run_command(QEMU, &["--version"], COMMAND_TIMEOUT) {
        Ok(out) if out.status.success() => Ok(out.first_line().to_owned()),
        Ok(out) => Err(format!(
            "`{QEMU} --version` failed ({}): {}",
            out.status,
            out.first_line()
        )),
        Err(e @ ProbeError::NotFound { .. }) => {
            Err(format!("{e}; install Debian package qemu-system-x86"))
        }
        Err(e) => Err(e.to_string()),
    };
    let microvm = match &qemu {
        Err(_) => Check::no(
            AREA_MICROVM,
            "microvm machine",
            format!("not checked: {QEMU} is unavailable"),
        ),
        Ok(_) => match run_command(QEMU, &["-machine", "help"], COMMAND_TIMEOUT) {
            Ok(out) if out.status.success() => {
                let listed = out
                    .stdout
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some("microvm"));
                if listed {
                    Check::yes(AREA_MICROVM, "microvm machine", "listed by `-machine help`")
                } else {
                    Check::no(
                        AREA_MICROVM,
                        "microvm machine",
                        "not listed by `-machine help` (QEMU built without it)",
                    )
                }
            }
            Ok(out) => Check::no(
                AREA_MICROVM,
                "microvm machine",
                format!(
                    "`-machine help` failed ({}): {}",
                    out.status,
                    out.first_line()
                ),
            ),
            Err(e) => Check::no(AREA_MICROVM, "microvm machine", e.to_string()),
        },
    };
    let qemu = match qemu {
        Ok(version) => Check::yes(AREA_MICROVM, QEMU, version),
        Err(why) => Check::no(AREA_MICROVM, QEMU, why),
    };
    vec![
        qemu,
        microvm,
        vsock_backend_check(),
        guest_kernel_check(is_root),
        tsc_check(),
    ]
}

/// The user-space vsock backend QEMU's `vhost-user-vsock-device` talks to.
fn vsock_backend_check() -> Check {
    const NAME: &str = "vhost-device-vsock";
    match run_command(NAME, &["--version"], COMMAND_TIMEOUT) {
        Ok(out) if out.status.success() => Check::yes(AREA_MICROVM, NAME, out.first_line()),
        Ok(out) => Check::no(
            AREA_MICROVM,
            NAME,
            format!(
                "`{NAME} --version` failed ({}): {}",
                out.status,
                out.first_line()
            ),
        ),
        Err(e @ ProbeError::NotFound { .. }) => Check::no(
            AREA_MICROVM,
            NAME,
            format!("{e}; `cargo install vhost-device-vsock --version 0.3.0`"),
        ),
        Err(e) => Check::no(AREA_MICROVM, NAME, e.to_string()),
    }
}

/// Where osvm keeps guest kernels: system-wide as root, per user otherwise.
fn kernels_dir(is_root: bool) -> Option<PathBuf> {
    if is_root {
        return Some(PathBuf::from("/var/lib/osvm/kernels"));
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|home| home.join(".local/state"))
        })?;
    Some(state.join("osvm/kernels"))
}

/// Whether a file name looks like a bootable Linux kernel image.
fn is_kernel_image_name(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    ["vmlinuz", "vmlinux", "bzImage"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Kernel images directly in `dir` or one level below (one folder per kernel version).
fn find_kernel_images(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            if let Ok(inner) = fs::read_dir(&path) {
                found.extend(
                    inner
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.is_file() && p.file_name().is_some_and(is_kernel_image_name)),
                );
            }
        } else if path.is_file() && path.file_name().is_some_and(is_kernel_image_name) {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Whether a guest kernel for microVMs is in osvm's state directory.
fn guest_kernel_check(is_root: bool) -> Check {
    const NAME: &str = "guest kernel";
    let Some(dir) = kernels_dir(is_root) else {
        return Check::no(
            AREA_MICROVM,
            NAME,
            "no state directory: neither XDG_STATE_HOME nor HOME is set",
        );
    };
    let images = find_kernel_images(&dir);
    if images.is_empty() {
        Check::no(
            AREA_MICROVM,
            NAME,
            format!(
                "none yet in {}: `osvm kernel fetch` (a later release) downloads Debian's \
                 cloud kernel",
                dir.display()
            ),
        )
    } else {
        let names: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
        Check::yes(AREA_MICROVM, NAME, names.join(", "))
    }
}

/// The TSC frequency the kernel logged, preferring its refined calibration; `None` when the log is
/// not readable (not root with `dmesg_restrict`) or has rotated past the boot messages.
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

/// The host TSC frequency microVM guests must be told (`tsc_early_khz`); information only.
fn tsc_check() -> Check {
    const NAME: &str = "tsc frequency";
    const SYSFS: &str = "/sys/devices/system/cpu/cpu0/tsc_freq_khz";
    if let Some(khz) = read_value(SYSFS).and_then(|v| v.parse::<u64>().ok()) {
        return Check::yes(AREA_MICROVM, NAME, format!("{khz} kHz (from {SYSFS})"));
    }
    let to_khz = |mhz: f64| (mhz * 1000.0).round();
    if let Some(mhz) = tsc_from_kernel_log() {
        return Check::yes(
            AREA_MICROVM,
            NAME,
            format!(
                "{} kHz (from the kernel log's TSC calibration)",
                to_khz(mhz)
            ),
        );
    }
    let cpuinfo_mhz = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| parse_cpu_mhz(&text));
    match cpuinfo_mhz {
        Some(mhz) => Check::yes(
            AREA_MICROVM,
            NAME,
            format!(
                "about {} kHz (from `cpu MHz` in /proc/cpuinfo; may differ from the TSC)",
                to_khz(mhz)
            ),
        ),
        None => Check::no(
            AREA_MICROVM,
            NAME,
            format!("unknown: no {SYSFS}, no TSC line in the kernel log, no `cpu MHz`"),
        ),
    }
}

/// The Hermit launcher, usable only with hardware KVM.
pub(super) fn uhyve_check(kvm: KvmKind) -> Check {
    const NAME: &str = "uhyve";
    match run_command(NAME, &["--version"], COMMAND_TIMEOUT) {
        Ok(out) if out.status.success() => {
            let version = out.first_line();
            if kvm.is_hardware() {
                Check::yes(
                    AREA_HERMIT,
                    NAME,
                    format!("{version}; hardware KVM present"),
                )
            } else {
                Check::no(
                    AREA_HERMIT,
                    NAME,
                    format!(
                        "{version} found, but it needs hardware KVM (VMX/SVM) and this host has \
                         {}: Hermit images run under QEMU TCG",
                        kvm.label()
                    ),
                )
            }
        }
        Ok(out) => Check::no(
            AREA_HERMIT,
            NAME,
            format!(
                "`uhyve --version` failed ({}): {}",
                out.status,
                out.first_line()
            ),
        ),
        Err(e @ ProbeError::NotFound { .. }) => Check::no(
            AREA_HERMIT,
            NAME,
            format!(
                "{e} (`cargo install uhyve --locked`); it needs hardware KVM (VMX/SVM), this \
                 host has {}",
                kvm.label()
            ),
        ),
        Err(e) => Check::no(AREA_HERMIT, NAME, e.to_string()),
    }
}
