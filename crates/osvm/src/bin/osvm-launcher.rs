//! `osvm-launcher`: the sandbox monitor and `exec` helper, without the rest of `osvm`.
//!
//! `osvm` starts one process of the launcher for every sandbox (the monitor) and for every
//! `exec` into one. Any `osvm` binary can play that part, but this one is a twentieth of its
//! size with a fifteenth of its relocations, so it reaches `main` about 0.8 ms sooner.
//! [`osvm_sandbox::SandboxConfig::new`] picks it when it sits beside `osvm`; it refuses plans
//! from another version of osvm.

fn main() {
    osvm_sandbox::run_if_requested();
    eprintln!(
        "osvm-launcher: osvm's sandbox launcher ({}), started by osvm only",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
