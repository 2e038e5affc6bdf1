//! Secret injection and record/replay through the daemon, against a live
//! HTTPS upstream: a runtime whose resolver asks the fake internet's DNS
//! server (`--dns`) and whose interceptor trusts its test CA
//! (`--upstream-ca`), sandboxes made through the HTTP API, and Python's
//! `urllib` / `http.client` inside them.
//!
//! - `secret_injection_end_to_end`: a header rule for `api.fake.test`
//!   reaches that upstream exactly, over TLS the sandbox verifies with its
//!   own CA; `other.fake.test` (allowed, no rule) is not intercepted (the
//!   sandbox sees the fake server's own certificate, the upstream gets the
//!   sandbox's own header); the secret is in no process's environment or
//!   memory, no file of the sandbox, no API response, event or snapshot,
//!   and each of those scans first proves it finds a canary planted there;
//!   a daemon restart keeps the rule and the CA working.
//! - `record_snapshot_replay_identical_bytes`: a `record` sandbox's
//!   exchanges (fresh random bytes each time, a POST) come back byte for
//!   byte, in order, from `replay` sandboxes made from its snapshot, with
//!   no connection or query reaching the fake internet, and with the fake
//!   internet gone (from a snapshot of a replaying sandbox too, and after
//!   a daemon restart mid-recording); a live fetch differs; a request never
//!   recorded is a miss (502, `x-hull-replay: miss`, an event); neither the
//!   cassette nor the snapshot export holds the secret, even when the
//!   upstream echoes it in a body (masked).
//! - `hostile_secret_routes`: the sandbox reaches the header rule's
//!   upstream by IP (with and without a CIDR rule), with a lying SNI or
//!   `Host`, an absolute-form target, the name in other spellings, plain
//!   HTTP, CONNECT tunnels: the secret only ever reaches the rule's name's
//!   addresses, and never comes back in a response.
//! - `policy_changes_switch_interception`: a header rule added to and
//!   removed from a running sandbox turns interception on and off for new
//!   connections.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::StatusCode;
use base64::Engine;
use common::{App, Fixture, call, privileged};
use hull_api::{ExecRequest, HostInfo, Sandbox};
use hull_testkit::fakenet::{FakeInternet, Seen, net_leftovers};
use serde_json::{Value, json};

/// Requests (JSON on stdin) made from inside a sandbox; prints one JSON
/// result per request: status, headers, body (base64), and for HTTPS made
/// with `http.client` the SHA-256 of the peer certificate and its issuer.
const FETCH: &str = r#"
import sys, json, ssl, socket, hashlib, base64, http.client, urllib.request, urllib.error, urllib.parse
out = []
for r in json.load(sys.stdin):
    res = {}
    try:
        body = bytes.fromhex(r["body"]) if "body" in r else None
        if r.get("urllib"):
            req = urllib.request.Request(r["url"], data=body, method=r.get("method", "GET"),
                                         headers=r.get("headers", {}))
            try:
                resp = urllib.request.urlopen(req, timeout=20)
            except urllib.error.HTTPError as e:
                resp = e
            res["status"] = resp.getcode()
        else:
            u = urllib.parse.urlsplit(r["url"])
            port = u.port or (443 if u.scheme == "https" else 80)
            sock = socket.create_connection((r.get("connect", u.hostname), r.get("port", port)), timeout=20)
            if r.get("tunnel"):
                t = r["tunnel"]
                sock.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (t, t)).encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    d = sock.recv(1)
                    if not d:
                        raise ConnectionError("tunnel closed: %r" % head)
                    head += d
                res["tunnel"] = head.split(b"\r\n")[0].decode()
            if u.scheme == "https":
                ctx = ssl.create_default_context()
                if r.get("cafile"):
                    ctx.load_verify_locations(r["cafile"])
                if r.get("insecure"):
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                sock = ctx.wrap_socket(sock, server_hostname=r.get("sni", u.hostname))
                res["peer_sha256"] = hashlib.sha256(sock.getpeercert(True)).hexdigest()
                if not r.get("insecure"):
                    res["issuer"] = dict(x[0] for x in sock.getpeercert()["issuer"]).get("commonName")
            conn = http.client.HTTPConnection(u.hostname, port, timeout=20)
            conn.sock = sock
            headers = {"Host": r.get("host", u.netloc), "Connection": "close"}
            headers.update(r.get("headers", {}))
            target = r.get("target") or ((u.path or "/") + ("?" + u.query if u.query else ""))
            conn.request(r.get("method", "GET"), target, body=body, headers=headers)
            resp = conn.getresponse()
            res["status"] = resp.status
        res["headers"] = [[k.lower(), v] for k, v in resp.headers.items()]
        res["body"] = base64.b64encode(resp.read()).decode()
    except Exception as e:
        res["error"] = type(e).__name__ + ": " + str(e)
    out.append(res)
print(json.dumps(out))
"#;

