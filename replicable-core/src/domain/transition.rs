//! The error for a state change the state machines do not allow.

/// A state change that is not allowed from the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} a {machine} in state `{from}`")]
pub struct IllegalTransition {
    /// Which state machine: `"registry"` or `"verification"`.
    pub machine: &'static str,
    /// The state the row was in.
    pub from: &'static str,
    /// The transition that was asked for.
    pub event: &'static str,
}
