//! The git repository strategy: a resource is a bare repository under the site's repository
//! root, replicated with the git CLI.
//!
//! - First sync: `git clone --mirror` into `.replicable/tmp/` under the root, renamed into place
//!   only once complete, so a half-cloned repository is never visible.
//! - Later syncs: a forced, pruning mirror fetch (`+refs/*:refs/*`), and `HEAD` follows the
//!   primary's.
//! - Checksum: `HEAD` and the refs under `refs/heads/`, `refs/tags/`, `refs/keep-around/`,
//!   `refs/merge-requests/`, `refs/environments/` and `refs/notes/`; each `"<oid> <ref>"` line is
//!   hashed with SHA-256 and the digests are XORed, so ref order does not matter. An empty
//!   repository has the all-zero checksum; a missing or corrupt one is an error.
//!
//! git is spawned directly with its arguments (never through a shell), with the site's command
//! timeout, prompts disabled, and its stderr kept for the failure text.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use replicable_core::blob_key::{RESERVED_PREFIX, parse_repository_path};
use replicable_core::storage::StoredRecord;
use replicable_core::{
    DataType, LinkError, Resource, ResourceError, ResourceTarget, Site, Strategy, SyncFailure,
    SyncRequest,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// The ref namespaces that make up a repository's checksum (besides `HEAD`).
pub const CHECKSUM_REF_PREFIXES: [&str; 6] = [
    "refs/heads/",
    "refs/tags/",
    "refs/keep-around/",
    "refs/merge-requests/",
    "refs/environments/",
    "refs/notes/",
];

/// The checksum of an empty repository.
pub const EMPTY_CHECKSUM: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Replicates git repositories: bare repositories under the site's repository root, at the
/// model's `#[replicable(repository)]` path.
#[derive(Debug, Default, Clone, Copy)]
pub struct GitRepositoryStrategy;

/// A git command failed.
#[derive(Debug)]
pub struct GitError {
    /// What ran, for the message.
    pub command: String,
    /// What went wrong (git's stderr, a timeout, a spawn failure).
    pub reason: String,
}

impl std::fmt::Display for GitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` failed: {}", self.command, self.reason)
    }
}

impl std::error::Error for GitError {}

/// Runs git with `args` (in `dir` if given), feeding `stdin`, within `timeout`. Returns stdout.
pub async fn git(
    dir: Option<&Path>,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
    timeout: std::time::Duration,
) -> Result<String, GitError> {
    let shown = format!("git {}", args.join(" "));
    let fail = |reason: String| GitError {
        command: shown.clone(),
        reason,
    };
    let mut command = tokio::process::Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("LC_ALL", "C")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("cannot run git: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .await
            .map_err(|e| fail(format!("writing to git: {e}")))?;
    }
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.map_err(|e| fail(e.to_string()))?,
        Err(_) => return Err(fail(format!("timed out after {} s", timeout.as_secs()))),
    };
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        // The end of stderr says what went wrong; keep it within the failure column's size.
        let tail: String = stderr
            .chars()
            .rev()
            .take(180)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(fail(format!("{} ({})", tail, output.status)))
    }
}

fn repository_path(target: &ResourceTarget<'_>) -> Result<PathBuf, ResourceError> {
    match target.resource {
        Resource::Repository { path } => parse_repository_path(path),
        other => Err(ResourceError::Refused {
            resource: other.to_string(),
            reason: "GitRepositoryStrategy replicates repositories only".into(),
        }),
    }
}

fn local_repository(site: &Site, target: &ResourceTarget<'_>) -> Result<PathBuf, ResourceError> {
    let relative = repository_path(target)?;
    let root = site.repository_root().ok_or_else(|| ResourceError::Io {
        resource: target.resource.to_string(),
        reason: format!("site `{}` has no repository root", site.name()),
    })?;
    Ok(root.join(relative))
}

fn io_error(target: &ResourceTarget<'_>, e: impl std::fmt::Display) -> ResourceError {
    ResourceError::Io {
        resource: target.resource.to_string(),
        reason: e.to_string(),
    }
}

/// XOR of the SHA-256 of each line.
fn xor_checksum<'a>(lines: impl IntoIterator<Item = &'a str>) -> String {
    let mut acc = [0u8; 32];
    for line in lines {
        let digest = Sha256::digest(line.as_bytes());
        for (a, d) in acc.iter_mut().zip(digest.iter()) {
            *a ^= d;
        }
    }
    hex::encode(acc)
}

/// The checksum of the repository at `dir` (see the module documentation).
pub async fn repository_checksum(
    dir: &Path,
    timeout: std::time::Duration,
) -> Result<String, GitError> {
    let dir_text = dir.display().to_string();
    if !dir.exists() {
        return Err(GitError {
            command: format!("checksum of {dir_text}"),
            reason: "the repository does not exist".into(),
        });
    }
    // Fails on a directory that is not a repository, or a corrupt one.
    git(Some(dir), &["rev-parse", "--git-dir"], None, &[], timeout).await?;
    let mut args = vec!["for-each-ref", "--format=%(objectname) %(refname)"];
    args.extend(CHECKSUM_REF_PREFIXES);
    let refs = git(Some(dir), &args, None, &[], timeout).await?;
    let head = git(
        Some(dir),
        &["rev-parse", "--verify", "--quiet", "HEAD"],
        None,
        &[],
        timeout,
    )
    .await
    .ok()
    .map(|oid| format!("{} HEAD", oid.trim()));
    Ok(xor_checksum(
        refs.lines()
            .filter(|l| !l.is_empty())
            .chain(head.as_deref()),
    ))
}

/// The refs a checksum covers, as `"<oid> <ref>"` lines, sorted: for comparing repositories.
pub async fn checksummed_refs(
    dir: &Path,
    timeout: std::time::Duration,
) -> Result<Vec<String>, GitError> {
    let mut args = vec!["for-each-ref", "--format=%(objectname) %(refname)"];
    args.extend(CHECKSUM_REF_PREFIXES);
    let refs = git(Some(dir), &args, None, &[], timeout).await?;
    let mut lines: Vec<String> = refs.lines().map(str::to_owned).collect();
    if let Ok(oid) = git(
        Some(dir),
        &["rev-parse", "--verify", "--quiet", "HEAD"],
        None,
        &[],
        timeout,
    )
    .await
    {
        lines.push(format!("{} HEAD", oid.trim()));
    }
    lines.sort();
    Ok(lines)
}

/// Fixed identity and dates, so that fixtures are reproducible.
const FIXTURE_ENV: [(&str, &str); 6] = [
    ("GIT_AUTHOR_NAME", "replicable"),
    ("GIT_AUTHOR_EMAIL", "fixtures@replicable.invalid"),
    ("GIT_AUTHOR_DATE", "2030-01-01T00:00:00Z"),
    ("GIT_COMMITTER_NAME", "replicable"),
    ("GIT_COMMITTER_EMAIL", "fixtures@replicable.invalid"),
    ("GIT_COMMITTER_DATE", "2030-01-01T00:00:00Z"),
];

/// Writes a commit whose single file holds `content` on `main` of the bare repository at `dir`
/// (created if missing), with `parent` if given. Returns the commit id.
pub async fn write_commit(
    dir: &Path,
    content: &str,
    parent: bool,
    timeout: std::time::Duration,
) -> Result<String, GitError> {
    if !dir.exists() {
        tokio::fs::create_dir_all(dir).await.map_err(|e| GitError {
            command: format!("mkdir {}", dir.display()),
            reason: e.to_string(),
        })?;
        git(
            Some(dir),
            &["init", "--bare", "--quiet", "--initial-branch=main"],
            None,
            &[],
            timeout,
        )
        .await?;
    }
    let blob = git(
        Some(dir),
        &["hash-object", "-w", "--stdin"],
        Some(content.as_bytes()),
        &[],
        timeout,
    )
    .await?;
    let entry = format!("100644 blob {}\tREADME\n", blob.trim());
    let tree = git(Some(dir), &["mktree"], Some(entry.as_bytes()), &[], timeout).await?;
    let parent_oid = if parent {
        git(
            Some(dir),
            &["rev-parse", "--verify", "--quiet", "refs/heads/main"],
            None,
            &[],
            timeout,
        )
        .await
        .ok()
        .map(|s| s.trim().to_owned())
    } else {
        None
    };
    let mut args = vec!["commit-tree", tree.trim(), "-m", content];
    if let Some(p) = &parent_oid {
        args.extend(["-p", p.as_str()]);
    }
    let commit = git(Some(dir), &args, None, &FIXTURE_ENV, timeout).await?;
    let commit = commit.trim().to_owned();
    git(
        Some(dir),
        &["update-ref", "refs/heads/main", &commit],
        None,
        &[],
        timeout,
    )
    .await?;
    git(
        Some(dir),
        &["symbolic-ref", "HEAD", "refs/heads/main"],
        None,
        &[],
        timeout,
    )
    .await?;
    Ok(commit)
}

fn temporary_dir(root: &Path, name: &str, id: i64) -> PathBuf {
    root.join(RESERVED_PREFIX)
        .join("tmp")
        .join(format!("{name}-{id}-{:016x}", fastrand::u64(..)))
}

impl GitRepositoryStrategy {
    async fn sync_repository(
        &self,
        request: &SyncRequest<'_>,
        local: &Path,
    ) -> Result<(), SyncFailure> {
        let timeout = request.site.timeouts().command;
        let Resource::Repository { path } = request.resource else {
            return Err(SyncFailure::new("not a repository resource"));
        };
        let remote = match request
            .primary
            .repository_remote(request.replicable_name, request.model_id, path)
            .await
        {
            Ok(remote) => remote,
            Err(LinkError::NotFound { .. }) => {
                return Err(SyncFailure::missing_on_primary(format!(
                    "repository `{path}` is missing on the primary"
                )));
            }
            Err(e) => return Err(SyncFailure::new(e.to_string())),
        };
        let failure = |e: GitError| SyncFailure::new(e.to_string());
        if local.exists() {
            git(
                Some(local),
                &[
                    "fetch",
                    "--quiet",
                    "--prune",
                    "--force",
                    "--no-write-fetch-head",
                    "--",
                    &remote,
                    "+refs/*:refs/*",
                ],
                None,
                &[],
                timeout,
            )
            .await
            .map_err(failure)?;
            // A mirror fetch does not move HEAD; follow the primary's.
            let symref = git(
                None,
                &["ls-remote", "--symref", "--", &remote, "HEAD"],
                None,
                &[],
                timeout,
            )
            .await
            .map_err(failure)?;
            if let Some(target) = symref
                .lines()
                .find_map(|l| l.strip_prefix("ref: ")?.strip_suffix("\tHEAD"))
            {
                git(
                    Some(local),
                    &["symbolic-ref", "HEAD", target],
                    None,
                    &[],
                    timeout,
                )
                .await
                .map_err(failure)?;
            }
        } else {
            let root = request.site.repository_root().ok_or_else(|| {
                SyncFailure::new(format!(
                    "site `{}` has no repository root",
                    request.site.name()
                ))
            })?;
            let tmp = temporary_dir(root, request.replicable_name, request.model_id);
            let parent = tmp.parent().expect("temporary dirs have a parent");
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                SyncFailure::new(format!("cannot create {}: {e}", parent.display()))
            })?;
            let tmp_text = tmp.display().to_string();
            let cloned = git(
                None,
                &["clone", "--mirror", "--quiet", "--", &remote, &tmp_text],
                None,
                &[],
                timeout,
            )
            .await;
            if let Err(e) = cloned {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
                return Err(failure(e));
            }
            if let Some(dir) = local.parent() {
                tokio::fs::create_dir_all(dir).await.map_err(|e| {
                    SyncFailure::new(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            if let Err(e) = tokio::fs::rename(&tmp, local).await {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
                return Err(SyncFailure::new(format!(
                    "cannot move the clone into place at {}: {e}",
                    local.display()
                )));
            }
        }
        if let Some(expected) = request.primary_checksum {
            let actual = repository_checksum(local, timeout).await.map_err(failure)?;
            if actual != expected {
                return Err(SyncFailure::new(format!(
                    "Repository checksum mismatch after sync: expected {expected}, got {actual}"
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Strategy for GitRepositoryStrategy {
    const NAME: &'static str = "GitRepositoryStrategy";
    const DATA_TYPE: DataType = DataType::Repository;
    const MUTABLE: bool = true;

    fn validate(resource: &Resource) -> Result<(), ResourceError> {
        match resource {
            Resource::Repository { path } => parse_repository_path(path).map(|_| ()),
            other => Err(ResourceError::Refused {
                resource: other.to_string(),
                reason: "GitRepositoryStrategy replicates repositories only".into(),
            }),
        }
    }

    async fn sync(&self, request: SyncRequest<'_>) -> Result<(), SyncFailure> {
        let local = local_repository(request.site, &request.target())
            .map_err(|e| SyncFailure::new(e.to_string()))?;
        self.sync_repository(&request, &local).await
    }

    async fn remove(&self, site: &Site, target: &ResourceTarget<'_>) -> Result<(), ResourceError> {
        let local = local_repository(site, target)?;
        match tokio::fs::remove_dir_all(&local).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(target, e)),
        }
    }

    async fn checksum(
        &self,
        site: &Site,
        target: &ResourceTarget<'_>,
        _record: Option<&StoredRecord>,
    ) -> Result<String, ResourceError> {
        let local = local_repository(site, target)?;
        if !local.exists() {
            return Err(ResourceError::Missing {
                resource: target.resource.to_string(),
            });
        }
        repository_checksum(&local, site.timeouts().command)
            .await
            .map_err(|e| io_error(target, e))
    }

    async fn create_fixture(
        &self,
        site: &Site,
        target: &ResourceTarget<'_>,
        _record: &serde_json::Value,
        seed: u64,
    ) -> Result<String, ResourceError> {
        let local = local_repository(site, target)?;
        let content = format!(
            "fixture {seed} of {} {}\n",
            target.replicable_name, target.model_id
        );
        let commit = write_commit(&local, &content, true, site.timeouts().command)
            .await
            .map_err(|e| io_error(target, e))?;
        // HEAD -> refs/heads/main is the only ref the fixture has.
        Ok(xor_checksum([
            format!("{commit} HEAD").as_str(),
            format!("{commit} refs/heads/main").as_str(),
        ]))
    }

    async fn corrupt(&self, site: &Site, target: &ResourceTarget<'_>) -> Result<(), ResourceError> {
        let local = local_repository(site, target)?;
        write_commit(
            &local,
            "changed behind the framework's back\n",
            false,
            site.timeouts().command,
        )
        .await
        .map(|_| ())
        .map_err(|e| io_error(target, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_does_not_depend_on_ref_order_and_is_zero_when_empty() {
        let a = xor_checksum(["1 refs/heads/a", "2 refs/tags/b"]);
        let b = xor_checksum(["2 refs/tags/b", "1 refs/heads/a"]);
        assert_eq!(a, b);
        assert_ne!(a, xor_checksum(["1 refs/heads/a"]));
        assert_eq!(xor_checksum(std::iter::empty()), EMPTY_CHECKSUM);
    }
}
