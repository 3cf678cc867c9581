//! Commands that talk to the daemon: `up -d`, `down`, `ps`, `status`, `logs`, `start`, `stop`,
//! `restart`, `events`, `stats`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use hyper::Method;
use osvm_daemon::engine::ComponentView;
use serde_json::{Value, json};

use super::socket;
use crate::cli::{DownArgs, EventsArgs, Global, LogsArgs, NameArgs, Output};
use crate::client::{Client, json as parse};

pub(super) fn client(global: &Global) -> anyhow::Result<Client> {
    Client::new(&socket(global)?)
}

pub(super) fn print_json(bytes: &[u8]) -> anyhow::Result<()> {
    let v: Value = parse(bytes)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// `osvm up -d FILE`.
pub fn apply(global: &Global, file: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    // Absolute, so the daemon can resolve paths relative to the stack file (a unikernel's
    // crate or image).
    let source = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    let body = json!({ "source": source.display().to_string(), "toml": text });
    let answer =
        client(global)?.call(Method::POST, "/v1/stacks", Some(serde_json::to_vec(&body)?))?;
    match global.output {
        Output::Json => print_json(&answer)?,
        Output::Text => {
            let v: Value = parse(&answer)?;
            println!(
                "applied stack `{}` ({} components); `osvm ps` shows them",
                v["stack"].as_str().unwrap_or("?"),
                v["components"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `osvm down FILE|NAME`.
pub fn down(global: &Global, args: DownArgs) -> anyhow::Result<ExitCode> {
    let path = Path::new(&args.stack);
    let name = if path.is_file() {
        osvm_core::stack::load(path)?.name
    } else {
        args.stack.clone()
    };
    let answer = client(global)?.call(Method::DELETE, &format!("/v1/stacks/{name}"), None)?;
    match global.output {
        Output::Json => print_json(&answer)?,
        Output::Text => println!("removing stack `{name}`: its components are stopping"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `osvm ps`.
pub fn ps(global: &Global) -> anyhow::Result<ExitCode> {
    let answer = client(global)?.call(Method::GET, "/v1/components", None)?;
    if global.output == Output::Json {
        print_json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    let views: Vec<ComponentView> = parse(&answer)?;
    // One write for the whole table (stdout is line-buffered: a write per row otherwise).
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    for line in super::table::lines(&views, true) {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `osvm status NAME`.
pub fn status(global: &Global, args: NameArgs) -> anyhow::Result<ExitCode> {
    let answer = client(global)?.call(
        Method::GET,
        &format!("/v1/components/{}", super::urlencode(&args.name)),
        None,
    )?;
    if global.output == Output::Json {
        print_json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    let v: ComponentView = parse(&answer)?;
    for (k, val) in super::table::facts(&v) {
        println!("{k:<10} {val}");
    }
    if let osvm_daemon::engine::Health::Healthy(d) | osvm_daemon::engine::Health::Failing(_, d) =
        &v.health
    {
        println!("{:<10} {d}", "probe");
    }
    println!(
        "{:<10} {}",
        "instance",
        v.instance.or(v.last_instance).unwrap_or_else(|| "-".into())
    );
    if !v.reason.is_empty() {
        println!("{:<10} {}", "reason", v.reason);
    }
    println!("{:<10} {}", "runtime", v.runtime);
    if let Some(vm) = &v.vm {
        println!(
            "{:<10} {}, {} vCPUs, {} MiB, kernel {}, vsock cid {}, booted in {} ms",
            "vm",
            vm.accel.as_str(),
            vm.vcpus,
            vm.memory_mib,
            vm.kernel,
            vm.cid,
            vm.boot_ms
        );
        if let Some(addr) = &vm.address {
            println!("{:<10} {addr}", "address");
        }
        if let Some(w) = &vm.warning {
            println!("{:<10} {w}", "warning");
        }
    }
    if let Some(u) = &v.unikernel {
        println!(
            "{:<10} {} under {} ({}), {} vCPU, {} MiB, image {} ({} bytes), booted in {} ms",
            "unikernel",
            u.app,
            u.launcher.as_str(),
            u.accel.as_str(),
            u.vcpus,
            u.memory_mib,
            &u.image[..12],
            u.image_size,
            u.boot_ms
        );
        println!("{:<10} {}", "launcher", u.reason);
        if let Some(ms) = u.deadline_ms {
            println!("{:<10} {ms} ms", "deadline");
        }
        if let Some(addr) = &u.address {
            println!("{:<10} {addr}", "address");
        }
        if let Some(w) = &u.warning {
            println!("{:<10} {w}", "warning");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `osvm start|stop|restart NAME`.
pub fn action(global: &Global, args: NameArgs, verb: &str) -> anyhow::Result<ExitCode> {
    let answer = client(global)?.call(
        Method::POST,
        &format!("/v1/components/{}/{verb}", super::urlencode(&args.name)),
        None,
    )?;
    match global.output {
        Output::Json => print_json(&answer)?,
        Output::Text => println!("{verb} of `{}` accepted", args.name),
    }
    Ok(ExitCode::SUCCESS)
}

/// `osvm logs [-f] [--tail N] [--stderr] NAME`.
pub fn logs(global: &Global, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!(
        "/v1/components/{}/logs?stream={}&follow={}",
        super::urlencode(&args.name),
        args.stream,
        args.follow
    );
    if let Some(n) = args.tail {
        path.push_str(&format!("&tail={n}"));
    }
    // A component's bytes bound for a terminal lose the escape sequences a terminal would obey.
    let mut out: Box<dyn Write> = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        Box::new(crate::logs::TerminalFilter::new(std::io::stdout()))
    } else {
        Box::new(std::io::stdout())
    };
    client(global)?.stream(&path, |chunk| {
        let _ = out.write_all(chunk);
        let _ = out.flush();
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `osvm events [-f] [--after SEQ]`.
pub fn events(global: &Global, args: EventsArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/events?after={}&follow={}", args.after, args.follow);
    let json_out = global.output == Output::Json;
    let mut pending = Vec::new();
    client(global)?.stream(&path, |chunk| {
        pending.extend_from_slice(chunk);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            if json_out {
                let _ = std::io::stdout().write_all(&line);
            } else if let Ok(e) = serde_json::from_slice::<osvm_daemon::store::Event>(&line) {
                let who = match (&e.stack, &e.component) {
                    (Some(s), Some(c)) => format!("{s}/{c} "),
                    _ => String::new(),
                };
                println!("{:>6} {who}{}: {}", e.seq, e.kind, e.detail);
            }
            let _ = std::io::stdout().flush();
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `osvm stats`.
pub fn stats(global: &Global) -> anyhow::Result<ExitCode> {
    let answer = client(global)?.call(Method::GET, "/v1/stats", None)?;
    if global.output == Output::Json {
        print_json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    let v: Value = parse(&answer)?;
    println!(
        "components {}  running {}  healthy {}  unhealthy {}  failed {}  stacks {}  services {}  endpoints {}",
        v["total"],
        v["running"],
        v["healthy"],
        v["unhealthy"],
        v["failed"],
        v["stacks"],
        v["services"],
        v["endpoints"]
    );
    ps(global)
}
