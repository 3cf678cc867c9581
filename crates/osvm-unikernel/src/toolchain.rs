//! The host tools a Hermit build needs, found and checked before anything is built.
//!
//! The kernel and the loader are built for `x86_64-unknown-none` (a rustup target), the app for
//! `x86_64-unknown-hermit` with `-Zbuild-std` (which needs the `rust-src` component), and the
//! kernel's archive is post-processed with binutils' `nm` and `objcopy`. Every missing piece is
//! reported at once, each with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use osvm_guest::find_program;

/// The tools of one build.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// `cargo`.
    pub cargo: PathBuf,
    /// `rustc`.
    pub rustc: PathBuf,
    /// `rustc --version`, part of every cache key.
    pub rustc_version: String,
    /// `rustc --print sysroot`.
    pub sysroot: PathBuf,
    /// binutils' `objcopy`.
    pub objcopy: PathBuf,
    /// binutils' `nm`.
    pub nm: PathBuf,
}

/// What is missing, one entry per tool, each with how to get it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the Hermit build tools are incomplete: {}", .0.join("; "))]
pub struct Missing(pub Vec<String>);

fn output(program: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("run {}: {e}", program.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{} {}` failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Toolchain {
    /// Finds every tool; all that are missing are named together.
    pub fn probe() -> Result<Self, Missing> {
        let mut missing = Vec::new();
        let cargo = find_program("cargo");
        let rustc = find_program("rustc");
        if cargo.is_none() || rustc.is_none() {
            missing.push("cargo and rustc are not installed (https://rustup.rs)".to_owned());
        }
        let objcopy = find_program("objcopy");
        let nm = find_program("nm");
        if objcopy.is_none() || nm.is_none() {
            missing.push("objcopy/nm are not installed (Debian package binutils)".to_owned());
        }
        let mut version = String::new();
        let mut sysroot = PathBuf::new();
        if let Some(rustc) = &rustc {
            match output(rustc, &["--version"]) {
                Ok(v) => version = v,
                Err(e) => missing.push(e),
            }
            match output(rustc, &["--print", "sysroot"]) {
                Ok(s) => sysroot = PathBuf::from(s),
                Err(e) => missing.push(e),
            }
        }
        if !sysroot.as_os_str().is_empty() {
            let lib = sysroot.join("lib/rustlib");
            if !lib.join("src/rust/library/std/Cargo.toml").is_file() {
                missing.push(
                    "the standard library's source is not installed (rustup component add \
                     rust-src); -Zbuild-std builds std for x86_64-unknown-hermit from it"
                        .to_owned(),
                );
            }
            if !lib.join("x86_64-unknown-none/lib").is_dir() {
                missing.push(
                    "the x86_64-unknown-none target is not installed (rustup target add \
                     x86_64-unknown-none); the Hermit kernel and osvm's loader are built for it"
                        .to_owned(),
                );
            }
        }
        match (cargo, rustc, objcopy, nm) {
            (Some(cargo), Some(rustc), Some(objcopy), Some(nm)) if missing.is_empty() => Ok(Self {
                cargo,
                rustc,
                rustc_version: version,
                sysroot,
                objcopy,
                nm,
            }),
            _ => Err(Missing(missing)),
        }
    }

    /// A `cargo` command with this toolchain's `rustc` and no inherited `RUSTFLAGS`.
    pub fn cargo(&self, dir: &Path) -> Command {
        let mut c = Command::new(&self.cargo);
        c.current_dir(dir)
            .env("RUSTC", &self.rustc)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTC_WORKSPACE_WRAPPER");
        c
    }
}
