//! Resources: where a record's replicated data lives, and its data type.

use serde::{Deserialize, Serialize};

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
