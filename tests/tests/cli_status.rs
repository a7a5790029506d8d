//! The operator CLI's `status` against real SQLite files (and PostgreSQL schemas when the lane
//! is set up): the numbers match the stores, and a misspelt replicable name is refused without
//! creating tables.

mod cli_common;

use cli_common::{Lane, lanes, publish, run, seeded};
use replicable_core::cli::CliError;
use replicable_core::storage::sql::SqlStore;

#[test]
fn status_counts_match_the_stores_on_both_sites() {
    lanes(|lane| {
        Box::pin(async move {
            let Some(s) = seeded(lane).await else { return };
            let json: serde_json::Value =
                serde_json::from_str(&run(&s.secondary, &["status", "--json"]).await.unwrap())
                    .unwrap();
            let row = &json["replicables"][0];
            assert_eq!(row["replicable_name"], "artifact");
            assert_eq!(row["registry_count"], 5, "{json}");
            assert_eq!(row["synced_count"], 4, "{json}");
            assert_eq!(row["failed_count"], 1, "{json}");
            assert_eq!(row["pending_count"], 0, "{json}");
            assert_eq!(row["verified_count"], 4, "{json}");
            assert_eq!(row["synced_percent"], 80.0, "{json}");
            assert_eq!(row["queue_depth"], 0, "{json}");
            let last = s
                .primary
                .event_log()
                .last_event_id()
                .await
                .unwrap()
                .unwrap();
            assert_eq!(json["events"]["last_event_id"], last);
            assert_eq!(json["events"]["cursor_event_id"], last);
            assert_eq!(json["events"]["events_behind"], 0);

            // Two more events: the cursor is two behind.
            publish(&s.primary, 6, true).await;
            publish(&s.primary, 7, true).await;
            let json: serde_json::Value =
                serde_json::from_str(&run(&s.secondary, &["status", "--json"]).await.unwrap())
                    .unwrap();
            assert_eq!(json["events"]["events_behind"], 2, "{json}");
            assert!(json["events"]["lag_seconds"].as_f64().unwrap() >= 0.0);

            let table = run(&s.secondary, &["status"]).await.unwrap();
            assert!(table.contains("2 events behind"), "{table}");
            let line = table
                .lines()
                .find(|l| l.starts_with("artifact"))
                .expect("a row for artifact");
            let numbers: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(&numbers[1..7], ["5", "0", "0", "4", "1", "4"], "{table}");

            let primary = run(&s.primary, &["status", "--json"]).await.unwrap();
            let json: serde_json::Value = serde_json::from_str(&primary).unwrap();
            let row = &json["replicables"][0];
            assert_eq!(row["role"], "primary");
            assert_eq!(row["count"], 7, "{json}");
            assert_eq!(row["checksummed_count"], 4, "{json}");
            assert_eq!(row["checksum_failed_count"], 1, "{json}");
        })
    });
}

async fn tables_named(store: &SqlStore, prefix: &str) -> Vec<String> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE $1 ORDER BY name",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.iter().map(|r| r.get::<String, _>("name")).collect()
}

#[test]
fn a_misspelt_name_is_refused_and_creates_no_table() {
    replicable_core::testing::block_on(async {
        let s = seeded(Lane::Sqlite).await.unwrap();
        let e = run(&s.secondary, &["status", "artifcat"])
            .await
            .unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("unknown replicable `artifcat`") && message.contains("artifact"),
            "{message}"
        );
        for args in [
            &["registry", "list", "artifcat"][..],
            &["registry", "show", "artifcat", "1"],
            &["resync", "artifcat", "--all"],
            &["dataloss", "artifcat"],
        ] {
            let e = run(&s.secondary, args).await.unwrap_err();
            assert!(
                matches!(e, CliError::UnknownReplicable { .. }),
                "{args:?}: {e}"
            );
        }
        // The store's read paths themselves do no DDL for a name without tables.
        let store = s.secondary.registry_store();
        assert_eq!(store.counts("artifcat").await.unwrap(), Default::default());
        assert!(store.get("artifcat", 1).await.unwrap().is_none());
        assert!(store.ids("artifcat", 0..10, 10).await.unwrap().is_empty());
        assert!(
            store
                .list("artifcat", Default::default(), None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.secondary.records().count("artifcat").await.unwrap(), 0);
        assert!(
            s.secondary
                .records()
                .get("artifcat", 1)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            s.secondary
                .verification_store()
                .counts("artifcat")
                .await
                .unwrap(),
            Default::default()
        );
        assert!(
            tables_named(&s.secondary_store, "artifcat")
                .await
                .is_empty(),
            "tables were created for a misspelt name"
        );
        // The real name's tables are there, and `create_tables` makes a new one's.
        assert_eq!(
            tables_named(&s.secondary_store, "artifact_").await,
            [
                "artifact_counts",
                "artifact_generations",
                "artifact_records",
                "artifact_registry",
                "artifact_verification"
            ]
        );
        store.create_tables("newcomer").await.unwrap();
        assert_eq!(tables_named(&s.secondary_store, "newcomer").await.len(), 5);
    });
}

/// A primary's `status` lists the secondaries that reported, healthy while their report is
/// recent, SILENT once it is older than `--silent-after` (150 s by default).
#[test]
fn a_secondary_silent_for_longer_than_the_threshold_is_shown_silent() {
    lanes(|lane| {
        Box::pin(async move {
            use replicable_core::PrimaryLink;
            let Some(s) = seeded(lane).await else { return };
            let link = replicable_core::InProcessPrimary::new(s.primary.clone());
            let report = replicable_tests::status_report(5);
            link.report_status("eu-west", &report).await.unwrap();
            let table = run(&s.primary, &["status"]).await.unwrap();
            let line = table
                .lines()
                .find(|l| l.starts_with("eu-west"))
                .unwrap_or_else(|| panic!("the secondary is listed: {table}"));
            assert!(line.contains("healthy"), "{table}");

            tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
            let table = run(&s.primary, &["status", "--silent-after", "1s"])
                .await
                .unwrap();
            let line = table.lines().find(|l| l.starts_with("eu-west")).unwrap();
            assert!(line.contains("SILENT"), "{table}");
            let json: serde_json::Value = serde_json::from_str(
                &run(&s.primary, &["status", "--json", "--silent-after", "1s"])
                    .await
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(json["secondaries"][0]["name"], "eu-west", "{json}");
            assert_eq!(json["secondaries"][0]["healthy"], false, "{json}");
            // The default threshold still calls it healthy.
            let json: serde_json::Value =
                serde_json::from_str(&run(&s.primary, &["status", "--json"]).await.unwrap())
                    .unwrap();
            assert_eq!(json["secondaries"][0]["healthy"], true, "{json}");
        })
    });
}

#[test]
fn the_silence_threshold_option_defaults_to_the_documented_value() {
    use replicable_core::cli::{Cli, Command, clap::Parser};
    let cli = Cli::try_parse_from(["replicable", "status"]).unwrap();
    let Command::Status(args) = cli.command else {
        panic!("not status")
    };
    assert_eq!(
        args.silent_after,
        replicable_core::status::DEFAULT_SILENT_AFTER
    );
    assert!(Cli::try_parse_from(["replicable", "status", "--silent-after", "soon"]).is_err());
}
