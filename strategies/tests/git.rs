//! The git repository strategy on real repositories made by the test: commits, branches, tags,
//! a force-push that rewrites history, a deleted branch, a moved HEAD; after each sync the
//! secondary's refs equal the primary's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use replicable_core::prelude::*;
use replicable_core::site::Timeouts;
use replicable_core::storage::StoredRecord;
use replicable_core::{
    AlwaysCurrent, PrimaryLink, ReplicatorError, Resource, ResourceError, ResourceTarget, Strategy,
    SyncFailure, SyncGuard, SyncRequest,
};
use replicable_strategies::GitRepositoryStrategy;
use replicable_strategies::git::{EMPTY_CHECKSUM, checksummed_refs, git, repository_checksum};

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(GitRepositoryStrategy)]
pub struct Repo {
    #[replicable(id)]
    pub id: i64,
    #[replicable(repository)]
    pub path: String,
}

const T: Duration = Duration::from_secs(60);

struct Sites {
    _dir: tempfile::TempDir,
    primary: Site,
    secondary: Site,
    work: PathBuf,
}

fn sites(timeouts: Timeouts) -> Sites {
    let dir = tempfile::tempdir().unwrap();
    let primary = Site::primary("primary")
        .repository_root(dir.path().join("primary"))
        .in_memory()
        .build()
        .expect("a site");
    let secondary = Site::secondary(
        "secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .repository_root(dir.path().join("secondary"))
    .timeouts(timeouts)
    .in_memory()
    .build()
    .expect("a site");
    let work = dir.path().join("work");
    Sites {
        primary,
        secondary,
        work,
        _dir: dir,
    }
}

fn repo(path: &str) -> Repo {
    Repo {
        id: 1,
        path: path.into(),
    }
}

async fn sh(dir: &Path, args: &[&str]) -> String {
    let identity = [
        ("GIT_AUTHOR_NAME", "dev"),
        ("GIT_AUTHOR_EMAIL", "dev@example.invalid"),
        ("GIT_COMMITTER_NAME", "dev"),
        ("GIT_COMMITTER_EMAIL", "dev@example.invalid"),
    ];
    git(Some(dir), args, None, &identity, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn commit(work: &Path, file: &str, text: &str) {
    tokio::fs::write(work.join(file), text).await.unwrap();
    sh(work, &["add", file]).await;
    sh(work, &["commit", "--quiet", "-m", text]).await;
}

/// A bare repository on the primary, with a working clone to push from.
async fn primary_repository(s: &Sites, path: &str) -> PathBuf {
    let bare = s.primary.repository_root().unwrap().join(path);
    tokio::fs::create_dir_all(&bare).await.unwrap();
    sh(
        &bare,
        &["init", "--bare", "--quiet", "--initial-branch=main"],
    )
    .await;
    tokio::fs::create_dir_all(&s.work).await.unwrap();
    sh(&s.work, &["init", "--quiet", "--initial-branch=main"]).await;
    sh(
        &s.work,
        &["remote", "add", "origin", bare.to_str().unwrap()],
    )
    .await;
    bare
}

async fn assert_same_refs(s: &Sites, path: &str) {
    let primary = checksummed_refs(&s.primary.repository_root().unwrap().join(path), T)
        .await
        .unwrap();
    let secondary = checksummed_refs(&s.secondary.repository_root().unwrap().join(path), T)
        .await
        .unwrap();
    assert_eq!(
        secondary, primary,
        "the secondary's refs must equal the primary's"
    );
    assert!(!primary.is_empty());
    let all = sh(
        &s.secondary.repository_root().unwrap().join(path),
        &["for-each-ref", "--format=%(refname)"],
    )
    .await;
    assert!(
        !all.contains("replicable-staging"),
        "no staging refs are left: {all}"
    );
}

async fn publish_and_sync(s: &Sites, record: &Repo, first: bool) {
    let r = record.replicator(&s.primary);
    if first {
        r.publish_created_event().await.unwrap();
    } else {
        r.publish_updated_event().await.unwrap();
    }
    r.verify().await.unwrap();
    let report = replicable_core::log_cursor::catch_up(&s.secondary, 50)
        .await
        .unwrap();
    assert_eq!(report.skipped, 0);
    let row = record
        .replicator(&s.secondary)
        .registry()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, SyncState::Synced, "{:?}", row.last_sync_failure);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_follow_the_primary_through_commits_branches_tags_force_pushes_and_deletions() {
    let s = sites(Timeouts::default());
    let path = "group/app.git";
    let record = repo(path);
    primary_repository(&s, path).await;
    let w = &s.work;

    // Commits, a branch and an annotated tag.
    commit(w, "a.txt", "one").await;
    commit(w, "a.txt", "two").await;
    sh(w, &["tag", "-a", "v1.0", "-m", "release 1.0"]).await;
    sh(w, &["checkout", "--quiet", "-b", "feature"]).await;
    commit(w, "b.txt", "feature work").await;
    sh(w, &["checkout", "--quiet", "main"]).await;
    sh(
        w,
        &["push", "--quiet", "origin", "main", "feature", "--tags"],
    )
    .await;
    publish_and_sync(&s, &record, true).await;
    assert_same_refs(&s, path).await;

    // More commits and a second branch.
    commit(w, "a.txt", "three").await;
    sh(w, &["branch", "release"]).await;
    sh(w, &["push", "--quiet", "origin", "main", "release"]).await;
    publish_and_sync(&s, &record, false).await;
    assert_same_refs(&s, path).await;

    // A force-push that rewrites main's history.
    let before = sh(w, &["rev-parse", "main"]).await;
    sh(w, &["reset", "--quiet", "--hard", "HEAD~2"]).await;
    commit(w, "c.txt", "rewritten").await;
    sh(w, &["push", "--quiet", "--force", "origin", "main"]).await;
    publish_and_sync(&s, &record, false).await;
    assert_same_refs(&s, path).await;
    let secondary_dir = s.secondary.repository_root().unwrap().join(path);
    let main = sh(&secondary_dir, &["rev-parse", "main"]).await;
    assert_ne!(main, before, "the rewritten main replaced the old one");

    // A deleted branch and tag disappear from the secondary.
    sh(w, &["push", "--quiet", "origin", "--delete", "feature"]).await;
    sh(w, &["push", "--quiet", "origin", "--delete", "v1.0"]).await;
    publish_and_sync(&s, &record, false).await;
    assert_same_refs(&s, path).await;
    let branches = sh(&secondary_dir, &["for-each-ref", "--format=%(refname)"]).await;
    assert!(
        !branches.contains("feature") && !branches.contains("v1.0"),
        "{branches}"
    );

    // HEAD moves to another branch on the primary.
    let bare = s.primary.repository_root().unwrap().join(path);
    sh(&bare, &["symbolic-ref", "HEAD", "refs/heads/release"]).await;
    publish_and_sync(&s, &record, false).await;
    assert_same_refs(&s, path).await;
    assert_eq!(
        sh(&secondary_dir, &["symbolic-ref", "HEAD"]).await.trim(),
        "refs/heads/release"
    );

    // HEAD moves to a new branch at the same commit as another: the fetched refs alone
    // cannot tell which of the two it names. (A copy whose checksum already equals the
    // primary's is not fetched again, so HEAD moving between two branches at one commit,
    // with nothing else changed, is not followed: the checksum cannot tell them apart.)
    sh(w, &["push", "--quiet", "origin", "release:refs/heads/next"]).await;
    sh(&bare, &["symbolic-ref", "HEAD", "refs/heads/next"]).await;
    publish_and_sync(&s, &record, false).await;
    assert_same_refs(&s, path).await;
    assert_eq!(
        sh(&secondary_dir, &["symbolic-ref", "HEAD"]).await.trim(),
        "refs/heads/next"
    );

    // The secondary verifies against the primary's checksum.
    let outcome = record.replicator(&s.secondary).verify().await.unwrap();
    assert!(
        matches!(outcome, VerifyOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_that_becomes_a_directory_of_branches_syncs() {
    let s = sites(Timeouts::default());
    let path = "group/rename.git";
    let record = repo(path);
    primary_repository(&s, path).await;
    let w = &s.work;
    commit(w, "a.txt", "one").await;
    sh(w, &["branch", "foo"]).await;
    sh(w, &["push", "--quiet", "origin", "main", "foo"]).await;
    publish_and_sync(&s, &record, true).await;
    assert_same_refs(&s, path).await;
    // `foo` goes away and `foo/bar` appears: a file and a directory of the same ref path.
    sh(w, &["push", "--quiet", "origin", "--delete", "foo"]).await;
    sh(w, &["branch", "-D", "foo"]).await;
    sh(w, &["branch", "foo/bar"]).await;
    sh(w, &["push", "--quiet", "origin", "foo/bar"]).await;
    publish_and_sync(&s, &record, false).await;
    assert_same_refs(&s, path).await;
    // And back again.
    sh(w, &["push", "--quiet", "origin", "--delete", "foo/bar"]).await;
    sh(w, &["branch", "-D", "foo/bar"]).await;
    sh(w, &["branch", "foo"]).await;
    sh(w, &["push", "--quiet", "origin", "foo"]).await;
    publish_and_sync(&s, &record, false).await;
    assert_same_refs(&s, path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_changed_behind_the_framework_s_back_is_detected_and_repaired() {
    let s = sites(Timeouts::default());
    let path = "group/tampered.git";
    let record = repo(path);
    primary_repository(&s, path).await;
    commit(&s.work, "a.txt", "one").await;
    sh(&s.work, &["push", "--quiet", "origin", "main"]).await;
    publish_and_sync(&s, &record, true).await;
    let secondary_dir = s.secondary.repository_root().unwrap().join(path);
    // Someone moves main on the secondary to a commit of their own.
    let tree = sh(&secondary_dir, &["mktree"]).await;
    let rogue = sh(&secondary_dir, &["commit-tree", tree.trim(), "-m", "rogue"]).await;
    sh(
        &secondary_dir,
        &["update-ref", "refs/heads/main", rogue.trim()],
    )
    .await;

    let replicator = record.replicator(&s.secondary);
    let outcome = replicator.verify().await.unwrap();
    assert!(
        matches!(outcome, VerifyOutcome::Mismatch { .. }),
        "{outcome:?}"
    );
    let row = replicator.registry().await.unwrap().unwrap();
    assert_eq!(row.state, SyncState::Failed);
    assert!(row.checksum_mismatch);
    // The resync repairs it.
    let synced = replicator.sync().await.unwrap();
    assert!(matches!(synced, SyncOutcome::Synced { .. }), "{synced:?}");
    assert_same_refs(&s, path).await;
    assert!(matches!(
        replicator.verify().await.unwrap(),
        VerifyOutcome::Succeeded { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_repository_has_the_zero_checksum_and_a_missing_one_is_an_error() {
    let s = sites(Timeouts::default());
    let path = "group/empty.git";
    let bare = primary_repository(&s, path).await;
    assert_eq!(repository_checksum(&bare, T).await.unwrap(), EMPTY_CHECKSUM);
    let missing = s.primary.repository_root().unwrap().join("nope.git");
    assert!(repository_checksum(&missing, T).await.is_err());
    let not_a_repo = s.primary.repository_root().unwrap().join("plain");
    tokio::fs::create_dir_all(&not_a_repo).await.unwrap();
    let err = repository_checksum(&not_a_repo, T).await.unwrap_err();
    assert!(err.to_string().contains("not a git repository"), "{err}");
    // Nor is a directory inside another repository's working tree that repository.
    let inside = s.work.join("sub");
    tokio::fs::create_dir_all(&inside).await.unwrap();
    let err = repository_checksum(&inside, T).await.unwrap_err();
    assert!(err.to_string().contains("not a git repository"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_missing_on_the_primary_fails_as_missing() {
    let s = sites(Timeouts::default());
    let record = repo("group/ghost.git");
    record
        .replicator(&s.primary)
        .publish_created_event()
        .await
        .unwrap();
    let outcome = record.replicator(&s.secondary).sync().await.unwrap();
    let SyncOutcome::Failed(failure) = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(failure.missing_on_primary);
    assert_eq!(
        failure.message,
        "repository `group/ghost.git` is missing on the primary"
    );
    assert!(
        !s.secondary
            .repository_root()
            .unwrap()
            .join("group/ghost.git")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_escape_the_root_are_refused() {
    let s = sites(Timeouts::default());
    for path in [
        "../outside.git",
        "/etc",
        "group/--upload-pack=touch x",
        "a//b.git",
        "",
    ] {
        let err = repo(path)
            .replicator(&s.primary)
            .publish_created_event()
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ReplicatorError::Resource {
                    source: ResourceError::Refused { .. },
                    ..
                }
            ),
            "{path:?}: {err}"
        );
    }
    assert_eq!(s.primary.event_log().last_event_id().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_command_past_its_timeout_is_killed_and_the_sync_failed_with_git_s_words() {
    let s = sites(Timeouts {
        command: Duration::from_millis(1),
        ..Timeouts::default()
    });
    let path = "group/slow.git";
    let record = repo(path);
    primary_repository(&s, path).await;
    commit(&s.work, "a.txt", "one").await;
    sh(&s.work, &["push", "--quiet", "origin", "main"]).await;
    record
        .replicator(&s.primary)
        .publish_created_event()
        .await
        .unwrap();
    let outcome = record.replicator(&s.secondary).sync().await.unwrap();
    let SyncOutcome::Failed(failure) = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(failure.message.contains("timed out"), "{}", failure.message);
    assert!(
        failure.message.contains("git clone --mirror"),
        "{}",
        failure.message
    );
    assert!(
        !s.secondary.repository_root().unwrap().join(path).exists(),
        "no half clone is visible"
    );
    let tmp = s
        .secondary
        .repository_root()
        .unwrap()
        .join(".replicable/tmp");
    let leftovers = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "the partial clone is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_s_own_words_end_up_in_the_failure_text() {
    let s = sites(Timeouts::default());
    let path = "group/broken.git";
    // Something that exists on the primary but is no repository.
    let broken = s.primary.repository_root().unwrap().join(path);
    tokio::fs::create_dir_all(&broken).await.unwrap();
    tokio::fs::write(broken.join("HEAD"), "garbage")
        .await
        .unwrap();
    let record = repo(path);
    record
        .replicator(&s.primary)
        .publish_created_event()
        .await
        .unwrap();
    let outcome = record.replicator(&s.secondary).sync().await.unwrap();
    let SyncOutcome::Failed(failure) = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(!failure.missing_on_primary);
    assert!(
        failure.message.contains("git clone --mirror"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("fatal: repository")
            && failure.message.contains("exit status: 128"),
        "git's stderr is kept: {}",
        failure.message
    );
    let row = record
        .replicator(&s.secondary)
        .registry()
        .await
        .unwrap()
        .unwrap();
    assert!(row.last_sync_failure.unwrap().chars().count() <= 255);
}

/// A guard that says every sync was overtaken.
struct Overtaken;

#[async_trait::async_trait]
impl SyncGuard for Overtaken {
    async fn ensure_current(&self) -> Result<(), SyncFailure> {
        Err(SyncFailure::overtaken("test"))
    }
}

/// Runs the strategy's sync of `path` directly, with `guard` and the primary's checksum.
async fn sync_with(s: &Sites, path: &str, guard: &dyn SyncGuard) -> Result<(), SyncFailure> {
    let link = InProcessPrimary::new(s.primary.clone());
    let resource = Resource::Repository { path: path.into() };
    let target = ResourceTarget {
        replicable_name: "repo",
        model_id: 1,
        resource: &resource,
    };
    let checksum = GitRepositoryStrategy
        .checksum(s.primary.strategy_context(), &target, None)
        .await
        .ok();
    let record = StoredRecord {
        model_id: 1,
        generation: 1,
        body: serde_json::json!({ "id": 1, "path": path }),
    };
    GitRepositoryStrategy
        .sync(SyncRequest {
            context: s.secondary.strategy_context(),
            primary: &link,
            replicable_name: "repo",
            model_id: 1,
            resource: &resource,
            record: &record,
            primary_checksum: checksum.as_deref(),
            guard,
        })
        .await
}

/// Every ref of a repository with its value, and where HEAD points.
async fn live_state(dir: &Path) -> (String, String) {
    (
        sh(dir, &["for-each-ref", "--format=%(objectname) %(refname)"]).await,
        sh(dir, &["symbolic-ref", "HEAD"]).await,
    )
}

fn temporaries(s: &Sites) -> usize {
    let tmp = s
        .secondary
        .repository_root()
        .unwrap()
        .join(".replicable/tmp");
    std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overtaken_fetch_leaves_the_live_refs_exactly_as_before() {
    let s = sites(Timeouts::default());
    let path = "group/overtaken.git";
    primary_repository(&s, path).await;
    let w = &s.work;
    commit(w, "a.txt", "one").await;
    commit(w, "a.txt", "two").await;
    sh(w, &["branch", "old"]).await;
    sh(w, &["push", "--quiet", "origin", "main", "old"]).await;
    sync_with(&s, path, &AlwaysCurrent).await.unwrap();
    let secondary_dir = s.secondary.repository_root().unwrap().join(path);
    let before = live_state(&secondary_dir).await;

    // A new commit, a new branch, a deleted branch and a moved HEAD: all refused.
    commit(w, "a.txt", "three").await;
    sh(w, &["branch", "new"]).await;
    sh(w, &["push", "--quiet", "origin", "main", "new"]).await;
    sh(w, &["push", "--quiet", "origin", "--delete", "old"]).await;
    let bare = s.primary.repository_root().unwrap().join(path);
    sh(&bare, &["symbolic-ref", "HEAD", "refs/heads/new"]).await;
    let err = sync_with(&s, path, &Overtaken).await.unwrap_err();
    assert!(err.overtaken, "{err:?}");
    assert_eq!(live_state(&secondary_dir).await, before);

    // A force-push that rewrites main: refused too.
    sh(w, &["reset", "--quiet", "--hard", "HEAD~2"]).await;
    commit(w, "c.txt", "rewritten").await;
    sh(w, &["push", "--quiet", "--force", "origin", "main"]).await;
    let err = sync_with(&s, path, &Overtaken).await.unwrap_err();
    assert!(err.overtaken, "{err:?}");
    assert_eq!(live_state(&secondary_dir).await, before);
    assert!(
        !before.0.contains("replicable-staging"),
        "the overtaken syncs' staging refs are gone"
    );

    // The next current sync brings everything at once.
    sync_with(&s, path, &AlwaysCurrent).await.unwrap();
    assert_same_refs(&s, path).await;
    assert_eq!(
        sh(&secondary_dir, &["symbolic-ref", "HEAD"]).await.trim(),
        "refs/heads/new"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overtaken_first_clone_leaves_no_repository_and_no_temporary() {
    let s = sites(Timeouts::default());
    let path = "group/first.git";
    primary_repository(&s, path).await;
    commit(&s.work, "a.txt", "one").await;
    sh(&s.work, &["push", "--quiet", "origin", "main"]).await;
    let err = sync_with(&s, path, &Overtaken).await.unwrap_err();
    assert!(err.overtaken);
    assert!(!s.secondary.repository_root().unwrap().join(path).exists());
    assert_eq!(temporaries(&s), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_in_the_secondary_s_repository_root_is_refused_for_sync_and_removal() {
    let s = sites(Timeouts::default());
    let path = "group/linked.git";
    primary_repository(&s, path).await;
    commit(&s.work, "a.txt", "one").await;
    sh(&s.work, &["push", "--quiet", "origin", "main"]).await;
    let root = s.secondary.repository_root().unwrap().to_path_buf();
    let outside = s.work.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("group")).unwrap();

    let err = sync_with(&s, path, &AlwaysCurrent).await.unwrap_err();
    assert!(!err.overtaken && !err.missing_on_primary);
    assert!(
        err.message.contains("is refused") && err.message.contains("symbolic link"),
        "{}",
        err.message
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );

    // A repository outside, reachable through the link: a removal must not touch it.
    let victim = outside.join("linked.git");
    sh(
        &outside,
        &["init", "--bare", "--quiet", victim.to_str().unwrap()],
    )
    .await;
    let resource = Resource::Repository { path: path.into() };
    let target = ResourceTarget {
        replicable_name: "repo",
        model_id: 1,
        resource: &resource,
    };
    let err = GitRepositoryStrategy
        .remove(s.secondary.strategy_context(), &target)
        .await
        .unwrap_err();
    let ResourceError::Refused { reason, .. } = &err else {
        panic!("{err}");
    };
    assert!(reason.contains("group"), "names the link: {reason}");
    assert!(
        victim.join("HEAD").exists(),
        "the outside repository survives"
    );
    assert!(
        GitRepositoryStrategy
            .checksum(s.secondary.strategy_context(), &target, None)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_refuses_to_serve_a_repository_through_a_link() {
    let s = sites(Timeouts::default());
    // The real repository lives outside the primary's root; a link inside points at it.
    let outside = s.work.parent().unwrap().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    let real = outside.join("secret.git");
    sh(
        &outside,
        &["init", "--bare", "--quiet", real.to_str().unwrap()],
    )
    .await;
    let root = s.primary.repository_root().unwrap();
    std::fs::create_dir_all(root.join("group")).unwrap();
    std::os::unix::fs::symlink(&real, root.join("group/secret.git")).unwrap();
    let link = InProcessPrimary::new(s.primary.clone());
    let err = link
        .repository_remote("repo", 1, "group/secret.git")
        .await
        .unwrap_err();
    assert!(
        matches!(err, replicable_core::LinkError::Refused { .. }),
        "{err}"
    );
    let failure = sync_with(&s, "group/secret.git", &AlwaysCurrent)
        .await
        .unwrap_err();
    assert!(!failure.missing_on_primary, "{failure:?}");
    assert!(
        failure.message.contains("symbolic link"),
        "{}",
        failure.message
    );
    assert!(
        !s.secondary
            .repository_root()
            .unwrap()
            .join("group/secret.git")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_path_that_is_not_a_repository_is_an_ordinary_failure() {
    let s = sites(Timeouts::default());
    let root = s.primary.repository_root().unwrap();
    std::fs::create_dir_all(root.join("group")).unwrap();
    std::fs::write(root.join("group/plain.git"), "not a repository").unwrap();
    let failure = sync_with(&s, "group/plain.git", &AlwaysCurrent)
        .await
        .unwrap_err();
    assert!(!failure.missing_on_primary, "{failure:?}");
    assert!(!failure.overtaken);
    assert_eq!(temporaries(&s), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_about_a_400_character_path_keeps_its_reason_in_the_registry() {
    let s = sites(Timeouts::default());
    let path = format!("{}ghost.git", "very-long-group-name/".repeat(19));
    assert!(path.len() >= 400);
    let record = repo(&path);
    record
        .replicator(&s.primary)
        .publish_created_event()
        .await
        .unwrap();
    record.replicator(&s.secondary).sync().await.unwrap();
    let row = record
        .replicator(&s.secondary)
        .registry()
        .await
        .unwrap()
        .unwrap();
    let text = row.last_sync_failure.unwrap();
    assert!(text.chars().count() <= 255);
    assert!(text.contains("is missing on the primary"), "{text}");
}

const HELPER_PORT: &str = "REPLICABLE_TEST_GIT_CHILD_PORT";

/// Run by `a_git_child_dies_with_the_process_that_started_it` in a child process of the test
/// binary: starts a git that waits forever on a server that never answers. Does nothing when
/// run as an ordinary test, so it is ignored there and run only by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process of a_git_child_dies_with_the_process_that_started_it"]
async fn git_child_helper() {
    let Ok(port) = std::env::var(HELPER_PORT) else {
        return;
    };
    let url = format!("git://127.0.0.1:{port}/never.git");
    let _ = git(None, &["ls-remote", "--", &url], None, &[], T).await;
}

/// The pids of the processes whose parent is `parent` and whose command line has `needle`.
fn children_with(parent: u32, needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ppid: u32 = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == parent && cmdline.contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

#[test]
fn a_git_child_dies_with_the_process_that_started_it() {
    if std::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", "true"])
        .status()
        .map_or(true, |s| !s.success())
    {
        eprintln!("setpriv --pdeathsig is not available: git cannot be tied to its parent");
        return;
    }
    // A server that accepts and never answers, held by this process: git waits on it until
    // it is killed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "git_child_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_PORT, port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let needle = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let git_pid = loop {
        if let Some(pid) = children_with(helper.id(), &needle).first() {
            break *pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the helper never started git"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Accept git's connection so it is really waiting on the server.
    let (_connection, _) = listener.accept().unwrap();
    assert!(running(git_pid));
    helper.kill().unwrap(); // SIGKILL
    helper.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running(git_pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = running(git_pid);
    if survived {
        // Do not leave it behind.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &git_pid.to_string()])
            .status();
    }
    assert!(
        !survived,
        "git {git_pid} outlived the process that started it"
    );
}
