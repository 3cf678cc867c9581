//! osvm's `microvm` runtime: real virtual machines on QEMU's `microvm` machine. What it shares
//! with the unikernel runtime (accelerator probe, TAP attach, digests, the emulator's launch
//! spec, the common instance) is in `osvm-guest`; this crate is the microVM driver.
//!
//! - [`kernel`]: the guest kernel, Debian's cloud kernel fetched through apt, or a configured one;
//! - [`image`]: content-addressed initramfs images (agent, busybox, modules, the component's
//!   files);
//! - [`vsock`]: context ids and Firecracker's hybrid vsock through a vhost-user backend;
//! - [`link`]: the host's end of the agent's link, vsock or a virtio-serial port;
//! - [`qemu`]: the QEMU command line; [`qmp`]: QMP, saving and restoring guests;
//! - [`runtime`]: the runtime itself, QEMU and the backend each confined by the process sandbox.

#![forbid(unsafe_code)]

pub mod image;
pub mod kernel;
pub mod link;
pub mod qemu;
pub mod qmp;
pub mod runtime;
pub mod snapshot;
pub mod vsock;

pub use runtime::{MicroVmConfig, MicroVmInstance, MicroVmRuntime, VmFacts, find_agent};
