//! Record and replay through the interceptor, on loopback without
//! privileges, and the cassette file's failure modes.

mod mitm;

use std::fs;
use std::sync::atomic::Ordering;

use hull_net::cassette::{self, Cassette, CassetteError, Recorder};
use hull_net::intercept::{InterceptConfig, REPLAY_HEADER};
use hull_net::rules::Mode;
use mitm::*;

fn opts(extra_ca: std::path::PathBuf, max_record_body: usize, port: Option<u16>) -> MitmOpts {
    MitmOpts {
        tls: true,
        extra_ca: Some(extra_ca),
        cfg: InterceptConfig {
            max_record_body,
            ..InterceptConfig::default()
        },
        port,
    }
}

/// Wait until the cassette holds `n` exchanges (recording is appended when
/// both bodies completed, just after the response was delivered).
async fn wait_records(path: &std::path::Path, n: usize) -> Cassette {
    for _ in 0..500 {
        if let Ok(c) = Cassette::load(path)
            && c.exchanges().len() >= n
        {
            return c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the cassette never reached {n} exchanges");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_then_replay_offline_serves_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let tape = tmp.path().join("tapes/sb.hcas");
    let pki = test_pki(&[NAME]);
    let ca = write_ca(tmp.path(), &pki);
    let up = upstream(Some(&pki)).await;
    let port = up.addr.port();
    let live = {
        let m = mitm(
            tmp.path(),
            up.addr,
            rules(Mode::Record, Some(tape.clone())),
            opts(ca.clone(), cassette::MAX_RECORDED_BODY, Some(port)),
        )
        .await;
        let mut c = client(&m, Some(NAME)).await.unwrap();
        let mut live = Vec::new();
        live.push(
            request(
                &mut c,
                port,
                "POST",
                "/echo?q=1",
                &[("authorization", "Bearer sandbox-own")],
                b"payload".to_vec(),
            )
            .await,
        );
        live.push(request(&mut c, port, "GET", "/bytes/300000", &[], vec![]).await);
        for _ in 0..3 {
            live.push(request(&mut c, port, "GET", "/count", &[], vec![]).await);
        }
        live.push(request(&mut c, port, "GET", "/status/404", &[], vec![]).await);
        live.push(request(&mut c, port, "HEAD", "/bytes/10", &[], vec![]).await);
        // An upstream echoing the secret in its body: live, the sandbox
        // sees it (documented); the cassette masks it.
        let echo = request(&mut c, port, "GET", "/echo-auth-body", &[], vec![]).await;
        assert_eq!(echo.body, format!("you sent: {SECRET}").as_bytes());
        live.push(echo);
        live
    };
    assert_eq!(live[2].body, b"n=3");
    assert_eq!(live[1].body.len(), 300000);
    let recorded = wait_records(&tape, live.len()).await;
    assert_eq!(recorded.sandbox(), "sb-test");
    // The secret is never in the cassette; the sandbox's own header is.
    let text = fs::read_to_string(&tape).unwrap();
    assert!(!text.contains("s3cret"));
    assert!(text.contains("Bearer sandbox-own"));
    drop(up); // the upstream is gone

    // Replay, in a fresh interceptor (as after a daemon restart), with an
    // upstream address that nothing listens on.
    let dead = "127.0.0.1:9".parse().unwrap();
    let tmp2 = tempfile::tempdir().unwrap();
    let m = mitm(
        tmp2.path(),
        dead,
        rules(Mode::Replay, Some(tape.clone())),
        opts(ca.clone(), cassette::MAX_RECORDED_BODY, Some(port)),
    )
    .await;
    let mut c = client(&m, Some(NAME)).await.unwrap();
    let mut again = Vec::new();
    again.push(request(&mut c, port, "POST", "/echo?q=1", &[], b"payload".to_vec()).await);
    again.push(request(&mut c, port, "GET", "/bytes/300000", &[], vec![]).await);
    for _ in 0..4 {
        again.push(request(&mut c, port, "GET", "/count", &[], vec![]).await);
    }
    again.push(request(&mut c, port, "GET", "/status/404", &[], vec![]).await);
    again.push(request(&mut c, port, "HEAD", "/bytes/10", &[], vec![]).await);
    let masked = request(&mut c, port, "GET", "/echo-auth-body", &[], vec![]).await;
    assert_eq!(
        masked.body,
        format!("you sent: {}", "*".repeat(SECRET.len())).as_bytes()
    );
    assert_eq!(
        m.connects.load(Ordering::SeqCst),
        0,
        "replay never connects"
    );
    // Identical bytes and status; recorded headers kept (except the
    // hop-by-hop ones and a date the hyper server may add).
    let pairs = [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 6), (6, 7)];
    for (l, a) in pairs {
        assert_eq!(live[l].status, again[a].status, "{l}");
        assert_eq!(live[l].body, again[a].body, "{l}");
        for (n, v) in &live[l].headers {
            if n != "date" {
                assert!(
                    again[a].headers.contains(&(n.clone(), v.clone())),
                    "{l}: {n}: {v}"
                );
            }
        }
    }
    // Ordering per key: n=1, n=2, n=3, then the last again.
    let counts: Vec<_> = again[2..6]
        .iter()
        .map(|g| String::from_utf8_lossy(&g.body).into_owned())
        .collect();
    assert_eq!(counts, ["n=3", "n=4", "n=5", "n=5"]);
    assert_eq!(
        again[0]
            .headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .count(),
        2
    );
    assert_eq!(
        again[7].header("content-length"),
        Some("10"),
        "HEAD keeps the recorded length"
    );
    assert!(m.events.0.lock().unwrap().is_empty());

    // A miss: another path, another body, another method.
    for (method, path, body) in [
        ("GET", "/never", vec![]),
        ("POST", "/echo?q=1", b"other".to_vec()),
        ("PUT", "/count", vec![]),
    ] {
        let got = request(&mut c, port, method, path, &[], body).await;
        assert_eq!(got.status, 502);
        assert_eq!(got.header(REPLAY_HEADER), Some("miss"));
    }
    let ev = m.events.0.lock().unwrap();
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[0].0, "sb-test");
    assert_eq!(ev[0].1.proto, "http");
    assert!(ev[0].1.reason.starts_with("replay miss"), "{:?}", ev[0].1);
    assert!(ev[0].1.reason.contains("/never"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_are_kept_cut_and_refused_in_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let tape = tmp.path().join("sb.hcas");
    let pki = test_pki(&[NAME]);
    let ca = write_ca(tmp.path(), &pki);
    let up = upstream(Some(&pki)).await;
    let port = up.addr.port();
    let big: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    {
        let m = mitm(
            tmp.path(),
            up.addr,
            rules(Mode::Record, Some(tape.clone())),
            opts(ca.clone(), 1024, Some(port)),
        )
        .await;
        let mut c = client(&m, Some(NAME)).await.unwrap();
        // Live, the sandbox gets everything.
        let got = request(&mut c, port, "GET", "/bytes/4096", &[], vec![]).await;
        assert_eq!(got.body.len(), 4096);
        // A large upload that gets a small answer.
        let got = request(&mut c, port, "POST", "/count", &[], big.clone()).await;
        assert_eq!(got.status, 200);
    }
    let rec = wait_records(&tape, 2).await;
    let x = &rec.exchanges()[0];
    assert!(x.response.body.truncated && x.response.body.len == 4096);
    assert_eq!(x.response.body.bytes().unwrap().len(), 1024);
    let y = &rec.exchanges()[1];
    assert!(y.request.body.truncated && y.request.body.len == 5000);
    drop(up);
    let m = mitm(
        tmp.path(),
        "127.0.0.1:9".parse().unwrap(),
        rules(Mode::Replay, Some(tape.clone())),
        opts(ca, 1024, Some(port)),
    )
    .await;
    let mut c = client(&m, Some(NAME)).await.unwrap();
    let got = request(&mut c, port, "GET", "/bytes/4096", &[], vec![]).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.header(REPLAY_HEADER), Some("truncated"));
    // The upload matches on the sha256 of the WHOLE body.
    let got = request(&mut c, port, "POST", "/count", &[], big.clone()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"n=2");
    let mut cut = big.clone();
    cut.truncate(1024);
    let got = request(&mut c, port, "POST", "/count", &[], cut).await;
    assert_eq!(got.header(REPLAY_HEADER), Some("miss"));
}

fn sample_exchange(path: &str) -> cassette::Exchange {
    use cassette::*;
    Exchange {
        request: RecordedRequest {
            method: "GET".into(),
            scheme: "https".into(),
            host: NAME.into(),
            port: 443,
            target: path.into(),
            headers: vec![("accept".into(), HeaderValue::Text("*/*".into()))],
            body_sha256: hex(&[0u8; 32]),
            body: RecordedBody::new(b"", 0),
        },
        response: RecordedResponse {
            status: 200,
            headers: vec![("x-bin".into(), HeaderValue::from_bytes(&[0xff, 0x01]))],
            body: RecordedBody::new(b"ok", 2),
        },
    }
}

#[test]
fn damaged_cassettes_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("c.hcas");
    // Missing.
    let e = Cassette::load(&p).unwrap_err();
    assert!(
        matches!(e, CassetteError::Io { .. }) && e.to_string().contains("c.hcas"),
        "{e}"
    );
    // Empty, or the header cut short.
    fs::write(&p, "").unwrap();
    assert!(matches!(
        Cassette::load(&p).unwrap_err(),
        CassetteError::NoHeader { .. }
    ));
    fs::write(&p, "{\"hull_cass").unwrap();
    let e = Cassette::load(&p).unwrap_err();
    assert!(e.to_string().contains("not a usable hull cassette"), "{e}");
    // Not a cassette.
    fs::write(&p, "GIF89a\n").unwrap();
    assert!(matches!(
        Cassette::load(&p).unwrap_err(),
        CassetteError::BadHeader { .. }
    ));
    // A newer version.
    fs::write(
        &p,
        "{\"hull_cassette\":9,\"sandbox\":\"s\",\"created\":0}\n",
    )
    .unwrap();
    let e = Cassette::load(&p).unwrap_err();
    assert!(e.to_string().contains("version 9"), "{e}");

    // A good one with two records, round-tripping non-UTF-8 headers.
    let r = Recorder::open(&p.with_extension("new"), "sb").unwrap();
    r.append(&sample_exchange("/a")).unwrap();
    r.append(&sample_exchange("/b")).unwrap();
    drop(r);
    let good = fs::read(p.with_extension("new")).unwrap();
    let c = Cassette::load(&p.with_extension("new")).unwrap();
    assert_eq!(c.exchanges().len(), 2);
    assert_eq!(
        c.exchanges()[0].response.headers[0].1.to_bytes(),
        vec![0xff, 0x01]
    );
    assert!(!c.torn_tail());

    // Corrupt in the middle: the line is named.
    let text = String::from_utf8(good.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    fs::write(
        &p,
        format!("{}\n{{\"request\": 3}}\n{}\n", lines[0], lines[2]),
    )
    .unwrap();
    let e = Cassette::load(&p).unwrap_err();
    assert!(e.to_string().contains("corrupt at line 2"), "{e}");
    // Bad base64 in a body.
    fs::write(
        &p,
        format!(
            "{}\n{}\n",
            lines[0],
            lines[1].replace("\"b2s=\"", "\"@@@\"")
        ),
    )
    .unwrap();
    let e = Cassette::load(&p).unwrap_err();
    assert!(
        e.to_string().contains("line 2") && e.to_string().contains("base64"),
        "{e}"
    );

    // A torn last record (crash mid-write): ignored, and said so.
    fs::write(&p, &good[..good.len() - 10]).unwrap();
    let c = Cassette::load(&p).unwrap();
    assert_eq!(c.exchanges().len(), 1);
    assert!(c.torn_tail());
    // Reopening for recording cuts it off, then appends cleanly.
    let r = Recorder::open(&p, "sb").unwrap();
    r.append(&sample_exchange("/c")).unwrap();
    drop(r);
    let c = Cassette::load(&p).unwrap();
    assert!(!c.torn_tail());
    let targets: Vec<_> = c
        .exchanges()
        .iter()
        .map(|x| x.request.target.as_str())
        .collect();
    assert_eq!(targets, ["/a", "/c"]);
    // Recording into something that is not a cassette is refused.
    let junk = tmp.path().join("junk");
    fs::write(&junk, "hello\n").unwrap();
    assert!(Recorder::open(&junk, "sb").is_err());
    assert_eq!(fs::read(&junk).unwrap(), b"hello\n");
}

#[test]
fn copy_complete_takes_whole_records_only() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("live.hcas");
    let r = Recorder::open(&src, "sb").unwrap();
    r.append(&sample_exchange("/a")).unwrap();
    drop(r);
    // Half a record being written.
    let mut f = fs::OpenOptions::new().append(true).open(&src).unwrap();
    std::io::Write::write_all(&mut f, b"{\"request\":{\"meth").unwrap();
    let dst = tmp.path().join("snap.hcas");
    let n = cassette::copy_complete(&src, &dst).unwrap();
    assert_eq!(n, fs::metadata(&dst).unwrap().len());
    let c = Cassette::load(&dst).unwrap();
    assert_eq!(c.exchanges().len(), 1);
    assert!(!c.torn_tail());
    // Not a cassette: refused, nothing written.
    fs::write(&src, "nope").unwrap();
    let dst2 = tmp.path().join("snap2.hcas");
    assert!(cassette::copy_complete(&src, &dst2).is_err());
    assert!(!dst2.exists());
}

