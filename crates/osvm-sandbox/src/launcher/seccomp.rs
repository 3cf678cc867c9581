//! The seccomp allowlist every sandboxed workload runs under.
//!
//! The list is what ordinary services need (python3's `http.server`, busybox, a tokio server):
//! files, memory, threads, signals, timers, polling, and sockets of the families a service
//! uses. Everything else answers `EPERM`, in particular: mounting and namespaces, ptrace and
//! cross-process memory access, bpf, keyrings, perf events, userfaultfd, io_uring, module
//! loading, kexec, reboot, clock setting, swap, chroot and the new mount API.
//!
//! Some calls are allowed only with safe arguments:
//! - `clone` without any `CLONE_NEW*` flag (no nested namespaces);
//! - `socket` for `AF_UNIX`, TCP/UDP over `AF_INET`/`AF_INET6`, and `NETLINK_ROUTE` (glibc's
//!   `getaddrinfo` asks it for addresses); never raw or packet sockets;
//! - `ioctl` with any request but `TIOCSTI` and `TIOCLINUX` (typing into a terminal);
//! - the `chmod` family, and `open`/`openat`/`creat`/`mknod` when they create a file, never
//!   with the setuid or setgid bit: they grant nothing inside (`no_new_privs`), but a file in a
//!   writable bind belongs to a host user, and a setuid copy of a shell there would be that
//!   user's (root's, for a root-owned directory) to anyone on the host who runs it.
//!
//! Native AIO (`io_setup` and friends) is allowed only when the component asks for it: its
//! contexts count against the host-wide `fs.aio-max-nr`, which one sandbox could exhaust for
//! every process on the host. Without it, libraries fall back to threads (glibc's POSIX AIO
//! does not use it).
//!
//! `clone3` passes its flags in memory, which seccomp cannot read, so a second filter answers
//! it with `ENOSYS`: glibc then falls back to `clone`, which the first filter can check;
//! `openat2` likewise (its mode is in memory), and callers fall back to `openat`. The same
//! filter answers `ENOSYS` for syscalls newer than this list (numbers 457 to 511): a libc that
//! tries a new call first and falls back on `ENOSYS` keeps working, as runc's profiles do.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Errors while building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules.
    #[error("building the seccomp filter: {0}")]
    Build(String),
    /// The kernel refused the filter.
    #[error("installing the seccomp filter: {0}")]
    Install(String),
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

// Syscalls newer than the libc crate's tables; since Linux 4.x new syscalls share one number
// on every architecture.
const SYS_CACHESTAT: libc::c_long = 451;
const SYS_MAP_SHADOW_STACK: libc::c_long = 453;
const SYS_FUTEX_WAKE: libc::c_long = 454;
const SYS_FUTEX_WAIT: libc::c_long = 455;
const SYS_FUTEX_REQUEUE: libc::c_long = 456;
/// Syscall numbers above the newest this list knows (statmount, listmount, the LSM calls, the
/// `*xattrat` family, and whatever comes next) answer `ENOSYS` unless allowed (mseal).
const NEWER_THAN_LIST: std::ops::RangeInclusive<libc::c_long> = 457..=511;

