//! End-to-end, fault and compile-fail tests of the replicable framework live in `tests/`.
