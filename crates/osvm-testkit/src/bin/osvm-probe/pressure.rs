//! Commands that press on one limit each and say, in one JSON line, how far they got: the
//! host-side half of each test then checks that the host (or another component) did not pay
//! for it.

use std::io::Write;
use std::time::Duration;

use crate::{cstr, errno, json_str};

fn flush() {
    let _ = std::io::stdout().flush();
}

/// Keeps the process (and everything it holds) alive for `secs` seconds.
fn hold(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
}

/// `fds`: the descriptors open in this process, as `[{"fd":N,"target":"..."}]`.
pub fn fds() {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        for e in entries.flatten() {
            let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            if target.ends_with("/fd") && fd > 2 {
                continue;
            }
            out.push(format!("{{\"fd\":{fd},\"target\":{}}}", json_str(&target)));
        }
    }
    println!("[{}]", out.join(","));
}

/// `aio`: one `io_setup(128)`; prints whether the kernel gave a context.
pub fn aio() {
    let mut ctx: libc::c_ulong = 0;
    // SAFETY: io_setup writes one context id into `ctx`, which lives across the call.
    let rc = unsafe { libc::syscall(libc::SYS_io_setup, 128, &mut ctx as *mut libc::c_ulong) };
    let error = if rc < 0 {
        errno().to_string()
    } else {
        String::new()
    };
    println!("{{\"ok\":{},\"error\":{}}}", rc == 0, json_str(&error));
    if rc == 0 {
        // SAFETY: destroys the context just created.
        unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    }
}

/// `inotify N HOLD`: opens up to N inotify instances, prints how many, holds them HOLD s.
pub fn inotify(n: usize, secs: u64) {
    let mut opened = 0;
    let mut error = String::new();
    for _ in 0..n {
        // SAFETY: integer flags only; the fd stays open until the process ends.
        if unsafe { libc::inotify_init1(libc::IN_CLOEXEC) } < 0 {
            error = errno().to_string();
            break;
        }
        opened += 1;
    }
    println!("{{\"opened\":{opened},\"error\":{}}}", json_str(&error));
    flush();
    hold(secs);
}

/// `watches HOLD`: adds inotify watches (2,000 files in /tmp, watched from as many instances
/// as it may open) until the kernel refuses one; prints how many, holds them HOLD s.
pub fn watches(secs: u64) {
    let dir = "/tmp/watched";
    let _ = std::fs::create_dir_all(dir);
    let files: Vec<std::ffi::CString> = (0..2000)
        .map(|i| {
            let p = format!("{dir}/{i}");
            let _ = std::fs::write(&p, b"");
            cstr(&p)
        })
        .collect();
    let mut instances = Vec::new();
    let mut added = 0u64;
    let mut error = String::new();
    'outer: loop {
        // SAFETY: integer flags only; the fd stays open until the process ends.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            if instances.is_empty() {
                error = errno().to_string();
            }
            break;
        }
        instances.push(fd);
        for f in &files {
            // SAFETY: a live C string and an inotify fd of ours.
            if unsafe { libc::inotify_add_watch(fd, f.as_ptr(), libc::IN_MODIFY) } < 0 {
                error = errno().to_string();
                break 'outer;
            }
            added += 1;
        }
    }
    println!(
        "{{\"watches\":{added},\"instances\":{},\"error\":{}}}",
        instances.len(),
        json_str(&error)
    );
    flush();
    hold(secs);
}

/// `sigqueue HOLD`: queues real-time signals to itself (blocked, so they stay pending) until
/// the kernel refuses; prints how many, holds them HOLD s.
pub fn sigqueue(secs: u64) {
    let sig = libc::SIGRTMIN();
    // SAFETY: sigset operations on a local set; blocking a signal for this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut queued = 0u64;
    let mut error = String::new();
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    loop {
        let value = libc::sigval {
            sival_ptr: std::ptr::null_mut(),
        };
        // SAFETY: sigqueue to ourselves with a plain value.
        if unsafe { libc::sigqueue(pid, sig, value) } < 0 {
            error = errno().to_string();
            break;
        }
        queued += 1;
        if queued >= 10_000_000 {
            break;
        }
    }
    println!("{{\"queued\":{queued},\"error\":{}}}", json_str(&error));
    flush();
    hold(secs);
}

