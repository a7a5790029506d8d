use replicable_core::prelude::*;
use replicable_strategies::BlobStrategy;

#[derive(Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub enum PackageFile {
    Small { id: i64 },
    Large { id: i64 },
}

fn main() {}
