//! The shared replicator suite, run for the example models.

use replicable_examples::PackageFile;

replicable_core::replicator_test_suite!(PackageFile, |id| PackageFile::new(id, "pkg.tgz"));
