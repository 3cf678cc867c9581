//! Termination signals as messages: the signals are blocked in every thread and one thread
//! takes them with `sigwait`, so stopping components runs as ordinary code, not in a handler.

use std::sync::mpsc::{Receiver, channel};

use nix::sys::signal::{SigSet, Signal};

/// Blocks SIGINT, SIGTERM and SIGHUP and returns a channel that receives them. Call before any
/// other thread is started, so that every thread inherits the mask.
pub fn listen() -> anyhow::Result<Receiver<Signal>> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}
