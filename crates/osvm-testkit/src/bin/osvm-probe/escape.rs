//! `osvm-probe escape`: every escape attempt in the suite, one JSON line each. An attempt's
//! result is `Ok(detail)` when it got through (an escape) and `Err(reason)` when the sandbox
//! stopped it; the probe exits 0 only if every attempt was stopped.
//!
//! The first group tries the kernel interfaces a sandbox must deny (mount, namespaces, ptrace,
//! raw sockets, bpf, keyrings, ...); the second ([`more_attempts`]) the holes an outside red
//! team found and their neighbours: inherited descriptors, native AIO, host paths visible in
//! `/proc` and mountinfo, setuid bits, the new mount API, `/proc/sys` writes, scheduler and
//! resource privileges, exotic socket families, the parent of `/`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::Duration;

use crate::{check, cstr, errno, json_str};

struct Attempt {
    name: &'static str,
    tried: String,
    /// Ok(detail) means the attempt SUCCEEDED (an escape); Err means it was blocked.
    result: Result<String, String>,
}

fn blocked_by(e: std::io::Error) -> Result<String, String> {
    Err(e.to_string())
}

fn syscall_attempt(name: &'static str, tried: &str, rc: i64) -> Attempt {
    let result = match check(rc) {
        Ok(v) => Ok(format!("returned {v}")),
        Err(e) => blocked_by(e),
    };
    Attempt {
        name,
        tried: tried.into(),
        result,
    }
}

fn open_write(path: &str) -> Result<String, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map(|_| format!("created {path}"))
        .map_err(|e| e.to_string())
}

/// What the test on the host prepared for the suite to attack.
pub struct EscapeArgs {
    /// A host process to ptrace and kill.
    pub host_pid: Option<i32>,
    /// A host file outside every bind, to read by path and through `/proc` tricks.
    pub secret: Option<String>,
    /// A TCP listener on the host's loopback.
    pub host_port: Option<u16>,
    /// A setuid-root copy of this probe, bound into the sandbox.
    pub setuid: Option<String>,
    /// Host paths (the state directory, the osvm binary's directory) that nothing inside may
    /// show: not `/proc/1/cmdline`, not mountinfo, not init's environment.
    pub host_paths: Vec<String>,
    /// An abstract unix socket listening in the host's network namespace.
    pub abstract_name: Option<String>,
}

