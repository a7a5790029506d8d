//! Backfill: brings a secondary's registry in line with the primary's records, so that records
//! created before replication started, or whose events were lost, are synced, and registry rows
//! of records that are gone, or that left the selective sync, are removed with their data.

use serde::{Deserialize, Serialize};

use crate::descriptor::ReplicableDescriptor;
use crate::domain::error::{LinkError, StoreError};
use crate::site::Site;

/// How many ids one step compares.
pub const DEFAULT_RANGE_SIZE: usize = 10_000;

/// What a backfill pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillReport {
    /// Primary ids compared.
    pub primary_ids: usize,
    /// Pending registry rows created.
    pub created: u64,
    /// Registry rows of records that no longer exist, removed.
    pub removed: usize,
    /// Records outside this secondary's selective sync: not registered, or removed with their
    /// copy if they were.
    pub out_of_scope: usize,
    /// Synced copies whose verification waited for the primary's checksum and was turned on
    /// because the checksum now exists (its `checksum_succeeded` event was missed).
    pub verification_enabled: u64,
}

/// Backfill failed.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The tracking database failed.
    #[error("backfill of {replicable}: {source}")]
    Store {
        /// The replicable.
        replicable: &'static str,
        /// The failure.
        source: StoreError,
    },
    /// The primary could not be read.
    #[error("backfill of {replicable}: {source}")]
    Link {
        /// The replicable.
        replicable: &'static str,
        /// The failure.
        source: LinkError,
    },
    /// An orphan could not be removed.
    #[error("backfill of {replicable}: {reason}")]
    Remove {
        /// The replicable.
        replicable: &'static str,
        /// Why.
        reason: String,
    },
}

/// Walks the primary's ids of one replicable in steps of `range_size` and compares each step
/// with the registry: missing rows are created pending (in bulk), rows whose record is gone are
/// removed with their local copy.
pub async fn backfill(
    site: &Site,
    replicable: &ReplicableDescriptor,
    range_size: usize,
) -> Result<BackfillReport, BackfillError> {
    let name = replicable.name;
    let store_err = |source| BackfillError::Store {
        replicable: name,
        source,
    };
    let link = site.primary_link().ok_or_else(|| BackfillError::Link {
        replicable: name,
        source: LinkError::Refused {
            what: "backfill".into(),
            reason: format!("site `{}` is not a secondary", site.name()),
        },
    })?;
    let range_size = range_size.max(1);
    let mut report = BackfillReport::default();
    let mut from = i64::MIN;
    loop {
        let primary_ids = link
            .record_ids(name, from..i64::MAX, range_size)
            .await
            .map_err(|source| BackfillError::Link {
                replicable: name,
                source,
            })?;
        let mut primary_ids = primary_ids;
        let last = primary_ids.last().copied();
        // The step covers [from, last] when the primary had a full step, else everything left.
        let end = match last {
            Some(last) if primary_ids.len() == range_size => last.saturating_add(1),
            _ => i64::MAX,
        };
        let mut registry_ids = collect_registry_ids(site, name, from, end)
            .await
            .map_err(store_err)?;
        if end == i64::MAX {
            // The ranges are half-open: the one id they cannot hold, asked for by itself (the
            // registry first, as the steps read it before they look again below).
            if site
                .registry_store()
                .get(name, i64::MAX)
                .await
                .map_err(store_err)?
                .is_some()
            {
                registry_ids.push(i64::MAX);
            }
            let at_max =
                link.records(name, &[i64::MAX])
                    .await
                    .map_err(|source| BackfillError::Link {
                        replicable: name,
                        source,
                    })?;
            if !at_max.is_empty() {
                primary_ids.push(i64::MAX);
            }
        }
        let mut in_scope = primary_ids.clone();
        if site.selective_sync().is_restricted(name) {
            in_scope.clear();
            for &id in &primary_ids {
                let record = link
                    .record(name, id)
                    .await
                    .map_err(|source| BackfillError::Link {
                        replicable: name,
                        source,
                    })?;
                match record {
                    Some(r) if site.selective_sync().includes(name, &r.body) => in_scope.push(id),
                    Some(_) => report.out_of_scope += 1,
                    // Deleted since it was listed: treated as gone below.
                    None => {}
                }
            }
        }
        let missing: Vec<i64> = in_scope
            .iter()
            .copied()
            .filter(|id| registry_ids.binary_search(id).is_err())
            .collect();
        report.created += site
            .registry_store()
            .insert_pending(name, &missing, site.now())
            .await
            .map_err(store_err)?;
        // Rows whose record the listing did not have (or had out of scope). The listing was
        // read before the registry: a record created since, and maybe already synced through
        // its event, is in the registry but not in the listing, and is no orphan. So each
        // candidate is looked up on the primary again, now that the registry has been read,
        // and only a record the primary does not have (or has out of scope) is removed.
        let candidates: Vec<i64> = registry_ids
            .iter()
            .copied()
            .filter(|id| in_scope.binary_search(id).is_err())
            .collect();
        let current: std::collections::HashMap<i64, crate::storage::StoredRecord> =
            if candidates.is_empty() {
                std::collections::HashMap::new()
            } else {
                link.records(name, &candidates)
                    .await
                    .map_err(|source| BackfillError::Link {
                        replicable: name,
                        source,
                    })?
                    .into_iter()
                    .map(|record| (record.model_id, record))
                    .collect()
            };
        for id in candidates {
            let out_of_scope = match current.get(&id) {
                None => false,
                Some(record) if site.selective_sync().includes(name, &record.body) => continue,
                Some(_) => true,
            };
            replicable
                .remove_orphan(site, id)
                .await
                .map_err(|e| BackfillError::Remove {
                    replicable: name,
                    reason: e.to_string(),
                })?;
            match (out_of_scope, primary_ids.binary_search(&id).is_ok()) {
                (false, _) => report.removed += 1,
                // Counted with the listing above when it was listed.
                (true, true) => {}
                (true, false) => report.out_of_scope += 1,
            }
        }
        report.verification_enabled += enable_checksummed(site, link, name, from, end)
            .await
            .map_err(|e| match e {
                Waiting::Store(source) => store_err(source),
                Waiting::Link(source) => BackfillError::Link {
                    replicable: name,
                    source,
                },
            })?;
        report.primary_ids += primary_ids.len();
        if end == i64::MAX {
            return Ok(report);
        }
        from = end;
    }
}

