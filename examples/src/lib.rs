//! Example application of the replicable framework.
