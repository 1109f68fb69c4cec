//! The HTTP doors, one per audience, each a `Router` with its own layers so that what concerns an
//! audience (authentication, body limits) attaches once to its door:
//! - `public`: API v1 for people and their tools (executions, catalog, dead letters, events);
//! - `worker`: the worker protocol under `/api/v1/worker/…`, where every call names its worker
//!   once (`worker::Caller`) and every lease is checked against that worker;
//! - `ops`: health, metrics and the API documents.

mod catalog;
mod deadletters;
mod events;
mod executions;
mod keys;
mod ops;
mod rules;
mod sensors;
mod tokens;
mod worker;
pub(crate) mod workflows;

use std::sync::Arc;

use axum::Router;
use utoipa::openapi::{path::Operation, ContentBuilder, HttpMethod, OpenApi, Ref, RefOr, ResponseBuilder};

use attune_core::auth::Permission;
use axum::http::Method;

use crate::{auth, ApiError, Shared};

pub(crate) type State = axum::extract::State<Arc<Shared>>;
type Door = Router<Arc<Shared>>;

/// The OpenAPI document, generated from the handlers' `#[utoipa::path]` attributes and the types'
/// `ToSchema` derives; `ErrorResponses` adds the error answers every operation can give. A test
/// checks that every documented operation is routed.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Attune API",
        version = "1",
        description = "Run actions on a fleet of workers. Errors are {\"error\": {\"code\", \"message\", \"details\"?}} with a 4xx for the client's mistakes."
    ),
    paths(
        ops::health,
        ops::metrics,
        catalog::stats,
        catalog::workers,
        catalog::packs,
        catalog::load_pack,
        catalog::upload_pack,
        catalog::pack,
        catalog::actions,
        catalog::action,
        executions::create,
        executions::list,
        executions::get,
        executions::cancel,
        executions::wait,
        executions::logs,
        events::events,
        deadletters::list,
        deadletters::requeue,
        tokens::create,
        tokens::list,
        tokens::revoke,
        keys::set,
        keys::list,
        keys::get,
        keys::delete,
        keys::rotate_master,
        rules::webhook,
        rules::emit,
        rules::list_events,
        rules::get_event,
        rules::triggers,
        rules::rules,
        rules::rule,
        rules::enable,
        rules::disable,
        rules::test,
        worker::register,
        worker::heartbeat,
        worker::poll,
        worker::start,
        worker::complete,
        worker::append_logs,
        worker::start_batch,
        worker::complete_batch,
        worker::release,
        worker::drain,
        worker::deregister,
        worker::pack_archive,
        sensors::events,
        sensors::exit,
        sensors::list,
        sensors::get,
        sensors::enable,
        sensors::disable,
        workflows::children,
        workflows::pause,
        workflows::resume,
        workflows::list,
        workflows::respond,
    ),
    components(schemas(attune_wire::ErrorBody, attune_wire::ErrorDetail, attune_wire::StreamEvent)),
    modifiers(&ErrorResponses)
)]
pub struct ApiDoc;

/// Adds to every operation the error answers it can give, each with the one error shape
/// (`ErrorBody`): 400 when it takes parameters or a body, 404 when its path names something,
/// 415 and 422 when it takes a JSON body, 500 and 503 always; and gives the shape to the error
/// answers a handler documents by description only (a 409, say).
struct ErrorResponses;

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, api: &mut OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        api.components.get_or_insert_with(Default::default).add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in api.paths.paths.iter_mut() {
            for method in [HttpMethod::Get, HttpMethod::Post, HttpMethod::Delete] {
                let (op, m) = match method {
                    HttpMethod::Get => (item.get.as_mut(), Method::GET),
                    HttpMethod::Delete => (item.delete.as_mut(), Method::DELETE),
                    _ => (item.post.as_mut(), Method::POST),
                };
                if let Some(op) = op {
                    add_errors(path, m, op);
                }
            }
        }
    }
}