/// Syscalls allowed with any arguments.
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_sched_yield,
    libc::SYS_mremap,
    libc::SYS_msync,
    libc::SYS_mincore,
    libc::SYS_madvise,
    libc::SYS_shmget,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_shmdt,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_nanosleep,
    libc::SYS_getitimer,
    libc::SYS_setitimer,
    libc::SYS_getpid,
    libc::SYS_sendfile,
    libc::SYS_connect,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_shutdown,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_socketpair,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_tgkill,
    libc::SYS_uname,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semctl,
    libc::SYS_semtimedop,
    libc::SYS_msgget,
    libc::SYS_msgsnd,
    libc::SYS_msgrcv,
    libc::SYS_msgctl,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync,
    libc::SYS_syncfs,
    libc::SYS_sync_file_range,
    libc::SYS_truncate,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_chdir,
    libc::SYS_fchdir,
    libc::SYS_fchown,
    libc::SYS_umask,
    libc::SYS_gettimeofday,
    libc::SYS_getrlimit,
    libc::SYS_setrlimit,
    libc::SYS_prlimit64,
    libc::SYS_getrusage,
    libc::SYS_sysinfo,
    libc::SYS_times,
    libc::SYS_getuid,
    libc::SYS_getgid,
    libc::SYS_geteuid,
    libc::SYS_getegid,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_getgroups,
    libc::SYS_setgroups,
    libc::SYS_setpgid,
    libc::SYS_getpgid,
    libc::SYS_getppid,
    libc::SYS_setsid,
    libc::SYS_getsid,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_rt_sigsuspend,
    libc::SYS_sigaltstack,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_getpriority,
    libc::SYS_setpriority,
    libc::SYS_sched_setparam,
    libc::SYS_sched_getparam,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
    libc::SYS_sched_rr_get_interval,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setattr,
    libc::SYS_sched_getattr,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_munlock,
    libc::SYS_mlockall,
    libc::SYS_munlockall,
    libc::SYS_prctl,
    libc::SYS_gettid,
    libc::SYS_readahead,
    libc::SYS_fsetxattr,
    libc::SYS_getxattr,
    libc::SYS_lgetxattr,
    libc::SYS_fgetxattr,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_flistxattr,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_set_tid_address,
    libc::SYS_restart_syscall,
    libc::SYS_fadvise64,
    libc::SYS_timer_create,
    libc::SYS_timer_settime,
    libc::SYS_timer_gettime,
    libc::SYS_timer_getoverrun,
    libc::SYS_timer_delete,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_epoll_create1,
    libc::SYS_mbind,
    libc::SYS_set_mempolicy,
    libc::SYS_get_mempolicy,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
    libc::SYS_inotify_init1,
    libc::SYS_mkdirat,
    libc::SYS_fchownat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_pselect6,
    libc::SYS_ppoll,
    libc::SYS_splice,
    libc::SYS_tee,
    libc::SYS_vmsplice,
    libc::SYS_utimensat,
    libc::SYS_signalfd4,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_eventfd2,
    libc::SYS_pipe2,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_getrandom,
    libc::SYS_memfd_create,
    libc::SYS_membarrier,
    libc::SYS_copy_file_range,
    libc::SYS_rseq,
    libc::SYS_close_range,
    libc::SYS_getcpu,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_restrict_self,
    libc::SYS_seccomp,
    libc::SYS_mq_open,
    libc::SYS_mq_unlink,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_notify,
    libc::SYS_mq_getsetattr,
    libc::SYS_pkey_mprotect,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_futex_waitv,
    libc::SYS_mseal,
    SYS_CACHESTAT,
    SYS_MAP_SHADOW_STACK,
    SYS_FUTEX_WAKE,
    SYS_FUTEX_WAIT,
    SYS_FUTEX_REQUEUE,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_arch_prctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_stat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lstat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_access,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_pipe,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_select,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_dup2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_pause,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_alarm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_fork,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_vfork,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_getdents,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_link,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_symlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chown,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lchown,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_getpgrp,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_utime,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_utimes,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_futimesat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_time,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_create,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_inotify_init,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_signalfd,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_eventfd,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_get_thread_area,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_set_thread_area,
];

#[cfg(target_arch = "x86_64")]
const SYS_IO_PGETEVENTS: libc::c_long = 333;
#[cfg(target_arch = "aarch64")]
const SYS_IO_PGETEVENTS: libc::c_long = 292;

/// Native AIO, allowed only on request.
const NATIVE_AIO: &[libc::c_long] = &[
    libc::SYS_io_setup,
    libc::SYS_io_destroy,
    libc::SYS_io_getevents,
    SYS_IO_PGETEVENTS,
    libc::SYS_io_submit,
    libc::SYS_io_cancel,
];

/// The setuid and setgid bits of a file mode.
const SET_ID_BITS: u64 = (libc::S_ISUID | libc::S_ISGID) as u64;
/// The open flags that create a file (`O_TMPFILE` includes `O_DIRECTORY`'s bit; its own is
/// `__O_TMPFILE`).
const CREATING: u64 = (libc::O_CREAT | 0o20_000_000) as u64;

/// Calls allowed when their mode argument carries no setuid or setgid bit: (syscall, index of
/// the mode argument).
const MODE_CHECKED: &[(libc::c_long, u8)] = &[
    (libc::SYS_fchmod, 1),
    (libc::SYS_fchmodat, 2),
    (libc::SYS_fchmodat2, 2),
    (libc::SYS_mknodat, 2),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_chmod, 1),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_creat, 1),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_mknod, 1),
];

/// Calls that create a file when their flags say so: (syscall, flags index, mode index).
const OPEN_CHECKED: &[(libc::c_long, u8, u8)] = &[
    (libc::SYS_openat, 2, 3),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_open, 1, 2),
];

/// Every `CLONE_NEW*` flag (namespaces) plus `CLONE_NEWTIME`'s bit.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64
    | 0x80;

/// `ioctl` requests that inject input into a terminal.
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

fn cond(arg: u8, len: Len, op: Op, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, len, op, value).map_err(|e| SeccompError::Build(e.to_string()))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conds).map_err(|e| SeccompError::Build(e.to_string()))
}

fn socket_rules() -> Result<Vec<SeccompRule>, SeccompError> {
    let mut rules = vec![rule(vec![cond(
        0,
        Len::Dword,
        Op::Eq,
        libc::AF_UNIX as u64,
    )?])?];
    for family in [libc::AF_INET, libc::AF_INET6] {
        for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM] {
            rules.push(rule(vec![
                cond(0, Len::Dword, Op::Eq, family as u64)?,
                // The low bits are the type; SOCK_NONBLOCK and SOCK_CLOEXEC sit above them.
                cond(1, Len::Dword, Op::MaskedEq(0xf), ty as u64)?,
            ])?);
        }
    }
    rules.push(rule(vec![
        cond(0, Len::Dword, Op::Eq, libc::AF_NETLINK as u64)?,
        cond(2, Len::Dword, Op::Eq, libc::NETLINK_ROUTE as u64)?,
    ])?);
    Ok(rules)
}

