//! `osvm run`: one confined command in the foreground.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use osvm_core::{BindMount, DataKind, Instance, LaunchSpec, LogLimits, Resources, quantity};

use super::{InvalidInput, SetupFailed, sandbox_runtime};
use crate::cli::{Global, Output, RunArgs};
use crate::logs::Follower;

fn invalid(msg: impl Into<String>) -> anyhow::Error {
    InvalidInput(msg.into()).into()
}

/// Turns the flags into a launch spec; every mistake is an `InvalidInput`.
fn spec_from(args: &RunArgs) -> anyhow::Result<LaunchSpec> {
    let command = args.command[0].clone();
    let name = match &args.name {
        Some(n) => n.clone(),
        None => default_name(&command),
    };
    let mut spec = LaunchSpec::new(name, command, args.command[1..].to_vec());
    // The same defaults as a stack's components.
    spec.resources = Resources::defaults();
    // Only a named run keeps a volume (and a uid range) to come back to.
    spec.data = if args.name.is_some() {
        DataKind::Persistent
    } else {
        DataKind::Ephemeral
    };
    if let Some(d) = &args.disk {
        let bytes = quantity::parse_size(d).map_err(|e| invalid(format!("--disk {d}: {e}")))?;
        if bytes < Resources::MIN_DISK {
            return Err(invalid(format!(
                "--disk {d}: at least {} MiB",
                Resources::MIN_DISK >> 20
            )));
        }
        spec.resources.disk_bytes = Some(bytes);
    }
    spec.native_aio = args.allow_native_aio;
    spec.logs = LogLimits {
        max_bytes: quantity::parse_size(&args.log_max_size)
            .map_err(|e| invalid(format!("--log-max-size {}: {e}", args.log_max_size)))?,
        files: args.log_files,
    };
    if let Some(m) = &args.memory {
        spec.resources.memory_bytes =
            Some(quantity::parse_size(m).map_err(|e| invalid(format!("--memory {m}: {e}")))?);
    }
    if let Some(c) = args.cpus {
        spec.resources.cpus =
            Some(quantity::check_cpus(c).map_err(|e| invalid(format!("--cpus {c}: {e}")))?);
    }
    if args.pids == Some(0) {
        return Err(invalid("--pids must be at least 1"));
    }
    if let Some(p) = args.pids {
        spec.resources.pids = Some(p);
    }
    if let Some(n) = args.open_files {
        spec.resources.open_files = Some(n);
    }
    spec.readonly_root = args.readonly_root;
    spec.rootfs = args.rootfs.clone();
    spec.netns = args.netns.as_deref().map(|n| {
        if n.contains('/') {
            std::path::PathBuf::from(n)
        } else {
            std::path::Path::new("/run/netns").join(n)
        }
    });
    spec.listen = args.listen.clone();
    if spec.listen.contains(&0) {
        return Err(invalid("--listen ports must be between 1 and 65535"));
    }
    spec.working_dir = args.workdir.clone();
    if let Some(user) = &args.user {
        let id = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|n| *n < 65_536)
                .ok_or_else(|| invalid(format!("--user {user}: ids are numbers from 0 to 65535")))
        };
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (id(u)?, id(g)?),
            None => (id(user)?, id(user)?),
        };
        spec.user = Some(osvm_core::RunAs {
            uid,
            gid,
            groups: Vec::new(),
        });
    }
    for b in &args.bind {
        spec.binds
            .push(BindMount::parse_flag(b).map_err(|e| invalid(format!("--bind {b}: {e}")))?);
    }
    for e in &args.env {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| invalid(format!("--env {e}: expected KEY=VALUE")))?;
        if k.is_empty() {
            return Err(invalid(format!("--env {e}: the key is empty")));
        }
        spec.env.push((k.into(), v.into()));
    }
    Ok(spec)
}