/// One result of [`FETCH`].
#[derive(Debug, Clone)]
struct Got {
    status: Option<u16>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    peer_sha256: Option<String>,
    issuer: Option<String>,
    error: Option<String>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Run `reqs` through [`FETCH`] in sandbox `id`; also returns the raw
/// output (to grep for the secret).
async fn fetch(f: &Fixture, id: &str, reqs: &Value) -> (Vec<Got>, String) {
    let r =
        f.rt.exec(
            id,
            ExecRequest {
                cmd: vec!["/usr/bin/python3".into(), "-c".into(), FETCH.into()],
                stdin: Some(reqs.to_string()),
                timeout_seconds: Some(120.0),
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    let raw = format!("{}{}", r.stdout, r.stderr);
    let v: Vec<Value> = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("fetch output ({e}): {raw}"));
    let got = v
        .into_iter()
        .map(|g| Got {
            status: g["status"].as_u64().map(|s| s as u16),
            headers: g["headers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|h| {
                            (
                                h[0].as_str().unwrap().to_string(),
                                h[1].as_str().unwrap().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            body: g["body"]
                .as_str()
                .map(|b| base64::engine::general_purpose::STANDARD.decode(b).unwrap())
                .unwrap_or_default(),
            peer_sha256: g["peer_sha256"].as_str().map(str::to_string),
            issuer: g["issuer"].as_str().map(str::to_string),
            error: g["error"].as_str().map(str::to_string),
        })
        .collect();
    (got, raw)
}

fn sha256(b: &[u8]) -> String {
    hull_testkit::oci::sha256(b)
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn fixture_net(fake: &FakeInternet) -> hull_runtime::NetworkConfig {
    hull_runtime::NetworkConfig {
        dns_upstream: Some(FakeInternet::dns_addr()),
        upstream_ca: Some(fake.ca_file().to_path_buf()),
        ..Default::default()
    }
}

async fn create(app: &axum::Router, body: &Value) -> (Sandbox, Vec<u8>) {
    let (s, b) = call(app, "POST", "/v1/sandboxes", body.to_string()).await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "{body}: {}",
        String::from_utf8_lossy(&b)
    );
    (serde_json::from_slice(&b).unwrap(), b)
}

async fn destroy(app: &axum::Router, id: &str) {
    let (s, b) = call(app, "DELETE", &format!("/v1/sandboxes/{id}"), Body::empty()).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));
}

async fn get(app: &axum::Router, uri: &str) -> Vec<u8> {
    let (s, b) = call(app, "GET", uri, Body::empty()).await;
    assert_eq!(s, StatusCode::OK, "{uri}: {}", String::from_utf8_lossy(&b));
    b
}

async fn sandbox(app: &axum::Router, id: &str) -> Sandbox {
    serde_json::from_slice(&get(app, &format!("/v1/sandboxes/{id}")).await).unwrap()
}

/// `GET /v1/snapshots/{id}/export`, decompressed (a tar).
async fn export(app: &axum::Router, snap: &str) -> Vec<u8> {
    let b = get(app, &format!("/v1/snapshots/{snap}/export")).await;
    zstd::decode_all(b.as_slice()).expect("a zstd archive")
}

/// What a reader of a cassette can recover: its text, plus every body
/// decoded from base64 and, when gzip, decompressed; and per exchange
/// (request target, decoded response body).
fn cassette_plain(data: &[u8]) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let mut all = data.to_vec();
    let mut exchanges = Vec::new();
    for line in data.split(|&b| b == b'\n').skip(1) {
        let Ok(x) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let target = x["request"]["target"].as_str().unwrap_or("").to_string();
        for part in ["request", "response"] {
            let b64 = x[part]["body"]["data"].as_str().unwrap_or("");
            let mut body = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("cassette body base64");
            if body.starts_with(&[0x1f, 0x8b]) {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(body.as_slice())
                    .read_to_end(&mut out)
                    .unwrap_or_else(|e| {
                        panic!(
                            "gzip body {e}: {:02x?} {}",
                            body,
                            String::from_utf8_lossy(&body)
                        )
                    });
                body = out;
            }
            all.extend_from_slice(&body);
            if part == "response" {
                exchanges.push((target.clone(), body));
            }
        }
    }
    (all, exchanges)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The secret arrives at the fake internet only at `api.fake.test`'s
/// addresses, and only as the exact header value.
fn secret_only_at_api(fake: &FakeInternet, value: &str) -> usize {
    let api: BTreeSet<std::net::IpAddr> = [FakeInternet::WEB4, FakeInternet::WEB6]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let mut n = 0;
    for s in fake.seen() {
        let carries = s
            .headers
            .iter()
            .any(|(_, v)| contains(v, value.trim_start_matches("Bearer ")));
        if carries {
            assert!(
                api.contains(&s.local.ip()),
                "the secret reached the wrong upstream: {s:?}"
            );
            assert_eq!(s.header("authorization"), vec![value.as_bytes()], "{s:?}");
            n += 1;
        }
    }
    n
}

// ---- scanners: each finds what it looks for (proved with canaries) ----

/// Every process of the sandbox whose PID 1 is `init` (host pids): those
/// in its pid namespace.
fn sandbox_pids(init: i32) -> Vec<i32> {
    let ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).expect("sandbox pid ns");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/ns/pid"))
            .ok()
            .as_ref()
            == Some(&ns)
        {
            out.push(pid);
        }
    }
    assert!(out.contains(&init), "init {init} not among {out:?}");
    out
}

/// Which of `needles` appear in the environment of any of `pids`.
fn scan_environ(pids: &[i32], needles: &[&str]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for p in pids {
        let Ok(env) = std::fs::read(format!("/proc/{p}/environ")) else {
            continue;
        };
        for n in needles {
            if contains(&env, n) {
                found.insert(n.to_string());
            }
        }
    }
    found
}

