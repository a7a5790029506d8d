//! The `Replicable` trait: what the derive implements for a model.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::registry::RegistryRecord;
use crate::replicator::Replicator;
use crate::site::Site;
use crate::strategy::Strategy;
use crate::verification::VerificationRecord;

/// How a resource is stored, and so which strategy replicates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// A file / object in the site's object store.
    Blob,
    /// A git repository under the site's repository root.
    Repository,
    /// The database row itself.
    Database,
}

impl DataType {
    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Blob => "blob",
            Self::Repository => "repository",
            Self::Database => "database",
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a record's resource lives. Events carry it so that a secondary can remove the local
/// copy after the record itself is gone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Resource {
    /// An object key, relative to the site's object store root.
    Blob {
        /// The object key.
        key: String,
    },
    /// A repository path, relative to the site's repository root.
    Repository {
        /// The repository path.
        path: String,
    },
    /// The record is its own resource.
    Record,
}

impl Resource {
    /// The data type of the resource.
    pub fn data_type(&self) -> DataType {
        match self {
            Self::Blob { .. } => DataType::Blob,
            Self::Repository { .. } => DataType::Repository,
            Self::Record => DataType::Database,
        }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Blob { key } => write!(f, "blob `{key}`"),
            Self::Repository { path } => write!(f, "repository `{path}`"),
            Self::Record => f.write_str("record"),
        }
    }
}

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

    /// The replicator of this record on a site.
    fn replicator<'a>(&'a self, site: &'a Site) -> Replicator<'a, Self> {
        Replicator::new(site, self)
    }
}
