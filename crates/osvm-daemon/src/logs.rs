//! Size-based rotation of instance logs.
//!
//! A sandbox writes its stdout and stderr straight into `stdout.log` and `stderr.log` through
//! descriptors it inherited (opened `O_APPEND`), so there is never a pipe for anyone to drain.
//! osvm cannot make the sandbox reopen a file, so rotation copies and truncates: the content
//! moves to `<file>.1` (older copies shift up to `.N`, the oldest is dropped) and the file is
//! truncated, after which the workload's appends start again at offset 0. What the workload
//! writes between the copy and the truncation (microseconds) is lost; `logrotate`'s
//! `copytruncate` makes the same trade.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Rotates `path` if it has grown past `max` bytes, keeping `keep` older copies. Returns
/// whether it rotated.
pub fn rotate_if_larger(path: &Path, max: u64, keep: u32) -> io::Result<bool> {
    let size = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size <= max || keep == 0 {
        return Ok(false);
    }
    let _ = fs::remove_file(numbered(path, keep));
    for n in (1..keep).rev() {
        let from = numbered(path, n);
        if from.exists() {
            fs::rename(&from, numbered(path, n + 1))?;
        }
    }
    fs::copy(path, numbered(path, 1))?;
    fs::OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_shifts_copies_and_drops_the_oldest() {
        let dir = std::env::temp_dir().join(format!("osvm-logs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("stdout.log");
        for round in 0..4 {
            fs::write(&log, format!("round {round} ").repeat(10)).unwrap();
            assert!(rotate_if_larger(&log, 20, 2).unwrap());
            assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        }
        assert!(
            fs::read_to_string(numbered(&log, 1))
                .unwrap()
                .starts_with("round 3")
        );
        assert!(
            fs::read_to_string(numbered(&log, 2))
                .unwrap()
                .starts_with("round 2")
        );
        assert!(!numbered(&log, 3).exists(), "only `keep` copies");
        fs::write(&log, "small").unwrap();
        assert!(!rotate_if_larger(&log, 20, 2).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}
