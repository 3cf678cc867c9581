//! The dashboard (`osvm daemon --ui`) in a real browser: Debian's headless Chromium, driven
//! over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ended by a
//! NUL byte on descriptors 3 and 4), so nothing but Chromium is needed.
//!
//! Screenshots are kept in `<cargo target tmp>/dashboard/` as the test's artifacts; with
//! `OSVM_DASHBOARD_DOCS=1` the components view is also written to `docs/dashboard.png`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// What the browser sent: answers by id, and every event.
#[derive(Default)]
struct Inbox {
    answers: HashMap<u64, Value>,
    events: Vec<Value>,
    closed: bool,
}

/// A headless Chromium with one page, attached over the DevTools protocol.
struct Browser {
    child: Child,
    commands: std::fs::File,
    inbox: Arc<(Mutex<Inbox>, Condvar)>,
    next: u64,
    session: String,
    profile: PathBuf,
}

impl Browser {
    fn launch(chromium: &Path, profile: PathBuf) -> Browser {
        std::fs::create_dir_all(&profile).unwrap();
        // The browser reads commands on descriptor 3 and writes answers on 4.
        let (to_browser, commands) = nix::unistd::pipe().unwrap();
        let (answers, from_browser) = nix::unistd::pipe().unwrap();
        let (r, w) = (to_browser.as_raw_fd(), from_browser.as_raw_fd());
        let mut cmd = Command::new(chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1360,900",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only dup2/fcntl between fork and exec, on descriptors this process owns.
        unsafe {
            cmd.pre_exec(move || {
                use nix::libc::{F_DUPFD, dup2, fcntl};
                // Above 4 first, so neither end is overwritten by the other's move.
                let (high_r, high_w) = (fcntl(r, F_DUPFD, 100), fcntl(w, F_DUPFD, 100));
                if high_r < 0 || high_w < 0 || dup2(high_r, 3) < 0 || dup2(high_w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        drop((to_browser, from_browser));
        let inbox: Arc<(Mutex<Inbox>, Condvar)> = Arc::default();
        let reader = inbox.clone();
        std::thread::spawn(move || read_messages(answers, &reader));
        let mut b = Browser {
            child,
            commands: std::fs::File::from(commands),
            inbox,
            next: 0,
            session: String::new(),
            profile,
        };
        let target = b.call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached = b.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in ["Runtime", "Log", "Page"] {
            b.call(&format!("{domain}.enable"), json!({}));
        }
        b
    }

    /// Sends a command (to the page's session once attached) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|error| panic!("{method}: {error}"))
    }

    /// Like `call`, but an error answer is returned instead of failing the test.
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        let (lock, ready) = &*self.inbox;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut inbox = lock.lock().unwrap();
        loop {
            if let Some(mut answer) = inbox.answers.remove(&id) {
                return match answer.get_mut("error") {
                    Some(error) => Err(error.take()),
                    None => Ok(answer["result"].take()),
                };
            }
            assert!(!inbox.closed, "chromium closed its pipe during {method}");
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "chromium did not answer {method}");
            inbox = ready.wait_timeout(inbox, left).unwrap().0;
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Runs a script that may navigate the page (a form's submit): a navigation that ends the
    /// evaluation before it answers is what the script was for.
    fn run_navigating(&mut self, script: &str) {
        let params = json!({ "expression": script, "returnByValue": true });
        match self.try_call("Runtime.evaluate", params) {
            Ok(r) => assert!(
                r.get("exceptionDetails").is_none(),
                "{script}: {}",
                r["exceptionDetails"]
            ),
            Err(error) if is_navigation(&error) => {}
            Err(error) => panic!("Runtime.evaluate {script}: {error}"),
        }
    }

    /// Polls `expression` until it is true; returns how long that took.
    ///
    /// The page may navigate while a poll runs (a sign-in, a sign-out): Chromium then ends that
    /// evaluation with an error ("Inspected target navigated or closed", "Execution context was
    /// destroyed"), which counts as "not yet"; the next poll asks the new page.
    fn wait_for(&mut self, what: &str, expression: &str, limit: Duration) -> Duration {
        let began = Instant::now();
        loop {
            let params =
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
            match self.try_call("Runtime.evaluate", params) {
                Ok(r) if r.get("exceptionDetails").is_some() => {
                    panic!("{expression}: {}", r["exceptionDetails"])
                }
                Ok(r) if r["result"]["value"] == json!(true) => return began.elapsed(),
                Ok(_) => {}
                Err(error) if is_navigation(&error) => {}
                Err(error) => panic!("Runtime.evaluate {expression}: {error}"),
            }
            assert!(
                began.elapsed() < limit,
                "{what}: not within {limit:?}; the page shows:\n{}",
                self.eval("document.body ? document.body.innerText : ''")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Navigates to `url` and waits for its page to load. Chromium answers `Page.navigate`
    /// before the new page commits, so the wait names the new page's origin: the page it
    /// leaves (about:blank at first) is complete already.
    fn goto(&mut self, url: &str) {
        let origin: String = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_for(
            &format!("loading {url}"),
            &format!("location.origin === '{origin}' && document.readyState === 'complete'"),
            Duration::from_secs(20),
        );
    }

    fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        std::fs::write(path, base64(shot["data"].as_str().unwrap())).unwrap();
    }

    /// Console errors, uncaught exceptions and browser log errors (CSP violations, failed
    /// loads) so far.
    fn errors(&self) -> Vec<String> {
        let inbox = self.inbox.0.lock().unwrap();
        inbox
            .events
            .iter()
            .filter_map(|e| match e["method"].as_str()? {
                "Runtime.exceptionThrown" => Some(e["params"]["exceptionDetails"].to_string()),
                "Runtime.consoleAPICalled" if e["params"]["type"] == "error" => {
                    Some(e["params"]["args"].to_string())
                }
                "Log.entryAdded" if e["params"]["entry"]["level"] == "error" => {
                    Some(e["params"]["entry"].to_string())
                }
                _ => None,
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Whether a DevTools error says the page went away under a command (it navigated).
fn is_navigation(error: &Value) -> bool {
    let message = error["message"].as_str().unwrap_or_default();
    [
        "navigated or closed",
        "context was destroyed",
        "Cannot find context",
        "execution context",
    ]
    .iter()
    .any(|m| message.contains(m))
}

fn read_messages(from: OwnedFd, inbox: &(Mutex<Inbox>, Condvar)) {
    let mut reader = BufReader::new(std::fs::File::from(from));
    loop {
        let mut msg = Vec::new();
        if reader.read_until(0, &mut msg).unwrap_or(0) == 0 {
            break;
        }
        msg.pop();
        let Ok(v) = serde_json::from_slice::<Value>(&msg) else {
            continue;
        };
        // A failed assertion in the test thread poisons the lock; the messages still count.
        let mut i = inbox.0.lock().unwrap_or_else(PoisonError::into_inner);
        match v["id"].as_u64() {
            Some(id) => {
                i.answers.insert(id, v);
            }
            None => i.events.push(v),
        }
        inbox.1.notify_all();
    }
    inbox
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .closed = true;
    inbox.1.notify_all();
}

fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | u32::from(value(c)) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// A plain HTTP/1.1 request to the dashboard: status line and body.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// The hostile strings on the page made no element and ran nothing.
fn assert_inert(b: &mut Browser) {
    for (what, check) in [
        (
            "no <img> element was made",
            "document.querySelectorAll('img').length === 0",
        ),
        (
            "no <svg> but the page's own",
            "document.querySelectorAll('svg:not(.spark):not(.graph)').length === 0",
        ),
        ("no script ran", "window.__xss === undefined"),
        ("the only script is app.js", "document.scripts.length === 1"),
    ] {
        assert_eq!(b.eval(check), json!(true), "{what}");
    }
}

const XSS_LOG: &str = "<script>window.__xss=1</script>";
const XSS_ATTR: &str = "\"><img src=x onerror=window.__xss=2>";
const XSS_EVENT: &str = "<img src=x onerror=window.__xss=3>";
const XSS_TOOL: &str = "<svg onload=window.__xss=4><script>window.__xss=5</script>";

/// The page is read-only, safe with hostile strings, live, and refuses the unauthenticated.
#[test]
fn the_dashboard_shows_the_daemon_live_read_only_and_escaped_in_a_real_browser() {
    const TEST: &str = "dashboard";
    if !sandbox_available(TEST) {
        return;
    }
    let Some(chromium) = osvm_guest::find_program("chromium") else {
        skip(
            "browser",
            TEST,
            "needs chromium (Debian package chromium) for the browser test",
        );
        return;
    };
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&artifacts).unwrap();
    let state = StateDir::new(TEST);
    let daemon = Daemon::start_with(&state, &["--ui", "127.0.0.1:0"]);
    let addr = std::fs::read_to_string(state.path.join("ui.addr"))
        .unwrap()
        .trim()
        .to_owned();
    let issued = run(state
        .osvm()
        .args(["-o", "json", "ui", "token", "issue", "tester"]));
    assert!(issued.status.success(), "{}", stderr(&issued));
    let issued: Value = serde_json::from_slice(&issued.stdout).unwrap();
    let token = issued["token"].as_str().unwrap().to_owned();

    let file = state.path.join("dash.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "dash"

[[component]]
name = "web"
command = "sleep"
args = ["3600"]

[[component]]
name = "victim"
command = "sleep"
args = ["3600"]
restart = "never"

[[component]]
name = "xss"
command = "/bin/sh"
args = ["-c", '''echo '{XSS_LOG}'; echo '{XSS_ATTR}'; exec sleep 3600''']

[[component]]
name = "broken"
command = "/nonexistent/{XSS_EVENT}"
restart = "never"

[[component]]
name = "tool"
type = {{ kind = "mcp_server", name = "hostile" }}
command = "/probe/osvm-probe"
args = ["mcp", "hostile"]
env = {{ OSVM_PROBE_TOOL_DESCRIPTION = '''{XSS_TOOL}''' }}
mounts = [{{ source = "{probe}", target = "/probe" }}]

[[mcp_policy]]
allow = {{ clients = ["alice"], tools = ["hostile.echo"] }}

[[policy]]
allow = {{ from = "xss", to = "web", ports = [8080] }}

[[policy]]
deny = {{ from = "victim", to = "web" }}
"#,
            probe = probe_dir().display()
        ),
    )
    .unwrap();
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    // Every start done (the descriptor count below must not grow with them).
    wait_ps(&state, "four running and broken failed", |v| {
        v.len() == 5
            && v.iter().all(|c| {
                let want = if c["name"] == "broken" {
                    "failed"
                } else {
                    "running"
                };
                c["status"] == want
            })
    });

    // Without a token: the sign-in page, and not a byte of the daemon's.
    let (code, text) = http(&addr, "GET", "/", None);
    assert_eq!(code, 303, "{text}");
    assert!(text.contains("location: /login"), "{text}");
    for path in [
        "/api/v1/components",
        "/ui/events",
        "/ui/audit",
        "/ui/identities",
        "/app.js",
    ] {
        let (code, text) = http(&addr, "GET", path, None);
        assert_eq!(code, 401, "{path}: {text}");
        assert!(!text.contains("victim"), "{path}: {text}");
    }
    let (code, _) = http(&addr, "GET", "/api/v1/components", Some("osvm_0000"));
    assert_eq!(code, 401);
    // An MCP client's token is not a dashboard token.
    let mcp = run(state
        .osvm()
        .args(["-o", "json", "mcp", "token", "issue", "bob"]));
    assert!(mcp.status.success(), "{}", stderr(&mcp));
    let mcp: Value = serde_json::from_slice(&mcp.stdout).unwrap();
    let (code, text) = http(&addr, "GET", "/api/v1/components", mcp["token"].as_str());
    assert_eq!(code, 401, "{text}");
    // With one: still no way to change anything.
    for (method, path) in [
        ("POST", "/api/v1/components/dash%2Fvictim/stop"),
        ("POST", "/api/v1/components/dash%2Fvictim/restart"),
        ("DELETE", "/api/v1/stacks/dash"),
        ("POST", "/api/v1/stacks"),
        ("POST", "/api/v1/stacks/dash/policy"),
        ("POST", "/api/v1/mcp/call"),
    ] {
        let (code, text) = http(&addr, method, path, Some(&token));
        assert!(
            !(200..300).contains(&code),
            "{method} {path} answered {code}: {text}"
        );
    }
    // Anyone may connect before a token is asked for: idle connections hold at most the
    // connection bound (128) of the daemon's descriptors; once they go, the page answers again.
    assert_idle_connections_are_bounded(&daemon, &addr, 128, 32, || {
        http(&addr, "GET", "/api/v1/components", Some(&token)).0 == 200
    });
    let (code, text) = http(&addr, "GET", "/", Some(&token));
    assert_eq!(code, 200, "{text}");
    assert!(
        text.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{text}"
    );

    // Its own profile: a Chromium an earlier run left would take over a shared one.
    let mut b = Browser::launch(
        &chromium,
        artifacts.join(format!("profile-{}", std::process::id())),
    );
    b.goto(&format!("http://{addr}/"));
    assert_eq!(b.eval("location.pathname"), json!("/login"));
    assert_eq!(
        b.eval("document.body.innerText.includes('victim')"),
        json!(false)
    );
    b.screenshot(&artifacts.join("1-sign-in.png"));

    // Sign in through the form.
    b.run_navigating(&format!(
        "document.getElementById('token').value = {}; document.querySelector('form').submit(); true",
        json!(token)
    ));
    b.wait_for(
        "the components view after signing in",
        "location.pathname === '/' && document.querySelectorAll('#components tr[data-component]').length === 5",
        Duration::from_secs(20),
    );
    let row = |name: &str| {
        format!("document.querySelector('#components tr[data-component=\"dash/{name}\"]')")
    };
    for name in ["web", "victim", "xss", "tool"] {
        b.wait_for(
            &format!("{name} running and green"),
            &format!(
                "{r} && {r}.dataset.status === 'running' && {r}.className === 'ok'",
                r = row(name)
            ),
            Duration::from_secs(20),
        );
    }
    b.wait_for(
        "broken failed and red",
        &format!("{r} && {r}.className === 'bad'", r = row("broken")),
        Duration::from_secs(20),
    );
    b.wait_for(
        "the event stream is live",
        "document.getElementById('live').textContent === 'live'",
        Duration::from_secs(30),
    );
    // Let the memory and CPU sparklines gather a few samples for the picture.
    std::thread::sleep(Duration::from_secs(5));
    b.screenshot(&artifacts.join("2-components.png"));
    if std::env::var_os("OSVM_DASHBOARD_DOCS").is_some() {
        b.screenshot(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png"));
    }

    // A component killed from here turns red within the refresh interval (2 s) plus the
    // daemon's own noticing.
    let victim = status(&state, "victim");
    let pid = victim["pid"].as_i64().expect("victim has a pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let took = b.wait_for(
        "the killed component turning red",
        &format!(
            "{r} && {r}.className === 'bad' && {r}.dataset.status === 'failed'",
            r = row("victim")
        ),
        Duration::from_secs(30),
    );
    println!("the killed component turned red in the page {took:?} after the kill");
    b.screenshot(&artifacts.join("3-killed.png"));

    // Hostile strings are text: in logs...
    b.eval("location.hash = '#/component/dash/xss'; true");
    b.wait_for(
        "the xss component's output",
        &format!(
            "!!document.getElementById('logs') && document.getElementById('logs').textContent.includes({})",
            json!(XSS_ATTR)
        ),
        Duration::from_secs(20),
    );
    assert_eq!(
        b.eval(&format!(
            "document.getElementById('logs').textContent.includes({})",
            json!(XSS_LOG)
        )),
        json!(true)
    );
    b.screenshot(&artifacts.join("4-escaped-logs.png"));
    // ...and in event details (the broken component's start failure names its command).
    b.eval("location.hash = '#/events'; true");
    b.wait_for(
        "the hostile event detail, as text",
        &format!(
            "document.querySelector('#events') !== null && document.querySelector('#events').textContent.includes({})",
            json!(XSS_EVENT)
        ),
        Duration::from_secs(20),
    );
    assert_inert(&mut b);

    // The policy as a graph: the stack's components as nodes, its rules as edges.
    b.eval("location.hash = '#/policy'; true");
    b.wait_for(
        "the policy graph",
        "document.querySelectorAll('svg.graph[data-stack=\"dash\"] [data-edge] line[x1]').length === 2",
        Duration::from_secs(20),
    );
    let nodes = b.eval(
        "[...document.querySelectorAll('svg.graph [data-node]')].map(n => n.dataset.node).sort()",
    );
    assert_eq!(nodes, json!(["broken", "tool", "victim", "web", "xss"]));
    let edges = b.eval(
        "[...document.querySelectorAll('svg.graph [data-edge]')].map(e => [e.dataset.edge, e.dataset.action, e.dataset.ports]).sort()",
    );
    assert_eq!(
        edges,
        json!([
            ["victim->web", "deny", "all ports"],
            ["xss->web", "allow", "8080"]
        ])
    );
    b.screenshot(&artifacts.join("5-policy.png"));

    // The MCP view: the server, its tool with the hostile description as text, and the audit
    // trail of two calls (one allowed, one refused), filtered by client.
    b.eval("location.hash = '#/mcp'; true");
    b.wait_for(
        "the hostile tool description, as text",
        &format!(
            "document.querySelector('#mcp-tools') !== null && document.querySelector('#mcp-tools').textContent.includes({})",
            json!(XSS_TOOL)
        ),
        Duration::from_secs(20),
    );
    for client in ["alice", "mallory"] {
        let _ = run(state.osvm().args([
            "mcp",
            "call",
            "hostile.echo",
            "--as",
            client,
            "--args",
            r#"{"message":"hi"}"#,
        ]));
    }
    // The audit trail is read when the view opens or a filter changes.
    b.eval("location.hash = '#/'; true");
    b.eval("location.hash = '#/mcp'; true");
    b.wait_for(
        "the audit trail",
        "document.querySelectorAll('#audit tr[data-outcome]').length === 2",
        Duration::from_secs(20),
    );
    let outcomes = b.eval(
        "[...document.querySelectorAll('#audit tr[data-outcome]')].map(r => r.dataset.outcome).sort()",
    );
    assert_eq!(outcomes, json!(["denied", "ok"]));
    b.eval(
        "const c = document.getElementById('audit-client'); c.value = 'mallory'; \
         c.dispatchEvent(new Event('change')); true",
    );
    b.wait_for(
        "the audit trail filtered to one client",
        "document.querySelectorAll('#audit tr[data-outcome]').length === 1 && \
         document.querySelector('#audit tr[data-outcome]').dataset.outcome === 'denied'",
        Duration::from_secs(30),
    );
    assert_inert(&mut b);
    b.screenshot(&artifacts.join("6-mcp.png"));

    // The identities the CA issued, one per started component.
    b.eval("location.hash = '#/identities'; true");
    b.wait_for(
        "the identities",
        "document.querySelectorAll('tr[data-spiffe^=\"spiffe://osvm.local/dash/\"]').length >= 3",
        Duration::from_secs(20),
    );

    let errors = b.errors();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");

    // A revoked token signs the browser out at its next request.
    let o = run(state.osvm().args(["ui", "token", "revoke", "tester"]));
    assert!(o.status.success(), "{}", stderr(&o));
    b.run_navigating("location.hash = '#/'; true");
    b.wait_for(
        "the sign-in page after revocation",
        "location.pathname === '/login'",
        Duration::from_secs(30),
    );
    let (code, _) = http(&addr, "GET", "/api/v1/components", Some(&token));
    assert_eq!(code, 401);
    let _ = run(state.osvm().args(["down", "dash"]));
}

/// `--ui-tls`: HTTPS with a certificate of the trust domain's CA; an osvm client certificate
/// signs in like a token, a component's certificate does not, and a revoked client certificate
/// is refused from the next connection on (the CRL is read again per connection).
#[test]
fn the_dashboard_over_tls_admits_client_certificates_until_revoked() {
    const TEST: &str = "dashboard_tls";
    if !sandbox_available(TEST) {
        return;
    }
    if Command::new("curl").arg("--version").output().is_err() {
        skip("curl", TEST, "needs curl");
        return;
    }
    let state = StateDir::new(TEST);
    let daemon = Daemon::start_with(&state, &["--ui", "127.0.0.1:0", "--ui-tls"]);
    let addr = std::fs::read_to_string(state.path.join("ui.addr")).unwrap();
    let port = addr.trim().rsplit(':').next().unwrap().to_owned();
    let issue = |args: &[&str], out: &Path| {
        let o = run(state.osvm().arg("cert").args(args).arg("--out").arg(out));
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let (alice, web) = (state.path.join("alice"), state.path.join("web"));
    issue(&["client", "alice"], &alice);
    issue(&["issue", "--stack", "s", "web"], &web);
    // The status code of GET /api/v1/components, "000" when the handshake failed.
    let get = |cert: Option<&Path>, token: Option<&str>| {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--resolve"])
            .arg(format!("dashboard.osvm.osvm:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(alice.join("bundle.pem"));
        if let Some(dir) = cert {
            c.arg("--cert")
                .arg(dir.join("cert.pem"))
                .arg("--key")
                .arg(dir.join("key.pem"));
        }
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        c.arg(format!(
            "https://dashboard.osvm.osvm:{port}/api/v1/components"
        ));
        String::from_utf8(c.output().unwrap().stdout).unwrap()
    };
    assert_eq!(get(Some(&alice), None), "200", "an osvm client certificate");
    assert_eq!(get(None, None), "401", "neither certificate nor token");
    assert_eq!(get(Some(&web), None), "401", "a component's certificate");
    let o = run(state.osvm().args(["ui", "token", "issue", "bob"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_owned();
    assert_eq!(get(None, Some(&token)), "200", "a token over TLS");
    let o = run(state.osvm().args(["cert", "revoke", "clients/alice"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        get(Some(&alice), None),
        "000",
        "a revoked client certificate"
    );
    // Plain HTTP to the TLS port gets nothing.
    let (code, _) = http(addr.trim(), "GET", "/api/v1/components", Some(&token));
    assert_eq!(code, 0);

    // Connections that never start a handshake are bounded the same way.
    assert_idle_connections_are_bounded(&daemon, addr.trim(), 128, 32, || {
        get(None, Some(&token)) == "200"
    });
}
