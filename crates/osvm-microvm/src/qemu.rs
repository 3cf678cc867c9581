//! The QEMU command line of a microVM, and QMP `quit`.
//!
//! The machine is QEMU's `microvm`: no PCI, no firmware tables beyond ACPI (kept on: the Debian
//! kernel finds the virtio-mmio devices only through ACPI), the PIT and RTC (the guest's early
//! timer needs them), guest memory in a shared memfd (the vhost-user vsock backend maps it).
//! Devices: a serial console written to a file, the agent's link (the vhost-user vsock device,
//! or a virtio-serial port on a unix socket), a virtio-blk disk
//! (the data volume), a vhost-user-fs device per shared directory (served by virtiofsd, which
//! maps the same shared guest memory), and a virtio-net device on the TAP descriptor passed as
//! fd 3. QEMU's own seccomp sandbox is on as well, and
//! `-no-reboot` turns the guest's reboot or power-off into QEMU's exit.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use osvm_guest::host::Accel;

/// Everything the command line is made from.
#[derive(Debug, Clone)]
pub struct QemuArgs {
    /// Accelerator.
    pub accel: Accel,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Host TSC frequency in kHz.
    pub tsc_khz: u64,
    /// Serial console log.
    pub console: PathBuf,
    /// How the agent reaches the host.
    pub link: LinkArgs,
    /// Guest RAM in this file instead of an anonymous memfd, mapped shared (a snapshot's
    /// template, whose RAM is the snapshot) or private (a restored copy: what the guest writes
    /// stays in this QEMU).
    pub ram_file: Option<(PathBuf, bool)>,
    /// Start stopped, waiting for `migrate-incoming` (a restore).
    pub incoming: bool,
    /// The QMP socket QEMU listens on.
    pub qmp: PathBuf,
    /// The guest MAC when a TAP is passed as fd 3.
    pub net_mac: Option<String>,
    /// The component's data volume (an ext4 image), the guest's `/dev/vda`.
    pub data: Option<PathBuf>,
    /// The vhost-user sockets of the virtiofsd serving each shared directory, in order; the
    /// guest sees them as virtio-fs tags `m0`, `m1`, ...
    pub shared: Vec<PathBuf>,
}

/// The agent's link on the command line.
#[derive(Debug, Clone)]
pub enum LinkArgs {
    /// The vhost-user vsock device, served by the backend at this socket.
    Vsock {
        /// The backend's vhost-user socket.
        vhost_socket: PathBuf,
    },
    /// A virtio-serial port named `osvm.agent`, which QEMU serves on this unix socket; the
    /// kernel command line tells the agent (`osvm.link=serial`).
    Serial {
        /// Where QEMU listens for the host's end of the port.
        socket: PathBuf,
    },
}

/// The virtio-fs tag of shared directory `i`.
pub fn share_tag(i: usize) -> String {
    format!("m{i}")
}

impl QemuArgs {
    /// The arguments after the program name.
    pub fn to_args(&self) -> Vec<String> {
        let mem = self.memory_mib;
        let mut a: Vec<String> = vec![
            "-M".into(),
            "microvm,pit=on,pic=on,rtc=on,memory-backend=mem".into(),
        ];
        match self.accel {
            Accel::Kvm => a.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
            // A bounded translation cache: the default (1 GiB) would count against the cgroup.
            Accel::Tcg => a.extend([
                "-accel".into(),
                "tcg,tb-size=64".into(),
                "-cpu".into(),
                "max".into(),
            ]),
        }
        a.extend([
            "-smp".into(),
            self.vcpus.to_string(),
            "-m".into(),
            format!("{mem}M"),
            "-object".into(),
            match &self.ram_file {
                None => format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
                Some((path, share)) => format!(
                    "memory-backend-file,id=mem,size={mem}M,mem-path={},share={}",
                    path.display(),
                    if *share { "on" } else { "off" }
                ),
            },
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", self.console.display()),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            format!(
                "console=ttyS0 reboot=t panic=-1 quiet tsc_early_khz={}{}",
                self.tsc_khz,
                match self.link {
                    LinkArgs::Vsock { .. } => "",
                    LinkArgs::Serial { .. } => " osvm.link=serial",
                }
            ),
        ]);
        match &self.link {
            LinkArgs::Vsock { vhost_socket } => a.extend([
                "-chardev".into(),
                format!("socket,id=vc0,path={}", vhost_socket.display()),
                "-device".into(),
                "vhost-user-vsock-device,chardev=vc0".into(),
            ]),
            LinkArgs::Serial { socket } => a.extend([
                "-device".into(),
                "virtio-serial-device".into(),
                "-chardev".into(),
                format!(
                    "socket,id=agent,path={},server=on,wait=off",
                    socket.display()
                ),
                "-device".into(),
                "virtserialport,chardev=agent,name=osvm.agent".into(),
            ]),
        }
        a.extend([
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp.display()),
            "-sandbox".into(),
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        ]);
        if let Some(image) = &self.data {
            // QEMU locks the image (OFD locks): a second VM of the component cannot open it
            // while this one runs, so the ext4 inside is never mounted twice.
            a.extend([
                "-drive".into(),
                format!(
                    "file={},format=raw,if=none,id=data,cache=none,aio=threads",
                    image.display()
                ),
                "-device".into(),
                "virtio-blk-device,drive=data".into(),
            ]);
        }
        for (i, socket) in self.shared.iter().enumerate() {
            a.extend([
                "-chardev".into(),
                format!("socket,id=fs{i},path={}", socket.display()),
                "-device".into(),
                format!("vhost-user-fs-device,chardev=fs{i},tag={}", share_tag(i)),
            ]);
        }
        if self.incoming {
            a.extend(["-incoming".into(), "defer".into()]);
        }
        if let Some(mac) = &self.net_mac {
            a.extend([
                "-netdev".into(),
                "tap,id=n0,fd=3".into(),
                "-device".into(),
                format!("virtio-net-device,netdev=n0,mac={mac}"),
            ]);
        }
        a
    }
}

