//! The web console (issue 15): server-rendered pages at `/`, templates embedded in the binary
//! (`templates/`, rendered with minijinja, HTML-escaped), and a little JavaScript (`app.js`) that
//! follows the event stream with the session and re-renders a page's `data-refresh` tables.
//!
//! Sign-in takes a token; the session is that token in an HttpOnly, SameSite=Strict cookie. The
//! API accepts the cookie for reads only (`session_bearer`), so a page's script can read but a
//! forged request cannot change anything; every form that changes something carries a CSRF token
//! derived from the session and is checked, and a role without the permission sees no button and
//! is refused (403) if it posts anyway.

use std::sync::{Arc, OnceLock};

use attune_core::{
    auth::{Identity, Permission},
    submission::{Origin, Overrides},
    ActionRef, ExecutionStatus, Timestamp,
};
use attune_store::ExecutionFilter;
use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
    Form, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;

use crate::{
    submission::{ActionSource, Request},
    Shared,
};

const COOKIE: &str = "attune_session";

/// The console's routes (outside `/api`): its pages, its forms and its two assets.
pub(crate) fn door() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/executions", get(executions))
        .route("/executions/{id}", get(execution))
        .route("/executions/{id}/cancel", post(cancel))
        .route("/executions/{id}/rerun", post(rerun))
        .route("/actions", get(actions))
        .route("/actions/{action_ref}", get(action))
        .route("/actions/{action_ref}/run", post(run))
        .route("/automation", get(automation))
        .route("/access", get(access))
        .route("/inquiries", get(inquiries))
        .route("/inquiries/{id}", get(inquiry))
        .route("/inquiries/{id}/respond", post(respond))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/{id}/requeue", post(requeue))
        .route("/console/app.js", get(|| asset("text/javascript", include_str!("app.js"))))
        .route("/console/app.css", get(|| asset("text/css", include_str!("app.css"))))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

fn templates() -> &'static minijinja::Environment<'static> {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        for (name, text) in [
            ("base.html", include_str!("templates/base.html")),
            ("login.html", include_str!("templates/login.html")),
            ("overview.html", include_str!("templates/overview.html")),
            ("executions.html", include_str!("templates/executions.html")),
            ("execution.html", include_str!("templates/execution.html")),
            ("actions.html", include_str!("templates/actions.html")),
            ("action.html", include_str!("templates/action.html")),
            ("dead_letters.html", include_str!("templates/dead_letters.html")),
            ("inquiries.html", include_str!("templates/inquiries.html")),
            ("inquiry.html", include_str!("templates/inquiry.html")),
            ("fields.html", include_str!("templates/fields.html")),
            ("automation.html", include_str!("templates/automation.html")),
            ("access.html", include_str!("templates/access.html")),
            ("error.html", include_str!("templates/error.html")),
        ] {
            env.add_template(name, text).expect("the console's templates are valid");
        }
        env
    })
}

/// A page, or the error page when a template fails (a bug: logged).
fn page(status: StatusCode, name: &str, ctx: Value) -> Response {
    match templates().get_template(name).and_then(|t| t.render(&ctx)) {
        Ok(html) => (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(e) => {
            tracing::error!(template = name, error = %e, "console page could not be rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered").into_response()
        }
    }
}

/// Who is signed in: the identity, and what the pages need of the session.
struct Session {
    who: Identity,
    csrf: String,
}

impl Session {
    fn may(&self, p: Permission) -> bool {
        self.who.role.allows(p)
    }

    /// What every page's template gets.
    fn context(&self, title: &str, extra: Value) -> Value {
        let mut ctx = json!({
            "title": title,
            "user": self.who.name,
            "role": self.who.role.as_str(),
            "csrf": self.csrf,
            "can": {
                "run": self.may(Permission::Run),
                "cancel": self.may(Permission::Cancel),
                "requeue": self.may(Permission::Requeue),
                "respond": self.may(Permission::Respond),
                "admin": self.may(Permission::Admin),
            },
        });
        if let (Value::Object(m), Value::Object(e)) = (&mut ctx, extra) {
            m.extend(e);
        }
        ctx
    }
}

fn csrf_of(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(format!("attune-console-csrf:{secret}").as_bytes()))[..32].to_owned()
}

fn cookie_secret(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE && !v.is_empty() && v.len() <= 256).then(|| v.to_owned())
        })
}

/// For the API's guard: a read (GET) without `Authorization` but with a console session is
/// authenticated as the session's token. Writes always need the header, so a page from another
/// site cannot make a signed-in browser change anything through the API.
pub(crate) fn session_bearer(method: &Method, headers: &HeaderMap) -> Option<HeaderMap> {
    if method != Method::GET || headers.contains_key(header::AUTHORIZATION) {
        return None;
    }
    let secret = cookie_secret(headers)?;
    let mut h = headers.clone();
    h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {secret}")).ok()?);
    Some(h)
}

