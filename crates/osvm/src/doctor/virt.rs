//! Virtualization probes: KVM and its flavour, what QEMU microVMs need besides KVM (QEMU, its
//! microvm machine, the vsock backend, a guest kernel, the TSC frequency), and the Hermit launcher.

use std::path::Path;

use osvm_guest::host::{
    Accel, AccelChoice, ConfidentialProbe, KvmKind, KvmProbe, resolve_accel, tsc_khz,
};
use osvm_microvm::kernel::Kernel;

use super::command::{COMMAND_TIMEOUT, run_command};
use super::{AREA_CONFIDENTIAL, AREA_HERMIT, AREA_KVM, AREA_MICROVM, Check, ProbeError};

// ---------------------------------------------------------------------------------------------
// KVM
// ---------------------------------------------------------------------------------------------

/// Rows for `/dev/kvm` and the KVM kind.
pub(super) fn kvm_checks(kvm: &KvmProbe) -> Vec<Check> {
    let device = match &kvm.device {
        Ok(()) => Check::yes(AREA_KVM, "/dev/kvm", "present and opens read-write"),
        Err(why) => Check::no(AREA_KVM, "/dev/kvm", why.clone()),
    };
    let kind = Check {
        area: AREA_KVM,
        name: "kind".to_owned(),
        available: kvm.kind.is_hardware() && kvm.device.is_ok(),
        detail: kvm.detail.clone(),
    };
    vec![device, kind]
}

/// Rows for confidential computing: SEV-SNP and TDX (which microVMs may ask for) and SGX.
pub(super) fn confidential_checks(kvm: &KvmProbe) -> Vec<Check> {
    let probe = ConfidentialProbe::probe(kvm);
    [
        ("SEV-SNP", probe.sev_snp),
        ("TDX", probe.tdx),
        ("SGX", probe.sgx),
    ]
    .into_iter()
    .map(|(name, found)| match found {
        Ok(what) => Check::yes(AREA_CONFIDENTIAL, name, what),
        Err(why) => Check::no(AREA_CONFIDENTIAL, name, why),
    })
    .collect()
}

// ---------------------------------------------------------------------------------------------
// microVMs and Hermit
// ---------------------------------------------------------------------------------------------

/// Rows for QEMU, its microvm machine, the vsock backend, a guest kernel and the TSC frequency.
pub(super) fn microvm_checks(kvm: &KvmProbe, state_dir: &Path) -> Vec<Check> {
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
        accel_check(kvm),
        vsock_backend_check(),
        virtiofs_check(),
        guest_kernel_check(state_dir),
        agent_check(),
        tsc_check(),
    ]
}

/// The accelerator microVMs get with `accel = "auto"`, and the TCG warning where it applies.
fn accel_check(kvm: &KvmProbe) -> Check {
    const NAME: &str = "accelerator";
    match resolve_accel(AccelChoice::Auto, kvm) {
        Ok((Accel::Kvm, _)) => Check::yes(AREA_MICROVM, NAME, "KVM (hardware virtualization)"),
        Ok((_, warning)) => Check::no(
            AREA_MICROVM,
            NAME,
            warning.unwrap_or_else(|| "TCG".to_owned()),
        ),
        Err(e) => Check::no(AREA_MICROVM, NAME, e),
    }
}

/// The static guest agent every image needs as its init.
fn agent_check() -> Check {
    match osvm_microvm::find_agent() {
        Ok(path) => Check::yes(AREA_MICROVM, "guest agent", path.display().to_string()),
        Err(e) => Check::no(AREA_MICROVM, "guest agent", e),
    }
}

/// The user-space vsock backend QEMU's `vhost-user-vsock-device` talks to.
fn vsock_backend_check() -> Check {
    tool_check(
        "vhost-device-vsock",
        "`cargo install --locked vhost-device-vsock@0.3.0 --root /usr/local`",
    )
}

