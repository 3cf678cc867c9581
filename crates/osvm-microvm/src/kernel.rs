//! Guest kernels: Debian's cloud kernel fetched through apt, or one the stack names.
//!
//! `fetch` resolves the current kernel package through the meta-package
//! `linux-image-cloud-amd64` (the ABI number in the package name changes over time), downloads
//! it with `apt-get download` (apt checks it against the signed archive index), checks its
//! SHA-256 again against `apt-cache show`, unpacks it with `dpkg-deb -x`, and keeps only what a
//! microVM needs under `<state>/kernels/<release>/`: the kernel image and the modules that
//! virtio-mmio, vsock and virtio-net need, ordered by the `depends=` each module declares. A
//! `kernel.json` manifest records where it came from and the SHA-256 of every stored file;
//! [`Kernel::load`] checks those before a kernel is used.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use osvm_guest::digest::sha256_file;

/// The meta-package whose dependency names the current cloud kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// The modules a guest needs, by name; their dependencies are added and ordered.
pub const WANTED_MODULES: &[&str] = &["virtio_mmio", "vmw_vsock_virtio_transport", "virtio_net"];

/// Modules taken when the tree has them: the data disk's driver and virtio-fs for shared
/// directories (a kernel of one's own may have them built in; a guest that lacks it altogether fails its start at the mount, saying so).
pub const OPTIONAL_MODULES: &[&str] = &["virtio_blk", "virtiofs", "virtio_console"];

/// What can go wrong with a kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A command failed; the string says which and what it printed.
    #[error("{0}")]
    Command(String),
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The download or a stored file does not have the expected content.
    #[error("{0}")]
    Integrity(String),
    /// No kernel is installed and none is configured.
    #[error(
        "no guest kernel in {0}: run `osvm kernel fetch` (Debian's cloud kernel through apt), \
         or set `microvm.kernel` in the stack file"
    )]
    Missing(PathBuf),
    /// A module the guest needs is not in the kernel's module tree.
    #[error("{0}")]
    Module(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> KernelError {
    let context = context.into();
    move |source| KernelError::Io { context, source }
}

/// A stored kernel's manifest (`kernel.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The kernel release (`uname -r` in the guest).
    pub release: String,
    /// The Debian package it came from.
    pub package: String,
    /// The package version.
    pub version: String,
    /// SHA-256 of the downloaded package.
    pub package_sha256: String,
    /// The kernel image's file name in the kernel's directory.
    pub image: String,
    /// Module file names in `modules/`, in load order.
    pub modules: Vec<String>,
    /// SHA-256 of every stored file, by path relative to the kernel's directory.
    pub sha256: BTreeMap<String, String>,
}

/// A kernel ready to boot.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    /// Its release or, for a configured kernel, its file name.
    pub release: String,
    /// The kernel image.
    pub image: PathBuf,
    /// Module files in load order.
    pub modules: Vec<PathBuf>,
}

/// Where kernels are kept.
pub fn kernels_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("kernels")
}

impl Kernel {
    /// Loads and checks the kernel stored in `dir` (one release).
    pub fn load(dir: &Path) -> Result<Self, KernelError> {
        let path = dir.join("kernel.json");
        let text = fs::read(&path).map_err(io(format!("read {}", path.display())))?;
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| KernelError::Integrity(format!("{} is malformed: {e}", path.display())))?;
        for (file, want) in &manifest.sha256 {
            let got = sha256_file(&dir.join(file))
                .map_err(io(format!("read {}", dir.join(file).display())))?;
            if &got != want {
                return Err(KernelError::Integrity(format!(
                    "{} changed since it was fetched (SHA-256 {got}, recorded {want}); run \
                     `osvm kernel fetch --force`",
                    dir.join(file).display()
                )));
            }
        }
        Ok(Self {
            release: manifest.release.clone(),
            image: dir.join(&manifest.image),
            modules: manifest
                .modules
                .iter()
                .map(|m| dir.join("modules").join(m))
                .collect(),
        })
    }

    /// The newest stored kernel (by release, in version order).
    pub fn installed(state_dir: &Path) -> Result<Self, KernelError> {
        let dir = kernels_dir(state_dir);
        let mut releases: Vec<PathBuf> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("kernel.json").is_file())
            .collect();
        releases.sort_by(|a, b| version_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
        match releases.last() {
            Some(newest) => Self::load(newest),
            None => Err(KernelError::Missing(dir)),
        }
    }

    /// A kernel image the stack names, with the needed modules taken from `modules_dir` (a
    /// `lib/modules/<release>` tree) when given; without one the kernel must have virtio-mmio,
    /// vsock and virtio-net built in.
    pub fn configured(image: &Path, modules_dir: Option<&Path>) -> Result<Self, KernelError> {
        if !image.is_file() {
            return Err(KernelError::Missing(image.to_path_buf()));
        }
        let modules = match modules_dir {
            Some(dir) => resolve_modules(dir)?,
            None => Vec::new(),
        };
        Ok(Self {
            release: image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            image: image.to_path_buf(),
            modules,
        })
    }
}

