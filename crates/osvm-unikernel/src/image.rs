//! Hermit images: a Rust crate built for `x86_64-unknown-hermit` and linked with the kernel
//! archive, so that one ELF file is the whole guest.
//!
//! `build` runs, each step skipped when its result is stored: the prerequisites check, the
//! kernel ([`crate::kernel`]), the loader ([`crate::loader`]) and the app (`cargo build
//! --target x86_64-unknown-hermit -Zbuild-std=std,panic_abort` with `RUSTC_BOOTSTRAP=1`, the
//! archive given to the linker). The crate needs no build script of its own.
//!
//! Images are content-addressed: an image is stored as `images/<sha256>.elf`, and a build
//! record `builds/<key>.json` maps the digest of the crate's files (everything but `target/`
//! and hidden entries), the kernel and the compiler to it, so an unchanged crate is not
//! built again. Path dependencies outside the crate's directory are not part of the key.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use osvm_guest::digest::{self, Hasher};
use serde::{Deserialize, Serialize};

use crate::kernel::{self, KernelArchive};
use crate::steps::{self, BuildError, Progress};
use crate::toolchain::Toolchain;

/// Bumped when the app build changes in a way that changes images.
const RECIPE: &str = "osvm-hermit-app-recipe-1";

/// A stored Hermit image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The ELF file.
    pub path: PathBuf,
    /// Its SHA-256.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// The binary's name.
    pub name: String,
    /// The crate it was built from, if osvm built it.
    pub source: Option<PathBuf>,
    /// The kernel it links (cache key), if osvm built it.
    pub kernel: Option<String>,
}

/// Where images and build records live.
fn root(state_dir: &Path) -> PathBuf {
    state_dir.join("unikernel")
}

/// Whether `path` looks like a crate (has a `Cargo.toml`).
pub fn is_crate(path: &Path) -> bool {
    path.join("Cargo.toml").is_file()
}

/// Checks that `path` is a 64-bit x86 ELF program and describes it (for images osvm did
/// not build).
pub fn existing(path: &Path) -> Result<Image, BuildError> {
    check_elf(path)?;
    let digest = digest::sha256_file(path)
        .map_err(|e| BuildError::io(format!("read {}", path.display()), e))?;
    let size = fs::metadata(path)
        .map_err(|e| BuildError::io(format!("stat {}", path.display()), e))?
        .len();
    Ok(Image {
        path: path.to_path_buf(),
        digest,
        size,
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source: None,
        kernel: None,
    })
}

/// Refuses anything but an x86-64 ELF program (fixed-address or position-independent).
pub fn check_elf(path: &Path) -> Result<(), BuildError> {
    let mut head = [0u8; 20];
    let mut f =
        fs::File::open(path).map_err(|e| BuildError::io(format!("open {}", path.display()), e))?;
    let n = f
        .read(&mut head)
        .map_err(|e| BuildError::io(format!("read {}", path.display()), e))?;
    let bad = |why: &str| {
        Err(BuildError::Input(format!(
            "{} is not a Hermit image: {why}",
            path.display()
        )))
    };
    if n < head.len() || &head[..4] != b"\x7fELF" {
        return bad("not an ELF file");
    }
    if head[4] != 2 || u16::from_le_bytes([head[18], head[19]]) != 62 {
        return bad("not a 64-bit x86 ELF file");
    }
    // Hermit apps are position-independent (DYN); the loader relocates them.
    if !matches!(u16::from_le_bytes([head[16], head[17]]), 2 | 3) {
        return bad("not an executable (ELF type EXEC or DYN)");
    }
    Ok(())
}

/// The digest of the crate's files, the kernel and the compiler.
pub fn source_key(dir: &Path, kernel_key: &str, tc: &Toolchain) -> Result<String, BuildError> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut h = Hasher::default();
    for part in [RECIPE, kernel_key, &tc.rustc_version] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    for rel in files {
        let bytes = fs::read(dir.join(&rel))
            .map_err(|e| BuildError::io(format!("read {}", dir.join(&rel).display()), e))?;
        h.update(rel.to_string_lossy().as_bytes());
        h.update(b"\0");
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finish())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), BuildError> {
    let entries =
        fs::read_dir(dir).map_err(|e| BuildError::io(format!("read {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| BuildError::io(format!("read {}", dir.display()), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || (dir == root && name == "target") {
            continue;
        }
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| BuildError::io(format!("stat {}", path.display()), e))?;
        if kind.is_dir() {
            collect(root, &path, out)?;
        } else if kind.is_file() {
            out.push(path.strip_prefix(root).expect("under root").to_path_buf());
        }
    }
    Ok(())
}