/// The signed-in session, or the sign-in page.
async fn session(shared: &Shared, headers: &HeaderMap) -> Result<Session, Response> {
    let Some(secret) = cookie_secret(headers) else { return Err(Redirect::to("/login").into_response()) };
    let mut h = HeaderMap::new();
    let bearer = HeaderValue::from_str(&format!("Bearer {secret}"))
        .map_err(|_| Redirect::to("/login").into_response())?;
    h.insert(header::AUTHORIZATION, bearer);
    match shared.authenticate(&h).await {
        Ok(who) if who.worker.is_none() && who.role.allows(Permission::Read) => {
            Ok(Session { who, csrf: csrf_of(&secret) })
        }
        _ => Err(Redirect::to("/login?expired=1").into_response()),
    }
}

/// A form that changes something: signed in, with the session's CSRF token and the permission.
async fn authorized(
    shared: &Shared,
    headers: &HeaderMap,
    csrf: &str,
    p: Permission,
) -> Result<Session, Response> {
    let s = session(shared, headers).await?;
    if csrf != s.csrf {
        return Err(error(&s, StatusCode::FORBIDDEN, "This form is stale or was not sent by this console (CSRF token mismatch). Reload the page and try again."));
    }
    if !s.may(p) {
        return Err(error(&s, StatusCode::FORBIDDEN, &format!("The {} role may not do this.", s.who.role)));
    }
    Ok(s)
}

/// As `authorized`, for a form read as its fields (one per parameter, plus `csrf`).
async fn authorized_fields(
    shared: &Shared,
    headers: &HeaderMap,
    form: &[(String, String)],
    p: Permission,
) -> Result<Session, Response> {
    let csrf = form.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v.as_str()).unwrap_or_default();
    authorized(shared, headers, csrf, p).await
}

fn error(s: &Session, status: StatusCode, message: &str) -> Response {
    page(status, "error.html", s.context("Error", json!({"message": message, "status": status.as_u16()})))
}

fn api_error(s: &Session, e: crate::ApiError) -> Response {
    let status = e.status;
    let mut message = e.message;
    if !e.details.is_empty() {
        message = format!("{message}: {}", e.details.join("; "));
    }
    error(s, status, &message)
}

#[derive(Deserialize)]
struct LoginQuery {
    expired: Option<String>,
}

async fn login_page(q: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>) -> Response {
    let expired = q.ok().and_then(|Query(q)| q.expired).is_some();
    let message = expired
        .then_some("Your session ended (the token was revoked, expired, or is unknown). Sign in again.");
    page(StatusCode::OK, "login.html", json!({"title": "Sign in", "message": message}))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(shared): State<Arc<Shared>>, Form(f): Form<LoginForm>) -> Response {
    let token = f.token.trim();
    let mut h = HeaderMap::new();
    let refused =
        |m: &str| page(StatusCode::UNAUTHORIZED, "login.html", json!({"title": "Sign in", "message": m}));
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return refused("That is not a token: tokens are printable text (attune_…).");
    };
    h.insert(header::AUTHORIZATION, bearer);
    match shared.authenticate(&h).await {
        Ok(who) if who.worker.is_none() && who.role.allows(Permission::Read) => {
            // Secure when the server speaks TLS (the browser then never sends it in clear).
            let secure = if shared.opts.tls.is_some() { "; Secure" } else { "" };
            let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}");
            tracing::info!(user = %who.name, role = %who.role, "console sign-in");
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        Ok(_) => refused("Worker tokens cannot sign in to the console."),
        Err(e) => refused(&format!("Not signed in: {}.", e.message)),
    }
}

async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

