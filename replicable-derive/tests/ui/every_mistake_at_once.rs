use replicable_core::prelude::*;
use replicable_strategies::BlobStrategy;

// One struct, five mistakes: all of them are reported by one compiler run.
#[derive(Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
#[replicable(nmae = "typo")]
pub struct PackageFile {
    #[replicable(id)]
    pub id: i64,
    #[replicable(id)]
    pub second_id: i64,
    #[replicable(blobb)]
    pub file_path: String,
    #[replicable(repository, repository)]
    pub disk_path: String,
}

fn main() {}