/// Which of `needles` appear in the readable memory of any of `pids`
/// (read from the host through /proc/<pid>/mem); also the bytes scanned.
fn scan_memory(pids: &[i32], needles: &[&str]) -> (BTreeSet<String>, u64) {
    let mut found = BTreeSet::new();
    let mut scanned = 0u64;
    let max = needles.iter().map(|n| n.len()).max().unwrap_or(1);
    for p in pids {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{p}/maps")) else {
            continue;
        };
        let Ok(mem) = std::fs::File::open(format!("/proc/{p}/mem")) else {
            continue;
        };
        for line in maps.lines() {
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else {
                continue;
            };
            if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
                continue;
            }
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            );
            // Read in 1 MiB windows overlapping by the longest needle.
            let mut off = a;
            let mut buf = vec![0u8; 1 << 20];
            while off < b {
                let len = ((b - off) as usize).min(buf.len());
                let Ok(n) = mem.read_at(&mut buf[..len], off) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                scanned += n as u64;
                for nd in needles {
                    if contains(&buf[..n], nd) {
                        found.insert(nd.to_string());
                    }
                }
                if off + n as u64 >= b {
                    break;
                }
                off += (n.saturating_sub(max)).max(1) as u64;
            }
        }
    }
    (found, scanned)
}

/// Mount points under `dir` (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|m| m.starts_with(dir) && m != dir)
        .collect()
}

/// Which of `needles` appear in a regular file under `root` (symlinks
/// not followed); also the files that hold each. With `skip_mounts`,
/// mount points below `root` (bind mounts of the host's own directories,
/// say) are not entered and loop images (`*.img`, scanned through their
/// mounts instead) not read.
fn scan_files(root: &Path, needles: &[&str], skip_mounts: bool) -> Vec<(String, PathBuf)> {
    let mut hits = Vec::new();
    let skip = if skip_mounts {
        mounts_under(root)
    } else {
        Vec::new()
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        // The root itself may be a link (/proc/<pid>/fd/<n>): follow it.
        let m = if p == root {
            std::fs::metadata(&p)
        } else {
            std::fs::symlink_metadata(&p)
        };
        let Ok(m) = m else {
            continue;
        };
        if skip.contains(&p) {
            continue;
        }
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if m.is_file() {
            if skip_mounts && p.extension().is_some_and(|e| e == "img") {
                continue;
            }
            let mut data = Vec::new();
            if let Ok(f) = std::fs::File::open(&p) {
                let _ = f.take(256 << 20).read_to_end(&mut data);
            }
            for n in needles {
                if contains(&data, n) {
                    hits.push((n.to_string(), p.clone()));
                }
            }
        }
    }
    hits
}

fn names(hits: &[(String, PathBuf)]) -> BTreeSet<String> {
    hits.iter().map(|(n, _)| n.clone()).collect()
}

/// The policy: `api.fake.test` and `other.fake.test` allowed (plus
/// `extra` items), and the header rule `Authorization: <auth>` for
/// `api.fake.test` only.
fn policy(mode: &str, auth: &str, extra: &[Value]) -> Value {
    let mut allow = vec![
        json!({"domain": FakeInternet::API}),
        json!({"domain": FakeInternet::OTHER}),
    ];
    allow.extend_from_slice(extra);
    json!({"mode": mode, "allow": allow,
           "headers": [{"domain": FakeInternet::API, "set": {"Authorization": auth}}]})
}

