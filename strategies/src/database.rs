//! The database strategy: the record itself is the resource.
//!
//! A completed sync stores the primary's record (serialized with serde, with its generation) in
//! the secondary's record store: the framework's catalogue by default, or, for a replicable
//! given a [`RecordSource`](replicable_core::storage::RecordSource) on the secondary's site
//! builder (`SiteBuilder::record_source`), a row of the application's own table
//! (`replicable_core::storage::sql::SqlTable`: the columns are the record's serde
//! fields, the generation is in a framework side table). A copy is never replaced by an older
//! generation, and removing it deletes the row. The checksum is the SHA-256 of the record's canonical JSON (object keys sorted,
//! no insignificant white space), equal on both sides for equal records.

use async_trait::async_trait;
use replicable_core::storage::StoredRecord;
use replicable_core::{
    DataType, Resource, ResourceError, ResourceTarget, Strategy, StrategyContext, SyncFailure,
    SyncRequest,
};

/// Replicates records whose data is the row itself (settings, metadata, ...).
#[derive(Debug, Default, Clone, Copy)]
pub struct DatabaseStrategy;

/// The canonical JSON of a value: object keys sorted at every level, compact.
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn write(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(key.clone()).to_string());
                    out.push(':');
                    write(&map[key], out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// The checksum of a record: SHA-256 of its canonical JSON.
pub fn record_checksum(body: &serde_json::Value) -> String {
    crate::sha256_hex(canonical_json(body).as_bytes())
}

fn not_a_record(target: &ResourceTarget<'_>) -> Result<(), ResourceError> {
    match target.resource {
        Resource::Record => Ok(()),
        other => Err(ResourceError::Refused {
            resource: other.to_string(),
            reason: "DatabaseStrategy replicates records only".into(),
        }),
    }
}

fn store_error(target: &ResourceTarget<'_>, e: impl std::fmt::Display) -> ResourceError {
    ResourceError::Io {
        resource: format!("{} {}", target.replicable_name, target.model_id),
        reason: e.to_string(),
    }
}

#[async_trait]
impl Strategy for DatabaseStrategy {
    const NAME: &'static str = "DatabaseStrategy";
    const DATA_TYPE: DataType = DataType::Database;
    const MUTABLE: bool = true;

    fn validate(resource: &Resource) -> Result<(), ResourceError> {
        match resource {
            Resource::Record => Ok(()),
            other => Err(ResourceError::Refused {
                resource: other.to_string(),
                reason: "DatabaseStrategy replicates records only".into(),
            }),
        }
    }

    async fn sync(&self, request: SyncRequest<'_>) -> Result<(), SyncFailure> {
        // The record is the resource, and every completed sync stores the primary's record in
        // the secondary's record store (the site's table or the user's): nothing else to copy.
        not_a_record(&request.target()).map_err(|e| SyncFailure::new(e.to_string()))
    }

    async fn remove(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        not_a_record(target)?;
        context
            .records()
            .delete(target.replicable_name, target.model_id)
            .await
            .map(|_| ())
            .map_err(|e| store_error(target, e))
    }

    async fn checksum(
        &self,
        _context: &StrategyContext,
        target: &ResourceTarget<'_>,
        record: Option<&StoredRecord>,
    ) -> Result<String, ResourceError> {
        not_a_record(target)?;
        record
            .map(|r| record_checksum(&r.body))
            .ok_or_else(|| ResourceError::Missing {
                resource: format!("{} {}", target.replicable_name, target.model_id),
            })
    }

    async fn create_fixture(
        &self,
        _context: &StrategyContext,
        target: &ResourceTarget<'_>,
        record: &serde_json::Value,
        _seed: u64,
    ) -> Result<String, ResourceError> {
        // The record is the resource: publishing it creates it. Its checksum is computed here
        // from a sorted re-encoding, independently of `checksum`'s input.
        not_a_record(target)?;
        let sorted: std::collections::BTreeMap<String, serde_json::Value> = match record {
            serde_json::Value::Object(map) => map.clone().into_iter().collect(),
            _ => return Ok(record_checksum(record)),
        };
        Ok(crate::sha256_hex(
            serde_json::to_string(&sorted)
                .map_err(|e| store_error(target, e))?
                .as_bytes(),
        ))
    }

    async fn corrupt(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        not_a_record(target)?;
        let records = context.records();
        let mut copy = records
            .get(target.replicable_name, target.model_id)
            .await
            .map_err(|e| store_error(target, e))?
            .ok_or_else(|| ResourceError::Missing {
                resource: format!("{} {}", target.replicable_name, target.model_id),
            })?;
        if let serde_json::Value::Object(map) = &mut copy.body {
            // A field the record has (a copy kept in a table has no column for a new one): the
            // first text field gets a suffix; a record without one gets a field added.
            let text = map
                .iter_mut()
                .filter(|(_, v)| v.is_string())
                .min_by(|a, b| a.0.cmp(b.0))
                .map(|(_, v)| v);
            match text {
                Some(serde_json::Value::String(value)) => value.push_str(" (tampered)"),
                _ => {
                    map.insert("tampered".into(), serde_json::Value::Bool(true));
                }
            }
        }
        records
            .put_unless_older(target.replicable_name, &copy)
            .await
            .map(|_| ())
            .map_err(|e| store_error(target, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = serde_json::json!({"b": 1, "a": {"z": [1, {"y": 2, "x": 3}], "c": "é\""}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":"é\"","z":[1,{"x":3,"y":2}]},"b":1}"#
        );
        let reordered: serde_json::Value =
            serde_json::from_str(r#"{"a":{"z":[1,{"x":3,"y":2}],"c":"é\""},"b":1}"#).unwrap();
        assert_eq!(record_checksum(&a), record_checksum(&reordered));
        assert_ne!(
            record_checksum(&a),
            record_checksum(&serde_json::json!({"b": 2}))
        );
    }
}
