//! `osvm up` on the quickstart stack and other stacks run in the foreground: the quickstart's
//! published port answers on the host, its policy holds in the kernel, and after SIGINT nothing
//! is left (no processes, cgroups, mounts, namespaces or nftables tables).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::*;

/// `osvm up` as a child that is interrupted (and its components stopped) even when the test
/// fails half-way.
struct Up(std::process::Child);

impl Up {
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        self.0.wait().unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            self.interrupt();
        }
    }
}

/// The address `name` resolves to inside the sandbox of host pid `pid` (its /etc/hosts).
fn resolve_in(pid: i32, name: &str) -> String {
    let hosts = std::fs::read_to_string(format!("/proc/{pid}/root/etc/hosts")).unwrap();
    hosts
        .lines()
        .find(|l| l.split_whitespace().skip(1).any(|n| n == name))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{name} in {hosts}"))
        .to_owned()
}

/// GET `path` on `addr:port` from the network namespace of host pid `pid`.
fn http_get_from(pid: i32, addr: &str, port: u16, path: &str) -> Result<String, String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n");
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| e.to_string())?;
    let addr: std::net::IpAddr = addr.parse().unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| e.to_string())?;
        let mut s = TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut body = String::new();
        s.read_to_string(&mut body).map_err(|e| e.to_string())?;
        Ok(body)
    })
    .join()
    .unwrap()
}

/// What the README promises: `osvm up examples/quickstart.toml`, then
/// `curl http://127.0.0.1:18080/` on the host; echo is reached only by web, as its policy says.
#[test]
fn quickstart_serves_the_host_keeps_its_policy_and_sigint_leaves_nothing_behind() {
    let _turn = host_route_turn();
    if !hub_available("quickstart") {
        return;
    }
    if !Path::new("/bin/busybox").exists() {
        println!(
            "SKIP quickstart: /bin/busybox missing (Debian package busybox-static; .ci/run installs it)"
        );
        return;
    }
    if TcpStream::connect(("127.0.0.1", 18080)).is_ok() {
        println!("SKIP quickstart: something on this host listens on 127.0.0.1:18080 already");
        return;
    }
    let tables = || {
        let o = std::process::Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let state = StateDir::new("up");
    let stack = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml");
    let mut child = Up(state
        .osvm()
        .arg("up")
        .arg(&stack)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap());
    let (tx, rx) = channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("osvm up | {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Wait for both components to be healthy, collecting their sandbox pids.
    let mut pids = std::collections::HashMap::new();
    let mut healthy = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while healthy.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("both components become healthy within 60 s");
        for name in ["web", "echo"] {
            if line.contains(&format!("] {name} started: ")) {
                let pid: i32 = line
                    .split("(pid ")
                    .nth(1)
                    .unwrap()
                    .split(')')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                pids.insert(name, pid);
            }
            if line.contains(&format!("] {name} healthy: ")) {
                healthy.insert(name);
            }
        }
    }
    // The README's curl: web's published port on the host's loopback.
    let o = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg("http://127.0.0.1:18080/")
        .output();
    match o {
        Ok(o) => assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "200",
            "curl http://127.0.0.1:18080/: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => {
            let web = http_get_from(std::process::id() as i32, "127.0.0.1", 18080, "/")
                .expect("web answers on the host");
            assert!(web.starts_with("HTTP/1.0 200"), "{web}");
        }
    }
    // web reaches echo by name, as its policy allows; echo reaches nothing, web included.
    let echo_addr = resolve_in(pids["web"], "echo.quickstart.osvm");
    let echo = http_get_from(pids["web"], &echo_addr, 8081, "/hostname").expect("web reaches echo");
    assert!(
        echo.starts_with("HTTP/1.") && echo.contains(" 200 ") && echo.trim_end().ends_with("echo"),
        "{echo}"
    );
    let web_addr = resolve_in(pids["echo"], "web.quickstart.osvm");
    let refused = http_get_from(pids["echo"], &web_addr, 8080, "/");
    assert!(refused.is_err(), "echo must not reach web: {refused:?}");
    // echo is not published: nothing on the host reaches it.
    let direct = http_get_from(std::process::id() as i32, &echo_addr, 8081, "/hostname");
    assert!(direct.is_err(), "the host must not reach echo: {direct:?}");

    let instances = state.instances();
    assert_eq!(instances.len(), 2, "{instances:?}");

    let status = child.interrupt();
    assert!(
        status.success(),
        "osvm up exits 0 after stopping everything: {status}"
    );

    for (name, pid) in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name}'s sandbox (pid {pid}) is gone"
        );
    }
    for id in &instances {
        for dir in cgroup_dirs(id) {
            assert!(!dir.exists(), "cgroup {} was removed", dir.display());
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(state.path.to_str().unwrap()),
        "no mount under the state directory is visible on the host"
    );
    let leftover = std::process::Command::new("pgrep")
        .args(["-f", "__sandbox-monitor"])
        .output()
        .unwrap();
    let ours: Vec<String> = String::from_utf8_lossy(&leftover.stdout)
        .lines()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .map(|c| c.contains(state.path.to_str().unwrap()))
                .unwrap_or(false)
        })
        .map(String::from)
        .collect();
    assert!(ours.is_empty(), "no monitor of this test is left: {ours:?}");
    let prefix = osvm_daemon::network::netns_prefix(&state.path);
    let left = tables();
    assert!(
        !left.contains(&format!("osvm_{}", prefix.trim_start_matches("osvm-"))),
        "the host table of this test's hub is gone: {left}"
    );
    assert_no_namespace_left(&state);
}

