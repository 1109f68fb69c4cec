//! The one place where requests are authenticated and authorized. Each door declares, next to its
//! routes, a table of (method, route, permission) (`Rules`); `guard` — the door's route layer —
//! finds the request's rule, reads `Authorization: Bearer <token>` (401 if it is missing, unknown,
//! expired or revoked), asks `Role::allows` (403) and hands the `Identity` to the handler in the
//! request's extensions. Handlers never parse headers. A route without a rule is refused (403):
//! forgetting one cannot open a door.
//!
//! Tokens are `attune_` + 43 characters (256 random bits, base64url); the store keeps their SHA-256
//! only. A token read from the store is cached for `CACHE_TTL`, so a token revoked through another
//! replica stops working within that; `last_used_at` is written at most every `TOUCH_EVERY`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use attune_core::{
    auth::{Identity, Permission, Role, TokenInfo},
    Timestamp,
};
use attune_store::{NewToken, Store, StoreError};
use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine;
use sha2::Digest;

use crate::{ApiError, Shared};

/// How long a token read from the store is believed.
const CACHE_TTL: Duration = Duration::from_secs(1);
/// How often a token's `last_used_at` is written, at most.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// What each route of a door needs.
pub(crate) type Rules = &'static [(Method, &'static str, Permission)];

/// A new secret: 256 random bits.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    format!("attune_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// What the store keeps of a secret.
pub fn hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Creates a token and returns its secret (the only time it is seen).
pub async fn create_token(
    store: &Store,
    t: TokenRequest,
    now: Timestamp,
) -> Result<(TokenInfo, String), StoreError> {
    let secret = new_secret();
    let info = store
        .create_token(
            &NewToken {
                name: t.name,
                role: t.role,
                hash: hash(&secret),
                worker_id: t.worker,
                created_by: t.created_by,
                expires_at: t.expires_at,
            },
            now,
        )
        .await?;
    Ok((info, secret))
}

/// What `create_token` needs.
pub struct TokenRequest {
    pub name: String,
    pub role: Role,
    pub worker: Option<uuid::Uuid>,
    pub created_by: Option<String>,
    pub expires_at: Option<Timestamp>,
}

/// Tokens read from the store, and when each was last touched.
#[derive(Default)]
pub(crate) struct TokenCache {
    seen: Mutex<HashMap<String, (Instant, Option<TokenInfo>)>>,
    touched: Mutex<HashMap<String, Instant>>,
}

impl TokenCache {
    /// Forgets everything (a token was revoked here).
    pub(crate) fn clear(&self) {
        self.seen.lock().expect("token cache lock").clear();
    }
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

impl Shared {
    /// The identity behind the request's bearer token.
    pub(crate) async fn authenticate(&self, headers: &axum::http::HeaderMap) -> Result<Identity, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "this route needs `Authorization: Bearer <token>`; `attune token create` makes one \
                 (the first admin token is in <data_dir>/admin.token)",
            ));
        };
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let h = hash(secret);
        let cached = {
            let seen = self.tokens.seen.lock().expect("token cache lock");
            seen.get(&h).filter(|(at, _)| at.elapsed() < CACHE_TTL).map(|(_, t)| t.clone())
        };
        let token = match cached {
            Some(t) => t,
            None => {
                let t = self.store.token_by_hash(&h).await?;
                self.tokens
                    .seen
                    .lock()
                    .expect("token cache lock")
                    .insert(h.clone(), (Instant::now(), t.clone()));
                t
            }
        };
        let now = Timestamp::now();
        let Some(token) = token else { return Err(unauthorized("unknown token")) };
        if token.revoked_at.is_some() {
            return Err(unauthorized(format!("token {:?} was revoked", token.name)));
        }
        if !token.valid_at(now) {
            return Err(unauthorized(format!("token {:?} has expired", token.name)));
        }
        self.touch(&h, now).await;
        Ok(Identity { name: token.name, role: token.role, worker: token.worker_id })
    }

    async fn touch(&self, h: &str, now: Timestamp) {
        {
            let mut touched = self.tokens.touched.lock().expect("token cache lock");
            if touched.get(h).is_some_and(|t| t.elapsed() < TOUCH_EVERY) {
                return;
            }
            touched.insert(h.to_owned(), Instant::now());
        }
        if let Err(e) = self.store.touch_token(h, now).await {
            tracing::debug!(error = %e, "could not record a token's use");
        }
    }
}

