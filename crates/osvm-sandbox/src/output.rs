//! The format of instance logs.
//!
//! The monitor drains the workload's stdout and stderr (pipes it reads without pause, so the
//! workload never blocks on a full pipe while the monitor lives) into `stdout.log` and
//! `stderr.log`, one record per line:
//!
//! ```text
//! 2026-11-29T00:12:19.123Z F GET / HTTP/1.0 200 -
//! 2026-11-29T00:12:19.250Z P Enter a name:
//! ```
//!
//! The time is when the monitor read the line (UTC, milliseconds). `F` marks a full line (the
//! workload wrote the newline); `P` a partial one, written out because the workload paused
//! without ending its line — a reader reproducing the output adds no newline after it.
//!
//! The monitor writes them through a [`RotatingLog`]: a log about to pass its size limit moves
//! to `<log>.1` (older copies shift up to `.N`, the oldest is dropped) and a new, empty log is
//! begun, between two records, never inside one. A reader following a log reopens it by name
//! when the file it reads was replaced.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use osvm_core::LogLimits;

/// How long a partial line may wait for its end before it is written out.
pub const PARTIAL_AFTER_MS: i32 = 100;
/// The longest record; a longer line is cut into several.
pub const MAX_RECORD: usize = 16 * 1024;

/// Splits one stream into stamped records.
#[derive(Debug, Default)]
pub struct Stamper {
    pending: Vec<u8>,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Stamper {
    /// Takes bytes the workload wrote and writes every completed line to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut impl Write) -> io::Result<()> {
        self.pending.extend_from_slice(data);
        let ts = now();
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            write_record(out, &ts, 'F', &self.pending[start..end])?;
            start = end + 1;
        }
        self.pending.drain(..start);
        while self.pending.len() >= MAX_RECORD {
            let rest = self.pending.split_off(MAX_RECORD);
            write_record(out, &ts, 'P', &self.pending)?;
            self.pending = rest;
        }
        Ok(())
    }

    /// Writes out a partial line, if there is one.
    pub fn flush(&mut self, out: &mut impl Write) -> io::Result<()> {
        if !self.pending.is_empty() {
            write_record(out, &now(), 'P', &self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

fn write_record(out: &mut impl Write, ts: &str, flag: char, payload: &[u8]) -> io::Result<()> {
    let mut record = Vec::with_capacity(payload.len() + ts.len() + 4);
    record.extend_from_slice(ts.as_bytes());
    record.push(b' ');
    record.push(flag as u8);
    record.push(b' ');
    record.extend_from_slice(payload);
    record.push(b'\n');
    out.write_all(&record)
}

/// A log file that rotates by size: each `write` is one whole record (see [`Stamper`]).
#[derive(Debug)]
pub struct RotatingLog {
    /// The log's path (`<instance>/stdout.log`).
    path: PathBuf,
    /// The open log.
    file: File,
    /// Bytes in the current file.
    written: u64,
    /// When to rotate and how many copies to keep.
    limits: LogLimits,
}

/// `<log>.<n>`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl RotatingLog {
    /// Continues `file`, the open log at `path`.
    pub fn new(path: PathBuf, file: File, limits: LogLimits) -> Self {
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Self {
            path,
            file,
            written,
            limits,
        }
    }

    /// Moves the log to `.1` (shifting older copies, dropping the oldest) and begins a new one.
    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.limits.files.max(1);
        let _ = std::fs::remove_file(rotated(&self.path, keep));
        for n in (1..keep).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = open_log(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingLog {
    fn write(&mut self, record: &[u8]) -> io::Result<usize> {
        if self.written > 0 && self.written + record.len() as u64 > self.limits.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(record)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// When the monitor read it (RFC 3339, UTC, milliseconds).
    pub time: &'a str,
    /// The workload ended the line itself.
    pub full: bool,
    /// The bytes the workload wrote (without the newline).
    pub payload: &'a [u8],
}

/// Parses one record (a line of a log file, without its newline); `None` if it is not one.
pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let sp = line.iter().position(|b| *b == b' ')?;
    let time = std::str::from_utf8(&line[..sp]).ok()?;
    let flag = *line.get(sp + 1)?;
    if line.get(sp + 2) != Some(&b' ') || !matches!(flag, b'F' | b'P') {
        return None;
    }
    Some(Record {
        time,
        full: flag == b'F',
        payload: &line[sp + 3..],
    })
}

/// Reproduces the workload's bytes from records: what `osvm run` prints.
pub fn payload_of(line: &[u8], out: &mut impl Write) -> io::Result<()> {
    match parse(line) {
        Some(r) => {
            out.write_all(r.payload)?;
            if r.full {
                out.write_all(b"\n")?;
            }
            Ok(())
        }
        None => {
            out.write_all(line)?;
            out.write_all(b"\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_records_and_back() {
        let mut s = Stamper::default();
        let mut log = Vec::new();
        s.feed(b"hello\nwor", &mut log).unwrap();
        s.feed(b"ld\nprompt: ", &mut log).unwrap();
        s.flush(&mut log).unwrap();
        let text = String::from_utf8(log.clone()).unwrap();
        let records: Vec<Record<'_>> = log
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse(l).unwrap())
            .collect();
        assert_eq!(records.len(), 3, "{text}");
        assert_eq!(records[0].payload, b"hello");
        assert!(records[1].full && records[1].payload == b"world");
        assert!(!records[2].full && records[2].payload == b"prompt: ");
        assert!(
            records[0].time.ends_with('Z') && records[0].time.len() == 24,
            "{}",
            records[0].time
        );
        let mut back = Vec::new();
        for l in log.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            payload_of(l, &mut back).unwrap();
        }
        assert_eq!(back, b"hello\nworld\nprompt: ");
    }

    #[test]
    fn a_log_rotates_between_records_and_keeps_its_copies() {
        let dir = std::env::temp_dir().join(format!("osvm-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stdout.log");
        let limits = LogLimits {
            max_bytes: 1000,
            files: 2,
        };
        let mut log = RotatingLog::new(path.clone(), open_log(&path).unwrap(), limits);
        let mut s = Stamper::default();
        for i in 0..200 {
            s.feed(
                format!("line {i:04} {}\n", "x".repeat(40)).as_bytes(),
                &mut log,
            )
            .unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 1000, "{}", size(&path));
        assert!(size(&rotated(&path, 1)) > 900 && size(&rotated(&path, 2)) > 900);
        assert!(!rotated(&path, 3).exists());
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(
            last.trim_end()
                .ends_with(&format!("line 0199 {}", "x".repeat(40)))
        );
        for p in [path.clone(), rotated(&path, 1), rotated(&path, 2)] {
            for l in std::fs::read(&p)
                .unwrap()
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
            {
                assert!(parse(l).is_some(), "every file holds whole records");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overlong_lines_are_cut() {
        let mut s = Stamper::default();
        let mut log = Vec::new();
        s.feed(&vec![b'x'; MAX_RECORD * 2 + 5], &mut log).unwrap();
        s.feed(b"\n", &mut log).unwrap();
        let n = log.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
        assert_eq!(n, 3);
    }
}