/// Runs `osvm -o json up` on `stack_text` until it exits by itself (bounded), returning its exit
/// code and its events.
fn up_until_done(
    state: &StateDir,
    stack_text: &str,
    limit: Duration,
) -> (Option<i32>, Vec<serde_json::Value>) {
    let file = state.path.join("stack.toml");
    std::fs::write(&file, stack_text).unwrap();
    let mut child = Up(state
        .osvm()
        .args(["-o", "json", "up"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("osvm up | {line}");
            let _ = tx.send(serde_json::from_str::<serde_json::Value>(&line).unwrap());
        }
    });
    let deadline = Instant::now() + limit;
    let mut events = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(e) => events.push(e),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("osvm up did not finish within {limit:?}: {events:?}")
            }
        }
    }
    let code = child.0.wait().unwrap().code();
    (code, events)
}

fn count(events: &[serde_json::Value], component: &str, event: &str) -> usize {
    events
        .iter()
        .filter(|e| e["component"] == component && e["event"] == event)
        .count()
}

#[test]
fn on_failure_restarts_with_backoff_then_gives_up_and_never_is_left_alone() {
    if !sandbox_available("restart-policy") {
        return;
    }
    let state = StateDir::new("restart");
    let stack = r#"
[stack]
name = "restarts"
max_restarts = 2
restart_backoff = "200ms"
restart_backoff_max = "300ms"

[[component]]
name = "flaky"
command = "/bin/sh"
args = ["-c", "exit 3"]
restart = "on-failure"

[[component]]
name = "oneshot"
command = "/bin/true"
restart = "never"
"#;
    let began = Instant::now();
    let (code, events) = up_until_done(&state, stack, Duration::from_secs(30));
    assert_eq!(code, Some(1), "a failed component makes osvm up exit 1");
    assert_eq!(
        count(&events, "flaky", "started"),
        3,
        "first start plus max_restarts restarts"
    );
    assert_eq!(count(&events, "flaky", "restart-scheduled"), 2);
    let delays: Vec<&str> = events
        .iter()
        .filter(|e| e["component"] == "flaky" && e["event"] == "restart-scheduled")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        delays,
        ["restart 1 in 200ms", "restart 2 in 300ms"],
        "doubling, capped at the ceiling"
    );
    let failed: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["component"] == "flaky" && e["event"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["detail"]
            .as_str()
            .unwrap()
            .contains("gave up after 2 restarts"),
        "{}",
        failed[0]
    );
    assert!(
        failed[0]["detail"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{}",
        failed[0]
    );
    // 200 ms, then 300 ms (the ceiling): the backoff really waited.
    assert!(
        began.elapsed() >= Duration::from_millis(500),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(count(&events, "oneshot", "started"), 1, "restart = never");
    assert_eq!(count(&events, "oneshot", "restart-scheduled"), 0);
}

#[test]
fn a_component_failing_its_health_check_is_stopped_and_restarted() {
    if !sandbox_available("health-restart") {
        return;
    }
    let state = StateDir::new("health");
    let stack = r#"
[stack]
name = "health"
max_restarts = 1
restart_backoff = "100ms"

[[component]]
name = "web"
command = "python3"
args = ["-m", "http.server", "8080"]
listen = [8080]
health = { http = "/no-such-page", port = 8080, interval = "200ms", timeout = "1s", retries = 2, start_period = "5s" }
restart = "on-failure"
stop_grace = "5s"
"#;
    let (code, events) = up_until_done(&state, stack, Duration::from_secs(60));
    assert_eq!(code, Some(1));
    let unhealthy: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["component"] == "web" && e["event"] == "unhealthy")
        .collect();
    assert_eq!(
        unhealthy.len(),
        2,
        "each instance is judged unhealthy: {events:?}"
    );
    // Judged by the HTTP status (an instance still importing when its start period ends
    // fails with a refusal instead; one of the two has listened by then).
    assert!(
        unhealthy
            .iter()
            .any(|e| e["detail"].as_str().unwrap().contains("-> 404")),
        "{unhealthy:?}"
    );
    assert_eq!(count(&events, "web", "started"), 2);
    let exits: Vec<&str> = events
        .iter()
        .filter(|e| e["component"] == "web" && e["event"] == "exited")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert!(
        exits.iter().all(|d| d.contains("stopped as unhealthy")),
        "{exits:?}"
    );
    assert_eq!(count(&events, "web", "failed"), 1);
}

