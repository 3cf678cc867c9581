//! The Hermit kernel: `hermit-kernel` 0.11.0 from the Rust package registry, built for
//! `x86_64-unknown-none` and post-processed into the static archive apps link.
//!
//! 0.11.0 is the last release with its full source in the registry. It pins an old nightly;
//! on a current stable rustc it needs two source fixes, applied here every time the same way:
//! its `rust-toolchain.toml` is dropped, and its four `#[naked]` attributes are written
//! `#[unsafe(naked)]`. A third fixes its virtio-fs client ([`fix_fuse_paths`]): it names files
//! to the host by absolute paths (`/osvm/identity/cert.pem`), which a virtiofsd that is not
//! chrooted into its share (osvm confines it in a sandbox instead) resolves from its own root;
//! the fix sends them relative to the share. A fourth gives it entropy where the CPU has
//! `RDRAND` but not `RDSEED` (QEMU's TCG): it seeded its generator from `RDSEED` only, and
//! without it fell back to a Park-Miller generator with a fixed seed, so every guest drew the
//! same "random" numbers ([`fix_entropy`]). It builds with `RUSTC_BOOTSTRAP=1` (the kernel uses unstable
//! features) and `-Zmutable-noalias=no`, as its own build tool does.
//!
//! The archive is then treated as the kernel's build tool treats it: the `.llvmbc` and
//! `.llvmcmd` sections are removed, and every global symbol except the entry points and the
//! `sys_*` system calls gets a `hermit` prefix, so the kernel's own copies of `memcpy`, the
//! maths functions and Rust's runtime do not collide with the app's.
//!
//! Features: `pci` (virtio-net on QEMU's PCI bus), `acpi`, `fsgsbase`, `tcp`, `fuse` (its
//! virtio-fs driver: the component's identity reaches the app at `/run/osvm/identity`). Not
//! `dhcpv4`: osvm gives the guest the component's address on the kernel command line (`-ip`,
//! `-gateway`, `-mask`). Not `smp` (its build needs llvm-tools).

use std::fs;
use std::path::{Path, PathBuf};

use osvm_guest::digest::Hasher;

use crate::steps::{self, BuildError, Progress};
use crate::toolchain::Toolchain;

/// The kernel release osvm builds.
pub const VERSION: &str = "0.11.0";
/// Its cargo features.
pub const FEATURES: &str = "pci,acpi,fsgsbase,tcp,fuse";
/// Bumped whenever the source fixes or the post-processing change, so old builds are not reused.
const RECIPE: &str = "osvm-hermit-kernel-recipe-3";
/// Symbols that keep their names: the entry points the loader and the app's std call.
const KEEP: &[&str] = &["_start", "__bss_start", "mcount", "runtime_entry"];

/// A built kernel archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArchive {
    /// The directory holding `libhermit.a`.
    pub dir: PathBuf,
    /// The cache key (release, features, rustc, recipe).
    pub key: String,
}

impl KernelArchive {
    /// `libhermit.a`.
    pub fn archive(&self) -> PathBuf {
        self.dir.join("libhermit.a")
    }
}

/// The cache key of a kernel built by `tc`.
pub fn key(tc: &Toolchain) -> String {
    let mut h = Hasher::default();
    for part in [VERSION, FEATURES, &tc.rustc_version, RECIPE] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    h.finish()
}

/// Where built kernels are kept.
fn kernels_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("unikernel").join("kernels")
}

