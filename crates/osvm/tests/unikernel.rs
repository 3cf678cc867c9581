//! The unikernel runtime end to end, through a real daemon: the example crate
//! (`examples/hermit-app`) built into a Hermit image by `osvm unikernel build` (from scratch on
//! a new machine: the kernel from the Rust package registry, the loader, the app), booted
//! under QEMU (TCG on hosts without VMX/SVM) in the process sandbox, its output, arguments,
//! environment and exit codes reported, its deadline enforced, its network path governed by
//! the hub's rules.
//!
//! Every test skips with a printed reason when the host lacks root, QEMU or the Hermit build
//! tools (rust-src, x86_64-unknown-none, binutils).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The shared build (`<dir>/unikernel`: kernel, loader, image), or why there is none.
static BUILT: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);

fn example() -> PathBuf {
    example_named("hermit-app")
}

fn example_named(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .canonicalize()
        .unwrap_or_else(|e| panic!("examples/{name}: {e}"))
}

/// Builds the example image once per run, printing how long it took.
fn build_example() -> Result<PathBuf, String> {
    let mut guard = BUILT.lock().unwrap();
    if let Some(r) = guard.as_ref() {
        return r.clone();
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("unikernel-build");
    std::fs::create_dir_all(&dir).unwrap();
    let t0 = Instant::now();
    let build = |example: &Path| {
        Command::new(osvm_bin())
            .arg("--state-dir")
            .arg(&dir)
            .args(["unikernel", "build"])
            .arg(example)
            .output()
            .unwrap()
    };
    // Both examples: the MCP server's image too, so its test's start finds it built.
    let o = build(&example());
    let o = if o.status.success() {
        build(&example_named("hermit-mcp"))
    } else {
        o
    };
    let r = if o.status.success() {
        // The loader too, now and once: else every test's first start would wait for its build
        // behind the build lock at the same moment.
        let loader = osvm_unikernel::toolchain::Toolchain::probe()
            .map_err(|e| e.to_string())
            .and_then(|tc| {
                osvm_unikernel::loader::ensure_locked(&dir, &tc, &mut |_| {})
                    .map_err(|e| e.to_string())
            });
        let _ = writeln!(
            std::io::stderr(),
            "built the example Hermit images and the loader in {:.1}s:\n{}",
            t0.elapsed().as_secs_f64(),
            stderr(&o)
        );
        loader.map(|_| dir.join("unikernel"))
    } else {
        Err(format!(
            "`osvm unikernel build` failed: {}{}",
            stdout(&o),
            stderr(&o)
        ))
    };
    *guard = Some(r.clone());
    r
}

/// A state directory whose daemon can boot the example, or `None` (skip printed).
fn unikernel_state(test: &str) -> Option<StateDir> {
    if !sandbox_available(test) {
        return None;
    }
    if osvm_guest::find_program("qemu-system-x86_64").is_none() {
        skip(
            "unikernel",
            test,
            "needs qemu-system-x86_64 (Debian package qemu-system-x86)",
        );
        return None;
    }
    if let Err(e) = osvm_unikernel::toolchain::Toolchain::probe() {
        skip("unikernel", test, &e.to_string());
        return None;
    }
    let built = match build_example() {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    let state = StateDir::new(test);
    std::os::unix::fs::symlink(&built, state.path.join("unikernel")).unwrap();
    Some(state)
}

fn logs(state: &StateDir, name: &str, console: bool) -> String {
    let mut cmd = state.osvm();
    cmd.args(["logs", name]);
    if console {
        cmd.args(["--stream", "console"]);
    }
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// The stored image of the example (an ELF file), as `osvm unikernel build` names it; the
/// crate is unchanged since the first build, so nothing is built again.
fn image_file(state: &StateDir) -> PathBuf {
    let o = run(state.osvm().args(["unikernel", "build"]).arg(example()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("app: stored already"),
        "an unchanged crate was built again: {}",
        stderr(&o)
    );
    let out = stdout(&o);
    let path = out
        .lines()
        .find_map(|l| l.strip_prefix("image"))
        .unwrap_or_else(|| panic!("no image line: {out}"));
    PathBuf::from(path.trim())
}

fn up(state: &StateDir, toml: &str) -> PathBuf {
    let file = state.path.join("stack.toml");
    std::fs::write(&file, toml).unwrap();
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    file
}

fn ended(v: &[Value], names: &[&str]) -> bool {
    names.iter().all(|n| {
        v.iter()
            .any(|c| c["name"] == *n && !c["last_exit"].is_null() && c["pid"].is_null())
    })
}

/// No launcher of this state directory is left running.
fn assert_no_launchers(state: &StateDir) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = state
            .instances()
            .into_iter()
            .filter(|i| i.ends_with("-qemu"))
            .filter(|i| {
                cgroup_dirs(i).iter().any(|d| {
                    std::fs::read_to_string(d.join("cgroup.procs"))
                        .is_ok_and(|p| !p.trim().is_empty())
                })
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "launchers still running: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn unikernel_reports_output_args_env_and_exit_codes() {
    const TEST: &str = "uk_exit";
    let Some(state) = unikernel_state(TEST) else {
        return;
    };
    let app = example();
    let _daemon = Daemon::start(&state);
    up(
        &state,
        &format!(
            r#"
[stack]
name = "ukexit"

[[component]]
name = "hello"
runtime = "unikernel"
command = "{app}"
args = ["hello", "two words", "it's"]
env = {{ APP_GREETING = "hi there", APP_EXIT = "0" }}
resources = {{ memory = "96M" }}
restart = "never"

[[component]]
name = "seven"
runtime = "unikernel"
command = "{app}"
env = {{ APP_EXIT = "7" }}
resources = {{ memory = "96M" }}
restart = "never"

[[component]]
name = "panics"
runtime = "unikernel"
command = "{app}"
args = ["panic"]
resources = {{ memory = "96M" }}
restart = "never"

# The built image file itself rather than the crate.
[[component]]
name = "streams"
runtime = "unikernel"
command = "{image}"
args = ["stderr"]
resources = {{ memory = "96M" }}
restart = "never"
"#,
            app = app.display(),
            image = image_file(&state).display()
        ),
    );
    let views = wait_long(&state, "all four ended", |v| {
        ended(v, &["hello", "seven", "panics", "streams"])
    });
    // Hermit has one serial port: stdout and stderr both reach the logs.
    assert_eq!(view(&views, "streams")["last_exit"]["code"], 3, "{views:?}");
    let out = logs(&state, "streams", false);
    assert!(
        out.contains("this line goes to stderr") && out.contains("this line goes to stdout"),
        "{out}"
    );
    assert_eq!(view(&views, "hello")["last_exit"]["code"], 0, "{views:?}");
    assert_eq!(view(&views, "seven")["last_exit"]["code"], 7, "{views:?}");
    // A panic aborts, which Hermit reports as exit status -1; osvm says it panicked.
    assert_eq!(view(&views, "panics")["last_exit"]["code"], -1, "{views:?}");
    let panics = status(&state, "panics");
    assert!(
        panics["reason"].as_str().unwrap().contains("panicked"),
        "{panics}"
    );
    assert_eq!(panics["runtime"], "unikernel");

    // The app's output, arguments (with a space and a quote) and environment, in its logs;
    // the kernel's log only on the console.
    let out = logs(&state, "hello", false);
    for line in [
        "hello from hermit-app",
        "maths sin(1)=0.8415 exp(1)=2.7183",
        "arg[1]=hello",
        "arg[2]=two words",
        "arg[3]=it's",
        "env APP_EXIT=0",
        "env APP_GREETING=hi there",
    ] {
        assert!(out.contains(line), "`{line}` missing from the logs:\n{out}");
    }
    assert!(
        !out.contains("[INFO]"),
        "kernel lines in the app's logs:\n{out}"
    );
    let console = logs(&state, "hello", true);
    assert!(
        console.contains("Welcome to Hermit") && console.contains("exit status 0"),
        "{console}"
    );
    assert!(!console.contains("hello from hermit-app"), "{console}");
    let panicked = logs(&state, "panics", false);
    assert!(
        panicked.contains("hermit-app panicked on purpose"),
        "{panicked}"
    );

    // The unikernel's facts: launcher, accelerator and, without VMX/SVM, the TCG warning.
    let events = stdout(&run(state.osvm().arg("events")));
    assert!(events.contains("unikernel (Hermit under qemu)"), "{events}");
    let kvm = osvm_guest::host::KvmProbe::probe();
    if !kvm.kind.is_hardware() {
        assert!(events.contains("TCG: QEMU software emulation"), "{events}");
    }
    assert_no_launchers(&state);
}

#[test]
fn unikernel_past_its_deadline_is_stopped_and_reported() {
    const TEST: &str = "uk_deadline";
    let Some(state) = unikernel_state(TEST) else {
        return;
    };
    let app = example();
    let _daemon = Daemon::start(&state);
    up(
        &state,
        &format!(
            r#"
[stack]
name = "ukdeadline"

[[component]]
name = "spin"
runtime = "unikernel"
command = "{app}"
args = ["spin"]
resources = {{ memory = "96M" }}
# The deadline counts from the launch, boot included: under TCG with other guests booting on
# two cores the boot alone took over 2 s once, and a 5 s deadline once left the app no
# second to tick.
unikernel = {{ deadline = "20s" }}
restart = "never"

[[component]]
name = "idle"
runtime = "unikernel"
command = "{app}"
args = ["spin"]
resources = {{ memory = "96M" }}
restart = "never"

# No kernel reaches its app within 50 ms under TCG: the boot is cut off.
[[component]]
name = "slow"
runtime = "unikernel"
command = "{app}"
resources = {{ memory = "96M" }}
unikernel = {{ boot_timeout = "50ms" }}
restart = "never"
"#,
            app = app.display()
        ),
    );
    let t0 = Instant::now();
    wait_long(&state, "idle running", |v| {
        v.iter()
            .any(|c| c["name"] == "idle" && c["status"] == "running")
    });
    let views = wait_long(&state, "spin stopped at its deadline", |v| {
        ended(v, &["spin"])
    });
    let spin = view(&views, "spin");
    assert_eq!(spin["last_exit"]["signal"], 9, "{spin}");
    let reason = status(&state, "spin")["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("deadline of 20s passed"), "{reason}");
    assert!(
        t0.elapsed() >= Duration::from_secs(10),
        "stopped before its deadline"
    );
    let spun = logs(&state, "spin", false);
    assert!(spun.contains("tick 1"), "{spun}");
    let events = stdout(&run(state.osvm().arg("events")));
    assert!(
        events.contains("slow start-failed")
            && events.contains("did not reach the app within 50ms"),
        "{events}"
    );

    // Without a deadline it runs until stopped; a stop ends the launcher (SIGTERM).
    assert_eq!(view(&ps(&state), "idle")["status"], "running");
    let o = run(state.osvm().args(["stop", "idle"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let views = wait_long(&state, "idle stopped", |v| ended(v, &["idle"]));
    assert_eq!(view(&views, "idle")["last_exit"]["signal"], 15, "{views:?}");
    assert_no_launchers(&state);
}

#[test]
fn unikernel_serves_http_on_the_hub_and_policy_decides() {
    const TEST: &str = "uk_net";
    if !hub_available(TEST) {
        return;
    }
    let Some(state) = unikernel_state(TEST) else {
        return;
    };
    let app = example();
    let port = free_port();
    let _daemon = Daemon::start(&state);
    up(
        &state,
        &format!(
            r#"
[stack]
name = "uknet"
network = "hub"

[[component]]
name = "web"
runtime = "unikernel"
command = "{app}"
args = ["serve", "8080"]
listen = [8080]
resources = {{ memory = "128M" }}
health = {{ http = "/", port = 8080, start_period = "60s" }}
restart = "never"
publish = [{{ port = 8080, host = "127.0.0.1:{port}" }}]

# Asks from the start, so the hub learns the namespace's own MAC for web's address before the
# guest takes the address over: only osvm's announcement of the guest makes it reachable.
[[component]]
name = "cli"
command = "/bin/busybox"
args = ["sh", "-c", "while true; do busybox wget -q -O - http://web:8080/; sleep 1; done"]

[[component]]
name = "other"
command = "sleep"
args = ["3600"]

[[policy]]
allow = {{ from = "cli", to = "web", ports = [8080] }}

[[policy]]
allow = {{ from = "world", to = "web", ports = [8080] }}
"#,
            app = app.display()
        ),
    );
    let net = hub_view(&state);
    let _guard = NetnsPrefixGuard(net.hub.trim_end_matches("hub").to_owned());
    wait_long(&state, "web healthy", |v| {
        v.len() == 3
            && v.iter().all(|c| c["status"] == "running")
            && view(v, "web")["health"]["state"] == "healthy"
    });
    let (cli, other) = (&net.netns["cli"], &net.netns["other"]);
    let web = SocketAddr::from((net.service["web"], 8080));
    let answer = http_get_in(cli, web).expect("cli may reach web");
    assert!(answer.contains("hello from hermit-app"), "{answer}");
    // By name, from inside the client's sandbox, within a few of its tries.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs(&state, "cli", false).contains("hello from hermit-app") {
        assert!(Instant::now() < deadline, "{}", logs(&state, "cli", false));
        std::thread::sleep(Duration::from_millis(200));
    }
    let denied = http_get_in(other, web);
    assert!(
        denied.is_err(),
        "other reached web without a policy: {denied:?}"
    );
    let published = http_get_host(port).expect("the published port serves the host");
    assert!(published.contains("hello from hermit-app"), "{published}");
    let shown = status(&state, "web");
    assert!(shown["unikernel"]["address"].as_str().is_some(), "{shown}");
    let o = run(state.osvm().args(["down", "uknet"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_no_launchers(&state);
}

/// The first demo of the system osvm reimplements, for real: an MCP server built as a Hermit
/// unikernel (examples/hermit-mcp) with its identity from osvm's CA (its `info` tool reads the
/// SPIFFE ID from `/run/osvm/identity/cert.pem`, shared over virtio-fs), reached by the gateway
/// at its hub address, its tools called by the official Python SDK through `osvm mcp serve`,
/// under the stack's MCP policy, each call audited.
#[test]
fn a_hermit_mcp_server_is_called_by_the_python_sdk_through_the_gateway() {
    const TEST: &str = "uk_mcp";
    if !hub_available(TEST) {
        return;
    }
    let python = match python_mcp_sdk() {
        Ok(p) => p,
        Err(e) => return skip("mcp", TEST, &e),
    };
    let Some(state) = unikernel_state(TEST) else {
        return;
    };
    let app = example_named("hermit-mcp");
    let _daemon = Daemon::start(&state);
    up(
        &state,
        &format!(
            r#"
[stack]
name = "hmcp"
network = "hub"

[[component]]
name = "tools"
type = {{ kind = "mcp_server", name = "hermit" }}
runtime = "unikernel"
command = "{app}"
args = ["8080"]
listen = [8080]
mcp = {{ transport = "http", port = 8080, path = "/mcp" }}
resources = {{ memory = "128M" }}
unikernel = {{ boot_timeout = "60s" }}

[[mcp_policy]]
allow = {{ clients = ["alice"], tools = ["hermit.*"] }}

[[mcp_policy]]
allow = {{ clients = ["bob"], tools = ["hermit.echo"] }}
"#,
            app = app.display()
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let o = run(state.osvm().args(["-o", "json", "mcp", "servers"]));
        let servers: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        if servers.as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["server"] == "hermit" && s["state"] == "up")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Hermit MCP server never came up: {servers}\n{}",
            stdout(&run(state.osvm().arg("events")))
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let client = |who: &str| -> Value {
        let o = run(Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp_hermit_client.py"))
            .arg(osvm_bin())
            .arg(&state.path)
            .arg(who));
        assert!(o.status.success(), "python as {who}: {}", stderr(&o));
        serde_json::from_str(stdout(&o).trim()).unwrap()
    };
    let alice = client("alice");
    // On a failure, what the unikernel and the daemon said.
    if alice["tools"].as_array().is_some_and(|t| t.is_empty()) {
        eprintln!("the unikernel's console:\n{}", logs(&state, "tools", true));
        eprintln!("events:\n{}", stdout(&run(state.osvm().arg("events"))));
    }
    assert_eq!(
        alice["tools"],
        serde_json::json!(["hermit.echo", "hermit.info", "hermit.uppercase"]),
        "{alice}"
    );
    assert_eq!(alice["echo"]["text"], "hello unikernel", "{alice}");
    assert_eq!(alice["uppercase"]["text"], "SHOUT", "{alice}");
    let info = alice["info"]["text"].as_str().unwrap_or_default();
    assert!(info.contains("os=hermit"), "it runs on Hermit: {alice}");
    // Its identity from osvm's CA, read by the app from /run/osvm/identity (virtio-fs).
    assert!(
        info.contains("identity=spiffe://osvm.local/hmcp/tools"),
        "the unikernel reads its own certificate: {alice}"
    );
    let shown = status(&state, "tools");
    assert_eq!(
        shown["unikernel"]["identity"], "/run/osvm/identity (virtio-fs, read-only)",
        "{shown}"
    );
    // bob may echo and nothing else: the gateway refuses before the unikernel hears of it.
    let bob = client("bob");
    assert_eq!(bob["tools"], serde_json::json!(["hermit.echo"]), "{bob}");
    assert_eq!(bob["echo"]["text"], "hello unikernel", "{bob}");
    assert!(bob["uppercase"]["error_code"].is_number(), "{bob}");
    assert!(bob["info"]["error_code"].is_number(), "{bob}");
    // Each call audited: alice's three allowed, bob's echo allowed and two denied.
    let audit: Vec<Value> = std::fs::read_to_string(state.path.join("mcp/audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let calls = |client: &str, outcome: &str| {
        audit
            .iter()
            .filter(|r| r["method"] == "tools/call" && r["server"] == "hermit")
            .filter(|r| r["client"] == client && r["outcome"] == outcome)
            .count()
    };
    assert_eq!(calls("alice", "ok"), 3, "{audit:#?}");
    assert_eq!(calls("bob", "ok"), 1, "{audit:#?}");
    assert_eq!(calls("bob", "denied"), 2, "{audit:#?}");
    let o = run(state.osvm().args(["down", "hmcp"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_no_launchers(&state);
}

/// A unikernel reads its identity at /run/osvm/identity (virtio-fs, served read-only by a
/// confined virtiofsd) and nothing beyond it: Hermit hands `..` components to the host as they
/// are, so a name that climbs out of the share must resolve inside it (virtiofsd chrooted into
/// the share), never to the files virtiofsd's own sandbox can see (the host's /usr).
#[test]
fn a_unikernel_reads_its_identity_and_cannot_climb_out_of_the_share() {
    const TEST: &str = "uk_identity";
    let Some(state) = unikernel_state(TEST) else {
        return;
    };
    if !virtiofsd_available("unikernel", TEST) {
        return;
    }
    let host_release = std::fs::read_to_string("/usr/lib/os-release").unwrap_or_default();
    let marker = host_release
        .lines()
        .next()
        .unwrap_or("PRETTY_NAME")
        .to_owned();
    let app = example();
    let _daemon = Daemon::start(&state);
    up(
        &state,
        &format!(
            r#"
[stack]
name = "ukid"

[[component]]
name = "reader"
runtime = "unikernel"
command = "{app}"
args = ["cat", "/run/osvm/identity/cert.pem", "/run/osvm/../../../../../../../../usr/lib/os-release", "/run/osvm/identity/../../../../../../../etc/hostname"]
resources = {{ memory = "96M" }}
restart = "never"
"#,
            app = app.display()
        ),
    );
    let views = wait_long(&state, "reader ended", |v| ended(v, &["reader"]));
    assert_eq!(view(&views, "reader")["last_exit"]["code"], 0, "{views:?}");
    let out = logs(&state, "reader", false);
    assert!(
        out.contains("-----BEGIN CERTIFICATE-----"),
        "its identity: {out}"
    );
    assert!(
        !out.contains(&marker),
        "the guest read the host's /usr/lib/os-release through the share: {out}"
    );
    let escapes = out.matches("cannot read").count();
    assert_eq!(escapes, 2, "both climbing names are refused: {out}");
    assert_no_launchers(&state);
}

/// A renewed identity reaches a running unikernel: after a CA rotation the guest reads the new
/// certificate at the same path (the copy osvm serves over virtio-fs is rewritten), the same
/// bytes as the host's identity file.
#[test]
fn a_unikernel_sees_its_identity_renewed_after_a_ca_rotation() {
    const TEST: &str = "uk_rotate";
    let Some(state) = unikernel_state(TEST) else {
        return;
    };
    if !virtiofsd_available("unikernel", TEST) {
        return;
    }
    let app = example();
    let _daemon = Daemon::start(&state);
    up(
        &state,
        &format!(
            r#"
[stack]
name = "ukrot"
trust_domain = "ukrot.osvm"

[[component]]
name = "watcher"
runtime = "unikernel"
command = "{app}"
args = ["watch", "/run/osvm/identity/cert.pem"]
resources = {{ memory = "96M" }}
restart = "never"
"#,
            app = app.display()
        ),
    );
    wait_long(&state, "watcher running", |v| {
        v.iter()
            .any(|c| c["name"] == "watcher" && c["status"] == "running")
    });
    let host_cert = state.path.join("identities/ukrot/watcher/cert.pem");
    let fnv = |bytes: &[u8]| {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    // The guest's latest digest once it equals the host file's.
    let wait_same = |what: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let host = std::fs::read(&host_cert).map(|b| format!("digest {:016x}", fnv(&b)));
            let out = logs(&state, "watcher", false);
            let last = out.lines().rev().find_map(|l| l.split(" stdout ").nth(1));
            if let (Ok(host), Some(last)) = (&host, last)
                && last == host
            {
                return host.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: host {host:?}, guest: {out}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let first = wait_same("the guest reads its certificate");
    let o = run(state
        .osvm()
        .args(["cert", "--trust-domain", "ukrot.osvm", "ca", "rotate"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = wait_same("the guest reads the renewed certificate");
        if now != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the certificate was not renewed in the guest"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let o = run(state.osvm().args(["down", "ukrot"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_no_launchers(&state);
}

/// Every unikernel gets entropy: under QEMU's TCG the CPU has RDRAND but no RDSEED, and Hermit
/// 0.11 seeded its generator from RDSEED alone, falling back to a fixed-seed Park-Miller
/// generator, so every guest drew the same keys (std's HashMap seeds included). osvm's kernel
/// build seeds from RDRAND there: two guests draw different keys, and neither kernel warns.
#[test]
fn two_unikernels_draw_different_random_numbers() {
    const TEST: &str = "uk_random";
    let Some(state) = unikernel_state(TEST) else {
        return;
    };
    let app = example();
    let _daemon = Daemon::start(&state);
    let component = |name: &str| {
        format!(
            "[[component]]\nname = \"{name}\"\nruntime = \"unikernel\"\ncommand = \"{}\"\n\
             args = [\"random\"]\nresources = {{ memory = \"96M\" }}\nrestart = \"never\"\n",
            app.display()
        )
    };
    up(
        &state,
        &format!(
            "[stack]\nname = \"ukrand\"\n\n{}\n{}",
            component("one"),
            component("two")
        ),
    );
    wait_long(&state, "both ended", |v| ended(v, &["one", "two"]));
    let drawn = |name: &str| {
        let out = logs(&state, name, false);
        out.lines()
            .find_map(|l| l.split("random ").nth(1).map(str::to_owned))
            .unwrap_or_else(|| panic!("{name} printed no key: {out}"))
    };
    let (one, two) = (drawn("one"), drawn("two"));
    assert_ne!(one, two, "two guests drew the same keys");
    for name in ["one", "two"] {
        let console = logs(&state, name, true);
        assert!(
            !console.contains("Unable to read entropy"),
            "{name} ran without entropy: {console}"
        );
    }
    assert_no_launchers(&state);
}

#[test]
fn doctor_reports_the_launcher_and_a_pinned_launcher_that_cannot_run_is_refused() {
    const TEST: &str = "uk_doctor";
    let o = Command::new(osvm_bin())
        .args(["-o", "json", "doctor"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&o.stdout).expect("doctor prints JSON");
    let row = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["area"] == "hermit" && c["name"] == "launcher")
        .unwrap_or_else(|| panic!("no hermit launcher row: {report}"))
        .clone();
    // Whether a unikernel gets its identity here: the virtiofsd row says, and why not.
    let identity = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["area"] == "hermit" && c["name"] == "identity (virtiofsd)")
        .unwrap_or_else(|| panic!("no hermit identity row: {report}"))
        .clone();
    assert_eq!(
        identity["available"],
        osvm_guest::find_program("virtiofsd").is_some(),
        "{identity}"
    );
    let host = osvm_unikernel::launcher::Host::probe();
    let detail = row["detail"].as_str().unwrap();
    match host.uhyve_unusable() {
        None => assert!(detail.contains("uhyve"), "{row}"),
        Some(why) => {
            if host.qemu.is_some() {
                assert_eq!(row["available"], true, "{row}");
                assert!(detail.contains("QEMU") && detail.contains(&why), "{row}");
            }
            // Pinned uhyve where it cannot run: `osvm up` refuses before starting anything.
            let Some(state) = unikernel_state(TEST) else {
                return;
            };
            let file = state.path.join("stack.toml");
            std::fs::write(
                &file,
                format!(
                    "[stack]\nname = \"ukpin\"\n\n[[component]]\nname = \"u\"\nruntime = \
                     \"unikernel\"\ncommand = \"{}\"\nunikernel = {{ launcher = \"uhyve\" }}\n",
                    example().display()
                ),
            )
            .unwrap();
            let o = run(state.osvm().arg("up").arg(&file));
            assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
            let err = stderr(&o);
            assert!(
                err.contains("launcher = \"uhyve\" was asked for") && err.contains(&why),
                "{err}"
            );
            assert!(state.instances().is_empty(), "something started");
        }
    }
}

#[test]
fn uhyve_boots_the_example_where_the_host_has_hardware_kvm() {
    const TEST: &str = "uk_uhyve";
    let host = osvm_unikernel::launcher::Host::probe();
    if let Some(why) = host.uhyve_unusable() {
        skip("uhyve", TEST, &why);
        return;
    }
    let Some(state) = unikernel_state(TEST) else {
        return;
    };
    let _daemon = Daemon::start(&state);
    up(
        &state,
        &format!(
            "[stack]\nname = \"ukuhyve\"\n\n[[component]]\nname = \"u\"\nruntime = \
             \"unikernel\"\ncommand = \"{}\"\nenv = {{ APP_EXIT = \"5\" }}\nrestart = \
             \"never\"\nunikernel = {{ launcher = \"uhyve\" }}\n",
            example().display()
        ),
    );
    let views = wait_long(&state, "u ended", |v| ended(v, &["u"]));
    assert_eq!(view(&views, "u")["last_exit"]["code"], 5, "{views:?}");
    assert!(logs(&state, "u", false).contains("hello from hermit-app"));
}
