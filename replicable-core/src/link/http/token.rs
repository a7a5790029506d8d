//! The tokens of the HTTP link: HS256 JWTs signed with a secret shared by the primary and one
//! secondary, valid about a minute, whose claims name the secondary and scope it to exactly one
//! request.
//!
//! The secondary's name travels as the token's `kid` header, so that the primary knows whose
//! secret to check the signature with; the `sub` claim must name the same secondary.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// How long a token is valid after it is made.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// The longest lifetime (`exp - iat`) the primary accepts: a token made for longer is refused.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(120);

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// A secret shared by the primary and one secondary. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecret(Vec<u8>);

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

/// A secret could not be read or is too weak.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Too short.
    #[error("the shared secret {source_name} is {len} bytes; at least {MIN_SECRET_LEN} are needed")]
    TooShort {
        /// Where it came from.
        source_name: String,
        /// Its length.
        len: usize,
    },
    /// Not there.
    #[error("the shared secret {source_name} is not set")]
    Missing {
        /// Where it was looked for.
        source_name: String,
    },
    /// Unreadable.
    #[error("cannot read the shared secret {source_name}: {reason}")]
    Unreadable {
        /// Where it came from.
        source_name: String,
        /// Why.
        reason: String,
    },
}

impl SharedSecret {
    /// A secret of the given bytes (at least [`MIN_SECRET_LEN`]); `source_name` says where it
    /// came from in the error.
    pub fn new(bytes: impl Into<Vec<u8>>, source_name: &str) -> Result<Self, SecretError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                source_name: source_name.to_owned(),
                len: bytes.len(),
            });
        }
        Ok(Self(bytes))
    }

    /// The secret in environment variable `var` (surrounding whitespace removed).
    pub fn from_env(var: &str) -> Result<Self, SecretError> {
        let source_name = format!("in ${var}");
        let value = std::env::var(var).map_err(|_| SecretError::Missing {
            source_name: source_name.clone(),
        })?;
        Self::new(value.trim().as_bytes(), &source_name)
    }

    /// The secret in the file at `path` (surrounding whitespace removed).
    pub fn from_file(path: &std::path::Path) -> Result<Self, SecretError> {
        let source_name = format!("in {}", path.display());
        let value = std::fs::read(path).map_err(|e| SecretError::Unreadable {
            source_name: source_name.clone(),
            reason: e.to_string(),
        })?;
        Self::new(value.trim_ascii(), &source_name)
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What one token allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    /// Reading the event log (events after a cursor, the newest id).
    Events,
    /// Listing the record ids of one replicable.
    Ids {
        /// The replicable.
        replicable: String,
    },
    /// Reading one record.
    Record {
        /// The replicable.
        replicable: String,
        /// The record's id.
        id: i64,
    },
    /// Reading one record's verification row.
    Verification {
        /// The replicable.
        replicable: String,
        /// The record's id.
        id: i64,
    },
    /// Reading the records of these ids (a claimed batch's).
    Records {
        /// The replicable.
        replicable: String,
        /// The records' ids, in the order of the request.
        ids: Vec<i64>,
    },
    /// Reading the verification rows of these ids.
    Verifications {
        /// The replicable.
        replicable: String,
        /// The records' ids, in the order of the request.
        ids: Vec<i64>,
    },
    /// Reading one blob of one record.
    Blob {
        /// The replicable.
        replicable: String,
        /// The record's id.
        id: i64,
        /// The blob's key.
        key: String,
    },
    /// Fetching one repository of one record.
    Repository {
        /// The replicable.
        replicable: String,
        /// The record's id.
        id: i64,
        /// The repository's path.
        path: String,
    },
    /// Reporting the secondary's status.
    Status,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Events => f.write_str("the event log"),
            Self::Ids { replicable } => write!(f, "the ids of {replicable}"),
            Self::Record { replicable, id } => write!(f, "{replicable} {id}"),
            Self::Verification { replicable, id } => {
                write!(f, "the checksum of {replicable} {id}")
            }
            Self::Records { replicable, ids } => write!(f, "{} {replicable} records", ids.len()),
            Self::Verifications { replicable, ids } => {
                write!(f, "the checksums of {} {replicable} records", ids.len())
            }
            Self::Blob {
                replicable,
                id,
                key,
                ..
            } => write!(
                f,
                "blob `{}` of {replicable} {id}",
                crate::domain::failure::shorten_name(key)
            ),
            Self::Repository {
                replicable,
                id,
                path,
            } => write!(
                f,
                "repository `{}` of {replicable} {id}",
                crate::domain::failure::shorten_name(path)
            ),
            Self::Status => f.write_str("the status report"),
        }
    }
}

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The secondary's name.
    pub sub: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
    /// What the token allows.
    pub scope: Scope,
}

