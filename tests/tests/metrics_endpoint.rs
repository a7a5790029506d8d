//! `/metrics` over real HTTP: the gauges match the stores after a refresh, a scrape serves the
//! last refreshed values (no query per scrape), and `record_sync` feeds the histograms.

mod cli_common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cli_common::{Lane, publish, replicables, seeded};
use replicable_core::metrics::{self, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    body.to_owned()
}

fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sample `{name}` in\n{text}"))
}

#[test]
fn gauges_match_the_stores_after_a_refresh() {
    replicable_core::testing::block_on(async {
        let s = seeded(Lane::Sqlite).await.unwrap();
        let secondary = Arc::new(Metrics::new(s.secondary.role(), &replicables()));
        let primary = Arc::new(Metrics::new(s.primary.role(), &replicables()));
        let server = metrics::serve("127.0.0.1:0".parse().unwrap(), secondary.clone())
            .await
            .unwrap();
        let primary_server = metrics::serve("127.0.0.1:0".parse().unwrap(), primary.clone())
            .await
            .unwrap();

        // Before the first refresh every gauge is zero.
        let text = scrape(server.local_addr()).await;
        assert_eq!(value(&text, "replicable_artifacts_registry"), 0.0);

        secondary.refresh(&s.secondary).await.unwrap();
        primary.refresh(&s.primary).await.unwrap();
        let counts = s
            .secondary
            .registry_store()
            .counts("artifact")
            .await
            .unwrap();
        let text = scrape(server.local_addr()).await;
        for (name, expected) in [
            ("replicable_artifacts_registry", counts.registry),
            ("replicable_artifacts_synced", counts.synced),
            ("replicable_artifacts_failed", counts.failed),
            ("replicable_artifacts_pending", counts.pending),
            ("replicable_artifacts_verified", counts.verified),
            (
                "replicable_artifacts_verification_failed",
                counts.verification_failed,
            ),
            ("replicable_artifacts_queue_depth", 0),
        ] {
            assert_eq!(value(&text, name), expected as f64, "{name}");
        }
        assert_eq!((counts.registry, counts.synced, counts.failed), (5, 4, 1));
        let last = s
            .primary
            .event_log()
            .last_event_id()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(value(&text, "replicable_last_event_id"), last as f64);
        assert_eq!(value(&text, "replicable_cursor_event_id"), last as f64);
        let now = Utc::now().timestamp() as f64;
        let at = value(&text, "replicable_last_event_timestamp_seconds");
        assert!((now - at).abs() < 120.0, "{at} vs {now}");
        assert!(value(&text, "replicable_cursor_event_timestamp_seconds") > 0.0);

        let text = scrape(primary_server.local_addr()).await;
        assert_eq!(value(&text, "replicable_artifacts_count"), 5.0);
        assert_eq!(value(&text, "replicable_artifacts_checksummed"), 4.0);
        assert_eq!(value(&text, "replicable_artifacts_checksum_failed"), 1.0);
        assert!(!text.contains("replicable_artifacts_registry"), "{text}");

        // A scrape serves the last refreshed values: a new row shows only after a refresh.
        publish(&s.primary, 6, true).await;
        s.secondary
            .registry_store()
            .mark_pending("artifact", 6, Utc::now())
            .await
            .unwrap();
        let text = scrape(server.local_addr()).await;
        assert_eq!(value(&text, "replicable_artifacts_registry"), 5.0);
        // The periodic refresh picks it up.
        let refresh = metrics::spawn_refresh(
            secondary.clone(),
            s.secondary.clone(),
            Duration::from_millis(50),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = scrape(server.local_addr()).await;
        assert_eq!(value(&text, "replicable_artifacts_registry"), 6.0);
        assert_eq!(value(&text, "replicable_artifacts_pending"), 1.0);
        assert_eq!(value(&text, "replicable_artifacts_queue_depth"), 1.0);
        assert!(
            value(&text, "replicable_cursor_events_behind") >= 1.0,
            "{text}"
        );
        refresh.abort();

        // Histograms, recorded without a handle.
        let published = Utc::now() - chrono::Duration::seconds(3);
        let started = published + chrono::Duration::seconds(1);
        let finished = started + chrono::Duration::seconds(2);
        metrics::record_sync("artifact", started, finished, Some(published));
        let text = scrape(server.local_addr()).await;
        let label = "{replicable=\"artifact\"}";
        assert_eq!(
            value(
                &text,
                &format!("replicable_sync_duration_seconds_sum{label}")
            ),
            2.0
        );
        assert_eq!(
            value(&text, &format!("replicable_sync_delay_seconds_sum{label}")),
            1.0
        );
        assert_eq!(
            value(
                &text,
                &format!("replicable_replication_lag_seconds_sum{label}")
            ),
            3.0
        );
        assert_eq!(
            value(
                &text,
                &format!("replicable_replication_lag_seconds_count{label}")
            ),
            1.0
        );

        server.shutdown().await.unwrap();
        primary_server.shutdown().await.unwrap();
    });
}

/// A primary's metrics carry a series per secondary that reported its status: the report's
/// age, its health against the silence threshold, and its cursor.
#[test]
fn a_primary_exports_the_health_of_its_secondaries() {
    replicable_core::testing::block_on(async {
        use replicable_core::PrimaryLink;
        let s = seeded(Lane::Sqlite).await.unwrap();
        let link = replicable_core::InProcessPrimary::new(s.primary.clone());
        let report = replicable_tests::status_report(7);
        link.report_status("eu-west", &report).await.unwrap();
        let fresh = Metrics::new(s.primary.role(), &replicables());
        fresh.refresh(&s.primary).await.unwrap();
        let text = fresh.encode();
        let label = "{secondary=\"eu-west\"}";
        assert_eq!(
            value(&text, &format!("replicable_secondary_healthy{label}")),
            1.0,
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                &format!("replicable_secondary_cursor_event_id{label}")
            ),
            7.0
        );
        assert!(
            value(
                &text,
                &format!("replicable_secondary_report_age_seconds{label}")
            ) < 60.0
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let strict =
            Metrics::new(s.primary.role(), &replicables()).silent_after(Duration::from_secs(1));
        strict.refresh(&s.primary).await.unwrap();
        let text = strict.encode();
        assert_eq!(
            value(&text, &format!("replicable_secondary_healthy{label}")),
            0.0,
            "{text}"
        );
        assert!(
            value(
                &text,
                &format!("replicable_secondary_report_age_seconds{label}")
            ) >= 1.0,
            "{text}"
        );
        // A secondary's metrics have no such series.
        let secondary = Metrics::new(s.secondary.role(), &replicables());
        secondary.refresh(&s.secondary).await.unwrap();
        assert!(!secondary.encode().contains("replicable_secondary_"));
    });
}
