//! A small application replicated with the framework: the models of a package registry.

use replicable_core::prelude::*;
use replicable_strategies::{BlobStrategy, DatabaseStrategy, GitRepositoryStrategy};

/// A file of a package, stored as a blob under `file_path`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct PackageFile {
    /// The record's id.
    #[replicable(id)]
    pub id: i64,
    /// The object key of the file.
    #[replicable(blob)]
    pub file_path: String,
    /// The file's name as users see it.
    pub file_name: String,
}

impl PackageFile {
    /// The file with id `id`, stored under `packages/<id>/<name>`.
    pub fn new(id: i64, file_name: &str) -> Self {
        Self {
            id,
            file_path: format!("packages/{id}/{file_name}"),
            file_name: file_name.to_owned(),
        }
    }
}

/// A CI setting: the row itself is replicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Replicable)]
#[replicator(DatabaseStrategy)]
#[replicable(name = "ci_setting")]
pub struct CiSetting {
    /// The record's id.
    #[replicable(id)]
    pub id: i64,
    /// The setting's key.
    pub key: String,
    /// The setting's value.
    pub value: String,
}

/// A project whose git repository is replicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Replicable)]
#[replicator(GitRepositoryStrategy)]
pub struct Project {
    /// The record's id.
    #[replicable(id)]
    pub id: i64,
    /// The repository's path under the site's repository root.
    #[replicable(repository)]
    pub disk_path: String,
}

pub mod bench;
pub mod geo_demo;
pub mod own_database;
