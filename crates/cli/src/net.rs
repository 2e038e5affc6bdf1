//! `hull net show ID`, `hull net set ID POLICY`: a sandbox's network
//! policy (docs/network.md has the grammar), and `hull serve`'s network
//! flags. `--net POLICY` on `run`, `create` and `fork` is parsed with the
//! same grammar (`hull_api::NetworkPolicy`'s string form) before anything
//! is sent, so a typo fails locally with the item named.

use hull_api::{NetworkPolicy, SandboxNetwork};
use hyper::Method;

use crate::client::{Client, enc};

/// `hull serve`'s network flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServeNetFlags {
    /// IPv4 range for sandbox addresses, e.g. 10.200.0.0/20 [default: a
    /// free 10.2xx.x.0/20 no route or other hull daemon uses].
    #[arg(long, value_name = "CIDR")]
    pub net_range: Option<String>,
    /// IPv6 range for sandbox addresses, e.g. fd68:756c::/48.
    #[arg(long, value_name = "CIDR")]
    pub net_range6: Option<String>,
    /// Upstream DNS server (IP:PORT) for hull's resolver [default: the
    /// host's /etc/resolv.conf nameservers].
    #[arg(long, value_name = "ADDR")]
    pub dns: Option<std::net::SocketAddr>,
    /// An extra PEM CA file trusted (besides the system bundle) for the
    /// upstream TLS of connections hull intercepts (header rules,
    /// record/replay), e.g. a test's fake internet.
    #[arg(long, value_name = "FILE", env = "HULL_UPSTREAM_CA")]
    pub upstream_ca: Option<std::path::PathBuf>,
}

/// `hull net ...`.
#[derive(clap::Subcommand)]
pub enum NetCmd {
    /// Print a sandbox's network policy and addresses.
    Show { id: String },
    /// Replace a running sandbox's policy: none, open,
    /// allow:example.com,10.0.0.0/8,... (new connections see it at once).
    Set { id: String, policy: String },
}

/// Parse a `--net` value.
pub fn parse_policy(s: &str) -> anyhow::Result<NetworkPolicy> {
    s.parse::<NetworkPolicy>()
        .map_err(|e| anyhow::anyhow!("--net: {e}"))
}

fn print(n: &SandboxNetwork, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(n)?);
    } else {
        println!("policy     {}", n.summary);
        if !n.addresses.is_empty() {
            println!("addresses  {}", n.addresses.join(" "));
        }
        for h in &n.policy.headers {
            let names: Vec<&str> = h.set.keys().map(String::as_str).collect();
            println!(
                "headers    {}: {} (values hidden)",
                h.domain,
                names.join(", ")
            );
        }
    }
    Ok(())
}

pub async fn net(client: &Client, cmd: NetCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        NetCmd::Show { id } => {
            let n: SandboxNetwork = client
                .call(
                    Method::GET,
                    &format!("/v1/sandboxes/{}/network", enc(&id)),
                    None::<&()>,
                )
                .await?;
            print(&n, json_out)
        }
        NetCmd::Set { id, policy } => {
            let p = policy
                .parse::<NetworkPolicy>()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let n: SandboxNetwork = client
                .call(
                    Method::PUT,
                    &format!("/v1/sandboxes/{}/network", enc(&id)),
                    Some(&p),
                )
                .await?;
            print(&n, json_out)
        }
    }
}