/// The virtio-fs backend that serves a microVM's `mounts`.
fn virtiofs_check() -> Check {
    let mut check = tool_check(
        "virtiofsd",
        "`cargo install --locked virtiofsd@1.14.0 --root /usr/local` (with libseccomp-dev and \
         libcap-ng-dev); needed by microVM mounts and a unikernel's identity",
    );
    check.name = "virtiofsd (mounts)".into();
    check
}

/// The same virtiofsd, for a unikernel's identity (`/run/osvm/identity` over virtio-fs).
fn hermit_identity_check() -> Check {
    let found = virtiofs_check();
    Check {
        area: AREA_HERMIT,
        name: "identity (virtiofsd)".into(),
        available: found.available,
        detail: if found.available {
            format!(
                "{}; the component's identity reaches the app at /run/osvm/identity",
                found.detail
            )
        } else {
            format!(
                "{}; without it a unikernel runs without its identity files (its status says so)",
                found.detail
            )
        },
    }
}

/// A helper program, found by running it with `--version`; `install` says how to get it.
fn tool_check(name: &'static str, install: &str) -> Check {
    match run_command(name, &["--version"], COMMAND_TIMEOUT) {
        Ok(out) if out.status.success() => Check::yes(AREA_MICROVM, name, out.first_line()),
        Ok(out) => Check::no(
            AREA_MICROVM,
            name,
            format!(
                "`{name} --version` failed ({}): {}",
                out.status,
                out.first_line()
            ),
        ),
        Err(e @ ProbeError::NotFound { .. }) => {
            Check::no(AREA_MICROVM, name, format!("{e}; {install}"))
        }
        Err(e) => Check::no(AREA_MICROVM, name, e.to_string()),
    }
}

/// Whether a guest kernel for microVMs is stored (and intact).
fn guest_kernel_check(state_dir: &Path) -> Check {
    match Kernel::installed(state_dir) {
        Ok(k) => Check::yes(
            AREA_MICROVM,
            "guest kernel",
            format!("{} ({} modules)", k.image.display(), k.modules.len()),
        ),
        Err(e) => Check::no(AREA_MICROVM, "guest kernel", e.to_string()),
    }
}

/// The host TSC frequency microVM guests must be told (`tsc_early_khz`).
fn tsc_check() -> Check {
    match tsc_khz() {
        Ok((khz, source)) => Check::yes(
            AREA_MICROVM,
            "tsc frequency",
            format!("{khz} kHz (from {source})"),
        ),
        Err(e) => Check::no(AREA_MICROVM, "tsc frequency", e),
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

/// Rows for the launcher a unikernel would get here (and why), and the tools that build Hermit
/// images.
pub(super) fn hermit_checks(state_dir: &Path) -> Vec<Check> {
    let host = osvm_unikernel::launcher::Host::probe();
    let launcher = match host.choose(osvm_core::LauncherChoice::Auto, AccelChoice::Auto) {
        Ok(c) => Check::yes(
            AREA_HERMIT,
            "launcher",
            match &c.warning {
                Some(_) => format!(
                    "{}; guests run under TCG, several times slower than KVM",
                    c.reason
                ),
                None => c.reason,
            },
        ),
        Err(e) => Check::no(AREA_HERMIT, "launcher", e),
    };
    let tools = match osvm_unikernel::toolchain::Toolchain::probe() {
        Ok(tc) => {
            let kernel = osvm_unikernel::kernel::key(&tc);
            let built = state_dir
                .join("unikernel/kernels")
                .join(&kernel[..16])
                .join("libhermit.a")
                .is_file();
            Check::yes(
                AREA_HERMIT,
                "build tools",
                format!(
                    "{}, rust-src, x86_64-unknown-none, binutils; hermit-kernel {} {}",
                    tc.rustc_version,
                    osvm_unikernel::kernel::VERSION,
                    if built {
                        "built"
                    } else {
                        "not built yet (the first `osvm unikernel build` builds it, ~2 min)"
                    }
                ),
            )
        }
        Err(e) => Check::no(AREA_HERMIT, "build tools", e.0.join("; ")),
    };
    vec![launcher, tools, hermit_identity_check()]
}
