//! The git repository strategy: a resource is a bare repository under the site's repository
//! root, replicated with the git CLI.
//!
//! - First sync: `git clone --mirror` into `.replicable/tmp/` under the root, checked against the
//!   primary's checksum, and renamed into place only once complete and only if the sync's guard
//!   allows it, so a half-cloned (or overtaken) repository is never visible.
//! - Later syncs: the primary's refs are fetched into a staging namespace of the same
//!   repository (`refs/replicable-staging/<random>/`; the objects are harmless), checked against
//!   the primary's checksum, and, if the guard allows it, moved into place in one
//!   `git update-ref --stdin` transaction (changed refs updated, refs the primary no longer has
//!   deleted, the staging namespace deleted), then `HEAD` is pointed at the primary's (git
//!   refuses to change `HEAD` and the ref it points at in one transaction). The primary's `HEAD`
//!   comes with the same fetch: it names the one branch at its commit (a primary `HEAD`
//!   detached there, or naming a ref outside `refs/heads/` there, is taken to name that branch;
//!   the checksum is the same); when several branches are there, or none, the primary is asked
//!   which (`git ls-remote --symref`). A copy whose checksum already equals the primary's is not
//!   fetched, so `HEAD` moving between two branches at one commit, nothing else changed, shows
//!   on the next change. Every update names the value it replaces, so a ref that moved
//!   meanwhile fails the whole transaction instead of being overwritten. An overtaken sync
//!   deletes its staging refs and leaves the live refs
//!   as they were. Staging namespaces a crashed sync left behind are deleted by the next
//!   successful sync of that repository (in its transaction).
//! - Paths: the repository's path is resolved beneath the site's repository root without
//!   going through symbolic links ([`resolve_beneath`]), for syncs, checksums and removals.
//! - Checksum: `HEAD` and the refs under `refs/heads/`, `refs/tags/`, `refs/keep-around/`,
//!   `refs/merge-requests/`, `refs/environments/` and `refs/notes/`; each `"<oid> <ref>"` line is
//!   hashed with SHA-256 and the digests are XORed, so ref order does not matter. An empty
//!   repository has the all-zero checksum; a missing or corrupt one is an error.
//!
//! git is spawned directly with its arguments (never through a shell), with the site's command
//! timeout, prompts disabled, and its stderr kept for the failure text. It is spawned through
//! `setpriv --pdeathsig KILL` when util-linux's `setpriv` is on `PATH`, so that git dies with
//! the process that started it even if that process is SIGKILLed (see [`git`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use replicable_core::blob_key::{RESERVED_PREFIX, parse_repository_path, resolve_beneath};
use replicable_core::failure::shorten_name;
use replicable_core::storage::StoredRecord;
use replicable_core::{
    DataType, LinkError, RepositoryRemote, Resource, ResourceError, ResourceTarget, Strategy,
    StrategyContext, SyncFailure, SyncRequest,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        write!(f, "{} (running `{}`)", self.reason, self.command)
    }
}

impl std::error::Error for GitError {}

/// The namespace staged refs are fetched into (`<prefix>/<random>/refs/...`).
pub const STAGING_REF_PREFIX: &str = "refs/replicable-staging/";

