//! Reading a Hermit guest's serial port: the one channel out of the guest.
//!
//! The loader, the kernel and the app share it. Until the kernel logs "Jumping into
//! application" everything is boot output (the loader's `[loader]` lines, the kernel's log and
//! its device-tree dump). After it, kernel log lines look like `[0][INFO] text` (CPU, level;
//! osvm builds the kernel without colours); at shutdown the kernel prints its interrupt counts
//! (`Number of interrupts`, then `[0][NAME]: N`) and last `exit status N`, the app's real exit
//! code (QEMU's own exit code only says 0 or not). A panicking app prints Rust's `panicked at`
//! message and aborts, which Hermit reports as `exit status -1`. Everything else is the app's
//! output (stdout and stderr both: Hermit has one serial port).

/// What one serial line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A kernel log line.
    Kernel,
    /// The kernel is about to call the app's `main`.
    AppStarts,
    /// The kernel's final line with the app's exit code.
    Exit(i32),
    /// The app's output.
    App(&'a str),
}

/// The marker the kernel logs right before it calls the app.
const APP_STARTS: &str = "Jumping into application";

/// Classifies one line (without its newline); `booted` says whether the app has started.
pub fn classify(line: &str, booted: bool) -> Line<'_> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if let Some(code) = line.strip_prefix("exit status ")
        && let Ok(code) = code.trim().parse()
    {
        return Line::Exit(code);
    }
    if is_kernel_log(line) {
        if line.ends_with(APP_STARTS) {
            return Line::AppStarts;
        }
        return Line::Kernel;
    }
    if !booted || line == "Number of interrupts" || is_interrupt_count(line) {
        return Line::Kernel;
    }
    Line::App(line)
}

/// `[N][NAME]: COUNT`, the kernel's interrupt statistics at shutdown.
fn is_interrupt_count(line: &str) -> bool {
    let Some((head, count)) = line.split_once("]: ") else {
        return false;
    };
    let Some((cpu, _name)) = head.strip_prefix('[').and_then(|h| h.split_once("][")) else {
        return false;
    };
    !cpu.is_empty()
        && cpu.bytes().all(|b| b.is_ascii_digit())
        && !count.is_empty()
        && count.bytes().all(|b| b.is_ascii_digit())
}

/// `[N][LEVEL] ...` with N a CPU number and LEVEL one of log's levels.
fn is_kernel_log(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((cpu, rest)) = rest.split_once("][") else {
        return false;
    };
    if cpu.is_empty() || !cpu.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    ["TRACE] ", "DEBUG] ", "INFO] ", "WARN] ", "ERROR] "]
        .iter()
        .any(|l| rest.starts_with(l))
}

/// Whether an app line is Rust's panic message.
pub fn is_panic(line: &str) -> bool {
    line.contains("panicked at")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_lines_markers_and_app_output_are_told_apart() {
        // Before the app starts everything is boot output.
        assert_eq!(classify("[loader] jumping to kernel", false), Line::Kernel);
        assert_eq!(classify("    chosen {", false), Line::Kernel);
        let c = |l| classify(l, true);
        assert_eq!(c("[0][INFO] Welcome to Hermit 0.11.0"), Line::Kernel);
        assert_eq!(c("[0][WARN] no network device\r"), Line::Kernel);
        assert_eq!(
            classify("[0][INFO] Jumping into application", false),
            Line::AppStarts
        );
        assert_eq!(c("exit status 7"), Line::Exit(7));
        assert_eq!(c("exit status -1\r"), Line::Exit(-1));
        assert_eq!(c("Number of interrupts"), Line::Kernel);
        assert_eq!(c("[0][FPU]: 1"), Line::Kernel);
        assert_eq!(c("[0][Timer]: x"), Line::App("[0][Timer]: x"));
        assert_eq!(c("exit status seven"), Line::App("exit status seven"));
        assert_eq!(c("hello [0][INFO]"), Line::App("hello [0][INFO]"));
        assert_eq!(c("[x][INFO] y"), Line::App("[x][INFO] y"));
        assert_eq!(c("[0][NOTE] y"), Line::App("[0][NOTE] y"));
        assert_eq!(c("plain output"), Line::App("plain output"));
        assert!(is_panic("thread 'main' panicked at src/main.rs:3:5:"));
    }
}