fn ago(now: Timestamp, t: Timestamp) -> String {
    let s = (now.millis() - t.millis()).max(0) / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

async fn overview(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let s = match session(&shared, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let now = Timestamp::now();
    let since = Timestamp(now.0 / 60_000 * 60_000 - (MINUTES - 1) * 60_000);
    let (workers, counts, queues, ended) = match tokio::try_join!(
        shared.store.list_workers(false),
        shared.store.count_unfinished(),
        shared.store.queue_depths(),
        shared.store.finished_per_minute(since, MINUTES as u32),
    ) {
        Ok(x) => x,
        Err(e) => return api_error(&s, e.into()),
    };
    let workers: Vec<Value> = workers
        .iter()
        .map(|w| {
            json!({
                "id": w.id, "name": w.name, "status": w.status.as_str(), "host": w.host,
                "heartbeat": ago(now, w.last_heartbeat), "in_flight": w.in_flight, "slots": w.concurrency,
                "runtimes": w.runtimes.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "),
            })
        })
        .collect();
    let counts: Vec<Value> =
        counts.iter().map(|(st, n)| json!({"status": st.as_str(), "count": n})).collect();
    let queues: Vec<Value> = queues
        .iter()
        .map(|(q, n, oldest)| json!({"queue": q, "depth": n, "oldest": oldest.map(|t| ago(now, t))}))
        .collect();
    let outcomes: Vec<&str> =
        ExecutionStatus::ALL.iter().filter(|x| x.is_terminal()).map(|x| x.as_str()).collect();
    // Every minute of the window, newest first, with a count for each outcome (0 if none).
    let minutes: Vec<Value> = (0..MINUTES)
        .rev()
        .map(|i| {
            let m = since.0 + i * 60_000;
            let n: Vec<u64> = outcomes
                .iter()
                .map(|o| ended.iter().filter(|(t, st, _)| *t == m && st.as_str() == *o).map(|x| x.2).sum())
                .collect();
            json!({"minute": Timestamp(m).to_datetime().format("%H:%M").to_string(), "counts": n})
        })
        .collect();
    page(
        StatusCode::OK,
        "overview.html",
        s.context(
            "Overview",
            json!({"workers": workers, "counts": counts, "queues": queues, "outcomes": outcomes, "minutes": minutes}),
        ),
    )
}

/// The overview's window of executions ended per minute.
const MINUTES: i64 = 15;

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    action: Option<String>,
    /// Created at or after this time (UTC, `YYYY-MM-DDTHH:MM[:SS]`).
    since: Option<String>,
    /// Created before this time (UTC).
    until: Option<String>,
    /// The next page: executions older than this one.
    before: Option<String>,
}

/// The lowest execution id of a millisecond (ids are UUIDv7: time-ordered).
fn id_at(ms: i64) -> uuid::Uuid {
    uuid::Builder::from_unix_timestamp_millis(ms.max(0) as u64, &[0; 10]).into_uuid()
}

/// A time typed in a filter (UTC): `2026-11-28T09:30`, with optional seconds, or a date.
fn utc(field: &str, text: &str) -> Result<i64, String> {
    let t = text.trim();
    let parsed = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M"))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").map(|d| d.and_time(chrono::NaiveTime::MIN))
        });
    parsed
        .map(|d| d.and_utc().timestamp_millis())
        .map_err(|_| format!("{field}: {t:?} is not a time (use 2026-11-28T09:30, in UTC)."))
}

fn row(e: &attune_core::Execution) -> Value {
    json!({
        "id": e.id, "action": e.action_ref.as_str(), "status": e.status.as_str(),
        "created": e.created_at.to_datetime().format("%Y-%m-%d %H:%M:%S").to_string(),
        "worker": e.worker.clone().unwrap_or_default(), "attempt": e.attempt,
    })
}

async fn executions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let s = match session(&shared, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error(&s, StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let status = q.status.as_deref().filter(|x| !x.is_empty());
    let action = q.action.as_deref().map(str::trim).filter(|x| !x.is_empty());
    let status_f = match status.map(|x| ExecutionStatus::parse(x).ok_or(x)) {
        Some(Err(bad)) => return error(&s, StatusCode::BAD_REQUEST, &format!("There is no status {bad:?}.")),
        Some(Ok(x)) => Some(x),
        None => None,
    };
    let action_f = match action.map(ActionRef::parse) {
        Some(Err(e)) => return error(&s, StatusCode::BAD_REQUEST, &format!("Action filter: {e}")),
        Some(Ok(a)) => Some(a),
        None => None,
    };
    let text = |x: &Option<String>| x.as_deref().map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned);
    let (since, until, before) = (text(&q.since), text(&q.until), text(&q.before));
    let bounds = (|| {
        // `after` is exclusive; the lowest id of a millisecond is never an execution's (its
        // random bits would all be zero), so `> id_at(ms)` is "created at or after ms".
        let after = since.as_deref().map(|t| utc("Since", t)).transpose()?.map(id_at);
        let until_id = until.as_deref().map(|t| utc("Until", t)).transpose()?.map(id_at);
        let cursor = before
            .as_deref()
            .map(|b| b.parse::<uuid::Uuid>().map_err(|_| format!("{b:?} is not a page cursor.")))
            .transpose()?;
        Ok::<_, String>((after, until_id.into_iter().chain(cursor).min()))
    })();
    let (after, before_id) = match bounds {
        Ok(x) => x,
        Err(m) => return error(&s, StatusCode::BAD_REQUEST, &m),
    };
    let filter = ExecutionFilter {
        status: status_f,
        action_ref: action_f,
        before: before_id,
        after,
        limit: 100,
        parent: None,
    };
    let list = match shared.store.list_executions(&filter).await {
        Ok(p) => p,
        Err(e) => return api_error(&s, e.into()),
    };
    let statuses: Vec<&str> = ExecutionStatus::ALL.iter().map(|x| x.as_str()).collect();
    page(
        StatusCode::OK,
        "executions.html",
        s.context(
            "Executions",
            json!({"executions": list.items.iter().map(row).collect::<Vec<_>>(), "statuses": statuses,
                   "status": status.unwrap_or(""), "action": action.unwrap_or(""),
                   "since": since, "until": until, "next": list.next, "paged": before.is_some()}),
        ),
    )
}