/// `fill PATH MIB`: `fallocate`s MIB MiB at PATH, then writes MIB MiB more to PATH.2;
/// prints what each managed.
pub fn fill(path: &str, mib: u64) {
    let bytes = mib << 20;
    let fallocate = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .and_then(|f| {
            use std::os::fd::AsRawFd;
            // SAFETY: fallocate on a file this process opened.
            if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, bytes as libc::off_t) } < 0 {
                Err(errno())
            } else {
                Ok(())
            }
        });
    let _ = std::fs::remove_file(path);
    let mut written = 0u64;
    let mut write_error = String::new();
    match std::fs::File::create(format!("{path}.2")) {
        Err(e) => write_error = e.to_string(),
        Ok(mut f) => {
            let block = vec![0x5au8; 1 << 20];
            while written < bytes {
                if let Err(e) = f.write_all(&block).and_then(|()| f.sync_data()) {
                    write_error = e.to_string();
                    break;
                }
                written += 1 << 20;
            }
        }
    }
    let _ = std::fs::remove_file(format!("{path}.2"));
    println!(
        "{{\"fallocate_ok\":{},\"fallocate_error\":{},\"written_mib\":{},\"write_error\":{}}}",
        fallocate.is_ok(),
        json_str(&fallocate.err().map(|e| e.to_string()).unwrap_or_default()),
        written >> 20,
        json_str(&write_error)
    );
}

/// `statfs PATH...`: the size of the file system at each path, as `{"PATH": bytes, ...}`.
pub fn statfs(paths: &[String]) {
    let mut out = Vec::new();
    for p in paths {
        let c = cstr(p);
        // SAFETY: statfs writes into a zeroed struct that lives across the call.
        let size = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            if libc::statfs(c.as_ptr(), &mut st) == 0 {
                (st.f_blocks as u64).saturating_mul(st.f_bsize as u64)
            } else {
                0
            }
        };
        out.push(format!("{}:{size}", json_str(p)));
    }
    println!("{{{}}}", out.join(","));
}

/// `spew MIB`: writes MIB MiB of 100-byte lines to stdout as fast as it can.
pub fn spew(mib: u64) {
    let line = [b"x".repeat(99), b"\n".to_vec()].concat();
    let block: Vec<u8> = line.repeat(10_000);
    let mut out = std::io::stdout().lock();
    let mut written = 0u64;
    while written < mib << 20 {
        if out.write_all(&block).is_err() {
            return;
        }
        written += block.len() as u64;
    }
    let _ = out.flush();
}

/// `throughput DIR MIB`: writes MIB MiB to a file in DIR in 1 MiB blocks and fsyncs it, then
/// creates 2,000 files of 4 KiB there and fsyncs the directory; prints both rates.
pub fn throughput(dir: &str, mib: u64) {
    use std::time::Instant;
    let path = format!("{dir}/throughput.bin");
    let block = vec![0xa5u8; 1 << 20];
    let start = Instant::now();
    let written = std::fs::File::create(&path).and_then(|mut f| {
        for _ in 0..mib {
            f.write_all(&block)?;
        }
        f.sync_all()
    });
    let write_s = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    let small = format!("{dir}/small");
    let _ = std::fs::create_dir_all(&small);
    let page = vec![0x5au8; 4096];
    let start = Instant::now();
    let mut created = 0u32;
    for i in 0..2000 {
        if std::fs::write(format!("{small}/{i}"), &page).is_err() {
            break;
        }
        created += 1;
    }
    let _ = std::fs::File::open(&small).and_then(|d| d.sync_all());
    let small_s = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&small);
    println!(
        "{{\"ok\":{},\"write_mib_s\":{:.1},\"files_per_s\":{:.0}}}",
        written.is_ok() && created == 2000,
        mib as f64 / write_s,
        f64::from(created) / small_s
    );
}
