//! `geo-demo` as the end-to-end tests run it: the same commands, with each resource transfer of
//! a secondary delayed by `E2E_LINK_DELAY_MS` milliseconds, so that a test can stop the process
//! while syncs are in flight; and, when `E2E_REDIRECT_BLOBS_TO` names a base URL, a primary
//! whose API answers blob requests with a redirect to `<base>/signed/<key>?signature=x` (a
//! test's server standing in for an object store's presigned URLs).

#![allow(dead_code)]

mod fault_link;

use std::sync::Arc;
use std::time::Duration;

use replicable_core::PrimaryLink;
use replicable_core::http::PrimaryApi;
use replicable_examples::geo_demo::{Hooks, main_with};

fn delayed(link: Arc<dyn PrimaryLink>) -> Arc<dyn PrimaryLink> {
    let delay = std::env::var("E2E_LINK_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Arc::new(fault_link::FaultLink::new(
        link,
        Duration::from_millis(delay),
    ))
}

fn redirecting(api: PrimaryApi) -> PrimaryApi {
    match std::env::var("E2E_REDIRECT_BLOBS_TO") {
        Ok(base) if !base.is_empty() => api.redirect_blobs(
            Arc::new(replicable_tests::PointAt(
                base.trim_end_matches('/').to_owned(),
            )),
            Duration::from_secs(60),
        ),
        _ => api,
    }
}

fn main() -> std::process::ExitCode {
    main_with(Hooks {
        wrap_link: delayed,
        configure_api: redirecting,
    })
}
