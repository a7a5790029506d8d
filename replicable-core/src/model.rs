//! The `Replicable` trait: what the derive implements for a model.

use serde::{Serialize, de::DeserializeOwned};

use crate::domain::registry::RegistryRecord;
use crate::domain::selective_sync::SelectiveSync;
use crate::domain::verification::VerificationRecord;
use crate::strategy::Strategy;

pub use crate::domain::resource::{DataType, Resource};

/// A model whose resource is replicated from the primary to secondaries.
///
/// Implement it with `#[derive(Replicable)]`:
///
/// ```ignore
/// #[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
/// #[replicator(BlobStrategy)]
/// pub struct PackageFile {
///     #[replicable(id)]   pub id: i64,
///     #[replicable(blob)] pub file_path: String,
/// }
/// ```
pub trait Replicable: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The replicable's name: snake case, unique in the binary, used for registry tables and to
    /// dispatch events (`PackageFile` -> `package_file`).
    const REPLICABLE_NAME: &'static str;

    /// The strategy that replicates the resource.
    type Strategy: Strategy;

    /// The typed registry row (`<Model>Registry`).
    type Registry: From<RegistryRecord> + std::fmt::Debug + Send;

    /// The typed verification row of the primary (`<Model>VerificationState`).
    type VerificationState: From<VerificationRecord> + std::fmt::Debug + Send;

    /// The record's id.
    fn replicable_id(&self) -> i64;

    /// Where the record's resource lives.
    fn resource(&self) -> Resource;
}

impl SelectiveSync {
    /// Replicate only the records of `M` for which `include` is true. A record that does not
    /// decode as `M` is out of scope.
    pub fn only<M: Replicable>(self, include: impl Fn(&M) -> bool + Send + Sync + 'static) -> Self {
        self.with_rule(M::REPLICABLE_NAME, move |body| {
            serde_json::from_value::<M>(body.clone()).is_ok_and(|record| include(&record))
        })
    }
}