/// Compares two version-like strings, numbers by value (`6.1.0-56` after `6.1.0-9`).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<Result<u64, String>> {
        s.split(|c: char| !c.is_ascii_alphanumeric())
            .map(|p| p.parse::<u64>().map_err(|_| p.to_owned()))
            .collect()
    }
    parts(a).cmp(&parts(b))
}

/// One step of a fetch, for progress reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The package was resolved.
    Resolved {
        /// Package name.
        package: String,
        /// Package version.
        version: String,
        /// Download size in bytes.
        size: u64,
    },
    /// The kernel of this package is stored already.
    AlreadyStored(PathBuf),
    /// Downloading.
    Downloading,
    /// The download's SHA-256 matched.
    Verified(String),
    /// Unpacking and picking files.
    Unpacking,
    /// Done: stored here.
    Stored(PathBuf),
}

fn run(program: &str, args: &[&str], cwd: Option<&Path>) -> Result<String, KernelError> {
    let mut cmd = Command::new(program);
    cmd.args(args).env("LC_ALL", "C");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().map_err(|e| {
        KernelError::Command(format!(
            "run {program}: {e} (osvm kernel fetch needs Debian's apt and dpkg)"
        ))
    })?;
    if !out.status.success() {
        return Err(KernelError::Command(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The package `apt-cache depends META` names first among `linux-image-*`.
pub fn parse_depends(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let dep = line.trim().strip_prefix("Depends: ")?;
        dep.starts_with("linux-image-").then(|| dep.to_owned())
    })
}

/// `(Version, SHA256, Size)` of the first record of `apt-cache show`.
pub fn parse_show(text: &str) -> Option<(String, String, u64)> {
    let record = text.split("\n\n").next()?;
    let field = |name: &str| {
        record.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(": "))
                .map(str::to_owned)
        })
    };
    Some((
        field("Version")?,
        field("SHA256")?,
        field("Size")?.parse().ok()?,
    ))
}

