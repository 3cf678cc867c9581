//! `osvm-probe`: runs inside a sandbox during osvm's tests and reports, from the inside, what
//! the workload can see and do.
//!
//! - `status`: one JSON object: the `/proc/self/status` fields that show confinement, pids,
//!   uid map, network interfaces, hostname.
//! - `escape [--host-pid N] [--secret PATH] [--host-port P] [--setuid PATH] [--host-path P]...
//!   [--abstract NAME]`: tries every escape in the suite (see `escape.rs`) and prints one JSON
//!   line per attempt; exits 0 only if every attempt was blocked.
//! - `alloc MIB`: allocates and touches memory 1 MiB at a time, printing progress.
//! - `forkbomb N`: forks up to N sleeping children; prints how many it got and the error.
//! - `burn SECS`: spins one CPU for SECS seconds.
//! - `tokio`: a multi-threaded tokio runtime serving HTTP on 127.0.0.1 to 50 concurrent
//!   clients of its own; prints `tokio ok N` (threads, epoll, eventfd, futexes under seccomp).
//! - `caps`: prints this process's euid and CapEff (run as a setuid copy by `escape`).
//! - `fds`, `aio`, `inotify N HOLD`, `watches HOLD`, `sigqueue HOLD`, `fill PATH MIB`,
//!   `statfs PATH...`, `spew MIB`: press on one limit each (see `pressure.rs`);
//!   `throughput DIR MIB`: write and small-file rates in DIR.
//! - `mcp NAME`: a minimal MCP server on stdio (see `mcp.rs`).
//! - `relay CMD ARGS...`: CMD behind a byte relay (the floor of any process in the middle).

mod escape;
mod mcp;
mod pressure;

use std::ffi::CString;
use std::io::{Read, Write};
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
                // SAFETY: pause takes no arguments; it returns only on a signal.
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
    let num = |i: usize, default: u64| -> u64 {
        args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default)
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match cmd {
        "status" => status(),
        "escape" => {
            let a = escape::EscapeArgs {
                host_pid: flag("--host-pid").and_then(|s| s.parse().ok()),
                secret: flag("--secret"),
                host_port: flag("--host-port").and_then(|s| s.parse().ok()),
                setuid: flag("--setuid"),
                host_paths: args
                    .windows(2)
                    .filter(|w| w[0] == "--host-path")
                    .map(|w| w[1].clone())
                    .collect(),
                abstract_name: flag("--abstract"),
            };
            std::process::exit(if escape::run(&a) { 0 } else { 1 });
        }
        "mcp" => mcp::serve(args.get(2).map_or("probe", String::as_str)),
        "relay" => mcp::relay(&args[2..]),
        "fds" => pressure::fds(),
        "aio" => pressure::aio(),
        "inotify" => pressure::inotify(num(2, 200) as usize, num(3, 0)),
        "watches" => pressure::watches(num(2, 0)),
        "sigqueue" => pressure::sigqueue(num(2, 0)),
        "fill" => pressure::fill(args.get(2).map_or("/data/fill", String::as_str), num(3, 64)),
        "statfs" => pressure::statfs(&args[2..]),
        "spew" => pressure::spew(num(2, 1)),
        "throughput" => {
            pressure::throughput(args.get(2).map_or("/data", String::as_str), num(3, 256))
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
            eprintln!(
                "usage: osvm-probe status|escape|alloc MIB|forkbomb N|burn SECS|caps|fds|aio|\
                 inotify N HOLD|watches HOLD|sigqueue HOLD|fill PATH MIB|statfs PATH...|spew MIB"
            );
            std::process::exit(2);
        }
    }
}
