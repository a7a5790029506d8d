//! A local directory as a site's blob store, confined to that directory.
//!
//! [`ConfinedLocalFileSystem`] is THE way to use a local directory as a blob store:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use replicable_core::local_blobs::ConfinedLocalFileSystem;
//! # use replicable_core::Site;
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let blobs = ConfinedLocalFileSystem::new("/var/lib/app/blobs")?;
//! let db = replicable_core::storage::open("sqlite:///var/lib/app/primary.db").await?;
//! let site = Site::primary("primary").database(db).blob_store(Arc::new(blobs)).build()?;
//! # Ok(()) }
//! ```
//!
//! object_store's own `LocalFileSystem` follows symbolic links: a link `pkg -> /elsewhere`
//! planted inside the directory lets a sync write, and a `deleted` event remove, files outside
//! it, and lets a primary serve them. The wrapper refuses every key one of whose path
//! components below the root is a symbolic link before it delegates to `LocalFileSystem`
//! (reads, writes, multipart writes, deletes, renames, copies, listings); a listing leaves out
//! what lies behind a link. Keys are mapped to files by
//! [`object_path`](crate::domain::blob_key::object_path): a file's name is its key.
//!
//! On Linux, reads, deletes, overwriting puts and overwriting renames (what syncs and `deleted`
//! events do) leave the check to the kernel: `openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS` opens the file, or the directories a put, a rename or a delete works in
//! (a put writes its staged file there and renames it within), so a directory swapped for a
//! link after a check cannot send them elsewhere. Elsewhere, and for the other operations
//! (multipart writes, copies, listings), each component is checked before the path is used.
//!
//! Reads are the wrapper's own: one blocking task opens the file (on Linux with `openat2`, the
//! kernel keeping the path beneath the root and refusing links, so nothing can swap a directory
//! for a link between a check and the open), reads its metadata, applies the request's
//! preconditions and range and, when that range fits in one [`READ_CHUNK`], reads it; a larger
//! one streams in chunks of [`READ_CHUNK`] from one blocking task (`LocalFileSystem` streams
//! 8 KiB per blocking task, which costs a thread hand-off for every 8 KiB of a blob a primary
//! serves or a verification hashes). Metadata and e-tags are `LocalFileSystem`'s, so a listing
//! and a read agree.
//!
//! Small operations skip the blocking pool: on a local file system, a get's open (and a read
//! of up to [`INLINE_IO`] bytes) and an overwriting put of up to [`INLINE_IO`] bytes run on the
//! calling thread, where they cost less than the hand-off to a pool thread would. One that
//! takes longer than [`INLINE_SLOW`] sends them back to the pool for [`INLINE_PAUSE`];
//! [`ConfinedLocalFileSystem::with_inline_io`] turns this off. A directory on a network or
//! user-space file system, or with another file system mounted below it when the store is
//! made, always uses the pool.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use crate::domain::blob_key::resolve_beneath;
use crate::domain::error::ResourceError;

/// A local directory as a blob store that never reaches outside the directory: any key whose
/// path goes through a symbolic link below the root is refused with an error that
/// [`refusal`] turns back into the [`ResourceError::Refused`] naming the link.
#[derive(Debug, Clone)]
pub struct ConfinedLocalFileSystem {
    root: PathBuf,
    inner: Arc<LocalFileSystem>,
    inline: Arc<inline::InlineIo>,
}

impl ConfinedLocalFileSystem {
    /// A store over the existing directory `root` (the root itself may be reached through a
    /// link; what lies below it may not).
    pub fn new(root: impl AsRef<FsPath>) -> Result<Self> {
        let inner = LocalFileSystem::new_with_prefix(root.as_ref())?;
        let root =
            std::fs::canonicalize(root.as_ref()).map_err(|e| object_store::Error::Generic {
                store: STORE,
                source: Box::new(e),
            })?;
        #[cfg(target_os = "linux")]
        beneath::probe(&root);
        let inline = Arc::new(inline::InlineIo::new(inline::suits(&root)));
        Ok(Self {
            root,
            inner: Arc::new(inner),
            inline,
        })
    }

    /// Whether small reads and writes may run on the calling thread (the default on Linux
    /// where the directory is on a local file system with nothing mounted below it; see
    /// [`INLINE_IO`]). `false` sends every read, put, rename and delete to tokio's blocking
    /// pool (the per-component link check of the other operations still runs where it is
    /// called).
    pub fn with_inline_io(self, on: bool) -> Self {
        let inline = Arc::new(inline::InlineIo::new(on && inline::suits(&self.root)));
        Self { inline, ..self }
    }

    /// Whether small operations run on the calling thread now (they do on Linux unless turned
    /// off, the directory is not on a local file system or has another one mounted below it,
    /// or one ran slow in the last [`INLINE_PAUSE`]).
    pub fn inline_io_now(&self) -> bool {
        self.inline.now()
    }

