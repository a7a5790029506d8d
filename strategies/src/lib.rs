//! # replicable-strategies
//!
//! The built-in strategies of the replicable framework:
//! - [`BlobStrategy`]: files in an `object_store` (local directory, S3, GCS, Azure, memory),
//!   streamed from the primary and checked against the primary's SHA-256 before they become
//!   visible;
//! - [`GitRepositoryStrategy`]: bare git repositories, mirrored with the git CLI and
//!   checksummed over their refs;
//! - [`GitRepositoryStrategy`]: bare git repositories, mirrored with the git CLI and
//!   checksummed over their refs;
//! - [`DatabaseStrategy`]: records whose data is the row itself, copied with their generation
//!   and checksummed over their canonical JSON.
//!
//! ```ignore
//! #[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
//! #[replicator(BlobStrategy)]
//! pub struct PackageFile {
//!     #[replicable(id)]   pub id: i64,
//!     #[replicable(blob)] pub file_path: String,
//! }
//! ```

#![deny(missing_docs)]

pub mod blob;
mod checksum;
pub mod database;
pub mod git;

pub use blob::BlobStrategy;
pub use checksum::{StreamHasher, sha256_hex};
pub use database::DatabaseStrategy;
pub use git::GitRepositoryStrategy;