/// The kernel for `tc`, built now unless it is already stored (the caller holds the build
/// lock).
pub(crate) fn ensure(
    state_dir: &Path,
    tc: &Toolchain,
    progress: &mut dyn FnMut(Progress),
) -> Result<KernelArchive, BuildError> {
    let key = key(tc);
    let dir = kernels_dir(state_dir).join(steps::short(&key));
    let found = KernelArchive {
        dir: dir.clone(),
        key: key.clone(),
    };
    if found.archive().is_file() {
        progress(Progress::Step(format!(
            "kernel: hermit-kernel {VERSION} already built ({})",
            found.archive().display()
        )));
        return Ok(found);
    }
    let work = state_dir.join("unikernel").join("work");
    let source = fetch_source(&work, tc, progress)?;
    let tree = work.join(format!("hermit-kernel-{}", steps::short(&key)));
    progress(Progress::Step(format!(
        "kernel: copying the source to {} and applying the stable-Rust fixes",
        tree.display()
    )));
    let _ = fs::remove_dir_all(&tree);
    copy_tree(&source, &tree)?;
    let fixed = apply_fixes(&tree)?;
    progress(Progress::Step(format!(
        "kernel: dropped rust-toolchain.toml, rewrote {fixed} #[naked] attributes, made virtio-fs \
         paths relative to the share, seeded entropy from RDRAND where RDSEED is missing"
    )));
    progress(Progress::Step(format!(
        "kernel: building hermit-kernel {VERSION} for x86_64-unknown-none (features {FEATURES}; \
         about 1-2 minutes)"
    )));
    let mut cmd = tc.cargo(&tree);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--target",
        "x86_64-unknown-none",
        "--no-default-features",
        "--features",
        FEATURES,
    ])
    .env("RUSTC_BOOTSTRAP", "1")
    .env("RUSTFLAGS", "-Zmutable-noalias=no")
    // Plain `[0][INFO] text` log lines, which the serial reader tells from the app's output.
    .env("NO_COLOR", "1")
    .env("CARGO_TARGET_DIR", work.join("kernel-target"));
    steps::run("building hermit-kernel", cmd, progress)?;
    let built = work.join("kernel-target/x86_64-unknown-none/release/libhermit.a");
    let staging = work.join(format!("dist-{}", steps::short(&key)));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)
        .map_err(|e| BuildError::io(format!("create {}", staging.display()), e))?;
    let archive = staging.join("libhermit.a");
    fs::copy(&built, &archive)
        .map_err(|e| BuildError::io(format!("copy {}", built.display()), e))?;
    progress(Progress::Step(
        "kernel: post-processing the archive (strip bitcode, prefix symbols with `hermit`)".into(),
    ));
    post_process(tc, &archive)?;
    fs::create_dir_all(kernels_dir(state_dir))
        .map_err(|e| BuildError::io("create the kernels directory", e))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staging, &dir)
        .map_err(|e| BuildError::io(format!("store {}", dir.display()), e))?;
    let _ = fs::remove_dir_all(&tree);
    progress(Progress::Step(format!(
        "kernel: stored {}",
        found.archive().display()
    )));
    Ok(found)
}

/// Downloads the kernel's source through cargo (checked against the registry index) and
/// returns its directory.
fn fetch_source(
    work: &Path,
    tc: &Toolchain,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, BuildError> {
    let fetch = work.join("fetch");
    fs::create_dir_all(fetch.join("src"))
        .map_err(|e| BuildError::io(format!("create {}", fetch.display()), e))?;
    fs::write(fetch.join("src/main.rs"), "fn main() {}\n")
        .and_then(|()| {
            fs::write(
                fetch.join("Cargo.toml"),
                format!(
                    "[package]\nname = \"osvm-hermit-fetch\"\nversion = \"0.0.0\"\nedition = \
                     \"2024\"\npublish = false\n\n[dependencies]\nhermit-kernel = \"={VERSION}\"\n\n\
                     [workspace]\n"
                ),
            )
        })
        .map_err(|e| BuildError::io(format!("write {}", fetch.display()), e))?;
    progress(Progress::Step(format!(
        "kernel: fetching hermit-kernel {VERSION} from the Rust package registry"
    )));
    let mut cmd = tc.cargo(&fetch);
    cmd.arg("fetch");
    steps::run("cargo fetch of hermit-kernel", cmd, progress)?;
    let mut cmd = tc.cargo(&fetch);
    cmd.args(["metadata", "--format-version", "1"]);
    let meta = steps::stdout_of("cargo metadata", cmd)?;
    let meta: serde_json::Value = serde_json::from_str(&meta)
        .map_err(|e| BuildError::Input(format!("cargo metadata printed bad JSON: {e}")))?;
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "hermit-kernel" && p["version"] == VERSION)
        .and_then(|p| p["manifest_path"].as_str())
        .and_then(|m| Path::new(m).parent().map(Path::to_path_buf))
        .ok_or_else(|| {
            BuildError::Input(format!(
                "cargo fetched no hermit-kernel {VERSION} (is the registry reachable?)"
            ))
        })
}

/// Copies a directory tree (files and directories; the registry has no links).
fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    fs::create_dir_all(to).map_err(|e| BuildError::io(format!("create {}", to.display()), e))?;
    let entries =
        fs::read_dir(from).map_err(|e| BuildError::io(format!("read {}", from.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| BuildError::io(format!("read {}", from.display()), e))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            fs::copy(&path, &target)
                .map_err(|e| BuildError::io(format!("copy {}", path.display()), e))?;
        }
    }
    Ok(())
}