#[tokio::test]
async fn replay_with_an_unusable_cassette_is_502_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let tape = tmp.path().join("bad.hcas");
    fs::write(&tape, "not a cassette\n").unwrap();
    let pki = test_pki(&[NAME]);
    let ca = write_ca(tmp.path(), &pki);
    let m = mitm(
        tmp.path(),
        "127.0.0.1:9".parse().unwrap(),
        rules(Mode::Replay, Some(tape)),
        opts(ca.clone(), 1024, None),
    )
    .await;
    let mut c = client(&m, Some(NAME)).await.unwrap();
    let got = request(&mut c, m.name_port, "GET", "/", &[], vec![]).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.header(REPLAY_HEADER), Some("unavailable"));
    assert!(String::from_utf8_lossy(&got.body).contains("not a hull cassette header"));
    {
        let ev = m.events.0.lock().unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].1.reason, "replay cassette unusable");
    }
    // No cassette at all.
    let m = mitm(
        tmp.path(),
        "127.0.0.1:9".parse().unwrap(),
        rules(Mode::Replay, None),
        opts(ca, 1024, None),
    )
    .await;
    let mut c = client(&m, Some(NAME)).await.unwrap();
    let got = request(&mut c, m.name_port, "GET", "/", &[], vec![]).await;
    assert_eq!(got.status, 502);
    assert_eq!(m.connects.load(Ordering::SeqCst), 0);
}

#[test]
fn attach_to_snapshot_copies_or_starts_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path();
    let live = cassette::recording_path(state, "sb1");
    let snap = cassette::snapshot_path(state, "snap1");
    // Nothing recorded yet: an empty, loadable cassette.
    cassette::attach_to_snapshot(&live, &snap, "sb1").unwrap();
    let c = Cassette::load(&snap).unwrap();
    assert!(c.exchanges().is_empty());
    assert_eq!(c.sandbox(), "sb1");
    // Recorded: the records are copied.
    let r = Recorder::open(&live, "sb1").unwrap();
    r.append(&sample_exchange("/x")).unwrap();
    cassette::attach_to_snapshot(&live, &snap, "sb1").unwrap();
    assert_eq!(Cassette::load(&snap).unwrap().exchanges().len(), 1);
    assert!(snap.starts_with(state) && live.starts_with(state));
}
