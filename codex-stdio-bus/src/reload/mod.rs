//! Hot reload and rolling restarts (issue 16): re-reading the config file the daemon started with
//! and applying the difference without dropping clients.

#[allow(dead_code)] // used by the reload orchestration (issue 16)
pub(crate) mod plan;