#[test]
fn exec_health_checks_run_inside_the_component() {
    if !sandbox_available("exec-health") {
        return;
    }
    let state = StateDir::new("exec-health");
    let stack = r#"
[stack]
name = "exechealth"

[[component]]
name = "good"
command = "/bin/sh"
args = ["-c", "touch /tmp/ready; sleep 10"]
health = { exec = ["/bin/sh", "-c", "test -f /tmp/ready && test $(hostname) = good"], interval = "200ms" }
restart = "never"

[[component]]
name = "bad"
command = "sleep"
args = ["30"]
health = { exec = ["/bin/sh", "-c", "echo not ready >&2; exit 4"], interval = "200ms", retries = 1 }
restart = "never"
stop_grace = "2s"
"#;
    let (code, events) = up_until_done(&state, stack, Duration::from_secs(30));
    assert_eq!(code, Some(1), "bad ends failed");
    let detail = |c: &str, e: &str| {
        events
            .iter()
            .find(|x| x["component"] == c && x["event"] == e)
            .map(|x| x["detail"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {e} event for {c}: {events:?}"))
    };
    assert_eq!(detail("good", "healthy"), "exec /bin/sh -> 0");
    assert!(
        detail("bad", "unhealthy").contains("exec /bin/sh -> 4: not ready"),
        "{events:?}"
    );
    assert_eq!(count(&events, "bad", "healthy"), 0);
}

/// Events of a running `osvm -o json up`, read until `until` says stop (bounded).
fn read_events_until(
    rx: &std::sync::mpsc::Receiver<serde_json::Value>,
    limit: Duration,
    mut until: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + limit;
    let mut events = Vec::new();
    while !until(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) => events.push(e),
            Err(e) => panic!("waiting for events: {e:?}; got {events:?}"),
        }
    }
    events
}

fn spawn_up(state: &StateDir, file: &Path) -> (Up, std::sync::mpsc::Receiver<serde_json::Value>) {
    let mut child = Up(state
        .osvm()
        .args(["-o", "json", "up"])
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("osvm up | {line}");
            let _ = tx.send(serde_json::from_str::<serde_json::Value>(&line).unwrap());
        }
    });
    (child, rx)
}

/// `kill -9` of `osvm up`: its components keep running; the next `osvm up` of the stack
/// adopts them (the same instances, none started twice), and its Ctrl-C stops them.
#[test]
fn a_killed_up_is_succeeded_by_one_that_adopts_its_components() {
    if !sandbox_available("up-crash") {
        return;
    }
    let state = StateDir::new("up-crash");
    let file = state.path.join("stack.toml");
    std::fs::write(
        &file,
        "[stack]\nname = \"crash\"\n\n[[component]]\nname = \"a\"\ncommand = \"sleep\"\nargs = [\"60\"]\n\n[[component]]\nname = \"b\"\ncommand = \"sleep\"\nargs = [\"60\"]\n",
    )
    .unwrap();
    let started =
        |events: &[serde_json::Value]| events.iter().filter(|e| e["event"] == "started").count();

    let (mut first, rx) = spawn_up(&state, &file);
    let events = read_events_until(&rx, Duration::from_secs(20), |ev| started(ev) == 2);
    let mut ids: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "started")
        .map(|e| {
            e["detail"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    first.0.kill().unwrap();
    first.0.wait().unwrap();

    let (mut second, rx) = spawn_up(&state, &file);
    let events = read_events_until(&rx, Duration::from_secs(20), |ev| {
        ev.iter().filter(|e| e["event"] == "adopted").count() == 2
    });
    let mut adopted: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "adopted")
        .map(|e| {
            e["detail"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .to_string()
        })
        .collect();
    adopted.sort();
    assert_eq!(adopted, ids, "the same instances, adopted");
    // A second's worth of ticks more: nothing is started again.
    let mut more = Vec::new();
    let until = Instant::now() + Duration::from_secs(1);
    while let Ok(e) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        more.push(e);
    }
    assert_eq!(
        started(&events) + started(&more),
        0,
        "no component started twice"
    );
    let mut instances = state.instances();
    instances.sort();
    assert_eq!(instances, ids, "no new instance directory");

    let status = second.interrupt();
    assert!(status.success());
    for id in &ids {
        for dir in cgroup_dirs(id) {
            assert!(!dir.exists(), "{} removed", dir.display());
        }
    }
}

/// `kill -9` of `osvm up` during a restart backoff: the successor keeps the backoff and the
/// restart count instead of starting over.
#[test]
fn a_killed_up_during_backoff_keeps_the_backoff_and_the_count() {
    if !sandbox_available("up-crash-backoff") {
        return;
    }
    let state = StateDir::new("up-backoff");
    let file = state.path.join("stack.toml");
    std::fs::write(
        &file,
        "[stack]\nname = \"backoff\"\nrestart_backoff = \"2s\"\n\n[[component]]\nname = \"flaky\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"exit 1\"]\n",
    )
    .unwrap();
    let (mut first, rx) = spawn_up(&state, &file);
    let events = read_events_until(&rx, Duration::from_secs(20), |ev| {
        ev.iter().any(|e| e["event"] == "restart-scheduled")
    });
    assert_eq!(events.iter().filter(|e| e["event"] == "started").count(), 1);
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let killed_at = Instant::now();

    let (mut second, rx) = spawn_up(&state, &file);
    let events = read_events_until(&rx, Duration::from_secs(20), |ev| {
        ev.iter().any(|e| e["event"] == "restart-scheduled")
    });
    let started_after = killed_at.elapsed();
    assert_eq!(events.iter().filter(|e| e["event"] == "started").count(), 1);
    assert!(
        started_after >= Duration::from_millis(1000),
        "the 2 s backoff was kept: {started_after:?}"
    );
    let scheduled: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "restart-scheduled")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        scheduled,
        ["restart 2 in 4s"],
        "the count and the doubling go on"
    );
    second.interrupt();
}

