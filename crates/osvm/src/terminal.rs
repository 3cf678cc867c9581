//! `osvm run -i` on a terminal: the command gets a terminal of its own, never the operator's.
//!
//! Handing the operator's terminal to a sandboxed command would let it change the terminal's
//! modes and window size for good, and write escape sequences straight to it through its stdin.
//! Instead osvm makes a pseudo-terminal with the operator's modes and size, gives the command
//! its slave side as stdin, and relays what the operator types into the master side; what comes
//! back out of the master (the echo, anything the command writes to its stdin) is dropped, the
//! command's output being shown from its logs. When the operator's input ends, the command's
//! terminal gets an end-of-file character.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::Context;
use nix::sys::termios::{SpecialCharacterIndices, tcgetattr};

/// A pseudo-terminal for the command, not yet relaying.
pub struct Relay {
    /// osvm's side.
    master: OwnedFd,
    /// The command's side (osvm keeps its copy until the relay starts).
    slave: OwnedFd,
    /// The character that ends input in canonical mode (`^D` unless changed).
    eof: u8,
}

/// A relay running; it ends with the process.
pub struct Running {
    _master: OwnedFd,
}

impl Relay {
    /// A pseudo-terminal with the modes and window size of osvm's own stdin (a terminal).
    pub fn open() -> anyhow::Result<Self> {
        let stdin = std::io::stdin();
        let termios = tcgetattr(&stdin).context("read the terminal's modes")?;
        let mut size: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into `size`, which lives across the call.
        let got = unsafe { libc::ioctl(stdin.as_raw_fd(), libc::TIOCGWINSZ, &mut size) } == 0;
        let pty = nix::pty::openpty(got.then_some(&size), Some(&termios))
            .context("open a pseudo-terminal")?;
        Ok(Self {
            master: pty.master,
            slave: pty.slave,
            eof: termios.control_chars[SpecialCharacterIndices::VEOF as usize],
        })
    }

    /// The command's side, for its stdin.
    pub fn slave(&self) -> anyhow::Result<OwnedFd> {
        self.slave
            .try_clone()
            .context("duplicate the pseudo-terminal")
    }

    /// Relays osvm's stdin into the command's terminal, and drops what comes back.
    pub fn start(self) -> Running {
        let Self { master, slave, eof } = self;
        drop(slave);
        if let (Ok(input), Ok(output)) = (master.try_clone(), master.try_clone()) {
            std::thread::spawn(move || {
                let mut to = std::fs::File::from(input);
                let mut buf = [0u8; 4096];
                let mut from = std::io::stdin().lock();
                loop {
                    match from.read(&mut buf) {
                        Ok(0) => {
                            let _ = to.write_all(&[eof]);
                            return;
                        }
                        Ok(n) => {
                            if to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            });
            std::thread::spawn(move || {
                let mut from = std::fs::File::from(output);
                let mut sink = [0u8; 4096];
                while matches!(from.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
        Running { _master: master }
    }
}
