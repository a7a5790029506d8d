//! Object keys of blob resources, checked so that none can escape its site's root.

use object_store::path::Path;

use crate::error::ResourceError;

/// Keys under this prefix belong to the framework (partial downloads); models cannot use them.
pub const RESERVED_PREFIX: &str = ".replicable";

/// Checks a blob key from a model or an event and turns it into an object path.
///
/// Refused: an empty key, an absolute key, a `.` or `..` segment, an empty segment (`a//b`),
/// a backslash, a control character, and keys under [`RESERVED_PREFIX`].
pub fn parse_blob_key(key: &str) -> Result<Path, ResourceError> {
    let refuse = |reason: &str| ResourceError::Refused {
        resource: format!("blob `{key}`"),
        reason: reason.to_owned(),
    };
    if key.is_empty() {
        return Err(refuse("the key is empty"));
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
    Path::parse(key).map_err(|e| refuse(&e.to_string()))
}

/// Checks a repository path from a model or an event: the same rules as blob keys, and no
/// segment may start with `-` (it would read as an option to git).
pub fn parse_repository_path(path: &str) -> Result<std::path::PathBuf, ResourceError> {
    parse_blob_key(path).map_err(|e| match e {
        ResourceError::Refused { reason, .. } => ResourceError::Refused {
            resource: format!("repository `{path}`"),
            reason,
        },
        other => other,
    })?;
    if path.split('/').any(|segment| segment.starts_with('-')) {
        return Err(ResourceError::Refused {
            resource: format!("repository `{path}`"),
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
