//! The database strategy writing into a user's own table: a `RecordStore` the user plugs into
//! the secondary receives the copies, and never an older generation over a newer one.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use replicable_core::StoreError;
use replicable_core::prelude::*;
use replicable_core::storage::{RecordStore, StoredRecord};
use replicable_strategies::DatabaseStrategy;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Replicable)]
#[replicator(DatabaseStrategy)]
pub struct FeatureFlag {
    #[replicable(id)]
    pub id: i64,
    pub name: String,
    pub enabled: bool,
}

/// The user's table: decoded rows, as their application reads them.
#[derive(Debug, Default)]
struct FlagsTable {
    rows: Mutex<Vec<(FeatureFlag, i64)>>,
}

#[async_trait]
impl RecordStore for FlagsTable {
    async fn upsert(&self, _: &str, _: i64, _: &serde_json::Value) -> Result<i64, StoreError> {
        unreachable!("a secondary's table is written by put_unless_older only")
    }
    async fn put_unless_older(&self, _: &str, record: &StoredRecord) -> Result<bool, StoreError> {
        let flag: FeatureFlag = serde_json::from_value(record.body.clone()).unwrap();
        let mut rows = self.rows.lock().unwrap();
        match rows.iter_mut().find(|(f, _)| f.id == flag.id) {
            Some((_, generation)) if *generation > record.generation => Ok(false),
            Some(row) => {
                *row = (flag, record.generation);
                Ok(true)
            }
            None => {
                rows.push((flag, record.generation));
                Ok(true)
            }
        }
    }
    async fn get(&self, _: &str, id: i64) -> Result<Option<StoredRecord>, StoreError> {
        Ok(self
            .rows
            .lock()
            .unwrap()
            .iter()
            .find(|(f, _)| f.id == id)
            .map(|(f, g)| StoredRecord {
                model_id: id,
                generation: *g,
                body: serde_json::to_value(f).unwrap(),
            }))
    }
    async fn delete(&self, _: &str, id: i64) -> Result<bool, StoreError> {
        let mut rows = self.rows.lock().unwrap();
        let before = rows.len();
        rows.retain(|(f, _)| f.id != id);
        Ok(rows.len() != before)
    }
    async fn ids(&self, _: &str, range: Range<i64>, limit: usize) -> Result<Vec<i64>, StoreError> {
        let mut ids: Vec<i64> = self
            .rows
            .lock()
            .unwrap()
            .iter()
            .map(|(f, _)| f.id)
            .filter(|id| range.contains(id))
            .collect();
        ids.sort();
        ids.truncate(limit);
        Ok(ids)
    }
    async fn count(&self, _: &str) -> Result<u64, StoreError> {
        Ok(self.rows.lock().unwrap().len() as u64)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_land_in_the_user_s_own_table_and_verify() {
    let primary = Site::primary("primary")
        .in_memory()
        .build()
        .expect("a site");
    let table = Arc::new(FlagsTable::default());
    let secondary = Site::secondary(
        "secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .records(table.clone())
    .in_memory()
    .build()
    .expect("a site");
    let mut flag = FeatureFlag {
        id: 3,
        name: "new_ui".into(),
        enabled: false,
    };
    flag.replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    flag.enabled = true;
    flag.replicator(&primary)
        .publish_updated_event()
        .await
        .unwrap();
    flag.replicator(&primary).verify().await.unwrap();
    replicable_core::log_cursor::catch_up(&secondary, 50)
        .await
        .unwrap();

    assert_eq!(
        *table.rows.lock().unwrap(),
        vec![(flag.clone(), 2)],
        "the user's table holds generation 2"
    );
    let verified = flag.replicator(&secondary).verify().await.unwrap();
    assert!(
        matches!(verified, VerifyOutcome::Succeeded { .. }),
        "{verified:?}"
    );

    flag.replicator(&primary)
        .publish_deleted_event()
        .await
        .unwrap();
    replicable_core::log_cursor::catch_up(&secondary, 50)
        .await
        .unwrap();
    assert!(
        table.rows.lock().unwrap().is_empty(),
        "deleted from the user's table"
    );
}
