//! `resync` and `reverify`: one record, the failed ones, or all, in batches.
//!
//! Many rows are changed a batch at a time (`--batch-size` rows per statement, 1,000 by default)
//! with a pause between batches, so that the workers of a running engine keep claiming and
//! completing rows meanwhile instead of waiting behind one statement that touches the whole
//! table (Geo's "resync all" once stalled replication that way).

use std::time::Duration;

use clap::{ArgGroup, Args};

use super::progress::Progress;
use super::{CliError, Context};
use crate::descriptor::ReplicableDescriptor;
use crate::domain::registry::SyncState;
use crate::domain::verification::VerificationState;
use crate::storage::RegistryFilter;

/// Arguments of `resync` and `reverify`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["id", "failed", "all"])))]
pub struct BatchArgs {
    /// The replicable.
    pub replicable: String,
    /// One record.
    #[arg(long)]
    pub id: Option<i64>,
    /// Every failed row (resync: failed syncs; reverify: failed verifications).
    #[arg(long)]
    pub failed: bool,
    /// Every row (resync: every registry row; reverify: every synced row, or on the primary
    /// every checksum).
    #[arg(long)]
    pub all: bool,
    /// Rows per statement.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Pause between batches, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub pause_ms: u64,
}

impl BatchArgs {
    /// `--id`, `--failed` or `--all` for `replicable`, with the default batch size and pause.
    pub fn new(replicable: impl Into<String>) -> Self {
        Self {
            replicable: replicable.into(),
            id: None,
            failed: false,
            all: false,
            batch_size: 1000,
            pause_ms: 100,
        }
    }

    fn pause(&self) -> Duration {
        Duration::from_millis(self.pause_ms)
    }
}

/// Pages through the rows passing `filter` and applies `apply` to each page's ids, in batches.
async fn in_batches<'a, F>(
    cx: &mut Context<'_>,
    args: &BatchArgs,
    replicable: &ReplicableDescriptor,
    filter: RegistryFilter,
    label: String,
    total: u64,
    mut apply: F,
) -> Result<u64, CliError>
where
    F: FnMut(
        Vec<i64>,
    ) -> futures::future::BoxFuture<'a, Result<u64, crate::domain::error::StoreError>>,
{
    let batch = args.batch_size.max(1);
    let mut progress = Progress::new(cx.options.progress_bars, label, total);
    let mut after = None;
    let mut changed = 0;
    loop {
        let rows = cx
            .site
            .registry_store()
            .list(replicable.name, filter, after, batch)
            .await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.model_id);
        let ids: Vec<i64> = rows.iter().map(|r| r.model_id).collect();
        let n = ids.len();
        changed += apply(ids).await?;
        progress.advance(n as u64, cx.out)?;
        if n < batch {
            break;
        }
        tokio::time::sleep(args.pause()).await;
    }
    progress.finish();
    Ok(changed)
}

pub(super) async fn resync(cx: &mut Context<'_>, args: &BatchArgs) -> Result<(), CliError> {
    let replicable = cx.replicable(&args.replicable)?;
    cx.require_secondary("resync")?;
    let name = replicable.name;
    let store = cx.site.registry_store();
    if let Some(id) = args.id {
        let row = store.mark_pending(name, id, cx.site.now()).await?;
        if row.state == SyncState::Started {
            writeln!(
                cx.out,
                "{name} {id}: a sync is running; the row goes pending when it ends"
            )?;
        } else {
            writeln!(cx.out, "{name} {id}: pending")?;
        }
        return Ok(());
    }
    let counts = store.counts(name).await?;
    let (filter, total, what) = if args.failed {
        (
            RegistryFilter {
                state: Some(SyncState::Failed),
                verification: None,
            },
            counts.failed,
            "failed",
        )
    } else {
        (RegistryFilter::default(), counts.registry, "all")
    };
    let site = cx.site.clone();
    let changed = in_batches(
        cx,
        args,
        replicable,
        filter,
        format!("resync {name} ({what})"),
        total,
        move |ids| {
            let site = site.clone();
            Box::pin(async move { site.registry_store().resync_many(name, &ids).await })
        },
    )
    .await?;
    writeln!(cx.out, "{name}: {changed} rows sent back to pending")?;
    Ok(())
}

