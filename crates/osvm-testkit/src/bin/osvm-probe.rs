//! `osvm-probe`: runs inside a sandbox during osvm's tests and reports, from the inside, what
//! the workload can see and do.
//!
//! - `status`: one JSON object: the `/proc/self/status` fields that show confinement, pids,
//!   uid map, network interfaces, hostname.
//! - `escape [--host-pid N] [--secret PATH] [--host-port P] [--setuid PATH]`: tries every
//!   escape in the list below and prints one JSON line per attempt; exits 0 only if every
//!   attempt was blocked.
//! - `alloc MIB`: allocates and touches memory 1 MiB at a time, printing progress.
//! - `forkbomb N`: forks up to N sleeping children; prints how many it got and the error.
//! - `burn SECS`: spins one CPU for SECS seconds.
//! - `tokio`: a multi-threaded tokio runtime serving HTTP on 127.0.0.1 to 50 concurrent
//!   clients of its own; prints `tokio ok N` (threads, epoll, eventfd, futexes under seccomp).
//! - `caps`: prints this process's euid and CapEff (run as a setuid copy by `escape`).

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Turns a libc return value into a result: negative means failure with errno.
fn check(rc: i64) -> Result<i64, std::io::Error> {
    if rc < 0 { Err(errno()) } else { Ok(rc) }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in probe strings")
}

fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn status() {
    let interfaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| json_str(s.trim())))
        .collect();
    let pids: Vec<String> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .map(|p| p.to_string())
                .collect()
        })
        .unwrap_or_default();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    // SAFETY: getpid/getuid take no arguments and cannot fail.
    let (pid, uid) = unsafe { (libc::getpid(), libc::getuid()) };
    println!(
        "{{\"pid\":{pid},\"uid\":{uid},\"cap_eff\":{},\"cap_prm\":{},\"cap_bnd\":{},\"cap_inh\":{},\"cap_amb\":{},\"no_new_privs\":{},\"seccomp\":{},\"seccomp_filters\":{},\"interfaces\":[{}],\"pids\":[{}],\"hostname\":{},\"uid_map\":{}}}",
        json_str(&status_field("CapEff")),
        json_str(&status_field("CapPrm")),
        json_str(&status_field("CapBnd")),
        json_str(&status_field("CapInh")),
        json_str(&status_field("CapAmb")),
        json_str(&status_field("NoNewPrivs")),
        json_str(&status_field("Seccomp")),
        json_str(&status_field("Seccomp_filters")),
        interfaces.join(","),
        pids.join(","),
        json_str(hostname.trim()),
        json_str(uid_map.trim()),
    );
}

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

struct EscapeArgs {
    host_pid: Option<i32>,
    secret: Option<String>,
    host_port: Option<u16>,
    setuid: Option<String>,
}

