//! `osvm kernel fetch|show`, `osvm image build`, `osvm snapshot ls|prune`, and the checks `osvm
//! up` makes before it starts microVM components.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use osvm_core::RuntimeKind;
use osvm_microvm::kernel::{self, Kernel, Progress};
use osvm_microvm::{MicroVmConfig, MicroVmRuntime};
use serde_json::json;

use super::{SetupFailed, human_bytes, sandbox_runtime, state_dir};
use crate::cli::{Global, ImageCommand, KernelCommand, Output, SnapshotCommand};

fn runtime(global: &Global) -> anyhow::Result<MicroVmRuntime> {
    let sandbox = Arc::new(sandbox_runtime(global)?);
    let config = MicroVmConfig::new(sandbox.config().state_dir.clone());
    Ok(MicroVmRuntime::new(sandbox, config))
}

pub fn kernel(global: &Global, command: KernelCommand) -> anyhow::Result<ExitCode> {
    let state = state_dir(global)?;
    match command {
        KernelCommand::Fetch(args) => {
            let text = global.output == Output::Text;
            let mut progress = |p: Progress| {
                if !text {
                    return;
                }
                match p {
                    Progress::Resolved {
                        package,
                        version,
                        size,
                    } => eprintln!(
                        "resolved {} -> {package} {version} ({})",
                        kernel::META_PACKAGE,
                        human_bytes(size)
                    ),
                    Progress::AlreadyStored(dir) => {
                        eprintln!(
                            "already stored in {} (use --force to fetch again)",
                            dir.display()
                        )
                    }
                    Progress::Downloading => eprintln!("downloading with apt-get download ..."),
                    Progress::Verified(sha) => eprintln!("SHA-256 {sha} matches the archive index"),
                    Progress::Unpacking => {
                        eprintln!("unpacking; picking the kernel and its virtio/vsock modules ...")
                    }
                    Progress::Stored(dir) => eprintln!("stored in {}", dir.display()),
                }
            };
            let k = kernel::fetch(&state, args.force, &mut progress)?;
            print_kernel(global, &k)?;
            Ok(ExitCode::SUCCESS)
        }
        KernelCommand::Show => {
            let k = Kernel::installed(&state)?;
            print_kernel(global, &k)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_kernel(global: &Global, k: &Kernel) -> anyhow::Result<()> {
    if global.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "release": k.release,
                "image": k.image,
                "modules": k.modules,
            }))?
        );
    } else {
        println!("kernel   {}", k.release);
        println!("image    {}", k.image.display());
        println!("modules  {} (load order)", k.modules.len());
        for m in &k.modules {
            println!("  {}", m.file_name().unwrap_or_default().to_string_lossy());
        }
    }
    Ok(())
}

pub fn image(global: &Global, command: ImageCommand) -> anyhow::Result<ExitCode> {
    let ImageCommand::Build(args) = command;
    let stack = osvm_core::stack::load(&args.file)?;
    let rt = runtime(global)?;
    let targets: Vec<_> = stack
        .components
        .iter()
        .filter(|c| c.runtime.kind() == RuntimeKind::MicroVm)
        .filter(|c| args.component.as_ref().is_none_or(|n| &c.name == n))
        .collect();
    if targets.is_empty() {
        anyhow::bail!(
            "{} has no microVM component{}",
            args.file.display(),
            args.component
                .as_ref()
                .map(|n| format!(" called `{n}`"))
                .unwrap_or_default()
        );
    }
    let mut out = Vec::new();
    for c in targets {
        let spec = c.launch_spec(&stack.name);
        let k = rt.kernel_for(&spec).map_err(SetupFailed)?;
        if global.output == Output::Text {
            eprintln!("{}: building the image (kernel {}) ...", c.name, k.release);
        }
        let img = rt
            .image_for(&spec, &k)
            .with_context(|| format!("component `{}`", c.name))?;
        if global.output == Output::Text {
            println!(
                "{}  {}  {}  {} entries  {}",
                c.name,
                &img.digest[..16],
                human_bytes(img.size),
                img.entries,
                if img.built { "built" } else { "stored already" }
            );
        }
        out.push(json!({
            "component": c.name,
            "digest": img.digest,
            "path": img.path,
            "size": img.size,
            "entries": img.entries,
            "built": img.built,
            "kernel": k.release,
        }));
    }
    if global.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `osvm snapshot ls|prune`, on the state directory's snapshots (each removal under the
/// snapshot's lock, so a daemon's start never copies one half removed).
pub fn snapshot(global: &Global, command: SnapshotCommand) -> anyhow::Result<ExitCode> {
    use osvm_microvm::snapshot;
    let dir = state_dir(global)?.join("snapshots");
    match command {
        SnapshotCommand::Ls => {
            let stored = snapshot::list(&dir).with_context(|| format!("read {}", dir.display()))?;
            if global.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&stored)?);
                return Ok(ExitCode::SUCCESS);
            }
            if stored.is_empty() {
                eprintln!("no snapshots in {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<16}  {:>7}  {:<19}  USED BY", "KEY", "SIZE", "MADE");
            for s in &stored {
                let made = s
                    .made
                    .map(|secs| {
                        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
                        humantime::format_rfc3339_seconds(t)
                            .to_string()
                            .replace('T', " ")
                            .trim_end_matches('Z')
                            .to_owned()
                    })
                    .unwrap_or_else(|| "-".into());
                let users = match (&s.set_aside, s.users.is_empty()) {
                    (Some(why), _) => format!("set aside: {why}"),
                    (None, true) => "(none: `osvm snapshot prune` removes it)".into(),
                    (None, false) => s.users.join(", "),
                };
                println!(
                    "{:<16}  {:>7}  {made:<19}  {users}",
                    &s.key[..s.key.len().min(16)],
                    human_bytes(s.bytes)
                );
            }
        }
        SnapshotCommand::Prune => {
            let removed =
                snapshot::prune(&dir).with_context(|| format!("prune {}", dir.display()))?;
            let freed: u64 = removed.iter().map(|(_, b)| b).sum();
            if global.output == Output::Json {
                let keys: Vec<_> = removed
                    .iter()
                    .map(|(k, b)| json!({ "key": k, "bytes": b }))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "removed": keys, "bytes": freed }))?
                );
            } else {
                for (key, bytes) in &removed {
                    println!(
                        "removed {}  {}",
                        &key[..key.len().min(16)],
                        human_bytes(*bytes)
                    );
                }
                eprintln!(
                    "{} snapshot(s) removed, {} freed",
                    removed.len(),
                    human_bytes(freed)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
