//! The errors of the runtime.

use crate::domain::event::EventKind;
use crate::domain::transition::IllegalTransition;

/// A storage backend failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened.
    #[error("cannot open store {url}: {reason}")]
    Open {
        /// The store's URL (credentials removed).
        url: String,
        /// Why.
        reason: String,
    },
    /// The store's schema is newer than this build understands.
    #[error(
        "store {url} has schema version {found}, newer than the {supported} this build knows: upgrade the binary"
    )]
    SchemaTooNew {
        /// The store's URL.
        url: String,
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// An operation failed.
    #[error("{operation} failed on {store}: {reason}")]
    Backend {
        /// Which store.
        store: String,
        /// What was being done.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// A stored value could not be read back.
    #[error("corrupt row in {store}: {reason}")]
    Corrupt {
        /// Which store.
        store: String,
        /// What is wrong.
        reason: String,
    },
}

/// A resource operation (copy, checksum, removal) failed.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// The resource does not exist.
    #[error("{resource} does not exist")]
    Missing {
        /// Which resource.
        resource: String,
    },
    /// The resource's location is refused (it would escape the site's root, or is empty).
    #[error("{resource} is refused: {reason}")]
    Refused {
        /// Which resource.
        resource: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing the resource failed.
    #[error("{resource}: {reason}")]
    Io {
        /// Which resource.
        resource: String,
        /// What went wrong.
        reason: String,
    },
}

/// The secondary could not reach the primary, or the primary refused.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The primary has no such thing.
    #[error("not found on the primary: {what}")]
    NotFound {
        /// What was asked for.
        what: String,
    },
    /// The primary refused the request.
    #[error("the primary refused {what}: {reason}")]
    Refused {
        /// What was asked for.
        what: String,
        /// Why.
        reason: String,
    },
    /// Transport or primary-side failure.
    #[error("reading {what} from the primary failed: {reason}")]
    Failed {
        /// What was asked for.
        what: String,
        /// Why.
        reason: String,
    },
}

/// A replicator operation failed. Every variant names the record.
#[derive(Debug, thiserror::Error)]
pub enum ReplicatorError {
    /// The strategy does not produce or accept this event.
    #[error("{replicable} uses {strategy}, which does not support `{event}` events")]
    UnsupportedEvent {
        /// The replicable's name.
        replicable: &'static str,
        /// The strategy's name.
        strategy: &'static str,
        /// The event kind.
        event: EventKind,
    },
    /// The operation needs the other kind of site.
    #[error("{operation} of {replicable} {id} needs a {needs} site, and `{site}` is not one")]
    WrongSite {
        /// What was asked.
        operation: &'static str,
        /// The replicable's name.
        replicable: &'static str,
        /// The record's id.
        id: i64,
        /// `"primary"` or `"secondary"`.
        needs: &'static str,
        /// The site's name.
        site: String,
    },
    /// The event is about another replicable or record than the replicator's.
    #[error("event {event_id} is about {event_replicable} {event_id_of}, not {replicable} {id}")]
    WrongEvent {
        /// The event's id.
        event_id: i64,
        /// The event's replicable.
        event_replicable: String,
        /// The event's record id.
        event_id_of: i64,
        /// The replicator's replicable.
        replicable: &'static str,
        /// The replicator's record id.
        id: i64,
    },
    /// A stored record could not be decoded as the model.
    #[error("{replicable} {id}: stored record does not decode: {reason}")]
    Decode {
        /// The replicable's name.
        replicable: &'static str,
        /// The record's id.
        id: i64,
        /// Why.
        reason: String,
    },
    /// A storage backend failed.
    #[error("{replicable} {id}: {source}")]
    Store {
        /// The replicable's name.
        replicable: &'static str,
        /// The record's id.
        id: i64,
        /// The failure.
        source: StoreError,
    },
    /// The primary could not be read.
    #[error("{replicable} {id}: {source}")]
    Link {
        /// The replicable's name.
        replicable: &'static str,
        /// The record's id.
        id: i64,
        /// The failure.
        source: LinkError,
    },
    /// The resource could not be read or written.
    #[error("{replicable} {id}: {source}")]
    Resource {
        /// The replicable's name.
        replicable: &'static str,
        /// The record's id.
        id: i64,
        /// The failure.
        source: ResourceError,
    },
    /// The state machine refused a change.
    #[error("{replicable} {id}: {source}")]
    Transition {
        /// The replicable's name.
        replicable: &'static str,
        /// The record's id.
        id: i64,
        /// The refused change.
        source: IllegalTransition,
    },
    /// A batch publish could not be stored; nothing of it was written. (A record that cannot
    /// be published at all, such as one whose resource is refused, fails the batch with the
    /// error naming that record instead.)
    #[error(
        "publishing a batch of {count} {replicable} records (the first {first_id}) failed: {source}"
    )]
    Batch {
        /// The replicable's name.
        replicable: &'static str,
        /// How many records the batch held.
        count: usize,
        /// The id of the batch's first record.
        first_id: i64,
        /// The failure.
        source: StoreError,
    },
    /// No registry row exists for the record.
    #[error("{replicable} {id} has no registry row on this site")]
    NotRegistered {
        /// The replicable's name.
        replicable: &'static str,
        /// The record's id.
        id: i64,
    },
}
