//! Failure texts stored in registry and verification rows.

/// Longest failure text a row keeps, in characters (the column is `varchar(255)`).
pub const MAX_FAILURE_LEN: usize = 255;

/// What a cut failure text ends with.
pub const CUT_MARK: &str = "...";

/// Longest resource name (a blob key, a repository path) a failure text shows whole; longer
/// names are shortened by [`shorten_name`] so that the reason after them still fits in
/// [`MAX_FAILURE_LEN`].
pub const MAX_NAME_LEN: usize = 80;

/// Cuts a failure text to [`MAX_FAILURE_LEN`] characters, never splitting a character. A cut
/// text ends with [`CUT_MARK`] (within the limit), so a reader knows there was more.
pub fn truncate_failure(message: &str) -> String {
    if message.chars().count() <= MAX_FAILURE_LEN {
        return message.to_owned();
    }
    let keep = MAX_FAILURE_LEN - CUT_MARK.len();
    let cut = message
        .char_indices()
        .nth(keep)
        .map_or(message.len(), |(i, _)| i);
    format!("{}{CUT_MARK}", &message[..cut])
}

/// A resource name as failure texts show it: whole up to [`MAX_NAME_LEN`] characters, otherwise
/// its beginning and its end around `...`, so that a very long key or path leaves room for
/// the reason of the failure.
pub fn shorten_name(name: &str) -> String {
    let count = name.chars().count();
    if count <= MAX_NAME_LEN {
        return name.to_owned();
    }
    let head = (MAX_NAME_LEN - CUT_MARK.len()) / 2;
    let tail = MAX_NAME_LEN - CUT_MARK.len() - head;
    let start: String = name.chars().take(head).collect();
    let end: String = name.chars().skip(count - tail).collect();
    format!("{start}{CUT_MARK}{end}")
}

/// Why a sync failed, as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFailure {
    /// What went wrong, for an operator.
    pub message: String,
    /// The resource does not exist on the primary: retried on the longer cap, since only a change
    /// on the primary can heal it.
    pub missing_on_primary: bool,
    /// The sync was overtaken (the record changed, was deleted, or another attempt took the row
    /// while it ran): its staged copy was discarded and nothing became visible. Not a failure of
    /// the resource: the row is not failed for it.
    pub overtaken: bool,
}

impl SyncFailure {
    /// An ordinary failure.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            missing_on_primary: false,
            overtaken: false,
        }
    }

    /// A failure because the resource is missing on the primary.
    pub fn missing_on_primary(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            missing_on_primary: true,
            overtaken: false,
        }
    }

    /// The sync was overtaken before its copy became visible (what a strategy's sync request
    /// reports through `SyncRequest::ensure_current`).
    pub fn overtaken(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            missing_on_primary: false,
            overtaken: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole() {
        assert_eq!(truncate_failure("boom"), "boom");
        let exact = "x".repeat(MAX_FAILURE_LEN);
        assert_eq!(truncate_failure(&exact), exact);
    }

    #[test]
    fn long_text_is_cut_to_255_characters_ending_with_dots() {
        let long = "y".repeat(1000);
        let cut = truncate_failure(&long);
        assert_eq!(cut.chars().count(), MAX_FAILURE_LEN);
        assert!(cut.ends_with("y..."), "{cut}");
        let just_over = "z".repeat(MAX_FAILURE_LEN + 1);
        assert!(truncate_failure(&just_over).ends_with("..."));
    }

    #[test]
    fn multibyte_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(300);
        let cut = truncate_failure(&long);
        assert_eq!(cut.chars().count(), MAX_FAILURE_LEN);
        assert_eq!(cut.len(), (MAX_FAILURE_LEN - 3) * 2 + 3);
    }

    #[test]
    fn a_400_character_repository_path_still_leaves_the_reason_visible() {
        let path = format!("{}/project.git", "deep/".repeat(78));
        assert!(path.chars().count() > 400);
        let message = format!(
            "repository `{}` is missing on the primary",
            shorten_name(&path)
        );
        let stored = truncate_failure(&message);
        assert!(stored.ends_with("is missing on the primary"), "{stored}");
        assert!(
            stored.contains("project.git"),
            "the name's end is kept: {stored}"
        );
        assert_eq!(shorten_name(&path).chars().count(), MAX_NAME_LEN);
        assert_eq!(shorten_name("short/name.git"), "short/name.git");
    }
}