    /// Runs the blocking operation `op`: on the calling thread when `small` and small
    /// operations run inline now (timed, so that a slow one sends the next ones to the pool),
    /// otherwise on tokio's blocking pool.
    async fn run_blocking<T: Send + 'static>(
        &self,
        small: bool,
        op: impl FnOnce(&Self, bool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if small && self.inline.now() {
            let started = std::time::Instant::now();
            let done = op(self, true);
            self.inline.took(started.elapsed(), &self.root);
            return done;
        }
        // Outside a tokio runtime there is no pool: the caller's thread does it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return op(self, false);
        };
        let this = self.clone();
        runtime
            .spawn_blocking(move || op(&this, false))
            .await
            .map_err(|e| object_store::Error::JoinError { source: e })?
    }

    /// The (canonical) directory the store is confined to.
    pub fn root(&self) -> &FsPath {
        &self.root
    }

    /// The file of `location`, once checked: no component below the root is a symbolic link.
    pub fn confined_path(&self, location: &Path) -> Result<PathBuf> {
        let (_, relative) = self.relative_path(location)?;
        resolve_beneath(&self.root, &relative, &format!("blob `{location}`"))
            .map_err(|e| refused_error(location, e))
    }

    /// The file of `location` and its path below the root (not checked for links).
    fn relative_path(&self, location: &Path) -> Result<(PathBuf, PathBuf)> {
        let full = self.inner.path_to_filesystem(location)?;
        let relative = full
            .strip_prefix(&self.root)
            .map_err(|_| {
                refused_error(
                    location,
                    ResourceError::Refused {
                        resource: format!("blob `{location}`"),
                        reason: format!("it lies outside `{}`", self.root.display()),
                    },
                )
            })?
            .to_path_buf();
        Ok((full, relative))
    }

    /// Opens the file of `location` for reading, refusing a path that goes through a symbolic
    /// link below the root. On Linux the kernel resolves the path beneath the root and refuses
    /// any link on the way (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): one call
    /// instead of a `stat` per component, and no window between the check and the open. Where
    /// `openat2` is not available (kernels before 5.6, some sandboxes), each component is
    /// checked first ([`confined_path`](Self::confined_path)).
    fn open_confined(&self, location: &Path) -> Result<(std::fs::File, PathBuf)> {
        #[cfg(target_os = "linux")]
        if beneath::AVAILABLE.load(std::sync::atomic::Ordering::Relaxed) {
            let (full, relative) = self.relative_path(location)?;
            match beneath::open(&self.root, &relative) {
                beneath::Opened::File(file) => return Ok((file, full)),
                beneath::Opened::Link => return Err(self.link_refusal(location)),
                beneath::Opened::Failed(e) => return Err(open_error(&full, e)),
                beneath::Opened::Unsupported => {}
            }
        }
        let path = self.confined_path(location)?;
        let file = open_nonblocking(&path).map_err(|e| open_error(&path, e))?;
        Ok((file, path))
    }

    fn check(&self, location: &Path) -> Result<()> {
        self.confined_path(location).map(|_| ())
    }

    /// The refusal of a path the kernel found a link on: the walk names the link; one that went
    /// away meanwhile is still refused.
    #[cfg(target_os = "linux")]
    fn link_refusal(&self, location: &Path) -> object_store::Error {
        match self.confined_path(location) {
            Err(refused) => refused,
            Ok(_) => refused_error(
                location,
                ResourceError::Refused {
                    resource: format!("blob `{location}`"),
                    reason: format!(
                        "its path goes through a symbolic link inside the site's root `{}`",
                        self.root.display()
                    ),
                },
            ),
        }
    }

    /// The file of `location` below the root, for an operation the kernel confines: its full
    /// path and its path below the root, which must name a file.
    #[cfg(target_os = "linux")]
    fn below(&self, location: &Path) -> Result<Below> {
        let (full, relative) = self.relative_path(location)?;
        if relative.file_name().is_none() {
            return Err(object_store::Error::Generic {
                store: STORE,
                source: format!("`{location}` names no file").into(),
            });
        }
        Ok(Below { full, relative })
    }

    /// A directory `beneath` opened for an operation on `location`; `None`: no `openat2` here.
    /// A link on the way is refused naming it; another failure is what `failed` makes of it.
    #[cfg(target_os = "linux")]
    fn kernel_dir(
        &self,
        location: &Path,
        dir: beneath::Dir,
        failed: impl FnOnce(std::io::Error) -> object_store::Error,
    ) -> Result<Option<std::os::fd::OwnedFd>> {
        match dir {
            beneath::Dir::Open(dir) => Ok(Some(dir)),
            beneath::Dir::Link => Err(self.link_refusal(location)),
            beneath::Dir::Failed(e) => Err(failed(e)),
            beneath::Dir::Unsupported => Ok(None),
        }
    }

    /// Refuses `location` when its own name in `dir` is a symbolic link, as a read does (an
    /// operation through the directory's handle would act on the link, not through it, but the
    /// key names a link).
    #[cfg(target_os = "linux")]
    fn refuse_named_link(
        &self,
        dir: &std::os::fd::OwnedFd,
        name: &std::ffi::OsStr,
        location: &Path,
    ) -> Result<()> {
        if beneath::is_link(dir, name) {
            return Err(self.link_refusal(location));
        }
        Ok(())
    }

    /// The blocking part of a delete on Linux, confined by the kernel: the file's directory is
    /// opened with `openat2` refusing links and the name removed through that handle. `None`: no
    /// `openat2` here.
    #[cfg(target_os = "linux")]
    fn delete_beneath(&self, location: &Path) -> Result<Option<()>> {
        let file = self.below(location)?;
        let failed = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                object_store::Error::NotFound {
                    path: file.full.display().to_string(),
                    source: Box::new(e),
                }
            } else {
                object_store::Error::Generic {
                    store: STORE,
                    source: format!("cannot delete `{}`: {e}", file.full.display()).into(),
                }
            }
        };
        let opened = beneath::open_existing_dir(&self.root, file.parent());
        let Some(dir) = self.kernel_dir(location, opened, failed)? else {
            return Ok(None);
        };
        self.refuse_named_link(&dir, file.name(), location)?;
        rustix::fs::unlinkat(&dir, file.name(), rustix::fs::AtFlags::empty())
            .map_err(|e| failed(e.into()))?;
        Ok(Some(()))
    }

    /// The blocking part of an overwriting rename on Linux (how a large blob's download is moved
    /// into place), confined by the kernel: both directories are opened with `openat2` refusing
    /// links (the destination's created as for a put) and the file is renamed between their
    /// handles. `None`: no `openat2` here.
    #[cfg(target_os = "linux")]
    fn rename_beneath(&self, from: &Path, to: &Path) -> Result<Option<()>> {
        let (source, target) = (self.below(from)?, self.below(to)?);
        // A missing source is NotFound; anything else (on either side) is an error naming both.
        let moving = |e: std::io::Error| object_store::Error::Generic {
            store: STORE,
            source: format!(
                "cannot move `{}` to `{}`: {e}",
                source.full.display(),
                target.full.display()
            )
            .into(),
        };
        let failed = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                object_store::Error::NotFound {
                    path: source.full.display().to_string(),
                    source: Box::new(e),
                }
            } else {
                moving(e)
            }
        };
        let opened = beneath::open_existing_dir(&self.root, source.parent());
        let Some(from_dir) = self.kernel_dir(from, opened, failed)? else {
            return Ok(None);
        };
        self.refuse_named_link(&from_dir, source.name(), from)?;
        // The source first: a rename of nothing makes no directories.
        rustix::fs::statat(
            &from_dir,
            source.name(),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| failed(e.into()))?;
        let opened = beneath::open_dir(&self.root, target.parent());
        let Some(to_dir) = self.kernel_dir(to, opened, moving)? else {
            return Ok(None);
        };
        self.refuse_named_link(&to_dir, target.name(), to)?;
        rustix::fs::renameat(&from_dir, source.name(), &to_dir, target.name())
            .map_err(|e| failed(e.into()))?;
        Ok(Some(()))
    }

    /// The blocking part of an overwriting put on Linux, confined by the kernel: the parent
    /// directory is opened (and created, one component at a time) with `openat2` refusing links,
    /// and the file is written as `LocalFileSystem` writes it (a new `<name>#<n>` beside it,
    /// renamed over the name) through that directory's handle, so no link swapped in between
    /// can send the write elsewhere. `None`: no `openat2` here.
    #[cfg(target_os = "linux")]
    fn put_beneath(&self, location: &Path, payload: &PutPayload) -> Result<Option<PutResult>> {
        use std::io::Write;
        let file = self.below(location)?;
        let failed = |doing: &str, e: std::io::Error| object_store::Error::Generic {
            store: STORE,
            source: format!("{doing} `{}`: {e}", file.full.display()).into(),
        };
        let opened = beneath::open_dir(&self.root, file.parent());
        let Some(dir) = self.kernel_dir(location, opened, |e| {
            failed("cannot create the directory of", e)
        })?
        else {
            return Ok(None);
        };
        let name = file.name();
        self.refuse_named_link(&dir, name, location)?;
        let (mut staged_file, staged) =
            beneath::create_staged(&dir, name).map_err(|e| failed("cannot write", e))?;
        let written = payload
            .iter()
            .try_for_each(|chunk| staged_file.write_all(chunk))
            .and_then(|()| {
                // A network file system may report a failed write only when the file is
                // flushed (safe Rust cannot see an error from `close`): flushed there before
                // the file becomes visible. Local file systems report write errors on write.
                if beneath::is_network_fs(&staged_file) {
                    staged_file.sync_data()?;
                }
                staged_file.metadata()
            })
            .and_then(|metadata| {
                // Closed before it is published, as `LocalFileSystem` does.
                drop(staged_file);
                rustix::fs::renameat(&dir, &staged, &dir, name)?;
                Ok(metadata)
            });
        match written {
            Ok(metadata) => Ok(Some(PutResult {
                e_tag: object_meta(location.clone(), &metadata).e_tag,
                version: None,
                extensions: Default::default(),
            })),
            Err(e) => {
                let _ = rustix::fs::unlinkat(&dir, &staged, rustix::fs::AtFlags::empty());
                Err(failed("cannot write", e))
            }
        }
    }

    /// The blocking part of a get: what `LocalFileSystem` would answer (the same metadata,
    /// e-tag, preconditions and ranges), with a range of up to `read_up_to` bytes already read
    /// (a larger one is left to stream from the open file).
    fn open_for_get(
        &self,
        location: Path,
        options: GetOptions,
        read_up_to: u64,
    ) -> Result<OpenedGet> {
        use std::io::{Seek, SeekFrom};
        let (file, path) = self.open_confined(&location)?;
        let metadata = file.metadata().map_err(|e| open_error(&path, e))?;
        if !metadata.is_file() {
            return Err(object_store::Error::Generic {
                store: STORE,
                source: format!("`{}` exists but is not a regular file", path.display()).into(),
            });
        }
        let meta = object_meta(location, &metadata);
        options.check_preconditions(&meta)?;
        let range = match &options.range {
            Some(range) => range
                .as_range(meta.size)
                .map_err(|e| object_store::Error::Generic {
                    store: STORE,
                    source: format!("reading `{}`: {e}", path.display()).into(),
                })?,
            None => 0..meta.size,
        };
        let len = range.end - range.start;
        if options.head {
            // Metadata only: nothing is read (as with a remote store's HEAD, the body is empty).
            return Ok(OpenedGet {
                meta,
                range,
                body: Opened::Read(bytes::Bytes::new()),
            });
        }
        if len > read_up_to {
            return Ok(OpenedGet {
                meta,
                range,
                body: Opened::File(file, path),
            });
        }
        let mut file = file;
        // A file just opened is at its start: a whole-file read needs no seek.
        let buf = (if range.start > 0 {
            file.seek(SeekFrom::Start(range.start)).map(|_| ())
        } else {
            Ok(())
        })
        .and_then(|()| read_exactly(&mut file, len as usize))
        .map_err(|e| object_store::Error::Generic {
            store: STORE,
            source: format!("reading `{}`: {e}", path.display()).into(),
        })?;
        Ok(OpenedGet {
            meta,
            range,
            body: Opened::Read(bytes::Bytes::from(buf)),
        })
    }
}