/// Whether util-linux's `setpriv` with `--pdeathsig` can be used (looked up once).
fn setpriv_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::process::Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The command that runs git: `setpriv --pdeathsig KILL -- git` when `setpriv` works (Linux,
/// util-linux), plain `git` otherwise.
///
/// Why: `kill_on_drop` kills git when the future running it is dropped, but not when the
/// process that started git is killed outright (SIGKILL, OOM killer); git would then run on,
/// holding the repository. With `setpriv` the kernel sends git SIGKILL when the *thread* that
/// spawned it exits. The spawn happens on the thread polling the future (a runtime worker, or
/// the thread in `block_on`), which lives as long as the runtime, never on a `spawn_blocking`
/// thread (reaped when idle); call [`git`] from async code only. Without `setpriv` on `PATH`
/// git is spawned plainly and only `kill_on_drop` and the command timeout stop it.
pub fn git_command() -> tokio::process::Command {
    if setpriv_available() {
        let mut command = tokio::process::Command::new("setpriv");
        command.args(["--pdeathsig", "KILL", "--", "git"]);
        command
    } else {
        tokio::process::Command::new("git")
    }
}

/// A command line as failure texts show it: long arguments (paths, URLs) shortened.
fn shown_command(args: &[&str]) -> String {
    let mut shown = String::from("git");
    for arg in args {
        shown.push(' ');
        shown.push_str(&shorten_name(arg));
    }
    shown
}

/// Runs git with `args` (in `dir` if given), feeding `stdin`, within `timeout`. Returns stdout.
///
/// git is started with [`git_command`] (it dies with this process) and killed when the
/// returned future is dropped or the timeout passes.
pub async fn git(
    dir: Option<&Path>,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
    timeout: std::time::Duration,
) -> Result<String, GitError> {
    let shown = shown_command(args);
    let fail = |reason: String| GitError {
        command: shown.clone(),
        reason,
    };
    let mut command = git_command();
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
    let (mut out_pipe, mut err_pipe) = (child.stdout.take(), child.stderr.take());
    let finished = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        if let (Some(o), Some(e)) = (out_pipe.as_mut(), err_pipe.as_mut()) {
            let (read_out, read_err) =
                tokio::join!(o.read_to_end(&mut out), e.read_to_end(&mut err));
            read_out?;
            read_err?;
        }
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out, err))
    };
    let (status, stdout, stderr) = match tokio::time::timeout(timeout, finished).await {
        Ok(output) => output.map_err(|e| fail(e.to_string()))?,
        Err(_) => {
            // Killed and reaped before the caller cleans up after it: a git still dying could
            // otherwise write into a directory the caller is removing.
            let _ = child.kill().await;
            return Err(fail(format!("timed out after {} s", timeout.as_secs())));
        }
    };
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&stderr);
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
        Err(fail(format!("{} ({})", tail, status)))
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

fn resource_name(target: &ResourceTarget<'_>) -> String {
    match target.resource {
        Resource::Repository { path } => format!("repository `{}`", shorten_name(path)),
        other => shorten_name(&other.to_string()),
    }
}

/// The repository's directory beneath the site's root, refused if any component below the root
/// is a symbolic link.
fn local_repository(
    context: &StrategyContext,
    target: &ResourceTarget<'_>,
) -> Result<PathBuf, ResourceError> {
    let relative = repository_path(target)?;
    let root = context.repository_root().ok_or_else(|| ResourceError::Io {
        resource: resource_name(target),
        reason: format!("site `{}` has no repository root", context.site_name()),
    })?;
    resolve_beneath(root, &relative, &resource_name(target))
}

