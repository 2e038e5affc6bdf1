//! The network boundary of hull sandboxes: per-sandbox network namespaces
//! wired to the host by pooled veth pairs, nftables rules owned by one
//! daemon instance, an egress proxy that enforces domain allowlists by SNI
//! and `Host` without terminating TLS, a DNS resolver that answers allowed
//! names only, TLS interception with a per-sandbox CA for header (secret)
//! injection, and record/replay of HTTP(S) exchanges.
//!
//! [`rules`] is the contract between those parts: the compiled per-sandbox
//! rules and the registry that maps a sandbox address to them.

#![forbid(unsafe_code)]

pub mod rules;
// Namespaces, veth pool, addresses, nftables, policy compilation (NET-CORE).
pub mod addr;
pub mod link;
pub mod nflog;
pub mod nft;
pub mod policy;
pub mod pool;
// Egress proxy and DNS (PROXY).
pub mod dns;
pub mod http_host;
pub mod proxy;
pub mod resolve;
pub mod sni;
// TLS interception, secret injection, record/replay (MITM).
pub mod ca;
pub mod cassette;
pub mod intercept;

pub use link::NetError;
pub use pool::{NetConfig, NetHost, Slot};
pub use rules::{Denied, EventSink, Mode, Registry, SandboxRules};
