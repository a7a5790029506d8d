//! `geo-demo status` and `admin` only look at sites: a misspelt data directory is an error
//! naming the missing database, and nothing is created.

use std::process::Command;

#[test]
fn status_and_admin_refuse_a_missing_site_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("secondary-typo");
    let primary = dir.path().join("primary-typo");
    for args in [vec!["status", "--data"], vec!["admin", "--data"]] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_geo-demo"));
        command
            .args(&args)
            .arg(&site)
            .arg("--primary-data")
            .arg(&primary);
        if args[0] == "admin" {
            command.arg("status");
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("no database file at"), "{args:?}: {stderr}");
        assert!(
            !site.exists() && !primary.exists(),
            "{args:?} created a site"
        );
    }
}
