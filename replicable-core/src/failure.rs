//! Failure texts stored in registry and verification rows.

/// Longest failure text a row keeps, in characters (the column is `varchar(255)`).
pub const MAX_FAILURE_LEN: usize = 255;

/// Cuts a failure text to [`MAX_FAILURE_LEN`] characters, never splitting a character.
pub fn truncate_failure(message: &str) -> String {
    match message.char_indices().nth(MAX_FAILURE_LEN) {
        Some((cut, _)) => message[..cut].to_owned(),
        None => message.to_owned(),
    }
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

    /// The sync was overtaken before its copy became visible (see
    /// [`SyncRequest::ensure_current`](crate::strategy::SyncRequest::ensure_current)).
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
    fn long_text_is_cut_to_255_characters() {
        let long = "y".repeat(1000);
        assert_eq!(truncate_failure(&long).chars().count(), MAX_FAILURE_LEN);
    }

    #[test]
    fn multibyte_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(300);
        let cut = truncate_failure(&long);
        assert_eq!(cut.chars().count(), MAX_FAILURE_LEN);
        assert_eq!(cut.len(), MAX_FAILURE_LEN * 2);
    }
}
