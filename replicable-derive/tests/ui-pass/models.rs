use replicable_core::prelude::*;
use replicable_strategies::BlobStrategy;

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct PackageFile {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub file_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(replicable_strategies::BlobStrategy)]
#[replicable(name = "lfs_object", crate = "replicable_core")]
pub struct LfsObject {
    #[replicable(id)]
    pub oid: i32,
    #[replicable(blob)]
    pub path: Box<str>,
}

fn main() {
    use replicable_core::Replicable as _;
    assert_eq!(PackageFile::REPLICABLE_NAME, "package_file");
    assert_eq!(LfsObject::REPLICABLE_NAME, "lfs_object");
    let lfs = LfsObject { oid: 7, path: "lfs/7".into() };
    assert_eq!(lfs.replicable_id(), 7);
    let _typed: Option<LfsObjectRegistry> = None;
    let _typed: Option<PackageFileVerificationState> = None;
    let _alias: Option<PackageFileReplicator<'static>> = None;
}