async fn write_fake_ca(f: &Fixture, id: &str, fake: &FakeInternet) {
    let r = f
        .sh(
            id,
            &format!(
                "cat > /tmp/fake-ca.pem <<'EOF'\n{}EOF\necho ok",
                fake.ca_pem()
            ),
        )
        .await;
    assert_eq!(r.stdout.trim(), "ok", "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_injection_end_to_end() {
    if !privileged("secret_injection_end_to_end") {
        return;
    }
    let fake = FakeInternet::start();
    let mut f = Fixture::with_network(fixture_net(&fake)).await;
    let app = f.app(1 << 20);
    let state = f.dir.path().to_path_buf();
    let info: HostInfo = serde_json::from_slice(&get(&app, "/v1/info").await).unwrap();
    assert!(info.network.starts_with("available"), "{}", info.network);
    let instance = info.instance_id.clone();

    let token = format!("hullsecret{}", random_hex(16));
    let auth = format!("Bearer {token}");
    let api_canary = format!("apicanary{}", random_hex(8));
    let mut body = json!({"template": "host", "network": policy("allowlist", &auth, &[]),
                          "labels": {"canary": api_canary}});
    let (sb, created) = create(&app, &body).await;
    let id = sb.id.clone();
    assert!(
        !contains(&created, &token),
        "the create response has the secret"
    );
    assert!(contains(&created, &api_canary));
    write_fake_ca(&f, &id, &fake).await;

    let api = format!("https://{}/auth", FakeInternet::API);
    let other = format!("https://{}/auth", FakeInternet::OTHER);
    let (got, raw) = fetch(
        &f,
        &id,
        &json!([
            // 0: the plain client, trusting what the daemon installed.
            {"url": api, "urllib": true},
            // 1: the sandbox's own Authorization is overwritten.
            {"url": api, "headers": {"Authorization": "Bearer sandbox-own"}},
            // 2: other.fake.test, trusting the fake CA: not intercepted.
            {"url": other, "cafile": "/tmp/fake-ca.pem",
             "headers": {"Authorization": "Bearer sandbox-own"}},
            // 3: ...so without the fake CA it does not verify.
            {"url": other},
            // 4: the upstream reflects the secret in a response header.
            {"url": format!("https://{}/reflect", FakeInternet::API), "urllib": true},
        ]),
    )
    .await;
    assert!(!raw.contains(&token), "the secret came back: {raw}");
    let want = json!([sha256(auth.as_bytes())]);
    for g in &got[..2] {
        assert_eq!(g.status, Some(200), "{g:?}");
        assert_eq!(g.json()["auth_sha256"], want, "{g:?}");
        assert_eq!(g.json()["served_by"], FakeInternet::WEB4, "{g:?}");
    }
    let issuer = got[1].issuer.clone().unwrap_or_default();
    assert_eq!(issuer, format!("hull sandbox {id} CA"));
    assert_ne!(got[1].peer_sha256.as_deref(), Some(fake.leaf_sha256()));
    // other.fake.test: the fake server's own certificate (hull has no key
    // for it: the TLS session ends at the upstream), the sandbox's header.
    assert_eq!(got[2].status, Some(200), "{:?}", got[2]);
    assert_eq!(got[2].peer_sha256.as_deref(), Some(fake.leaf_sha256()));
    assert_eq!(
        got[2].json()["auth_sha256"],
        json!([sha256(b"Bearer sandbox-own")])
    );
    assert_eq!(got[2].json()["served_by"], FakeInternet::OTHER4);
    let e = got[3].error.clone().unwrap_or_default();
    assert!(e.contains("CERTIFICATE_VERIFY_FAILED"), "{:?}", got[3]);
    assert_eq!(got[4].status, Some(200), "{:?}", got[4]);
    assert!(got[4].header("x-reflect").is_none(), "{:?}", got[4]);
    // Upstream side: api got exactly the secret (three requests), other
    // got the sandbox's header.
    assert_eq!(secret_only_at_api(&fake, &auth), 3);
    let at_other: Vec<Seen> = fake
        .seen()
        .into_iter()
        .filter(|s| s.local.ip().to_string() == FakeInternet::OTHER4 && s.path == "/auth")
        .collect();
    assert_eq!(at_other.len(), 1, "{at_other:?}");
    assert_eq!(
        at_other[0].header("authorization"),
        vec![b"Bearer sandbox-own".as_slice()]
    );
    assert_eq!(at_other[0].sni.as_deref(), Some(FakeInternet::OTHER));

    // A daemon restart (the sandbox keeps running): the rule and the
    // sandbox's CA (kept in the state directory) still work.
    f.restart().await;
    let app = f.app(1 << 20);
    let (got, raw) = fetch(&f, &id, &json!([{"url": api}])).await;
    assert!(!raw.contains(&token));
    assert_eq!(got[0].status, Some(200), "after a restart: {:?}", got[0]);
    assert_eq!(got[0].json()["auth_sha256"], want);
    assert_eq!(got[0].issuer.as_deref(), Some(issuer.as_str()));
    assert_eq!(secret_only_at_api(&fake, &auth), 4);

    // A process that used the API and holds its answers, with canaries in
    // its environment, its heap (built at run time from a reversed
    // argument) and files.
    let env_canary = format!("envcanary{}", random_hex(8));
    let mem_canary = format!("memcanary{}", random_hex(8));
    let file_canary = format!("filecanary{}", random_hex(8));
    let reversed: String = mem_canary.chars().rev().collect();
    let holder = format!(
        "import sys, time, urllib.request\n\
         keep = [urllib.request.urlopen('{api}', timeout=20).read() for _ in range(3)]\n\
         canary = ''.join(reversed(sys.argv[1]))\n\
         keep.append(canary)\n\
         open('/tmp/ready', 'w').write('ok')\n\
         time.sleep(600)\n"
    );
    let r = f
        .sh(
            &id,
            &format!(
                "cat > /tmp/holder.py <<'EOF'\n{holder}EOF\n\
                 echo {file_canary} > /root/canary.txt; echo {file_canary} > /tmp/canary.txt\n\
                 ENVCANARY={env_canary} nohup python3 /tmp/holder.py {reversed} >/tmp/holder.log 2>&1 &\n\
                 for i in $(seq 200); do test -f /tmp/ready && break; sleep 0.1; done; cat /tmp/ready /tmp/holder.log"
            ),
        )
        .await;
    assert!(r.stdout.starts_with("ok"), "{r:?}");

    let init = sandbox(&app, &id)
        .await
        .pid
        .expect("a running sandbox has a pid");
    let pids = sandbox_pids(init);
    assert!(pids.len() >= 2, "{pids:?}");
    let env_found = scan_environ(&pids, &[&env_canary, &token]);
    assert_eq!(env_found, BTreeSet::from([env_canary.clone()]), "environ");
    let (mem_found, scanned) = scan_memory(&pids, &[&mem_canary, &token]);
    assert!(scanned > 1 << 20, "scanned {scanned} bytes");
    assert_eq!(mem_found, BTreeSet::from([mem_canary.clone()]), "memory");
    eprintln!(
        "memory scan: {} processes, {} MiB",
        pids.len(),
        scanned >> 20
    );
    // Files: the writable layer (everything the sandbox changed), its
    // /tmp, /root and /etc/hull as it sees them.
    let rw = PathBuf::from(format!("/proc/{init}/fd/{}", hull_proto::init::RW_FD));
    let mut hits = scan_files(&rw, &[&file_canary, &token], false);
    for d in ["tmp", "root", "etc/hull"] {
        hits.extend(scan_files(
            &Path::new(&format!("/proc/{init}/root")).join(d),
            &[&file_canary, &token],
            false,
        ));
    }
    assert_eq!(
        names(&hits),
        BTreeSet::from([file_canary.clone()]),
        "files: {hits:?}"
    );
    assert!(
        hits.iter().any(|(_, p)| p.starts_with(&rw)),
        "the writable layer was not scanned: {hits:?}"
    );

    // API responses (the label canary proves each is the sandbox's).
    let denied = fetch(
        &f,
        &id,
        &json!([{"url": "https://not-listed.fake.test/", "urllib": true}]),
    )
    .await;
    assert!(denied.0[0].error.is_some(), "{denied:?}");
    let mut uris = vec![
        format!("/v1/sandboxes/{id}"),
        "/v1/sandboxes".to_string(),
        "/v1/info".to_string(),
    ];
    let (s, b) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{id}/snapshot"),
        json!({"name": "with-secret", "labels": {"canary": api_canary}}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    assert!(!contains(&b, &token));
    let snap: hull_api::Snapshot = serde_json::from_slice(&b).unwrap();
    uris.push(format!("/v1/snapshots/{}", snap.id));
    uris.push("/v1/snapshots".to_string());
    // The exported snapshot: the sandbox's files, not its policy's secret.
    let tar = export(&app, &snap.id).await;
    assert!(contains(&tar, &file_canary), "the export misses the files");
    assert!(!contains(&tar, &token), "the secret is in the export");
    for u in &uris {
        let b = get(&app, u).await;
        assert!(!contains(&b, &token), "{u} has the secret");
        if u != "/v1/info" {
            assert!(
                contains(&b, &api_canary),
                "{u}: {}",
                String::from_utf8_lossy(&b)
            );
        }
    }
    let net = get(&app, &format!("/v1/sandboxes/{id}/network")).await;
    assert!(!contains(&net, &token));
    assert!(contains(&net, "***"), "{}", String::from_utf8_lossy(&net));
    let sbx = sandbox(&app, &id).await;
    assert!(
        sbx.events
            .iter()
            .any(|e| e.kind == "network_denied" && e.message.contains("not-listed.fake.test")),
        "{:#?}",
        sbx.events
    );
    // A policy change answers with the new policy: redacted too.
    body = policy("allowlist", &auth, &[json!({"cidr": "192.0.2.0/24"})]);
    let (s, b) = call(
        &app,
        "PUT",
        &format!("/v1/sandboxes/{id}/network"),
        body.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert!(!contains(&b, &token));

    // The host side: the secret is only in the daemon's database (the
    // sandbox's persisted policy), never in the snapshot's files, a CA
    // directory or a cassette. The file canary is in the snapshot.
    // The state directory without its mounts (they include the host's
    // /usr for the template), then the snapshot store's mounts (a btrfs
    // image, when the state directory is not on btrfs).
    let mut hits = scan_files(&state, &[&token, &file_canary], true);
    let store_mounts = mounts_under(&state.join("snapshots"));
    for m in &store_mounts {
        hits.extend(scan_files(m, &[&token, &file_canary], false));
    }
    for (n, p) in &hits {
        if n == &token {
            let name = p.file_name().unwrap().to_string_lossy();
            assert!(
                p.parent() == Some(state.as_path()) && name.starts_with("hull.db"),
                "the secret is in {}",
                p.display()
            );
        }
    }
    assert!(
        hits.iter()
            .any(|(n, p)| n == &file_canary && p.starts_with(state.join("snapshots"))),
        "the snapshot was not scanned: {hits:?}"
    );
    // ...and the scan does see the daemon's database (where the policy,
    // secret included, is persisted by design).
    assert!(
        hits.iter().any(|(n, _)| n == &token),
        "the state directory scan found nothing: {hits:?}"
    );

    destroy(&app, &id).await;
    f.finish().await;
    drop(fake);
    assert!(net_leftovers(&instance).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_snapshot_replay_identical_bytes() {
    if !privileged("record_snapshot_replay_identical_bytes") {
        return;
    }
    let fake = FakeInternet::start();
    let mut f = Fixture::with_network(fixture_net(&fake)).await;
    let app = f.app(1 << 20);
    let state = f.dir.path().to_path_buf();
    let info: HostInfo = serde_json::from_slice(&get(&app, "/v1/info").await).unwrap();
    let instance = info.instance_id.clone();

    // Recording with a header rule: the cassette must keep the request as
    // the sandbox sent it (the canary header), never the secret.
    let token = format!("hullsecret{}", random_hex(16));
    let auth = format!("Bearer {token}");
    let canary = format!("cassettecanary{}", random_hex(8));
    let (rec, _) = create(
        &app,
        &json!({"template": "host", "network": policy("record", &auth, &[])}),
    )
    .await;
    let api = format!("https://{}", FakeInternet::API);
    let (b1, b2) = (random_hex(3000), random_hex(20));
    let script = json!([
        {"url": format!("{api}/unique/4096"), "urllib": true},
        {"url": format!("{api}/unique/4096"), "urllib": true},
        {"url": format!("{api}/hash"), "method": "POST", "body": b1, "urllib": true},
        {"url": format!("{api}/unique/4096"), "headers": {"X-Canary": canary}},
        {"url": format!("{api}/reflect"), "urllib": true},
        {"url": format!("{api}/hash"), "method": "POST", "body": b2},
        {"url": format!("https://{}/unique/1000", FakeInternet::OTHER), "urllib": true},
        {"url": format!("http://{}/plain", FakeInternet::API), "urllib": true},
    ]);
    let (recorded, raw) = fetch(&f, &rec.id, &script).await;
    assert!(!raw.contains(&token), "{raw}");
    for g in &recorded {
        assert_eq!(g.status, Some(200), "{g:?}");
        assert!(g.header("x-reflect").is_none(), "{g:?}");
    }
    let uniques: BTreeSet<&[u8]> = [0, 1, 3, 6]
        .iter()
        .map(|&i| recorded[i].body.as_slice())
        .collect();
    assert_eq!(uniques.len(), 4, "the upstream repeated itself");
    assert_eq!(recorded[0].body.len(), 4 + 8 + 4096);
    assert_eq!(
        recorded[2].json()["sha256"],
        sha256(&hex_bytes(&b1)),
        "{:?}",
        recorded[2]
    );
    assert_eq!(
        recorded[7].body,
        format!("fake-internet {}\n", FakeInternet::WEB4).into_bytes()
    );
    // Six HTTPS requests to api, and the plain HTTP one (a header rule
    // applies to port 80 too).
    assert_eq!(secret_only_at_api(&fake, &auth), 7);
    // An upstream that echoes the secret in a body: hull does not rewrite
    // live bodies (docs/network.md), but the cassette keeps it masked.
    let (echo, _) = fetch(
        &f,
        &rec.id,
        &json!([{"url": format!("{api}/reflect-body"), "urllib": true},
                {"url": format!("{api}/reflect-body?gzip"), "urllib": true},
                {"url": format!("{api}/reflect-body?gzip-if-accepted"),
                 "headers": {"Accept-Encoding": "gzip"}}]),
    )
    .await;
    for e in &echo {
        assert_eq!(e.status, Some(200), "{e:?}");
    }
    // Recording with a secret, hull asked the upstream for an unencoded
    // body (so it can mask an echo).
    let asked: Vec<Vec<u8>> = fake
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("?gzip-if-accepted"))
        .map(|s| s.header("accept-encoding").concat())
        .collect();
    assert_eq!(asked, vec![b"identity".to_vec()]);

    // A daemon restart: the recording so far is kept and goes on.
    f.restart().await;
    let app = f.app(1 << 20);

    let (s, b) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{}/snapshot", rec.id),
        "{}".to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let snap: hull_api::Snapshot = serde_json::from_slice(&b).unwrap();
    let tape = state.join(format!("net/cassettes/snap-{}.hcas", snap.id));
    let recording = state.join(format!("net/cassettes/{}.hcas", rec.id));
    for p in [&tape, &recording] {
        let raw = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let (data, exchanges) = cassette_plain(&raw);
        // Bodies are decoded: the POST's body is there, and the echoes
        // (plain and gzip) are there, masked.
        let posted = hex_bytes(&b1);
        assert!(
            data.windows(posted.len()).any(|w| w == posted.as_slice()),
            "{} misses a body",
            p.display()
        );
        let masked = format!("auth={}\n", "*".repeat(auth.len())).into_bytes();
        // An upstream that compresses anyway: not recorded (a compressed
        // echo can't be masked).
        for (t, want) in [
            ("/reflect-body", vec![&masked]),
            ("/reflect-body?gzip-if-accepted", vec![&masked]),
            ("/reflect-body?gzip", vec![]),
        ] {
            let echoed: Vec<&Vec<u8>> = exchanges
                .iter()
                .filter(|(target, _)| target == t)
                .map(|(_, b)| b)
                .collect();
            assert_eq!(
                echoed,
                want,
                "{t} in {}: {:?}",
                p.display(),
                echoed
                    .iter()
                    .map(|b| String::from_utf8_lossy(b))
                    .collect::<Vec<_>>()
            );
        }
        assert!(
            contains(&data, &canary),
            "{} misses the canary",
            p.display()
        );
        assert!(!contains(&data, &token), "the secret is in {}", p.display());
    }
    // The exported snapshot carries the cassette: the canary, no secret.
    let tar = export(&app, &snap.id).await;
    assert!(contains(&tar, &canary), "the export has no cassette");
    assert!(!contains(&tar, &token), "the secret is in the export");

    // A live fetch now gets new bytes.
    let (live, _) = fetch(&f, &rec.id, &json!([script[0]])).await;
    assert_eq!(live[0].status, Some(200));
    assert!(!uniques.contains(live[0].body.as_slice()));

    // Replay, with the fake internet still up: identical, in order, and
    // nothing reaches it.
    let before = (
        fake.tls_connections(),
        fake.dns_queries(),
        fake.seen().len(),
    );
    let (rep, _) = create(&app, &json!({"from": snap.id, "network": "replay"})).await;
    let (replayed, _) = fetch(&f, &rep.id, &script).await;
    assert_same(&recorded, &replayed);
    let (echo, raw) = fetch(
        &f,
        &rep.id,
        &json!([{"url": format!("{api}/reflect-body"), "urllib": true}]),
    )
    .await;
    assert!(!raw.contains(&token));
    assert_eq!(
        echo[0].body,
        format!("auth={}\n", "*".repeat(auth.len())).into_bytes(),
        "{:?}",
        echo[0]
    );
    // A request never recorded: a miss, and an event.
    let (miss, _) = fetch(
        &f,
        &rep.id,
        &json!([{"url": format!("{api}/unique/777"), "urllib": true},
                {"url": format!("{api}/reflect-body?gzip"), "urllib": true},
                {"url": format!("{api}/hash"), "method": "POST", "body": "00", "urllib": true}]),
    )
    .await;
    for m in &miss {
        assert_eq!(m.status, Some(502), "{m:?}");
        assert_eq!(m.header("x-hull-replay"), Some("miss"), "{m:?}");
    }
    let sbx = sandbox(&app, &rep.id).await;
    assert!(
        sbx.events.iter().any(|e| e.kind == "network_denied"
            && e.message.contains("replay miss")
            && e.message.contains("/unique/777")),
        "{:#?}",
        sbx.events
    );
    assert_eq!(
        (
            fake.tls_connections(),
            fake.dns_queries(),
            fake.seen().len()
        ),
        before,
        "replay reached the fake internet"
    );

    // A snapshot of the replaying sandbox carries the cassette it replays.
    let (s, b) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{}/snapshot", rep.id),
        "{}".to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let snap2: hull_api::Snapshot = serde_json::from_slice(&b).unwrap();

    // With the fake internet gone: a replay sandbox from that second
    // snapshot, same bytes.
    drop(fake);
    let (rep2, _) = create(&app, &json!({"from": snap2.id, "network": "replay"})).await;
    let (replayed2, _) = fetch(&f, &rep2.id, &script).await;
    assert_same(&recorded, &replayed2);

    for id in [&rep2.id, &rep.id, &rec.id] {
        destroy(&app, id).await;
    }
    f.finish().await;
    assert!(net_leftovers(&instance).is_empty());
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

fn assert_same(recorded: &[Got], replayed: &[Got]) {
    assert_eq!(recorded.len(), replayed.len());
    for (i, (a, b)) in recorded.iter().zip(replayed).enumerate() {
        assert_eq!(b.status, a.status, "request {i}: {b:?}");
        assert!(
            a.body == b.body,
            "request {i}: replayed {} bytes differ from the recorded {}",
            b.body.len(),
            a.body.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_secret_routes() {
    if !privileged("hostile_secret_routes") {
        return;
    }
    let fake = FakeInternet::start();
    let f = Fixture::with_network(fixture_net(&fake)).await;
    let app = f.app(1 << 20);
    let info: HostInfo = serde_json::from_slice(&get(&app, "/v1/info").await).unwrap();
    let instance = info.instance_id.clone();
    let token = format!("hullsecret{}", random_hex(16));
    let auth = format!("Bearer {token}");
    let (sb, _) = create(
        &app,
        &json!({"template": "host", "network": policy("allowlist", &auth, &[])}),
    )
    .await;
    let id = sb.id.clone();
    write_fake_ca(&f, &id, &fake).await;
    let ca = "/tmp/fake-ca.pem";
    let (web4, other4) = (FakeInternet::WEB4, FakeInternet::OTHER4);
    let api = FakeInternet::API;
    let other = FakeInternet::OTHER;

    let (got, raw) = fetch(
        &f,
        &id,
        &json!([
            // 0: the rule's upstream by IP (no SNI): no CIDR rule, refused.
            {"url": format!("https://{web4}/auth"), "insecure": true},
            // 1: lying SNI: other's name at api's address, Host api.
            {"url": format!("https://{api}/auth"), "connect": web4, "sni": other,
             "cafile": ca},
            // 2: api's SNI at other's address, Host other: 421.
            {"url": format!("https://{other}/auth"), "connect": other4, "sni": api},
            // 3: plain HTTP to other's address with Host api: goes to api.
            {"url": format!("http://{api}/x"), "connect": other4},
            // 4: absolute-form target naming api, Host other: refused.
            {"url": format!("http://{other}/x"), "connect": other4,
             "target": format!("http://{api}/x")},
            // 5: IPv6, lying SNI the other way round.
            {"url": format!("https://{other}/auth"), "connect": FakeInternet::WEB6,
             "sni": other, "cafile": ca},
            // 6: the rule's name, reflected in a response header.
            {"url": format!("https://{api}/reflect")},
            // 7-10: the rule's name spelled otherwise: trailing dot, case,
            // a port in Host.
            {"url": format!("https://{api}./auth")},
            {"url": "https://API.Fake.Test/auth"},
            {"url": format!("https://{api}/auth"), "host": format!("{api}:443")},
            {"url": format!("http://{api}./auth")},
            // 11: inside api's TLS, an absolute-form target naming other.
            {"url": format!("https://{api}/auth"), "target": format!("https://{other}/auth")},
            // 12: inside api's TLS, Host other (absolute-form api): 421.
            {"url": format!("https://{api}/auth"), "host": other,
             "target": format!("https://{api}/auth")},
            // 13: a CONNECT tunnel to api: intercepted like a direct one.
            {"url": format!("https://{api}/auth"), "connect": web4, "port": 3128,
             "tunnel": format!("{api}:443")},
            // 14: a CONNECT tunnel to other, api's SNI inside: spliced to
            // other, nothing added.
            {"url": format!("https://{api}/auth"), "connect": web4, "port": 3128,
             "tunnel": format!("{other}:443"), "cafile": ca},
        ]),
    )
    .await;
    assert!(!raw.contains(&token), "the secret came back: {raw}");
    assert!(got[0].error.is_some(), "by IP: {:?}", got[0]);
    assert_eq!(got[1].status, Some(200), "{:?}", got[1]);
    assert_eq!(got[1].peer_sha256.as_deref(), Some(fake.leaf_sha256()));
    assert_eq!(got[1].json()["served_by"], FakeInternet::OTHER4);
    assert_eq!(got[1].json()["auth_sha256"], json!([]));
    assert_eq!(got[2].status, Some(421), "{:?}", got[2]);
    assert_eq!(got[3].status, Some(200), "{:?}", got[3]);
    assert_eq!(
        got[3].body,
        format!("fake-internet {}\n", FakeInternet::WEB4).into_bytes()
    );
    assert!(
        got[4].status.is_none_or(|s| s >= 400),
        "absolute form: {:?}",
        got[4]
    );
    assert_eq!(got[5].status, Some(200), "{:?}", got[5]);
    assert_eq!(got[5].json()["served_by"], FakeInternet::OTHER4);
    assert_eq!(got[6].status, Some(200), "{:?}", got[6]);
    assert!(got[6].header("x-reflect").is_none(), "{:?}", got[6]);
    // A trailing dot: hull's certificate names `api.fake.test` (Python
    // checks the dotted name and refuses it); plain HTTP works.
    assert!(
        got[7]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("CERTIFICATE_VERIFY_FAILED"))
            || got[7].json()["served_by"] == FakeInternet::WEB4,
        "{:?}",
        got[7]
    );
    let want = json!([sha256(auth.as_bytes())]);
    for g in [&got[8], &got[9], &got[11]] {
        assert_eq!(g.status, Some(200), "{g:?}");
        assert_eq!(g.json()["served_by"], FakeInternet::WEB4, "{g:?}");
        assert_eq!(g.json()["auth_sha256"], want, "{g:?}");
    }
    assert_eq!(
        got[10].body,
        format!("fake-internet {}\n", FakeInternet::WEB4).into_bytes()
    );
    assert_eq!(got[12].status, Some(421), "{:?}", got[12]);
    assert_eq!(got[13].status, Some(200), "{:?}", got[13]);
    assert_eq!(got[13].issuer, Some(format!("hull sandbox {id} CA")));
    assert_eq!(got[13].json()["served_by"], FakeInternet::WEB4);
    assert_eq!(got[13].json()["auth_sha256"], want);
    assert_eq!(got[14].status, Some(200), "{:?}", got[14]);
    assert_eq!(got[14].peer_sha256.as_deref(), Some(fake.leaf_sha256()));
    assert_eq!(got[14].json()["served_by"], FakeInternet::OTHER4);
    assert_eq!(got[14].json()["auth_sha256"], json!([]));
    // The secret went out only to api's addresses: requests 3 (plain
    // HTTP to api by name), 6, 8-11, 13 (and 7 if it verified).
    let sent = secret_only_at_api(&fake, &auth);
    assert!((7..=8).contains(&sent), "{sent}");

    // With a CIDR rule for api's address, TLS by IP is spliced untouched:
    // the sandbox sees the upstream's certificate, no secret is added.
    let (s, b) = call(
        &app,
        "PUT",
        &format!("/v1/sandboxes/{id}/network"),
        policy("allowlist", &auth, &[json!({"cidr": format!("{web4}/32")})]).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert!(!contains(&b, &token));
    let (got, raw) = fetch(
        &f,
        &id,
        &json!([{"url": format!("https://{web4}/auth"), "cafile": ca}]),
    )
    .await;
    assert!(!raw.contains(&token));
    assert_eq!(got[0].status, Some(200), "{:?}", got[0]);
    assert_eq!(got[0].peer_sha256.as_deref(), Some(fake.leaf_sha256()));
    assert_eq!(got[0].json()["auth_sha256"], json!([]));
    assert_eq!(secret_only_at_api(&fake, &auth), sent);

    // Every response the API gave about it.
    for u in [
        format!("/v1/sandboxes/{id}"),
        format!("/v1/sandboxes/{id}/network"),
        "/v1/sandboxes".to_string(),
    ] {
        assert!(!contains(&get(&app, &u).await, &token), "{u}");
    }

    destroy(&app, &id).await;
    f.finish().await;
    drop(fake);
    assert!(net_leftovers(&instance).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_switch_interception() {
    if !privileged("policy_changes_switch_interception") {
        return;
    }
    let fake = FakeInternet::start();
    let f = Fixture::with_network(fixture_net(&fake)).await;
    let app = f.app(1 << 20);
    let info: HostInfo = serde_json::from_slice(&get(&app, "/v1/info").await).unwrap();
    let instance = info.instance_id.clone();
    // Created without a header rule: nothing intercepted, no CA installed.
    let (sb, _) = create(
        &app,
        &json!({"template": "host", "network": {"mode": "allowlist",
                "allow": [{"domain": FakeInternet::API}]}}),
    )
    .await;
    let id = sb.id.clone();
    write_fake_ca(&f, &id, &fake).await;
    let r = f
        .sh(
            &id,
            "test -e /etc/hull/ca.pem && echo ca; echo ${SSL_CERT_FILE:-none}",
        )
        .await;
    assert_eq!(r.stdout, "none\n", "{r:?}");
    let api = format!("https://{}/auth", FakeInternet::API);
    let direct = json!([{"url": api, "cafile": "/tmp/fake-ca.pem"}]);
    let (got, _) = fetch(&f, &id, &direct).await;
    assert_eq!(got[0].status, Some(200), "{:?}", got[0]);
    assert_eq!(got[0].peer_sha256.as_deref(), Some(fake.leaf_sha256()));
    assert_eq!(got[0].json()["auth_sha256"], json!([]));

    // A header rule added to the running sandbox: new connections are
    // intercepted, and the system bundle (which Debian's Python uses when
    // SSL_CERT_FILE is not set) trusts the sandbox CA at once.
    let token = format!("hullsecret{}", random_hex(16));
    let auth = format!("Bearer {token}");
    let put = |body: Value| {
        let app = app.clone();
        let id = id.clone();
        async move {
            let (s, b) = call(
                &app,
                "PUT",
                &format!("/v1/sandboxes/{id}/network"),
                body.to_string(),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
            b
        }
    };
    let b = put(policy("allowlist", &auth, &[])).await;
    assert!(!contains(&b, &token));
    let (got, raw) = fetch(
        &f,
        &id,
        &json!([{"url": api, "urllib": true}, {"url": api}]),
    )
    .await;
    assert!(!raw.contains(&token));
    assert_eq!(got[0].status, Some(200), "{:?}", got[0]);
    assert_eq!(
        got[0].json()["auth_sha256"],
        json!([sha256(auth.as_bytes())])
    );
    assert_eq!(got[1].issuer, Some(format!("hull sandbox {id} CA")));
    assert_eq!(secret_only_at_api(&fake, &auth), 2);

    // The rule removed: spliced again, the secret no longer sent.
    put(json!({"mode": "allowlist", "allow": [{"domain": FakeInternet::API}]})).await;
    let (got, _) = fetch(&f, &id, &direct).await;
    assert_eq!(got[0].status, Some(200), "{:?}", got[0]);
    assert_eq!(got[0].peer_sha256.as_deref(), Some(fake.leaf_sha256()));
    assert_eq!(got[0].json()["auth_sha256"], json!([]));
    assert_eq!(secret_only_at_api(&fake, &auth), 2);

    destroy(&app, &id).await;
    f.finish().await;
    drop(fake);
    assert!(net_leftovers(&instance).is_empty());
}
