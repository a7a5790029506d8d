//! Object keys of blob resources, checked so that none can escape its site's root, and the one
//! mapping from a key to an object path ([`object_path`]); paths beneath a directory resolved
//! without following symbolic links ([`resolve_beneath`]).

use std::path::PathBuf;

use object_store::path::Path;

use crate::domain::error::ResourceError;
use crate::domain::failure::shorten_name;

/// Keys under this prefix belong to the framework (partial downloads); models cannot use them.
pub const RESERVED_PREFIX: &str = ".replicable";

/// Longest blob key, in bytes (the limit of S3 and GCS object names).
pub const MAX_KEY_BYTES: usize = 1024;

/// THE object path of a blob key: what the framework reads, writes, checksums and deletes on
/// every site for a key, and what the application must write its blobs with.
///
/// ```
/// # use replicable_core::blob_key::object_path;
/// let path = object_path("debs/libfoo_1.0~rc1.deb").unwrap();
/// assert_eq!(path.as_ref(), "debs/libfoo_1.0~rc1.deb");
/// // store.put(&path, bytes).await?;   // on the primary, before publishing the record
/// ```
///
/// The key is kept as it is: characters such as `~ # % [ ] ?` and non-ASCII letters
/// (`résumé.pdf`) name the same object on the primary and on every secondary, and a file of
/// a local directory store carries the key as its name. Do **not** build blob paths with
/// `object_store::path::Path::from(key)`: it percent-encodes those characters (`~` becomes
/// `%7E`), so the object it writes is not the one the framework reads, and the blob is
/// reported missing on the primary.
///
/// Refused (as [`ResourceError::Refused`]): an empty key, a key longer than
/// [`MAX_KEY_BYTES`] bytes, an absolute key, a `.` or `..` segment, an empty segment
/// (`a//b`), a backslash, a control character, a last segment ending in `#` and digits (a
/// local directory store reserves those names for its partial writes), and keys under
/// [`RESERVED_PREFIX`].
pub fn object_path(key: &str) -> Result<Path, ResourceError> {
    let refuse = |reason: &str| ResourceError::Refused {
        resource: format!("blob `{}`", shorten_name(key)),
        reason: reason.to_owned(),
    };
    if key.is_empty() {
        return Err(refuse("the key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(refuse(&format!(
            "the key is {} bytes long, longer than {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if key.starts_with('/') {
        return Err(refuse("the key is absolute"));
    }
    if key.contains('\\') {
        return Err(refuse("the key contains a backslash"));
    }
    if key.chars().any(char::is_control) {
        return Err(refuse("the key contains a control character"));
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err(refuse("the key has an empty segment")),
            "." | ".." => return Err(refuse("the key has a `.` or `..` segment")),
            _ => {}
        }
    }
    if key.split('/').next() == Some(RESERVED_PREFIX) {
        return Err(refuse(
            "keys under `.replicable/` are reserved for the framework",
        ));
    }
    if let Some((_, suffix)) = key
        .rsplit('/')
        .next()
        .and_then(|last| last.rsplit_once('#'))
        && !suffix.is_empty()
        && suffix.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(refuse(
            "the last segment ends in `#` and digits, names a local store keeps for partial writes",
        ));
    }
    Path::parse(key).map_err(|e| refuse(&e.to_string()))
}

/// Checks a blob key from a model or an event and turns it into an object path: the same as
/// [`object_path`], under the name the strategies' validation has always used.
pub fn parse_blob_key(key: &str) -> Result<Path, ResourceError> {
    object_path(key)
}

/// The full path of `relative` beneath `root`, refusing it if any existing component below
/// `root` (the final one included) is a symbolic link, so that a link planted inside a site's
/// directory cannot make a read, a write or a removal reach outside it. Components that do not
/// exist yet are accepted (a write creates them as directories). `root` itself may be a link.
///
/// `resource` names what is resolved in the refusal (`ResourceError::Refused`), which names
/// the link. The check looks at each component with `symlink_metadata`; whoever can replace a
/// directory by a link between this check and the use of the path can still race it, so the
/// directory must not be writable by anyone the site does not trust.
pub fn resolve_beneath(
    root: &std::path::Path,
    relative: &std::path::Path,
    resource: &str,
) -> Result<PathBuf, ResourceError> {
    let mut full = root.to_path_buf();
    for component in relative.components() {
        match component {
            std::path::Component::Normal(part) => full.push(part),
            std::path::Component::CurDir => continue,
            _ => {
                return Err(ResourceError::Refused {
                    resource: resource.to_owned(),
                    reason: format!("`{}` is not a relative path", relative.display()),
                });
            }
        }
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&full)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Err(ResourceError::Refused {
                    resource: resource.to_owned(),
                    reason: format!(
                        "`{}` is a symbolic link (to `{}`) inside the site's root `{}`",
                        shorten_name(&full.display().to_string()),
                        shorten_name(&target),
                        shorten_name(&root.display().to_string()),
                    ),
                });
            }
            Ok(_) => {}
            // Not there yet: nothing below it exists either.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(root.join(relative));
            }
            Err(e) => {
                return Err(ResourceError::Io {
                    resource: resource.to_owned(),
                    reason: format!("cannot inspect `{}`: {e}", full.display()),
                });
            }
        }
    }
    Ok(full)
}

