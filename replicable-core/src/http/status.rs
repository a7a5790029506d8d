//! Status reports of the secondaries (`POST v1/status`).

use axum::Json;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode};

use super::auth::authorize;
use super::{ApiError, State};
use crate::link::http::token::Scope;
use crate::link::http::wire::StatusReport;

/// `POST v1/status`: a secondary's report.
pub(crate) async fn report(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Json(report): Json<StatusReport>,
) -> Result<StatusCode, ApiError> {
    let secondary = authorize(&state, &headers, &Scope::Status)?;
    state.reports.record(&secondary, report);
    Ok(StatusCode::NO_CONTENT)
}

/// The last report of each secondary, as the primary received them.
#[derive(Debug, Clone, Default)]
pub struct SecondaryReports {
    inner: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Received>>>,
}

/// A report and when it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// When the primary received it.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The report.
    pub report: StatusReport,
}

/// A secondary as the primary sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SecondaryHealth {
    /// The secondary's name.
    pub name: String,
    /// Its last report.
    pub last: Received,
    /// How old the report is.
    pub age: std::time::Duration,
    /// Whether it reported within the threshold.
    pub healthy: bool,
}

impl SecondaryReports {
    pub(crate) fn record(&self, secondary: &str, report: StatusReport) {
        let received = Received {
            at: chrono::Utc::now(),
            report,
        };
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(secondary.to_owned(), received);
    }

    /// Every secondary that reported, with the age of its report at `now`; one silent for
    /// longer than `threshold` is unhealthy.
    pub fn health(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        threshold: std::time::Duration,
    ) -> Vec<SecondaryHealth> {
        let reports = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reports
            .iter()
            .map(|(name, last)| {
                let age = (now - last.at).to_std().unwrap_or_default();
                SecondaryHealth {
                    name: name.clone(),
                    last: last.clone(),
                    age,
                    healthy: age <= threshold,
                }
            })
            .collect()
    }

    /// The oldest cursor any secondary reported (event-log retention keeps what is after it).
    pub fn oldest_cursor(&self) -> Option<crate::event::EventId> {
        let reports = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reports.values().filter_map(|r| r.report.cursor).min()
    }
}
