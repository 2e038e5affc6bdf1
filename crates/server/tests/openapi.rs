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
    // Every route of the router is documented, with its methods.
    let routes: &[(&str, &[&str])] = &[
        ("/v1/health", &["get"]),
        ("/v1/version", &["get"]),
        ("/v1/info", &["get"]),
        ("/v1/sandboxes", &["get", "post"]),
        ("/v1/sandboxes/{id}", &["get", "delete"]),
        ("/v1/sandboxes/{id}/pause", &["post"]),
        ("/v1/sandboxes/{id}/resume", &["post"]),
        ("/v1/sandboxes/{id}/stop", &["post"]),
        ("/v1/sandboxes/{id}/ttl", &["put"]),
        ("/v1/sandboxes/{id}/network", &["get", "put"]),
        ("/v1/sandboxes/{id}/exec", &["post"]),
        ("/v1/sandboxes/{id}/exec/stream", &["post"]),
        ("/v1/sandboxes/{id}/exec/ws", &["get"]),
        ("/v1/sandboxes/{id}/processes", &["get"]),
        ("/v1/sandboxes/{id}/processes/{pid}/signal", &["post"]),
        ("/v1/sandboxes/{id}/processes/{pid}/attach", &["get"]),
        ("/v1/sandboxes/{id}/files", &["get", "put", "delete"]),
        ("/v1/sandboxes/{id}/files/stat", &["get"]),
        ("/v1/sandboxes/{id}/files/list", &["get"]),
        ("/v1/sandboxes/{id}/files/watch", &["get"]),
        ("/v1/sandboxes/{id}/files/mkdir", &["post"]),
        ("/v1/sandboxes/{id}/files/rename", &["post"]),
        ("/v1/sandboxes/{id}/files/archive", &["get", "put"]),
        ("/v1/sandboxes/{id}/shells", &["get", "post"]),
        ("/v1/sandboxes/{id}/shells/{session}", &["delete"]),
        ("/v1/sandboxes/{id}/shells/{session}/run", &["post"]),
        ("/v1/sandboxes/{id}/shells/{session}/send", &["post"]),
        ("/v1/sandboxes/{id}/code/contexts", &["get", "post"]),
        ("/v1/sandboxes/{id}/code/contexts/{context}", &["delete"]),
        ("/v1/sandboxes/{id}/code/contexts/{context}/run", &["post"]),
        (
            "/v1/sandboxes/{id}/code/contexts/{context}/interrupt",
            &["post"],
        ),
        (
            "/v1/sandboxes/{id}/code/contexts/{context}/restart",
            &["post"],
        ),
        ("/v1/sandboxes/{id}/code/run", &["post"]),
        (
            "/v1/sandboxes/{id}/code/contexts/{context}/run/stream",
            &["post"],
        ),
        ("/v1/sandboxes/{id}/code/run/stream", &["post"]),
        ("/v1/sandboxes/{id}/mcp-servers", &["get", "post"]),
        ("/v1/sandboxes/{id}/mcp-servers/{name}", &["delete"]),
        ("/v1/sandboxes/{id}/mcp/{name}", &["get", "post", "delete"]),
        ("/v1/sandboxes/{id}/browser", &["get"]),
        ("/v1/sandboxes/{id}/browser/start", &["post"]),
        ("/v1/sandboxes/{id}/browser/stop", &["post"]),
        ("/v1/sandboxes/{id}/browser/restart", &["post"]),
        ("/v1/sandboxes/{id}/browser/actions", &["post"]),
        ("/v1/sandboxes/{id}/browser/screenshot", &["get"]),
        ("/v1/sandboxes/{id}/browser/cdp", &["get"]),
        ("/v1/sandboxes/{id}/browser/cdp/json/version", &["get"]),
        ("/v1/sandboxes/{id}/ports", &["get", "post"]),
        ("/v1/sandboxes/{id}/ports/{port}", &["delete"]),
        ("/v1/sandboxes/{id}/ports/{port}/http/{path}", &["get"]),
        ("/v1/sandboxes/{id}/ports/{port}/tcp", &["get"]),
        ("/v1/sandboxes/{id}/snapshot", &["post"]),
        ("/v1/sandboxes/{id}/rollback", &["post"]),
        ("/v1/snapshots", &["get"]),
        ("/v1/snapshots/{id}", &["get", "delete"]),
        ("/v1/snapshots/{id}/fork", &["post"]),
        ("/v1/snapshots/{id}/export", &["get"]),
        ("/v1/snapshots/import", &["post"]),
        ("/v1/templates", &["get", "post"]),
        ("/v1/templates/{name}", &["delete"]),
        ("/v1/templates/import", &["post"]),
        ("/v1/templates/build", &["post"]),
        ("/v1/system/reset", &["post"]),
    ];
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (path, methods) in routes {
        for m in *methods {
            assert!(
                json["paths"][path][m].is_object(),
                "{} {path} missing from the OpenAPI document",
                m.to_uppercase()
            );
        }
    }
    assert_eq!(
        json["paths"].as_object().unwrap().len(),
        routes.len(),
        "a documented path the router does not serve"
    );
    assert!(json["components"]["securitySchemes"]["bearer"].is_object());
    // Every schema a body refers to is defined.
    let schemas = json["components"]["schemas"].as_object().unwrap();
    for r in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
        let name = &r[..r.find('"').unwrap()];
        assert!(
            schemas.contains_key(name),
            "schema {name} is referenced but not defined"
        );
    }
}
