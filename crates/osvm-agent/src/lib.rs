//! `osvm-agent`: the init of every osvm microVM, and (this library) the protocol it speaks with
//! the host over vsock. The host side (`osvm-microvm`) and the agent share [`proto`], so the
//! two cannot disagree on a message.

#![forbid(unsafe_code)]

pub mod channel;
pub mod elf;
pub mod proto;
