use replicable_core::prelude::*;
use replicable_strategies::BlobStrategy;

#[derive(Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
#[replicable(table = "files")]
pub struct PackageFile {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob, compressed)]
    pub file_path: String,
}

fn main() {}