/// Asks QEMU to quit through its QMP socket.
pub fn quit(qmp: &Path, timeout: Duration) -> std::io::Result<()> {
    let stream = UnixStream::connect(qmp)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?; // the greeting
    let mut w = &stream;
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    line.clear();
    reader.read_line(&mut line)?;
    w.write_all(b"{\"execute\":\"quit\"}\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_lines_carry_the_tsc_and_no_kvm() {
        let args = QemuArgs {
            accel: Accel::Tcg,
            vcpus: 2,
            memory_mib: 256,
            kernel: "/k".into(),
            initrd: "/i".into(),
            tsc_khz: 2_445_404,
            console: "/c".into(),
            link: LinkArgs::Vsock {
                vhost_socket: "/v".into(),
            },
            qmp: "/q".into(),
            net_mac: Some("02:6f:00:00:00:01".into()),
            ram_file: None,
            incoming: false,
            data: Some("/d.img".into()),
            shared: vec!["/r/fs0.sock".into(), "/r/fs1.sock".into()],
        }
        .to_args();
        let line = args.join(" ");
        assert!(line.contains("tsc_early_khz=2445404"), "{line}");
        assert!(line.contains("-accel tcg"), "{line}");
        assert!(!line.contains("kvm"), "{line}");
        assert!(line.contains("size=256M,share=on"), "{line}");
        assert!(line.contains("tap,id=n0,fd=3"), "{line}");
        assert!(line.contains("file=/d.img,format=raw"), "{line}");
        assert!(line.contains("virtio-blk-device,drive=data"), "{line}");
        assert!(line.contains("socket,id=fs1,path=/r/fs1.sock"), "{line}");
        assert!(
            line.contains("vhost-user-fs-device,chardev=fs1,tag=m1"),
            "{line}"
        );
        assert!(
            line.contains("vhost-user-vsock-device,chardev=vc0"),
            "{line}"
        );
        assert!(!line.contains("osvm.link=serial"), "{line}");
    }

    #[test]
    fn the_serial_link_replaces_vsock_and_tells_the_agent() {
        let args = QemuArgs {
            accel: Accel::Tcg,
            vcpus: 1,
            memory_mib: 128,
            kernel: "/k".into(),
            initrd: "/i".into(),
            tsc_khz: 1,
            console: "/c".into(),
            link: LinkArgs::Serial {
                socket: "/r/agent.sock".into(),
            },
            qmp: "/q".into(),
            net_mac: None,
            ram_file: Some(("/r/ram".into(), false)),
            incoming: true,
            data: None,
            shared: Vec::new(),
        }
        .to_args();
        let line = args.join(" ");
        assert!(!line.contains("vsock"), "{line}");
        assert!(
            line.contains("memory-backend-file,id=mem,size=128M,mem-path=/r/ram,share=off"),
            "{line}"
        );
        assert!(line.contains("-incoming defer"), "{line}");
        assert!(line.contains("tsc_early_khz=1 osvm.link=serial"), "{line}");
        assert!(
            line.contains("socket,id=agent,path=/r/agent.sock,server=on,wait=off"),
            "{line}"
        );
        assert!(
            line.contains("virtserialport,chardev=agent,name=osvm.agent"),
            "{line}"
        );
    }
}