/// The route layer of a door: authenticates, authorizes by `rules`, and passes the `Identity` on.
pub(crate) async fn guard(
    State((shared, rules)): State<(Arc<Shared>, Rules)>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
    let needed = rules.iter().find(|(m, r, _)| *m == req.method() && *r == route).map(|(_, _, p)| *p);
    // A console session reads the API with its cookie (GET only; `console::session_bearer`).
    let session = crate::console::session_bearer(req.method(), req.headers());
    let identity = match shared.authenticate(session.as_ref().unwrap_or(req.headers())).await {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let Some(needed) = needed else {
        tracing::error!(route, method = %req.method(), "route has no permission rule; refused");
        return forbidden("this route declares no permission").into_response();
    };
    if !identity.role.allows(needed) {
        let why = match identity.role {
            Role::Agent | Role::Worker => "worker tokens may only be used for the worker protocol".to_owned(),
            r if needed == Permission::Enroll || needed == Permission::WorkerProtocol => {
                format!(
                    "a {r} token cannot be used for the worker protocol; workers enroll with worker.token"
                )
            }
            r => {
                let roles: Vec<_> = needed.roles().iter().map(|r| r.as_str()).collect();
                format!(
                    "a {r} token may not do this: it needs the `{needed}` permission, which {} have",
                    roles.join(" and ")
                )
            }
        };
        return forbidden(why).into_response();
    }
    req.extensions_mut().insert(identity);
    next.run(req).await
}

/// What `bootstrap` did.
#[derive(Debug, Default)]
pub struct Bootstrap {
    /// Token files written now (the first start of this data directory).
    pub created: Vec<std::path::PathBuf>,
    /// Token files already there but whose token is no longer valid.
    pub stale: Vec<std::path::PathBuf>,
}

/// The first start of a data directory: an admin token in `<data_dir>/admin.token` and a worker
/// enrollment token in `<data_dir>/worker.token` (both mode 0600), so that the CLI and `attune up`'s
/// workers work with no set-up. A file already there is left alone (if its token was revoked, it
/// is reported, not replaced: revoking it was someone's decision).
pub async fn bootstrap(store: &Store, data_dir: &std::path::Path) -> anyhow::Result<Bootstrap> {
    use std::io::Write;
    let mut out = Bootstrap::default();
    std::fs::create_dir_all(data_dir)?;
    for (role, file, base) in
        [(Role::Admin, "admin.token", "admin"), (Role::Worker, "worker.token", "workers")]
    {
        let path = data_dir.join(file);
        if let Ok(secret) = std::fs::read_to_string(&path) {
            let known = store.token_by_hash(&hash(secret.trim())).await?;
            if !known.is_some_and(|t| t.valid_at(Timestamp::now()) && t.role == role) {
                out.stale.push(path);
            }
            continue;
        }
        let now = Timestamp::now();
        let mut n = 1;
        let (_, secret) = loop {
            let name = if n == 1 { base.to_owned() } else { format!("{base}-{n}") };
            let req = TokenRequest {
                name,
                role,
                worker: None,
                created_by: Some("bootstrap".into()),
                expires_at: None,
            };
            match create_token(store, req, now).await {
                Err(StoreError::AlreadyDone(_)) if n < 100 => n += 1,
                r => break r?,
            }
        };
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?
        };
        writeln!(f, "{secret}")?;
        out.created.push(path);
    }
    Ok(out)
}
