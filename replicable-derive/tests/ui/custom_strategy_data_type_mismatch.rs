use replicable_core::prelude::*;

// A user's own strategy, known to the derive only through its trait: the data type check runs
// at compile time through a constant assertion.
pub type MyFiles = replicable_strategies::BlobStrategy;

#[derive(Clone, Serialize, Deserialize, Replicable)]
#[replicator(MyFiles)]
pub struct PackageFile {
    #[replicable(id)]
    pub id: i64,
    pub file_path: String,
}

fn main() {}