#[test]
fn a_component_that_never_becomes_ready_ends_failed_after_its_deadline() {
    if !sandbox_available("never-ready") {
        return;
    }
    let state = StateDir::new("never-ready");
    let stack = r#"
[stack]
name = "late"

[[component]]
name = "mute"
command = "sleep"
args = ["60"]
listen = [9999]
health = { tcp = true, port = 9999, interval = "200ms", retries = 1000, ready_within = "1s" }
stop_grace = "2s"
"#;
    let began = Instant::now();
    let (code, events) = up_until_done(&state, stack, Duration::from_secs(30));
    assert_eq!(code, Some(1));
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "the deadline was waited for"
    );
    assert_eq!(count(&events, "mute", "never-ready"), 1, "{events:?}");
    let failed: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["component"] == "mute" && e["event"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["detail"]
            .as_str()
            .unwrap()
            .contains("not ready within 1s"),
        "{}",
        failed[0]
    );
    assert_eq!(
        count(&events, "mute", "started"),
        1,
        "no restart after a missed deadline"
    );
}

#[test]
fn logs_are_rotated_past_their_size() {
    if !sandbox_available("log-rotation") {
        return;
    }
    let state = StateDir::new("rotation");
    // About 100 KiB a second for 4 seconds, against a 64 KiB limit and 2 kept files.
    let stack = r#"
[stack]
name = "chatty"
log_max_size = "64K"
log_files = 2

[[component]]
name = "talker"
command = "python3"
args = ["-c", "import sys, time\nfor i in range(40):\n    sys.stdout.write(('x' * 1023 + '\\n') * 10)\n    sys.stdout.flush()\n    time.sleep(0.1)\n"]
restart = "never"
"#;
    let (code, events) = up_until_done(&state, stack, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{events:?}");
    // The sandbox's monitor rotates as it writes (between records), whoever started it.
    let id = state.instances().into_iter().next().unwrap();
    let dir = state.path.join("instances").join(id);
    let size = |name: &str| {
        std::fs::metadata(dir.join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    assert!(
        size("stdout.log.1") > 60 * 1024 && size("stdout.log.1") <= 64 * 1024,
        "a rotated copy holds up to the limit: {}",
        size("stdout.log.1")
    );
    assert!(size("stdout.log") <= 64 * 1024);
    assert!(dir.join("stdout.log.2").exists());
    assert!(
        !dir.join("stdout.log.3").exists(),
        "only log_files copies are kept"
    );
    let total = size("stdout.log") + size("stdout.log.1") + size("stdout.log.2");
    assert!(
        total < 400 * 1024,
        "older output was dropped: {total} bytes kept"
    );
}

#[test]
fn components_get_a_read_only_identity_that_is_renewed_at_half_life() {
    if !sandbox_available("identity") {
        return;
    }
    let state = StateDir::new("identity");
    let stack = r#"
[stack]
name = "ids"
trust_domain = "test.osvm"
certificate_ttl = "10s"

[[component]]
name = "holder"
command = "/bin/sh"
args = ["-c", "trap 'echo RELOADED' HUP; cd /run/osvm/identity && ls && head -c 27 key.pem && echo && (touch x 2>/dev/null && echo WRITABLE || echo READONLY); for i in 1 2 3 4 5 6 7 8 9; do sleep 1; done"]
restart = "never"
identity_reload = { signal = "HUP" }
"#;
    let (code, events) = up_until_done(&state, stack, Duration::from_secs(40));
    assert_eq!(code, Some(0), "{events:?}");
    let detail = |kind: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["component"] == "holder" && e["event"] == kind)
            .map(|e| e["detail"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(detail("ca-created").len(), 1);
    let first = detail("identity");
    assert!(
        first[0].starts_with("spiffe://test.osvm/ids/holder (serial "),
        "{first:?}"
    );
    let renewed = detail("identity-renewed");
    assert!(
        !renewed.is_empty(),
        "renewed at half life (5-6 s): {events:?}"
    );
    assert_eq!(
        detail("identity-reload").first().map(String::as_str),
        Some("sent signal 1"),
        "identity_reload signals the component after renewal: {events:?}"
    );
    let serial = |d: &str| {
        d.split("serial ")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap()
            .to_string()
    };
    assert_ne!(
        serial(&first[0]),
        serial(&renewed[0]),
        "a fresh certificate"
    );

    let id = state.instances().into_iter().next().unwrap();
    let log =
        std::fs::read_to_string(state.path.join("instances").join(&id).join("stdout.log")).unwrap();
    for needle in [
        "bundle.pem",
        "cert.pem",
        "crl.pem",
        "key.pem",
        "-----BEGIN PRIVATE KEY-----",
        "READONLY",
        "RELOADED",
    ] {
        assert!(log.contains(needle), "{needle} in {log}");
    }
    use std::os::unix::fs::MetadataExt;
    let key = std::fs::metadata(state.path.join("identities/ids/holder/key.pem")).unwrap();
    assert_eq!(key.mode() & 0o777, 0o400);
    assert_ne!(
        key.uid(),
        0,
        "the key belongs to the sandbox's uid, not root"
    );
}

/// `osvm cert ca rotate` while components run: the engine gives every component the bundle
/// with both CAs, then a leaf of the new CA, then drops the old CA from the bundle.
#[test]
fn a_ca_rotation_is_carried_through_to_running_components() {
    if !sandbox_available("ca-rotation") {
        return;
    }
    let state = StateDir::new("ca-rotation");
    let file = state.path.join("rot.toml");
    std::fs::write(
        &file,
        "[stack]\nname = \"rot\"\ntrust_domain = \"rot.osvm\"\n\n[[component]]\nname = \"a\"\ncommand = \"sleep\"\nargs = [\"60\"]\n\n[[component]]\nname = \"b\"\ncommand = \"sleep\"\nargs = [\"60\"]\n",
    )
    .unwrap();
    let (mut up, rx) = spawn_up(&state, &file);
    read_events_until(&rx, Duration::from_secs(20), |ev| {
        ev.iter().filter(|e| e["event"] == "identity").count() == 2
    });
    let bundle = |c: &str| {
        std::fs::read_to_string(state.path.join(format!("identities/rot/{c}/bundle.pem"))).unwrap()
    };
    let old_bundle = bundle("a");
    let o = state
        .osvm()
        .args(["cert", "--trust-domain", "rot.osvm", "ca", "rotate"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let events = read_events_until(&rx, Duration::from_secs(20), |ev| {
        ev.iter().any(|e| e["event"] == "ca-rotation-finished")
    });
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "identity-renewed")
            .count(),
        2,
        "{events:?}"
    );
    let order: Vec<&str> = events
        .iter()
        .filter(|e| {
            ["ca-rotation", "identity-renewed", "ca-rotation-finished"]
                .contains(&e["event"].as_str().unwrap())
        })
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(order.first(), Some(&"ca-rotation"));
    assert_eq!(order.last(), Some(&"ca-rotation-finished"));
    for c in ["a", "b"] {
        let now = bundle(c);
        assert!(
            !now.contains(old_bundle.trim()),
            "the old CA left {c}'s bundle"
        );
        assert_eq!(now.matches("BEGIN CERTIFICATE").count(), 1);
    }
    up.interrupt();
}

/// A CA with little time left is reported by `osvm doctor` and in the engine's log.
#[test]
fn a_ca_near_expiry_is_reported_by_doctor_and_the_log() {
    let state = StateDir::new("ca-expiry");
    let out = state
        .osvm()
        .args([
            "cert",
            "--trust-domain",
            "test.osvm",
            "ca",
            "init",
            "--validity",
            "2d",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = state
        .osvm()
        .args(["-o", "json", "doctor"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["area"] == "identity" && c["name"] == "ca test.osvm")
        .unwrap_or_else(|| panic!("an identity row for the CA: {report}"))
        .clone();
    assert_eq!(row["available"], false, "{row}");
    let detail = row["detail"].as_str().unwrap();
    assert!(
        detail.contains("expires in 1 days") || detail.contains("expires in 2 days"),
        "{detail}"
    );

    if !sandbox_available("ca-expiry") {
        return;
    }
    let stack = r#"
[stack]
name = "exp"
trust_domain = "test.osvm"

[[component]]
name = "short"
command = "/bin/sh"
args = ["-c", "sleep 2"]
restart = "never"
"#;
    let (code, events) = up_until_done(&state, stack, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{events:?}");
    let warning = events
        .iter()
        .find(|e| e["event"] == "ca-expiring")
        .unwrap_or_else(|| panic!("a ca-expiring event: {events:?}"));
    assert!(
        warning["detail"]
            .as_str()
            .unwrap()
            .contains("trust domain test.osvm expires in"),
        "{warning}"
    );
}

/// `network = "hub"`: components get addresses and names, policy decides who reaches whom
/// (refusals are EHOSTUNREACH), and the foreground `osvm up` removes its namespaces at the end.
#[test]
fn hub_stacks_reach_each_other_by_name_only_as_policy_allows() {
    if !hub_available("hub stack") {
        return;
    }
    let state = StateDir::new("hub-stack");
    let stack = r#"
[stack]
name = "nett"
network = "hub"

[[component]]
name = "web"
command = "/usr/bin/python3"
args = ["-c", "import http.server as h; s = h.HTTPServer(('', 8080), h.SimpleHTTPRequestHandler); s.timeout = 30; s.handle_request()"]
listen = [8080]
restart = "never"

[[component]]
name = "client"
command = "/usr/bin/python3"
# Until web listens (it starts beside it): refused, then served.
args = ["-c", "import time, urllib.request as u\nfor _ in range(80):\n    try:\n        print('GOT', u.urlopen('http://web.nett.osvm:8080/', timeout=3).status)\n        break\n    except OSError as e:\n        print('not yet', e)\n        time.sleep(0.25)"]
restart = "never"

[[component]]
name = "intruder"
command = "/usr/bin/python3"
args = ["-c", "import time, socket\ntime.sleep(0.5)\ntry:\n    socket.create_connection(('web', 8080), timeout=3)\n    print('INTRUDER connected')\nexcept OSError as e:\n    print('INTRUDER refused', e.errno)"]
restart = "never"

[[policy]]
allow = { from = "client", to = "web", ports = [8080] }
"#;
    let (code, events) = up_until_done(&state, stack, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{events:?}");
    assert!(
        events.iter().any(|e| e["event"] == "network-policy"),
        "{events:?}"
    );
    let log = |name: &str| component_stdout(&state, name);
    assert!(
        log("client").contains("GOT 200"),
        "client: {}",
        log("client")
    );
    assert!(
        log("intruder").contains("INTRUDER refused 113"),
        "intruder: {}",
        log("intruder")
    );
    assert_no_namespace_left(&state);
}

/// Everything the instances of `name` wrote to stdout.
fn component_stdout(state: &StateDir, name: &str) -> String {
    state
        .instances()
        .into_iter()
        .filter(|id| id.starts_with(&format!("{name}-")))
        .map(|id| {
            std::fs::read_to_string(state.path.join("instances").join(id).join("stdout.log"))
                .unwrap_or_default()
        })
        .collect()
}

/// No namespace of `state`'s hub is left (other tests' hubs may run meanwhile).
fn assert_no_namespace_left(state: &StateDir) {
    let prefix = format!("{}-", osvm_daemon::network::netns_prefix(&state.path));
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout).into_owned();
    assert!(
        !left.lines().any(|l| l.starts_with(&prefix)),
        "namespaces left behind: {left}"
    );
}

#[test]
fn an_mtls_component_is_reached_with_an_identity_directly_or_through_the_egress_proxy_and_refusals_are_audited()
 {
    if !hub_available("mtls stack") {
        return;
    }
    let state = StateDir::new("mtls-stack");
    let client = r#"
import sys, ssl, time, http.client
time.sleep(1)
ctx = ssl.create_default_context(cafile='/run/osvm/identity/bundle.pem')
if sys.argv[1] == 'cert':
    ctx.load_cert_chain('/run/osvm/identity/cert.pem', '/run/osvm/identity/key.pem')
# With a certificate, again until db (started beside it) serves; without, once.
for _ in range(80 if sys.argv[1] == 'cert' else 1):
    try:
        c = http.client.HTTPSConnection('db.mt.osvm', 8080, context=ctx, timeout=5)
        c.request('GET', '/')
        print(sys.argv[1], 'GOT', c.getresponse().status)
        break
    except Exception as e:
        print(sys.argv[1], 'REFUSED', type(e).__name__, e)
        time.sleep(0.25)
"#;
    let stack = format!(
        r#"
[stack]
name = "mt"
network = "hub"

[[component]]
name = "db"
command = "/usr/bin/python3"
args = ["-c", "import http.server as h; s = h.HTTPServer(('', 8080), h.SimpleHTTPRequestHandler); s.timeout = 30; s.handle_request(); s.handle_request()"]
listen = [8080]
mtls = true
restart = "never"

[[component]]
name = "client"
command = "/usr/bin/python3"
args = ["-c", '''{client}''', "cert"]
restart = "never"

[[component]]
name = "nocert"
command = "/usr/bin/python3"
args = ["-c", '''{client}''', "none"]
restart = "never"

# Speaks plain HTTP to its own loopback; osvm's egress proxy makes it mTLS with its identity.
[[component]]
name = "plain"
command = "/usr/bin/python3"
args = ["-c", "import time, urllib.request as u\nfor _ in range(80):\n    try:\n        print('PLAIN GOT', u.urlopen('http://127.0.0.1:18080/', timeout=5).status)\n        break\n    except OSError as e:\n        print('not yet', e)\n        time.sleep(0.25)"]
mtls_egress = [{{ to = "db", port = 8080, listen = 18080 }}]
restart = "never"

[[policy]]
allow = {{ from = "client", to = "db", ports = [8080] }}

[[policy]]
allow = {{ from = "nocert", to = "db", ports = [8080] }}

[[policy]]
allow = {{ from = "plain", to = "db", ports = [8080] }}
"#
    );
    let (code, events) = up_until_done(&state, &stack, Duration::from_secs(40));
    assert_eq!(code, Some(0), "{events:?}");
    let client = component_stdout(&state, "client");
    assert!(client.contains("cert GOT 200"), "client: {client}");
    let nocert = component_stdout(&state, "nocert");
    assert!(nocert.contains("none REFUSED"), "nocert: {nocert}");
    let plain = component_stdout(&state, "plain");
    assert!(plain.contains("PLAIN GOT 200"), "plain: {plain}");
    let audit = osvm_policy::AuditLog::read(&state.path.join("audit.log")).unwrap();
    assert!(
        audit.iter().any(|r| r.allowed
            && r.subject.starts_with("spiffe://osvm.local/mt/client from ")
            && r.resource == "db tcp/8080"
            && r.rule.contains("allow client -> db")),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|r| r.allowed && r.subject.starts_with("spiffe://osvm.local/mt/plain from ")),
        "the egress proxy connects with the component's own identity: {audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|r| !r.allowed && r.rule.contains("handshake failed")),
        "{audit:#?}"
    );
    assert_no_namespace_left(&state);
}

/// A host without nftables: the hub cannot enforce policy, so no component of a hub stack
/// starts, however often it is retried (a start after a failed ruleset once went ahead on a
/// hub with no ruleset at all), and the reason names the missing package.
#[test]
fn without_nftables_no_hub_component_starts_and_the_reason_says_why() {
    if !hub_available("hub without nft") {
        return;
    }
    let state = StateDir::new("no-nft");
    // ip and sysctl (the hub namespace needs them), but no nft on the PATH.
    let bin = state.path.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["ip", "sysctl"] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} on this host"));
        std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
    }
    let path = format!("{}:/usr/bin:/bin", bin.display());
    if ["/usr/bin/nft", "/bin/nft"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        println!("SKIP hub without nft: nft is in /usr/bin here, which the test cannot hide");
        return;
    }
    let file = state.path.join("stack.toml");
    std::fs::write(
        &file,
        r#"
[stack]
name = "nonft"
network = "hub"
max_restarts = 2
restart_backoff = "100ms"
restart_backoff_max = "100ms"

[[component]]
name = "web"
command = "sleep"
args = ["30"]
restart = "on-failure"
"#,
    )
    .unwrap();
    let mut child = Up(state
        .osvm()
        .env("PATH", &path)
        .args(["-o", "json", "up"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let events: Vec<serde_json::Value> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .inspect(|l| println!("osvm up | {l}"))
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    let code = child.0.wait().unwrap().code();
    assert_eq!(code, Some(1), "{events:?}");
    assert_eq!(count(&events, "web", "started"), 0, "{events:?}");
    let failures: Vec<&str> = events
        .iter()
        .filter(|e| e["component"] == "web" && e["event"] == "start-failed")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        failures.len(),
        3,
        "the first start and both retries: {events:?}"
    );
    for f in failures {
        assert!(
            f.contains("unavailable")
                && f.contains("nft is not installed (Debian package nftables)"),
            "{f}"
        );
    }
}

/// Only a ready instance gets published traffic: while web listens but has not passed its
/// health check, its published port refuses connections at once (ECONNREFUSED, from the hub),
/// and serves once the check passes.
#[test]
fn a_published_port_refuses_connections_until_its_component_is_ready() {
    let _turn = host_route_turn();
    if !hub_available("published readiness") {
        return;
    }
    let port = 18093;
    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
        println!("SKIP published readiness: something listens on 127.0.0.1:{port} already");
        return;
    }
    let state = StateDir::new("pub-ready");
    let file = state.path.join("stack.toml");
    // Serves HTTP on 8080 at once; its health check (a TCP port) passes only 4 s later.
    let server = "import http.server, socket, threading, time\ns = http.server.HTTPServer(('', 8080), http.server.SimpleHTTPRequestHandler)\nthreading.Thread(target=s.serve_forever, daemon=True).start()\ntime.sleep(4)\nr = socket.socket()\nr.bind(('', 9000))\nr.listen(8)\nwhile True:\n    r.accept()[0].close()\n";
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "pubready"
network = "hub"

[[component]]
name = "web"
command = "/usr/bin/python3"
args = ["-c", '''{server}''']
listen = [8080, 9000]
publish = [{{ port = 8080, host = "127.0.0.1:{port}" }}]
health = {{ tcp = true, port = 9000, interval = "200ms", start_period = "20s" }}

[[policy]]
allow = {{ from = "world", to = "web", ports = [8080] }}
"#
        ),
    )
    .unwrap();
    let (mut up, rx) = spawn_up(&state, &file);
    let events = read_events_until(&rx, Duration::from_secs(20), |ev| {
        ev.iter().any(|e| e["event"] == "started")
    });
    let pid: i32 = events
        .iter()
        .find(|e| e["event"] == "started")
        .and_then(|e| e["detail"].as_str())
        .and_then(|d| d.split("(pid ").nth(1))
        .and_then(|d| d.split(')').next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("a pid in {events:?}"));
    // web serves inside its namespace...
    let deadline = Instant::now() + Duration::from_secs(15);
    while http_get_from(pid, "127.0.0.1", 8080, "/").is_err() {
        assert!(Instant::now() < deadline, "web never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...but is not ready: the published port refuses.
    let before = Instant::now();
    let refused = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(3),
    );
    let took = before.elapsed();
    let healthy_yet = rx.try_iter().any(|e| e["event"] == "healthy");
    assert!(
        !healthy_yet,
        "the test was too slow to look before the check passed"
    );
    match refused {
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "refused at once, not dropped: {e} after {took:?}"
        ),
        Ok(_) => panic!("a connection reached web before it was ready"),
    }
    read_events_until(&rx, Duration::from_secs(15), |ev| {
        ev.iter().any(|e| e["event"] == "healthy")
    });
    let served = http_get_from(std::process::id() as i32, "127.0.0.1", port, "/")
        .expect("web serves its published port once ready");
    assert!(served.starts_with("HTTP/1.0 200"), "{served}");
    up.interrupt();
    assert_no_namespace_left(&state);
}

/// `curl` over HTTPS to `https://web.pubtls.osvm:PORT/` at 127.0.0.1, with the client
/// certificate in `client` (none when `None`); returns the HTTP status or curl's error.
fn curl_tls(state: &StateDir, port: u16, client: Option<&Path>) -> Result<String, String> {
    let bundle = state.path.join("clients/alice/bundle.pem");
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ])
    .arg("--cacert")
    .arg(&bundle)
    .arg("--resolve")
    .arg(format!("web.pubtls.osvm:{port}:127.0.0.1"));
    if let Some(dir) = client {
        cmd.arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"));
    }
    let o = cmd
        .arg(format!("https://web.pubtls.osvm:{port}/"))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&o.stdout).into_owned();
    if o.status.success() && code == "200" {
        Ok(code)
    } else {
        Err(format!(
            "{code} {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// A published mtls = true component: outside clients reach its mTLS ingress through the
/// published port and are judged by the SPIFFE ID of their osvm-issued client certificate
/// (`osvm cert client NAME`), as the stack's `spiffe://` rules say; every decision is audited
/// with the client's address.
#[test]
fn a_published_mtls_component_admits_only_the_client_identities_its_policy_names() {
    let _turn = host_route_turn();
    if !hub_available("published mtls") {
        return;
    }
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIP published mtls: needs curl");
        return;
    }
    let port = 18094;
    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
        println!("SKIP published mtls: something listens on 127.0.0.1:{port} already");
        return;
    }
    let state = StateDir::new("pub-mtls");
    let file = state.path.join("stack.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "pubtls"
network = "hub"

[[component]]
name = "web"
command = "python3"
args = ["-m", "http.server", "8080"]
listen = [8080]
mtls = true
publish = [{{ port = 8080, host = "127.0.0.1:{port}" }}]
health = {{ tcp = true, port = 8080, interval = "200ms" }}

# Who may open a connection to the published port (the kernel: addresses)...
[[policy]]
allow = {{ from = "world", to = "web", ports = [8080] }}

# ...and who may talk through it (web's mTLS ingress: identities).
[[policy]]
allow = {{ from = "spiffe://osvm.local/clients/alice", to = "web", ports = [8080] }}
"#
        ),
    )
    .unwrap();
    let (mut up, rx) = spawn_up(&state, &file);
    read_events_until(&rx, Duration::from_secs(20), |ev| {
        ev.iter().any(|e| e["event"] == "healthy")
    });
    let client = |name: &str| {
        let dir = state.path.join("clients").join(name);
        let o = state
            .osvm()
            .args(["cert", "client", name, "--out"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains(&format!("spiffe://osvm.local/clients/{name}")),
            "{}",
            stdout(&o)
        );
        dir
    };
    let (alice, bob) = (client("alice"), client("bob"));

    // The proxy may come up a moment after the health check passes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = curl_tls(&state, port, Some(&alice));
    while got.is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        got = curl_tls(&state, port, Some(&alice));
    }
    assert_eq!(got, Ok("200".to_owned()), "alice, named by the policy");
    let bob_got = curl_tls(&state, port, Some(&bob));
    assert!(
        bob_got.is_err(),
        "bob has a certificate but no rule: {bob_got:?}"
    );
    let anon = curl_tls(&state, port, None);
    assert!(anon.is_err(), "no certificate: {anon:?}");

    // Revoked: refused at once (the proxy reads the CRL).
    let o = state
        .osvm()
        .args(["cert", "revoke", "clients/alice"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl_tls(&state, port, Some(&alice)).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        curl_tls(&state, port, Some(&alice)).is_err(),
        "a revoked client"
    );
    up.interrupt();

    let audit = osvm_policy::AuditLog::read(&state.path.join("audit.log")).unwrap();
    let about = |who: &str, allowed: bool| {
        audit.iter().any(|r| {
            r.allowed == allowed
                && r.subject
                    .starts_with(&format!("spiffe://osvm.local/clients/{who} from "))
                && r.resource == "web tcp/8080"
        })
    };
    assert!(about("alice", true), "{audit:#?}");
    assert!(about("bob", false), "{audit:#?}");
    assert!(
        audit
            .iter()
            .any(|r| !r.allowed && r.rule.contains("handshake failed")),
        "the anonymous client: {audit:#?}"
    );
    assert_no_namespace_left(&state);
}
