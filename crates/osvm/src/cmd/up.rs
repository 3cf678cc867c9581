use std::process::ExitCode;
use crate::cli::{Global, UpArgs};
pub fn run(_global: &Global, _args: UpArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
