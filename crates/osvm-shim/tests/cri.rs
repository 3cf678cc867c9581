//! `containerd-shim-osvm-v1` under containerd's CRI plugin, driven over gRPC as kubelet drives
//! it (`osvm-cri-client`, see tests/support/cri.rs): pods with `runtime_handler = "osvm"`,
//! their containers, exec, stats, volumes, stop and removal; pods on a CNI bridge of the
//! test's own (no address on the host side: traffic stays between the test's pods).
//!
//! Needs root, containerd, umoci, skopeo, the CNI plugins, protoc and a static /bin/busybox
//! (`.ci/run` installs them); without them each test says why it skips.

use std::path::Path;
use std::time::{Duration, Instant};

mod support;

use support::cri::{CONTAINER_EXITED, CONTAINER_RUNNING, Cri, SANDBOX_NOTREADY, SANDBOX_READY};
use support::started_cri;

/// Waits until `id` has exited; returns its exit code.
fn exit_code(cri: &mut Cri, id: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = cri.status(id);
        if s["state"] == CONTAINER_EXITED {
            return s["exit_code"].as_i64().unwrap();
        }
        assert!(Instant::now() < deadline, "{id} did not exit: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `cond` for up to 10 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pids of processes whose command line is `cmdline` (NUL-separated).
fn processes(cmdline: &[u8]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == cmdline))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Mount points under a container's directory of the shim.
fn mounts_of(id: &str) -> Vec<String> {
    let dir = Path::new("/run/osvm-shim/k8s.io").join(id);
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|p| Path::new(p).starts_with(&dir))
        .collect()
}

/// kubelet's whole cycle of a pod on osvm: RunPodSandbox, a container that exits with a code
/// and logs, a container that runs (ExecSync, volumes, ContainerStats, StopContainer),
/// StopPodSandbox, RemovePodSandbox; each container confined as osvm confines; nothing left.
#[test]
fn a_pod_runs_its_containers_in_osvms_sandbox() {
    let Some(c) = started_cri("cri_flow") else {
        return;
    };
    let mut cri = Cri::connect(&c);
    let pod = cri
        .run_pod("flow", "osvm")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()));
    let status = cri.pod_status(&pod);
    assert_eq!(status["state"], SANDBOX_READY, "{status}");
    let pod_ip = status["network"]["ip"].as_str().unwrap_or_default();
    assert!(
        pod_ip.starts_with("10.252.0."),
        "the pod's CNI address: {status}"
    );
    assert_eq!(c.shims().len(), 1, "one shim for the pod");

    // A container that ends: its exit code and its log in kubelet's format.
    let once = cri
        .run(
            &pod,
            "once",
            &[
                "sh",
                "-c",
                "grep -E 'CapEff|NoNewPrivs|Seccomp:' /proc/self/status; exit 4",
            ],
            &[],
        )
        .unwrap_or_else(|e| panic!("CreateContainer/StartContainer: {e}\n{}", c.log()));
    assert_eq!(exit_code(&mut cri, &once), 4);
    let log = std::fs::read_to_string(cri.logs.join("flow/once.log")).unwrap();
    for want in [
        "stdout F CapEff:\t0000000000000000",
        "stdout F NoNewPrivs:\t1",
        "stdout F Seccomp:\t2",
    ] {
        assert!(
            log.contains(want),
            "{want:?} in the container's log:\n{log}"
        );
    }

    // A container that runs, with volumes (hostPath, emptyDir, configMap: binds of kubelet's
    // directories), one writable, one not: exec (kubectl exec, exec probes), stats, stop.
    let (vol, cfg) = (c.dir.join("vol"), c.dir.join("cfg"));
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(cfg.join("in"), "setting\n").unwrap();
    let web = cri
        .run(
            &pod,
            "web",
            &["sleep", "602"],
            &[(&vol, "/vol", false), (&cfg, "/cfg", true)],
        )
        .unwrap();
    assert_eq!(cri.status(&web)["state"], CONTAINER_RUNNING);
    // Its control group is where CRI put it (linux.cgroupsPath: the pod's cgroup parent, as
    // kubelet gives it, and the container's id), in every hierarchy.
    let groups = processes(b"sleep\x00602\x00")
        .into_iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap())
        .collect::<Vec<_>>();
    let want = format!("/{}/flow/{web}", cri.cgroup_parent);
    assert_eq!(groups.len(), 1, "{groups:?}");
    // osvm's controllers (memory, cpu, cpuacct, pids on v1; the v2 group); others stay at the
    // root of their hierarchies, as osvm leaves them.
    let ours: Vec<&str> = groups[0]
        .lines()
        .filter(|l| {
            let controllers = l.split(':').nth(1).unwrap_or_default();
            controllers.is_empty()
                || controllers
                    .split(',')
                    .any(|c| ["memory", "cpu", "cpuacct", "pids"].contains(&c))
        })
        .collect();
    assert!(
        !ours.is_empty() && ours.iter().all(|l| l.ends_with(&want)),
        "{want} in {groups:?}"
    );
    assert_eq!(c.shims().len(), 1, "the pod's containers share its shim");
    let (code, out, err) =
        cri.exec_sync(&web, &["sh", "-c", "cat /etc/hosts; echo err >&2; exit 3"]);
    assert_eq!((code, err.as_str()), (3, "err\n"));
    let hosts = c
        .dir
        .join("root/io.containerd.grpc.v1.cri/sandboxes")
        .join(&pod)
        .join("hosts");
    assert_eq!(
        out,
        std::fs::read_to_string(&hosts).unwrap(),
        "the pod's /etc/hosts is CRI's (a bind)"
    );
    let (_, out, _) = cri.exec_sync(
        &web,
        &["grep", "-E", "CapEff|NoNewPrivs", "/proc/self/status"],
    );
    assert!(
        out.contains("CapEff:\t0000000000000000") && out.contains("NoNewPrivs:\t1"),
        "an exec is confined like the container: {out}"
    );
    let (code, out, _) = cri.exec_sync(
        &web,
        &[
            "sh",
            "-c",
            "echo written > /vol/out && cat /cfg/in && echo no > /cfg/in",
        ],
    );
    assert_eq!(out, "setting\n");
    assert_ne!(code, 0, "a read-only volume is read-only");
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "written\n"
    );
    assert_eq!(
        std::fs::read_to_string(cfg.join("in")).unwrap(),
        "setting\n"
    );
    let stats = cri.stats(&web);
    let memory = stats["memory"]["working_set_bytes"]["value"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        memory > 0,
        "the container's memory from its cgroup: {stats}"
    );
    cri.stop_container(&web, 5);
    assert_eq!(exit_code(&mut cri, &web), 143, "ended by SIGTERM");

    cri.stop_pod(&pod);
    assert_eq!(cri.pod_status(&pod)["state"], SANDBOX_NOTREADY);
    cri.remove_pod(&pod);
    assert!(cri.pods().is_empty(), "no pod left");
    eventually("the pod's shim exits", || c.shims().is_empty());
    for id in [&pod, &once, &web] {
        assert!(mounts_of(id).is_empty(), "{id}'s root is unmounted");
        assert!(!Path::new("/run/osvm-shim/k8s.io").join(id).exists());
    }
}