/// Syscalls that answer `ENOSYS`: `clone3`, `openat2`, and the numbers above this list that it
/// does not allow.
fn enosys_syscalls() -> Vec<libc::c_long> {
    [libc::SYS_clone3, libc::SYS_openat2]
        .into_iter()
        .chain(NEWER_THAN_LIST.filter(|nr| !ALLOWED.contains(nr)))
        .collect()
}

/// The number of syscalls the allowlist admits (some with argument checks).
pub fn allowed_count(native_aio: bool, helper: bool) -> usize {
    ALLOWED.len()
        + 3
        + MODE_CHECKED.len()
        + OPEN_CHECKED.len()
        + if native_aio { NATIVE_AIO.len() } else { 0 }
        + usize::from(helper)
}

/// "`mode` (argument `arg`) has no setuid or setgid bit".
fn no_set_id(arg: u8) -> Result<SeccompCondition, SeccompError> {
    cond(arg, Len::Dword, Op::MaskedEq(SET_ID_BITS), 0)
}

/// Builds the two filters: the allowlist, then the `clone3` -> `ENOSYS` filter. With
/// `native_aio` the AIO calls are allowed too; for osvm's own `helper` (virtiofsd), `chroot`,
/// which it uses to confine itself to the directory it shares.
pub fn build(native_aio: bool, helper: bool) -> Result<Vec<BpfProgram>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|nr| (*nr, Vec::new())).collect();
    if native_aio {
        rules.extend(NATIVE_AIO.iter().map(|nr| (*nr, Vec::new())));
    }
    if helper {
        rules.insert(libc::SYS_chroot, Vec::new());
    }
    for (nr, mode) in MODE_CHECKED {
        rules.insert(*nr, vec![rule(vec![no_set_id(*mode)?])?]);
    }
    for (nr, flags, mode) in OPEN_CHECKED {
        rules.insert(
            *nr,
            vec![
                rule(vec![cond(*flags, Len::Dword, Op::MaskedEq(CREATING), 0)?])?,
                rule(vec![no_set_id(*mode)?])?,
            ],
        );
    }
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            Len::Qword,
            Op::MaskedEq(CLONE_NAMESPACE_FLAGS),
            0,
        )?])?],
    );
    rules.insert(libc::SYS_socket, socket_rules()?);
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![
            cond(1, Len::Dword, Op::Ne, TIOCSTI)?,
            cond(1, Len::Dword, Op::Ne, TIOCLINUX)?,
        ])?],
    );
    let allowlist = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        ARCH,
    )
    .map_err(|e| SeccompError::Build(e.to_string()))?;
    let enosys: BTreeMap<i64, Vec<SeccompRule>> = enosys_syscalls()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let clone3 = SeccompFilter::new(
        enosys,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )
    .map_err(|e| SeccompError::Build(e.to_string()))?;
    let mut programs = Vec::new();
    for filter in [allowlist, clone3] {
        programs.push(
            filter
                .try_into()
                .map_err(|e: seccompiler::BackendError| SeccompError::Build(e.to_string()))?,
        );
    }
    Ok(programs)
}

/// Installs the filters in order. `no_new_privs` must already be set.
pub fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| SeccompError::Install(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        for aio in [false, true] {
            let programs = build(aio, false).unwrap();
            assert_eq!(programs.len(), 2);
            assert!(!programs[0].is_empty());
        }
        assert_eq!(
            allowed_count(true, false),
            allowed_count(false, false) + NATIVE_AIO.len()
        );
    }

    #[test]
    fn argument_checked_calls_are_not_also_allowed_outright() {
        for (nr, _) in MODE_CHECKED {
            assert!(
                !ALLOWED.contains(nr),
                "syscall {nr} would skip its mode check"
            );
        }
        for (nr, _, _) in OPEN_CHECKED {
            assert!(
                !ALLOWED.contains(nr),
                "syscall {nr} would skip its mode check"
            );
        }
        for nr in NATIVE_AIO {
            assert!(
                !ALLOWED.contains(nr),
                "native AIO is only allowed on request"
            );
        }
    }

    #[test]
    fn syscalls_answering_enosys_are_not_also_allowed() {
        let enosys = enosys_syscalls();
        assert!(enosys.contains(&libc::SYS_clone3));
        assert!(enosys.contains(&457), "statmount answers ENOSYS");
        for nr in enosys {
            assert!(
                !ALLOWED.contains(&nr),
                "syscall {nr} is both allowed and ENOSYS"
            );
        }
    }

    #[test]
    fn dangerous_syscalls_are_not_allowed() {
        for nr in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_ptrace,
            libc::SYS_bpf,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_reboot,
            libc::SYS_kexec_load,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_chroot,
            libc::SYS_sethostname,
            libc::SYS_process_vm_readv,
            libc::SYS_io_uring_setup,
            libc::SYS_open_by_handle_at,
            libc::SYS_clock_settime,
            libc::SYS_openat2,
            libc::SYS_io_setup,
        ] {
            assert!(!ALLOWED.contains(&nr), "syscall {nr} must not be allowed");
        }
    }
}
