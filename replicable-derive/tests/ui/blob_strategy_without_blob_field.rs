use replicable_core::prelude::*;
use replicable_strategies::BlobStrategy;

#[derive(Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct PackageFile {
    #[replicable(id)]
    pub id: i64,
    pub file_path: String,
}

fn main() {}