/// A key's file below a store's root: its full path and its path below the root (which names a
/// file).
#[cfg(target_os = "linux")]
struct Below {
    full: PathBuf,
    relative: PathBuf,
}

#[cfg(target_os = "linux")]
impl Below {
    fn name(&self) -> &std::ffi::OsStr {
        self.relative
            .file_name()
            .expect("`below` checked that the path names a file")
    }

    fn parent(&self) -> &FsPath {
        self.relative.parent().unwrap_or(FsPath::new(""))
    }
}

/// Opening a file with the kernel keeping the path beneath a directory (Linux 5.6 and later).
#[cfg(target_os = "linux")]
mod beneath {
    use std::ffi::OsStr;
    use std::os::fd::OwnedFd;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use rustix::io::Errno;

    /// Whether `openat2` works here; cleared the first time the kernel (or a sandbox's
    /// syscall filter) answers that it does not.
    pub(super) static AVAILABLE: AtomicBool = AtomicBool::new(true);

    pub(super) enum Opened {
        File(std::fs::File),
        /// A component of the path (the last one included) is a symbolic link.
        Link,
        Failed(std::io::Error),
        /// No `openat2` here: check the path another way.
        Unsupported,
    }

    const BENEATH: ResolveFlags = ResolveFlags::BENEATH
        .union(ResolveFlags::NO_SYMLINKS)
        .union(ResolveFlags::NO_MAGICLINKS);

    pub(super) enum Dir {
        Open(OwnedFd),
        Link,
        Failed(std::io::Error),
        Unsupported,
    }

    const DIRECTORY: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

    /// Opens the existing directory `relative` below `root`, refusing symbolic links on the
    /// way.
    pub(super) fn open_existing_dir(root: &Path, relative: &Path) -> Dir {
        match open_root_and(root, relative) {
            Ok((_, Ok(dir))) => Dir::Open(dir),
            Ok((_, Err(e))) => dir_error(e),
            Err(e) => Dir::Failed(e.into()),
        }
    }