/// Runs the suite; true when every attempt was blocked.
#[allow(clippy::vec_init_then_push)]
pub fn run(a: &EscapeArgs) -> bool {
    // First, before any attempt opens a descriptor of its own.
    let mut attempts = vec![inherited_fds()];
    let tmpfs = cstr("tmpfs");
    let tmp = cstr("/tmp");
    // SAFETY (all syscalls below): each call gets valid pointers to live CStrings or null
    // where the kernel accepts it; the probe wants to see them fail.
    // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
    attempts.push(syscall_attempt("mount", "mount tmpfs on /tmp", unsafe {
        libc::mount(
            tmpfs.as_ptr(),
            tmp.as_ptr(),
            tmpfs.as_ptr(),
            0,
            std::ptr::null(),
        ) as i64
    }));
    attempts.push(syscall_attempt(
        "unshare-user",
        "unshare(CLONE_NEWUSER)",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe { libc::unshare(libc::CLONE_NEWUSER) as i64 },
    ));
    attempts.push(syscall_attempt(
        "unshare-net",
        "unshare(CLONE_NEWNET|CLONE_NEWNS)",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) as i64 },
    ));
    attempts.push({
        let tried = "setns into /proc/self/ns/user (would re-enter a user namespace)".to_string();
        match std::fs::File::open("/proc/self/ns/user") {
            Ok(f) => {
                use std::os::fd::AsRawFd;
                // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
                syscall_attempt("setns", &tried, unsafe {
                    libc::setns(f.as_raw_fd(), 0) as i64
                })
            }
            Err(e) => Attempt {
                name: "setns",
                tried,
                result: Err(e.to_string()),
            },
        }
    });
    attempts.push(syscall_attempt(
        "clone-newns",
        "clone(CLONE_NEWNS|CLONE_NEWPID) of a child",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        },
    ));
    if let Some(pid) = a.host_pid {
        attempts.push(syscall_attempt(
            "ptrace-host",
            &format!("ptrace(PTRACE_ATTACH) host pid {pid}"),
            // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
            unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) },
        ));
        attempts.push(syscall_attempt(
            "kill-host",
            &format!("kill(SIGKILL) host pid {pid}"),
            // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
            unsafe { libc::kill(pid, libc::SIGKILL) as i64 },
        ));
    }
    attempts.push(syscall_attempt(
        "ptrace-init",
        "ptrace(PTRACE_ATTACH) the sandbox's init",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe { libc::ptrace(libc::PTRACE_ATTACH, 1, 0usize, 0usize) },
    ));
    attempts.push(syscall_attempt(
        "process-vm-readv",
        "process_vm_readv from the sandbox's init",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe {
            libc::syscall(
                libc::SYS_process_vm_readv,
                1,
                0usize,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        },
    ));
    attempts.push(syscall_attempt(
        "packet-socket",
        "socket(AF_PACKET, SOCK_RAW)",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            ) as i64
        },
    ));
    attempts.push(syscall_attempt(
        "raw-socket",
        "socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) as i64 },
    ));
    // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
    attempts.push(syscall_attempt("bpf", "bpf(BPF_MAP_CREATE)", unsafe {
        let mut attr = [0u32; 32];
        attr[0] = 2; // BPF_MAP_TYPE_ARRAY
        attr[1] = 4;
        attr[2] = 4;
        attr[3] = 1;
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    }));
    attempts.push(syscall_attempt(
        "keyctl",
        "keyctl(KEYCTL_GET_KEYRING_ID, session keyring)",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe { libc::syscall(libc::SYS_keyctl, 0, -3i64, 1) },
    ));
    attempts.push(syscall_attempt(
        "add-key",
        "add_key(\"user\", ...) into the session keyring",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe {
            let ty = cstr("user");
            let desc = cstr("osvm-probe");
            libc::syscall(
                libc::SYS_add_key,
                ty.as_ptr(),
                desc.as_ptr(),
                b"x".as_ptr(),
                1usize,
                -3i64,
            )
        },
    ));
    attempts.push(syscall_attempt(
        "perf-event-open",
        "perf_event_open(software cpu clock)",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe {
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // PERF_TYPE_SOFTWARE
            attr[4..8].copy_from_slice(&128u32.to_ne_bytes()); // size
            libc::syscall(libc::SYS_perf_event_open, attr.as_mut_ptr(), 0, -1, -1, 0)
        },
    ));
    attempts.push(syscall_attempt(
        "userfaultfd",
        "userfaultfd(O_CLOEXEC)",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) },
    ));
    attempts.push(syscall_attempt(
        "reboot",
        "reboot(LINUX_REBOOT_CMD_CAD_OFF)",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) as i64 },
    ));
    // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
    attempts.push(syscall_attempt("kexec", "kexec_load(0 segments)", unsafe {
        libc::syscall(libc::SYS_kexec_load, 0usize, 0usize, 0usize, 0usize)
    }));
    attempts.push(syscall_attempt(
        "module-load",
        "finit_module(/dev/null)",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe {
            let f = libc::open(cstr("/dev/null").as_ptr(), libc::O_RDONLY);
            libc::syscall(libc::SYS_finit_module, f, cstr("").as_ptr(), 0)
        },
    ));
    attempts.push(syscall_attempt(
        "io-uring",
        "io_uring_setup(1 entry)",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe {
            let mut params = [0u8; 120];
            libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr())
        },
    ));
    attempts.push(syscall_attempt(
        "open-by-handle",
        "open_by_handle_at (the 'shocker' escape)",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe {
            let mut handle = [0u8; 16];
            handle[0..4].copy_from_slice(&8u32.to_ne_bytes());
            libc::syscall(
                libc::SYS_open_by_handle_at,
                libc::AT_FDCWD,
                handle.as_mut_ptr(),
                libc::O_RDONLY,
            )
        },
    ));
    attempts.push(syscall_attempt(
        "clock-settime",
        "clock_settime(CLOCK_REALTIME)",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            libc::clock_settime(libc::CLOCK_REALTIME, &ts) as i64
        },
    ));
    for path in [
        "/usr/osvm-escape",
        "/etc/osvm-escape",
        "/bin/osvm-escape",
        "/osvm-escape",
    ] {
        attempts.push(Attempt {
            name: "write-outside",
            tried: format!("create {path}"),
            result: open_write(path),
        });
    }
    attempts.push(Attempt {
        name: "write-sysrq",
        tried: "write /proc/sysrq-trigger".into(),
        result: std::fs::write("/proc/sysrq-trigger", "h")
            .map(|_| "written".into())
            .map_err(|e| e.to_string()),
    });
    if let Some(secret) = &a.secret {
        for path in [
            secret.clone(),
            format!("/proc/1/root{secret}"),
            format!("/proc/self/root/../../..{secret}"),
        ] {
            attempts.push(Attempt {
                name: "read-host-secret",
                tried: format!("read {path}"),
                result: std::fs::read_to_string(&path)
                    .map(|s| format!("read {} bytes", s.len()))
                    .map_err(|e| e.to_string()),
            });
        }
    }
    attempts.push(syscall_attempt(
        "chroot",
        "chroot(\"/tmp\") (first step of the chroot-breakout trick)",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe { libc::chroot(tmp.as_ptr()) as i64 },
    ));
    attempts.push(syscall_attempt(
        "mknod",
        "mknod /tmp/sda as block device 8:0",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe {
            libc::mknod(
                cstr("/tmp/sda").as_ptr(),
                libc::S_IFBLK | 0o600,
                libc::makedev(8, 0),
            ) as i64
        },
    ));
    attempts.push(Attempt {
        name: "dev-mem",
        tried: "open /dev/mem".into(),
        result: std::fs::File::open("/dev/mem")
            .map(|_| "opened".into())
            .map_err(|e| e.to_string()),
    });
    attempts.push(syscall_attempt(
        "sethostname",
        "sethostname(\"pwned\")",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe { libc::sethostname(b"pwned".as_ptr().cast(), 5) as i64 },
    ));
    if let Some(port) = a.host_port {
        attempts.push(Attempt {
            name: "host-loopback",
            tried: format!("TCP connect to 127.0.0.1:{port} (a listener on the host's loopback)"),
            result: TcpStream::connect_timeout(
                &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into(),
                Duration::from_secs(2),
            )
            .map(|_| "connected".into())
            .map_err(|e| e.to_string()),
        });
    }
    attempts.push(syscall_attempt(
        "tiocsti",
        "ioctl(0, TIOCSTI) to type into a terminal",
        // SAFETY: a raw call with integers, null, or pointers to locals that outlive it; the probe wants the kernel to refuse it.
        unsafe {
            let c = b'x';
            libc::ioctl(0, libc::TIOCSTI, &c) as i64
        },
    ));
    attempts.push(Attempt {
        name: "tty",
        tried: "open /dev/tty (the host's controlling terminal)".into(),
        result: std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/tty")
            .map(|_| "opened".into())
            .map_err(|e| e.to_string()),
    });
    if let Some(path) = &a.setuid {
        attempts.push(setuid_attempt(path));
    }
    more_attempts(a, &mut attempts);

    let mut all_blocked = true;
    for at in &attempts {
        let (blocked, detail) = match &at.result {
            Ok(d) => (false, d.clone()),
            Err(e) => (true, e.clone()),
        };
        all_blocked &= blocked;
        println!(
            "{{\"attempt\":{},\"tried\":{},\"blocked\":{blocked},\"result\":{}}}",
            json_str(at.name),
            json_str(&at.tried),
            json_str(&detail)
        );
    }
    all_blocked
}

