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

/// Generic code reaches the replicator through `ReplicatorExt` (from the prelude).
fn generic_replicator<'a, M: Replicable>(record: &'a M, site: &'a Site) -> Replicator<'a, M> {
    record.replicator(site)
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

    // The derive's inherent `replicator` and the prelude's `ReplicatorExt::replicator` do not
    // clash: the inherent method is chosen for a model, the trait one in generic code.
    let site = Site::primary("p").in_memory().build().unwrap();
    let file = PackageFile { id: 1, file_path: "a/b".into() };
    let inherent: PackageFileReplicator<'_> = file.replicator(&site);
    let by_ref = (&file).replicator(&site);
    let generic = generic_replicator(&file, &site);
    let by_trait = ReplicatorExt::replicator(&file, &site);
    assert_eq!(inherent.model_record().id, 1);
    assert_eq!(by_ref.model_record().id, generic.model_record().id);
    assert_eq!(by_trait.site().name(), "p");
}