    /// The root, and the result of opening `relative` below it.
    fn open_root_and(
        root: &Path,
        relative: &Path,
    ) -> rustix::io::Result<(OwnedFd, rustix::io::Result<OwnedFd>)> {
        let root = rustix::fs::open(root, DIRECTORY, Mode::empty())?;
        let whole = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            relative
        };
        let dir = openat2_retrying(&root, whole, DIRECTORY);
        Ok((root, dir))
    }

    /// Opens directory `relative` below `root`, creating what is missing one component at a
    /// time, refusing symbolic links on the way.
    pub(super) fn open_dir(root: &Path, relative: &Path) -> Dir {
        let directory = DIRECTORY;
        let root = match open_root_and(root, relative) {
            Ok((_, Ok(dir))) => return Dir::Open(dir),
            Ok((root, Err(Errno::NOENT))) => root,
            Ok((_, Err(e))) => return dir_error(e),
            Err(e) => return Dir::Failed(e.into()),
        };
        // Most often only the last directory is missing (a new key's own): made in its parent.
        if let (Some(up), Some(last)) = (relative.parent(), relative.file_name())
            && !up.as_os_str().is_empty()
            && let Ok(up) = openat2_retrying(&root, up, directory)
        {
            match rustix::fs::mkdirat(&up, last, Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Dir::Failed(e.into()),
            }
            return match openat2_retrying(&up, last, directory) {
                Ok(dir) => Dir::Open(dir),
                Err(e) => dir_error(e),
            };
        }
        // More is missing (or a link is on the way): made one component at a time, each opened
        // before the next is made in it.
        let mut dir = root;
        for component in relative.components() {
            match rustix::fs::mkdirat(&dir, component.as_os_str(), Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Dir::Failed(e.into()),
            }
            dir = match openat2_retrying(&dir, component.as_os_str(), directory) {
                Ok(next) => next,
                Err(e) => return dir_error(e),
            };
        }
        Dir::Open(dir)
    }

    fn dir_error(e: Errno) -> Dir {
        match e {
            Errno::LOOP | Errno::XDEV => Dir::Link,
            Errno::NOSYS => {
                unsupported();
                Dir::Unsupported
            }
            e => Dir::Failed(e.into()),
        }
    }

    /// No `openat2` here: the per-component check from now on, said once.
    fn unsupported() {
        if AVAILABLE.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "openat2 is not available: local blob paths are checked component by component \
                 before each use instead"
            );
        }
    }

    /// Tries `openat2` on `root` once: a kernel without it (ENOSYS) or a sandbox that filters
    /// it (EPERM, as older container runtimes answer for system calls they do not know) turns
    /// it off for the process. Later calls take EPERM as the error it usually is.
    pub(super) fn probe(root: &Path) {
        if !AVAILABLE.load(Ordering::Relaxed) {
            return;
        }
        let Ok(dir) = rustix::fs::open(root, DIRECTORY, Mode::empty()) else {
            return;
        };
        if let Err(Errno::NOSYS | Errno::PERM) =
            rustix::fs::openat2(&dir, ".", DIRECTORY, Mode::empty(), BENEATH)
        {
            unsupported();
        }
    }

    fn openat2_retrying<P: rustix::path::Arg + Copy>(
        dir: &OwnedFd,
        path: P,
        flags: OFlags,
    ) -> rustix::io::Result<OwnedFd> {
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(dir, path, flags, Mode::empty(), BENEATH) {
                Err(Errno::AGAIN) if tries < 3 => tries += 1,
                other => return other,
            }
        }
    }

    /// Whether `file` lives on a network (or user-space) file system, where a write may fail
    /// only when the file is flushed: NFS, SMB/CIFS, Ceph, FUSE.
    pub(super) fn is_network_fs(file: &std::fs::File) -> bool {
        // NFS, SMB2, CIFS, Ceph, FUSE, 9p (virtual machine and WSL shares), Lustre, GPFS, AFS.
        const NETWORK: [u64; 9] = [
            0x6969,
            0xff53_4d42,
            0xfe53_4d42,
            0x00c3_6400,
            0x6573_5546,
            0x0102_1997,
            0x0bd0_0bd0,
            0x4750_4653,
            0x5346_414f,
        ];
        rustix::fs::fstatfs(file).is_ok_and(|fs| NETWORK.contains(&(fs.f_type as u64)))
    }

    /// Whether `name` in `dir` is a symbolic link.
    pub(super) fn is_link(dir: &OwnedFd, name: &OsStr) -> bool {
        rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|stat| {
            rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Symlink
        })
    }

    /// Creates `<name>#<n>` in `dir` for the first free `n`, never through a link (`O_EXCL`).
    pub(super) fn create_staged(
        dir: &OwnedFd,
        name: &OsStr,
    ) -> std::io::Result<(std::fs::File, std::ffi::OsString)> {
        for n in 1u32.. {
            let mut staged = name.to_os_string();
            staged.push(format!("#{n}"));
            match rustix::fs::openat(
                dir,
                staged.as_os_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            ) {
                Ok(fd) => return Ok((std::fs::File::from(fd), staged)),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(std::io::Error::other("no free staging name"))
    }

    /// Opens `relative` below `root` for reading, refusing symbolic links on the way.
    pub(super) fn open(root: &Path, relative: &Path) -> Opened {
        let dir = match rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(dir) => dir,
            Err(e) => return Opened::Failed(e.into()),
        };
        // The kernel answers EAGAIN when a rename elsewhere in the tree raced the lookup.
        for _ in 0..3 {
            match rustix::fs::openat2(
                &dir,
                relative,
                // Non-blocking: opening a FIFO planted under a key returns at once (and is then
                // refused as not a regular file) instead of waiting for a writer. It changes
                // nothing for reads of regular files.
                OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => return Opened::File(std::fs::File::from(fd)),
                Err(Errno::AGAIN) => continue,
                Err(Errno::LOOP | Errno::XDEV) => return Opened::Link,
                Err(Errno::NOSYS) => {
                    unsupported();
                    return Opened::Unsupported;
                }
                Err(e) => return Opened::Failed(e.into()),
            }
        }
        Opened::Unsupported
    }
}

/// A file opened for a get, its range read already when it was small.
struct OpenedGet {
    meta: ObjectMeta,
    range: std::ops::Range<u64>,
    body: Opened,
}

enum Opened {
    Read(bytes::Bytes),
    File(std::fs::File, PathBuf),
}

fn open_error(path: &FsPath, e: std::io::Error) -> object_store::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        object_store::Error::NotFound {
            path: path.display().to_string(),
            source: Box::new(e),
        }
    } else {
        object_store::Error::Generic {
            store: STORE,
            source: format!("cannot open `{}`: {e}", path.display()).into(),
        }
    }
}

/// The metadata of a file as `LocalFileSystem` reports it, e-tag included (its form is
/// `"<inode>-<mtime in microseconds>-<size>"` in hex), so that an e-tag from a get made here
/// matches the one a listing or a conditional request of the inner store computes.
fn object_meta(location: Path, metadata: &std::fs::Metadata) -> ObjectMeta {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(metadata);
    #[cfg(not(unix))]
    let inode = 0u64;
    let modified = metadata.modified().unwrap_or(std::time::UNIX_EPOCH);
    let micros = modified
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    ObjectMeta {
        location,
        last_modified: modified.into(),
        size: metadata.len(),
        e_tag: Some(format!("\"{inode:x}-{micros:x}-{:x}\"", metadata.len())),
        version: None,
    }
}

const STORE: &str = "ConfinedLocalFileSystem";

/// Opens `path` for reading without waiting on a FIFO (see `beneath::open`).
fn open_nonblocking(path: &FsPath) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    options.open(path)
}

/// The largest read or write a [`ConfinedLocalFileSystem`] on a local file system does on the
/// calling thread instead of tokio's blocking pool.
///
/// Handing an operation to the pool costs two thread wake-ups and their context switches: tens
/// of microseconds of CPU, more than opening and reading (or writing and renaming) a file of a
/// few KiB that the page cache holds. For small blobs these hand-offs were a quarter of a
/// sync's CPU (measured: 10,000 x 4 KiB on 2 cores, 0.42 -> 0.31 ms of CPU per file and 23%
/// less time). A larger operation, and every operation on a network or user-space file system
/// (NFS, SMB, Ceph, FUSE, where one call can wait for a server), goes to the pool as before.
pub const INLINE_IO: u64 = 64 * 1024;

/// An operation on the calling thread that takes longer than this sends small operations to
/// the blocking pool for [`INLINE_PAUSE`]: a disk that has become slow (a cold cache, a busy
/// journal) never holds an async worker for long more than once in a while.
pub const INLINE_SLOW: std::time::Duration = std::time::Duration::from_millis(2);