fn epoch_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Makes the token of `secondary` for `scope`, valid [`TOKEN_LIFETIME`] from now.
pub fn sign(secondary: &str, secret: &SharedSecret, scope: Scope) -> Result<String, String> {
    sign_at(secondary, secret, scope, epoch_seconds(), TOKEN_LIFETIME)
}

/// Makes a token issued at `iat` (seconds since the epoch) and valid `lifetime`: for tests of
/// expiry and clock skew.
pub fn sign_at(
    secondary: &str,
    secret: &SharedSecret,
    scope: Scope,
    iat: u64,
    lifetime: Duration,
) -> Result<String, String> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(secondary.to_owned());
    let claims = Claims {
        sub: secondary.to_owned(),
        iat,
        exp: iat + lifetime.as_secs(),
        scope,
    };
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret.bytes()))
        .map_err(|e| e.to_string())
}

/// Why a token was refused. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No `Authorization: Bearer` header.
    #[error("no token")]
    Missing,
    /// Not a token, a token of an unknown secondary, or a wrong signature.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Expired (beyond the leeway) or issued in the future (beyond the leeway).
    #[error("expired token of secondary `{0}`")]
    Expired(String),
    /// Valid, but for something else.
    #[error("the token of secondary `{secondary}` is for {granted}, not for {asked}")]
    WrongScope {
        /// The secondary.
        secondary: String,
        /// What the token allows.
        granted: String,
        /// What was asked.
        asked: String,
    },
}

impl TokenRefusal {
    /// 401 for a missing, invalid or expired token; 403 for a valid token of the wrong scope.
    pub fn status(&self) -> u16 {
        match self {
            Self::WrongScope { .. } => 403,
            _ => 401,
        }
    }
}

/// Checks a token against the secrets of the known secondaries, at `now` (seconds since the
/// epoch) with `leeway` of clock skew either way, for `scope`. Returns the secondary's name.
pub fn verify(
    token: &str,
    secret_of: impl Fn(&str) -> Option<SharedSecret>,
    scope: &Scope,
    now: u64,
    leeway: Duration,
) -> Result<String, TokenRefusal> {
    let (secondary, claims) = verify_signed(token, secret_of, now, leeway)?;
    if &claims.scope != scope {
        return Err(TokenRefusal::WrongScope {
            secondary,
            granted: claims.scope.to_string(),
            asked: scope.to_string(),
        });
    }
    Ok(secondary)
}

/// Checks everything of `token` but its scope: signed by a known secondary's secret, HS256,
/// within its lifetime at `now`. Returns the secondary's name. The primary's API checks this
/// before it reads anything of a request (its path, query or body), and the scope once it
/// has.
pub fn verify_identity(
    token: &str,
    secret_of: impl Fn(&str) -> Option<SharedSecret>,
    now: u64,
    leeway: Duration,
) -> Result<String, TokenRefusal> {
    verify_signed(token, secret_of, now, leeway).map(|(secondary, _)| secondary)
}

fn verify_signed(
    token: &str,
    secret_of: impl Fn(&str) -> Option<SharedSecret>,
    now: u64,
    leeway: Duration,
) -> Result<(String, Claims), TokenRefusal> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| TokenRefusal::Invalid(e.to_string()))?;
    if header.alg != Algorithm::HS256 {
        return Err(TokenRefusal::Invalid(format!(
            "algorithm {:?} is not HS256",
            header.alg
        )));
    }
    let secondary = header
        .kid
        .ok_or_else(|| TokenRefusal::Invalid("no `kid` naming the secondary".into()))?;
    let secret = secret_of(&secondary).ok_or_else(|| {
        TokenRefusal::Invalid(format!(
            "unknown secondary `{}`",
            crate::domain::failure::shorten_name(&secondary)
        ))
    })?;
    // Expiry is checked here against `now`, with the leeway, rather than by the library's
    // own clock.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "iat", "sub"]);
    validation.sub = Some(secondary.clone());
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.bytes()),
        &validation,
    )
    .map_err(|e| TokenRefusal::Invalid(format!("secondary `{secondary}`: {e}")))?;
    let claims = data.claims;
    let leeway = leeway.as_secs();
    if claims.exp.saturating_add(leeway) < now
        || claims.iat > now.saturating_add(leeway)
        || claims.exp < claims.iat
    {
        return Err(TokenRefusal::Expired(secondary));
    }
    if claims.exp - claims.iat > MAX_TOKEN_LIFETIME.as_secs() {
        return Err(TokenRefusal::Invalid(format!(
            "secondary `{secondary}`: a token may live at most {} s",
            MAX_TOKEN_LIFETIME.as_secs()
        )));
    }
    Ok((secondary, claims))
}

/// [`verify_identity`] at the current time.
pub fn verify_identity_now(
    token: &str,
    secret_of: impl Fn(&str) -> Option<SharedSecret>,
    leeway: Duration,
) -> Result<String, TokenRefusal> {
    verify_identity(token, secret_of, epoch_seconds(), leeway)
}