/// Runs a setuid-root copy of this probe and reports escaped if it gained any capability or
/// a different euid.
fn setuid_attempt(path: &str) -> Attempt {
    let tried = format!("exec setuid-root binary {path} and read its credentials");
    let out = std::process::Command::new(path).arg("caps").output();
    let result = match out {
        Err(e) => Err(format!("exec failed: {e}")),
        Ok(o) => {
            let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            // Blocked when the child has no capabilities and kept our euid.
            // SAFETY: geteuid cannot fail.
            let ours = unsafe { libc::geteuid() };
            if s == format!("euid={ours} capeff=0000000000000000") {
                Err(format!("setuid bit ignored: child reports {s}"))
            } else {
                Ok(format!("child reports {s}"))
            }
        }
    };
    Attempt {
        name: "setuid-binary",
        tried,
        result,
    }
}

fn attempt(
    name: &'static str,
    tried: impl Into<String>,
    result: Result<String, String>,
) -> Attempt {
    Attempt {
        name,
        tried: tried.into(),
        result,
    }
}

/// Reads a file: `Ok` (got through) with what was read when it is readable and not empty.
fn read_nonempty(path: &str) -> Result<String, String> {
    let mut buf = Vec::new();
    match std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut buf)) {
        Ok(0) => Err("read 0 bytes".into()),
        Ok(n) => Ok(format!("read {n} bytes")),
        Err(e) => Err(e.to_string()),
    }
}

