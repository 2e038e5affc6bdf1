//! docs/openapi.json is generated from the code; this fails when it drifts.
//! Regenerate with `HULL_UPDATE_OPENAPI=1 cargo test -p hull-server --test openapi`.

#[test]
fn openapi_is_up_to_date() {
    let doc = hull_server::openapi();
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var("HULL_UPDATE_OPENAPI").as_deref() == Ok("1") {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "docs/openapi.json is out of date: run `HULL_UPDATE_OPENAPI=1 cargo test -p hull-server --test openapi` and commit it"
    );
    // Every route of the router is documented.
    for p in [
        "/v1/sandboxes",
        "/v1/sandboxes/{id}/exec/stream",
        "/v1/sandboxes/{id}/files/archive",
        "/v1/system/reset",
    ] {
        assert!(
            doc.paths.paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
}
