//! `osvm-agent`: the init (PID 1, `/init` in the initramfs) of every osvm microVM.
//!
//! Its life, in order:
//!
//! 1. Mount the pseudo file systems (`/proc`, `/sys`, `/dev`, `/dev/pts`, `/tmp`, `/run`).
//! 2. Load the kernel modules shipped in `/lib/osvm/modules` (virtio, vsock, virtio-net), since
//!    the guest kernel has every virtio driver as a module.
//! 3. Listen on the vsock control port, so the host can reach the agent as soon as it knows the
//!    agent is up.
//! 4. Connect out to the host's events port, say [`Event::Hello`](osvm_agent::proto::Event) and
//!    read the [`Launch`](osvm_agent::proto::Launch) that says what to run.
//! 5. Configure loopback, `eth0`, `/etc/hosts` and the hostname from the launch.
//! 6. Start the workload with its output forwarded to the host's logs port, and report it.
//! 7. Serve control requests (ping, exec, signal, shutdown, port forwarding) meanwhile.
//! 8. When the workload ends, report its exit and power the VM off.
//!
//! All of that except the first step runs on a "boot" thread, because the main thread has a job
//! only PID 1 has: reaping every process that ends, orphans included (see [`agent::children`]).
//! PID 1 must never exit (the kernel panics), so every path that would end the agent, a panic
//! included, powers the VM off instead.
//!
//! The protocol spoken with the host lives in the library half of this crate,
//! [`osvm_agent::proto`].

// One audited exception: the ioctl that reseeds the kernel's random number generator
// (agent/system.rs, `reseed_random`), which no safe interface offers.
#![deny(unsafe_code)]

/// Prints one progress line to the serial console (stderr), prefixed so it stands out among the
/// kernel's messages.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("osvm-agent: {}", format_args!($($arg)*))
    };
}

mod agent;

use std::sync::Arc;
use std::thread;

use agent::{Agent, system};

/// Sets up PID 1's environment, starts the boot thread and then reaps children forever.
fn main() {
    // Everything below (mounting over /proc, powering off on a panic) is only right for the
    // init of a VM: run anywhere else by mistake, refuse before touching anything.
    if std::process::id() != 1 {
        eprintln!("osvm-agent: this is the init of an osvm microVM and must run as PID 1");
        std::process::exit(2);
    }
    system::install_panic_hook();
    say!("starting (version {})", env!("CARGO_PKG_VERSION"));
    system::mount_filesystems();

    let agent = Arc::new(Agent::new());
    let boot = Arc::clone(&agent);
    let spawned = thread::Builder::new()
        .name("boot".into())
        .spawn(move || agent::run(&boot));
    if let Err(error) = spawned {
        say!("cannot start the boot thread: {error}");
        system::power_off();
    }
    agent.children.reap_forever()
}
