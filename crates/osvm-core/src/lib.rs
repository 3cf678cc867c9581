//! The heart of osvm that every other crate shares: the component model, the stack file and
//! its validation, and the traits every isolation runtime implements.
//!
//! Nothing here touches the host: parsing, validation and the model are pure, so they are
//! tested next to the code. The runtimes (`osvm-sandbox`, `osvm-microvm`, `osvm-unikernel`)
//! implement [`runtime::Runtime`] and [`runtime::Instance`].
#![forbid(unsafe_code)]

pub mod confinement;
pub mod launch;
pub mod model;
pub mod quantity;
pub mod runtime;
pub mod stack;

pub use confinement::{Confinement, GuestConfinement, SandboxConfinement};
pub use launch::{
    AccelChoice, BindMount, ConfidentialChoice, DataKind, LaunchSpec, LauncherChoice, LinkChoice,
    LogLimits, OverlayRoot, Resources, RunAs, RuntimeSpec, UnikernelOptions, VmOptions,
};
pub use runtime::{
    Adoption, Conn, Endpoint, ExecResult, ExitStatus, Instance, InstanceStats, Progress, Runtime,
    RuntimeError, RuntimeKind, Wiring,
};
