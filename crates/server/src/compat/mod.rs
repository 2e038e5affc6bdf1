//! Compatibility adapters: other runtimes' wire protocols served over
//! hull's runtime, each a thin translator onto the same `Runtime` calls the
//! REST API makes.

pub(crate) mod e2b;
pub(crate) mod swerex;