/// Two containers of one pod reach each other on localhost; a container of another pod does
/// not (its localhost is its own pod's), though it reaches the first pod at its pod address.
#[test]
fn a_pods_containers_share_localhost_and_no_other_pod_does() {
    let Some(c) = started_cri("cri_localhost") else {
        return;
    };
    let mut cri = Cri::connect(&c);
    let pod_a = cri.run_pod("pod-a", "osvm").unwrap();
    let pod_b = cri.run_pod("pod-b", "osvm").unwrap();
    assert_eq!(c.shims().len(), 2, "a shim per pod");
    cri.run(
        &pod_a,
        "server",
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/www && echo pod-a > /tmp/www/index.html && \
             exec httpd -f -p 8080 -h /tmp/www",
        ],
        &[],
    )
    .unwrap();
    let neighbour = cri
        .run(&pod_a, "neighbour", &["sleep", "600"], &[])
        .unwrap();
    let stranger = cri.run(&pod_b, "stranger", &["sleep", "600"], &[]).unwrap();
    // (busybox's wget crashes with -T; ExecSync's timeout bounds it instead.)
    let fetch = |cri: &mut Cri, from: &str, host: &str| {
        let url = format!("http://{host}:8080/");
        let (code, out, _) = cri.exec_sync(from, &["wget", "-q", "-O", "-", &url]);
        (code, out)
    };
    // The server may take a moment to listen.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetch(&mut cri, &neighbour, "127.0.0.1") != (0, "pod-a\n".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "the pod's neighbour never got an answer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out) = fetch(&mut cri, &stranger, "127.0.0.1");
    assert_ne!(code, 0, "another pod's localhost is its own: {out}");
    let ip = cri.pod_status(&pod_a)["network"]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        fetch(&mut cri, &stranger, &ip),
        (0, "pod-a\n".to_owned()),
        "the pod network (CNI) is the pods' way to each other"
    );
    for p in [&pod_a, &pod_b] {
        cri.stop_pod(p);
        cri.remove_pod(p);
    }
    eventually("the pods' shims exit", || c.shims().is_empty());
}

/// runAsUser and runAsGroup: the container's process (and an exec in it) runs as that user
/// inside its user namespace, without capabilities: it cannot write the image's root-owned
/// files, it can write /tmp; its host uid is the sandbox's range, never the host's 1000.
#[test]
fn a_container_runs_as_the_user_the_pod_asks_for() {
    let Some(c) = started_cri("cri_user") else {
        return;
    };
    let mut cri = Cri::connect(&c);
    let pod = cri.run_pod("users", "osvm").unwrap();
    let id = cri
        .run_as(&pod, "app", &["sleep", "601"], &[], Some((1000, 1000)))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let (code, out, err) = cri.exec_sync(
        &id,
        &[
            "sh",
            "-c",
            "id -u; id -g; grep -E '^(Uid|Gid|CapEff):' /proc/self/status; \
             echo x > /tmp/ok && echo tmp-ok; echo x > /bin/nope || echo image-refused",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["1000", "1000"], "{out}");
    assert!(out.contains("Uid:\t1000\t1000\t1000\t1000"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(
        out.contains("tmp-ok") && out.contains("image-refused"),
        "{out}{err}"
    );
    // On the host: the sleep (601: no other test runs it) runs as a uid of the sandbox's
    // range, not 1000.
    let host_uids: Vec<u32> = processes(b"sleep\x00601\x00")
        .into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let uid = status.lines().find(|l| l.starts_with("Uid:"))?;
            uid.split_whitespace().nth(1)?.parse().ok()
        })
        .collect();
    assert!(
        !host_uids.is_empty() && host_uids.iter().all(|u| *u > 65535 && u % 65536 == 1000),
        "{host_uids:?}"
    );
    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
}
