//! The guest agent, `hull-guest`: PID 1 of every sandbox.
//!
//! Two modes: `init` sets up a container from a plan the host sends (mounts,
//! pivot_root, limits, seccomp) and then serves; `agent` serves on a socket
//! without any setup (used by tests and, later, inside VMs).
#![forbid(unsafe_code)]

pub mod agent;