async fn execution(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let s = match session(&shared, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<uuid::Uuid>() else {
        return error(&s, StatusCode::NOT_FOUND, &format!("{id:?} is not an execution id."));
    };
    let e = match shared.store.get_execution_with_history(id).await {
        Ok(Some(e)) => e.masked(),
        Ok(None) => return error(&s, StatusCode::NOT_FOUND, &format!("There is no execution {id}.")),
        Err(e) => return api_error(&s, e.into()),
    };
    let pretty = |v: &Option<Value>| v.as_ref().map(|v| serde_json::to_string_pretty(v).unwrap_or_default());
    let history: Vec<Value> = e
        .history
        .iter()
        .map(|h| json!({"at": h.at.to_datetime().format("%H:%M:%S%.3f").to_string(), "from": h.from.map(|x| x.as_str()), "to": h.to.as_str(), "actor": h.actor, "reason": h.reason}))
        .collect();
    let attempts: Vec<Value> = e
        .attempts
        .iter()
        .map(|a| json!({"attempt": a.attempt, "worker": a.worker, "status": a.status.as_str(), "exit_code": a.exit_code}))
        .collect();
    let (tree, dead_letter) = match tokio::try_join!(tree(&shared, &e), shared.store.dead_letter_of(e.id)) {
        Ok(x) => x,
        Err(err) => return api_error(&s, err.into()),
    };
    let ctx = json!({
        "tree": tree,
        "workflow": is_workflow(&e),
        "dead_letter": dead_letter.map(|d| d.id),
        "e": row(&e),
        "terminal": e.status.is_terminal(),
        "parameters": serde_json::to_string_pretty(&e.parameters).unwrap_or_default(),
        "result": pretty(&e.result),
        "error": pretty(&e.error),
        "stdout": e.stdout, "stderr": e.stderr,
        "history": history, "attempts": attempts,
        "pack_digest": e.pack_digest,
        "parent": e.parent,
    });
    page(StatusCode::OK, "execution.html", s.context(&format!("Execution {}", e.id), ctx))
}

fn is_workflow(e: &attune_core::Execution) -> bool {
    e.action.as_ref().map(|a| a.runtime) == Some(attune_core::Runtime::Workflow)
}

/// The most tasks a workflow's tree shows (a `with` of thousands of items is summarised).
const TREE_NODES: usize = 2_000;

/// A workflow's tasks (and theirs, for a workflow calling a workflow), depth first in the order
/// they were created: task, action, status and how long it took. Empty for any other execution.
async fn tree(
    shared: &Shared,
    root: &attune_core::Execution,
) -> Result<Vec<Value>, attune_store::StoreError> {
    if !is_workflow(root) {
        return Ok(Vec::new());
    }
    let now = Timestamp::now();
    let mut out = Vec::new();
    // Each level is kept newest first, so that the next task to show is popped from its end.
    let level = |mut v: Vec<attune_core::Execution>| {
        v.reverse();
        v
    };
    let mut stack = vec![(0usize, level(shared.store.children(root.id).await?))];
    while let Some((depth, mut rest)) = stack.pop() {
        let Some(e) = rest.pop() else { continue };
        let took = match (e.started_at, e.finished_at) {
            (Some(a), Some(b)) => format!("{} ms", b.millis() - a.millis()),
            (Some(a), None) => format!("{} s…", (now.millis() - a.millis()) / 1000),
            _ => String::new(),
        };
        let inquiry = e.status == ExecutionStatus::Pending
            && e.action.as_ref().map(|a| a.runtime) == Some(attune_core::Runtime::Inquiry);
        out.push(json!({
            "depth": depth, "indent": format!("{}rem", depth as f32 * 1.25),
            "task": e.child_key.clone().unwrap_or_default(),
            "id": e.id, "action": e.action_ref.as_str(), "status": e.status.as_str(), "took": took,
            "inquiry": inquiry,
        }));
        let kids =
            if is_workflow(&e) && depth < 16 { shared.store.children(e.id).await? } else { Vec::new() };
        stack.push((depth, rest));
        stack.push((depth + 1, level(kids)));
        if out.len() >= TREE_NODES {
            out.push(json!({"depth": 0, "indent": "0rem", "more": true}));
            break;
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// A button's form about one thing (`what` names it): authorized, and its id parsed.
async fn button(
    shared: &Shared,
    headers: &HeaderMap,
    f: &CsrfForm,
    p: Permission,
    id: &str,
    what: &str,
) -> Result<(Session, uuid::Uuid), Response> {
    let s = authorized(shared, headers, &f.csrf, p).await?;
    match id.parse::<uuid::Uuid>() {
        Ok(id) => Ok((s, id)),
        Err(_) => Err(error(&s, StatusCode::NOT_FOUND, &format!("No such {what}."))),
    }
}

async fn cancel(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let (s, id) = match button(&shared, &headers, &f, Permission::Cancel, &id, "execution").await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match shared.store.cancel_execution(id, &s.who.actor(), Timestamp::now()).await {
        Ok(e) => {
            shared.changed(&[(id, e.status)]).await;
            Redirect::to(&format!("/executions/{id}")).into_response()
        }
        Err(e) => api_error(&s, e.into()),
    }
}

async fn rerun(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let (s, id) = match button(&shared, &headers, &f, Permission::Run, &id, "execution").await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let e = match shared.store.get_execution(id).await {
        Ok(Some(e)) => e,
        Ok(None) => return error(&s, StatusCode::NOT_FOUND, &format!("There is no execution {id}.")),
        Err(e) => return api_error(&s, e.into()),
    };
    // The same action and parameters (the stored ones: secrets included, never shown).
    submit(&shared, &s, e.action_ref.clone(), e.parameters.clone()).await
}

async fn submit(shared: &Shared, s: &Session, action: ActionRef, parameters: Value) -> Response {
    let req = Request {
        action: ActionSource::Ref(action),
        parameters,
        overrides: Overrides::default(),
        origin: Origin::actor(s.who.actor()),
    };
    match shared.submissions.submit(req).await {
        Ok(e) => Redirect::to(&format!("/executions/{}", e.id)).into_response(),
        Err(e) => api_error(s, e.into()),
    }
}

async fn actions(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let s = match session(&shared, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (packs, actions) = match tokio::try_join!(shared.store.list_packs(), shared.store.list_actions(None))
    {
        Ok(x) => x,
        Err(e) => return api_error(&s, e.into()),
    };
    let packs: Vec<Value> = packs
        .iter()
        .map(|p| {
            let mine: Vec<Value> = actions
                .iter()
                .filter(|a| a.pack == p.meta.pack_ref)
                .map(|a| json!({"ref": a.action_ref.as_str(), "runtime": a.runtime.as_str(), "description": a.description}))
                .collect();
            json!({"ref": p.meta.pack_ref.as_str(), "version": p.meta.version, "description": p.meta.description,
                   "digest": p.meta.digest.as_deref().map(|d| &d[..d.len().min(12)]), "actions": mine})
        })
        .collect();
    page(StatusCode::OK, "actions.html", s.context("Packs and actions", json!({"packs": packs})))
}

/// One form field per parameter of the action's JSON Schema.
fn fields(schema: &Value) -> Vec<Value> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema["properties"].as_object() else { return Vec::new() };
    props
        .iter()
        .map(|(name, p)| {
            let kind = match (p["enum"].as_array(), p["type"].as_str()) {
                (Some(_), _) => "enum",
                (None, Some("boolean")) => "boolean",
                (None, Some("integer")) | (None, Some("number")) => "number",
                (None, Some("string")) => "string",
                _ => "json",
            };
            let default = match &p["default"] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            json!({
                "name": name, "kind": kind, "required": required.contains(&name.as_str()),
                "description": p["description"].as_str().unwrap_or_default(),
                "secret": p["secret"].as_bool().unwrap_or(false),
                "options": p["enum"].as_array().map(|o| o.iter().map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())).collect::<Vec<_>>()),
                "default": default,
                "type": p["type"].as_str().unwrap_or("any"),
            })
        })
        .collect()
}

async fn action(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(r): Path<String>) -> Response {
    let s = match session(&shared, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(r) = ActionRef::parse(&r) else {
        return error(&s, StatusCode::NOT_FOUND, &format!("{r:?} is not an action."));
    };
    let a = match shared.store.get_action(&r).await {
        Ok(Some(a)) => a,
        Ok(None) => return error(&s, StatusCode::NOT_FOUND, &format!("There is no action {r}.")),
        Err(e) => return api_error(&s, e.into()),
    };
    let ctx = json!({
        "a": {"ref": a.action_ref.as_str(), "runtime": a.runtime.as_str(), "description": a.description, "enabled": a.enabled},
        "fields": fields(&a.parameters),
        "schema": serde_json::to_string_pretty(&a.parameters).unwrap_or_default(),
    });
    page(StatusCode::OK, "action.html", s.context(a.action_ref.as_str(), ctx))
}

/// The run form's values, typed by the action's schema: numbers and booleans as such, `json`
/// fields parsed, empty optional fields left out.
fn parameters(schema: &Value, form: &[(String, String)]) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    for f in fields(schema) {
        let name = f["name"].as_str().unwrap_or_default();
        let raw = form.iter().find(|(k, _)| k == &format!("p.{name}")).map(|(_, v)| v.as_str());
        let v = match (f["kind"].as_str(), raw) {
            (Some("boolean"), r) => Value::Bool(r == Some("true")),
            (_, None) | (_, Some("")) => continue,
            (Some("number"), Some(r)) => {
                let n: serde_json::Number =
                    r.trim().parse().map_err(|_| format!("{name}: {r:?} is not a number"))?;
                Value::Number(n)
            }
            (Some("json"), Some(r)) => {
                serde_json::from_str(r).map_err(|e| format!("{name}: not JSON: {e}"))?
            }
            (Some("enum"), Some(r)) => {
                // An enum of numbers or booleans takes the JSON value; of text, the text.
                serde_json::from_str::<Value>(r)
                    .ok()
                    .filter(|v| !v.is_string())
                    .unwrap_or_else(|| Value::String(r.to_owned()))
            }
            (_, Some(r)) => Value::String(r.to_owned()),
        };
        out.insert(name.to_owned(), v);
    }
    Ok(Value::Object(out))
}

async fn run(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(r): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let s = match authorized_fields(&shared, &headers, &form, Permission::Run).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(r) = ActionRef::parse(&r) else { return error(&s, StatusCode::NOT_FOUND, "No such action.") };
    let a = match shared.store.get_action(&r).await {
        Ok(Some(a)) => a,
        Ok(None) => return error(&s, StatusCode::NOT_FOUND, &format!("There is no action {r}.")),
        Err(e) => return api_error(&s, e.into()),
    };
    match parameters(&a.parameters, &form) {
        Ok(p) => submit(&shared, &s, r, p).await,
        Err(m) => error(&s, StatusCode::UNPROCESSABLE_ENTITY, &m),
    }
}

async fn dead_letters(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let s = match session(&shared, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let list = match shared.store.list_dead_letters(false, 200).await {
        Ok(l) => l,
        Err(e) => return api_error(&s, e.into()),
    };
    let rows: Vec<Value> = list
        .iter()
        .map(|d| json!({"id": d.id, "execution": d.execution_id, "action": d.action_ref.as_str(), "cause": d.cause, "at": d.created_at.to_datetime().format("%Y-%m-%d %H:%M:%S").to_string()}))
        .collect();
    page(StatusCode::OK, "dead_letters.html", s.context("Dead letters", json!({"letters": rows})))
}

async fn requeue(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let (s, id) = match button(&shared, &headers, &f, Permission::Requeue, &id, "dead letter").await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match shared.submissions.requeue(id, &s.who.actor()).await {
        Ok(e) => Redirect::to(&format!("/executions/{}", e.id)).into_response(),
        Err(e) => api_error(&s, e.into()),
    }
}

fn when(t: Timestamp) -> String {
    t.to_datetime().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Rules, sensors, and the newest events with what each rule made of them.
async fn automation(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let s = match session(&shared, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let filter = attune_store::EventFilter { trigger: None, before: None, limit: 50 };
    let (rules, sensors, events) = match tokio::try_join!(
        shared.store.list_rules(None),
        shared.store.list_sensors(Timestamp::now()),
        shared.store.list_events(&filter)
    ) {
        Ok(x) => x,
        Err(e) => return api_error(&s, e.into()),
    };
    let rules: Vec<Value> = rules
        .iter()
        .map(|r| json!({"ref": r.rule_ref.as_str(), "enabled": r.enabled, "trigger": r.trigger.type_ref.as_str(), "action": r.action.action_ref.as_str()}))
        .collect();
    let sensors: Vec<Value> = sensors
        .iter()
        .map(|x| json!({"ref": x.sensor.sensor_ref.as_str(), "status": x.status.as_str(), "worker": x.worker_name, "restarts": x.restarts, "last_error": x.last_error}))
        .collect();
    let mut rows = Vec::with_capacity(events.len());
    for e in &events {
        let enforcements = match shared.store.enforcements_of(e.id).await {
            Ok(x) => x,
            Err(err) => return api_error(&s, err.into()),
        };
        let outcomes: Vec<Value> = enforcements
            .iter()
            .map(|x| json!({"rule": x.rule_ref.as_str(), "outcome": x.outcome.as_str(), "execution": x.execution_id, "reason": x.reason}))
            .collect();
        rows.push(json!({"trigger": e.trigger.as_str(), "source": e.source, "at": when(e.created_at), "late": e.late, "enforcements": outcomes}));
    }
    let ctx = json!({"rules": rules, "sensors": sensors, "events": rows});
    page(StatusCode::OK, "automation.html", s.context("Rules, sensors and events", ctx))
}

/// Keys by name (never a value), and tokens for those who manage them.
async fn access(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let s = match session(&shared, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let keys = match shared.store.list_keys(None).await {
        Ok(k) => k,
        Err(e) => return api_error(&s, e.into()),
    };
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| json!({"name": k.name, "pack": k.pack, "secret": k.secret, "updated": when(k.updated_at), "by": k.updated_by}))
        .collect();
    let tokens: Vec<Value> = if s.may(Permission::Admin) {
        match shared.store.list_tokens(false, false).await {
            Ok(t) => t
                .iter()
                .map(|t| {
                    json!({"name": t.name, "role": t.role.as_str(), "created": when(t.created_at),
                    "expires": t.expires_at.map(when), "last_used": t.last_used_at.map(when)})
                })
                .collect(),
            Err(e) => return api_error(&s, e.into()),
        }
    } else {
        Vec::new()
    };
    page(StatusCode::OK, "access.html", s.context("Keys and tokens", json!({"keys": keys, "tokens": tokens})))
}

async fn inquiries(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let s = match session(&shared, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let list = match shared.store.list_inquiries(500).await {
        Ok(l) => l,
        Err(e) => return api_error(&s, e.into()),
    };
    let rows: Vec<Value> = list
        .into_iter()
        .map(|e| {
            let prompt = e.parameters["prompt"].as_str().unwrap_or_default().to_owned();
            let mut r = row(&e);
            r["prompt"] = Value::String(prompt);
            r["parent"] = json!(e.parent);
            r
        })
        .collect();
    page(StatusCode::OK, "inquiries.html", s.context("Inquiries", json!({"inquiries": rows})))
}

/// The schema an inquiry's response must match (an empty one when it has none).
fn response_schema(e: &attune_core::Execution) -> Value {
    attune_core::action::inquiry_schema(&e.parameters).cloned().unwrap_or(json!({}))
}

/// The inquiry `id`, or the page to show when there is no such inquiry.
async fn pending_inquiry(shared: &Shared, s: &Session, id: &str) -> Result<attune_core::Execution, Response> {
    let Ok(id) = id.parse::<uuid::Uuid>() else {
        return Err(error(s, StatusCode::NOT_FOUND, "No such inquiry."));
    };
    match shared.store.get_execution(id).await {
        Ok(Some(e)) if e.action.as_ref().map(|a| a.runtime) == Some(attune_core::Runtime::Inquiry) => Ok(e),
        Ok(_) => Err(error(s, StatusCode::NOT_FOUND, &format!("There is no inquiry {id}."))),
        Err(e) => Err(api_error(s, e.into())),
    }
}

async fn inquiry(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let s = match session(&shared, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let e = match pending_inquiry(&shared, &s, &id).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let schema = response_schema(&e);
    let ctx = json!({
        "e": row(&e),
        "pending": e.status == ExecutionStatus::Pending,
        "prompt": e.parameters["prompt"].as_str().unwrap_or_default(),
        "fields": fields(&schema),
        "schema": serde_json::to_string_pretty(&schema).unwrap_or_default(),
    });
    page(StatusCode::OK, "inquiry.html", s.context("Inquiry", ctx))
}

async fn respond(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let s = match authorized_fields(&shared, &headers, &form, Permission::Respond).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let e = match pending_inquiry(&shared, &s, &id).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let schema = response_schema(&e);
    let response = match parameters(&schema, &form) {
        Ok(r) => r,
        Err(m) => return error(&s, StatusCode::UNPROCESSABLE_ENTITY, &m),
    };
    match crate::api::workflows::answer(&shared, &s.who, e.id, response).await {
        Ok(_) => Redirect::to(&format!("/executions/{}", e.id)).into_response(),
        Err(e) => api_error(&s, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_renders_and_escapes_what_it_shows() {
        let mut ctx = json!({
            "title": "<t>", "user": "<u>", "role": "admin", "csrf": "c", "can": {"run": true, "cancel": true, "requeue": true, "respond": true, "admin": true},
            "workers": [{"id": "w", "name": "<script>", "status": "active", "heartbeat": "1 s", "in_flight": 0, "slots": 1, "runtimes": "shell"}],
            "counts": [{"status": "running", "count": 1}], "statuses": ["running"], "status": "", "action": "",
            "executions": [{"id": "0123456789abcdef", "action": "a.b", "status": "running", "created": "now", "worker": ""}],
            "e": {"id": "0123456789abcdef", "action": "a.b", "status": "running", "created": "now", "worker": "", "attempt": 1},
            "terminal": false, "parameters": "{}", "stdout": "<b>", "stderr": "", "history": [], "attempts": [],
            "packs": [{"ref": "p", "actions": [{"ref": "p.a", "runtime": "shell", "description": ""}]}],
            "a": {"ref": "p.a", "runtime": "shell", "description": "", "enabled": true},
            "fields": fields(&json!({"properties": {"n": {"type": "integer"}, "on": {"type": "boolean"}, "k": {"enum": ["x", "y"]}, "o": {"type": "object"}, "s": {"type": "string", "secret": true}}, "required": ["n"]})),
            "schema": "{}", "letters": [], "message": "<m>", "status_code": 400,
            "inquiries": [{"id": "0123456789abcdef", "prompt": "<x-p>", "status": "pending", "created": "now", "parent": null}],
            "pending": true, "prompt": "<x-q>",
        });
        let more = json!({
            "rules": [{"ref": "p.r", "enabled": true, "trigger": "core.webhook", "action": "<x-a>"}],
            "sensors": [{"ref": "p.s", "status": "running", "worker": null, "restarts": 0, "last_error": "<x-e>"}],
            "events": [{"trigger": "core.webhook", "source": "<x-s>", "at": "now", "late": false,
                "enforcements": [{"rule": "p.r", "outcome": "matched", "execution": "e", "reason": null}]}],
            "keys": [{"name": "<x-k>", "pack": null, "secret": true, "updated": "now", "by": null}],
            "tokens": [{"name": "<x-t>", "role": "viewer", "created": "now", "expires": null, "last_used": null}],
        });
        let pages = json!({
            "workflow": true, "dead_letter": "d", "next": "n", "paged": true, "since": "<x-since>", "until": null,
            "tree": [{"depth": 1, "indent": "1.25rem", "task": "<x-task>", "id": "i", "action": "a.b", "status": "pending", "took": "", "inquiry": true}, {"more": true}],
            "queues": [{"queue": "<x-queue>", "depth": 3, "oldest": "2 s"}], "outcomes": ["succeeded"],
            "minutes": [{"minute": "10:00", "counts": [4]}],
        });
        for extra in [more, pages] {
            if let (Value::Object(m), Value::Object(e)) = (&mut ctx, extra) {
                m.extend(e);
            }
        }
        for name in [
            "login.html",
            "overview.html",
            "executions.html",
            "execution.html",
            "actions.html",
            "action.html",
            "dead_letters.html",
            "error.html",
        ] {
            let html = templates()
                .get_template(name)
                .unwrap()
                .render(&ctx)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                !html.contains("<script>") && !html.contains("<b>") && !html.contains("<x-"),
                "{name} escapes what it shows"
            );
            if name == "execution.html" {
                // The page's script reads this to know the execution ended (no reload loop).
                assert!(html.contains(r#"data-terminal="false""#), "{html}");
            }
        }
    }

    #[test]
    fn the_run_form_is_typed_by_the_schema() {
        let schema = json!({"properties": {"n": {"type": "integer"}, "on": {"type": "boolean"}, "o": {"type": "object"}, "s": {"type": "string"}, "e": {"enum": [1, 2]}}});
        let form = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>()
        };
        let p = parameters(
            &schema,
            &form(&[("p.n", "3"), ("p.on", "true"), ("p.o", "{\"a\": 1}"), ("p.s", ""), ("p.e", "2")]),
        )
        .unwrap();
        assert_eq!(p, json!({"n": 3, "on": true, "o": {"a": 1}, "e": 2}));
        assert!(parameters(&schema, &form(&[("p.n", "three")])).unwrap_err().contains("n:"));
        assert!(parameters(&schema, &form(&[("p.o", "{")])).unwrap_err().contains("o: not JSON"));
    }
}