fn add_errors(path: &str, method: Method, op: &mut Operation) {
    if let Some((_, _, permission)) = all_rules().find(|(m, p, _)| *m == method && *p == path) {
        let who = match permission {
            Permission::Enroll => "an enrollment token (role `worker`)".to_owned(),
            Permission::WorkerProtocol => "the worker's own credential (from its registration)".to_owned(),
            p => {
                let roles: Vec<_> = attune_core::auth::Role::ALL
                    .into_iter()
                    .filter(|r| r.grantable() && r.allows(*p))
                    .map(|r| format!("`{r}`"))
                    .collect();
                format!("a token of role {}", roles.join(" or "))
            }
        };
        let note = format!("Needs {who} (`Authorization: Bearer <token>`).");
        op.description = Some(match op.description.take() {
            Some(d) => format!("{d}\n\n{note}"),
            None => note,
        });
        op.security =
            Some(vec![utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new())]);
        op.extensions
            .get_or_insert_with(Default::default)
            .insert("x-attune-permission".into(), serde_json::json!(permission.as_str()));
        op.responses.responses.entry("401".into()).or_insert_with(|| {
            ResponseBuilder::new().description("No token, or an unknown, expired or revoked one").into()
        });
        op.responses
            .responses
            .entry("403".into())
            .or_insert_with(|| ResponseBuilder::new().description("The token's role may not do this").into());
    }
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let has_body = op.request_body.is_some();
    let mut codes =
        vec![("500", "Internal error; see the server log"), ("503", "Database unavailable or shutting down")];
    if has_params || has_body {
        codes.push(("400", "Malformed request: a path or query parameter, or the JSON syntax"));
    }
    if path.contains('{') {
        codes.push(("404", "Not found"));
    }
    if has_body {
        codes.push(("408", "The body did not arrive within `server.body_timeout`"));
        codes.push(("413", "The body is larger than this door takes (`server.max_body_bytes`, or for workers what the output caps need)"));
        codes.push(("415", "The body is not `application/json`"));
        codes.push(("422", "The body is JSON but its content is invalid (the message names the field)"));
    }
    for (code, description) in codes {
        op.responses
            .responses
            .entry(code.to_owned())
            .or_insert_with(|| ResponseBuilder::new().description(description).into());
    }
    for (code, response) in op.responses.responses.iter_mut() {
        let RefOr::T(r) = response else { continue };
        if code.as_str() >= "400" && r.content.is_empty() {
            r.content.insert(
                "application/json".into(),
                ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
            );
        }
    }
}

async fn openapi() -> axum::Json<OpenApi> {
    axum::Json(<ApiDoc as utoipa::OpenApi>::openapi())
}

async fn docs() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("docs.html"))
}

