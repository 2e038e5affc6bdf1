//! The only crate with raw system calls and `unsafe`: namespaces, mounts,
//! cgroups, seccomp, capabilities, PTYs. Each `unsafe` block carries a
//! `// SAFETY:` comment. Everything above this crate is `forbid(unsafe_code)`.
#![allow(unsafe_code)]

pub mod caps;
pub mod cgroup;
pub mod mount;
pub mod net;
pub mod ns;
pub mod process;
pub mod pty;
pub mod seccomp;