enum Waiting {
    Store(StoreError),
    Link(LinkError),
}

/// Turns verification on for synced copies in `[from, end)` that wait for the primary's
/// checksum when the primary has one by now: the backfill half of "verification becomes
/// pending when the primary's checksum succeeds" (the `checksum_succeeded` event is the other).
async fn enable_checksummed(
    site: &Site,
    link: &dyn crate::link::PrimaryLink,
    name: &str,
    from: i64,
    end: i64,
) -> Result<u64, Waiting> {
    const PAGE: usize = 1_000;
    let mut enabled = 0;
    let mut start = from;
    loop {
        let waiting = site
            .registry_store()
            .waiting_for_primary_checksum(name, start..end, PAGE)
            .await
            .map_err(Waiting::Store)?;
        let mut checksummed = Vec::new();
        for &id in &waiting {
            let row = link.verification(name, id).await.map_err(Waiting::Link)?;
            if row.is_some_and(|row| row.succeeded_checksum().is_some()) {
                checksummed.push(id);
            }
        }
        if !checksummed.is_empty() {
            enabled += site
                .registry_store()
                .enable_verification(name, &checksummed)
                .await
                .map_err(Waiting::Store)?;
        }
        match waiting.last() {
            Some(&last) if waiting.len() == PAGE => start = last.saturating_add(1),
            _ => return Ok(enabled),
        }
    }
}

async fn collect_registry_ids(
    site: &Site,
    name: &str,
    from: i64,
    end: i64,
) -> Result<Vec<i64>, StoreError> {
    const PAGE: usize = 10_000;
    let mut ids = Vec::new();
    let mut start = from;
    loop {
        let page = site.registry_store().ids(name, start..end, PAGE).await?;
        let done = page.len() < PAGE;
        if let Some(&last) = page.last() {
            start = last.saturating_add(1);
        }
        ids.extend(page);
        if done || start >= end {
            return Ok(ids);
        }
    }
}

/// Primary verification backfill: every record in the primary's catalogue (or, for a replicable
/// with a record source, every row of the application's table) without a verification row gets
/// a pending one, `batch` rows per statement, until none is left (records
/// from before replication was turned on, or written behind the framework's back, are otherwise
/// never checksummed). Returns how many rows were created.
pub async fn backfill_primary_verification(
    site: &Site,
    replicable: &ReplicableDescriptor,
    batch: usize,
) -> Result<u64, StoreError> {
    if !replicable.verifiable || !site.is_primary() {
        return Ok(0);
    }
    let batch = batch.max(1);
    let mut created = 0;
    if site.record_source(replicable.name).is_some() {
        // Rows of the application's table: walk its ids (the catalogue join sees none of them).
        let mut from = i64::MIN;
        loop {
            let mut ids = site
                .records()
                .ids(replicable.name, from..i64::MAX, batch)
                .await?;
            let done = ids.len() < batch;
            if done
                && site
                    .records()
                    .get(replicable.name, i64::MAX)
                    .await?
                    .is_some()
            {
                // The one id a half-open range cannot hold.
                ids.push(i64::MAX);
            }
            created += site
                .verification_store()
                .insert_missing(replicable.name, &ids)
                .await?;
            match ids.last() {
                Some(&last) if !done && last < i64::MAX => from = last + 1,
                _ => return Ok(created),
            }
        }
    }
    loop {
        let n = site
            .verification_store()
            .backfill_missing(replicable.name, batch)
            .await?;
        created += n;
        if n < batch as u64 {
            return Ok(created);
        }
    }
}
