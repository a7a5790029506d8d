//! An application on its own sqlx database, replicated: see `replicable_examples::own_database`.
//!
//! ```text
//! cargo run -p replicable-examples --bin own-database                 # SQLite files in a temporary directory
//! cargo run -p replicable-examples --bin own-database -- \
//!     --primary postgres://postgres@127.0.0.1:5432/test --primary-schema notes_primary \
//!     --secondary postgres://postgres@127.0.0.1:5432/test --secondary-schema notes_secondary
//! ```

use std::time::Duration;

use clap::Parser;
use replicable_examples::own_database::{Location, run_demo};

/// Runs the demo application and its replication, and checks the secondary's copy.
#[derive(Debug, Parser)]
struct Args {
    /// The primary's database (default: a SQLite file in a temporary directory).
    #[arg(long)]
    primary: Option<String>,
    /// PostgreSQL: the primary application's schema.
    #[arg(long)]
    primary_schema: Option<String>,
    /// The secondary's database (default: a SQLite file in a temporary directory).
    #[arg(long)]
    secondary: Option<String>,
    /// PostgreSQL: the secondary application's schema.
    #[arg(long)]
    secondary_schema: Option<String>,
    /// How many notes the bulk import writes.
    #[arg(long, default_value_t = 1_000)]
    imported: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "own_database=info,replicable_examples=info,warn".into()),
        )
        .init();
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let sqlite = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let primary = Location {
        url: args.primary.unwrap_or_else(|| sqlite("primary.db")),
        schema: args.primary_schema,
    };
    let secondary = Location {
        url: args.secondary.unwrap_or_else(|| sqlite("secondary.db")),
        schema: args.secondary_schema,
    };
    let report = run_demo(
        &primary,
        &secondary,
        args.imported,
        Duration::from_secs(300),
    )
    .await?;
    println!(
        "primary notes: {}, secondary notes: {}, synced: {}, verified: {}, identical: {}",
        report.primary_notes,
        report.secondary_notes,
        report.synced,
        report.verified,
        report.identical
    );
    if !(report.identical
        && report.verified == report.primary_notes as u64
        && report.synced == report.primary_notes as u64)
    {
        return Err("the secondary is not an identical, verified copy".into());
    }
    Ok(())
}
