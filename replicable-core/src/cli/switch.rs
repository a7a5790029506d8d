//! `pause` and `resume`: the persisted replication switches of a secondary.

use clap::Args;

use super::{CliError, Context};

/// Arguments of `pause` and `resume`.
#[derive(Debug, Clone, Default, Args)]
pub struct SwitchArgs {
    /// Only this replicable (default: the whole site).
    pub replicable: Option<String>,
}

pub(super) async fn run(
    cx: &mut Context<'_>,
    args: &SwitchArgs,
    enabled: bool,
) -> Result<(), CliError> {
    let verb = if enabled { "resume" } else { "pause" };
    cx.require_secondary(verb)?;
    let done = if enabled { "resumed" } else { "paused" };
    match &args.replicable {
        Some(name) => {
            let replicable = cx.replicable(name)?;
            crate::engine::workers::set_replication_enabled(cx.site, replicable, enabled).await?;
            writeln!(
                cx.out,
                "replication of {} on site {} {done}",
                replicable.name,
                cx.site.name()
            )?;
        }
        None => {
            crate::engine::set_site_replication_enabled(cx.site, enabled).await?;
            writeln!(cx.out, "replication of site {} {done}", cx.site.name())?;
        }
    }
    Ok(())
}
