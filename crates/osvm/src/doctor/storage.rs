//! What the sandbox's file systems need: the new mount API, id-mapped mounts (for `rw` binds
//! and data volumes), the ext4 volumes behind `/data`, and free host uid ranges.

use std::path::Path;

use super::{AREA_STORAGE, Check};

/// Rows for the mount API, id-mapped mounts, data volumes and uid ranges.
pub(super) fn storage_checks(is_root: bool, state_dir: &Path) -> Vec<Check> {
    let mut checks = vec![match osvm_sandbox::host::mount_api() {
        Ok(()) => Check::yes(
            AREA_STORAGE,
            "mount API",
            "fsopen/fsmount/open_tree/move_mount work: every mount is attached onto a \
             descriptor resolved beneath the new root",
        ),
        Err(e) => Check::no(AREA_STORAGE, "mount API", format!("unavailable: {e}")),
    }];
    // The state directory's file system, or the nearest existing parent's.
    let on = state_dir
        .ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"));
    checks.push(if !is_root {
        Check::no(
            AREA_STORAGE,
            "id-mapped mounts",
            "not probed: needs root (run `sudo osvm doctor`)",
        )
    } else {
        match osvm_sandbox::host::idmapped_mounts(on) {
            Ok(()) => Check::yes(
                AREA_STORAGE,
                "id-mapped mounts",
                format!(
                    "a mount of {} maps its ids: rw binds are writable without chown, data \
                     volumes keep the sandbox's own ids",
                    on.display()
                ),
            ),
            Err(e) => Check::no(
                AREA_STORAGE,
                "id-mapped mounts",
                format!("unavailable: {e}"),
            ),
        }
    });
    checks.push(if !is_root {
        Check::no(
            AREA_STORAGE,
            "overlay roots",
            "not probed: needs root (run `sudo osvm doctor`)",
        )
    } else {
        match osvm_sandbox::host::overlay_roots() {
            Ok(()) => Check::yes(
                AREA_STORAGE,
                "overlay roots",
                "an overlay of id-mapped layers mounts: containerd's overlay snapshots work \
                 with containerd-shim-osvm-v1",
            ),
            Err(e) => Check::no(
                AREA_STORAGE,
                "overlay roots",
                format!(
                    "unavailable: {e}; containerd-shim-osvm-v1 needs the native snapshotter here"
                ),
            ),
        }
    });
    checks.push(match osvm_sandbox::volume::unavailable_reason() {
        None => Check::yes(
            AREA_STORAGE,
            "data volumes",
            "each component's /data is an ext4 volume of its own on a loop device, capped at \
             resources.disk (mkfs.ext4 and /dev/loop-control present)",
        ),
        Some(reason) => Check::no(AREA_STORAGE, "data volumes", reason),
    });
    checks.push(
        match osvm_sandbox::ids::usage(Path::new(osvm_sandbox::ids::REGISTRY)) {
            Ok(used) => Check::yes(
                AREA_STORAGE,
                "uid ranges",
                format!(
                    "{used} of {} host uid ranges of 65,536 ids held (0x70010000-0x7fffffff, \
                 recorded in {}); each component owns one",
                    osvm_sandbox::ids::SLOTS,
                    osvm_sandbox::ids::REGISTRY
                ),
            ),
            Err(e) => Check::no(AREA_STORAGE, "uid ranges", format!("unavailable: {e}")),
        },
    );
    checks
}
