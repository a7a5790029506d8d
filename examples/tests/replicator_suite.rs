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

// The same checks with the secondary reading the primary over the HTTP link (a loopback server
// of the primary's API, scoped tokens, blobs streamed, repositories over git's smart HTTP).
replicable_core::replicator_test_suite!(package_file_over_http: PackageFile,
    |id| PackageFile::new(id, "pkg.tgz"),
    harness = replicable_core::testing::Harness::<PackageFile>::over_http);
replicable_core::replicator_test_suite!(ci_setting_over_http: CiSetting,
    |id| CiSetting {
        id,
        key: format!("setting_{id}"),
        value: format!("value of {id}"),
    },
    harness = replicable_core::testing::Harness::<CiSetting>::over_http);
replicable_core::replicator_test_suite!(project_over_http: replicable_examples::Project,
    |id| replicable_examples::Project {
        id,
        disk_path: format!("@hashed/{:02x}/{id}.git", id % 256),
    },
    harness = replicable_core::testing::Harness::<replicable_examples::Project>::over_http);
