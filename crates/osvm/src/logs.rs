//! Following an instance's log files onto the terminal, as `tail -f` does.
//!
//! The sandbox's monitor writes stamped records to files (see `osvm_sandbox::output`) and
//! rotates them by size; a follower turns what appears back into the workload's own bytes until
//! told to finish, then does the rest. When the file it reads is rotated away (the name now
//! points to a new file), it reads the old one to its end and moves on to the new one.
//!
//! Output bound for a terminal passes through a [`TerminalFilter`]: a workload's bytes reach
//! the operator's terminal, and a terminal obeys escape sequences, some of which set its title,
//! write its clipboard (OSC 52) or make it answer into its input (device status reports). Only
//! colours, cursor movement and erasing (what log colours and progress bars use) pass.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a follower looks for new output while the instance runs.
const POLL: Duration = Duration::from_millis(50);

/// A thread copying one log file to a writer.
pub struct Follower {
    done: Sender<()>,
    thread: JoinHandle<()>,
}

/// The open log and the inode it is, to notice a rotation.
struct Source {
    path: PathBuf,
    file: File,
    ino: u64,
}

impl Source {
    fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let ino = file.metadata()?.ino();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            ino,
        })
    }

    /// Appends what is new to `pending`, following a rotation: the rest of the old file, then
    /// the new one.
    fn read_new(&mut self, buf: &mut [u8], pending: &mut Vec<u8>) {
        loop {
            loop {
                match self.file.read(buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
            match std::fs::metadata(&self.path) {
                Ok(m) if m.ino() != self.ino => match Source::open(&self.path) {
                    Ok(next) => *self = next,
                    Err(_) => return,
                },
                _ => return,
            }
        }
    }
}

impl Follower {
    /// Starts following `path` into `out` from the file's start; with `terminal`, through a
    /// [`TerminalFilter`].
    pub fn start(path: &Path, out: Box<dyn Write + Send>, terminal: bool) -> std::io::Result<Self> {
        let mut source = Source::open(path)?;
        let mut out: Box<dyn Write + Send> = if terminal {
            Box::new(TerminalFilter::new(out))
        } else {
            out
        };
        let (done, rx) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name("log-follower".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut pending: Vec<u8> = Vec::new();
                loop {
                    let finished = match rx.recv_timeout(POLL) {
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                        Err(RecvTimeoutError::Timeout) => false,
                    };
                    source.read_new(&mut buf, &mut pending);
                    let mut start = 0;
                    while let Some(pos) = pending[start..].iter().position(|b| *b == b'\n') {
                        let line = &pending[start..start + pos];
                        if osvm_sandbox::output::payload_of(line, &mut out).is_err() {
                            return;
                        }
                        start += pos + 1;
                    }
                    pending.drain(..start);
                    if finished && !pending.is_empty() {
                        let _ = out.write_all(&pending);
                    }
                    let _ = out.flush();
                    if finished {
                        return;
                    }
                }
            })?;
        Ok(Self { done, thread })
    }

    /// Copies what is left and stops.
    pub fn finish(self) {
        let _ = self.done.send(());
        let _ = self.thread.join();
    }
}

/// Where a [`TerminalFilter`] is within an escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// Plain text.
    Text,
    /// After ESC.
    Esc,
    /// After ESC and intermediate bytes (`ESC ( 0` selects a character set).
    EscIntermediate,
    /// In a CSI sequence (`ESC [`), holding its parameters.
    Csi,
    /// In a string sequence (OSC, DCS, SOS, PM, APC), dropped up to its terminator.
    Str,
    /// In a string sequence, after an ESC (the start of `ESC \`).
    StrEsc,
}

/// Lets text, tabs, newlines, carriage returns and backspaces through, and of the escape
/// sequences only CSI ones that colour, move the cursor or erase; drops everything else a
/// terminal would act on.
pub struct TerminalFilter<W: Write> {
    out: W,
    state: Escape,
    csi: Vec<u8>,
}