fn io_error(target: &ResourceTarget<'_>, e: impl std::fmt::Display) -> ResourceError {
    ResourceError::Io {
        resource: resource_name(target),
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
    let lines = checksummed_lines(dir, timeout).await?;
    Ok(xor_checksum(lines.iter().map(String::as_str)))
}

/// The refs a checksum covers, as `"<oid> <ref>"` lines, sorted: for comparing repositories.
pub async fn checksummed_refs(
    dir: &Path,
    timeout: std::time::Duration,
) -> Result<Vec<String>, GitError> {
    let mut lines = checksummed_lines(dir, timeout).await?;
    lines.sort();
    Ok(lines)
}

/// The `"<oid> <ref>"` lines of a checksum, `HEAD`'s last: one `git for-each-ref`, and `HEAD`
/// taken from its file and the listed refs where it names one of them (otherwise, when it is
/// detached or names a ref outside the checksum, from `git rev-parse`).
async fn checksummed_lines(
    dir: &Path,
    timeout: std::time::Duration,
) -> Result<Vec<String>, GitError> {
    let dir_text = dir.display().to_string();
    if !dir.exists() {
        return Err(GitError {
            command: format!("checksum of {dir_text}"),
            reason: "the repository does not exist".into(),
        });
    }
    // `GIT_DIR` names the repository, so git never looks for one in the parent directories:
    // a directory that is not a repository (or a corrupt one) is an error, not the refs of a
    // repository it happens to lie in.
    // (`-C` takes the path exactly as it is, so `GIT_DIR` is the directory itself.)
    let env = [("GIT_DIR", ".")];
    let mut args = vec!["for-each-ref", "--format=%(objectname) %(refname)"];
    args.extend(CHECKSUM_REF_PREFIXES);
    let refs = git(Some(dir), &args, None, &env, timeout).await?;
    let mut lines: Vec<String> = refs
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let listed = match head_file_target(dir).await {
        Some(target) => lines.iter().find_map(|line| {
            let (oid, name) = line.split_once(' ')?;
            (name == target).then(|| oid.to_owned())
        }),
        None => None,
    };
    let head = match listed {
        Some(oid) => Some(oid),
        None => git(
            Some(dir),
            &["rev-parse", "--verify", "--quiet", "HEAD"],
            None,
            &env,
            timeout,
        )
        .await
        .ok()
        .map(|oid| oid.trim().to_owned()),
    };
    lines.extend(head.map(|oid| format!("{oid} HEAD")));
    Ok(lines)
}

/// The ref `HEAD` names in the bare repository at `dir`, read from its `HEAD` file; `None`
/// when `HEAD` is detached, unreadable, or kept elsewhere (the reftable format leaves a
/// placeholder naming `refs/heads/.invalid` there). Callers ask git on `None`. Reading the
/// file spares a git process on every sync and checksum, and a process costs about as much as
/// listing the refs of a repository.
async fn head_file_target(dir: &Path) -> Option<String> {
    let text = tokio::fs::read_to_string(dir.join("HEAD")).await.ok()?;
    let target = text.strip_prefix("ref: ")?.trim_end();
    let plain = target.starts_with("refs/")
        && !target.ends_with("/.invalid")
        && !target.contains(char::is_whitespace);
    plain.then(|| target.to_owned())
}

/// The ref the primary's `HEAD` names, asked of the remote (`git ls-remote --symref`); `None`
/// when `HEAD` is detached or unborn.
async fn remote_head(
    remote: &str,
    remote_env: &[(&str, &str)],
    timeout: std::time::Duration,
) -> Result<Option<String>, GitError> {
    let symref = git(
        None,
        &["ls-remote", "--symref", "--", remote, "HEAD"],
        None,
        remote_env,
        timeout,
    )
    .await?;
    Ok(symref
        .lines()
        .find_map(|l| l.strip_prefix("ref: ")?.strip_suffix("\tHEAD"))
        .map(str::to_owned))
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

/// A fresh temporary directory name under `<root>/.replicable/tmp/`, starting with
/// `<name>-<id>-` (what [`replicable_core::staging`] reads to find the sync that owns it).
fn temporary_dir(root: &Path, name: &str, id: i64) -> Result<PathBuf, SyncFailure> {
    let tmp_root = resolve_beneath(
        root,
        &Path::new(RESERVED_PREFIX).join("tmp"),
        "the repository staging directory",
    )
    .map_err(|e| SyncFailure::new(e.to_string()))?;
    Ok(tmp_root.join(format!("{name}-{id}-{:016x}", fastrand::u64(..))))
}

/// `"<oid> <ref>"` of every ref under `prefix` (all refs when empty).
async fn list_refs(
    dir: &Path,
    prefix: &str,
    timeout: std::time::Duration,
) -> Result<Vec<(String, String)>, GitError> {
    let mut args = vec!["for-each-ref", "--format=%(objectname) %(refname)"];
    if !prefix.is_empty() {
        args.push(prefix);
    }
    let out = git(Some(dir), &args, None, &[], timeout).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(oid, name)| (oid.to_owned(), name.to_owned()))
        .collect())
}

/// The checksum a repository with `refs` (name -> oid) and `HEAD` pointing at `head` would have.
fn checksum_of_refs(
    refs: &std::collections::BTreeMap<String, String>,
    head: Option<&str>,
) -> String {
    let mut lines: Vec<String> = refs
        .iter()
        .filter(|(name, _)| CHECKSUM_REF_PREFIXES.iter().any(|p| name.starts_with(p)))
        .map(|(name, oid)| format!("{oid} {name}"))
        .collect();
    if let Some(oid) = head.and_then(|target| refs.get(target)) {
        lines.push(format!("{oid} HEAD"));
    }
    xor_checksum(lines.iter().map(String::as_str))
}

/// Runs one `git update-ref --no-deref --stdin` transaction of `commands`.
async fn ref_transaction(
    dir: &Path,
    commands: &[String],
    timeout: std::time::Duration,
) -> Result<(), GitError> {
    let mut input = String::from("start\n");
    for c in commands {
        input.push_str(c);
        input.push('\n');
    }
    input.push_str("prepare\ncommit\n");
    git(
        Some(dir),
        &["update-ref", "--no-deref", "--stdin"],
        Some(input.as_bytes()),
        &[],
        timeout,
    )
    .await
    .map(|_| ())
}

