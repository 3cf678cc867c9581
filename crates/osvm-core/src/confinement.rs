//! What confines a running instance, as applied rather than as asked for.
//!
//! Every [`Instance`](crate::Instance) reports a [`Confinement`]: a process in osvm's sandbox
//! reports its [`SandboxConfinement`]; a guest (microVM or unikernel) reports a
//! [`GuestConfinement`] that holds the sandbox of the emulator running it. The report is typed
//! so that the daemon reads fields (a guest's warning, the emulator's seccomp) instead of
//! parsing key names back out of text; [`Confinement::facts`] renders it as the labelled lines
//! `osvm run` and `osvm status` show, and [`Confinement::summary`] as the one line of a
//! `confined` event.

use crate::RuntimeKind;

/// What confines an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confinement {
    /// A process in osvm's sandbox.
    Sandbox(SandboxConfinement),
    /// A guest whose emulator runs in osvm's sandbox.
    Guest(GuestConfinement),
}

/// The confinement of a sandboxed process. Namespaces (user, pid, mount, network, ipc, uts,
/// cgroup), an empty capability bounding set and `no_new_privs` are always applied: a sandbox
/// that could not apply them does not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfinement {
    /// The user namespace's uid map (`inside outside count`).
    pub id_map: String,
    /// The cgroup the process runs in.
    pub cgroup: String,
    /// How many syscalls the seccomp allowlist admits.
    pub seccomp_allowed: usize,
    /// How much of the requested Landlock ruleset the kernel enforces.
    pub landlock: String,
    /// Landlock restricts TCP bind to the declared listen ports.
    pub tcp_bind_restricted: bool,
    /// What the root file system is.
    pub root: String,
}

/// The confinement of a guest: the guest's own shape, then its emulator's sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfinement {
    /// `MicroVm` or `Unikernel`.
    pub kind: RuntimeKind,
    /// What runs the guest (`QEMU microvm`, `Hermit under uhyve`).
    pub driver: String,
    /// The accelerator (`kvm`, `tcg`).
    pub accelerator: String,
    /// Why this launcher was chosen, when there was a choice.
    pub launcher_reason: Option<String>,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// The guest kernel's release, for a guest that has a separate kernel.
    pub kernel: Option<String>,
    /// The image: content address, and for a unikernel the application's name.
    pub image: String,
    /// Bytes in the image.
    pub image_size: u64,
    /// The guest's vsock context id, if it has one.
    pub vsock_cid: Option<u32>,
    /// What the operator should know (a guest under TCG is much slower than under KVM).
    pub warning: Option<String>,
    /// The sandbox the emulator runs in.
    pub emulator: SandboxConfinement,
}

impl SandboxConfinement {
    fn facts(&self) -> Vec<(String, String)> {
        let mut facts = vec![
            (
                "namespaces".to_owned(),
                "user, pid, mount, network, ipc, uts, cgroup".to_owned(),
            ),
            ("uid map".to_owned(), self.id_map.clone()),
            ("cgroup".to_owned(), self.cgroup.clone()),
            (
                "capabilities".to_owned(),
                "none (bounding set empty)".to_owned(),
            ),
            ("no_new_privs".to_owned(), "yes".to_owned()),
            (
                "seccomp".to_owned(),
                format!(
                    "allowlist of {} syscalls, others EPERM",
                    self.seccomp_allowed
                ),
            ),
            ("landlock".to_owned(), self.landlock.clone()),
        ];
        if self.tcp_bind_restricted {
            facts.push((
                "tcp bind".to_owned(),
                "only the declared listen ports (Landlock)".to_owned(),
            ));
        }
        facts.push(("root".to_owned(), self.root.clone()));
        facts
    }

    fn summary(&self) -> String {
        let mut parts = vec![
            format!("uid map {}", self.id_map),
            "capabilities none (bounding set empty)".to_owned(),
            format!(
                "seccomp allowlist of {} syscalls, others EPERM",
                self.seccomp_allowed
            ),
            format!("landlock {}", self.landlock),
        ];
        if self.tcp_bind_restricted {
            parts.push("tcp bind only on listen ports".to_owned());
        }
        parts.push(self.root.clone());
        parts.join("; ")
    }
}

impl GuestConfinement {
    fn facts(&self) -> Vec<(String, String)> {
        let mut facts = vec![
            (
                "runtime".to_owned(),
                format!("{} ({})", self.kind, self.driver),
            ),
            ("accelerator".to_owned(), self.accelerator.clone()),
        ];
        if let Some(reason) = &self.launcher_reason {
            facts.push(("launcher".to_owned(), reason.clone()));
        }
        facts.push(("vcpus".to_owned(), self.vcpus.to_string()));
        facts.push((
            "guest memory".to_owned(),
            format!("{} MiB", self.memory_mib),
        ));
        if let Some(kernel) = &self.kernel {
            facts.push(("guest kernel".to_owned(), kernel.clone()));
        }
        facts.push((
            "image".to_owned(),
            format!("{} ({} bytes)", self.image, self.image_size),
        ));
        if let Some(cid) = self.vsock_cid {
            facts.push(("vsock cid".to_owned(), cid.to_string()));
        }
        if let Some(w) = &self.warning {
            facts.push(("warning".to_owned(), w.clone()));
        }
        facts.extend(
            self.emulator
                .facts()
                .into_iter()
                .map(|(k, v)| (format!("vmm {k}"), v)),
        );
        facts
    }

