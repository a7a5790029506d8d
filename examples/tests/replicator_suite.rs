//! The shared replicator suite, run for the example models.

use replicable_examples::{CiSetting, PackageFile};

replicable_core::replicator_test_suite!(PackageFile, |id| PackageFile::new(id, "pkg.tgz"));
replicable_core::replicator_test_suite!(ci_setting_suite: CiSetting, |id| CiSetting {
    id,
    key: format!("setting_{id}"),
    value: format!("value of {id}"),
});
replicable_core::replicator_test_suite!(project_suite: replicable_examples::Project, |id| {
    replicable_examples::Project {
        id,
        disk_path: format!("@hashed/{:02x}/{id}.git", id % 256),
    }
});
