//! A child process of the `own_database` tests: the example application commits one write to
//! its own database and then waits to be killed (SIGKILL), so the test can check that nothing
//! committed is lost.
//!
//! `own_db_writer <url> <schema|-> publish <id>`: a note written with `publish_created_event_in`
//! in its transaction; `own_db_writer <url> <schema|-> bulk <first> <last>`: notes imported by
//! one SQL statement with no publish. Prints `committed` once the commit returned.

use std::io::Write;

use replicable_examples::own_database::{App, Location, Note, primary_site};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, schema, mode, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: own_db_writer <url> <schema|-> publish <id> | bulk <first> <last>".into(),
        );
    };
    let location = Location {
        url: url.clone(),
        schema: (schema != "-").then(|| schema.clone()),
    };
    let app = App::open(&location).await?;
    let site = primary_site(&location).await?;
    match (mode.as_str(), rest) {
        ("publish", [id]) => {
            let id: i64 = id.parse()?;
            let note = Note {
                id,
                title: format!("note {id}"),
                body: "written just before the crash".into(),
                pinned: true,
            };
            app.create_note(&site, &note).await?;
        }
        ("bulk", [first, last]) => {
            app.bulk_import(first.parse()?..=last.parse()?).await?;
        }
        _ => return Err(format!("unknown mode {mode} {rest:?}").into()),
    }
    println!("committed");
    std::io::stdout().flush()?;
    // Killed here.
    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    Ok(())
}