/// Checks a repository path from a model or an event: the same rules as blob keys, and no
/// segment may start with `-` (it would read as an option to git).
pub fn parse_repository_path(path: &str) -> Result<std::path::PathBuf, ResourceError> {
    parse_blob_key(path).map_err(|e| match e {
        ResourceError::Refused { reason, .. } => ResourceError::Refused {
            resource: format!("repository `{}`", shorten_name(path)),
            reason,
        },
        other => other,
    })?;
    if path.split('/').any(|segment| segment.starts_with('-')) {
        return Err(ResourceError::Refused {
            resource: format!("repository `{}`", shorten_name(path)),
            reason: "a path segment starts with `-`".into(),
        });
    }
    Ok(std::path::PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_paths_follow_the_key_rules_and_refuse_options() {
        assert_eq!(
            parse_repository_path("group/project.git").unwrap(),
            std::path::PathBuf::from("group/project.git")
        );
        for bad in ["../x.git", "/abs.git", "group/--upload-pack=evil", ""] {
            let err = parse_repository_path(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("repository `"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn keys_keep_their_characters_as_object_paths() {
        for key in [
            "debs/libfoo_1.0~rc1.deb",
            "docs/résumé.pdf",
            "odd/a#b%20c[1]?.bin",
            "漢字/ファイル",
        ] {
            assert_eq!(object_path(key).unwrap().as_ref(), key);
        }
        // The trap `object_path` avoids.
        assert_ne!(
            Path::from("debs/libfoo_1.0~rc1.deb").as_ref(),
            "debs/libfoo_1.0~rc1.deb"
        );
    }

    #[test]
    fn keys_longer_than_1024_bytes_are_refused_and_the_reason_stays_visible() {
        let ok = format!("k/{}", "a".repeat(MAX_KEY_BYTES - 2));
        assert!(object_path(&ok).is_ok());
        let long = format!("k/{}", "a".repeat(MAX_KEY_BYTES - 1));
        let err = object_path(&long).unwrap_err();
        assert!(matches!(err, ResourceError::Refused { .. }));
        let text = crate::domain::failure::truncate_failure(&err.to_string());
        assert!(text.contains("longer than 1024"), "{text}");
        // Non-ASCII counts in bytes.
        assert!(object_path(&"é".repeat(513)).is_err());
    }

    #[test]
    fn local_partial_write_names_are_refused() {
        assert!(object_path("a/file#123").is_err());
        assert!(object_path("a/file#12a").is_ok());
        assert!(object_path("a#1/file").is_ok());
    }

    #[test]
    fn resolve_beneath_refuses_links_below_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("pkg")).unwrap();
        let ok = resolve_beneath(&root, std::path::Path::new("real/a/b"), "x").unwrap();
        assert_eq!(ok, root.join("real/a/b"));
        let err = resolve_beneath(&root, std::path::Path::new("pkg/file"), "blob `pkg/file`")
            .unwrap_err();
        let ResourceError::Refused { resource, reason } = &err else {
            panic!("{err}");
        };
        assert_eq!(resource, "blob `pkg/file`");
        assert!(reason.contains("symbolic link"), "{reason}");
        assert!(
            reason.contains("outside"),
            "names the link's target: {reason}"
        );
        // A link as the last component too.
        std::os::unix::fs::symlink(outside.join("f"), root.join("real/f")).unwrap();
        assert!(resolve_beneath(&root, std::path::Path::new("real/f"), "x").is_err());
    }

    #[test]
    fn ordinary_keys_are_accepted() {
        assert_eq!(
            parse_blob_key("pkg/1/file.tgz").unwrap().as_ref(),
            "pkg/1/file.tgz"
        );
        assert_eq!(parse_blob_key("a").unwrap().as_ref(), "a");
        assert_eq!(parse_blob_key("x/..y/z..").unwrap().as_ref(), "x/..y/z..");
    }

    #[test]
    fn escaping_and_degenerate_keys_are_refused() {
        for (key, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../secret", "`..`"),
            ("a/../../b", "`..`"),
            ("a/./b", "`.`"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("a\\..\\b", "backslash"),
            ("a\nb", "control"),
            (".replicable/tmp/x", "reserved"),
        ] {
            let err = parse_blob_key(key).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(why), "{key:?}: {text}");
            assert!(matches!(err, ResourceError::Refused { .. }));
        }
    }
}
