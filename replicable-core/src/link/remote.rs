//! Where `git fetch` reads a repository from, and the settings of that one git command.

/// What a secondary's `git fetch` / `git clone` of a primary's repository is given: the remote
/// and the environment of that one command. Settings such as an authorization header travel as
/// git configuration in the environment (`GIT_CONFIG_COUNT`, `GIT_CONFIG_KEY_n`,
/// `GIT_CONFIG_VALUE_n`), never in the URL and never on disk. `Debug` never shows their values.
#[derive(Clone, PartialEq, Eq)]
pub struct RepositoryRemote {
    /// A URL or an absolute path.
    pub url: String,
    /// Git settings (`key`, `value`) for the one command.
    pub git_config: Vec<(String, String)>,
    /// Further environment variables of the one command (for settings an inherited variable
    /// would override, such as `GIT_SSL_CAINFO`).
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for RepositoryRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.git_config.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("RepositoryRemote")
            .field("url", &self.url)
            .field("git_config", &keys)
            .field("env", &self.env)
            .finish()
    }
}

impl RepositoryRemote {
    /// A remote that needs no settings (a local path).
    pub fn plain(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            git_config: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The environment variables that give git [`Self::git_config`] and [`Self::env`].
    pub fn git_env(&self) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        if self.git_config.is_empty() {
            return env;
        }
        env.push((
            "GIT_CONFIG_COUNT".to_owned(),
            self.git_config.len().to_string(),
        ));
        for (i, (key, value)) in self.git_config.iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}"), key.clone()));
            env.push((format!("GIT_CONFIG_VALUE_{i}"), value.clone()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_numbered_variables_and_never_show_in_debug() {
        let remote = RepositoryRemote {
            url: "https://primary/v1/git/p/1/a.git".into(),
            git_config: vec![
                (
                    "http.extraHeader".into(),
                    "Authorization: Bearer SECRET".into(),
                ),
                ("http.followRedirects".into(), "false".into()),
            ],
            env: Vec::new(),
        };
        let env = remote.git_env();
        assert_eq!(env.len(), 5);
        assert_eq!(env[0], ("GIT_CONFIG_COUNT".into(), "2".into()));
        assert_eq!(
            env[1],
            ("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into())
        );
        assert_eq!(env[4], ("GIT_CONFIG_VALUE_1".into(), "false".into()));
        assert!(!format!("{remote:?}").contains("SECRET"));
        assert!(RepositoryRemote::plain("/x").git_env().is_empty());
    }
}