    fn summary(&self) -> String {
        let mut guest = vec![
            format!("{} accelerator", self.accelerator),
            format!("{} vCPU", self.vcpus),
            format!("{} MiB guest memory", self.memory_mib),
        ];
        if let Some(kernel) = &self.kernel {
            guest.push(format!("kernel {kernel}"));
        }
        guest.push(format!("image {}", self.image));
        if let Some(cid) = self.vsock_cid {
            guest.push(format!("vsock cid {cid}"));
        }
        format!(
            "{} ({}): {}; emulator confined: {}",
            self.kind,
            self.driver,
            guest.join(", "),
            self.emulator.summary()
        )
    }
}

impl Confinement {
    /// Labelled lines (`seccomp`: `allowlist of 97 syscalls, others EPERM`), in the order
    /// they are shown; a guest's emulator's lines are prefixed `vmm `.
    pub fn facts(&self) -> Vec<(String, String)> {
        match self {
            Confinement::Sandbox(s) => s.facts(),
            Confinement::Guest(g) => g.facts(),
        }
    }

    /// The facts that matter at a glance, on one line.
    pub fn summary(&self) -> String {
        match self {
            Confinement::Sandbox(s) => s.summary(),
            Confinement::Guest(g) => g.summary(),
        }
    }

    /// What the operator should know about how the instance runs, if anything.
    pub fn warning(&self) -> Option<&str> {
        match self {
            Confinement::Sandbox(_) => None,
            Confinement::Guest(g) => g.warning.as_deref(),
        }
    }

    /// The sandbox the workload, or for a guest its emulator, runs in.
    pub fn sandbox(&self) -> &SandboxConfinement {
        match self {
            Confinement::Sandbox(s) => s,
            Confinement::Guest(g) => &g.emulator,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> SandboxConfinement {
        SandboxConfinement {
            id_map: "0 1000000 65536".into(),
            cgroup: "/osvm/web".into(),
            seccomp_allowed: 300,
            landlock: "fully enforced".into(),
            tcp_bind_restricted: true,
            root: "host /usr read-only; root tmpfs".into(),
        }
    }

    fn guest(kind: RuntimeKind) -> GuestConfinement {
        GuestConfinement {
            kind,
            driver: "QEMU microvm".into(),
            accelerator: "tcg".into(),
            launcher_reason: None,
            vcpus: 2,
            memory_mib: 256,
            kernel: Some("6.1.0".into()),
            image: "0123456789ab".into(),
            image_size: 4096,
            vsock_cid: Some(7),
            warning: Some("no KVM: TCG is slow".into()),
            emulator: sandbox(),
        }
    }

    fn get<'a>(facts: &'a [(String, String)], key: &str) -> Option<&'a str> {
        facts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_sandbox_reports_every_layer_and_the_bind_restriction_only_when_applied() {
        let mut s = sandbox();
        let facts = Confinement::Sandbox(s.clone()).facts();
        assert_eq!(
            get(&facts, "seccomp"),
            Some("allowlist of 300 syscalls, others EPERM")
        );
        assert_eq!(get(&facts, "uid map"), Some("0 1000000 65536"));
        assert_eq!(
            get(&facts, "capabilities"),
            Some("none (bounding set empty)")
        );
        assert!(get(&facts, "tcp bind").is_some());
        s.tcp_bind_restricted = false;
        let c = Confinement::Sandbox(s);
        assert!(get(&c.facts(), "tcp bind").is_none());
        assert!(!c.summary().contains("tcp bind"));
        assert_eq!(c.warning(), None);
    }

    #[test]
    fn a_guest_reports_its_shape_then_its_emulators_sandbox_prefixed() {
        let c = Confinement::Guest(guest(RuntimeKind::MicroVm));
        let facts = c.facts();
        assert_eq!(get(&facts, "runtime"), Some("microvm (QEMU microvm)"));
        assert_eq!(get(&facts, "vsock cid"), Some("7"));
        assert_eq!(get(&facts, "guest kernel"), Some("6.1.0"));
        assert_eq!(
            get(&facts, "vmm seccomp"),
            Some("allowlist of 300 syscalls, others EPERM")
        );
        assert!(
            get(&facts, "seccomp").is_none(),
            "only the emulator has one"
        );
        assert_eq!(c.warning(), Some("no KVM: TCG is slow"));
        assert_eq!(c.sandbox().cgroup, "/osvm/web");
        let summary = c.summary();
        assert!(
            summary.starts_with("microvm (QEMU microvm): tcg accelerator"),
            "{summary}"
        );
        assert!(
            summary.contains("emulator confined: uid map 0 1000000 65536"),
            "{summary}"
        );
    }

    #[test]
    fn a_unikernel_without_kernel_or_vsock_leaves_those_out_and_says_why_its_launcher() {
        let mut g = guest(RuntimeKind::Unikernel);
        g.driver = "Hermit under qemu".into();
        g.kernel = None;
        g.vsock_cid = None;
        g.launcher_reason = Some("no hardware KVM: uhyve needs it".into());
        let c = Confinement::Guest(g);
        let facts = c.facts();
        assert_eq!(
            get(&facts, "runtime"),
            Some("unikernel (Hermit under qemu)")
        );
        assert_eq!(
            get(&facts, "launcher"),
            Some("no hardware KVM: uhyve needs it")
        );
        assert!(get(&facts, "guest kernel").is_none());
        assert!(get(&facts, "vsock cid").is_none());
        assert!(!c.summary().contains("vsock"));
    }
}
