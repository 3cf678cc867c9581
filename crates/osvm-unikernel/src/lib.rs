//! osvm's `unikernel` runtime: Hermit unikernels, built by osvm from Rust crates and booted
//! under uhyve (hosts with hardware KVM) or QEMU with osvm's own loader (everywhere else).
//!
//! - [`toolchain`]: the build's prerequisites (cargo, rust-src, x86_64-unknown-none, binutils);
//! - [`kernel`]: `hermit-kernel` 0.11.0 from the Rust package registry, fixed for stable Rust,
//!   built and post-processed into the archive apps link;
//! - [`loader`]: osvm's multiboot loader for QEMU, carried as source and built on first use;
//! - [`image`]: content-addressed images, one ELF file per app with the kernel linked in;
//! - [`launcher`]: uhyve or QEMU, and the accelerator, chosen per host;
//! - [`serial`]: the guest's serial output: kernel log, app output, exit status;
//! - [`runtime`]: the runtime itself; the launcher runs in the process sandbox and the guest
//!   gets the component's network through a TAP in its namespace, like a microVM.
#![forbid(unsafe_code)]

pub mod image;
pub mod kernel;
pub mod launcher;
pub mod loader;
pub mod runtime;
pub mod serial;
mod steps;
pub mod toolchain;

pub use runtime::{UnikernelFacts, UnikernelInstance, UnikernelRuntime};
pub use steps::{BuildError, Progress};
