//! osvm's Hermit loader (`crates/osvm-hermit-loader`), carried in this crate as source and built
//! on first use for `x86_64-unknown-none` with stable cargo.
//!
//! QEMU boots it through multiboot (`-kernel`), which accepts only 32-bit ELF files: the
//! 64-bit build is converted with `objcopy -O elf32-i386` (its entry code starts in 32-bit
//! protected mode). Carrying the source lets an installed `osvm` build it without the
//! repository; the result is cached by the digest of the source and the compiler.

use std::fs;
use std::path::{Path, PathBuf};

use osvm_guest::digest::Hasher;

use crate::steps::{self, BuildError, Progress};
use crate::toolchain::Toolchain;

/// The loader's files, relative to its crate.
const SOURCES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../osvm-hermit-loader/Cargo.toml"),
    ),
    (
        "Cargo.lock",
        include_str!("../../osvm-hermit-loader/Cargo.lock"),
    ),
    (
        ".cargo/config.toml",
        include_str!("../../osvm-hermit-loader/.cargo/config.toml"),
    ),
    (
        "linker.ld",
        include_str!("../../osvm-hermit-loader/linker.ld"),
    ),
    (
        "src/entry.s",
        include_str!("../../osvm-hermit-loader/src/entry.s"),
    ),
    (
        "src/main.rs",
        include_str!("../../osvm-hermit-loader/src/main.rs"),
    ),
    (
        "src/fdt.rs",
        include_str!("../../osvm-hermit-loader/src/fdt.rs"),
    ),
];

/// The cache key of the loader built by `tc`.
pub fn key(tc: &Toolchain) -> String {
    let mut h = Hasher::default();
    h.update(tc.rustc_version.as_bytes());
    for (name, text) in SOURCES {
        h.update(b"\0");
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(text.as_bytes());
    }
    h.finish()
}

/// The loader QEMU boots (32-bit ELF), built now unless it is already stored; takes the build
/// lock.
pub fn ensure_locked(
    state_dir: &Path,
    tc: &Toolchain,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, BuildError> {
    let _lock = steps::BuildLock::acquire(state_dir)?;
    ensure(state_dir, tc, progress)
}

/// The loader QEMU boots (32-bit ELF), built now unless it is already stored (the caller holds
/// the build lock).
pub(crate) fn ensure(
    state_dir: &Path,
    tc: &Toolchain,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, BuildError> {
    let key = key(tc);
    let out = state_dir
        .join("unikernel")
        .join("loaders")
        .join(steps::short(&key))
        .join("osvm-hermit-loader.elf32");
    if out.is_file() {
        progress(Progress::Step(format!(
            "loader: already built ({})",
            out.display()
        )));
        return Ok(out);
    }
    let work = state_dir.join("unikernel").join("work");
    let tree = work.join(format!("loader-{}", steps::short(&key)));
    let _ = fs::remove_dir_all(&tree);
    for (name, text) in SOURCES {
        let path = tree.join(name);
        fs::create_dir_all(path.parent().expect("has a parent"))
            .and_then(|()| fs::write(&path, text))
            .map_err(|e| BuildError::io(format!("write {}", path.display()), e))?;
    }
    progress(Progress::Step(
        "loader: building osvm-hermit-loader for x86_64-unknown-none".into(),
    ));
    let target = work.join("loader-target");
    let mut cmd = tc.cargo(&tree);
    cmd.args(["build", "--release", "--locked"])
        .env("CARGO_TARGET_DIR", &target);
    steps::run("building osvm-hermit-loader", cmd, progress)?;
    let built = target.join("x86_64-unknown-none/release/osvm-hermit-loader");
    let converted = tree.join("osvm-hermit-loader.elf32");
    let mut cmd = std::process::Command::new(&tc.objcopy);
    cmd.args(["-O", "elf32-i386"]).arg(&built).arg(&converted);
    steps::stdout_of("objcopy -O elf32-i386", cmd)?;
    steps::install(&converted, &out)?;
    let _ = fs::remove_dir_all(&tree);
    progress(Progress::Step(format!("loader: stored {}", out.display())));
    Ok(out)
}
