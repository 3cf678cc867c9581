//! The process sandbox seen from inside and from the host, through `osvm run`.
//! Every test needs root and a cgroup hierarchy; without them it prints SKIP and returns.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::Value;

fn probe_status(state: &StateDir, flags: &[&str]) -> Value {
    let out = run_probe(state, flags, &["status"]);
    assert!(out.status.success(), "probe failed: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("bad probe output {e}: {}", stdout(&out)))
}

#[test]
fn workload_has_no_capabilities_no_new_privs_and_a_seccomp_filter() {
    if !sandbox_available("capabilities") {
        return;
    }
    let state = StateDir::new("caps");
    let s = probe_status(&state, &[]);
    for field in ["cap_eff", "cap_prm", "cap_bnd", "cap_inh", "cap_amb"] {
        assert_eq!(s[field], "0000000000000000", "{field} must be empty: {s}");
    }
    assert_eq!(s["no_new_privs"], "1");
    assert_eq!(s["seccomp"], "2", "seccomp mode 2 is filter mode");
}

#[test]
fn workload_sees_its_own_pid_namespace_only_lo_and_its_hostname() {
    if !sandbox_available("namespaces") {
        return;
    }
    let state = StateDir::new("ns");
    let s = probe_status(&state, &["--name", "probe-ns"]);
    assert_eq!(
        s["pid"], 2,
        "the workload is pid 2 under the sandbox's init: {s}"
    );
    let pids: Vec<u64> = s["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(
        pids,
        vec![1, 2],
        "only init and the workload are visible: {s}"
    );
    assert_eq!(s["interfaces"], serde_json::json!(["lo"]));
    assert_eq!(s["hostname"], "probe-ns");
    assert_eq!(s["uid"], 0);
}

#[test]
fn uid_zero_inside_is_an_unprivileged_uid_outside() {
    if !sandbox_available("uid-map") {
        return;
    }
    let state = StateDir::new("uid");
    // Named like the sleeper below: one component, one host range.
    let s = probe_status(&state, &["--name", "sleeper"]);
    let map: Vec<u64> = s["uid_map"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(map[0], 0, "uid 0 inside");
    assert_ne!(map[1], 0, "maps to a non-root host uid: {s}");

    // And from the host: every process in the sandbox's cgroup runs as that uid.
    let mut child = state
        .osvm()
        .args(["run", "-q", "--name", "sleeper", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (id, pids) = loop {
        if let Some(id) = state.instances().into_iter().find(|i| {
            i.starts_with("sleeper-")
                && !state
                    .path
                    .join("instances")
                    .join(i)
                    .join("exit.json")
                    .exists()
        }) {
            let procs =
                std::fs::read_to_string(format!("/sys/fs/cgroup/pids/osvm/{id}/cgroup.procs"))
                    .or_else(|_| {
                        std::fs::read_to_string(format!("/sys/fs/cgroup/osvm/{id}/cgroup.procs"))
                    })
                    .unwrap_or_default();
            let pids: Vec<String> = procs.lines().map(String::from).collect();
            if pids.len() >= 2 {
                break (id, pids);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // Init and the workload are in every group of the sandbox (created in the v2 group by
    // clone3, moved into the v1 ones).
    for dir in cgroup_dirs(&id).into_iter().filter(|d| d.exists()) {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        let mut listed: Vec<&str> = procs.lines().collect();
        listed.sort();
        let mut expected: Vec<&str> = pids.iter().map(String::as_str).collect();
        expected.sort();
        assert_eq!(listed, expected, "{} holds the sandbox", dir.display());
    }
    for pid in &pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let uids: Vec<u64> = uid_line
            .split_whitespace()
            .skip(1)
            .map(|u| u.parse().unwrap())
            .collect();
        assert!(
            uids.iter().all(|u| *u == map[1]),
            "pid {pid} runs as {uid_line}, expected {}",
            map[1]
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(143),
        "sleep ends by SIGTERM forwarded from osvm"
    );
}

#[test]
fn memory_limit_oom_kills_and_the_exit_record_says_so() {
    if !sandbox_available("oom") {
        return;
    }
    let state = StateDir::new("oom");
    let out = run_probe(&state, &["--memory", "64M"], &["alloc", "512"]);
    let doc: Value = {
        let mut cmd = state.osvm();
        cmd.args(["-o", "json", "run", "-q", "--memory", "64M", "--bind"])
            .arg(format!("{}:/probe", probe_dir().display()))
            .args(["--", "/probe/osvm-probe", "alloc", "512"]);
        let o = cmd.output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(137),
            "killed by SIGKILL: {}",
            stderr(&o)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    assert_eq!(out.status.code(), Some(137));
    assert!(
        !stdout(&out).contains("allocated all"),
        "the allocation must not complete"
    );
    assert_eq!(doc["status"]["oom_killed"], true, "{doc}");
    assert_eq!(doc["status"]["signal"], 9);
    assert!(doc["stats"]["oom_kills"].as_u64().unwrap() >= 1);
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    if !sandbox_available("pids") {
        return;
    }
    let state = StateDir::new("pids");
    let out = run_probe(&state, &["--pids", "16"], &["forkbomb", "500"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let forked = v["forked"].as_u64().unwrap();
    assert!(
        forked < 16,
        "at most 16 tasks in all (init and the probe included), forked {forked}"
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("temporarily unavailable"),
        "fork fails with EAGAIN: {v}"
    );
}

#[test]
fn cpu_quota_throttles_and_the_cgroup_stats_show_it() {
    if !sandbox_available("cpu") {
        return;
    }
    let state = StateDir::new("cpu");
    let mut cmd = state.osvm();
    cmd.args(["-o", "json", "run", "-q", "--cpus", "0.2", "--bind"])
        .arg(format!("{}:/probe", probe_dir().display()))
        .args(["--", "/probe/osvm-probe", "burn", "2"]);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let stats = &doc["stats"];
    assert!(
        stats["cpu_throttled_periods"].as_u64().unwrap() > 0,
        "throttled: {stats}"
    );
    // 2 s of spinning under a 0.2 CPU quota gets far less than the 2 s it would get unthrottled.
    assert!(
        stats["cpu_usage_usec"].as_u64().unwrap() < 1_200_000,
        "{stats}"
    );
}

/// The escape suite: at least 60 attempts, each printed, each blocked.
#[test]
fn escape_attempts_all_fail_from_inside() {
    if !sandbox_available("escape") {
        return;
    }
    let state = StateDir::new("escape");
    // A host process to attack, a host secret outside every bind, a host loopback listener,
    // and a setuid-root copy of the probe.
    let mut victim = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let secret = state.path.join("host-secret.txt");
    std::fs::write(&secret, "osvm-host-secret-4711").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Outside the state directory: a declared bind shows its source in mountinfo, the state
    // directory must not show at all.
    let scratch = StateDir::new("escape-suid");
    let suid_dir = scratch.path.join("suid");
    std::fs::create_dir(&suid_dir).unwrap();
    std::fs::set_permissions(&suid_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let suid = suid_dir.join("osvm-probe");
    std::fs::copy(probe_bin(), &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let hostname_before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let abstract_name = format!("osvm-escape-{}", std::process::id());
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
        let l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    };

    let out = run_probe(
        &state,
        &[
            "--readonly-root",
            "--bind",
            &format!("{}:/suid", suid_dir.display()),
        ],
        &[
            "escape",
            "--host-pid",
            &victim.id().to_string(),
            "--secret",
            secret.to_str().unwrap(),
            "--host-port",
            &port.to_string(),
            "--setuid",
            "/suid/osvm-probe",
            "--host-path",
            state.path.to_str().unwrap(),
            "--abstract",
            &abstract_name,
        ],
    );
    let text = stdout(&out);
    println!("{text}");
    let attempts: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        attempts.len() >= 60,
        "at least 60 attempts, got {}",
        attempts.len()
    );
    for a in &attempts {
        assert_eq!(a["blocked"], true, "escape succeeded: {a}");
    }
    assert!(
        out.status.success(),
        "the probe reports every attempt blocked: {}",
        stderr(&out)
    );
    let names: Vec<&str> = attempts
        .iter()
        .map(|a| a["attempt"].as_str().unwrap())
        .collect();
    for needed in [
        "mount",
        "unshare-user",
        "setns",
        "ptrace-host",
        "kill-host",
        "packet-socket",
        "raw-socket",
        "bpf",
        "keyctl",
        "perf-event-open",
        "userfaultfd",
        "reboot",
        "kexec",
        "module-load",
        "write-outside",
        "read-host-secret",
        "chroot",
        "mknod",
        "sethostname",
        "host-loopback",
        "setuid-binary",
        "tiocsti",
        // The red team's findings and their neighbours.
        "inherited-fd",
        "native-aio",
        "init-cmdline-host-path",
        "mountinfo-host-path",
        "init-exe",
        "init-environ",
        "init-maps",
        "root-parent",
        "chmod-setuid",
        "create-setuid",
        "openat2",
        "fsopen",
        "open-tree",
        "mount-setattr",
        "umount-proc",
        "pidfd-getfd-init",
        "clone3-newuser",
        "syslog",
        "iopl",
        "realtime-scheduling",
        "oom-score-adj",
        "raise-hard-rlimit",
        "socket-vsock",
        "socket-netlink-netfilter",
        "socket-alg",
        "host-abstract-socket",
        "core-pattern",
        "kcore",
    ] {
        assert!(
            names.contains(&needed),
            "attempt {needed} is part of the suite"
        );
    }

    // And from the host: nothing happened.
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the host process survived"
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        hostname_before
    );
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "no connection reached the host"
    );
    assert_eq!(
        abstract_listener.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "nothing reached the host's abstract socket"
    );
    assert!(!text.contains("osvm-host-secret-4711"));
}

#[test]
fn readonly_root_leaves_only_tmp_data_and_writable_binds_writable() {
    if !sandbox_available("readonly") {
        return;
    }
    let state = StateDir::new("ro");
    let rw = state.path.join("rw");
    let ro = state.path.join("ro");
    for d in [&rw, &ro] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let script = "set -e; echo a > /tmp/a; echo b > /data/b; echo c > /rw/c; \
                  if echo x > /ro/x 2>/dev/null; then exit 11; fi; \
                  if echo x > /new 2>/dev/null; then exit 12; fi; \
                  if echo x > /usr/x 2>/dev/null; then exit 13; fi; echo done";
    let out = state
        .osvm()
        .args(["run", "-q", "--readonly-root", "--bind"])
        .arg(format!("{}:/rw:rw", rw.display()))
        .arg("--bind")
        .arg(format!("{}:/ro", ro.display()))
        .args(["--", "/bin/sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    assert_eq!(stdout(&out).trim(), "done");
    assert_eq!(
        std::fs::read_to_string(rw.join("c")).unwrap(),
        "c\n",
        "rw bind reaches the host"
    );
    assert!(!ro.join("x").exists());
}

/// `--user`: the command runs as that uid and gid of the sandbox's own ids, with no
/// capabilities; the sandbox's root-owned /data is not its to write, /tmp is; a bad id is a
/// usage error (exit code 2).
#[test]
fn user_runs_the_command_as_that_user_inside() {
    if !sandbox_available("user") {
        return;
    }
    let state = StateDir::new("user");
    let script = "id -u; id -g; grep CapEff /proc/self/status; echo x > /tmp/x && echo tmp-ok; \
                  if echo x > /data/x 2>/dev/null; then echo data-written; fi";
    let out = state
        .osvm()
        .args([
            "run", "-q", "--user", "1000:100", "--", "/bin/sh", "-c", script,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..2], ["1000", "100"], "{text}");
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(
        text.contains("tmp-ok") && !text.contains("data-written"),
        "{text}"
    );
    let bad = state
        .osvm()
        .args(["run", "-q", "--user", "70000", "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("0 to 65535"), "{}", stderr(&bad));
}

#[test]
fn landlock_limits_tcp_bind_to_the_listen_ports() {
    if !sandbox_available("landlock-bind") {
        return;
    }
    let state = StateDir::new("bind");
    let script = "import socket\n\
                  s = socket.socket(); s.bind(('127.0.0.1', 8080)); print('8080 ok')\n\
                  t = socket.socket()\n\
                  try:\n    t.bind(('127.0.0.1', 9090)); print('9090 bound')\n\
                  except OSError as e:\n    print('9090 denied', e.errno)\n";
    let out = state
        .osvm()
        .args([
            "run", "-q", "--listen", "8080", "--", "python3", "-c", script,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("8080 ok"), "{text}");
    assert!(
        text.contains("9090 denied 13"),
        "binding an undeclared port fails with EACCES: {text}"
    );
}

#[test]
fn exit_codes_propagate_and_setup_failures_say_why() {
    if !sandbox_available("exit-codes") {
        return;
    }
    let state = StateDir::new("exit");
    let o = state
        .osvm()
        .args(["run", "-q", "--", "/bin/sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7));
    let o = state
        .osvm()
        .args(["run", "-q", "--", "no-such-program-osvm"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "osvm's own failure");
    assert!(
        stderr(&o).contains("no-such-program-osvm") && stderr(&o).contains("not found"),
        "{}",
        stderr(&o)
    );
    let o = state
        .osvm()
        .args(["run", "--bind", "/nonexistent-osvm:/x", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "a bad bind is the caller's mistake"
    );
    assert!(
        stderr(&o).contains("bind source /nonexistent-osvm does not exist"),
        "{}",
        stderr(&o)
    );
    let o = state
        .osvm()
        .args(["run", "--memory", "lots", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "invalid input");
    assert!(stderr(&o).contains("--memory lots"), "{}", stderr(&o));
}

#[test]
fn a_finished_run_leaves_no_cgroup_and_no_process() {
    if !sandbox_available("cleanup") {
        return;
    }
    let state = StateDir::new("cleanup");
    let o = state
        .osvm()
        .args(["run", "-q", "--memory", "32M", "--pids", "8", "--", "true"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let ids = state.instances();
    assert_eq!(ids.len(), 1);
    for dir in cgroup_dirs(&ids[0]) {
        assert!(!dir.exists(), "{} was removed", dir.display());
    }
    let record: Value = serde_json::from_slice(
        &std::fs::read(state.path.join("instances").join(&ids[0]).join("exit.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["status"]["code"], 0);
}

#[test]
fn the_run_report_says_what_confines_the_workload() {
    if !sandbox_available("confinement-report") {
        return;
    }
    let state = StateDir::new("report");
    let o = state
        .osvm()
        .args(["-o", "json", "run", "-q", "--listen", "8080", "--", "true"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &doc["confinement"];
    assert_eq!(c["capabilities"], "none (bounding set empty)");
    assert!(
        c["seccomp"].as_str().unwrap().starts_with("allowlist of"),
        "{c}"
    );
    assert!(c["uid map"].as_str().unwrap().starts_with("0 "), "{c}");
    match osvm_sandbox::host::landlock_abi() {
        Ok(abi) if abi >= 6 => {
            assert_eq!(
                c["landlock"], "fully enforced",
                "kernel ABI {abi} covers every right osvm asks for"
            );
            assert_eq!(c["tcp bind"], "only the declared listen ports (Landlock)");
        }
        Ok(abi) => skip(
            "landlock",
            "confinement-report/landlock",
            &format!("Landlock ABI {abi} < 6; the report says {}", c["landlock"]),
        ),
        Err(e) => skip(
            "landlock",
            "confinement-report/landlock",
            &format!("no Landlock ({e}); the report says {}", c["landlock"]),
        ),
    }
}

#[test]
fn ordinary_services_run_under_the_allowlist() {
    if !sandbox_available("services") {
        return;
    }
    let state = StateDir::new("services");
    // A multi-threaded tokio server with 50 clients of its own.
    let out = run_probe(&state, &[], &["tokio"]);
    assert!(
        out.status.success(),
        "tokio under seccomp: {} {}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stdout(&out).trim(), "tokio ok 50");
    // python3: threads, sockets and an HTTP round trip through http.server.
    let script = "import http.server, threading, urllib.request\n\
                  s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n\
                  threading.Thread(target=s.serve_forever, daemon=True).start()\n\
                  r = urllib.request.urlopen('http://127.0.0.1:%d/' % s.server_port)\n\
                  print('python', r.status)\n";
    let o = state
        .osvm()
        .args(["run", "-q", "--", "python3", "-c", script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "python 200");
    // busybox, if installed: a shell pipeline with forks.
    if std::path::Path::new("/bin/busybox").exists() {
        let o = state
            .osvm()
            .args([
                "run",
                "-q",
                "--",
                "busybox",
                "sh",
                "-c",
                "echo a b c | busybox wc -w",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o).trim(), "3");
    } else {
        skip(
            "busybox",
            "services/busybox",
            "/bin/busybox missing (busybox-static); the busybox part did not run",
        );
    }
}

#[test]
fn a_rootfs_directory_replaces_the_host_view() {
    if !sandbox_available("rootfs") {
        return;
    }
    if !std::path::Path::new("/bin/busybox").exists() {
        skip(
            "busybox",
            "rootfs",
            "needs the static /bin/busybox (Debian busybox-static)",
        );
        return;
    }
    let state = StateDir::new("rootfs");
    let root = state.path.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for d in [&root, &root.join("bin")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let o = state
        .osvm()
        .arg("run")
        .arg("-q")
        .arg("--rootfs")
        .arg(&root)
        .args(["--", "/bin/busybox", "sh", "-c", "/bin/busybox ls / | /bin/busybox tr '\\n' ' '; /bin/busybox grep Seccomp: /proc/self/status"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.starts_with("bin data dev proc tmp "),
        "only the rootfs's own entries: {text}"
    );
    assert!(text.contains("Seccomp:\t2"), "{text}");

    // A rootfs without the mount points osvm needs is refused with the reason.
    std::fs::remove_dir(root.join("tmp")).unwrap();
    let o = state
        .osvm()
        .arg("run")
        .arg("-q")
        .arg("--rootfs")
        .arg(&root)
        .args(["--", "/bin/busybox", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("has no /tmp directory"),
        "{}",
        stderr(&o)
    );

    // A root the monitor cannot id-map (an overlay mount, on kernels that refuse that): the
    // error says so, rather than that "the monitor went away" (init's view of the same end,
    // which used to be reported in its place).
    std::fs::create_dir(root.join("tmp")).unwrap();
    let (upper, work, merged) = (
        state.path.join("upper"),
        state.path.join("work"),
        state.path.join("merged"),
    );
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(
            format!(
                "lowerdir={},upperdir={},workdir={}",
                root.display(),
                upper.display(),
                work.display()
            )
            .as_str(),
        ),
    )
    .unwrap();
    let o = state
        .osvm()
        .arg("run")
        .arg("-q")
        .arg("--rootfs")
        .arg(&merged)
        .args(["--", "/bin/busybox", "true"])
        .output()
        .unwrap();
    let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    if !o.status.success() {
        let err = stderr(&o);
        assert!(
            err.contains("id-map the rootfs") && !err.contains("the monitor went away"),
            "{err}"
        );
    }
}

#[test]
fn open_files_limit_is_the_workloads_rlimit() {
    if !sandbox_available("rlimit") {
        return;
    }
    let state = StateDir::new("rlimit");
    let o = state
        .osvm()
        .args([
            "run",
            "-q",
            "--open-files",
            "64",
            "--",
            "/bin/sh",
            "-c",
            "ulimit -n",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "64");
}

#[test]
fn rm_removes_the_instance_and_keeps_the_data() {
    if !sandbox_available("rm") {
        return;
    }
    let state = StateDir::new("rm");
    let keeper = |command: &[&str]| {
        state
            .osvm()
            .args(["run", "-q", "--rm", "--name", "keeper", "--"])
            .args(command)
            .output()
            .unwrap()
    };
    let o = keeper(&["/bin/sh", "-c", "echo kept > /data/file"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(state.instances().is_empty(), "instance directory removed");
    assert!(
        state.path.join("data/run/keeper.img").is_file(),
        "the component's volume survives"
    );
    let again = keeper(&["/bin/cat", "/data/file"]);
    assert_eq!(stdout(&again), "kept\n", "{}", stderr(&again));
}

#[test]
fn denied_syscalls_answer_eperm_and_ones_newer_than_the_list_enosys() {
    if !sandbox_available("seccomp-errnos") {
        return;
    }
    let state = StateDir::new("errnos");
    // mount (165) is denied; statmount (457) and 500 are newer than the allowlist, so a libc can
    // fall back; clone3 (435) answers ENOSYS so glibc uses clone.
    let script = "import ctypes\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  for nr in (165, 457, 500, 435):\n    \
                      r = libc.syscall(nr, 0, 0, 0, 0, 0)\n    \
                      print(nr, r, ctypes.get_errno())\n";
    let o = state
        .osvm()
        .args(["run", "-q", "--", "python3", "-c", script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "165 -1 1\n457 -1 38\n500 -1 38\n435 -1 38\n");
}

#[test]
fn stdin_reaches_the_workload_only_with_interactive() {
    if !sandbox_available("stdin") {
        return;
    }
    use std::io::Write;
    let state = StateDir::new("stdin");
    let run = |interactive: bool| {
        let mut cmd = state.osvm();
        cmd.args(["run", "-q", "--rm"]);
        if interactive {
            cmd.arg("-i");
        }
        let mut child = cmd
            .args(["--", "/bin/sh", "-c", "wc -l"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"one\ntwo\nthree\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        stdout(&out).trim().to_string()
    };
    assert_eq!(run(true), "3");
    assert_eq!(run(false), "0", "without -i the workload reads /dev/null");
}

/// The process that started a sandbox dies by SIGKILL (as a crashed daemon would); the sandbox
/// keeps running, and a new process adopts it, reads its usage, stops it and gets its end.
#[test]
fn a_sandbox_outlives_its_starter_and_is_adopted_again() {
    if !sandbox_available("adopt") {
        return;
    }
    use osvm_core::Instance;
    let state = StateDir::new("adopt");
    let mut starter = state
        .osvm()
        .args([
            "run", "-q", "--name", "orphan", "--memory", "64M", "--", "sleep", "60",
        ])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let id = loop {
        if let Some(id) = state.instances().into_iter().next()
            && state
                .path
                .join("instances")
                .join(&id)
                .join("running.json")
                .exists()
        {
            break id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sandbox did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    starter.kill().unwrap();
    starter.wait().unwrap();

    let mut config = osvm_sandbox::SandboxConfig::new(osvm_bin());
    config.state_dir = state.path.clone();
    let runtime = osvm_sandbox::SandboxRuntime::new(config);
    let instance = match runtime.adopt(&id).unwrap() {
        osvm_sandbox::Adopted::Running(instance) => instance,
        osvm_sandbox::Adopted::Ended(record) => {
            panic!("the sandbox died with its starter: {record:?}")
        }
    };
    assert_eq!(instance.name(), "orphan");
    let stats = instance.stats().unwrap();
    assert!(stats.pids >= 2, "init and sleep still run: {stats:?}");
    assert!(instance.try_wait().unwrap().is_none());
    let status = instance.stop(std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(
        status.signal,
        Some(15),
        "sleep ended by the forwarded SIGTERM: {status}"
    );
    for dir in cgroup_dirs(&id) {
        assert!(!dir.exists(), "{} removed", dir.display());
    }
    // Adopting an ended instance reports its recorded end.
    match runtime.adopt(&id).unwrap() {
        osvm_sandbox::Adopted::Ended(record) => assert_eq!(record.status, status),
        osvm_sandbox::Adopted::Running(_) => panic!("an ended sandbox cannot run"),
    }
}

/// A command run inside a running sandbox is as confined as its workload.
#[test]
fn exec_runs_a_command_inside_a_running_sandbox_equally_confined() {
    if !sandbox_available("exec") {
        return;
    }
    use osvm_core::Instance;
    use std::time::Duration;
    let state = StateDir::new("exec");
    let mut config = osvm_sandbox::SandboxConfig::new(osvm_bin());
    config.state_dir = state.path.clone();
    let runtime = osvm_sandbox::SandboxRuntime::new(config);
    let mut spec = osvm_core::LaunchSpec::new("execd", "sleep", vec!["30".into()]);
    spec.binds.push(osvm_core::BindMount {
        source: probe_dir(),
        target: "/probe".into(),
        writable: false,
    });
    spec.resources.pids = Some(16);
    let instance = runtime
        .start_sandbox(&spec, osvm_sandbox::StartOptions::default())
        .unwrap();
    let cmd = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();

    let out = instance
        .exec(
            &cmd(&["/probe/osvm-probe", "status"]),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(
        out.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["cap_eff"], "0000000000000000");
    assert_eq!(s["cap_bnd"], "0000000000000000");
    assert_eq!(s["no_new_privs"], "1");
    assert_eq!(s["seccomp"], "2");
    assert_eq!(s["hostname"], "execd");
    assert_eq!(s["interfaces"], serde_json::json!(["lo"]));
    assert_eq!(s["uid"], 0);
    let pids: Vec<u64> = s["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(
        pids.starts_with(&[1, 2]) && pids.len() == 3,
        "init, the workload and the probe: {pids:?}"
    );
    assert_eq!(
        instance.stats().unwrap().pids,
        2,
        "the exec'd command left the sandbox's cgroup with it"
    );

    let out = instance
        .exec(
            &cmd(&["/bin/sh", "-c", "echo oops >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(out.code, Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    let out = instance
        .exec(&cmd(&["sleep", "20"]), Duration::from_millis(500))
        .unwrap();
    assert!(out.timed_out && out.code.is_none());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while instance.stats().unwrap().pids > 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the timed-out command was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let err = instance
        .exec(&cmd(&["no-such-tool"]), Duration::from_secs(5))
        .unwrap_err();
    assert!(
        err.to_string().contains("`no-such-tool` was not found"),
        "{err}"
    );

    let status = instance.stop(Duration::from_secs(5)).unwrap();
    assert_eq!(status.signal, Some(15));
}

/// `osvm run --netns`: a sandbox on the hub network reaches what policy allows, is refused the
/// rest, and cannot reconfigure its network (no CAP_NET_ADMIN over the namespace it joined).
#[test]
fn a_sandbox_on_the_hub_network_is_held_to_policy_and_cannot_change_it() {
    use osvm_core::model::{ComponentKind, NetworkAccess};
    use osvm_core::stack::{PolicyAction, PolicyRule, Protocol};
    use osvm_net::hub::Hub;
    use osvm_net::ipam::Ipam;
    use osvm_net::ruleset::{Member, allowed};
    use std::os::fd::AsFd;

    if !sandbox_available("sandbox on the hub") {
        return;
    }
    if !std::path::Path::new("/bin/busybox").exists()
        || std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_err()
    {
        skip("hub", "sandbox on the hub", "needs /bin/busybox and nft");
        return;
    }
    struct Namespaces(Vec<String>);
    impl Drop for Namespaces {
        fn drop(&mut self) {
            for ns in &self.0 {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", ns])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
    let tag = std::process::id();
    let hub_name = format!("osvmt-shub-{tag}");
    let (ns_a, ns_b) = (format!("osvmt-sa-{tag}"), format!("osvmt-sb-{tag}"));
    let _guard = Namespaces(vec![hub_name.clone(), ns_a.clone(), ns_b.clone()]);
    let state = StateDir::new("hub-sandbox");
    let mut ipam = Ipam::open(
        &state.path.join("ipam.json"),
        "10.213.0.0".parse().unwrap(),
        16,
    )
    .unwrap();
    let hub = Hub::create(&hub_name).unwrap();
    let mut members = Vec::new();
    for (name, ns) in [("a", &ns_a), ("b", &ns_b)] {
        assert!(
            std::process::Command::new("ip")
                .args(["netns", "add", ns])
                .status()
                .unwrap()
                .success()
        );
        let block = ipam.allocate(name).unwrap();
        hub.attach(ns, &block).unwrap();
        members.push(Member {
            endpoint: osvm_policy::Endpoint::component(
                name,
                ComponentKind::Service,
                NetworkAccess::Internal,
            ),
            block,
            listen: vec![8080, 9090],
            service: None,
            mtls: false,
        });
    }
    // Listeners in b, answering "hello".
    for port in [8080u16, 9090] {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{ns_b}");
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
            tx.send(()).unwrap();
            for s in l.incoming().flatten() {
                use std::io::Write;
                let _ = (&s).write_all(b"hello\n");
            }
        });
        rx.recv().unwrap();
    }
    let policy = osvm_policy::PolicySet::new(vec![PolicyRule {
        action: PolicyAction::Allow,
        from: "a".parse().unwrap(),
        to: "b".parse().unwrap(),
        ports: vec![8080],
        protocol: Protocol::Tcp,
    }]);
    let mut enforcer = osvm_net::enforce::Enforcer::new(hub);
    enforcer.apply(allowed(&policy, &members)).unwrap();

    let b = members[1].block.component_addr();
    let script = format!(
        "echo ALLOWED $(nc -w 2 {b} 8080 </dev/null); \
         nc -w 2 {b} 9090 </dev/null; echo DENIED rc=$?; \
         ip link set eth0 down; echo IFDOWN rc=$?; \
         nft flush ruleset; echo NFT rc=$?; \
         grep CapEff /proc/self/status"
    );
    let out = state
        .osvm()
        .args([
            "run",
            "--netns",
            &ns_a,
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("ALLOWED hello"), "{text}");
    assert!(text.contains("DENIED rc=1"), "{text}");
    assert!(
        text.contains("IFDOWN rc=") && !text.contains("IFDOWN rc=0"),
        "{text}"
    );
    assert!(
        text.contains("NFT rc=") && !text.contains("NFT rc=0"),
        "{text}"
    );
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    // The namespace is unchanged: eth0 still up, the hub's table intact.
    let link = std::process::Command::new("ip")
        .args(["-n", &ns_a, "link", "show", "eth0"])
        .output()
        .unwrap();
    assert!(stdout(&link).contains(",UP"), "{}", stdout(&link));
    assert!(enforcer.kernel_ruleset().unwrap().contains("allow_tcp"));
    enforcer.into_hub().destroy().unwrap();
}

/// Socket activation: a listening socket made outside is the workload's fd 3, with
/// `LISTEN_FDS=1` and `LISTEN_PID` its own pid; it accepts on it although the socket's network
/// namespace (the host's) is not its own, and other instances can be given the same socket.
#[test]
fn listening_sockets_are_handed_to_the_workload_the_systemd_way() {
    if !sandbox_available("socket activation") {
        return;
    }
    if !std::path::Path::new("/usr/bin/python3").exists() {
        skip("python3", "socket activation", "needs python3");
        return;
    }
    use osvm_core::Instance;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::time::Duration;
    let state = StateDir::new("listen-fds");
    let mut config = osvm_sandbox::SandboxConfig::new(osvm_bin());
    config.state_dir = state.path.clone();
    let runtime = osvm_sandbox::SandboxRuntime::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = "import os, socket\n\
        s = socket.socket(fileno=3)\n\
        for _ in range(2):\n\
        \x20   c, _ = s.accept()\n\
        \x20   c.sendall(('%s %s %s' % (os.environ['LISTEN_FDS'], os.environ['LISTEN_PID'], os.getpid())).encode())\n\
        \x20   c.close()\n";
    let spec = osvm_core::LaunchSpec::new(
        "activated",
        "/usr/bin/python3",
        vec!["-c".into(), script.into()],
    );
    let start = || {
        runtime
            .start_sandbox(
                &spec,
                osvm_sandbox::StartOptions {
                    fds: &[listener.as_fd()],
                    ..Default::default()
                },
            )
            .unwrap()
    };
    let first = start();
    let ask = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = String::new();
        if let Err(e) = s.read_to_string(&mut answer) {
            let log = std::fs::read_to_string(first.instance_dir().join("stderr.log"));
            panic!("no answer ({e}); the workload's stderr: {log:?}");
        }
        answer
    };
    let answer = ask();
    let fields: Vec<&str> = answer.split(' ').collect();
    assert_eq!(fields.len(), 3, "{answer:?}");
    assert_eq!(fields[0], "1", "LISTEN_FDS: {answer:?}");
    assert_eq!(
        fields[1], fields[2],
        "LISTEN_PID is the workload's pid: {answer:?}"
    );
    // A second instance given the same socket serves from the same accept queue.
    let second = start();
    for _ in 0..3 {
        assert!(ask().starts_with("1 "));
    }
    for instance in [&first, &second] {
        instance.stop(Duration::from_secs(5)).unwrap();
    }
    drop(listener);
}

/// A starter (a daemon) killed after it made a sandbox's control groups but before it wrote the
/// launch plan leaves groups nothing records; the next daemon's adoption of the instance it
/// meant to start removes them (found leaking under `kill -9` of a daemon starting twelve
/// components at once).
#[test]
fn adopting_a_start_that_died_before_its_plan_removes_the_groups_it_made() {
    if !sandbox_available("unrecorded groups") {
        return;
    }
    let state = StateDir::new("unrecorded");
    let hierarchy = osvm_sandbox::cgroup::Hierarchy::detect().unwrap();
    let mut config = osvm_sandbox::SandboxConfig::new(osvm_bin());
    config.state_dir = state.path.clone();
    let runtime = osvm_sandbox::SandboxRuntime::new(config);
    // The start's groups and instance directory, with `plan` as its plan.json (if any); the
    // adoption must say it never started and remove the groups.
    let ghost = |name: &str, plan: Option<&[u8]>| {
        let id = format!("{name}-{:08x}", std::process::id());
        let group = osvm_sandbox::cgroup::create(
            hierarchy,
            &std::path::Path::new(osvm_sandbox::cgroup::OSVM_PARENT).join(&id),
            &osvm_core::Resources::defaults(),
        )
        .unwrap();
        let dir = state.path.join("instances").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(plan) = plan {
            std::fs::write(dir.join("plan.json"), plan).unwrap();
        }
        assert!(
            cgroup_dirs(&id).iter().any(|d| d.exists()),
            "the groups exist"
        );
        let e = match runtime.adopt(&id) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{name}: adopted"),
        };
        assert!(e.contains("never started"), "{name}: {e}");
        let left: Vec<_> = cgroup_dirs(&id)
            .into_iter()
            .filter(|d| d.exists())
            .collect();
        let _ = group.remove();
        assert!(left.is_empty(), "{name}: groups left: {left:?}");
    };
    // Killed before it wrote the plan.
    ghost("ghost", None);
    // Killed while it wrote the plan (an osvm that wrote it in place left it empty).
    ghost("ghost2", Some(b""));
}

/// The one exception to "no capabilities", for osvm's own helpers (virtiofsd insists on setting
/// its capabilities itself): `helper_caps` leaves CAP_SETPCAP of the sandbox's user namespace
/// in every set and nothing else, still under no_new_privs and seccomp; without it (every
/// component) the sets are empty.
#[test]
fn a_helper_may_helper_caps_alone_and_a_workload_keeps_nothing() {
    if !sandbox_available("keep-setpcap") {
        return;
    }
    use osvm_core::Instance;
    let state = StateDir::new("keep-setpcap");
    let mut config = osvm_sandbox::SandboxConfig::new(osvm_bin());
    config.state_dir = state.path.clone();
    let runtime = osvm_sandbox::SandboxRuntime::new(config);
    let mut spec = osvm_core::LaunchSpec::new("helper", "/probe/osvm-probe", vec!["status".into()]);
    spec.binds.push(osvm_core::BindMount {
        source: probe_dir(),
        target: "/probe".into(),
        writable: false,
    });
    let status_of = |keep: bool| -> Value {
        let instance = runtime
            .start_sandbox(
                &spec,
                osvm_sandbox::StartOptions {
                    helper_caps: keep,
                    ..Default::default()
                },
            )
            .unwrap();
        let exit = instance.wait().unwrap();
        assert_eq!(exit.code, Some(0), "{exit:?}");
        let out = std::fs::read_to_string(instance.log_paths().0).unwrap();
        // `<time> stdout <line>`
        let json = out.lines().last().unwrap().splitn(3, ' ').nth(2).unwrap();
        serde_json::from_str(json).unwrap()
    };
    let helper = status_of(true);
    for set in ["cap_eff", "cap_prm", "cap_bnd", "cap_inh", "cap_amb"] {
        // Bits 8 (CAP_SETPCAP) and 18 (CAP_SYS_CHROOT).
        assert_eq!(helper[set], "0000000000040100", "{set}: {helper}");
    }
    assert_eq!(helper["no_new_privs"], "1");
    assert_eq!(helper["seccomp"], "2");
    let workload = status_of(false);
    for set in ["cap_eff", "cap_prm", "cap_bnd", "cap_inh", "cap_amb"] {
        assert_eq!(workload[set], "0000000000000000", "{set}: {workload}");
    }
}
