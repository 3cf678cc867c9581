//! The launch spec of an emulator that runs a component's guest inside a process sandbox.
//!
//! The emulator gets what it needs and nothing else: a read-only root, an ephemeral `/data`,
//! a cgroup sized for the guest's memory plus the emulator's own ([`EmulatorSpec::memory`]),
//! the component's CPU and open-file limits, its program bound in when it lives outside
//! `/usr`, the files the caller binds ([`ro`], [`rw`]), and `/dev/kvm` only under KVM. The
//! sandbox keeps every layer (namespaces, seccomp, Landlock, no capabilities): a guest escape
//! lands in a confined, unprivileged process.

use std::path::Path;

use osvm_core::{BindMount, DataKind, LaunchSpec};

use crate::host::Accel;
use crate::real_path;

/// An emulator (or a helper such as a vsock backend) for `component`'s guest.
pub struct EmulatorSpec<'a> {
    /// The component whose guest it runs (its name, stack and limits).
    pub component: &'a LaunchSpec,
    /// The emulator's program.
    pub program: &'a Path,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its memory limit: the guest's memory plus what the emulator itself needs.
    pub memory: u64,
    /// The accelerator the guest runs under (`None` for a helper that runs no guest).
    pub accel: Option<Accel>,
}

impl EmulatorSpec<'_> {
    /// The launch spec, with `binds` besides the program and `/dev/kvm`.
    pub fn build(self, binds: Vec<BindMount>) -> LaunchSpec {
        let c = self.component;
        let mut spec = LaunchSpec::new(
            c.name.clone(),
            self.program.display().to_string(),
            self.args,
        );
        spec.stack = c.stack.clone();
        spec.data = DataKind::Ephemeral;
        spec.readonly_root = true;
        spec.resources.memory_bytes = Some(self.memory);
        if self.accel.is_some() {
            spec.resources.cpus = c.resources.cpus;
            spec.resources.open_files = c.resources.open_files;
        }
        spec.binds = binds;
        if !self.program.starts_with("/usr") {
            spec.binds.push(ro(self.program));
        }
        if self.accel == Some(Accel::Kvm) {
            spec.binds.push(BindMount {
                source: "/dev/kvm".into(),
                target: "/dev/kvm".into(),
                writable: true,
            });
        }
        spec
    }
}

/// `path` bound read-only at the same place.
pub fn ro(path: &Path) -> BindMount {
    BindMount {
        source: real_path(path),
        target: path.to_path_buf(),
        writable: false,
    }
}

/// `path` bound writable at the same place (id-mapped: what root owns here, the sandbox's root
/// owns there).
pub fn rw(path: &Path) -> BindMount {
    BindMount {
        source: real_path(path),
        target: path.to_path_buf(),
        writable: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emulator_gets_the_components_limits_its_files_and_kvm_only_under_kvm() {
        let mut c = LaunchSpec::new("web", "/bin/app", vec![]);
        c.stack = Some("st".into());
        c.resources.cpus = Some(1.5);
        c.resources.open_files = Some(99);
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        let spec = |accel| {
            EmulatorSpec {
                component: &c,
                program: qemu,
                args: vec!["-m".into(), "64".into()],
                memory: 320 << 20,
                accel,
            }
            .build(vec![ro(Path::new("/nonexistent/kernel"))])
        };
        let tcg = spec(Some(Accel::Tcg));
        assert_eq!(tcg.name, "web");
        assert_eq!(tcg.stack.as_deref(), Some("st"));
        assert!(tcg.readonly_root);
        assert_eq!(tcg.data, DataKind::Ephemeral);
        assert_eq!(tcg.resources.memory_bytes, Some(320 << 20));
        assert_eq!(tcg.resources.cpus, Some(1.5));
        assert_eq!(tcg.resources.open_files, Some(99));
        assert_eq!(tcg.binds.len(), 1, "no /dev/kvm under TCG: {:?}", tcg.binds);
        let kvm = spec(Some(Accel::Kvm));
        assert!(
            kvm.binds
                .iter()
                .any(|b| b.target == Path::new("/dev/kvm") && b.writable)
        );
        let helper = EmulatorSpec {
            component: &c,
            program: Path::new("/opt/vsock/backend"),
            args: vec![],
            memory: 128 << 20,
            accel: None,
        }
        .build(vec![]);
        assert_eq!(
            helper.resources.cpus, None,
            "a helper keeps the default limits"
        );
        assert_eq!(
            helper.binds.len(),
            1,
            "its program, outside /usr: {:?}",
            helper.binds
        );
    }
}