pub(super) async fn reverify(cx: &mut Context<'_>, args: &BatchArgs) -> Result<(), CliError> {
    let replicable = cx.replicable(&args.replicable)?;
    let name = replicable.name;
    if !replicable.verifiable {
        return Err(CliError::NotApplicable(format!(
            "{name} is not verified (its strategy has no checksums)"
        )));
    }
    if cx.site.is_primary() {
        return reverify_primary(cx, args, replicable).await;
    }
    let store = cx.site.registry_store();
    if let Some(id) = args.id {
        let Some(row) = store.get(name, id).await? else {
            return Err(CliError::NotFound {
                replicable: name.to_owned(),
                id,
                what: "no registry row",
            });
        };
        if store.reverify_many(name, &[id]).await? == 1 {
            writeln!(cx.out, "{name} {id}: verification pending")?;
        } else {
            writeln!(
                cx.out,
                "{name} {id}: not re-verified (sync {}, verification {}): only synced rows \
                 whose verification succeeded or failed are",
                row.state, row.verification.verification_state
            )?;
        }
        return Ok(());
    }
    let counts = store.counts(name).await?;
    let (filter, total, what) = if args.failed {
        (
            RegistryFilter {
                state: Some(SyncState::Synced),
                verification: Some(VerificationState::Failed),
            },
            counts.verification_failed,
            "failed",
        )
    } else {
        (
            RegistryFilter {
                state: Some(SyncState::Synced),
                verification: None,
            },
            counts.synced,
            "all",
        )
    };
    let site = cx.site.clone();
    let changed = in_batches(
        cx,
        args,
        replicable,
        filter,
        format!("reverify {name} ({what})"),
        total,
        move |ids| {
            let site = site.clone();
            Box::pin(async move { site.registry_store().reverify_many(name, &ids).await })
        },
    )
    .await?;
    writeln!(
        cx.out,
        "{name}: {changed} rows sent back to verification pending"
    )?;
    Ok(())
}

/// On the primary: the verification rows go back to pending.
async fn reverify_primary(
    cx: &mut Context<'_>,
    args: &BatchArgs,
    replicable: &ReplicableDescriptor,
) -> Result<(), CliError> {
    let name = replicable.name;
    let store = cx.site.verification_store();
    if let Some(id) = args.id {
        if store.get(name, id).await?.is_none() && cx.site.records().get(name, id).await?.is_none()
        {
            return Err(CliError::NotFound {
                replicable: name.to_owned(),
                id,
                what: "no such record on the primary",
            });
        }
        store.mark_pending(name, id).await?;
        writeln!(cx.out, "{name} {id}: verification pending")?;
        return Ok(());
    }
    let counts = store.counts(name).await?;
    let batch = args.batch_size.max(1);
    let mut changed = 0;
    if args.all {
        // Succeeded checksums, oldest first, a batch per statement. Rows verified again while
        // this runs have a newer `verified_at` than the cutoff and are not picked twice.
        let cutoff = store.now(cx.site.now()).await? + chrono::Duration::milliseconds(1);
        let mut progress = Progress::new(
            cx.options.progress_bars,
            format!("reverify {name} (all)"),
            counts.succeeded + counts.failed,
        );
        loop {
            let n = store.reverify_older_than(name, cutoff, batch).await?;
            changed += n;
            if n == 0 {
                break;
            }
            progress.advance(n, cx.out)?;
            if (n as usize) < batch {
                break;
            }
            tokio::time::sleep(args.pause()).await;
        }
        progress.finish();
    }
    // Failed checksums: the primary's verification store has no listing by state, so the
    // records are walked by id, a page at a time.
    let mut progress = Progress::new(
        cx.options.progress_bars,
        format!("reverify {name} (failed)"),
        counts.total,
    );
    let mut from = i64::MIN;
    loop {
        let ids = cx.site.records().ids(name, from..i64::MAX, batch).await?;
        for &id in &ids {
            if let Some(row) = store.get(name, id).await?
                && row.verification.verification_state == VerificationState::Failed
            {
                store.mark_pending(name, id).await?;
                changed += 1;
            }
        }
        progress.advance(ids.len() as u64, cx.out)?;
        match ids.last() {
            Some(&last) if ids.len() == batch => from = last.saturating_add(1),
            _ => break,
        }
        tokio::time::sleep(args.pause()).await;
    }
    progress.finish();
    writeln!(cx.out, "{name}: {changed} checksums sent back to pending")?;
    Ok(())
}