/// The two source fixes stable rustc needs, the virtio-fs path fix, and a `[workspace]` table;
/// returns how many attributes were rewritten.
fn apply_fixes(tree: &Path) -> Result<usize, BuildError> {
    let fuse = tree.join("src/fs/fuse.rs");
    let text = fs::read_to_string(&fuse)
        .map_err(|e| BuildError::io(format!("read {}", fuse.display()), e))?;
    let fixed_fuse = fix_fuse_paths(&text).ok_or_else(|| {
        BuildError::Input(format!(
            "{}: its path construction is not the hermit-kernel {VERSION} code osvm knows how \
             to fix",
            fuse.display()
        ))
    })?;
    fs::write(&fuse, fixed_fuse)
        .map_err(|e| BuildError::io(format!("write {}", fuse.display()), e))?;
    let processor = tree.join("src/arch/x86_64/kernel/processor.rs");
    let text = fs::read_to_string(&processor)
        .map_err(|e| BuildError::io(format!("read {}", processor.display()), e))?;
    let fixed_entropy = fix_entropy(&text).ok_or_else(|| {
        BuildError::Input(format!(
            "{}: its entropy seeding is not the hermit-kernel {VERSION} code osvm knows how to \
             fix",
            processor.display()
        ))
    })?;
    fs::write(&processor, fixed_entropy)
        .map_err(|e| BuildError::io(format!("write {}", processor.display()), e))?;
    let pin = tree.join("rust-toolchain.toml");
    if pin.exists() {
        fs::remove_file(&pin)
            .map_err(|e| BuildError::io(format!("remove {}", pin.display()), e))?;
    }
    // A workspace of its own: the state directory may lie inside someone else's workspace.
    let manifest = tree.join("Cargo.toml");
    let text = fs::read_to_string(&manifest)
        .map_err(|e| BuildError::io(format!("read {}", manifest.display()), e))?;
    if !text.lines().any(|l| l.trim() == "[workspace]") {
        fs::write(&manifest, format!("{text}\n[workspace]\n"))
            .map_err(|e| BuildError::io(format!("write {}", manifest.display()), e))?;
    }
    let mut fixed = 0;
    let mut stack = vec![tree.join("src")];
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).map_err(|e| BuildError::io(format!("read {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = fs::read_to_string(&path)
                .map_err(|e| BuildError::io(format!("read {}", path.display()), e))?;
            let (new, n) = fix_naked(&text);
            if n > 0 {
                fixed += n;
                fs::write(&path, new)
                    .map_err(|e| BuildError::io(format!("write {}", path.display()), e))?;
            }
        }
    }
    if fixed == 0 {
        return Err(BuildError::Input(format!(
            "no #[naked] attribute found in {}: not the hermit-kernel {VERSION} source osvm \
             knows how to fix",
            tree.display()
        )));
    }
    Ok(fixed)
}

