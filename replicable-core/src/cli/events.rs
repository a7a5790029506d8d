//! `events`: the primary's event log, read directly on the primary and through the link on a
//! secondary; `--follow` polls for new events until interrupted.

use std::time::Duration;

use clap::Args;

use super::{CliError, Context, time};
use crate::domain::event::{EventId, LogEntry};

/// Arguments of `events`.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Start after this event id (default: show the last `--limit` events).
    #[arg(long)]
    pub after: Option<EventId>,
    /// Most events to print before stopping (without `--follow`), and the page size.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Keep polling for new events until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// How often `--follow` polls, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// Print each entry as a line of JSON.
    #[arg(long)]
    pub json: bool,
}

impl Default for EventsArgs {
    fn default() -> Self {
        Self {
            after: None,
            limit: 50,
            follow: false,
            poll_ms: 1000,
            json: false,
        }
    }
}

async fn read(cx: &Context<'_>, after: EventId, limit: usize) -> Result<Vec<LogEntry>, CliError> {
    if cx.site.is_primary() {
        return Ok(cx.site.event_log().read_after(after, limit).await?);
    }
    let link = cx.site.primary_link().ok_or_else(|| {
        CliError::NotApplicable(format!("site `{}` has no primary link", cx.site.name()))
    })?;
    Ok(link.events_after(after, limit).await?)
}

async fn last_event_id(cx: &Context<'_>) -> Result<Option<EventId>, CliError> {
    if cx.site.is_primary() {
        return Ok(cx.site.event_log().last_event_id().await?);
    }
    match cx.site.primary_link() {
        Some(link) => Ok(link.last_event_id().await?),
        None => Ok(None),
    }
}

fn write_entry(cx: &mut Context<'_>, entry: &LogEntry, json: bool) -> Result<(), CliError> {
    if json {
        serde_json::to_writer(&mut *cx.out, entry)?;
        writeln!(cx.out)?;
        return Ok(());
    }
    match entry {
        LogEntry::Event(e) => {
            let field = |key: &str| {
                e.payload
                    .get(key)
                    .filter(|v| !v.is_null())
                    .map_or_else(|| "-".to_owned(), |v| v.to_string())
            };
            writeln!(
                cx.out,
                "{:>10}  {}  {:<24} {:<20} id={} generation={}",
                e.id,
                time(Some(e.created_at)),
                e.replicable_name,
                e.event_name,
                field("model_id"),
                field("generation")
            )?;
        }
        LogEntry::Damaged(d) => {
            writeln!(cx.out, "{:>10}  damaged: {}", d.id, d.reason)?;
        }
    }
    Ok(())
}

pub(super) async fn run(cx: &mut Context<'_>, args: &EventsArgs) -> Result<(), CliError> {
    let limit = args.limit.max(1);
    let mut after = match args.after {
        Some(after) => after,
        None => last_event_id(cx)
            .await?
            .map_or(0, |last| last.saturating_sub(limit as EventId)),
    };
    let mut printed = 0;
    loop {
        let page = read(cx, after, limit).await?;
        for entry in &page {
            if !args.follow && printed >= limit {
                return Ok(());
            }
            write_entry(cx, entry, args.json)?;
            printed += 1;
            after = entry.id();
        }
        cx.out.flush()?;
        if page.len() < limit {
            if !args.follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(args.poll_ms.max(10))).await;
        } else if !args.follow && printed >= limit {
            return Ok(());
        }
    }
}