#[allow(clippy::vec_init_then_push)]
fn escape(a: &EscapeArgs) -> bool {
    let mut attempts = Vec::new();
    let tmpfs = cstr("tmpfs");
    let tmp = cstr("/tmp");
    // SAFETY (all syscalls below): each call gets valid pointers to live CStrings or null
    // where the kernel accepts it; the probe wants to see them fail.
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
        unsafe { libc::unshare(libc::CLONE_NEWUSER) as i64 },
    ));
    attempts.push(syscall_attempt(
        "unshare-net",
        "unshare(CLONE_NEWNET|CLONE_NEWNS)",
        unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) as i64 },
    ));
    attempts.push({
        let tried = "setns into /proc/self/ns/user (would re-enter a user namespace)".to_string();
        match std::fs::File::open("/proc/self/ns/user") {
            Ok(f) => {
                use std::os::fd::AsRawFd;
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
            unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) },
        ));
        attempts.push(syscall_attempt(
            "kill-host",
            &format!("kill(SIGKILL) host pid {pid}"),
            unsafe { libc::kill(pid, libc::SIGKILL) as i64 },
        ));
    }
    attempts.push(syscall_attempt(
        "ptrace-init",
        "ptrace(PTRACE_ATTACH) the sandbox's init",
        unsafe { libc::ptrace(libc::PTRACE_ATTACH, 1, 0usize, 0usize) },
    ));
    attempts.push(syscall_attempt(
        "process-vm-readv",
        "process_vm_readv from the sandbox's init",
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
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) as i64 },
    ));
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
        unsafe { libc::syscall(libc::SYS_keyctl, 0, -3i64, 1) },
    ));
    attempts.push(syscall_attempt(
        "add-key",
        "add_key(\"user\", ...) into the session keyring",
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
        unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) },
    ));
    attempts.push(syscall_attempt(
        "reboot",
        "reboot(LINUX_REBOOT_CMD_CAD_OFF)",
        unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) as i64 },
    ));
    attempts.push(syscall_attempt("kexec", "kexec_load(0 segments)", unsafe {
        libc::syscall(libc::SYS_kexec_load, 0usize, 0usize, 0usize, 0usize)
    }));
    attempts.push(syscall_attempt(
        "module-load",
        "finit_module(/dev/null)",
        unsafe {
            let f = libc::open(cstr("/dev/null").as_ptr(), libc::O_RDONLY);
            libc::syscall(libc::SYS_finit_module, f, cstr("").as_ptr(), 0)
        },
    ));
    attempts.push(syscall_attempt(
        "io-uring",
        "io_uring_setup(1 entry)",
        unsafe {
            let mut params = [0u8; 120];
            libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr())
        },
    ));
    attempts.push(syscall_attempt(
        "open-by-handle",
        "open_by_handle_at (the 'shocker' escape)",
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
        unsafe { libc::chroot(tmp.as_ptr()) as i64 },
    ));
    attempts.push(syscall_attempt(
        "mknod",
        "mknod /tmp/sda as block device 8:0",
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

fn alloc(mib: usize) {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 1..=mib {
        blocks.push(vec![1u8; 1 << 20]);
        if i % 16 == 0 {
            println!("allocated {i} MiB");
            let _ = std::io::stdout().flush();
        }
    }
    println!("allocated all {mib} MiB");
}

fn forkbomb(n: usize) {
    let mut children = Vec::new();
    let mut error = String::new();
    for _ in 0..n {
        // SAFETY: the child only pauses (async-signal-safe) until it is killed.
        match unsafe { libc::fork() } {
            0 => loop {
                unsafe { libc::pause() };
            },
            -1 => {
                error = errno().to_string();
                break;
            }
            pid => children.push(pid),
        }
    }
    println!(
        "{{\"forked\":{},\"error\":{}}}",
        children.len(),
        json_str(&error)
    );
    for pid in children {
        // SAFETY: plain kill and waitpid of our own children.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
}

fn burn(secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut x: u64 = 0;
    while Instant::now() < end {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
    }
    println!("burned {secs}s ({x})");
}

/// A tokio server and its clients inside one sandbox: proves the runtime's syscalls (thread
/// creation through clone3's ENOSYS fallback, epoll, eventfd, futex) pass the allowlist.
fn tokio_selftest() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        let mut clients = Vec::new();
        for _ in 0..50 {
            clients.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                    .await
                    .ok()?;
                let mut out = Vec::new();
                s.read_to_end(&mut out).await.ok()?;
                out.ends_with(b"ok").then_some(())
            }));
        }
        let mut ok = 0;
        for c in clients {
            if let Ok(Some(())) = c.await {
                ok += 1;
            }
        }
        ok
    });
    println!("tokio ok {served}");
    std::process::exit(if served == 50 { 0 } else { 1 });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("");
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match cmd {
        "status" => status(),
        "escape" => {
            let a = EscapeArgs {
                host_pid: flag("--host-pid").and_then(|s| s.parse().ok()),
                secret: flag("--secret"),
                host_port: flag("--host-port").and_then(|s| s.parse().ok()),
                setuid: flag("--setuid"),
            };
            std::process::exit(if escape(&a) { 0 } else { 1 });
        }
        "alloc" => alloc(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024)),
        "forkbomb" => forkbomb(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000)),
        "burn" => burn(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2)),
        "tokio" => tokio_selftest(),
        "caps" => {
            // SAFETY: geteuid cannot fail.
            let euid = unsafe { libc::geteuid() };
            println!("euid={euid} capeff={}", status_field("CapEff"));
        }
        "cat" => {
            let mut s = String::new();
            let _ = std::fs::File::open(args.get(2).map(String::as_str).unwrap_or("/dev/null"))
                .and_then(|mut f| f.read_to_string(&mut s));
            print!("{s}");
        }
        _ => {
            eprintln!("usage: osvm-probe status|escape|alloc MIB|forkbomb N|burn SECS|caps");
            std::process::exit(2);
        }
    }
}
