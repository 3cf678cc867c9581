//! The microVM runtime end to end, through a real daemon: real QEMU guests (TCG on hosts
//! without VMX/SVM) with osvm's agent as init, reached over the hub network path and over
//! vsock, stopped through the agent, their exit codes and output reported.
//!
//! Every test skips with a printed reason when the host lacks root, QEMU, the vsock backend,
//! the static agent or a guest kernel (fetched once per run through apt, shared by the tests).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use osvm_agent::proto::{self, Request, Response};
use serde_json::Value;

/// Where the shared guest kernel is fetched (`<dir>/kernels`), or why it cannot be.
static KERNELS: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);

fn fetch_kernel() -> Result<PathBuf, String> {
    let mut guard = KERNELS.lock().unwrap();
    if let Some(r) = guard.as_ref() {
        return r.clone();
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("microvm-kernel");
    std::fs::create_dir_all(&dir).unwrap();
    let o = Command::new(osvm_bin())
        .arg("--state-dir")
        .arg(&dir)
        .args(["kernel", "fetch"])
        .output()
        .unwrap();
    let r = if o.status.success() {
        Ok(dir.join("kernels"))
    } else {
        Err(format!("`osvm kernel fetch` failed: {}", stderr(&o).trim()))
    };
    *guard = Some(r.clone());
    r
}

/// A state directory whose daemon can boot VMs, or `None` (skip printed).
fn vm_state(test: &str) -> Option<StateDir> {
    if !sandbox_available(test) {
        return None;
    }
    let which = |p: &str| osvm_guest::find_program(p).is_some();
    if !which("qemu-system-x86_64") {
        skip(
            "microvm",
            test,
            "needs qemu-system-x86_64 (Debian package qemu-system-x86)",
        );
        return None;
    }
    if !which("vhost-device-vsock") {
        skip(
            "microvm",
            test,
            "needs vhost-device-vsock (cargo install vhost-device-vsock@0.3.0)",
        );
        return None;
    }
    if let Err(e) = guest_agent() {
        skip("microvm", test, &e);
        return None;
    }
    let kernels = match fetch_kernel() {
        Ok(k) => k,
        Err(e) => {
            skip("microvm", test, &e);
            return None;
        }
    };
    let state = StateDir::new(test);
    std::os::unix::fs::symlink(&kernels, state.path.join("kernels")).unwrap();
    Some(state)
}

/// The VM facts (`vm.json`) of a component's current instance.
fn vm_facts(state: &StateDir, name: &str) -> Value {
    let id = status(state, name)["instance"]
        .as_str()
        .expect("running instance")
        .to_owned();
    let text = std::fs::read(state.path.join("instances").join(id).join("vm.json")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

fn www(state: &StateDir) -> PathBuf {
    let dir = state.path.join("www");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "hello from a microvm\n").unwrap();
    dir
}

#[test]
fn vm_serves_http_on_its_network_path_and_over_vsock_and_stops_gracefully() {
    let _turn = host_route_turn();
    const TEST: &str = "vm_http";
    if !hub_available(TEST) {
        return;
    }
    let Some(state) = vm_state(TEST) else {
        return;
    };
    let www = www(&state);
    let file = state.path.join("vm.toml");
    let port = free_port();
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "vmnet"
network = "hub"

[[component]]
name = "web"
runtime = "microvm"
command = "/bin/busybox"
args = ["httpd", "-f", "-v", "-p", "8080", "-h", "{www}"]
listen = [8080]
resources = {{ memory = "256M", cpus = 2 }}
microvm = {{ include = ["{www}"] }}
health = {{ http = "/", port = 8080 }}
restart = "never"
publish = [{{ port = 8080, host = "127.0.0.1:{port}" }}]

[[component]]
name = "cli"
command = "sleep"
args = ["3600"]

[[component]]
name = "other"
command = "sleep"
args = ["3600"]

[[policy]]
allow = {{ from = "cli", to = "web", ports = [8080] }}

[[policy]]
allow = {{ from = "world", to = "web", ports = [8080] }}
"#,
            www = www.display()
        ),
    )
    .unwrap();
    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_long(&state, "web healthy", |v| {
        v.len() == 3 && v.iter().all(|c| c["status"] == "running") && {
            view(v, "web")["health"]["state"] == "healthy"
        }
    });
    let net = hub_view(&state);
    let _guard = NetnsPrefixGuard(net.hub.trim_end_matches("hub").to_owned());
    let (cli, other) = (&net.netns["cli"], &net.netns["other"]);
    let web = SocketAddr::from((net.service["web"], 8080));

    // The network path: the hub's rules decide for the guest as for a process.
    let answer = http_get_in(cli, web).expect("cli may reach web");
    assert!(
        answer.contains("hello from a microvm"),
        "cli -> web answered: {answer}"
    );
    let denied = http_get_in(other, web);
    assert!(
        denied.is_err(),
        "other reached web without a policy: {denied:?}"
    );
    // Its published port, from the host: the guest serves it like a process would.
    let published = http_get_host(port).expect("the published port serves the host");
    assert!(published.contains("hello from a microvm"), "{published}");

    // vsock: the hybrid CONNECT to the agent's control port, then a forward to port 8080.
    // The accelerator, and on a host without VMX/SVM the TCG warning, in `osvm status`.
    let facts = vm_facts(&state, "web");
    let shown = status(&state, "web");
    assert_eq!(shown["runtime"], "microvm");
    assert_eq!(shown["vm"]["accel"], facts["accel"], "{shown}");
    if kvm_usable().is_err() {
        assert_eq!(facts["accel"], "tcg", "{facts}");
        let text = stdout(&run(state.osvm().args(["status", "web"])));
        assert!(
            text.contains("warning") && text.contains("software emulation"),
            "{text}"
        );
    }
    let id = status(&state, "web")["instance"]
        .as_str()
        .unwrap()
        .to_owned();
    let uds = state.path.join("instances").join(&id).join("run/vm.vsock");
    let mut s = osvm_microvm::vsock::connect(&uds, proto::CONTROL_PORT, Duration::from_secs(5))
        .expect("hybrid vsock connect");
    proto::write_msg(&mut s, &Request::Forward { port: 8080 }).unwrap();
    assert_eq!(proto::read_msg::<Response>(&mut s).unwrap(), Response::Ok);
    let answer = http_get(s).unwrap();
    assert!(
        answer.contains("hello from a microvm"),
        "over vsock: {answer}"
    );
    let mut s =
        osvm_microvm::vsock::connect(&uds, proto::CONTROL_PORT, Duration::from_secs(5)).unwrap();
    proto::write_msg(&mut s, &Request::Ping).unwrap();
    assert!(matches!(
        proto::read_msg::<Response>(&mut s).unwrap(),
        Response::Pong { .. }
    ));

    // Graceful stop: SIGTERM through the agent; httpd dies of it; reported as such.
    let o = run(state.osvm().args(["stop", "web"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let views = wait_long(&state, "web stopped", |v| {
        view(v, "web")["status"] == "stopped"
    });
    let exit = &view(&views, "web")["last_exit"];
    assert_eq!(exit["signal"], 15, "{exit}");
    let console = stdout(&run(state
        .osvm()
        .args(["logs", "web", "--stream", "console"])));
    assert!(
        console.contains("osvm-agent: workload started"),
        "console: {console}"
    );
    assert!(console.contains("signal Some(15)"), "console: {console}");
    let logs = stdout(&run(state.osvm().args(["logs", "web"])));
    assert!(logs.contains("response:200"), "workload logs: {logs}");
    assert!(
        !logs.contains("osvm-agent"),
        "the console is not mixed into the workload's logs: {logs}"
    );
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
    let left = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(format!(
            "(qemu-system-x86_64|vhost-device-vsock) .*{}",
            state.path.display()
        ))
        .output()
        .unwrap();
    assert!(
        stdout(&left).trim().is_empty(),
        "QEMU or the vsock backend outlived the stack: {}",
        stdout(&left)
    );
}

#[test]
fn guest_sees_only_its_image_and_reports_its_exit_code_and_output() {
    const TEST: &str = "vm_exit";
    let Some(state) = vm_state(TEST) else {
        return;
    };
    let marker = state.path.join("host-only-marker");
    std::fs::write(&marker, "secret").unwrap();
    let script = format!(
        "echo to-stdout; echo to-stderr >&2; \
         test -e {m} && echo HOST-FILE-VISIBLE; \
         echo pid1=$(cat /proc/1/cmdline); \
         echo procs=$(ls -d /proc/[0-9]* | wc -l); \
         ps -o comm | tr '\\n' ' '; echo; \
         exit 7",
        m = marker.display()
    );
    let file = state.path.join("job.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "vmjob"

[[component]]
name = "job"
runtime = "microvm"
command = "/bin/sh"
args = ["-c", '''{script}''']
restart = "never"
resources = {{ memory = "128M", cpus = 1 }}
"#
        ),
    )
    .unwrap();

    // Content-addressed: the same inputs give the same image, built once.
    let build = |state: &StateDir| -> Value {
        let o = run(state
            .osvm()
            .args(["-o", "json", "image", "build"])
            .arg(&file));
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()[0].clone()
    };
    let first = build(&state);
    let second = build(&state);
    assert_eq!(first["digest"], second["digest"]);
    assert_eq!(second["built"], false, "{second}");

    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    let views = wait_long(&state, "job ended", |v| {
        !v.is_empty() && view(v, "job")["last_exit"]["code"].is_number()
    });
    assert_eq!(view(&views, "job")["last_exit"]["code"], 7);
    let out = stdout(&run(state
        .osvm()
        .args(["logs", "job", "--stream", "stdout"])));
    let err = stdout(&run(state
        .osvm()
        .args(["logs", "job", "--stream", "stderr"])));
    assert!(
        out.contains("to-stdout") && !out.contains("to-stderr"),
        "{out}"
    );
    assert!(err.contains("to-stderr"), "{err}");
    assert!(!out.contains("HOST-FILE-VISIBLE"), "{out}");
    assert!(out.contains("pid1=/init"), "{out}");
    // The guest's own processes only: a handful (agent, shell, ps), none of the host's.
    let procs: usize = out
        .split("procs=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(procs < 120, "{procs} processes visible: {out}");
    for host in ["osvm", "qemu-system", "cargo", "vhost-device"] {
        assert!(!out.contains(host), "host process {host} visible: {out}");
    }
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
}

/// An image larger than the guest's memory can unpack is refused at start with the memory it
/// needs, instead of a guest that runs with files missing or cut short: the kernel unpacks the
/// initramfs into a root file system of about half the memory left beside the image, and stops
/// at the first file that does not fit, without failing the boot. (CI saw exactly that: a debug
/// build's 19 MiB program sorted before `/lib64`, and its loader was never unpacked.)
#[test]
fn an_image_too_big_for_its_guest_memory_is_refused_with_the_memory_it_needs() {
    const TEST: &str = "vm_too_big";
    let Some(state) = vm_state(TEST) else {
        return;
    };
    // 40 MiB of data can never fit in 128 MiB (archive and files are in memory at once, the
    // root may fill half of what is left): refused before a boot. 24 MiB might, by the
    // arithmetic alone; the guest kernel's own share makes it not fit: the guest boots, and
    // its agent finds no mark.
    let bulk = state.path.join("bulk.bin");
    std::fs::write(&bulk, vec![0x5a; 40 << 20]).unwrap();
    let bulk2 = state.path.join("bulk2.bin");
    std::fs::write(&bulk2, vec![0x5a; 24 << 20]).unwrap();
    let file = state.path.join("big.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "big"

[[component]]
name = "job"
runtime = "microvm"
command = "/bin/sh"
args = ["-c", "echo started"]
restart = "never"
resources = {{ memory = "128M", cpus = 1 }}
microvm = {{ include = ["{bulk}"], data_disk = false }}

[[component]]
name = "job2"
runtime = "microvm"
command = "/bin/sh"
args = ["-c", "echo started"]
restart = "never"
resources = {{ memory = "128M", cpus = 1 }}
microvm = {{ include = ["{bulk2}"], data_disk = false }}
"#,
            bulk = bulk.display(),
            bulk2 = bulk2.display()
        ),
    )
    .unwrap();
    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = Instant::now() + Duration::from_secs(180);
    let failure = |name: &str| loop {
        let events = stdout(&run(state.osvm().arg("events")));
        if let Some(line) = events
            .lines()
            .find(|l| l.contains(&format!("big/{name} start-failed")))
        {
            break (line.to_owned(), events);
        }
        assert!(
            Instant::now() < deadline,
            "no start failure of {name}: {events}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    for name in ["job", "job2"] {
        let (line, events) = failure(name);
        assert!(
            line.contains("does not fit in its memory")
                && line.contains("resources.memory")
                && line.contains("128 MiB of memory"),
            "{events}"
        );
        let out = stdout(&run(state
            .osvm()
            .args(["logs", name, "--stream", "stdout"])));
        assert!(
            !out.contains("started"),
            "{name}'s workload never runs: {out}"
        );
    }
    // The first was refused before a boot, the second after one.
    assert!(failure("job").0.contains("(not booted)"));
    assert!(
        failure("job2")
            .0
            .contains("(the guest booted and found it incomplete)")
    );
    // The failed guest's console is its log: the kernel's and the agent's word on it.
    let console = stdout(&run(state
        .osvm()
        .args(["logs", "job2", "--stream", "console"])));
    assert!(
        console.contains("Initramfs unpacking failed")
            && console.contains("the image did not unpack completely"),
        "{console}"
    );
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
}

/// Component `name`'s stdout log once `ok` holds for it (within 3 minutes: VMs boot under TCG
/// here), else a failure naming `what`.
fn wait_for_stdout(state: &StateDir, name: &str, what: &str, ok: &dyn Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = stdout(&run(state
            .osvm()
            .args(["logs", name, "--stream", "stdout"])));
        if ok(&out) {
            return out;
        }
        if Instant::now() > deadline {
            let events = stdout(&run(state.osvm().arg("events")));
            panic!("{what}: stdout {out:?}; events:\n{events}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A VM gets its identity at `/run/osvm/identity` as a process sandbox does (same files, same
/// modes), before its workload starts, and the renewed files when they change: a CA rotation
/// ends with the guest holding the new leaf the host issued and a bundle of one CA.
#[test]
fn a_vm_gets_its_identity_at_start_and_after_a_ca_rotation() {
    const TEST: &str = "vm_identity";
    let Some(state) = vm_state(TEST) else {
        return;
    };
    let file = state.path.join("vmid.toml");
    std::fs::write(
        &file,
        r#"
[stack]
name = "vmid"
trust_domain = "vmid.osvm"

[[component]]
name = "v"
runtime = "microvm"
command = "/bin/sh"
args = ["-c", "ls -ln /run/osvm/identity; while true; do echo id=$(sha256sum /run/osvm/identity/cert.pem | cut -c1-16) cas=$(grep -c 'BEGIN CERT' /run/osvm/identity/bundle.pem); sleep 1; done"]
restart = "never"
resources = { memory = "128M", cpus = 1 }
"#,
    )
    .unwrap();
    let host_id = || {
        let o = run(Command::new("sha256sum").arg(state.path.join("identities/vmid/v/cert.pem")));
        stdout(&o)[..16].to_owned()
    };
    let wait_for = |what: &str, ok: &dyn Fn(&str) -> bool| wait_for_stdout(&state, "v", what, ok);
    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = wait_for("the guest's first report", &|o| o.contains("id="));
    // The files and modes of a process sandbox: the key for its owner alone.
    let mode_of = |name: &str| {
        out.lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            // `<time> stdout <mode> <links> <uid> <gid> <size> ...`
            .map(|l| l.split_whitespace().nth(2).unwrap_or("").to_owned())
            .unwrap_or_else(|| panic!("no {name} in the listing: {out}"))
    };
    assert_eq!(mode_of("key.pem"), "-r--------", "{out}");
    for name in ["cert.pem", "bundle.pem", "crl.pem"] {
        assert_eq!(mode_of(name), "-r--r--r--", "{out}");
    }
    let first = host_id();
    assert!(
        out.contains(&format!("id={first} cas=1")),
        "host {first}: {out}"
    );

    let o = run(state
        .osvm()
        .args(["cert", "--trust-domain", "vmid.osvm", "ca", "rotate"]));
    assert!(o.status.success(), "{}", stderr(&o));
    // The new leaf, and the bundle with the new CA alone once the rotation is done.
    let out = wait_for("the new leaf in the guest", &|o| {
        let now = host_id();
        now != first && o.contains(&format!("id={now} cas=1"))
    });
    assert!(!out.contains("identity-delivery-failed"));
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
}

/// A VM's `/data` is the component's ext4 volume on a virtio disk: what one boot writes, the
/// next reads, across a restart and across `osvm down` and `up`; the image is the one a
/// process instance of the component would mount, sized by `resources.disk`. A stateless VM
/// (`data_disk = false`) gets none.
#[test]
fn a_vms_data_outlives_its_instances() {
    const TEST: &str = "vm_data";
    let Some(state) = vm_state(TEST) else {
        return;
    };
    let file = state.path.join("vmdata.toml");
    std::fs::write(
        &file,
        r#"
[stack]
name = "vmdata"

[[component]]
name = "d"
runtime = "microvm"
command = "/bin/sh"
args = ["-c", "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; sync; echo boot=$n; grep ' /data ' /proc/mounts; sleep 3600"]
restart = "never"
resources = { memory = "128M", cpus = 1, disk = "64M" }

# Stateless: no disk, so it can be hot-swapped.
[[component]]
name = "s"
runtime = "microvm"
command = "/bin/sh"
args = ["-c", "echo data-mounts=$(grep -c ' /data ' /proc/mounts); sleep 3600"]
restart = "never"
resources = { memory = "128M", cpus = 1 }
microvm = { data_disk = false }
"#,
    )
    .unwrap();
    let wait_for = |what: &str| wait_for_stdout(&state, "d", what, &|out| out.contains(what));
    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    // The mount line follows `boot=1` in the log: wait for it too, not just the first line.
    let out = wait_for_stdout(&state, "d", "the first boot's report", &|out| {
        out.contains("boot=1") && out.contains(" /data ")
    });
    assert!(out.contains("/dev/vda /data ext4"), "{out}");
    wait_for_stdout(&state, "s", "the stateless VM's report", &|o| {
        o.contains("data-mounts=0")
    });
    assert!(!state.path.join("data/stacks/vmdata/s.img").exists());
    let image = state.path.join("data/stacks/vmdata/d.img");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 << 20);

    let o = run(state.osvm().args(["restart", "d"]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for("boot=2");

    let o = run(state.osvm().arg("down").arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
    assert!(image.exists(), "down keeps the data");
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for("boot=3");
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
}

#[test]
fn two_vms_get_different_cids_and_a_released_cid_is_reused() {
    const TEST: &str = "vm_cids";
    let Some(state) = vm_state(TEST) else {
        return;
    };
    let file = state.path.join("two.toml");
    // The exec health check runs inside the guest, through the agent: healthy only where the
    // guest's own /proc shows its init as /init.
    let vm = |name: &str| {
        format!(
            r#"
[[component]]
name = "{name}"
runtime = "microvm"
command = "/bin/sleep"
args = ["3600"]
resources = {{ memory = "128M", cpus = 1 }}
stop_grace = "2s"
health = {{ exec = ["/bin/sh", "-c", "grep -q '^/init' /proc/1/cmdline"], interval = "500ms" }}
"#
        )
    };
    std::fs::write(
        &file,
        format!("[stack]\nname = \"vmtwo\"\n{}{}", vm("a"), vm("b")),
    )
    .unwrap();
    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    let both = |v: &[Value]| {
        v.len() == 2
            && v.iter()
                .all(|c| c["status"] == "running" && c["health"]["state"] == "healthy")
    };
    wait_long(&state, "both running and healthy", both);
    let (a, b) = (
        vm_facts(&state, "a")["cid"].clone(),
        vm_facts(&state, "b")["cid"].clone(),
    );
    assert_ne!(a, b);
    let mut cids = [a.as_u64().unwrap(), b.as_u64().unwrap()];
    cids.sort();
    assert_eq!(cids, [3, 4], "the first free ids from 3");

    let released = a.as_u64().unwrap();
    let o = run(state.osvm().args(["restart", "a"]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_long(&state, "a replaced", |v| {
        both(v) && status(&state, "a")["last_instance"].is_string()
    });
    assert_eq!(
        vm_facts(&state, "a")["cid"].as_u64(),
        Some(released),
        "the id a stopped VM released is the lowest free one again"
    );
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
}

/// A stack of one VM that insists on KVM.
fn kvm_stack(state: &StateDir) -> PathBuf {
    let file = state.path.join("kvm.toml");
    std::fs::write(
        &file,
        r#"
[stack]
name = "kvm"

[[component]]
name = "v"
runtime = "microvm"
command = "/bin/sleep"
args = ["3600"]
microvm = { accel = "kvm" }
"#,
    )
    .unwrap();
    file
}

fn kvm_usable() -> Result<(), String> {
    osvm_guest::host::KvmProbe::probe().usable()
}

#[test]
fn kvm_asked_for_where_the_host_cannot_is_a_clear_error() {
    const TEST: &str = "vm_kvm_refused";
    if kvm_usable().is_ok() {
        skip(
            "no-kvm",
            TEST,
            "this host has hardware KVM: accel = \"kvm\" is honoured here",
        );
        return;
    }
    let state = StateDir::new(TEST);
    let file = kvm_stack(&state);
    // No daemon needed: the check runs before anything is started or sent.
    let o = run(state.osvm().args(["up"]).arg(&file));
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("accel = \"kvm\""), "{err}");
    assert!(err.contains("component `v`"), "{err}");
    let why = kvm_usable().unwrap_err();
    assert!(err.contains(&why), "the reason ({why}) is named: {err}");
    assert!(
        !state.path.join("instances").exists(),
        "nothing was started"
    );
}

/// A confidential guest (SEV-SNP here) is refused before anything starts, with the host's
/// reason, on every host: where the host lacks it, the first thing missing is named; where it
/// has it, osvm's microvm machine cannot give it yet. Never started unprotected.
#[test]
fn a_confidential_guest_is_refused_with_the_reason_and_never_run_unprotected() {
    const TEST: &str = "vm_confidential_refused";
    let state = StateDir::new(TEST);
    let file = state.path.join("confidential.toml");
    std::fs::write(
        &file,
        r#"
[stack]
name = "conf"

[[component]]
name = "v"
runtime = "microvm"
command = "/bin/sleep"
args = ["3600"]
microvm = { confidential = "sev-snp" }
"#,
    )
    .unwrap();
    let o = run(state.osvm().args(["up"]).arg(&file));
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("component `v`"), "{err}");
    assert!(err.contains("confidential = \"sev-snp\""), "{err}");
    assert!(err.contains("does not run the guest unprotected"), "{err}");
    let kvm = osvm_guest::host::KvmProbe::probe();
    let probe = osvm_guest::host::ConfidentialProbe::probe(&kvm);
    match &probe.sev_snp {
        Err(why) => assert!(err.contains(why.as_str()), "the reason ({why}): {err}"),
        Ok(_) => assert!(err.contains("q35"), "{err}"),
    }
    assert!(
        !state.path.join("instances").exists(),
        "nothing was started"
    );
    // And osvm doctor says the same.
    let o = run(state.osvm().args(["-o", "json", "doctor"]));
    let doctor: Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["area"] == "confidential" && c["name"] == "SEV-SNP")
        .cloned()
        .unwrap_or_else(|| panic!("no SEV-SNP row: {doctor}"));
    assert_eq!(row["available"], probe.sev_snp.is_ok(), "{row}");
}

#[test]
fn vm_boots_under_kvm_where_the_host_has_it() {
    const TEST: &str = "vm_kvm";
    if let Err(why) = kvm_usable() {
        skip(
            "kvm",
            TEST,
            &format!("needs hardware KVM (VMX/SVM, not PVM): {why}"),
        );
        return;
    }
    let Some(state) = vm_state(TEST) else {
        return;
    };
    let file = kvm_stack(&state);
    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_long(&state, "v running", |v| {
        v.len() == 1 && v[0]["status"] == "running"
    });
    assert_eq!(vm_facts(&state, "v")["accel"], "kvm");
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
}

/// Requests to `port` on the host's loopback, one connection each, until `stop`: how many
/// answered with the page and what the others got.
/// Requests until `stop`, counting the answers in `ok`; returns the failures.
fn http_load(
    port: u16,
    stop: &std::sync::atomic::AtomicBool,
    ok: &std::sync::atomic::AtomicU64,
) -> Vec<String> {
    use std::sync::atomic::Ordering;
    let mut failed = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match http_get_host(port) {
            Ok(page) if page.contains("hello from a microvm") => {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(other) => failed.push(format!("answered {other:?}")),
            Err(e) => failed.push(e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    failed
}

/// `kill -9` of the daemon while a VM serves HTTP under load: QEMU and the guest run on, the
/// published port keeps serving (the kernel forwards it), and the next daemon adopts the same
/// QEMU process: the agent hands it the events and the logs (with the output written while no
/// daemon read it), the VM's context id stays claimed throughout, and a stop through the new
/// daemon reports the workload's own exit. A workload that exits while no daemon runs waits
/// for the next one to hear its exit code.
#[test]
fn a_restarted_daemon_adopts_running_vms_without_a_failed_request() {
    let _turn = host_route_turn();
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const TEST: &str = "vm_adopt";
    if !hub_available(TEST) {
        return;
    }
    let Some(state) = vm_state(TEST) else {
        return;
    };
    let www = www(&state);
    let file = state.path.join("adopt.toml");
    let port = free_port();
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "vmadopt"
network = "hub"

[[component]]
name = "web"
runtime = "microvm"
command = "/bin/busybox"
args = ["httpd", "-f", "-v", "-p", "8080", "-h", "{www}"]
listen = [8080]
resources = {{ memory = "128M", cpus = 1 }}
microvm = {{ include = ["{www}"], data_disk = false }}
health = {{ http = "/", port = 8080, interval = "500ms" }}
restart = "never"
publish = [{{ port = 8080, host = "127.0.0.1:{port}" }}]

[[component]]
name = "job"
runtime = "microvm"
command = "/bin/sh"
args = ["-c", "trap 'echo got-term; exit 5' TERM; echo job-up; while true; do sleep 1 & wait $!; done"]
resources = {{ memory = "128M", cpus = 1 }}
microvm = {{ data_disk = false }}
restart = "never"

[[policy]]
allow = {{ from = "world", to = "web", ports = [8080] }}
"#,
            www = www.display()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    let views = wait_long(&state, "web healthy, job running", |v| {
        v.len() == 2
            && view(v, "web")["health"]["state"] == "healthy"
            && view(v, "job")["status"] == "running"
    });
    wait_for_stdout(&state, "job", "the job's first line", &|o| {
        o.contains("job-up")
    });
    let (web_id, qemu_pid) = (
        view(&views, "web")["instance"].as_str().unwrap().to_owned(),
        view(&views, "web")["pid"].as_i64().unwrap(),
    );
    let job_id = view(&views, "job")["instance"].as_str().unwrap().to_owned();
    let cid = vm_facts(&state, "web")["cid"].as_u64().unwrap();
    let claimed = || {
        let f = std::fs::File::open(state.path.join(format!("cids/{cid}.lock"))).unwrap();
        match f.try_lock() {
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(std::fs::TryLockError::Error(e)) => panic!("lock: {e}"),
        }
    };
    let requests_logged = |state: &StateDir| {
        stdout(&run(state
            .osvm()
            .args(["logs", "web", "--stream", "stderr"])))
        .matches("response:200")
        .count()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, answered) = (stop.clone(), answered.clone());
        std::thread::spawn(move || http_load(port, &stop, &answered))
    };
    std::thread::sleep(Duration::from_secs(1));
    daemon.kill9();
    assert!(
        PathBuf::from(format!("/proc/{qemu_pid}")).exists(),
        "QEMU survives the daemon"
    );
    assert!(
        claimed(),
        "the context id {cid} stays claimed without a daemon"
    );
    // The job's workload ends while no daemon runs: TERM straight to its agent.
    let job_uds = state
        .path
        .join("instances")
        .join(&job_id)
        .join("run/vm.vsock");
    let mut s = osvm_microvm::vsock::connect(&job_uds, proto::CONTROL_PORT, Duration::from_secs(5))
        .unwrap();
    proto::write_msg(&mut s, &Request::Signal { signal: 15 }).unwrap();
    assert_eq!(proto::read_msg::<Response>(&mut s).unwrap(), Response::Ok);
    let console = state
        .path
        .join("instances")
        .join(&job_id)
        .join("console.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("no host to report the exit to")
    {
        assert!(
            Instant::now() < deadline,
            "the job did not wait for a host: {}",
            std::fs::read_to_string(&console).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));

    let _daemon = Daemon::start(&state);
    let views = wait_long(
        &state,
        "web adopted and healthy, the job's exit heard",
        |v| {
            view(v, "web")["health"]["state"] == "healthy"
                && view(v, "job")["last_exit"]["code"].is_number()
        },
    );
    // The load goes on through the adoption: a few more answers from the adopted VM.
    let adopted_at = answered.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::Relaxed) < adopted_at + 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let failed = load.join().unwrap();
    let ok = answered.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok + failed.len() as u64
    );
    assert!(
        ok >= adopted_at + 5,
        "{ok} requests answered, {adopted_at} of them before the adoption"
    );
    let web = view(&views, "web");
    assert_eq!(web["instance"], web_id.as_str(), "the same instance: {web}");
    assert_eq!(web["pid"], qemu_pid, "the same QEMU process: {web}");
    assert_eq!(view(&views, "job")["last_exit"]["code"], 5, "{views:?}");
    let events = stdout(&run(state.osvm().arg("events")));
    assert!(events.contains("adopted"), "{events}");
    assert!(claimed(), "the adopted VM's context id stays claimed");

    // The logs flow again: the requests the load made are in them, and a new one shows up.
    let before = requests_logged(&state);
    assert!(before > 0);
    http_get_host(port).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while requests_logged(&state) <= before {
        assert!(
            Instant::now() < deadline,
            "no new request in the logs after the adoption"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Events flow again: a stop reports the workload's own end.
    let o = run(state.osvm().args(["stop", "web"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let views = wait_long(&state, "web stopped", |v| {
        view(v, "web")["status"] == "stopped"
    });
    assert_eq!(view(&views, "web")["last_exit"]["signal"], 15, "{views:?}");
    assert!(!claimed(), "the context id is free once the VM ended");
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
}

/// `osvm mcp call`: its exit code and JSON answer.
fn mcp_call(state: &StateDir, client: &str, tool: &str, args: &str) -> (i32, Value) {
    let o = run(state.osvm().args([
        "-o", "json", "mcp", "call", tool, "--as", client, "--args", args,
    ]));
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code().unwrap_or(-1), v)
}

/// An MCP server in a microVM, behind the gateway like a process one: its stdio is carried
/// over vsock through the agent. The tool runs in the guest (its PID 1 is the agent), the
/// stack's policy decides per client and tool, and a restarted server is reached again.
#[test]
fn an_mcp_server_in_a_microvm_is_reached_through_the_gateway_under_policy() {
    const TEST: &str = "vm_mcp";
    let Some(state) = vm_state(TEST) else {
        return;
    };
    let file = state.path.join("vmmcp.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "vmmcp"

[[component]]
name = "tool"
type = {{ kind = "mcp_server", name = "vmtool" }}
runtime = "microvm"
command = "{probe}"
args = ["mcp", "vmtool"]
# The probe is a debug build (19 MiB): its image needs more than 128 MiB to unpack.
resources = {{ memory = "192M", cpus = 1 }}
microvm = {{ data_disk = false }}

[[mcp_policy]]
allow = {{ clients = ["alice"], tools = ["vmtool.*"] }}

[[mcp_policy]]
allow = {{ clients = ["bob"], tools = ["vmtool.echo"] }}
"#,
            probe = probe_bin().display()
        ),
    )
    .unwrap();
    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    // The server is up on the component's current instance.
    let up = |state: &StateDir| {
        let instance = || {
            let views = ps(state);
            let tool = views.iter().find(|v| v["name"] == "tool");
            tool.and_then(|v| v["instance"].as_str()).map(str::to_owned)
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let o = run(state.osvm().args(["-o", "json", "mcp", "servers"]));
            let servers: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            if servers.as_array().is_some_and(|s| {
                s.iter().any(|s| {
                    s["server"] == "vmtool"
                        && s["state"] == "up"
                        && instance()
                            .is_some_and(|i| s["detail"].as_str().is_some_and(|d| d.contains(&i)))
                })
            }) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "vmtool never came up: {servers}\n{}\nthe guest's console:\n{}",
                stdout(&run(state.osvm().arg("events"))),
                stdout(&run(state
                    .osvm()
                    .args(["logs", "tool", "--stream", "console"])))
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    up(&state);
    let (code, v) = mcp_call(&state, "alice", "vmtool.where", "{}");
    assert_eq!(code, 0, "{v}");
    let text = v.to_string();
    assert!(
        text.contains("hostname=tool pid1=/init"),
        "runs in the guest: {v}"
    );
    let (code, v) = mcp_call(&state, "bob", "vmtool.echo", r#"{"message": "over vsock"}"#);
    assert_eq!(code, 0, "{v}");
    assert!(v.to_string().contains("vmtool: over vsock"), "{v}");
    // A client's stdio session: its calls are relayed as bytes to the guest's server.
    let mut session = RawSession::open(&state, "alice");
    session.call(1, "vmtool.where", serde_json::json!({}));
    let v = session.answer(1, Duration::from_secs(30));
    assert!(
        v["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("hostname=tool pid1=/init")),
        "relayed to the guest: {v}"
    );
    drop(session);
    let (code, v) = mcp_call(&state, "bob", "vmtool.where", "{}");
    assert_eq!(code, 3, "bob may only echo: {v}");
    assert_eq!(
        v["error"]["message"], "denied: no mcp_policy rule allows client `bob` to use vmtool.where",
        "{v}"
    );
    // The channel is the gateway's alone: a second `stdio` request on the agent's control
    // port (from anyone who can reach the VM's vsock socket) is refused, and calls go on.
    let id = status(&state, "tool")["instance"]
        .as_str()
        .unwrap()
        .to_owned();
    let uds = state.path.join("instances").join(&id).join("run/vm.vsock");
    let mut s =
        osvm_microvm::vsock::connect(&uds, proto::CONTROL_PORT, Duration::from_secs(5)).unwrap();
    proto::write_msg(&mut s, &Request::Stdio).unwrap();
    match proto::read_msg::<Response>(&mut s).unwrap() {
        Response::Error { message } => assert!(message.contains("no stdio channel"), "{message}"),
        other => panic!("a second stdio channel was handed out: {other:?}"),
    }
    let (code, v) = mcp_call(
        &state,
        "alice",
        "vmtool.echo",
        r#"{"message": "still mine"}"#,
    );
    assert_eq!(code, 0, "{v}");
    let o = run(state
        .osvm()
        .args(["-o", "json", "mcp", "tools", "--as", "bob"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = stdout(&o);
    assert!(
        listed.contains("vmtool.echo") && !listed.contains("vmtool.where"),
        "{listed}"
    );

    // A new VM, a new channel: the gateway reaches the restarted server.
    let before = status(&state, "tool")["instance"].clone();
    let o = run(state.osvm().args(["restart", "tool"]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_long(&state, "a new instance", |v| {
        view(v, "tool")["instance"] != before && view(v, "tool")["status"] == "running"
    });
    up(&state);
    let (code, v) = mcp_call(&state, "alice", "vmtool.echo", r#"{"message": "again"}"#);
    assert_eq!(code, 0, "{v}");
    assert!(v.to_string().contains("vmtool: again"), "{v}");
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
}

/// `mounts` in a microVM: each host directory is served by its own virtiofsd, confined to that
/// directory in a sandbox of its own, and mounted by the agent. A read-only mount refuses
/// writes in the guest; a writable one needs no chown (the files the guest makes belong to the
/// directory's owner on the host); a link planted in a shared directory resolves inside the
/// guest, never to a host file.
#[test]
fn a_vm_mounts_host_directories_read_only_and_writable() {
    const TEST: &str = "vm_mounts";
    let Some(state) = vm_state(TEST) else {
        return;
    };
    if !virtiofsd_available("microvm", TEST) {
        return;
    }
    let ro = state.path.join("ro");
    let rw = state.path.join("rw");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("hello.txt"), "shared read-only\n").unwrap();
    // Root's, 0700: nobody but the owner gets in, as an operator's data directory would be.
    std::fs::set_permissions(&rw, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("/etc/machine-id", rw.join("planted")).unwrap();
    let script = "cat /ro/hello.txt; \
        echo from-the-guest > /rw/out.txt && echo rw-write=ok; \
        touch /ro/x 2>/dev/null && echo ro-write=ok || echo ro-write=refused; \
        echo planted=$(cat /rw/planted 2>&1 | head -c 40); \
        grep -c virtiofs /proc/mounts; sleep 3600";
    let file = state.path.join("mounts.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "vmmounts"

[[component]]
name = "m"
runtime = "microvm"
command = "/bin/sh"
args = ["-c", "{script}"]
restart = "never"
resources = {{ memory = "128M", cpus = 1 }}
microvm = {{ data_disk = false }}
mounts = [
  {{ source = "{ro}", target = "/ro" }},
  {{ source = "{rw}", target = "/rw", mode = "rw" }},
]
"#,
            ro = ro.display(),
            rw = rw.display()
        ),
    )
    .unwrap();
    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = wait_for_stdout(&state, "m", "the guest's report", &|o| {
        o.contains("planted=") && o.lines().last().is_some_and(|l| l.ends_with(" 2"))
    });
    assert!(out.contains("shared read-only"), "{out}");
    assert!(out.contains("rw-write=ok"), "{out}");
    assert!(out.contains("ro-write=refused"), "{out}");
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let machine_id = machine_id.trim();
    assert!(
        machine_id.is_empty() || !out.contains(machine_id),
        "the planted link reached a host file: {out}"
    );
    let written = rw.join("out.txt");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "from-the-guest\n"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&written).unwrap().uid(),
        0,
        "owned by the directory's owner"
    );
    assert!(!ro.join("x").exists());
    // Each virtiofsd in its own sandbox, holding its directory only.
    let id = status(&state, "m")["instance"].as_str().unwrap().to_owned();
    for i in 0..2 {
        assert!(
            state
                .path
                .join("instances")
                .join(format!("{id}-fs{i}"))
                .exists(),
            "virtiofsd {i} has its sandbox"
        );
    }
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
    let left = Command::new("pgrep")
        .arg("-f")
        .arg(format!("virtiofsd .*{}", state.path.display()))
        .output()
        .unwrap();
    assert!(stdout(&left).trim().is_empty(), "virtiofsd outlived the VM");
}

/// The reference MCP servers (the npm `filesystem` and `everything` servers, run with the
/// machine's Node.js) in microVMs behind the gateway, under the same kind of policy as the
/// process ones in tests/mcp.rs: their code and the shared directory are mounts over virtio-fs,
/// a client reads and writes through them as the policy allows, and is refused what it does not.
#[test]
fn the_reference_mcp_servers_run_in_microvms_under_policy() {
    const TEST: &str = "vm_mcp_reference";
    let Some(state) = vm_state(TEST) else {
        return;
    };
    if !virtiofsd_available("microvm", TEST) {
        return;
    }
    let node_modules = match reference_mcp_servers() {
        Ok(n) => n,
        Err(e) => {
            skip("mcp", TEST, &e);
            return;
        }
    };
    let shared = state.path.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), "hello from the host\n").unwrap();
    let file = state.path.join("vmref.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "vmref"
mcp = {{ call_timeout = "30s" }}

[[component]]
name = "files"
type = {{ kind = "mcp_server", name = "fs" }}
runtime = "microvm"
command = "/usr/bin/node"
args = ["/opt/mcp/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js", "/shared"]
mounts = [
  {{ source = "{nm}", target = "/opt/mcp/node_modules" }},
  {{ source = "{shared}", target = "/shared", mode = "rw" }},
]
resources = {{ memory = "512M", cpus = 1 }}
microvm = {{ data_disk = false, boot_timeout = "120s" }}

[[component]]
name = "everything"
type = {{ kind = "mcp_server", name = "everything" }}
runtime = "microvm"
command = "/usr/bin/node"
args = ["/opt/mcp/node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio"]
mounts = [{{ source = "{nm}", target = "/opt/mcp/node_modules" }}]
resources = {{ memory = "512M", cpus = 1 }}
microvm = {{ data_disk = false, boot_timeout = "120s" }}

[[mcp_policy]]
allow = {{ clients = ["alice"], tools = ["fs.*", "everything.*"] }}

[[mcp_policy]]
allow = {{ clients = ["bob"], tools = ["fs.read_*", "fs.list_*", "everything.echo"] }}

[[mcp_policy]]
deny = {{ clients = ["*"], tools = ["fs.move_file"] }}
"#,
            nm = node_modules.display(),
            shared = shared.display()
        ),
    )
    .unwrap();
    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let o = run(state.osvm().args(["-o", "json", "mcp", "servers"]));
        let servers: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let up = servers
            .as_array()
            .map_or(0, |s| s.iter().filter(|s| s["state"] == "up").count());
        if up == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the servers did not come up: {servers}\n{}",
            stdout(&run(state.osvm().arg("events")))
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, v) = mcp_call(
        &state,
        "bob",
        "fs.read_text_file",
        r#"{"path": "/shared/hello.txt"}"#,
    );
    assert_eq!(code, 0, "{v}");
    assert!(v.to_string().contains("hello from the host"), "{v}");
    let (code, v) = mcp_call(
        &state,
        "bob",
        "fs.write_file",
        r#"{"path": "/shared/bob.txt", "content": "bob was here"}"#,
    );
    assert_eq!(code, 3, "bob may only read: {v}");
    assert!(!shared.join("bob.txt").exists());
    let (code, v) = mcp_call(
        &state,
        "alice",
        "fs.write_file",
        r#"{"path": "/shared/alice.txt", "content": "alice was here"}"#,
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        std::fs::read_to_string(shared.join("alice.txt")).unwrap(),
        "alice was here"
    );
    let (code, v) = mcp_call(
        &state,
        "alice",
        "fs.move_file",
        r#"{"source": "/shared/alice.txt", "destination": "/shared/moved.txt"}"#,
    );
    assert_eq!(code, 3, "nobody may move files: {v}");
    assert!(shared.join("alice.txt").exists());
    let (code, v) = mcp_call(
        &state,
        "bob",
        "everything.echo",
        r#"{"message": "in a VM"}"#,
    );
    assert_eq!(code, 0, "{v}");
    assert!(v.to_string().contains("in a VM"), "{v}");
    let (code, v) = mcp_call(&state, "bob", "everything.get-sum", r#"{"a": 1, "b": 2}"#);
    assert_eq!(code, 3, "{v}");
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
}

/// `mtls = true` on a microVM: its hub ingress ends TLS outside the guest and passes only
/// clients with an identity of the stack's CA; the guest serves plain HTTP on its address.
#[test]
fn an_mtls_vm_is_reached_only_with_an_identity() {
    const TEST: &str = "vm_mtls";
    if !hub_available(TEST) {
        return;
    }
    let Some(state) = vm_state(TEST) else {
        return;
    };
    let www = www(&state);
    let client = r#"
import sys, ssl, time, http.client
for attempt in range(60):
    ctx = ssl.create_default_context(cafile='/run/osvm/identity/bundle.pem')
    if sys.argv[1] == 'cert':
        ctx.load_cert_chain('/run/osvm/identity/cert.pem', '/run/osvm/identity/key.pem')
    try:
        c = http.client.HTTPSConnection('web.vmt.osvm', 8080, context=ctx, timeout=5)
        c.request('GET', '/')
        r = c.getresponse()
        print(sys.argv[1], 'GOT', r.status, r.read().decode().strip(), flush=True)
        break
    except ssl.SSLError as e:
        print(sys.argv[1], 'REFUSED', type(e).__name__, flush=True)
        break
    except OSError as e:
        time.sleep(1)
time.sleep(3600)
"#;
    let file = state.path.join("vmt.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "vmt"
network = "hub"

[[component]]
name = "web"
runtime = "microvm"
command = "/bin/busybox"
args = ["httpd", "-f", "-p", "8080", "-h", "{www}"]
listen = [8080]
mtls = true
resources = {{ memory = "128M", cpus = 1 }}
microvm = {{ include = ["{www}"], data_disk = false }}
health = {{ tcp = true, port = 8080 }}

[[component]]
name = "client"
command = "/usr/bin/python3"
args = ["-c", '''{client}''', "cert"]

[[component]]
name = "nocert"
command = "/usr/bin/python3"
args = ["-c", '''{client}''', "none"]

[[policy]]
allow = {{ from = "client", to = "web", ports = [8080] }}

[[policy]]
allow = {{ from = "nocert", to = "web", ports = [8080] }}
"#,
            www = www.display()
        ),
    )
    .unwrap();
    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = wait_for_stdout(&state, "client", "the client's answer", &|o| {
        o.contains("cert ")
    });
    assert!(
        out.contains("cert GOT 200 hello from a microvm"),
        "client: {out}"
    );
    let out = wait_for_stdout(&state, "nocert", "the refusal", &|o| o.contains("none "));
    assert!(out.contains("none REFUSED"), "nocert: {out}");
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
}

/// `shared_data = true`: the component's volume reaches the guest's `/data` over virtio-fs
/// (a virtiofsd whose sandbox mounts it), so two VMs can hold it at once and a stateful VM is
/// hot-swapped: the new version reads what the old one wrote. A disk VM of the same volume is
/// refused while the volume is mounted, and the other way round.
#[test]
fn a_vm_with_shared_data_is_hot_swapped_with_its_data() {
    const TEST: &str = "vm_shared_data";
    if !hub_available(TEST) {
        return;
    }
    let Some(state) = vm_state(TEST) else {
        return;
    };
    if !virtiofsd_available("microvm", TEST) {
        return;
    }
    let script = |version: &str| {
        format!(
            "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; sync; \
             echo {version} boot=$n; grep ' /data ' /proc/mounts; exec httpd -f -p 8080 -h /tmp"
        )
    };
    let file = state.path.join("shared.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "vmshared"
network = "hub"

[[component]]
name = "d"
runtime = "microvm"
command = "/bin/sh"
args = ["-c", "{}"]
listen = [8080]
health = {{ tcp = true, port = 8080, interval = "500ms" }}
resources = {{ memory = "128M", cpus = 1, disk = "64M" }}
microvm = {{ shared_data = true }}
"#,
            script("v1")
        ),
    )
    .unwrap();
    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = wait_for_stdout(&state, "d", "the first boot", &|o| {
        o.contains("v1 boot=1") && o.contains(" /data ")
    });
    assert!(out.contains("/data virtiofs"), "{out}");
    let image = state.path.join("data/stacks/vmshared/d.img");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 << 20);

    let o = run(state
        .osvm()
        .args(["swap", "d", "--", "/bin/sh", "-c"])
        .arg(script("v2")));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = wait_for_stdout(&state, "d", "the new version's boot", &|o| {
        o.contains("v2 boot=")
    });
    assert!(
        out.contains("v2 boot=2"),
        "the new version read the old one's data: {out}"
    );
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
}

/// `mtls_egress` from a microVM: the guest speaks plain HTTP to its own loopback, where the
/// agent listens and makes the connection mutual TLS with the component's identity; the
/// server (an `mtls = true` process) answers, and its ingress records the VM's SPIFFE ID. A
/// second VM with the same egress and no policy allowing it gets nothing.
#[test]
fn a_vm_reaches_an_mtls_component_with_its_own_identity() {
    const TEST: &str = "vm_egress";
    if !hub_available(TEST) {
        return;
    }
    let Some(state) = vm_state(TEST) else {
        return;
    };
    let file = state.path.join("egress.toml");
    // The VM tries for 30 s (the hub may still be applying its rules), the stranger 3 times.
    // (busybox nc: Debian 12's busybox 1.35 wget crashes when given a timeout, `-T`.)
    let guest = |tries: u32| {
        format!(
            "for i in $(seq {tries}); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 15 \
             127.0.0.1 18080 > /tmp/page; if grep -q 'HTTP/1.0 200' /tmp/page; then echo \
             EGRESS GOT $(grep -o '<!DOCTYPE HTML' /tmp/page); break; fi; sleep 1; done; \
             echo EGRESS DONE; sleep 3600"
        )
    };
    let (guest, stranger) = (guest(30), guest(3));
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "vme"
network = "hub"

[[component]]
name = "db"
command = "/usr/bin/python3"
args = ["-c", "import http.server as h; h.HTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()"]
listen = [8080]
mtls = true

[[component]]
name = "vm"
runtime = "microvm"
command = "/bin/sh"
args = ["-c", "{guest}"]
resources = {{ memory = "128M", cpus = 1 }}
microvm = {{ data_disk = false }}
mtls_egress = [{{ to = "db", port = 8080, listen = 18080 }}]

[[component]]
name = "stranger"
runtime = "microvm"
command = "/bin/sh"
args = ["-c", "{stranger}"]
resources = {{ memory = "128M", cpus = 1 }}
microvm = {{ data_disk = false }}
mtls_egress = [{{ to = "db", port = 8080, listen = 18080 }}]

[[policy]]
allow = {{ from = "vm", to = "db", ports = [8080] }}
"#
        ),
    )
    .unwrap();
    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = wait_for_stdout(&state, "vm", "the guest's answer", &|o| {
        o.contains("EGRESS")
    });
    // python's http.server lists the directory: an HTML page.
    assert!(out.contains("EGRESS GOT <!DOCTYPE HTML"), "{out}");
    let out = wait_for_stdout(&state, "stranger", "the stranger's failure", &|o| {
        o.contains("EGRESS DONE")
    });
    assert!(!out.contains("EGRESS GOT"), "{out}");
    let audit = osvm_policy::AuditLog::read(&state.path.join("audit.log")).unwrap();
    assert!(
        audit.iter().any(|r| r.allowed
            && r.subject.starts_with("spiffe://osvm.local/vme/vm from ")
            && r.resource == "db tcp/8080"),
        "the guest connects with its own identity: {audit:#?}"
    );
    assert!(
        !audit.iter().any(|r| r.subject.contains("/vme/stranger")),
        "the hub's ruleset stops the stranger before any handshake: {audit:#?}"
    );
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
}

#[test]
fn a_vm_on_the_serial_link_serves_is_probed_adopted_and_stopped_without_vsock() {
    let _turn = host_route_turn();
    const TEST: &str = "vm_serial";
    if !hub_available(TEST) {
        return;
    }
    let Some(state) = vm_state(TEST) else {
        return;
    };
    let www = www(&state);
    let file = state.path.join("serial.toml");
    let port = free_port();
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "vmserial"
network = "hub"

[[component]]
name = "web"
runtime = "microvm"
command = "/bin/busybox"
args = ["httpd", "-f", "-v", "-p", "8080", "-h", "{www}"]
listen = [8080]
resources = {{ memory = "128M", cpus = 1 }}
microvm = {{ include = ["{www}"], data_disk = false, link = "serial" }}
health = {{ http = "/", port = 8080, interval = "500ms" }}
restart = "never"
publish = [{{ port = 8080, host = "127.0.0.1:{port}" }}]

[[policy]]
allow = {{ from = "world", to = "web", ports = [8080] }}
"#,
            www = www.display()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    // Healthy: the HTTP probe is a `forward` request carried over the serial link.
    let views = wait_long(&state, "web healthy over the serial link", |v| {
        v.len() == 1 && view(v, "web")["health"]["state"] == "healthy"
    });
    let (id, qemu_pid) = (
        view(&views, "web")["instance"].as_str().unwrap().to_owned(),
        view(&views, "web")["pid"].as_i64().unwrap(),
    );
    let published = http_get_host(port).expect("the published port serves the host");
    assert!(published.contains("hello from a microvm"), "{published}");
    // No vsock anywhere: no context id, no backend, no vsock device on QEMU's command line.
    assert_eq!(vm_facts(&state, "web")["cid"], 0);
    let cmdline = stdout(
        &std::process::Command::new("pgrep")
            .arg("-af")
            .arg(format!("qemu-system-x86_64 .*{}", state.path.display()))
            .output()
            .unwrap(),
    );
    assert!(cmdline.contains("qemu-system-x86_64"), "{cmdline}");
    assert!(!cmdline.contains("vsock"), "{cmdline}");
    assert!(
        cmdline.contains("virtserialport,chardev=agent,name=osvm.agent"),
        "{cmdline}"
    );
    let backends = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(format!("vhost-device-vsock .*{}", state.path.display()))
        .output()
        .unwrap();
    assert!(stdout(&backends).trim().is_empty(), "a vsock backend runs");

    // A restarted daemon connects to the port anew and the agent follows it.
    daemon.kill9();
    assert!(PathBuf::from(format!("/proc/{qemu_pid}")).exists());
    let _daemon = Daemon::start(&state);
    let views = wait_long(&state, "web adopted and healthy again", |v| {
        v.len() == 1
            && view(v, "web")["health"]["state"] == "healthy"
            && view(v, "web")["pid"] == qemu_pid
    });
    assert_eq!(view(&views, "web")["instance"], id.as_str());
    let events = stdout(&run(state.osvm().arg("events")));
    assert!(events.contains("adopted"), "{events}");
    http_get_host(port).expect("served after the adoption");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stdout(&run(state
        .osvm()
        .args(["logs", "web", "--stream", "stderr"])))
    .contains("response:200")
    {
        assert!(Instant::now() < deadline, "no request in the logs");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Graceful stop through the new daemon's link; the workload's own end is reported.
    let o = run(state.osvm().args(["stop", "web"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let views = wait_long(&state, "web stopped", |v| {
        view(v, "web")["status"] == "stopped"
    });
    assert_eq!(view(&views, "web")["last_exit"]["signal"], 15, "{views:?}");
    let console = stdout(&run(state
        .osvm()
        .args(["logs", "web", "--stream", "console"])));
    assert!(
        console.contains("a host connected to the serial port"),
        "{console}"
    );
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
}

/// The console lines of `name`'s current instance.
fn console_of(state: &StateDir, name: &str) -> String {
    stdout(&run(state
        .osvm()
        .args(["logs", name, "--stream", "console"])))
}

#[test]
fn vms_restored_from_one_snapshot_serve_and_collide_in_nothing() {
    let _turn = host_route_turn();
    const TEST: &str = "vm_snapshot";
    if !hub_available(TEST) {
        return;
    }
    let Some(state) = vm_state(TEST) else {
        return;
    };
    let www = www(&state);
    let file = state.path.join("snap.toml");
    let (port1, port2) = (free_port(), free_port());
    let stack = |extra: &str| {
        let vm = |name: &str, port: u16| {
            format!(
                r#"
[[component]]
name = "{name}"
runtime = "microvm"
command = "/bin/busybox"
args = ["httpd", "-f", "-v", "-p", "8080", "-h", "{www}"]
listen = [8080]
resources = {{ memory = "128M", cpus = 1 }}
microvm = {{ include = ["{www}"{extra}], data_disk = false, snapshot = true }}
health = {{ http = "/", port = 8080, interval = "500ms" }}
restart = "never"
publish = [{{ port = 8080, host = "127.0.0.1:{port}" }}]
"#,
                www = www.display()
            )
        };
        format!(
            "[stack]\nname = \"vmsnap\"\nnetwork = \"hub\"\n{}{}\n[[policy]]\nallow = {{ from = \"world\", to = \"web1\", ports = [8080] }}\n\n[[policy]]\nallow = {{ from = \"world\", to = \"web2\", ports = [8080] }}\n",
            vm("web1", port1),
            vm("web2", port2)
        )
    };
    std::fs::write(&file, stack("")).unwrap();
    let mut daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    let healthy = |v: &[Value]| {
        v.len() == 2
            && ["web1", "web2"]
                .iter()
                .all(|n| view(v, n)["health"]["state"] == "healthy")
    };
    wait_long(&state, "both restored VMs healthy", healthy);
    for port in [port1, port2] {
        let page = http_get_host(port).expect("a restored VM serves its published port");
        assert!(page.contains("hello from a microvm"), "{page}");
    }
    // One snapshot, made by one of the two starts, restored by both.
    let (f1, f2) = (vm_facts(&state, "web1"), vm_facts(&state, "web2"));
    let (s1, s2) = (
        f1["snapshot"].as_str().unwrap_or_default().to_owned(),
        f2["snapshot"].as_str().unwrap_or_default().to_owned(),
    );
    assert!(s1.starts_with("restored from snapshot"), "{f1}");
    assert!(s2.starts_with("restored from snapshot"), "{f2}");
    assert_eq!(s1[..39], s2[..39], "one snapshot for both: {s1} / {s2}");
    assert_eq!(
        [&s1, &s2]
            .iter()
            .filter(|s| s.contains("made by this start"))
            .count(),
        1,
        "{s1} / {s2}"
    );
    // The private RAM copy is gone from the run directory once QEMU mapped it.
    for name in ["web1", "web2"] {
        let id = status(&state, name)["instance"]
            .as_str()
            .unwrap()
            .to_owned();
        let ram = state.path.join("instances").join(id).join("run/ram");
        assert!(!ram.exists(), "{} is still there", ram.display());
    }
    let snapshots: Vec<_> = std::fs::read_dir(state.path.join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    // Nothing shared between the two copies: MAC, address, hostname; each set its clock and
    // reseeded its random number generator from what the host sent.
    let (c1, c2) = (console_of(&state, "web1"), console_of(&state, "web2"));
    let mac = |c: &str| {
        c.lines()
            .find_map(|l| l.split("eth0: MAC ").nth(1).map(str::to_owned))
            .unwrap_or_else(|| panic!("no MAC in the console: {c}"))
    };
    assert_ne!(mac(&c1), mac(&c2));
    assert_ne!(f1["address"], f2["address"]);
    for c in [&c1, &c2] {
        assert!(c.contains("clock set to the host's"), "{c}");
        assert!(!c.contains("cannot reseed"), "{c}");
    }
    assert!(c1.contains("(hostname \"web1\")") && c2.contains("(hostname \"web2\")"));
    eprintln!(
        "restored: spawn to hello {} / {} ms, start to ready {} / {} ms",
        f1["boot_ms"], f2["boot_ms"], f1["ready_ms"], f2["ready_ms"]
    );

    // Each copy has its component's own identity.
    let events = stdout(&run(state.osvm().arg("events")));
    for name in ["web1", "web2"] {
        assert!(
            events.contains(&format!("identity: spiffe://osvm.local/vmsnap/{name} ")),
            "{events}"
        );
    }
    // A restarted daemon adopts a restored VM like any other on the serial link.
    let pid = status(&state, "web2")["pid"].clone();
    daemon.kill9();
    let _daemon = Daemon::start(&state);
    wait_long(&state, "web2 adopted", |v| {
        healthy(v) && view(v, "web2")["pid"] == pid
    });
    http_get_host(port2).expect("the adopted restored VM serves");

    // A restart restores again, from the same snapshot.
    let first = status(&state, "web1")["instance"].clone();
    let o = run(state.osvm().args(["restart", "web1"]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_long(&state, "web1 restored again", |v| {
        healthy(v) && view(v, "web1")["instance"] != first
    });
    let again = vm_facts(&state, "web1");
    let s = again["snapshot"].as_str().unwrap_or_default();
    assert!(
        s.starts_with(&s1[..39]) && !s.contains("made by this start"),
        "{again}"
    );

    // A changed image makes another snapshot instead of restoring a stale one.
    let o = run(state.osvm().arg("down").arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
    // Down, the components no longer hold their snapshot; it stays for their next start.
    let listed = snapshots_listed(&state);
    assert!(
        listed.len() == 1
            && listed[0]["users"] == serde_json::json!([])
            && listed[0]["bytes"].as_u64().unwrap_or(0) > 1 << 20,
        "{listed:?}"
    );
    let extra = state.path.join("extra.txt");
    std::fs::write(&extra, "changed\n").unwrap();
    std::fs::write(&file, stack(&format!(", \"{}\"", extra.display()))).unwrap();
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_long(&state, "both healthy on the new image", healthy);
    let s = vm_facts(&state, "web1")["snapshot"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !s.starts_with(&s1[..39]),
        "a stale snapshot was restored: {s}"
    );
    assert!(
        s.contains("no longer fits: the image changed"),
        "the new snapshot does not say why: {s}"
    );
    // Both started at once on the new image; neither removed the old snapshot before the
    // other had read why it no longer fits.
    let s2 = vm_facts(&state, "web2")["snapshot"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        s2.contains("no longer fits: the image changed"),
        "web2's new snapshot does not say why: {s2}"
    );
    // The old snapshot went with its last user: one snapshot on disk, the new one.
    let snapshots: Vec<String> = std::fs::read_dir(state.path.join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        snapshots.len() == 1 && snapshots[0][..16] == s[23..39],
        "{snapshots:?} after {s}"
    );

    // A corrupt snapshot: the start that finds it says so (warning event, vm.json), sets it
    // aside and boots cold; later starts boot cold too, saying why; no loop of failed restores.
    let snap = std::fs::read_dir(state.path.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy()[..16] == s[23..39])
        .expect("the new snapshot");
    std::fs::write(snap.join("state"), b"QEVM garbage").unwrap();
    let before = status(&state, "web1")["instance"].clone();
    let o = run(state.osvm().args(["restart", "web1"]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_long(&state, "web1 booted cold from a corrupt snapshot", |v| {
        healthy(v) && view(v, "web1")["instance"] != before
    });
    let cold = vm_facts(&state, "web1");
    let said = cold["snapshot"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("cold boot: the snapshot") && said.contains("set aside"),
        "{cold}"
    );
    assert!(snap.with_extension("failed").exists());
    let events = stdout(&run(state.osvm().arg("events")));
    assert!(events.contains("failed to restore"), "{events}");
    let before = status(&state, "web1")["instance"].clone();
    let o = run(state.osvm().args(["restart", "web1"]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_long(&state, "web1 booted cold again", |v| {
        healthy(v) && view(v, "web1")["instance"] != before
    });
    let again = vm_facts(&state, "web1");
    assert!(
        again["snapshot"]
            .as_str()
            .is_some_and(|s| s.starts_with("cold boot: the snapshot failed to restore before")),
        "{again}"
    );
    let _ = run(state.osvm().arg("down").arg(&file));
    wait_long(&state, "stack gone", <[Value]>::is_empty);
    // What is left (the set-aside mark) has no user: `osvm snapshot prune` removes it.
    let listed = snapshots_listed(&state);
    assert!(
        listed.len() == 1
            && listed[0]["users"] == serde_json::json!([])
            && listed[0]["set_aside"].is_string(),
        "{listed:?}"
    );
    let o = run(state.osvm().args(["snapshot", "prune"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 snapshot(s) removed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshots_listed(&state), Vec::<Value>::new());
}

/// `osvm snapshot ls --output json`.
fn snapshots_listed(state: &StateDir) -> Vec<Value> {
    let o = run(state.osvm().args(["--output", "json", "snapshot", "ls"]));
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}
