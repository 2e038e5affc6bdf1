//! hull's DNS server end to end, without the daemon: queries from a
//! sandbox namespace to any address on port 53 are redirected by an nft
//! table of the test's own to the server, which forwards allowed names to a
//! fake upstream in a fake internet namespace (see `fakenet`).
//! Privileged: skips with a message without root, fails under
//! `HULL_TEST_PRIVILEGED=1`.

mod fakenet;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fakenet::*;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hull_net::dns::{DnsConfig, DnsServer, REPLAY_V4, REPLAY_V6};
use hull_net::resolve::Resolver;
use hull_net::{Mode, Registry};

/// Not a real server: the firewall redirects the query to hull's.
const ANY_DNS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);

fn query_bytes(name: &str, ty: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
    m.to_vec().unwrap()
}

/// One query from inside the sandbox, over UDP or TCP.
fn ask(net: &FakeNet, name: &str, ty: RecordType, tcp: bool) -> Message {
    ask_at(net, SocketAddr::new(ANY_DNS.into(), 53), name, ty, tcp)
}

fn ask_at(net: &FakeNet, dst: SocketAddr, name: &str, ty: RecordType, tcp: bool) -> Message {
    let q = query_bytes(name, ty, 0x1234);
    let raw = in_netns(&net.sandbox, move || {
        if tcp {
            let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut out = (q.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&q);
            s.write_all(&out).unwrap();
            let mut lb = [0u8; 2];
            s.read_exact(&mut lb).unwrap();
            let mut b = vec![0u8; usize::from(u16::from_be_bytes(lb))];
            s.read_exact(&mut b).unwrap();
            b
        } else {
            let any: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                .parse()
                .unwrap();
            let s = std::net::UdpSocket::bind(any).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.send_to(&q, dst).unwrap();
            let mut b = vec![0u8; 4096];
            let n = s.recv(&mut b).unwrap();
            b.truncate(n);
            b
        }
    });
    let m = Message::from_vec(&raw).unwrap();
    assert_eq!(m.metadata.id, 0x1234);
    m
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

#[test]
fn dns_answers_by_policy() {
    if !hull_testkit::privileged("dns_answers_by_policy") {
        return;
    }
    {
        let net = FakeNet::new("d");
        let rt = net.host_runtime();
        let registry = Arc::new(Registry::new());
        let set =
            |r: hull_net::SandboxRules| registry.set(&[SB_IP.into(), SB_IP6.into()], Arc::new(r));
        set(rules(
            Mode::Allowlist,
            &["allowed.test", "alias.test", "loopy.test", "v6.test"],
            &[],
        ));
        let sink = Arc::new(Sink::default());
        let servers = rt.block_on(async {
            let servers = start_servers(&net);
            let resolver = Resolver::new(vec![SocketAddr::new(DNS_IP.into(), 53)], Vec::new());
            let dns = DnsServer::new(
                registry.clone(),
                resolver,
                sink.clone(),
                DnsConfig::default(),
            );
            let udp = tokio::net::UdpSocket::bind(("::", DNS_PORT)).await.unwrap();
            let tcp = tokio::net::TcpListener::bind(("::", DNS_PORT))
                .await
                .unwrap();
            tokio::spawn(dns.clone().serve_udp(udp));
            tokio::spawn(dns.serve_tcp(tcp));
            servers
        });

        // Allowed names are forwarded, over UDP and TCP.
        let m = ask(&net, "allowed.test.", RecordType::A, false);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addrs(&m), vec![IpAddr::V4(WEB_A)]);
        let m = ask(&net, "ALLOWED.test.", RecordType::A, true);
        assert_eq!(addrs(&m), vec![IpAddr::V4(WEB_A)]);
        let m = ask(&net, "v6.test.", RecordType::AAAA, false);
        assert_eq!(addrs(&m), vec![IpAddr::V6(WEB_A6)]);
        // Over IPv6 too (the sandbox's IPv6 source is registered as well).
        let v6: SocketAddr = "[2001:db8::99]:53".parse().unwrap();
        let m = ask_at(&net, v6, "allowed.test.", RecordType::A, false);
        assert_eq!(addrs(&m), vec![IpAddr::V4(WEB_A)]);
        let m = ask_at(&net, v6, "allowed.test.", RecordType::A, true);
        assert_eq!(addrs(&m), vec![IpAddr::V4(WEB_A)]);
        // A CNAME answer is relayed whole.
        let m = ask(&net, "alias.test.", RecordType::A, false);
        assert_eq!(addrs(&m), vec![IpAddr::V4(WEB_A)]);
        // Answers pointing at loopback are stripped.
        let m = ask(&net, "loopy.test.", RecordType::A, false);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(addrs(&m).is_empty(), "{m:?}");
        assert!(sink.take().is_empty());

        // Denied names: NXDOMAIN, one event, and the upstream never asked.
        let before = servers.dns_queries.load(Ordering::Relaxed);
        let m = ask(&net, "forbidden.test.", RecordType::A, false);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask(&net, "forbidden.test.", RecordType::AAAA, true);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask(&net, "sub.allowed.test.", RecordType::A, false);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(servers.dns_queries.load(Ordering::Relaxed), before);
        let ev = sink.take();
        let dests: Vec<&str> = ev.iter().map(|(_, d)| d.dest.as_str()).collect();
        assert_eq!(dests, ["forbidden.test", "sub.allowed.test"], "{ev:?}");
        assert!(ev.iter().all(|(id, d)| id == "sb-test" && d.proto == "dns"));

        // A policy change applies to the next query.
        set(rules(Mode::Allowlist, &["forbidden.test"], &[]));
        let m = ask(&net, "forbidden.test.", RecordType::A, false);
        assert_eq!(addrs(&m), vec![IpAddr::V4(WEB_F)]);
        let m = ask(&net, "allowed.test.", RecordType::A, false);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

        // Open: everything is forwarded (the upstream's NXDOMAIN included).
        set(rules(Mode::Open, &[], &[]));
        let m = ask(&net, "other.test.", RecordType::A, false);
        assert_eq!(addrs(&m), vec![IpAddr::V4(WEB_A)]);
        let m = ask(&net, "nosuch.test.", RecordType::A, false);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        sink.take();

        // Replay: synthetic answers, nothing sent upstream.
        set(rules(Mode::Replay, &[], &[]));
        let before = servers.dns_queries.load(Ordering::Relaxed);
        let m = ask(&net, "anything.example.", RecordType::A, false);
        assert_eq!(addrs(&m), vec![IpAddr::V4(REPLAY_V4)]);
        let m = ask(&net, "anything.example.", RecordType::AAAA, true);
        assert_eq!(addrs(&m), vec![IpAddr::V6(REPLAY_V6)]);
        assert_eq!(servers.dns_queries.load(Ordering::Relaxed), before);

        // None: refused.
        set(rules(Mode::None, &[], &[]));
        let m = ask(&net, "allowed.test.", RecordType::A, false);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(sink.take().is_empty());
        drop(rt);
    }
    assert_net_clean("d");
}
