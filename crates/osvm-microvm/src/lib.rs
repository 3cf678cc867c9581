//! osvm's `microvm` runtime: real virtual machines on QEMU's `microvm` machine.
//!
//! - [`host`]: which accelerator the host allows (KVM only with VMX/SVM; TCG, loudly, elsewhere)
//!   and the TSC frequency the guest must be told;
//! - [`kernel`]: the guest kernel, Debian's cloud kernel fetched through apt, or a configured one;
//! - [`image`]: content-addressed initramfs images (agent, busybox, modules, the component's
//!   files);
//! - [`vsock`]: context ids and Firecracker's hybrid vsock through a vhost-user backend;
//! - [`net`]: a TAP in the component's network namespace, bridged to its `eth0`;
//! - [`qemu`]: the QEMU command line and QMP;
//! - [`runtime`]: the runtime itself, QEMU and the backend each confined by the process sandbox.

pub mod digest;
pub mod host;
pub mod image;
pub mod kernel;
pub mod net;
pub mod qemu;
pub mod runtime;
pub mod vsock;

pub use runtime::{MicroVmConfig, MicroVmInstance, MicroVmRuntime, VmFacts, find_agent};
