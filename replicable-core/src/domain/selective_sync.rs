//! Selective sync: which records a secondary replicates.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::Replicable;

type Rule = Arc<dyn Fn(&serde_json::Value) -> bool + Send + Sync>;

/// The records a secondary replicates: everything, unless a rule is set for a replicable.
///
/// ```ignore
/// let scope = SelectiveSync::all()
///     .only::<PackageFile>(|file| file.file_path.starts_with("eu/"));
/// ```
#[derive(Clone, Default)]
pub struct SelectiveSync {
    rules: HashMap<&'static str, Rule>,
}

impl std::fmt::Debug for SelectiveSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.rules.keys().collect();
        names.sort();
        f.debug_struct("SelectiveSync")
            .field("restricted", &names)
            .finish()
    }
}

impl SelectiveSync {
    /// Replicate every record.
    pub fn all() -> Self {
        Self::default()
    }

    /// Replicate only the records of `M` for which `include` is true. A record that does not
    /// decode as `M` is out of scope.
    pub fn only<M: Replicable>(
        mut self,
        include: impl Fn(&M) -> bool + Send + Sync + 'static,
    ) -> Self {
        let rule: Rule = Arc::new(move |body| {
            serde_json::from_value::<M>(body.clone()).is_ok_and(|record| include(&record))
        });
        self.rules.insert(M::REPLICABLE_NAME, rule);
        self
    }

    /// Whether the record (serialized) of replicable `name` is in scope.
    pub fn includes(&self, name: &str, body: &serde_json::Value) -> bool {
        self.rules.get(name).is_none_or(|rule| rule(body))
    }

    /// Whether replicable `name` has a rule.
    pub fn is_restricted(&self, name: &str) -> bool {
        self.rules.contains_key(name)
    }
}
