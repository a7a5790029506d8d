//! Selective sync: which records a secondary replicates. Rules are built from models with
//! `SelectiveSync::only`, defined next to the `Replicable` trait (the layer that knows models).

use std::collections::HashMap;
use std::sync::Arc;

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

    /// Adds the rule of replicable `name` (what [`SelectiveSync::only`] builds from a typed
    /// predicate).
    pub(crate) fn with_rule(
        mut self,
        name: &'static str,
        include: impl Fn(&serde_json::Value) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.rules.insert(name, Arc::new(include));
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