/// `Ok` when `text` shows one of the host paths the test named.
fn shows_host_path(what: &str, text: &str, paths: &[String]) -> Result<String, String> {
    match paths
        .iter()
        .find(|p| !p.is_empty() && text.contains(p.as_str()))
    {
        Some(p) => Ok(format!("{what} shows the host path {p}")),
        None => Err(format!("{what} shows none of {} host paths", paths.len())),
    }
}

fn socket_attempt(name: &'static str, tried: &str, domain: i32, ty: i32, proto: i32) -> Attempt {
    // SAFETY: socket(2) takes integers only; a returned fd is closed right away.
    let rc = unsafe { libc::socket(domain, ty, proto) };
    if rc >= 0 {
        // SAFETY: rc is an fd this process owns.
        unsafe { libc::close(rc) };
    }
    syscall_attempt(name, tried, rc as i64)
}

/// `(st_dev, st_ino)` of a path.
fn dev_ino(path: &str) -> Result<(u64, u64), String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| format!("stat {path}: {e}"))
}

/// A fresh file under /tmp with `mode` set by chmod; `Ok` when the mode stuck.
fn chmod_attempt(path: &str, mode: u32) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::write(path, b"#!/bin/sh\n").map_err(|e| format!("create: {e}"))?;
    let c = cstr(path);
    // SAFETY: chmod with a live C string.
    check(unsafe { libc::chmod(c.as_ptr(), mode) } as i64).map_err(|e| e.to_string())?;
    let got = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0);
    if got & 0o6000 != 0 {
        Ok(format!("mode is now {got:o}"))
    } else {
        Err(format!("chmod returned 0 but the mode is {got:o}"))
    }
}

/// F2: nothing but stdio may be open (the listing's own descriptor aside).
fn inherited_fds() -> Attempt {
    let result = match std::fs::read_dir("/proc/self/fd") {
        Err(e) => Err(e.to_string()),
        Ok(entries) => {
            let mut open = Vec::new();
            for e in entries.flatten() {
                let fd: i32 = e.file_name().to_string_lossy().parse().unwrap_or(-1);
                let target = std::fs::read_link(e.path())
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                // The directory being listed is the one descriptor the listing adds.
                if fd > 2 && !target.ends_with("/fd") {
                    open.push(format!("{fd} -> {target}"));
                }
            }
            if open.is_empty() {
                Err("only stdin, stdout and stderr are open".into())
            } else {
                Ok(format!("open: {}", open.join(", ")))
            }
        }
    };
    attempt(
        "inherited-fd",
        "list /proc/self/fd for descriptors beyond stdin, stdout and stderr",
        result,
    )
}