/// Every route, door by door; each door's routes are guarded by its rules (`auth::guard`).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    use axum::extract::DefaultBodyLimit;
    let limits = &shared.opts.http;
    let guarded = |door: Door, rules: auth::Rules| {
        door.route_layer(axum::middleware::from_fn_with_state((shared.clone(), rules), auth::guard))
    };
    Router::new()
        .merge(open_door(shared.opts.metrics_public))
        .merge(crate::console::door().layer(DefaultBodyLimit::max(256 * 1024)))
        .merge(guarded(ops_door(shared.opts.metrics_public), OPS_RULES))
        .merge(guarded(public_door(), PUBLIC_RULES).layer(DefaultBodyLimit::max(limits.max_body_bytes)))
        .merge(guarded(
            Router::new().route(
                "/api/v1/pack-archives",
                axum::routing::post(catalog::upload_pack)
                    .layer(DefaultBodyLimit::max(shared.opts.pack_limits.max_archive_bytes as usize)),
            ),
            PUBLIC_RULES,
        ))
        .merge(
            webhook_door()
                .route_layer(axum::middleware::from_fn_with_state(
                    (shared.clone(), WEBHOOK_RULES),
                    webhook_guard,
                ))
                .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
        )
        .merge(
            guarded(worker::door(), worker::RULES)
                .layer(DefaultBodyLimit::max(limits.max_worker_request_bytes)),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

/// What anyone may read: health, the API document and its page (they describe the API, which is
/// public knowledge; every operation they list needs a token), and metrics when
/// `server.metrics_public` says so.
fn open_door(metrics_public: bool) -> Door {
    use axum::routing::get;
    let door = Router::new()
        .route("/health", get(ops::health))
        .route("/api/v1/docs", get(docs))
        .route("/api/v1/openapi.json", get(openapi));
    if metrics_public {
        door.route("/metrics", get(ops::metrics))
    } else {
        door
    }
}

/// Metrics, unless public.
fn ops_door(metrics_public: bool) -> Door {
    use axum::routing::get;
    if metrics_public {
        Router::new()
    } else {
        Router::new().route("/metrics", get(ops::metrics))
    }
}

const OPS_RULES: auth::Rules = &[(Method::GET, "/metrics", Permission::Read)];

/// API v1 for people and their tools.
fn public_door() -> Door {
    use axum::routing::{get, post};
    Router::new()
        .route("/api/v1/executions", post(executions::create).get(executions::list))
        .route("/api/v1/executions/{id}", get(executions::get))
        .route("/api/v1/executions/{id}/cancel", post(executions::cancel))
        .route("/api/v1/executions/{id}/wait", get(executions::wait))
        .route("/api/v1/executions/{id}/logs", get(executions::logs))
        .route("/api/v1/executions/{id}/children", get(workflows::children))
        .route("/api/v1/executions/{id}/pause", post(workflows::pause))
        .route("/api/v1/executions/{id}/resume", post(workflows::resume))
        .route("/api/v1/inquiries", get(workflows::list))
        .route("/api/v1/inquiries/{id}/respond", post(workflows::respond))
        .route("/api/v1/stats", get(catalog::stats))
        .route("/api/v1/events", get(events::events))
        .route("/api/v1/dead-letters", get(deadletters::list))
        .route("/api/v1/dead-letters/{id}/requeue", post(deadletters::requeue))
        .route("/api/v1/workers", get(catalog::workers))
        .route("/api/v1/packs", get(catalog::packs).post(catalog::load_pack))
        .route("/api/v1/packs/{pack_ref}", get(catalog::pack))
        .route("/api/v1/actions", get(catalog::actions))
        .route("/api/v1/actions/{action_ref}", get(catalog::action))
        .route("/api/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/api/v1/tokens/{name}/revoke", post(tokens::revoke))
        .route("/api/v1/keys", post(keys::set).get(keys::list))
        .route("/api/v1/keys/rotate-master", post(keys::rotate_master))
        .route("/api/v1/keys/{name}", get(keys::get).delete(keys::delete))
        .route("/api/v1/trigger-events", post(rules::emit).get(rules::list_events))
        .route("/api/v1/trigger-events/{id}", get(rules::get_event))
        .route("/api/v1/triggers", get(rules::triggers))
        .route("/api/v1/rules", get(rules::rules))
        .route("/api/v1/rules/{rule_ref}", get(rules::rule))
        .route("/api/v1/rules/{rule_ref}/enable", post(rules::enable))
        .route("/api/v1/rules/{rule_ref}/disable", post(rules::disable))
        .route("/api/v1/rules/{rule_ref}/test", post(rules::test))
        .route("/api/v1/sensors", get(sensors::list))
        .route("/api/v1/sensors/{sensor_ref}", get(sensors::get))
        .route("/api/v1/sensors/{sensor_ref}/enable", post(sensors::enable))
        .route("/api/v1/sensors/{sensor_ref}/disable", post(sensors::disable))
}

/// Webhooks: called by other systems, which authenticate with a token or by signing the body.
fn webhook_door() -> Door {
    Router::new().route("/api/v1/webhooks/{name}", axum::routing::post(rules::webhook))
}

const WEBHOOK_RULES: auth::Rules = &[(Method::POST, "/api/v1/webhooks/{name}", Permission::EmitEvents)];

/// A webhook call with a signature and no token goes to its handler, which checks the signature
/// against the webhook's secret key (and refuses it when there is none); anything else is guarded
/// like every other route.
async fn webhook_guard(
    state: axum::extract::State<(Arc<Shared>, auth::Rules)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let h = req.headers();
    if !h.contains_key(axum::http::header::AUTHORIZATION) && h.contains_key(rules::SIGNATURE_HEADER) {
        return next.run(req).await;
    }
    auth::guard(state, req, next).await
}

/// What each public route needs (`attune_core::auth` says which role has what).
const PUBLIC_RULES: auth::Rules = &[
    (Method::POST, "/api/v1/executions", Permission::Run),
    (Method::GET, "/api/v1/executions", Permission::Read),
    (Method::GET, "/api/v1/executions/{id}", Permission::Read),
    (Method::POST, "/api/v1/executions/{id}/cancel", Permission::Cancel),
    (Method::GET, "/api/v1/executions/{id}/wait", Permission::Read),
    (Method::GET, "/api/v1/executions/{id}/logs", Permission::Read),
    (Method::GET, "/api/v1/executions/{id}/children", Permission::Read),
    (Method::POST, "/api/v1/executions/{id}/pause", Permission::Cancel),
    (Method::POST, "/api/v1/executions/{id}/resume", Permission::Cancel),
    (Method::GET, "/api/v1/inquiries", Permission::Read),
    (Method::POST, "/api/v1/inquiries/{id}/respond", Permission::Run),
    (Method::GET, "/api/v1/stats", Permission::Read),
    (Method::GET, "/api/v1/events", Permission::Read),
    (Method::GET, "/api/v1/dead-letters", Permission::Read),
    (Method::POST, "/api/v1/dead-letters/{id}/requeue", Permission::Requeue),
    (Method::GET, "/api/v1/workers", Permission::Read),
    (Method::GET, "/api/v1/packs", Permission::Read),
    (Method::POST, "/api/v1/packs", Permission::Admin),
    (Method::GET, "/api/v1/packs/{pack_ref}", Permission::Read),
    (Method::POST, "/api/v1/pack-archives", Permission::Admin),
    (Method::POST, "/api/v1/keys", Permission::Admin),
    (Method::GET, "/api/v1/keys", Permission::Read),
    (Method::POST, "/api/v1/keys/rotate-master", Permission::Admin),
    (Method::GET, "/api/v1/keys/{name}", Permission::Read),
    (Method::DELETE, "/api/v1/keys/{name}", Permission::Admin),
    (Method::GET, "/api/v1/actions", Permission::Read),
    (Method::GET, "/api/v1/actions/{action_ref}", Permission::Read),
    (Method::POST, "/api/v1/tokens", Permission::Admin),
    (Method::GET, "/api/v1/tokens", Permission::Admin),
    (Method::POST, "/api/v1/tokens/{name}/revoke", Permission::Admin),
    (Method::POST, "/api/v1/trigger-events", Permission::EmitEvents),
    (Method::GET, "/api/v1/trigger-events", Permission::Read),
    (Method::GET, "/api/v1/trigger-events/{id}", Permission::Read),
    (Method::GET, "/api/v1/triggers", Permission::Read),
    (Method::GET, "/api/v1/rules", Permission::Read),
    (Method::GET, "/api/v1/rules/{rule_ref}", Permission::Read),
    (Method::POST, "/api/v1/rules/{rule_ref}/enable", Permission::Admin),
    (Method::POST, "/api/v1/rules/{rule_ref}/disable", Permission::Admin),
    (Method::POST, "/api/v1/rules/{rule_ref}/test", Permission::Read),
    (Method::GET, "/api/v1/sensors", Permission::Read),
    (Method::GET, "/api/v1/sensors/{sensor_ref}", Permission::Read),
    (Method::POST, "/api/v1/sensors/{sensor_ref}/enable", Permission::Admin),
    (Method::POST, "/api/v1/sensors/{sensor_ref}/disable", Permission::Admin),
];

/// Every rule of every door (the API document states each operation's).
fn all_rules() -> impl Iterator<Item = &'static (Method, &'static str, Permission)> {
    OPS_RULES.iter().chain(PUBLIC_RULES).chain(WEBHOOK_RULES).chain(worker::RULES)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found("no_route", format!("no route {}; the API lives under /api/v1", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