/// How long small operations go to the blocking pool after one ran slow on the calling thread.
pub const INLINE_PAUSE: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether small operations run on the calling thread (see [`INLINE_IO`]).
mod inline {
    use std::path::Path;
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// The clock the pauses are kept in: milliseconds since the first use.
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);

    fn now_ms() -> u64 {
        u64::try_from(START.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A store's switch, and the end of its pause after a slow operation.
    #[derive(Debug)]
    pub(super) struct InlineIo {
        on: bool,
        paused_until_ms: AtomicU64,
    }

    impl InlineIo {
        pub(super) fn new(on: bool) -> Self {
            Self {
                on,
                paused_until_ms: AtomicU64::new(0),
            }
        }

        /// Whether a small operation runs on the calling thread now.
        pub(super) fn now(&self) -> bool {
            self.on && now_ms() >= self.paused_until_ms.load(Ordering::Relaxed)
        }

        /// Ends a pause at once (tests: a slow machine must not turn the path under test off).
        #[cfg(test)]
        pub(super) fn resume(&self) {
            self.paused_until_ms.store(0, Ordering::Relaxed);
        }

        /// Notes how long an inline operation took: a slow one pauses inline operations.
        pub(super) fn took(&self, elapsed: Duration, root: &Path) {
            if elapsed <= super::INLINE_SLOW {
                return;
            }
            let until = now_ms()
                .saturating_add(u64::try_from(super::INLINE_PAUSE.as_millis()).unwrap_or(u64::MAX));
            self.paused_until_ms.store(until, Ordering::Relaxed);
            tracing::debug!(
                root = %root.display(),
                took_us = elapsed.as_micros(),
                "a small file operation ran slow on an async thread: the blocking pool takes them for a while"
            );
        }
    }

    /// Whether small operations under `root` may run inline: `root` is on a local file system
    /// and nothing is mounted below it (a network file system mounted inside the directory
    /// could hold a thread for as long as its server is away). Linux only, where both are
    /// known; elsewhere every operation goes to the blocking pool.
    pub(super) fn suits(root: &Path) -> bool {
        #[cfg(target_os = "linux")]
        {
            std::fs::File::open(root).is_ok_and(|dir| !super::beneath::is_network_fs(&dir))
                && std::fs::read_to_string("/proc/self/mountinfo")
                    .is_ok_and(|mounts| !mounted_below(&mounts, root))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = root;
            false
        }
    }

    /// Whether `mountinfo` (the text of `/proc/self/mountinfo`) lists a mount point strictly
    /// below `root`.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(super) fn mounted_below(mountinfo: &str, root: &Path) -> bool {
        mountinfo
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(unescape)
            .any(|point| {
                let point = Path::new(&point);
                point != root && point.starts_with(root)
            })
    }

    /// A mountinfo path: spaces, tabs, newlines and backslashes are written as `\ooo`.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn unescape(field: &str) -> String {
        let bytes = field.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let octal = bytes.get(i + 1..i + 4).filter(|digits| {
                bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d))
            });
            match octal {
                Some(digits) => {
                    let value = digits
                        .iter()
                        .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                    out.push(u8::try_from(value).unwrap_or(b'?'));
                    i += 4;
                }
                None => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The largest chunk a read of a local blob yields.
pub const READ_CHUNK: usize = 256 * 1024;

/// Chunks a reader may run ahead of its consumer.
const READ_AHEAD: usize = 2;

/// Streams `range` of `file` in chunks of up to [`READ_CHUNK`], read on one blocking task that
/// runs at most [`READ_AHEAD`] chunks ahead of the consumer and stops when the consumer goes.
/// A file that ends before the range does is an error (it was cut while being read).
fn read_in_chunks(
    file: std::fs::File,
    path: PathBuf,
    range: std::ops::Range<u64>,
) -> BoxStream<'static, Result<bytes::Bytes>> {
    use std::io::{Seek, SeekFrom};
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        let failed = |e: std::io::Error| object_store::Error::Generic {
            store: STORE,
            source: format!("reading `{}`: {e}", path.display()).into(),
        };
        if range.start > 0
            && let Err(e) = file.seek(SeekFrom::Start(range.start))
        {
            let _ = tx.blocking_send(Err(failed(e)));
            return;
        }
        let mut left = range.end.saturating_sub(range.start);
        while left > 0 {
            let n = usize::try_from(left).map_or(READ_CHUNK, |left| left.min(READ_CHUNK));
            let chunk = read_exactly(&mut file, n)
                .map(bytes::Bytes::from)
                .map_err(failed);
            let stop = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || stop {
                return;
            }
            left -= n as u64;
        }
    });
    let mut rx = rx;
    // `poll_recv` keeps answering `None` once the reader is done, so the stream may be polled
    // after its end (some consumers do).
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Reads the next `n` bytes of `file` into a buffer that is not zeroed first (a 1 MiB blob read
/// whole no longer writes its megabyte twice). A file that ends before is an error.
fn read_exactly(file: &mut std::fs::File, n: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(n);
    file.take(n as u64).read_to_end(&mut buf)?;
    if buf.len() < n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the file ended after {} of {n} bytes", buf.len()),
        ));
    }
    Ok(buf)
}

fn refused_error(location: &Path, error: ResourceError) -> object_store::Error {
    object_store::Error::PermissionDenied {
        path: location.to_string(),
        source: Box::new(error),
    }
}

/// The refusal inside an object store error, if the error is a [`ConfinedLocalFileSystem`]
/// refusing a path through a symbolic link.
pub fn refusal(error: &object_store::Error) -> Option<&ResourceError> {
    match error {
        object_store::Error::PermissionDenied { source, .. } => source.downcast_ref(),
        _ => None,
    }
}

impl std::fmt::Display for ConfinedLocalFileSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfinedLocalFileSystem({})", self.root.display())
    }
}