/// The stored image of the crate at `dir` built with `tc`, if there is one.
pub fn cached(state_dir: &Path, dir: &Path, tc: &Toolchain) -> Result<Option<Image>, BuildError> {
    let key = source_key(dir, &kernel::key(tc), tc)?;
    Ok(read_record(state_dir, &key))
}

fn record_path(state_dir: &Path, key: &str) -> PathBuf {
    root(state_dir)
        .join("builds")
        .join(format!("{}.json", steps::short(key)))
}

fn read_record(state_dir: &Path, key: &str) -> Option<Image> {
    let text = fs::read(record_path(state_dir, key)).ok()?;
    let image: Image = serde_json::from_slice(&text).ok()?;
    // A record whose image is gone or changed is no cache hit.
    let digest = digest::sha256_file(&image.path).ok()?;
    (digest == image.digest).then_some(image)
}

/// The binary target of the crate at `dir` (its only one, or the one named like the package).
fn binary_name(dir: &Path, tc: &Toolchain) -> Result<String, BuildError> {
    let mut cmd = tc.cargo(dir);
    cmd.args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--offline",
    ]);
    let meta = steps::stdout_of("cargo metadata", cmd)?;
    let meta: serde_json::Value = serde_json::from_str(&meta)
        .map_err(|e| BuildError::Input(format!("cargo metadata printed bad JSON: {e}")))?;
    let manifest = dir.join("Cargo.toml");
    let manifest = manifest.canonicalize().unwrap_or(manifest);
    let package = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
        .ok_or_else(|| {
            BuildError::Input(format!(
                "{} is not a package (a workspace root without a package cannot be built)",
                dir.display()
            ))
        })?;
    let bins: Vec<&str> = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str())
        .collect();
    let pkg = package["name"].as_str().unwrap_or_default();
    match bins.as_slice() {
        [] => Err(BuildError::Input(format!(
            "package `{pkg}` in {} has no binary target: a Hermit image is a program",
            dir.display()
        ))),
        [one] => Ok((*one).to_owned()),
        many if many.contains(&pkg) => Ok(pkg.to_owned()),
        many => Err(BuildError::Input(format!(
            "package `{pkg}` has several binaries ({}) and none is named like the package",
            many.join(", ")
        ))),
    }
}