/// Fetches the current Debian cloud kernel into `<state>/kernels/<release>/` (unless that
/// package is stored already and `force` is false).
pub fn fetch(
    state_dir: &Path,
    force: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<Kernel, KernelError> {
    let package =
        parse_depends(&run("apt-cache", &["depends", META_PACKAGE], None)?).ok_or_else(|| {
            KernelError::Command(format!(
                "`apt-cache depends {META_PACKAGE}` names no linux-image package: is the \
                 package index current (apt-get update)?"
            ))
        })?;
    let (version, sha256, size) = parse_show(&run("apt-cache", &["show", &package], None)?)
        .ok_or_else(|| {
            KernelError::Command(format!(
                "`apt-cache show {package}` has no Version/SHA256/Size"
            ))
        })?;
    progress(Progress::Resolved {
        package: package.clone(),
        version: version.clone(),
        size,
    });
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_owned();
    let kernels = kernels_dir(state_dir);
    let target = kernels.join(&release);
    if !force
        && let Ok(text) = fs::read(target.join("kernel.json"))
        && let Ok(m) = serde_json::from_slice::<Manifest>(&text)
        && m.package_sha256 == sha256
    {
        progress(Progress::AlreadyStored(target.clone()));
        return Kernel::load(&target);
    }

    fs::create_dir_all(&kernels).map_err(io(format!("create {}", kernels.display())))?;
    let work = kernels.join(format!(".fetch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(io(format!("create {}", work.display())))?;
    let result = fetch_into(
        &work, &target, &package, &version, &sha256, &release, progress,
    );
    let _ = fs::remove_dir_all(&work);
    let kernel = result?;
    progress(Progress::Stored(target));
    Ok(kernel)
}

fn fetch_into(
    work: &Path,
    target: &Path,
    package: &str,
    version: &str,
    sha256: &str,
    release: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<Kernel, KernelError> {
    progress(Progress::Downloading);
    run("apt-get", &["download", "-q", package], Some(work))?;
    let deb = fs::read_dir(work)
        .map_err(io("list the download"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| KernelError::Command("apt-get download left no .deb".into()))?;
    let got = sha256_file(&deb).map_err(io("hash the download"))?;
    if got != sha256 {
        return Err(KernelError::Integrity(format!(
            "{} has SHA-256 {got}, the archive index says {sha256}",
            deb.display()
        )));
    }
    progress(Progress::Verified(got.clone()));
    progress(Progress::Unpacking);
    let tree = work.join("tree");
    run(
        "dpkg-deb",
        &["-x", &deb.to_string_lossy(), &tree.to_string_lossy()],
        None,
    )?;
    let image_name = format!("vmlinuz-{release}");
    let image = tree.join("boot").join(&image_name);
    if !image.is_file() {
        return Err(KernelError::Integrity(format!(
            "the package has no boot/{image_name}"
        )));
    }
    let modules = resolve_modules(&tree.join("lib/modules").join(release))?;

    let staging = work.join("stored");
    fs::create_dir_all(staging.join("modules")).map_err(io("create the staging directory"))?;
    let mut hashes = BTreeMap::new();
    let mut copy = |from: &Path, rel: String| -> Result<(), KernelError> {
        let to = staging.join(&rel);
        fs::copy(from, &to).map_err(io(format!("copy {}", from.display())))?;
        hashes.insert(rel, sha256_file(&to).map_err(io("hash a stored file"))?);
        Ok(())
    };
    copy(&image, image_name.clone())?;
    let mut names = Vec::new();
    for m in &modules {
        let name = m
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        copy(m, format!("modules/{name}"))?;
        names.push(name);
    }
    let manifest = Manifest {
        release: release.to_owned(),
        package: package.to_owned(),
        version: version.to_owned(),
        package_sha256: sha256.to_owned(),
        image: image_name,
        modules: names,
        sha256: hashes,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    fs::write(staging.join("kernel.json"), json).map_err(io("write kernel.json"))?;
    // Swap the new directory in whole: a kernel directory is never half written.
    let _ = fs::remove_dir_all(target);
    fs::rename(&staging, target).map_err(io(format!("move into {}", target.display())))?;
    Kernel::load(target)
}

/// The `.ko` files under `dir` (a `lib/modules/<release>` tree) that [`WANTED_MODULES`] need
/// (and [`OPTIONAL_MODULES`], where the tree has them), dependencies first, each once.
pub fn resolve_modules(dir: &Path) -> Result<Vec<PathBuf>, KernelError> {
    let mut index = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)
            .map_err(io(format!("read {}", d.display())))?
            .filter_map(Result::ok)
        {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str())
                && let Some(stem) = name.strip_suffix(".ko")
            {
                index.insert(stem.replace('-', "_"), path);
            }
        }
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for want in WANTED_MODULES {
        visit(want, &index, &mut seen, &mut order, 0)?;
    }
    for want in OPTIONAL_MODULES {
        if index.contains_key(&want.replace('-', "_")) {
            visit(want, &index, &mut seen, &mut order, 0)?;
        }
    }
    Ok(order)
}

fn visit(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<PathBuf>,
    depth: usize,
) -> Result<(), KernelError> {
    let name = name.replace('-', "_");
    if seen.contains(&name) {
        return Ok(());
    }
    if depth > 32 {
        return Err(KernelError::Module(format!(
            "module dependencies around {name} form a cycle"
        )));
    }
    let path = index.get(&name).ok_or_else(|| {
        KernelError::Module(format!(
            "module {name} is not in the kernel's module tree (uncompressed .ko files are \
             needed)"
        ))
    })?;
    let bytes = fs::read(path).map_err(io(format!("read {}", path.display())))?;
    for dep in module_depends(&bytes) {
        visit(&dep, index, seen, order, depth + 1)?;
    }
    seen.insert(name);
    order.push(path.clone());
    Ok(())
}

/// The `depends=` list of a module's `.modinfo` (NUL-separated `key=value` strings).
pub fn module_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|b| *b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meta_package_dependency_is_found() {
        let text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(text).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_depends("x\n  Depends: libc6\n"), None);
    }

    #[test]
    fn the_first_show_record_gives_version_hash_and_size() {
        let text =
            "Package: p\nVersion: 6.1.192-2\nSize: 123\nSHA256: abc\n\nPackage: p\nVersion: 1\n";
        assert_eq!(
            parse_show(text),
            Some(("6.1.192-2".into(), "abc".into(), 123))
        );
    }

    #[test]
    fn modinfo_depends_are_read_and_releases_sort_by_number() {
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring\0name=virtio_mmio\0";
        assert_eq!(module_depends(ko), vec!["virtio", "virtio_ring"]);
        assert_eq!(module_depends(b"depends=\0"), Vec::<String>::new());
        assert_eq!(
            version_cmp("6.1.0-9-cloud-amd64", "6.1.0-56-cloud-amd64"),
            std::cmp::Ordering::Less
        );
    }
}