/// Deletes every ref under `namespace` (best effort: a leftover is deleted by a later sync).
async fn drop_staging(dir: &Path, namespace: &str, timeout: std::time::Duration) {
    if let Ok(refs) = list_refs(dir, namespace, timeout).await {
        let deletes: Vec<String> = refs
            .iter()
            .map(|(oid, name)| format!("delete {name} {oid}"))
            .collect();
        if !deletes.is_empty() {
            let _ = ref_transaction(dir, &deletes, timeout).await;
        }
    }
}

impl GitRepositoryStrategy {
    async fn sync_repository(
        &self,
        request: &SyncRequest<'_>,
        local: &Path,
    ) -> Result<(), SyncFailure> {
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
                    "repository `{}` is missing on the primary",
                    shorten_name(path)
                )));
            }
            Err(e) => return Err(SyncFailure::new(e.to_string())),
        };
        if local.exists() {
            self.fetch_into_existing(request, local, &remote).await
        } else {
            self.clone_new(request, local, &remote).await
        }
    }

    /// A new repository: a mirror clone in a temporary directory, checked, guarded, renamed.
    async fn clone_new(
        &self,
        request: &SyncRequest<'_>,
        local: &Path,
        remote: &RepositoryRemote,
    ) -> Result<(), SyncFailure> {
        // The remote's settings (an authorization header) reach git through its environment,
        // for these commands only.
        let remote_env = remote.git_env();
        let remote_env: Vec<(&str, &str)> = remote_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let remote = remote.url.as_str();
        let timeout = request.context.command_timeout();
        let failure = |e: GitError| SyncFailure::new(e.to_string());
        let root = request.context.repository_root().ok_or_else(|| {
            SyncFailure::new(format!(
                "site `{}` has no repository root",
                request.context.site_name()
            ))
        })?;
        let tmp = temporary_dir(root, request.replicable_name, request.model_id)?;
        let parent = tmp.parent().expect("temporary dirs have a parent");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| SyncFailure::new(format!("cannot create {}: {e}", parent.display())))?;
        let tmp_text = tmp.display().to_string();
        let discard = |failure: SyncFailure| async {
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            Err(failure)
        };
        if let Err(e) = git(
            None,
            &["clone", "--mirror", "--quiet", "--", remote, &tmp_text],
            None,
            &remote_env,
            timeout,
        )
        .await
        {
            return discard(failure(e)).await;
        }
        if let Some(expected) = request.primary_checksum {
            match repository_checksum(&tmp, timeout).await {
                Ok(actual) if actual == expected => {}
                Ok(actual) => {
                    return discard(SyncFailure::new(format!(
                        "Repository checksum mismatch after sync: expected {expected}, got {actual}"
                    )))
                    .await;
                }
                Err(e) => return discard(failure(e)).await,
            }
        }
        if let Some(dir) = local.parent()
            && let Err(e) = tokio::fs::create_dir_all(dir).await
        {
            return discard(SyncFailure::new(format!(
                "cannot create {}: {e}",
                dir.display()
            )))
            .await;
        }
        if let Err(overtaken) = request.ensure_current().await {
            return discard(overtaken).await;
        }
        if let Err(e) = tokio::fs::rename(&tmp, local).await {
            return discard(SyncFailure::new(format!(
                "cannot move the clone into place: {e} (at {})",
                shorten_name(&local.display().to_string())
            )))
            .await;
        }
        Ok(())
    }

    /// An existing repository: fetch into a staging namespace, check, guard, then move the refs
    /// into place in one transaction.
    async fn fetch_into_existing(
        &self,
        request: &SyncRequest<'_>,
        local: &Path,
        remote: &RepositoryRemote,
    ) -> Result<(), SyncFailure> {
        // The remote's settings (an authorization header) reach git through its environment,
        // for these commands only.
        let remote_env = remote.git_env();
        let remote_env: Vec<(&str, &str)> = remote_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let remote = remote.url.as_str();
        let timeout = request.context.command_timeout();
        let failure = |e: GitError| SyncFailure::new(e.to_string());
        let namespace = format!("{STAGING_REF_PREFIX}{:016x}/", fastrand::u64(..));
        let refspec = format!("+refs/*:{namespace}refs/*");
        // The primary's HEAD comes with its refs, from the same listing: the pattern `HEA*`
        // matches `HEAD` (the only name the primary lists outside `refs/`) and, unlike the name
        // itself, matching nothing (the unborn HEAD of an empty repository) is no error.
        let head_refspec = format!("+HEA*:{namespace}HEA*");
        let fetched = git(
            Some(local),
            &[
                "fetch",
                "--quiet",
                "--force",
                "--no-tags",
                "--no-write-fetch-head",
                "--",
                remote,
                &refspec,
                &head_refspec,
            ],
            None,
            &remote_env,
            timeout,
        )
        .await;
        if let Err(e) = fetched {
            drop_staging(local, &namespace, timeout).await;
            return Err(failure(e));
        }
        // Every ref, read once: the fetched ones (under the namespace) and the live ones as
        // they are before the guard. Each update below names its old value, so a ref that
        // moves after this read (another attempt made its copy visible) fails the whole
        // transaction instead of going back.
        let all_refs = match list_refs(local, "", timeout).await {
            Ok(refs) => refs,
            Err(e) => {
                drop_staging(local, &namespace, timeout).await;
                return Err(failure(e));
            }
        };
        // The primary's refs, by their live names (a primary's own staging refs are not copied).
        let staged: std::collections::BTreeMap<String, String> = all_refs
            .iter()
            .filter_map(|(oid, name)| {
                let live = name.strip_prefix(&namespace)?;
                (live.starts_with("refs/") && !live.starts_with(STAGING_REF_PREFIX))
                    .then(|| (live.to_owned(), oid.clone()))
            })
            .collect();
        let staged_head = format!("{namespace}HEAD");
        let fetched_head = all_refs
            .iter()
            .find(|(_, name)| *name == staged_head)
            .map(|(oid, _)| oid);
        // The ref HEAD names: the one branch at HEAD's commit (a HEAD detached there, or naming
        // a ref outside `refs/heads/` there, is taken to name that branch; the checksum is the
        // same). When no branch or several are at its commit, the primary is asked (one more
        // connection).
        let primary_head = match fetched_head {
            None => None,
            Some(head_oid) => {
                let mut at_head = staged
                    .iter()
                    .filter(|(name, oid)| *oid == head_oid && name.starts_with("refs/heads/"));
                match (at_head.next(), at_head.next()) {
                    (Some((only, _)), None) => Some(only.clone()),
                    _ => match remote_head(remote, &remote_env, timeout).await {
                        Ok(head) => head,
                        Err(e) => {
                            drop_staging(local, &namespace, timeout).await;
                            return Err(failure(e));
                        }
                    },
                }
            }
        };
        let head = primary_head
            .as_deref()
            .filter(|target| staged.contains_key(*target));
        if let Some(expected) = request.primary_checksum {
            let actual = checksum_of_refs(&staged, head);
            if actual != expected {
                drop_staging(local, &namespace, timeout).await;
                return Err(SyncFailure::new(format!(
                    "Repository checksum mismatch after sync: expected {expected}, got {actual}"
                )));
            }
        }
        if let Err(overtaken) = request.ensure_current().await {
            drop_staging(local, &namespace, timeout).await;
            return Err(overtaken);
        }
        let mut commands = Vec::new();
        let mut live = std::collections::BTreeMap::new();
        for (oid, name) in &all_refs {
            if name.starts_with(STAGING_REF_PREFIX) {
                // Ours, and any a crashed sync left behind.
                commands.push(format!("delete {name} {oid}"));
            } else {
                live.insert(name.clone(), oid.clone());
            }
        }
        for (name, oid) in &live {
            match staged.get(name) {
                Some(new) if new == oid => {}
                Some(new) => commands.push(format!("update {name} {new} {oid}")),
                None => commands.push(format!("delete {name} {oid}")),
            }
        }
        for (name, oid) in &staged {
            if !live.contains_key(name) {
                commands.push(format!("create {name} {oid}"));
            }
        }
        let current_head = match head_file_target(local).await {
            Some(target) => Some(target),
            None => git(
                Some(local),
                &["symbolic-ref", "--quiet", "HEAD"],
                None,
                &[],
                timeout,
            )
            .await
            .ok()
            .map(|s| s.trim().to_owned()),
        };
        let move_head = head.filter(|target| current_head.as_deref() != Some(*target));
        // git refuses to change HEAD and the ref it points at in one transaction, so HEAD
        // follows right after the refs' transaction.
        // A ref that becomes a directory of refs, or the reverse (`foo` deleted and `foo/bar`
        // created), cannot change in one transaction: git would have to lock both. Then the
        // deletions go first, each naming its old value, and the rest follows.
        let (deletes, rest): (Vec<String>, Vec<String>) = commands
            .iter()
            .cloned()
            .partition(|c| c.starts_with("delete "));
        let conflicts = directory_file_conflict(&deletes, &rest);
        let steps = if conflicts {
            vec![deletes, rest]
        } else {
            vec![commands]
        };
        for step in steps.iter().filter(|step| !step.is_empty()) {
            if let Err(e) = ref_transaction(local, step, timeout).await {
                drop_staging(local, &namespace, timeout).await;
                return Err(failure(e));
            }
        }
        if let Some(target) = move_head {
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
        let local = local_repository(request.context, &request.target())
            .map_err(|e| SyncFailure::new(e.to_string()))?;
        self.sync_repository(&request, &local).await
    }

    async fn remove(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        let local = local_repository(context, target)?;
        match tokio::fs::remove_dir_all(&local).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(target, e)),
        }
    }

    async fn checksum(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
        _record: Option<&StoredRecord>,
    ) -> Result<String, ResourceError> {
        let local = local_repository(context, target)?;
        if !local.exists() {
            return Err(ResourceError::Missing {
                resource: target.resource.to_string(),
            });
        }
        repository_checksum(&local, context.command_timeout())
            .await
            .map_err(|e| io_error(target, e))
    }

    async fn create_fixture(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
        _record: &serde_json::Value,
        seed: u64,
    ) -> Result<String, ResourceError> {
        let local = local_repository(context, target)?;
        let content = format!(
            "fixture {seed} of {} {}\n",
            target.replicable_name, target.model_id
        );
        let commit = write_commit(&local, &content, true, context.command_timeout())
            .await
            .map_err(|e| io_error(target, e))?;
        // HEAD -> refs/heads/main is the only ref the fixture has.
        Ok(xor_checksum([
            format!("{commit} HEAD").as_str(),
            format!("{commit} refs/heads/main").as_str(),
        ]))
    }

    async fn corrupt(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        let local = local_repository(context, target)?;
        write_commit(
            &local,
            "changed behind the framework's back\n",
            false,
            context.command_timeout(),
        )
        .await
        .map(|_| ())
        .map_err(|e| io_error(target, e))
    }
}

