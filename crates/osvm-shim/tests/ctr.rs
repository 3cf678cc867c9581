//! `containerd-shim-osvm-v1` under a real containerd (Debian's 1.6), driven with `ctr` as a
//! user would: a private containerd (its own root, state and socket under a temp directory,
//! the shim on its PATH), a busybox image built locally with umoci and imported, and
//! containers run with `--runtime io.containerd.osvm.v1`.
//!
//! Needs root, containerd, ctr, umoci, skopeo and a static /bin/busybox (`.ci/run` installs
//! them); without them each test says why it skips.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod support;

use support::{IMAGE, RUNTIME, ok, run, started};

/// A container runs in osvm's sandbox: its output reaches `ctr`, its exit code is ctr's, and
/// inside it has no capabilities, no_new_privs and a seccomp filter; nothing is left after.
#[test]
fn a_container_runs_confined_and_its_exit_code_comes_back() {
    let Some(c) = started("confined") else {
        return;
    };
    let o = run(&mut c.run(
        &["--rm"],
        "confined",
        &[
            "/bin/sh",
            "-c",
            "echo hello from osvm; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; mkdir -p /etc && echo written > /etc/osvm-test && cat /etc/osvm-test; stat -c 'owner %u' /bin/busybox; exit 4",
        ],
    ));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(4),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("hello from osvm"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // The image's files are the container root's own (its root is id-mapped): it writes /etc.
    assert!(out.contains("written"), "{out}");
    assert!(out.contains("owner 0"), "{out}");
    // Nothing left: no task, no container, no shim, no mount.
    assert!(ok(c.ctr().args(["task", "ls", "-q"])).trim().is_empty());
    assert!(
        ok(c.ctr().args(["container", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.shims().is_empty() {
        assert!(Instant::now() < deadline, "shims left: {:?}", c.shims());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("/run/osvm-shim/{}", c.namespace)),
        "{mounts}"
    );
}

/// `ctr task kill` with TERM, KILL and HUP: the foreground `ctr run` ends with 143, 137 and
/// 129; meanwhile `task ls` says RUNNING; `ctr events` saw create, start, exit and delete.
#[test]
fn signals_end_a_container_with_the_shells_codes_and_events_are_published() {
    let Some(c) = started("signals") else {
        return;
    };
    let mut events = c
        .ctr()
        .arg("events")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for (signal, code) in [("TERM", 143), ("KILL", 137), ("HUP", 129)] {
        let id = format!("sig-{}", signal.to_lowercase());
        let mut fg = c
            .run(&["--rm"], &id, &["/bin/sleep", "300"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ls = ok(c.ctr().args(["task", "ls"]));
            if ls
                .lines()
                .any(|l| l.starts_with(&id) && l.contains("RUNNING"))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never ran: {ls}\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ok(c.ctr().args(["task", "kill", "--signal", signal, &id]));
        let status = fg.wait().unwrap();
        let mut err = String::new();
        fg.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert_eq!(status.code(), Some(code), "{signal}: {err}");
    }
    // The events of the last container, read until its exit and delete have come (bounded).
    let out = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let topic = |line: &str| -> Option<String> {
        line.contains("sig-hup")
            .then(|| line.split_whitespace().find(|w| w.starts_with("/tasks/")))
            .flatten()
            .map(str::to_owned)
    };
    let mut text = String::new();
    let mut topics: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(topics.iter().any(|t| t == "/tasks/exit")
        && topics.iter().any(|t| t == "/tasks/delete"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        topics.extend(topic(&line));
        text.push_str(&line);
        text.push('\n');
    }
    let _ = events.kill();
    let _ = events.wait();
    // Created, then started, then both ended and deleted. The exit may come after the delete:
    // the shim wakes `ctr run`'s wait before it publishes the exit (as containerd's runc shim
    // does), and `--rm` deletes at once.
    let first = |t: &str| topics.iter().position(|x| x == t);
    let (create, start, exit, delete) = (
        first("/tasks/create"),
        first("/tasks/start"),
        first("/tasks/exit"),
        first("/tasks/delete"),
    );
    assert!(
        matches!((create, start, exit, delete), (Some(c), Some(s), Some(e), Some(d)) if c < s && s < e && s < d),
        "events of sig-hup: {topics:?}\n{text}"
    );
}

/// What osvm cannot run is refused with a reason: a command that does not exist.
#[test]
fn what_osvm_cannot_run_is_refused_with_a_reason() {
    let Some(c) = started("refused") else {
        return;
    };
    let o = run(&mut c.run(&["--rm"], "nonexistent", &["/no/such/command"]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/no/such/command"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.shims().is_empty() {
        assert!(Instant::now() < deadline, "shims left: {:?}", c.shims());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ctr task metrics`: a running container's figures come from its sandbox's cgroup (its
/// memory limit is osvm's default, the spec asked for none); `ctr task ps` lists its
/// processes.
#[test]
fn a_running_containers_metrics_come_from_its_cgroup() {
    let Some(c) = started("metrics") else {
        return;
    };
    ok(&mut c.run(&["-d"], "metered", &["/bin/sleep", "300"]));
    let text = ok(c.ctr().args(["task", "metrics", "metered"]));
    let value = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    };
    assert!(value("pids.current").is_some_and(|n| n >= 1), "{text}");
    assert_eq!(value("pids.limit"), Some(4096), "{text}");
    assert!(value("memory.usage").is_some_and(|n| n > 0), "{text}");
    assert_eq!(value("memory.usage_limit"), Some(512 << 20), "{text}");
    // `ctr task ps`: every process of the container (its cgroup's: the sandbox's init and the
    // sleep), the task's pid among them.
    let ls = ok(c.ctr().args(["task", "ls"]));
    let task_pid = ls
        .lines()
        .find(|l| l.starts_with("metered"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_owned();
    let ps = ok(c.ctr().args(["task", "ps", "metered"]));
    let pids: Vec<&str> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(pids.len() >= 2 && pids.contains(&task_pid.as_str()), "{ps}");
    for pid in &pids {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!cmd.is_empty(), "pid {pid} is a live process");
    }
    assert!(
        pids.iter()
            .any(|p| std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"/bin/sleep\x00300"))),
        "the sleep among {ps}"
    );
    ok(c.ctr()
        .args(["task", "kill", "--signal", "KILL", "metered"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok(c.ctr().args(["task", "ls"])).contains("STOPPED") {
        assert!(Instant::now() < deadline, "the container did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(c.ctr().args(["task", "delete", "metered"]));
    ok(c.ctr().args(["container", "rm", "metered"]));
}

/// `ctr task exec`: a process added to a running container joins its namespaces and is
/// confined like its init (no capabilities, seccomp); its output and exit code come back, and
/// it sees the container's files (a file the init wrote), not the host's.
#[test]
fn an_exec_runs_inside_the_container_confined_like_it() {
    let Some(c) = started("exec") else {
        return;
    };
    ok(&mut c.run(
        &["-d"],
        "execd",
        &[
            "/bin/sh",
            "-c",
            "echo from-init > /tmp/mark; exec /bin/sleep 300",
        ],
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    let o = loop {
        let o = run(c.ctr().args([
            "task",
            "exec",
            "--exec-id",
            "e1",
            "execd",
            "/bin/sh",
            "-c",
            "cat /tmp/mark; grep -E '^(CapEff|Seccomp):' /proc/self/status; exit 3",
        ]));
        if String::from_utf8_lossy(&o.stdout).contains("from-init") || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("from-init"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // Its own working directory and user (containerd's exec process), the container's
    // environment; the init's working directory is the spec's `/`.
    let out = ok(c.ctr().args([
        "task",
        "exec",
        "--exec-id",
        "e4",
        "--cwd",
        "/bin",
        "--user",
        "1000",
        "execd",
        "/bin/sh",
        "-c",
        "pwd; id -u; echo $PATH; cat /proc/1/cmdline >/dev/null; ls -l /proc/self/cwd",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["/bin", "1000"], "{out}");
    assert!(lines[2].contains("/usr/bin"), "the container's PATH: {out}");
    let o = ok(c.ctr().args([
        "task",
        "exec",
        "--exec-id",
        "e5",
        "execd",
        "/bin/sh",
        "-c",
        "pwd",
    ]));
    assert_eq!(o.trim(), "/", "the spec's cwd");
    // A command the container does not have: a failure, with the reason.
    let o = run(c
        .ctr()
        .args(["task", "exec", "--exec-id", "e2", "execd", "/no/such/tool"]));
    assert!(!o.status.success());
    // An exec is signalled by its own id; the container goes on.
    let mut long = c
        .ctr()
        .args([
            "task",
            "exec",
            "--exec-id",
            "e3",
            "execd",
            "/bin/sleep",
            "300",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // A kill before the exec has started reaches nothing: try until the exec ends.
    while long.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the exec was not ended by its kill"
        );
        let _ = run(c.ctr().args([
            "task",
            "kill",
            "--exec-id",
            "e3",
            "--signal",
            "TERM",
            "execd",
        ]));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(long.wait().unwrap().code(), Some(143));
    assert!(ok(c.ctr().args(["task", "ls"])).contains("RUNNING"));
    ok(c.ctr().args(["task", "kill", "--signal", "KILL", "execd"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok(c.ctr().args(["task", "ls"])).contains("STOPPED") {
        assert!(Instant::now() < deadline, "the container did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(c.ctr().args(["task", "delete", "execd"]));
    ok(c.ctr().args(["container", "rm", "execd"]));
}

/// Asking for more than osvm gives: `--privileged` (every capability and the host's devices)
/// is refused, naming the field; `--net-host` (no network namespace in the spec) gets the
/// sandbox's own network, loopback only, not the host's interfaces.
#[test]
fn a_spec_may_narrow_the_sandbox_never_widen_it() {
    let Some(c) = started("widen") else {
        return;
    };
    let o = run(&mut c.run(&["--rm", "--privileged"], "privileged", &["/bin/true"]));
    assert!(!o.status.success(), "a privileged container ran");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("linux.devices"), "{err}");
    let o = run(&mut c.run(
        &["--rm", "--net-host"],
        "nethost",
        &["/bin/sh", "-c", "cat /proc/net/dev"],
    ));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let interfaces: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(str::trim))
        .collect();
    assert_eq!(interfaces, ["lo"], "{out}");
}

/// A shim killed under a running container: containerd calls `delete` on a fresh copy, which
/// stops the container's sandbox (its monitor would outlive the shim) and unmounts its root.
#[test]
fn a_container_does_not_outlive_its_killed_shim() {
    let Some(c) = started("orphan") else {
        return;
    };
    ok(&mut c.run(&["-d"], "orphan", &["/bin/sleep", "300"]));
    let ls = ok(c.ctr().args(["task", "ls"]));
    let pid: i32 = ls
        .lines()
        .find(|l| l.starts_with("orphan"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("{ls}"));
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    for shim in c.shims() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    let dir = Path::new("/run/osvm-shim")
        .join(&c.namespace)
        .join("orphan");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists() || dir.exists() {
        assert!(
            Instant::now() < deadline,
            "after the shim's death: container pid {pid} alive {}, {} exists {}",
            Path::new(&format!("/proc/{pid}")).exists(),
            dir.display(),
            dir.exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = run(c.ctr().args(["task", "delete", "orphan"]));
    ok(c.ctr().args(["container", "rm", "orphan"]));
}

/// Pods as CRI marks them (annotations), made with `ctr` so that a spec can lie: a container
/// joins its own pod's network namespace only. Naming another pod's, the host's, or a pod this
/// shim does not serve is refused, naming the field; a container outside a pod joins none.
#[test]
fn a_container_joins_no_network_namespace_but_its_pods() {
    let Some(c) = started("podnet") else {
        return;
    };
    let cri = |kind: &str, pod: &str| {
        vec![
            "--annotation".to_owned(),
            format!("io.kubernetes.cri.container-type={kind}"),
            "--annotation".to_owned(),
            format!("io.kubernetes.cri.sandbox-id={pod}"),
        ]
    };
    let pid_of = |id: &str| -> u32 {
        let ls = ok(c.ctr().args(["task", "ls"]));
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("{id} in {ls}"))
    };
    for pod in ["pod-p", "pod-q"] {
        let args = cri("sandbox", pod);
        let args: Vec<&str> = std::iter::once("-d")
            .chain(args.iter().map(String::as_str))
            .collect();
        ok(&mut c.run(&args, pod, &["/bin/sleep", "300"]));
    }
    let (p, q) = (pid_of("pod-p"), pid_of("pod-q"));
    let refused = |extra: Vec<String>, id: &str, why: &str| {
        let extra: Vec<&str> = ["--rm"]
            .into_iter()
            .chain(extra.iter().map(String::as_str))
            .collect();
        let o = run(&mut c.run(&extra, id, &["/bin/true"]));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{id} ran");
        assert!(err.contains(why), "{id}: {why:?} in {err}");
    };
    let with_ns = |path: String| vec!["--with-ns".to_owned(), format!("network:{path}")];
    // Claims pod P, names Q's namespace.
    refused(
        [
            cri("container", "pod-p"),
            with_ns(format!("/proc/{q}/ns/net")),
        ]
        .concat(),
        "liar",
        "not the network namespace of pod pod-p",
    );
    // Outside any pod, names P's.
    refused(
        with_ns(format!("/proc/{p}/ns/net")),
        "plain",
        "only a pod's containers join a network namespace",
    );
    // A pod sandbox asking for the host's.
    refused(
        [
            cri("sandbox", "pod-h"),
            with_ns(format!("/proc/{}/ns/net", std::process::id())),
        ]
        .concat(),
        "pod-h",
        "the host's network namespace",
    );
    // A pod this shim does not serve (its own shim, with no such pod).
    refused(
        cri("container", "pod-none"),
        "stray",
        "pod sandbox pod-none is not served by this shim",
    );
    // Its own pod's: joined, with or without the path (CRI gives it; a host-network pod's
    // containers do not name one).
    let p_net = std::fs::read_link(format!("/proc/{p}/ns/net")).unwrap();
    for (id, extra) in [
        (
            "member",
            [
                cri("container", "pod-p"),
                with_ns(format!("/proc/{p}/ns/net")),
            ]
            .concat(),
        ),
        ("member2", cri("container", "pod-p")),
    ] {
        let extra: Vec<&str> = ["--rm"]
            .into_iter()
            .chain(extra.iter().map(String::as_str))
            .collect();
        let out = ok(&mut c.run(&extra, id, &["/bin/ls", "-l", "/proc/self/ns/net"]));
        assert!(
            out.trim_end().ends_with(&*p_net.to_string_lossy()),
            "{id} in {p_net:?}: {out}"
        );
    }
    for pod in ["pod-p", "pod-q"] {
        ok(c.ctr().args(["task", "kill", "-s", "KILL", pod]));
    }
}

/// containerd's default snapshotter: the root is an overlay the sandbox mounts itself over its
/// id-mapped layers (the kernel id-maps layers, not overlay mounts). The container's root owns
/// its image's files and writes them (copy-up into its own upper layer, root's on disk); the
/// image's layer is not changed; no mount of it appears on the host.
#[test]
fn an_overlay_snapshot_is_the_containers_root() {
    let Some(c) = started("overlay") else {
        return;
    };
    let mut cmd = c.ctr();
    cmd.args([
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "layered",
        "/bin/sleep",
        "300",
    ]);
    ok(&mut cmd);
    let exec = |args: &[&str]| {
        ok(c.ctr()
            .args(["task", "exec", "--exec-id", "x", "layered"])
            .args(args))
    };
    let out = exec(&[
        "/bin/sh",
        "-c",
        "id -u; ls -ln /bin/busybox; echo new > /bin/new && mkdir /etc && echo ok",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "{out}");
    assert!(
        lines[1].split_whitespace().nth(2) == Some("0"),
        "the image's files are the container root's: {out}"
    );
    assert_eq!(lines.last(), Some(&"ok"), "{out}");
    // On the host: the writes are in the container's upper layer, as root; no layer below has
    // them; nothing is mounted on the host for it.
    let snapshots = c
        .dir
        .join("root/io.containerd.snapshotter.v1.overlayfs/snapshots");
    let mut upper = Vec::new();
    let mut lower_has = false;
    for snap in std::fs::read_dir(&snapshots).unwrap().flatten() {
        let new = snap.path().join("fs/bin/new");
        if new.exists() {
            upper.push(new);
        } else if snap.path().join("fs/bin/busybox").exists() {
            lower_has = true;
        }
    }
    assert_eq!(upper.len(), 1, "one upper layer has the write: {upper:?}");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&upper[0]).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "written as the sandbox's root, 0 on disk"
    );
    assert!(lower_has, "the image's layer is there, without the write");
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounted.contains(&*snapshots.to_string_lossy()),
        "no overlay of the container on the host: {mounted}"
    );
    ok(c.ctr().args(["task", "kill", "-s", "KILL", "layered"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while run(c.ctr().args(["task", "delete", "layered"]))
        .status
        .code()
        != Some(0)
    {
        assert!(Instant::now() < deadline, "the task did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(c.ctr().args(["container", "rm", "layered"]));
}

/// A container never shares another's control group nor nests in it: `--cgroup` naming a
/// running container's group or one below it (its limits would be shared, and its end would
/// kill the other's processes) is refused, and the other runs on.
#[test]
fn a_container_cannot_take_another_containers_cgroup() {
    let Some(c) = started("cgsteal") else {
        return;
    };
    ok(&mut c.run(&["-d"], "owner", &["/bin/sleep", "300"]));
    let group = format!("/{}/owner", c.namespace);
    let o = run(&mut c.run(&["--rm", "--cgroup", &group], "thief", &["/bin/true"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "thief ran in {group}");
    assert!(err.contains("must be new"), "{err}");
    // Nor nests in it (it would be charged to the other's limits and end with it).
    let inside = format!("{group}/sub");
    let o = run(&mut c.run(&["--rm", "--cgroup", &inside], "nester", &["/bin/true"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "nester ran in {inside}");
    assert!(err.contains("has processes"), "{err}");
    let ls = ok(c.ctr().args(["task", "ls"]));
    assert!(
        ls.lines()
            .any(|l| l.starts_with("owner") && l.contains("RUNNING")),
        "{ls}"
    );
    ok(c.ctr().args(["task", "kill", "-s", "KILL", "owner"]));
}
