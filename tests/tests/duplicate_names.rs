//! Two models that claim the same replicable name are reported by name and type, instead of one
//! silently shadowing the other. (Its own test binary: it changes the process-wide catalogue.)

use replicable_core::prelude::*;
use replicable_strategies::BlobStrategy;

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
#[replicable(name = "upload")]
pub struct AvatarUpload {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct Upload {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

#[test]
fn duplicate_replicable_names_are_an_error_naming_both_models() {
    let err = replicable_core::registered_replicables().unwrap_err();
    assert_eq!(err.name, "upload");
    let both = [err.first, err.second];
    assert!(both.iter().any(|t| t.ends_with("AvatarUpload")), "{err}");
    assert!(both.iter().any(|t| t.ends_with("::Upload")), "{err}");
    assert!(replicable_core::find_replicable("upload").is_err());
    // Explicit registration of an already registered model changes nothing.
    replicable_core::register::<Upload>();
    assert!(replicable_core::registered_replicables().is_err());
}