/// Whether a deleted ref and a created or updated one are a file and a directory of the same
/// path (`refs/heads/foo` and `refs/heads/foo/bar`).
fn directory_file_conflict(deletes: &[String], rest: &[String]) -> bool {
    let name = |command: &String| command.split(' ').nth(1).unwrap_or_default().to_owned();
    let deleted: Vec<String> = deletes.iter().map(name).collect();
    rest.iter().map(name).any(|kept| {
        deleted.iter().any(|gone| {
            kept.starts_with(&format!("{gone}/")) || gone.starts_with(&format!("{kept}/"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ref_that_becomes_a_directory_is_a_conflict() {
        let deletes = vec!["delete refs/heads/foo 1".to_owned()];
        assert!(directory_file_conflict(
            &deletes,
            &["create refs/heads/foo/bar 2".to_owned()]
        ));
        assert!(!directory_file_conflict(
            &deletes,
            &["create refs/heads/foobar 2".to_owned()]
        ));
        assert!(directory_file_conflict(
            &["delete refs/heads/a/b 1".to_owned()],
            &["create refs/heads/a 2".to_owned()]
        ));
    }

    #[test]
    fn the_checksum_does_not_depend_on_ref_order_and_is_zero_when_empty() {
        let a = xor_checksum(["1 refs/heads/a", "2 refs/tags/b"]);
        let b = xor_checksum(["2 refs/tags/b", "1 refs/heads/a"]);
        assert_eq!(a, b);
        assert_ne!(a, xor_checksum(["1 refs/heads/a"]));
        assert_eq!(xor_checksum(std::iter::empty()), EMPTY_CHECKSUM);
    }
}
