use replicable_core::prelude::*;
use replicable_strategies::BlobStrategy;

#[derive(Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct PackageFile {
    #[replicable(id)]
    pub id: String,
    #[replicable(blob)]
    pub file_path: String,
}

fn main() {}