/// What hermit-kernel 0.11.0's virtio-fs client builds the name of a lookup with: every
/// component after a `/`, so an absolute path, and `/` for the share's root.
const FUSE_PATH_BEFORE: &str = "\t\tlet path: String = components_with_prefix
\t\t\t.flat_map(|component| [\"/\", component])
\t\t\t.collect();
\t\tif path.is_empty() {
\t\t\tCString::new(\"/\").unwrap()";
/// The same, relative to the share (`osvm/identity/cert.pem`, `.` for its root).
const FUSE_PATH_AFTER: &str = "\t\tlet path: String = components_with_prefix
\t\t\t.copied()
\t\t\t.collect::<Vec<&str>>()
\t\t\t.join(\"/\");
\t\tif path.is_empty() {
\t\t\tCString::new(\".\").unwrap()";

/// `fuse.rs` with lookups relative to the share, or `None` when it is not the code expected.
fn fix_fuse_paths(text: &str) -> Option<String> {
    (text.matches(FUSE_PATH_BEFORE).count() == 1)
        .then(|| text.replacen(FUSE_PATH_BEFORE, FUSE_PATH_AFTER, 1))
}

/// The end of hermit-kernel 0.11.0's `seed_entropy`: no `RDSEED`, no seed.
const ENTROPY_BEFORE: &str = "\t\tSome(buf)
\t} else {
\t\tNone
\t}
}

#[inline]
pub fn get_linear_address_bits";
/// The same with `RDRAND` as the second source (retried as Intel's DRNG guide says; all-zero
/// and all-one words refused as for `RDSEED`), before giving up.
const ENTROPY_AFTER: &str = "\t\tSome(buf)
\t} else if CpuId::new().get_feature_info().is_some_and(|f| f.has_rdrand()) {
\t\t// osvm: RDRAND where the CPU has no RDSEED (QEMU's TCG).
\t\tfor word in buf.chunks_mut(8) {
\t\t\tlet mut value = 0;
\t\t\tlet mut tries = 0;
\t\t\twhile unsafe { core::arch::x86_64::_rdrand64_step(&mut value) != 1 }
\t\t\t\t|| value == 0 || value == u64::MAX
\t\t\t{
\t\t\t\ttries += 1;
\t\t\t\tif tries > 100 {
\t\t\t\t\treturn None;
\t\t\t\t}
\t\t\t\tspin_loop();
\t\t\t}
\t\t\tword.copy_from_slice(&value.to_ne_bytes());
\t\t}
\t\tSome(buf)
\t} else {
\t\tNone
\t}
}

#[inline]
pub fn get_linear_address_bits";

/// `processor.rs` seeding from `RDRAND` when `RDSEED` is missing, or `None` when it is not the
/// code expected.
fn fix_entropy(text: &str) -> Option<String> {
    (text.matches(ENTROPY_BEFORE).count() == 1 && !text.contains("_rdrand64_step"))
        .then(|| text.replacen(ENTROPY_BEFORE, ENTROPY_AFTER, 1))
}

/// Rewrites lines that are exactly `#[naked]` (indentation kept) as `#[unsafe(naked)]`.
fn fix_naked(text: &str) -> (String, usize) {
    let mut n = 0;
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        if line.trim() == "#[naked]" {
            n += 1;
            out.push_str(&line.replacen("#[naked]", "#[unsafe(naked)]", 1));
        } else {
            out.push_str(line);
        }
    }
    (out, n)
}

/// The post-processing of the archive, in place.
fn post_process(tc: &Toolchain, archive: &Path) -> Result<(), BuildError> {
    let mut cmd = std::process::Command::new(&tc.objcopy);
    cmd.args(["--remove-section=.llvmbc", "--remove-section=.llvmcmd"])
        .arg(archive);
    steps::stdout_of("objcopy (strip bitcode)", cmd)?;
    let mut cmd = std::process::Command::new(&tc.nm);
    cmd.args(["-g", "--defined-only"]).arg(archive);
    let symbols = steps::stdout_of("nm", cmd)?;
    let redefine = archive.with_file_name("redefine-syms.txt");
    fs::write(&redefine, redefinitions(&symbols))
        .map_err(|e| BuildError::io(format!("write {}", redefine.display()), e))?;
    let mut cmd = std::process::Command::new(&tc.objcopy);
    cmd.arg(format!("--redefine-syms={}", redefine.display()))
        .arg(archive);
    steps::stdout_of("objcopy (prefix symbols)", cmd)?;
    Ok(())
}

/// `old new` lines for `objcopy --redefine-syms`, from `nm -g --defined-only` output: Rust
/// symbols `_ZN...` become `_ZN6hermit...`, others `hermit_...`.
fn redefinitions(nm: &str) -> String {
    let mut names: Vec<&str> = nm
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| f[2])
        })
        .filter(|s| !KEEP.contains(s) && !s.starts_with("sys_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = String::new();
    for s in names {
        let new = match s.strip_prefix("_ZN") {
            Some(rest) => format!("_ZN6hermit{rest}"),
            None => format!("hermit_{s}"),
        };
        out.push_str(s);
        out.push(' ');
        out.push_str(&new);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entropy fix applies once and only to the expected code.
    #[test]
    fn entropy_gets_rdrand_once() {
        let source = format!("pub fn seed_entropy() {{\n{ENTROPY_BEFORE}() {{}}\n");
        let fixed = fix_entropy(&source).unwrap();
        assert!(fixed.contains("_rdrand64_step"));
        assert_eq!(
            fix_entropy(&fixed),
            None,
            "already fixed: not the expected code"
        );
    }

    /// The fix applies to the registry's source exactly once, and to nothing else.
    #[test]
    fn fuse_paths_are_made_relative_once() {
        let source = format!("fn traversal_path() {{\n{FUSE_PATH_BEFORE}\n}}\n");
        let fixed = fix_fuse_paths(&source).unwrap();
        assert!(fixed.contains(".join(\"/\")") && !fixed.contains("[\"/\", component]"));
        assert_eq!(
            fix_fuse_paths(&fixed),
            None,
            "already fixed: not the expected code"
        );
        assert_eq!(fix_fuse_paths("fn other() {}"), None);
    }

    #[test]
    fn naked_attributes_are_rewritten_keeping_indentation() {
        let src = "#[naked]\npub fn a() {}\n\t#[naked]\nfn b() {}\n// #[naked] in a comment\n";
        let (out, n) = fix_naked(src);
        assert_eq!(n, 2);
        assert_eq!(
            out,
            "#[unsafe(naked)]\npub fn a() {}\n\t#[unsafe(naked)]\nfn b() {}\n// #[naked] in a comment\n"
        );
    }

    #[test]
    fn symbols_get_the_hermit_prefix_except_entry_points_and_syscalls() {
        let nm = "\nlibhermit-abc.o:\n0000000000001000 T _start\n0000000000001010 T sys_write\n\
                  0000000000001020 T memcpy\n0000000000001030 T _ZN6kernel3foo17h0E\n\
                  0000000000001040 T runtime_entry\n                 U undefined_one\n\
                  0000000000001020 T memcpy\n";
        assert_eq!(
            redefinitions(nm),
            "_ZN6kernel3foo17h0E _ZN6hermit6kernel3foo17h0E\nmemcpy hermit_memcpy\n"
        );
    }
}
