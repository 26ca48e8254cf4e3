//! The VM matrix (to be written).
use anyhow::Result;

#[derive(clap::Args, Default)]
pub struct VmTestArgs {}

pub fn run(_args: &VmTestArgs) -> Result<()> {
    Ok(())
}
