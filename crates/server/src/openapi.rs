//! The OpenAPI document, generated from the handlers' `#[utoipa::path]`
//! annotations and the `hull-api` types, and committed as
//! `docs/openapi.json` (a test fails when it drifts). Limits: WebSocket
//! routes are described in prose (OpenAPI has no WebSocket model).

use hull_api::*;
use utoipa::OpenApi;

use crate::browser::*;
use crate::code::*;
use crate::exec::*;
use crate::files::*;
use crate::mcp_host::*;
use crate::network::*;
use crate::ports::*;
use crate::sandboxes::*;
use crate::shell::*;
use crate::snapshots::*;
use crate::watch::*;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hull",
        description = "The hull agent runtime API. Errors are `{\"error\": {\"kind\", \"message\"}}`; kinds: invalid_argument 400, unauthenticated 401, permission_denied 403, not_found 404, conflict 409, resource_exhausted 429, unavailable 503, internal 500."
    ),
    paths(
        health,
        version,
        info,
        create,
        list,
        inspect,
        destroy,
        pause,
        resume,
        stop,
        set_ttl,
        get_network,
        set_network,
        exec,
        exec_stream,
        exec_ws,
        processes,
        signal,
        attach_ws,
        read_file,
        write_file,
        remove_file,
        stat,
        list_dir,
        files_watch,
        mkdir,
        rename,
        archive_get,
        archive_put,
        shell_open,
        shell_list,
        shell_run,
        shell_send,
        shell_close,
        code_context_create,
        code_contexts,
        code_run,
        code_run_default,
        code_run_stream,
        code_run_stream_default,
        code_interrupt,
        code_restart,
        code_context_delete,
        mcp_server_start,
        mcp_server_list,
        mcp_server_stop,
        mcp_endpoint_post,
        mcp_endpoint_get,
        mcp_endpoint_delete,
        browser_status,
        browser_start,
        browser_stop,
        browser_restart,
        browser_action,
        browser_screenshot,
        browser_cdp,
        browser_cdp_version,
        expose,
        list_ports,
        unexpose,
        proxy_http,
        proxy_tcp,
        snapshot,
        rollback,
        list_snapshots,
        inspect_snapshot,
        delete_snapshot,
        fork,
        export_snapshot,
        import_snapshot,
        list_templates,
        save_template,
        remove_template,
        import_template,
        build_template,
        system_reset
    ),
    components(schemas(
        ErrorBody,
        ApiError,
        ErrorKind,
        ExecEvent,
        ExecClientMessage,
        CodeEvent,
        FileWatchEvent,
        ResetResult,
        BuildEvent,
        ImageConfig
    )),
    modifiers(&BearerOnTcp)
)]
struct ApiDoc;

/// TCP needs `Authorization: Bearer <token>` on every route but health;
/// the unix socket needs nothing.
struct BearerOnTcp;

impl utoipa::Modify for BearerOnTcp {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Required on TCP (the token is <state-dir>/token); the unix socket needs none.",
                    ))
                    .build(),
            ),
        );
        // Either the token (TCP) or nothing (unix socket).
        doc.security = Some(vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::default(),
        ]);
    }
}

/// The OpenAPI document (committed as `docs/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = "v1".into();
    doc
}
