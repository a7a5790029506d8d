//! Sweeping what crashed syncs left behind.
