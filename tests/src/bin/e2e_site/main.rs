//! `geo-demo` as the end-to-end tests run it: the same commands, with each resource transfer of
//! a secondary delayed by `E2E_LINK_DELAY_MS` milliseconds, so that a test can stop the process
//! while syncs are in flight.

#![allow(dead_code)]

mod fault_link;

use std::sync::Arc;
use std::time::Duration;

use replicable_core::PrimaryLink;
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

fn main() -> std::process::ExitCode {
    main_with(Hooks { wrap_link: delayed })
}