/// [`verify`] at the current time.
pub fn verify_now(
    token: &str,
    secret_of: impl Fn(&str) -> Option<SharedSecret>,
    scope: &Scope,
    leeway: Duration,
) -> Result<String, TokenRefusal> {
    verify(token, secret_of, scope, epoch_seconds(), leeway)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(c: u8) -> SharedSecret {
        SharedSecret::new(vec![c; 32], "test").unwrap()
    }

    const NOW: u64 = 1_800_000_000;
    const LEEWAY: Duration = Duration::from_secs(10);

    fn check(token: &str, scope: &Scope) -> Result<String, TokenRefusal> {
        verify(
            token,
            |name| (name == "s1").then(|| secret(1)),
            scope,
            NOW,
            LEEWAY,
        )
    }

    #[test]
    fn a_fresh_token_of_the_right_scope_passes() {
        let t = sign_at("s1", &secret(1), Scope::Events, NOW, TOKEN_LIFETIME).unwrap();
        assert_eq!(check(&t, &Scope::Events).unwrap(), "s1");
    }

    #[test]
    fn identity_is_checked_without_the_scope() {
        let identify = |token: &str| {
            verify_identity(token, |name| (name == "s1").then(|| secret(1)), NOW, LEEWAY)
        };
        let status = sign_at("s1", &secret(1), Scope::Status, NOW, TOKEN_LIFETIME).unwrap();
        assert_eq!(identify(&status).unwrap(), "s1");
        let wrong = sign_at("s1", &secret(2), Scope::Status, NOW, TOKEN_LIFETIME).unwrap();
        assert!(matches!(identify(&wrong), Err(TokenRefusal::Invalid(_))));
        let old = sign_at("s1", &secret(1), Scope::Status, NOW - 71, TOKEN_LIFETIME).unwrap();
        assert_eq!(identify(&old), Err(TokenRefusal::Expired("s1".into())));
        assert!(matches!(
            identify("not a token"),
            Err(TokenRefusal::Invalid(_))
        ));
    }

    #[test]
    fn wrong_secret_unknown_secondary_expired_and_future_tokens_are_refused() {
        let wrong = sign_at("s1", &secret(2), Scope::Events, NOW, TOKEN_LIFETIME).unwrap();
        assert!(matches!(
            check(&wrong, &Scope::Events),
            Err(TokenRefusal::Invalid(_))
        ));
        let unknown = sign_at("s9", &secret(1), Scope::Events, NOW, TOKEN_LIFETIME).unwrap();
        assert!(matches!(
            check(&unknown, &Scope::Events),
            Err(TokenRefusal::Invalid(m)) if m.contains("unknown secondary")
        ));
        // Expired 11 s ago: past the 10 s leeway. Expired 9 s ago: within it.
        let old = sign_at("s1", &secret(1), Scope::Events, NOW - 71, TOKEN_LIFETIME).unwrap();
        assert_eq!(
            check(&old, &Scope::Events),
            Err(TokenRefusal::Expired("s1".into()))
        );
        let skewed = sign_at("s1", &secret(1), Scope::Events, NOW - 69, TOKEN_LIFETIME).unwrap();
        assert!(check(&skewed, &Scope::Events).is_ok());
        let future = sign_at("s1", &secret(1), Scope::Events, NOW + 11, TOKEN_LIFETIME).unwrap();
        assert!(matches!(
            check(&future, &Scope::Events),
            Err(TokenRefusal::Expired(_))
        ));
        let long = sign_at(
            "s1",
            &secret(1),
            Scope::Events,
            NOW,
            Duration::from_secs(3600),
        )
        .unwrap();
        assert!(matches!(
            check(&long, &Scope::Events),
            Err(TokenRefusal::Invalid(m)) if m.contains("at most")
        ));
        assert!(matches!(
            check("not.a.token", &Scope::Events),
            Err(TokenRefusal::Invalid(_))
        ));
    }

    #[test]
    fn a_token_is_for_exactly_one_record() {
        let scope = |id| Scope::Blob {
            replicable: "upload".into(),
            id,
            key: "a/b".into(),
        };
        let t = sign_at("s1", &secret(1), scope(1), NOW, TOKEN_LIFETIME).unwrap();
        assert!(check(&t, &scope(1)).is_ok());
        let refused = check(&t, &scope(2)).unwrap_err();
        assert_eq!(refused.status(), 403);
        assert!(refused.to_string().contains("upload 1"), "{refused}");
    }

    #[test]
    fn short_secrets_are_refused_and_never_shown() {
        assert!(matches!(
            SharedSecret::new(b"short".to_vec(), "x"),
            Err(SecretError::TooShort { len: 5, .. })
        ));
        assert_eq!(format!("{:?}", secret(7)), "SharedSecret(..)");
    }
}
