//! Test kit for privileged runtime tests: the shared kit (`hull-testkit`).
#![allow(dead_code, unused_imports)]

pub use hull_testkit::{
    RuntimeKit as Kit, assert_host_clean as assert_clean, guest_binary, privileged,
};