#[async_trait]
impl ObjectStore for ConfinedLocalFileSystem {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        #[cfg(target_os = "linux")]
        if matches!(opts.mode, object_store::PutMode::Overwrite)
            && opts.attributes.is_empty()
            && beneath::AVAILABLE.load(std::sync::atomic::Ordering::Relaxed)
        {
            let small = payload.content_length() as u64 <= INLINE_IO;
            let (at, bytes) = (location.clone(), payload.clone());
            let put = self
                .run_blocking(small, move |this, _| this.put_beneath(&at, &bytes))
                .await?;
            if let Some(put) = put {
                return Ok(put);
            }
        }
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        // Everything up to the first bytes happens in one step: the link check, the open, the
        // metadata, the preconditions and, for a range that fits in one chunk, the read itself.
        // That step runs on the calling thread while small operations run inline (reading at
        // most `INLINE_IO` bytes there; a larger range streams from a blocking task), otherwise
        // on one blocking task (reading up to one chunk).
        let location = location.clone();
        let opened = self
            .run_blocking(true, move |this, inline| {
                let read_up_to = if inline { INLINE_IO } else { READ_CHUNK as u64 };
                this.open_for_get(location, options, read_up_to)
            })
            .await?;
        let payload = match opened.body {
            Opened::Read(bytes) if bytes.is_empty() => {
                GetResultPayload::Stream(futures::stream::empty().boxed())
            }
            Opened::Read(bytes) => {
                GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed())
            }
            Opened::File(file, path) => {
                GetResultPayload::Stream(read_in_chunks(file, path, opened.range.clone()))
            }
        };
        Ok(GetResult {
            payload,
            meta: opened.meta,
            range: opened.range,
            attributes: Default::default(),
            extensions: Default::default(),
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        #[cfg(target_os = "linux")]
        if beneath::AVAILABLE.load(std::sync::atomic::Ordering::Relaxed) {
            // Ten at once, as `LocalFileSystem` deletes.
            let this = self.clone();
            return locations
                .map(move |location| {
                    let this = this.clone();
                    async move {
                        let location = location?;
                        let at = location.clone();
                        let deleted = this
                            .run_blocking(false, move |store, _| store.delete_beneath(&at))
                            .await?;
                        if deleted.is_none() {
                            // No `openat2` after all: the check, then `LocalFileSystem`.
                            this.check(&location)?;
                            object_store::ObjectStoreExt::delete(&*this.inner, &location).await?;
                        }
                        Ok(location)
                    }
                })
                .buffered(10)
                .boxed();
        }
        let this = self.clone();
        let checked = locations
            .map(move |location| {
                let location = location?;
                this.check(&location)?;
                Ok(location)
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let this = self.clone();
        self.inner
            .list(prefix)
            .filter(move |meta| {
                let keep = match meta {
                    Ok(meta) => this.check(&meta.location).is_ok(),
                    Err(_) => true,
                };
                futures::future::ready(keep)
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        if let Some(prefix) = prefix {
            self.check(prefix)?;
        }
        let mut result = self.inner.list_with_delimiter(prefix).await?;
        result
            .objects
            .retain(|meta| self.check(&meta.location).is_ok());
        result.common_prefixes.retain(|p| self.check(p).is_ok());
        Ok(result)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        #[cfg(target_os = "linux")]
        if matches!(
            options.target_mode,
            object_store::RenameTargetMode::Overwrite
        ) && beneath::AVAILABLE.load(std::sync::atomic::Ordering::Relaxed)
        {
            let (from_at, to_at) = (from.clone(), to.clone());
            let renamed = self
                .run_blocking(false, move |store, _| {
                    store.rename_beneath(&from_at, &to_at)
                })
                .await?;
            if renamed.is_some() {
                return Ok(());
            }
        }
        self.check(from)?;
        self.check(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{GetRange, ObjectStoreExt};

    /// A root with a directory `pkg`, a link `linked` to a directory outside it and a link
    /// `pkg/file-link` to the file `secret` outside it: (the temporary directory, root,
    /// outside).
    #[cfg(target_os = "linux")]
    fn linked_root() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("pkg")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("linked")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("pkg/file-link")).unwrap();
        (dir, root, outside)
    }

    /// `err` is a refusal that names `link` as a symbolic link.
    #[track_caller]
    fn assert_refused_naming(err: &object_store::Error, link: &str, what: &str) {
        let Some(ResourceError::Refused { reason, .. }) = refusal(err) else {
            panic!("{what}: not a refusal: {err}");
        };
        assert!(
            reason.contains(link) && reason.contains("symbolic link"),
            "{what}: {reason}"
        );
    }

    /// Held by the tests that switch between the kernel's check and the walk.
    #[cfg(target_os = "linux")]
    static KERNEL_CHECK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// A test's hold on the switch between the kernel's check and the walk: one such test at a
    /// time, and the kernel's check back on when it ends, failed or not.
    #[cfg(target_os = "linux")]
    struct KernelCheck {
        _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
    }

    #[cfg(target_os = "linux")]
    impl KernelCheck {
        async fn hold() -> Self {
            Self {
                _one_at_a_time: KERNEL_CHECK.lock().await,
            }
        }

        /// The kernel's check (`true`) or the walk from now on.
        fn set(&self, kernel: bool) {
            beneath::AVAILABLE.store(kernel, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[cfg(target_os = "linux")]
    impl Drop for KernelCheck {
        fn drop(&mut self) {
            self.set(true);
        }
    }

    /// A read through a link below the root (a linked directory, or the file itself a link)
    /// is refused naming the link, with the kernel's check and with the walk alike; a plain
    /// file reads.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn reads_through_a_link_are_refused_naming_it_with_or_without_openat2() {
        let modes = KernelCheck::hold().await;
        let (_dir, root, _outside) = linked_root();
        std::fs::write(root.join("pkg/plain"), "plain").unwrap();
        let inline = ConfinedLocalFileSystem::new(&root).unwrap();
        let pooled = inline.clone().with_inline_io(false);
        for (kernel, store) in [
            (true, &inline),
            (false, &inline),
            (true, &pooled),
            (false, &pooled),
        ] {
            modes.set(kernel);
            // A slow operation of an earlier pass (a busy machine) must not turn inline
            // operations off for this one.
            store.inline.resume();
            let inline = store.inline_io_now();
            for (key, link) in [("linked/secret", "linked"), ("pkg/file-link", "file-link")] {
                let err = store.get(&Path::from(key)).await.unwrap_err();
                assert_refused_naming(
                    &err,
                    link,
                    &format!("{key} (openat2: {kernel}, inline: {inline})"),
                );
            }
            let plain = store.get(&Path::from("pkg/plain")).await.unwrap();
            assert_eq!(plain.bytes().await.unwrap().as_ref(), b"plain");
            let missing = store.get(&Path::from("pkg/none")).await.unwrap_err();
            assert!(
                matches!(missing, object_store::Error::NotFound { .. }),
                "{missing}"
            );
        }
    }

    /// Small operations run on the calling thread: with the runtime's one blocking thread held
    /// busy, a small get and a small put still finish, while a large put (and any operation once
    /// inline operations are off or paused after a slow one) waits for the pool. Both ways read
    /// and write the same bytes.
    #[cfg(target_os = "linux")]
    #[test]
    fn small_operations_run_on_the_calling_thread_unless_off_or_paused() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // Not while another test has the kernel's check off (puts then take another path).
            let _one_mode_at_a_time = KernelCheck::hold().await;
            let dir = tempfile::tempdir().unwrap();
            let inline = ConfinedLocalFileSystem::new(dir.path()).unwrap();
            let pooled = inline.clone().with_inline_io(false);
            assert!(inline.inline_io_now(), "a temporary directory is local");
            assert!(!pooled.inline_io_now());
            let small = Path::from("a/small");
            let large = Path::from("a/large");
            let large_bytes = vec![7u8; INLINE_IO as usize + 1];
            // The pool's only thread, busy until `release` is dropped.
            let (release, held) = std::sync::mpsc::channel::<()>();
            let busy = tokio::task::spawn_blocking(move || {
                let _ = held.recv();
            });
            let wait = std::time::Duration::from_millis(300);
            fn finishes<T>(done: &Result<T, tokio::time::error::Elapsed>) -> bool {
                done.is_ok()
            }

            // Puts are the kernel-confined kind only where `openat2` is available (otherwise
            // `LocalFileSystem` writes them, on the pool): written beforehand there.
            let kernel = beneath::AVAILABLE.load(std::sync::atomic::Ordering::Relaxed);
            if kernel {
                let put = tokio::time::timeout(
                    wait,
                    inline.put(&small, PutPayload::from_static(b"tiny")),
                );
                assert!(finishes(&put.await), "a small put runs inline");
            } else {
                std::fs::create_dir_all(dir.path().join("a")).unwrap();
                std::fs::write(dir.path().join("a/small"), b"tiny").unwrap();
            }
            // A busy test machine may have made that put slow: not what is tested here.
            inline.inline.resume();
            let got = tokio::time::timeout(wait, async {
                inline.get(&small).await.unwrap().bytes().await.unwrap()
            })
            .await
            .expect("a small get runs inline");
            assert_eq!(got.as_ref(), b"tiny");
            let put = tokio::time::timeout(
                wait,
                inline.put(&large, PutPayload::from(large_bytes.clone())),
            );
            assert!(!finishes(&put.await), "a large put waits for the pool");
            let get = tokio::time::timeout(wait, pooled.get(&small));
            assert!(
                !finishes(&get.await),
                "with inline operations off, a get waits for the pool"
            );
            inline.inline.took(
                INLINE_SLOW + std::time::Duration::from_millis(1),
                dir.path(),
            );
            assert!(
                !inline.inline_io_now(),
                "a slow operation pauses inline operations"
            );
            let get = tokio::time::timeout(wait, inline.get(&small));
            assert!(
                !finishes(&get.await),
                "paused: a small get waits for the pool"
            );

            drop(release);
            busy.await.unwrap();
            // With the pool free, both ways agree: whole reads of every size (a large one
            // streams from the file the inline step opened), ranges, metadata-only reads and
            // preconditions.
            let big = Path::from("a/big");
            let big_bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            pooled
                .put(&big, PutPayload::from(big_bytes.clone()))
                .await
                .unwrap();
            for store in [&inline, &pooled] {
                inline.inline.resume();
                let mode = if store.inline_io_now() {
                    "inline"
                } else {
                    "pool"
                };
                assert_eq!(mode == "inline", std::ptr::eq(store, &inline));
                let got = store.get(&big).await.unwrap().bytes().await.unwrap();
                assert_eq!(got.as_ref(), &big_bytes[..], "{mode}");
                let got = store.get(&small).await.unwrap().bytes().await.unwrap();
                assert_eq!(got.as_ref(), b"tiny", "{mode}");
                for range in [10..100u64, 1_000..(1_000 + INLINE_IO + 5)] {
                    let got = store
                        .get_range(&big, range.clone())
                        .await
                        .unwrap_or_else(|e| panic!("{mode}: {range:?}: {e}"));
                    let (a, b) = (range.start as usize, range.end as usize);
                    assert_eq!(got.as_ref(), &big_bytes[a..b], "{mode}: {range:?}");
                }
                let head = store.head(&big).await.unwrap();
                assert_eq!(head.size, big_bytes.len() as u64, "{mode}");
                let refused = store
                    .get_opts(
                        &big,
                        GetOptions {
                            if_match: Some("\"not-the-e-tag\"".into()),
                            ..GetOptions::default()
                        },
                    )
                    .await
                    .unwrap_err();
                assert!(
                    matches!(refused, object_store::Error::Precondition { .. }),
                    "{mode}: {refused}"
                );
            }
            // A FIFO planted under a key is refused at once, not waited on for a writer.
            use std::os::unix::fs::OpenOptionsExt;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                dir.path().join("a/fifo"),
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap();
            // Were the open to wait for a writer, this thread lets it go after a while (so
            // that the test fails instead of hanging).
            let fifo = dir.path().join("a/fifo");
            let writer = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(1_750));
                for _ in 0..40 {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                    let _ = std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                        .open(&fifo);
                }
            });
            for store in [&pooled, &inline] {
                inline.inline.resume();
                let started = std::time::Instant::now();
                let got = store.get(&Path::from("a/fifo")).await;
                assert!(got.is_err(), "a FIFO is not read as a blob");
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(1),
                    "a FIFO is not waited on ({:?})",
                    started.elapsed()
                );
            }
            drop(writer);
        });
    }

    /// A mount below a store's root keeps its small operations off the calling thread; the
    /// root's own mount, mounts elsewhere and names that merely share a prefix do not.
    #[test]
    fn a_mount_below_the_root_is_found_in_mountinfo() {
        let root = std::path::Path::new("/srv/blob store");
        let line =
            |point: &str| format!("36 35 98:0 / {point} rw,noatime master:1 - ext4 /dev/x rw\n");
        let below = line("/srv/blob\\040store/nfs");
        let own = line("/srv/blob\\040store");
        let elsewhere = format!("{}{}", line("/"), line("/srv/blob\\040store-old/x"));
        assert!(inline::mounted_below(&below, root));
        assert!(!inline::mounted_below(&own, root));
        assert!(!inline::mounted_below(&elsewhere, root));
        assert!(inline::mounted_below(&format!("{elsewhere}{below}"), root));
    }

    /// A put through a link below the root (a linked directory on the way, or the key itself a
    /// link) is refused naming the link and writes nothing anywhere; a put into directories
    /// that do not exist yet creates them; an overwrite replaces the file; the e-tag a put
    /// returns is the one a read reports. With the kernel's check and with the walk alike.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn puts_are_confined_with_or_without_openat2() {
        let modes = KernelCheck::hold().await;
        let (_dir, root, outside) = linked_root();
        let inline = ConfinedLocalFileSystem::new(&root).unwrap();
        let pooled = inline.clone().with_inline_io(false);
        for (kernel, store) in [
            (true, &inline),
            (false, &inline),
            (true, &pooled),
            (false, &pooled),
        ] {
            modes.set(kernel);
            // A slow operation of an earlier pass (a busy machine) must not turn inline
            // operations off for this one.
            store.inline.resume();
            let inline = store.inline_io_now();
            let tag = format!("{kernel}-{inline}");
            let kernel = format!("{kernel}, inline: {inline}");
            let key = Path::from(format!("new/{tag}/deep/file"));
            store
                .put(&key, PutPayload::from_static(b"first"))
                .await
                .unwrap();
            let put = store
                .put(&key, PutPayload::from_static(b"second"))
                .await
                .unwrap_or_else(|e| panic!("overwrite (openat2: {kernel}): {e}"));
            let got = store.get(&key).await.unwrap();
            assert_eq!(got.meta.e_tag, put.e_tag, "openat2: {kernel}");
            assert_eq!(got.bytes().await.unwrap().as_ref(), b"second");
            // Only the key's own directory missing (the usual case), and a link just above it.
            let own = Path::from(format!("pkg/own-{tag}/file"));
            store
                .put(&own, PutPayload::from_static(b"own"))
                .await
                .unwrap();
            let got = store.get(&own).await.unwrap();
            assert_eq!(got.bytes().await.unwrap().as_ref(), b"own");
            let err = store
                .put(
                    &Path::from("linked/sub/file"),
                    PutPayload::from_static(b"evil"),
                )
                .await
                .unwrap_err();
            assert!(refusal(&err).is_some(), "openat2: {kernel}: {err}");
            assert!(!outside.join("sub").exists());
            for (key, link) in [("linked/planted", "linked"), ("pkg/file-link", "file-link")] {
                let err = store
                    .put(&Path::from(key), PutPayload::from_static(b"evil"))
                    .await
                    .unwrap_err();
                assert_refused_naming(&err, link, &format!("{key} (openat2: {kernel})"));
            }
            assert_eq!(
                std::fs::read_to_string(outside.join("secret")).unwrap(),
                "secret"
            );
            assert!(!outside.join("planted").exists());
            let mut names: Vec<String> = std::fs::read_dir(root.join("pkg"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert!(
                names.iter().all(|n| !n.contains('#')),
                "nothing staged is left behind: {names:?}"
            );
        }
    }

    /// A rename (how a large download is moved into place) creates the destination's
    /// directories, answers NotFound for a missing source, and refuses a link on either side,
    /// naming it, moving nothing. With the kernel's check and with the walk alike.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn renames_are_confined_with_or_without_openat2() {
        let modes = KernelCheck::hold().await;
        let (_dir, root, outside) = linked_root();
        let store = ConfinedLocalFileSystem::new(&root).unwrap();
        for kernel in [true, false] {
            modes.set(kernel);
            let staged = Path::from(format!("tmp/{kernel}"));
            store
                .put(&staged, PutPayload::from_static(b"download"))
                .await
                .unwrap();
            let target = Path::from(format!("new/{kernel}/deep/file"));
            store.rename(&staged, &target).await.unwrap();
            let got = store.get(&target).await.unwrap();
            assert_eq!(got.bytes().await.unwrap().as_ref(), b"download");
            let missing = store.rename(&staged, &target).await.unwrap_err();
            assert!(
                matches!(missing, object_store::Error::NotFound { .. }),
                "openat2: {kernel}: {missing}"
            );
            // Nothing to move: no directories are made for it.
            let nowhere = Path::from(format!("fresh-{kernel}/sub/file"));
            let missing = store.rename(&staged, &nowhere).await.unwrap_err();
            assert!(
                matches!(missing, object_store::Error::NotFound { .. }),
                "openat2: {kernel}: {missing}"
            );
            assert!(
                !root.join(format!("fresh-{kernel}")).exists(),
                "openat2: {kernel}"
            );
            store
                .put(&staged, PutPayload::from_static(b"download"))
                .await
                .unwrap();
            for (from, to, link) in [
                (staged.to_string(), "linked/planted".to_owned(), "linked"),
                (staged.to_string(), "pkg/file-link".to_owned(), "file-link"),
                (
                    "linked/secret".to_owned(),
                    "pkg/stolen".to_owned(),
                    "linked",
                ),
            ] {
                let err = store
                    .rename(&Path::from(from.as_str()), &Path::from(to.as_str()))
                    .await
                    .unwrap_err();
                assert_refused_naming(&err, link, &format!("{from} -> {to} (openat2: {kernel})"));
            }
            assert!(
                root.join(format!("tmp/{kernel}")).is_file(),
                "nothing moved"
            );
            assert!(!outside.join("planted").exists());
            assert!(!root.join("pkg/stolen").exists());
            assert_eq!(
                std::fs::read_to_string(outside.join("secret")).unwrap(),
                "secret"
            );
            assert!(
                std::fs::symlink_metadata(root.join("pkg/file-link"))
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
        }
    }

    /// A delete removes the file (NotFound for one that is not there) and refuses a link on
    /// the way or in the file's place, naming it, removing nothing outside. With the kernel's
    /// check and with the walk alike.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn deletes_are_confined_with_or_without_openat2() {
        let modes = KernelCheck::hold().await;
        let (_dir, root, outside) = linked_root();
        let store = ConfinedLocalFileSystem::new(&root).unwrap();
        for kernel in [true, false] {
            modes.set(kernel);
            let key = Path::from(format!("pkg/{kernel}"));
            store
                .put(&key, PutPayload::from_static(b"x"))
                .await
                .unwrap();
            store.delete(&key).await.unwrap();
            assert!(!root.join(format!("pkg/{kernel}")).exists());
            let missing = store.delete(&key).await.unwrap_err();
            assert!(
                matches!(missing, object_store::Error::NotFound { .. }),
                "openat2: {kernel}: {missing}"
            );
            for (key, link) in [("linked/secret", "linked"), ("pkg/file-link", "file-link")] {
                let err = store.delete(&Path::from(key)).await.unwrap_err();
                assert_refused_naming(&err, link, &format!("{key} (openat2: {kernel})"));
            }
            assert_eq!(
                std::fs::read_to_string(outside.join("secret")).unwrap(),
                "secret"
            );
            assert!(
                std::fs::symlink_metadata(root.join("pkg/file-link"))
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
        }
    }

    #[test]
    fn a_read_of_more_than_the_file_holds_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        assert_eq!(read_exactly(&mut file, 4).unwrap(), b"0123");
        assert_eq!(read_exactly(&mut file, 6).unwrap(), b"456789");
        let mut file = std::fs::File::open(&path).unwrap();
        let err = read_exactly(&mut file, 11).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("10 of 11"), "{err}");
    }

    #[tokio::test]
    async fn reads_stream_in_large_chunks_and_honour_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfinedLocalFileSystem::new(dir.path()).unwrap();
        let data: Vec<u8> = (0..READ_CHUNK * 2 + 12_345)
            .map(|i| (i % 253) as u8)
            .collect();
        let path = Path::from("pkg/big.bin");
        store
            .put(&path, PutPayload::from(data.clone()))
            .await
            .unwrap();

        let chunks: Vec<bytes::Bytes> = store
            .get(&path)
            .await
            .unwrap()
            .into_stream()
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![READ_CHUNK, READ_CHUNK, 12_345]
        );
        assert_eq!(chunks.concat(), data);

        let options = GetOptions {
            range: Some(GetRange::Bounded(100..READ_CHUNK as u64 + 200)),
            ..GetOptions::default()
        };
        let part = store
            .get_opts(&path, options)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&part[..], &data[100..READ_CHUNK + 200]);

        // Metadata, e-tags and preconditions are the inner store's: a listing's e-tag is the
        // one a get reports, and a get conditioned on it answers "not modified".
        let got = store.get(&path).await.unwrap();
        let listed: Vec<ObjectMeta> = store
            .list(Some(&Path::from("pkg")))
            .map(|m| m.unwrap())
            .collect()
            .await;
        let listed = listed.iter().find(|m| m.location == path).unwrap();
        assert_eq!(got.meta.e_tag, listed.e_tag);
        assert_eq!(got.meta.size, data.len() as u64);
        assert_eq!(got.meta.last_modified, listed.last_modified);
        let again = GetOptions {
            if_none_match: got.meta.e_tag.clone(),
            ..GetOptions::default()
        };
        assert!(matches!(
            store.get_opts(&path, again).await,
            Err(object_store::Error::NotModified { .. })
        ));
        let stale = GetOptions {
            if_match: Some("\"0-0-0\"".into()),
            ..GetOptions::default()
        };
        assert!(matches!(
            store.get_opts(&path, stale).await,
            Err(object_store::Error::Precondition { .. })
        ));
        let head = store.head(&path).await.unwrap();
        assert_eq!(head.e_tag, got.meta.e_tag);
        let head_only = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let headed = store.get_opts(&path, head_only).await.unwrap();
        assert_eq!(headed.meta.size, data.len() as u64);
        assert!(
            headed.bytes().await.unwrap().is_empty(),
            "a head reads nothing"
        );
        let past_the_end = GetOptions {
            range: Some(GetRange::Offset(data.len() as u64 + 1)),
            ..GetOptions::default()
        };
        assert!(store.get_opts(&path, past_the_end).await.is_err());

        // A small blob comes whole in one chunk; a missing one is "not found"; a directory
        // is no blob.
        let small = Path::from("pkg/small.bin");
        store
            .put(&small, PutPayload::from(vec![7u8; 4096]))
            .await
            .unwrap();
        let chunks: Vec<bytes::Bytes> = store
            .get(&small)
            .await
            .unwrap()
            .into_stream()
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert_eq!(chunks, vec![bytes::Bytes::from(vec![7u8; 4096])]);
        assert!(matches!(
            store.get(&Path::from("pkg/none.bin")).await,
            Err(object_store::Error::NotFound { .. })
        ));
        let err = store.get(&Path::from("pkg")).await.unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");

        let empty = Path::from("pkg/empty.bin");
        store.put(&empty, PutPayload::default()).await.unwrap();
        let bytes = store.get(&empty).await.unwrap().bytes().await.unwrap();
        assert!(bytes.is_empty());
    }
}