/// `/usr/bin/python3` -> `python3`, lower-cased and limited to the characters names allow.
fn default_name(command: &str) -> String {
    let base = command.rsplit('/').next().unwrap_or(command);
    let mut name: String = base
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .take(40)
        .collect();
    if name.is_empty() {
        name = "run".into();
    }
    name
}

pub fn run(global: &Global, args: RunArgs) -> anyhow::Result<ExitCode> {
    let spec = spec_from(&args)?;
    let grace = quantity::parse_duration(&args.stop_timeout)
        .map_err(|e| invalid(format!("--stop-timeout {}: {e}", args.stop_timeout)))?;
    let signals = crate::signals::listen()?;
    let runtime = sandbox_runtime(global)?;
    let mut terminal = None;
    let stdin = if !args.interactive {
        std::process::Stdio::null()
    } else if std::io::stdin().is_terminal() {
        let t = crate::terminal::Relay::open().context("make a terminal for the command")?;
        let slave = t.slave()?;
        terminal = Some(t);
        std::process::Stdio::from(slave)
    } else {
        std::process::Stdio::inherit()
    };
    let instance = runtime
        .start_sandbox(
            &spec,
            osvm_sandbox::StartOptions {
                stdin: Some(stdin),
                ..Default::default()
            },
        )
        .map_err(SetupFailed)?;
    let relay = terminal.map(crate::terminal::Relay::start);
    let (stdout_log, stderr_log) = instance.log_paths();
    for (what, how) in instance.confinement().facts() {
        tracing::debug!(instance = instance.id(), "{what}: {how}");
    }
    if !args.quiet && global.output == Output::Text {
        tracing::info!(
            instance = instance.id(),
            pid = instance.init_pid(),
            "started; logs in {}",
            instance.instance_dir().display()
        );
    }
    let json = global.output == Output::Json;
    let (stdout_tty, stderr_tty) = (
        std::io::stdout().is_terminal(),
        std::io::stderr().is_terminal(),
    );
    let out = if json {
        Follower::start(&stdout_log, Box::new(std::io::stderr()), stderr_tty)
    } else {
        Follower::start(&stdout_log, Box::new(std::io::stdout()), stdout_tty)
    }
    .context("follow the stdout log")?;
    let err = Follower::start(&stderr_log, Box::new(std::io::stderr()), stderr_tty)
        .context("follow the stderr log")?;

    let status = loop {
        if let Some(status) = instance
            .wait_timeout(Some(Duration::from_millis(200)))
            .map_err(SetupFailed)?
        {
            break status;
        }
        if let Ok(sig) = signals.try_recv() {
            if !args.quiet {
                tracing::info!("{sig}: stopping (grace {})", args.stop_timeout);
            }
            break instance.stop(grace).map_err(SetupFailed)?;
        }
    };
    out.finish();
    err.finish();
    drop(relay);

    let record = instance.exit_record();
    if args.rm {
        std::fs::remove_dir_all(instance.instance_dir())
            .with_context(|| format!("remove {}", instance.instance_dir().display()))?;
    }
    if json {
        let doc = serde_json::json!({
            "instance": instance.id(),
            "status": status,
            "exit_code": status.shell_code(),
            "stats": record.as_ref().and_then(|r| r.stats.clone()),
            "confinement": instance.confinement().facts().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "logs": if args.rm { serde_json::Value::Null } else { serde_json::json!({ "stdout": stdout_log, "stderr": stderr_log }) },
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if !args.quiet && (!status.success() || status.oom_killed) {
        if args.rm {
            tracing::warn!(instance = instance.id(), "{status}");
        } else {
            tracing::warn!(
                instance = instance.id(),
                "{status}; logs in {}",
                instance.instance_dir().display()
            );
        }
    }
    Ok(ExitCode::from(status.shell_code().clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::default_name;

    #[test]
    fn default_names_are_valid_component_names() {
        assert_eq!(default_name("/usr/bin/python3"), "python3");
        assert_eq!(default_name("My_Tool.sh"), "my-tool-sh");
        assert_eq!(default_name("///"), "run");
    }
}