/// CSI final bytes that pass: SGR (m), erase (K, J), cursor movement (A-H, f), save/restore
/// (s, u).
const SAFE_CSI_FINALS: &[u8] = b"mKJABCDEFGHfsu";
/// The longest CSI sequence kept (longer ones are dropped).
const MAX_CSI: usize = 64;

impl<W: Write> TerminalFilter<W> {
    /// Filters what is written into `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            state: Escape::Text,
            csi: Vec::new(),
        }
    }

    fn filter(&mut self, data: &[u8]) -> Vec<u8> {
        let mut kept = Vec::with_capacity(data.len());
        for &b in data {
            self.state = match (self.state, b) {
                (Escape::Text, 0x1b) => Escape::Esc,
                (Escape::Text, b'\t' | b'\n' | b'\r' | 0x08) => {
                    kept.push(b);
                    Escape::Text
                }
                // Other C0 controls and DEL (bells, shift-outs, C1 in 8-bit form is UTF-8 here).
                (Escape::Text, b) if b < 0x20 || b == 0x7f => Escape::Text,
                (Escape::Text, b) => {
                    kept.push(b);
                    Escape::Text
                }
                (Escape::Esc, b'[') => {
                    self.csi.clear();
                    Escape::Csi
                }
                (Escape::Esc, b']' | b'P' | b'X' | b'^' | b'_') => Escape::Str,
                (Escape::Esc | Escape::EscIntermediate, 0x20..=0x2f) => Escape::EscIntermediate,
                // Any other sequence ends with this byte (resets, keypad modes, charsets).
                (Escape::Esc | Escape::EscIntermediate, _) => Escape::Text,
                (Escape::Csi, 0x40..=0x7e) => {
                    if SAFE_CSI_FINALS.contains(&b) && self.csi.len() <= MAX_CSI {
                        kept.extend_from_slice(b"\x1b[");
                        kept.extend_from_slice(&self.csi);
                        kept.push(b);
                    }
                    Escape::Text
                }
                (Escape::Csi, 0x20..=0x3f) => {
                    self.csi.push(b);
                    Escape::Csi
                }
                // A control inside CSI aborts it.
                (Escape::Csi, _) => Escape::Text,
                (Escape::Str, 0x07) => Escape::Text,
                (Escape::Str, 0x1b) => Escape::StrEsc,
                (Escape::Str, _) => Escape::Str,
                (Escape::StrEsc, b'\\') => Escape::Text,
                (Escape::StrEsc, _) => Escape::Str,
            };
        }
        kept
    }
}

impl<W: Write> Write for TerminalFilter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let kept = self.filter(data);
        self.out.write_all(&kept)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(input: &[u8]) -> Vec<u8> {
        let mut f = TerminalFilter::new(Vec::new());
        // In two pieces: a sequence cut between writes is still recognised.
        let (a, b) = input.split_at(input.len() / 2);
        f.write_all(a).unwrap();
        f.write_all(b).unwrap();
        f.out
    }

    #[test]
    fn colours_and_progress_bars_pass() {
        let text = b"\x1b[1;32mok\x1b[0m 50%\r\x1b[2K100%\n\ttabbed";
        assert_eq!(filtered(text), text.to_vec());
    }

    #[test]
    fn sequences_that_change_or_query_the_terminal_are_dropped() {
        for (input, want) in [
            (&b"a\x1b]0;pwned\x07b"[..], &b"ab"[..]),
            (b"a\x1b]52;c;cGF5bG9hZA==\x1b\\b", b"ab"),
            (b"a\x1b[6nb", b"ab"),
            (b"a\x1b[21tb", b"ab"),
            (b"a\x1bPq#0;2;0;0;0\x1b\\b", b"ab"),
            (b"a\x1b(0b", b"ab"),
            (b"a\x07\x0e\x7fb", b"ab"),
        ] {
            assert_eq!(
                filtered(input),
                want.to_vec(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn utf8_text_passes() {
        let text = "héllo → ✓\n".as_bytes();
        assert_eq!(filtered(text), text.to_vec());
    }
}