/// The canonical directory of the crate at `dir`, or why it is not one.
fn crate_dir(dir: &Path) -> Result<PathBuf, BuildError> {
    let dir = dir
        .canonicalize()
        .map_err(|e| BuildError::io(format!("find {}", dir.display()), e))?;
    if !is_crate(&dir) {
        return Err(BuildError::Input(format!(
            "{} has no Cargo.toml: `osvm unikernel build` takes the directory of a Rust crate",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The progress line of the prerequisites check.
pub const CHECKING_TOOLS: &str =
    "checking the build tools (cargo, rust-src, x86_64-unknown-none, binutils)";

/// Builds the crate at `dir` into an image (kernel and loader first, when they are not
/// stored), or returns the stored image of the same sources.
pub fn build(
    state_dir: &Path,
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Image, BuildError> {
    crate_dir(dir)?;
    progress(Progress::Step(CHECKING_TOOLS.into()));
    let tc = Toolchain::probe()?;
    build_with(state_dir, dir, &tc, progress)
}

/// [`build`] with tools already found.
pub fn build_with(
    state_dir: &Path,
    dir: &Path,
    tc: &Toolchain,
    progress: &mut dyn FnMut(Progress),
) -> Result<Image, BuildError> {
    let dir = crate_dir(dir)?;
    let _lock = steps::BuildLock::acquire(state_dir)?;
    progress(Progress::Step(format!("using {}", tc.rustc_version)));
    let kernel = kernel::ensure(state_dir, tc, progress)?;
    crate::loader::ensure(state_dir, tc, progress)?;
    let key = source_key(&dir, &kernel.key, tc)?;
    if let Some(image) = read_record(state_dir, &key) {
        progress(Progress::Step(format!(
            "app: stored already ({}, {} bytes)",
            image.path.display(),
            image.size
        )));
        return Ok(image);
    }
    let name = binary_name(&dir, tc)?;
    build_app(state_dir, &dir, &name, &kernel, &key, tc, progress)
}

fn build_app(
    state_dir: &Path,
    dir: &Path,
    name: &str,
    kernel: &KernelArchive,
    key: &str,
    tc: &Toolchain,
    progress: &mut dyn FnMut(Progress),
) -> Result<Image, BuildError> {
    progress(Progress::Step(format!(
        "app: building `{name}` for x86_64-unknown-hermit with -Zbuild-std (std is built too; \
         about 1 minute the first time)"
    )));
    let target = root(state_dir).join("work").join("app-target");
    let mut cmd = tc.cargo(dir);
    cmd.args([
        "build",
        "--release",
        "--bin",
        name,
        "--target",
        "x86_64-unknown-hermit",
        "-Zbuild-std=std,panic_abort",
        "-Zbuild-std-features=compiler-builtins-mem",
    ])
    .env("RUSTC_BOOTSTRAP", "1")
    .env("CARGO_TARGET_DIR", &target)
    // The kernel is linked into the program; separated by 0x1f, a path may hold spaces.
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("-C\x1flink-arg={}", kernel.archive().display()),
    );
    steps::run("building the app", cmd, progress)?;
    let built = target.join("x86_64-unknown-hermit/release").join(name);
    check_elf(&built)?;
    let digest = digest::sha256_file(&built)
        .map_err(|e| BuildError::io(format!("read {}", built.display()), e))?;
    let path = root(state_dir).join("images").join(format!("{digest}.elf"));
    if !path.is_file() {
        steps::install(&built, &path)?;
    }
    let size = fs::metadata(&path)
        .map_err(|e| BuildError::io(format!("stat {}", path.display()), e))?
        .len();
    let image = Image {
        path,
        digest,
        size,
        name: name.to_owned(),
        source: Some(dir.to_path_buf()),
        kernel: Some(kernel.key.clone()),
    };
    steps::write_atomic(
        &record_path(state_dir, key),
        &serde_json::to_vec_pretty(&image).expect("serializes"),
    )?;
    progress(Progress::Step(format!(
        "app: stored {} ({} bytes)",
        image.path.display(),
        image.size
    )));
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("osvm-unikernel-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn elf_checks_refuse_what_the_loader_cannot_boot() {
        let d = scratch("elf");
        let short = d.join("short");
        fs::write(&short, b"\x7fELF").unwrap();
        let text = d.join("text");
        fs::write(&text, b"#!/bin/sh\necho not an image at all\n").unwrap();
        for p in [&short, &text] {
            let e = check_elf(p).unwrap_err().to_string();
            assert!(e.contains("not an ELF file"), "{e}");
        }
        let mut elf32 = vec![0u8; 64];
        elf32[..4].copy_from_slice(b"\x7fELF");
        elf32[4] = 1;
        fs::write(d.join("elf32"), &elf32).unwrap();
        let e = check_elf(&d.join("elf32")).unwrap_err().to_string();
        assert!(e.contains("64-bit x86"), "{e}");
        // An object file (ELF type REL) is no program.
        let mut object = vec![0u8; 64];
        object[..4].copy_from_slice(b"\x7fELF");
        object[4] = 2;
        object[16] = 1;
        object[18] = 62;
        fs::write(d.join("object.o"), &object).unwrap();
        let e = check_elf(&d.join("object.o")).unwrap_err().to_string();
        assert!(e.contains("not an executable"), "{e}");
        // This test binary is an x86-64 position-independent executable, like a Hermit app.
        check_elf(&std::env::current_exe().unwrap()).unwrap();
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_source_key_follows_content_not_build_output() {
        let d = scratch("key");
        fs::create_dir_all(d.join("src")).unwrap();
        fs::create_dir_all(d.join("target/release")).unwrap();
        fs::write(d.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
        fs::write(d.join("src/main.rs"), "fn main() {}\n").unwrap();
        let tc = Toolchain {
            cargo: "cargo".into(),
            rustc: "rustc".into(),
            rustc_version: "rustc 1.95.0".into(),
            sysroot: "/".into(),
            objcopy: "objcopy".into(),
            nm: "nm".into(),
        };
        let a = source_key(&d, "k", &tc).unwrap();
        fs::write(d.join("target/release/x"), "built").unwrap();
        fs::write(d.join(".hidden"), "editor state").unwrap();
        assert_eq!(a, source_key(&d, "k", &tc).unwrap());
        fs::write(d.join("src/main.rs"), "fn main() { println!(); }\n").unwrap();
        let b = source_key(&d, "k", &tc).unwrap();
        assert_ne!(a, b);
        assert_ne!(b, source_key(&d, "other kernel", &tc).unwrap());
        fs::remove_dir_all(&d).unwrap();
    }
}