/// The holes the red team found, and their neighbours.
fn more_attempts(a: &EscapeArgs, attempts: &mut Vec<Attempt>) {
    // F3: a host-wide counter (fs.aio-nr) one sandbox could exhaust.
    attempts.push(syscall_attempt(
        "native-aio",
        "io_setup(1) (native AIO contexts count against the host-wide fs.aio-max-nr)",
        {
            let mut ctx: libc::c_ulong = 0;
            // SAFETY: io_setup writes one context id into `ctx`, which lives across the call.
            let rc =
                unsafe { libc::syscall(libc::SYS_io_setup, 1, &mut ctx as *mut libc::c_ulong) };
            if rc == 0 {
                // SAFETY: destroys the context just created.
                unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
            }
            rc
        },
    ));
    // F5 and the host layout: nothing inside shows where osvm keeps its state.
    let cmdline = std::fs::read("/proc/1/cmdline")
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    attempts.push(attempt(
        "init-cmdline-host-path",
        format!("read /proc/1/cmdline ({})", cmdline.trim()),
        shows_host_path("/proc/1/cmdline", &cmdline, &a.host_paths),
    ));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    attempts.push(attempt(
        "mountinfo-host-path",
        "read /proc/self/mountinfo",
        shows_host_path("mountinfo", &mountinfo, &a.host_paths),
    ));
    for (name, path) in [
        ("init-exe", "/proc/1/exe"),
        ("init-cwd", "/proc/1/cwd"),
        ("init-root", "/proc/1/root"),
    ] {
        attempts.push(attempt(
            name,
            format!("readlink {path} (init is not dumpable)"),
            std::fs::read_link(path)
                .map(|t| format!("points to {}", t.display()))
                .map_err(|e| e.to_string()),
        ));
    }
    attempts.push(attempt(
        "init-environ",
        "read /proc/1/environ (the launcher's environment)",
        read_nonempty("/proc/1/environ"),
    ));
    attempts.push(attempt(
        "init-maps",
        "read /proc/1/maps (the launcher binary's host path)",
        read_nonempty("/proc/1/maps"),
    ));
    // F1: the root's parent must be the root itself, however it is reached.
    attempts.push(attempt(
        "root-parent",
        "stat / and /.. and /proc/self/root/.. (a host root stacked above the sandbox's)",
        (|| {
            let root = dev_ino("/")?;
            for p in ["/..", "/proc/self/root/..", "/proc/1/root/.."] {
                if let Ok(other) = dev_ino(p)
                    && other != root
                {
                    return Ok(format!("{p} is {other:?}, / is {root:?}"));
                }
            }
            Err(format!("/.. is / ({root:?})"))
        })(),
    ));
    // Setuid and setgid bits are useless inside (no_new_privs) and dangerous outside (a
    // writable mount's files belong to a host user).
    attempts.push(attempt(
        "chmod-setuid",
        "chmod 4755 a file in /tmp",
        chmod_attempt("/tmp/osvm-suid", 0o4755),
    ));
    attempts.push(attempt(
        "chmod-setgid",
        "chmod 2755 a file in /tmp",
        chmod_attempt("/tmp/osvm-sgid", 0o2755),
    ));
    attempts.push(attempt("create-setuid", "open(O_CREAT, 04755) in /tmp", {
        let c = cstr("/tmp/osvm-suid-new");
        // SAFETY: open with a live C string; the fd is closed below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o4755) };
        if fd < 0 {
            Err(errno().to_string())
        } else {
            // SAFETY: fd was just opened.
            unsafe { libc::close(fd) };
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata("/tmp/osvm-suid-new")
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0);
            if mode & 0o4000 != 0 {
                Ok(format!("created with mode {mode:o}"))
            } else {
                Err(format!("created without the bit (mode {mode:o})"))
            }
        }
    }));
    attempts.push(syscall_attempt(
        "openat2",
        "openat2 (its mode is in memory seccomp cannot read)",
        {
            let c = cstr("/tmp/osvm-openat2");
            // struct open_how { u64 flags; u64 mode; u64 resolve; }
            let how: [u64; 3] = [(libc::O_CREAT | libc::O_WRONLY) as u64, 0o4755, 0];
            // SAFETY: a live C string and a 24-byte open_how that lives across the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    how.as_ptr(),
                    std::mem::size_of_val(&how),
                )
            };
            if rc >= 0 {
                // SAFETY: rc is a new fd.
                unsafe { libc::close(rc as i32) };
            }
            rc
        },
    ));
    // The new mount API, piece by piece.
    attempts.push(syscall_attempt("fsopen", "fsopen(\"tmpfs\")", {
        let c = cstr("tmpfs");
        // SAFETY: a live C string.
        unsafe { libc::syscall(libc::SYS_fsopen, c.as_ptr(), 0) }
    }));
    attempts.push(syscall_attempt(
        "open-tree",
        "open_tree(\"/\", OPEN_TREE_CLONE)",
        {
            let c = cstr("/");
            // SAFETY: a live C string; OPEN_TREE_CLONE = 1.
            unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), 1) }
        },
    ));
    attempts.push(syscall_attempt(
        "mount-setattr",
        "mount_setattr(\"/usr\") clearing read-only",
        {
            let c = cstr("/usr");
            // struct mount_attr { u64 attr_set, attr_clr, propagation, userns_fd; }
            let attr: [u64; 4] = [0, 1, 0, 0];
            // SAFETY: a live C string and a mount_attr that lives across the call.
            unsafe {
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    0,
                    attr.as_ptr(),
                    std::mem::size_of_val(&attr),
                )
            }
        },
    ));
    attempts.push(syscall_attempt(
        "umount-proc",
        "umount2(\"/proc\", MNT_DETACH) (to uncover what lies beneath)",
        {
            let c = cstr("/proc");
            // SAFETY: a live C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) as i64 }
        },
    ));
    attempts.push(syscall_attempt(
        "pivot-root",
        "pivot_root(\"/tmp\", \"/tmp\")",
        {
            let c = cstr("/tmp");
            // SAFETY: live C strings.
            unsafe { libc::syscall(libc::SYS_pivot_root, c.as_ptr(), c.as_ptr()) }
        },
    ));
    attempts.push(syscall_attempt(
        "pidfd-getfd-init",
        "pidfd_getfd(init, fd 0) (a descriptor of the launcher's)",
        {
            // SAFETY: integer arguments; a returned fd is closed.
            unsafe {
                let pidfd = libc::syscall(libc::SYS_pidfd_open, 1, 0);
                if pidfd < 0 {
                    pidfd
                } else {
                    let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd, 0, 0);
                    libc::close(pidfd as i32);
                    if fd >= 0 {
                        libc::close(fd as i32);
                    }
                    fd
                }
            }
        },
    ));
    attempts.push(syscall_attempt(
        "clone3-newuser",
        "clone3(CLONE_NEWUSER)",
        {
            // struct clone_args: flags first, exit_signal at offset 32; 88 bytes in all.
            let mut args = [0u64; 11];
            args[0] = libc::CLONE_NEWUSER as u64;
            args[4] = libc::SIGCHLD as u64;
            // SAFETY: clone3 without CLONE_VM duplicates this process like fork; the child
            // exits at once.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    args.as_mut_ptr(),
                    std::mem::size_of_val(&args),
                )
            };
            if rc == 0 {
                // SAFETY: the child ends here.
                unsafe { libc::_exit(0) };
            }
            if rc > 0 {
                // SAFETY: reaps the child just made.
                unsafe { libc::waitpid(rc as i32, std::ptr::null_mut(), 0) };
            }
            rc
        },
    ));
    attempts.push(syscall_attempt(
        "unshare-cgroup",
        "unshare(CLONE_NEWCGROUP | CLONE_NEWTIME)",
        // SAFETY: integer arguments.
        unsafe { libc::unshare(libc::CLONE_NEWCGROUP | 0x80) as i64 },
    ));
    // Kernel interfaces a service never needs, each a classic foothold.
    attempts.push(syscall_attempt(
        "syslog",
        "syslog(READ_ALL) (the host's kernel log)",
        {
            let mut buf = vec![0u8; 4096];
            // SAFETY: klogctl writes at most buf.len() bytes into buf.
            unsafe { libc::klogctl(3, buf.as_mut_ptr().cast(), buf.len() as i32) as i64 }
        },
    ));
    attempts.push(syscall_attempt("iopl", "iopl(3) (raw port I/O)", unsafe {
        // SAFETY: integer argument.
        libc::syscall(libc::SYS_iopl, 3)
    }));
    attempts.push(syscall_attempt("ioperm", "ioperm(0x80, 1, on)", unsafe {
        // SAFETY: integer arguments.
        libc::syscall(libc::SYS_ioperm, 0x80, 1, 1)
    }));
    attempts.push(syscall_attempt(
        "modify-ldt",
        "modify_ldt(write an empty descriptor)",
        {
            let desc = [0u32; 4];
            // SAFETY: modify_ldt reads a 16-byte user_desc that lives across the call.
            unsafe { libc::syscall(libc::SYS_modify_ldt, 1, desc.as_ptr(), 16) }
        },
    ));
    attempts.push(syscall_attempt(
        "realtime-scheduling",
        "sched_setscheduler(SCHED_FIFO, 1) (starve the host's CPUs)",
        {
            let param = libc::sched_param { sched_priority: 1 };
            // SAFETY: a sched_param that lives across the call.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) as i64 }
        },
    ));
    attempts.push(syscall_attempt(
        "nice-boost",
        "setpriority(-20)",
        // SAFETY: integer arguments.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20) as i64 },
    ));
    attempts.push(syscall_attempt(
        "ioprio-realtime",
        "ioprio_set(realtime class)",
        // SAFETY: integer arguments (IOPRIO_WHO_PROCESS, self, class RT << 13).
        unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, 1 << 13) },
    ));
    attempts.push(attempt(
        "oom-score-adj",
        "write -1000 to /proc/self/oom_score_adj (make the host's OOM killer spare it)",
        std::fs::write("/proc/self/oom_score_adj", "-1000")
            .map(|_| "written".into())
            .map_err(|e| e.to_string()),
    ));
    attempts.push(syscall_attempt(
        "raise-hard-rlimit",
        "setrlimit(RLIMIT_NOFILE) above its hard limit",
        {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit/setrlimit with an rlimit that lives across the calls.
            unsafe {
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                lim.rlim_max = lim.rlim_max.saturating_add(1);
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim) as i64
            }
        },
    ));
    attempts.push(syscall_attempt(
        "fanotify",
        "fanotify_init (watch every file access)",
        // SAFETY: integer arguments.
        unsafe { libc::syscall(libc::SYS_fanotify_init, 0, libc::O_RDONLY) },
    ));
    attempts.push(syscall_attempt("acct", "acct(\"/tmp/acct\")", {
        let c = cstr("/tmp/acct");
        // SAFETY: a live C string.
        unsafe { libc::acct(c.as_ptr()) as i64 }
    }));
    attempts.push(syscall_attempt("swapon", "swapon(\"/tmp/swap\")", {
        let c = cstr("/tmp/swap");
        // SAFETY: a live C string.
        unsafe { libc::swapon(c.as_ptr(), 0) as i64 }
    }));
    attempts.push(syscall_attempt(
        "vhangup",
        "vhangup() (hang up the terminal)",
        // SAFETY: no arguments.
        unsafe { libc::vhangup() as i64 },
    ));
    attempts.push(syscall_attempt(
        "move-pages-init",
        "move_pages(init) (another process's memory)",
        {
            let page: *mut libc::c_void = std::ptr::null_mut();
            let mut status = 0i32;
            // SAFETY: one page pointer (never dereferenced by us) and one status slot.
            unsafe {
                libc::syscall(
                    libc::SYS_move_pages,
                    1,
                    1,
                    &page as *const *mut libc::c_void,
                    std::ptr::null::<i32>(),
                    &mut status as *mut i32,
                    0,
                )
            }
        },
    ));
    attempts.push(syscall_attempt(
        "process-madvise-init",
        "process_madvise(init)",
        // SAFETY: integer arguments; pidfd_open result closed below.
        unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, 1, 0);
            if pidfd < 0 {
                pidfd
            } else {
                let rc = libc::syscall(libc::SYS_process_madvise, pidfd, 0usize, 0usize, 0, 0);
                libc::close(pidfd as i32);
                rc
            }
        },
    ));
    for (name, tried, domain, ty, proto) in [
        (
            "socket-vsock",
            "socket(AF_VSOCK) (the hypervisor's channel)",
            libc::AF_VSOCK,
            libc::SOCK_STREAM,
            0,
        ),
        (
            "socket-netlink-audit",
            "socket(AF_NETLINK, NETLINK_AUDIT)",
            libc::AF_NETLINK,
            libc::SOCK_RAW,
            libc::NETLINK_AUDIT,
        ),
        (
            "socket-netlink-uevent",
            "socket(AF_NETLINK, NETLINK_KOBJECT_UEVENT)",
            libc::AF_NETLINK,
            libc::SOCK_RAW,
            libc::NETLINK_KOBJECT_UEVENT,
        ),
        (
            "socket-netlink-netfilter",
            "socket(AF_NETLINK, NETLINK_NETFILTER) (nftables)",
            libc::AF_NETLINK,
            libc::SOCK_RAW,
            libc::NETLINK_NETFILTER,
        ),
        (
            "socket-alg",
            "socket(AF_ALG) (the kernel crypto API)",
            libc::AF_ALG,
            libc::SOCK_SEQPACKET,
            0,
        ),
        (
            "socket-key",
            "socket(AF_KEY) (IPsec keys)",
            libc::AF_KEY,
            libc::SOCK_RAW,
            2,
        ),
        (
            "socket-bluetooth",
            "socket(AF_BLUETOOTH)",
            libc::AF_BLUETOOTH,
            libc::SOCK_RAW,
            0,
        ),
    ] {
        attempts.push(socket_attempt(name, tried, domain, ty, proto));
    }
    if let Some(name) = &a.abstract_name {
        attempts.push(attempt(
            "host-abstract-socket",
            format!("connect to the host's abstract unix socket @{name}"),
            {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .and_then(|addr| std::os::unix::net::UnixStream::connect_addr(&addr))
                    .map(|_| "connected".into())
                    .map_err(|e| e.to_string())
            },
        ));
    }
    // What the host keeps out of view.
    for (name, path) in [
        ("sysfs", "/sys/kernel"),
        ("cgroupfs", "/sys/fs/cgroup"),
        ("host-run", "/run/netns"),
    ] {
        attempts.push(attempt(
            name,
            format!("look for {path}"),
            std::fs::metadata(path)
                .map(|_| format!("{path} exists"))
                .map_err(|e| e.to_string()),
        ));
    }
    for (name, path, value) in [
        (
            "core-pattern",
            "/proc/sys/kernel/core_pattern",
            "|/tmp/pwn %p",
        ),
        ("drop-caches", "/proc/sys/vm/drop_caches", "3"),
        ("proc-hostname", "/proc/sys/kernel/hostname", "pwned"),
    ] {
        attempts.push(attempt(
            name,
            format!("write {path}"),
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut f| f.write_all(value.as_bytes()))
                .map(|_| "written".into())
                .map_err(|e| e.to_string()),
        ));
    }
    attempts.push(attempt(
        "kcore",
        "read /proc/kcore (the host's memory)",
        read_nonempty("/proc/kcore"),
    ));
    attempts.push(syscall_attempt(
        "chown-unmapped",
        "chown a file to a uid outside the sandbox's range",
        {
            let _ = std::fs::write("/tmp/osvm-chown", b"");
            let c = cstr("/tmp/osvm-chown");
            // SAFETY: a live C string.
            unsafe { libc::chown(c.as_ptr(), 100_000, 100_000) as i64 }
        },
    ));
}
