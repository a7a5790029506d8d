//! The operator CLI's commands against real SQLite files (and PostgreSQL schemas when the lane
//! is set up): registry list / show, resync, reverify, dataloss, events, pause and resume, each
//! run through `cli::execute` with its output captured and checked against the stores.

mod cli_common;

use std::time::Duration;

use cli_common::{Lane, lanes, publish, replicables, run, seeded};
use replicable_core::cli::{self, Cli, CliError};
use replicable_core::engine::SITE_SWITCH;
use replicable_core::prelude::*;

fn ids(json: &serde_json::Value) -> Vec<i64> {
    json.as_array()
        .unwrap()
        .iter()
        .map(|row| row["model_id"].as_i64().unwrap())
        .collect()
}

async fn json(site: &Site, args: &[&str]) -> serde_json::Value {
    let out = run(site, args).await.unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

#[test]
fn registry_list_filters_by_state_and_pages_by_id() {
    lanes(|lane: Lane| {
        Box::pin(async move {
            let Some(s) = seeded(lane).await else { return };
            let failed = json(
                &s.secondary,
                &[
                    "registry", "list", "artifact", "--state", "failed", "--json",
                ],
            )
            .await;
            assert_eq!(ids(&failed), [5]);
            assert_eq!(failed[0]["missing_on_primary"], true, "{failed}");
            let page = run(
                &s.secondary,
                &[
                    "registry", "list", "artifact", "--state", "synced", "--limit", "2",
                ],
            )
            .await
            .unwrap();
            assert!(page.contains("next page: --after 2"), "{page}");
            let next = json(
                &s.secondary,
                &[
                    "registry", "list", "artifact", "--state", "synced", "--after", "2", "--json",
                ],
            )
            .await;
            assert_eq!(ids(&next), [3, 4]);
            let verified = json(
                &s.secondary,
                &[
                    "registry",
                    "list",
                    "artifact",
                    "--verification",
                    "succeeded",
                    "--json",
                ],
            )
            .await;
            assert_eq!(ids(&verified), [1, 2, 3, 4]);
            let all = json(&s.secondary, &["registry", "list", "artifact", "--json"]).await;
            assert_eq!(ids(&all), [1, 2, 3, 4, 5]);
            let e = run(&s.primary, &["registry", "list", "artifact"])
                .await
                .unwrap_err();
            assert!(matches!(e, CliError::NotApplicable(_)), "{e}");
        })
    });
}

#[test]
fn registry_show_reports_both_sides() {
    lanes(|lane: Lane| {
        Box::pin(async move {
            let Some(s) = seeded(lane).await else { return };
            let one = json(
                &s.secondary,
                &["registry", "show", "artifact", "1", "--json"],
            )
            .await;
            assert_eq!(one["registry"]["state"], "synced", "{one}");
            assert_eq!(one["registry"]["synced_generation"], 1, "{one}");
            assert_eq!(one["primary_generation"], 1, "{one}");
            assert_eq!(one["exists_on_primary"], true, "{one}");
            let ours = &one["registry"]["verification"]["verification_checksum"];
            assert!(ours.is_string(), "{one}");
            assert_eq!(
                ours,
                &one["primary_verification"]["verification"]["verification_checksum"]
            );

            let text = run(&s.secondary, &["registry", "show", "artifact", "5"])
                .await
                .unwrap();
            for expected in [
                "state                  failed",
                "missing on primary     yes",
                "retry count            1",
            ] {
                assert!(text.contains(expected), "{expected:?} in\n{text}");
            }
            let e = run(&s.secondary, &["registry", "show", "artifact", "99"])
                .await
                .unwrap_err();
            assert!(matches!(e, CliError::NotFound { id: 99, .. }), "{e}");

            let primary = json(&s.primary, &["registry", "show", "artifact", "2", "--json"]).await;
            assert_eq!(primary["primary_generation"], 1, "{primary}");
            assert_eq!(
                primary["primary_verification"]["verification"]["verification_state"],
                "succeeded"
            );
        })
    });
}

#[test]
fn resync_one_failed_or_all_in_batches() {
    lanes(|lane: Lane| {
        Box::pin(async move {
            let Some(s) = seeded(lane).await else { return };
            let store = s.secondary.registry_store();
            let out = run(&s.secondary, &["resync", "artifact", "--id", "1"])
                .await
                .unwrap();
            assert!(out.contains("artifact 1: pending"), "{out}");
            assert_eq!(
                store.get("artifact", 1).await.unwrap().unwrap().state,
                SyncState::Pending
            );

            let out = run(&s.secondary, &["resync", "artifact", "--failed"])
                .await
                .unwrap();
            assert!(out.contains("1 rows sent back to pending"), "{out}");
            let counts = store.counts("artifact").await.unwrap();
            assert_eq!((counts.pending, counts.synced, counts.failed), (2, 3, 0));

            let out = run(
                &s.secondary,
                &[
                    "resync",
                    "artifact",
                    "--all",
                    "--batch-size",
                    "2",
                    "--pause-ms",
                    "0",
                ],
            )
            .await
            .unwrap();
            // Plain progress lines (not a terminal), one per batch of two.
            assert!(out.contains("resync artifact (all): 2/5"), "{out}");
            assert!(out.contains("resync artifact (all): 5/5"), "{out}");
            assert!(out.contains("5 rows sent back to pending"), "{out}");
            let counts = store.counts("artifact").await.unwrap();
            assert_eq!((counts.pending, counts.synced, counts.verified), (5, 0, 0));

            let e = run(&s.primary, &["resync", "artifact", "--all"])
                .await
                .unwrap_err();
            assert!(matches!(e, CliError::NotApplicable(_)), "{e}");
        })
    });
}

#[test]
fn reverify_on_the_secondary_and_on_the_primary() {
    lanes(|lane: Lane| {
        Box::pin(async move {
            let Some(s) = seeded(lane).await else { return };
            let store = s.secondary.registry_store();
            let out = run(&s.secondary, &["reverify", "artifact", "--failed"])
                .await
                .unwrap();
            assert!(out.contains("0 rows sent back"), "{out}");
            let out = run(&s.secondary, &["reverify", "artifact", "--id", "1"])
                .await
                .unwrap();
            assert!(out.contains("artifact 1: verification pending"), "{out}");
            let out = run(&s.secondary, &["reverify", "artifact", "--id", "5"])
                .await
                .unwrap();
            assert!(out.contains("not re-verified"), "{out}");
            let out = run(
                &s.secondary,
                &["reverify", "artifact", "--all", "--batch-size", "3"],
            )
            .await
            .unwrap();
            // Row 1 was pending already: three rows changed of the four synced.
            assert!(
                out.contains("3 rows sent back to verification pending"),
                "{out}"
            );
            let counts = store.counts("artifact").await.unwrap();
            assert_eq!((counts.synced, counts.verified), (4, 0));

            let out = run(&s.primary, &["reverify", "artifact", "--all"])
                .await
                .unwrap();
            assert!(out.contains("5 checksums sent back to pending"), "{out}");
            let counts = s
                .primary
                .verification_store()
                .counts("artifact")
                .await
                .unwrap();
            assert_eq!((counts.succeeded, counts.failed), (0, 0));
        })
    });
}

#[test]
fn dataloss_lists_records_behind_the_primary() {
    lanes(|lane: Lane| {
        Box::pin(async move {
            let Some(s) = seeded(lane).await else { return };
            let out = run(&s.secondary, &["dataloss"]).await.unwrap();
            // Record 5 never synced: behind by its one generation.
            assert!(out.starts_with("1 records behind"), "{out}");
            publish(&s.primary, 2, true).await; // generation 2, not consumed yet
            let report = json(&s.secondary, &["dataloss", "artifact", "--json"]).await;
            let behind = &report[0]["behind"];
            assert_eq!(behind.as_array().unwrap().len(), 2, "{report}");
            assert_eq!(behind[0]["model_id"], 2);
            assert_eq!(behind[0]["secondary_generation"], 1);
            assert_eq!(behind[0]["primary_generation"], 2);
            assert_eq!(behind[0]["behind_by"], 1);
            assert_eq!(behind[1]["model_id"], 5);
            assert!(behind[1]["secondary_generation"].is_null());
            let e = run(&s.primary, &["dataloss"]).await.unwrap_err();
            assert!(matches!(e, CliError::NotApplicable(_)), "{e}");
        })
    });
}

#[test]
fn events_are_read_on_both_sites_and_followed() {
    lanes(|lane: Lane| {
        Box::pin(async move {
            let Some(s) = seeded(lane).await else { return };
            let last = s
                .primary
                .event_log()
                .last_event_id()
                .await
                .unwrap()
                .unwrap();
            for site in [&s.primary, &s.secondary] {
                let out = run(site, &["events", "--after", "0", "--limit", "3"])
                    .await
                    .unwrap();
                let lines: Vec<&str> = out.lines().collect();
                assert_eq!(lines.len(), 3, "{out}");
                assert!(lines[0].trim_start().starts_with("1 "), "{out}");
                assert!(
                    lines[0].contains("artifact") && lines[0].contains("created"),
                    "{out}"
                );
                let tail = run(site, &["events", "--limit", "2"]).await.unwrap();
                let ids: Vec<i64> = tail
                    .lines()
                    .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
                    .collect();
                assert_eq!(ids, [last - 1, last], "{tail}");
            }

            // --follow keeps polling: an event published meanwhile shows up.
            let command = <Cli as cli::clap::Parser>::try_parse_from([
                "replicable",
                "events",
                "--follow",
                "--poll-ms",
                "20",
                "--json",
            ])
            .unwrap()
            .command;
            let mut out = Vec::new();
            let known = replicables();
            let follow = cli::execute(&command, &s.secondary, &known, &mut out);
            let later = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                publish(&s.primary, 9, true).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            tokio::select! {
                r = follow => panic!("--follow ended: {r:?}"),
                () = later => {}
            }
            let text = String::from_utf8(out).unwrap();
            let newest: serde_json::Value =
                serde_json::from_str(text.lines().last().unwrap()).unwrap();
            assert_eq!(newest["payload"]["model_id"], 9, "{text}");
        })
    });
}

#[test]
fn pause_and_resume_the_site_and_one_replicable() {
    lanes(|lane: Lane| {
        Box::pin(async move {
            let Some(s) = seeded(lane).await else { return };
            let store = s.secondary.registry_store();
            run(&s.secondary, &["pause"]).await.unwrap();
            assert!(!store.replication_enabled(SITE_SWITCH).await.unwrap());
            let status = run(&s.secondary, &["status"]).await.unwrap();
            assert!(status.contains("replication PAUSED"), "{status}");
            run(&s.secondary, &["pause", "artifact"]).await.unwrap();
            assert!(!store.replication_enabled("artifact").await.unwrap());
            let status = run(&s.secondary, &["status"]).await.unwrap();
            assert!(status.contains("artifact (paused)"), "{status}");
            run(&s.secondary, &["resume"]).await.unwrap();
            run(&s.secondary, &["resume", "artifact"]).await.unwrap();
            assert!(store.replication_enabled(SITE_SWITCH).await.unwrap());
            assert!(store.replication_enabled("artifact").await.unwrap());
            let e = run(&s.secondary, &["pause", "artifcat"]).await.unwrap_err();
            assert!(matches!(e, CliError::UnknownReplicable { .. }), "{e}");
            let e = run(&s.primary, &["pause"]).await.unwrap_err();
            assert!(matches!(e, CliError::NotApplicable(_)), "{e}");
        })
    });
}
