//! Who may call what: client routes take a client token (`KAIROS_API_TOKENS`)
//! or the admin token, admin routes only the admin token, open routes none.
//! Checked in a layer before the handler runs, so a refused request is
//! answered before its body is read and writes nothing. Its body is then
//! read and discarded, up to [`DRAIN_LIMIT`]: a client still writing a body
//! (an import, an upload) would otherwise see its connection closed under it
//! ("broken pipe") instead of the `401`.

use super::AppState;
use super::error::ApiError;
use crate::audit::{self, Actor};
use axum::extract::FromRequestParts;
use axum::extract::{Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// How much of a refused request's body is read and discarded, and for how
/// long at most, so that its sender gets the refusal (as Go's `net/http`
/// discards up to 256 KiB of an unread body).
const DRAIN_LIMIT: usize = 1 << 20;
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// The tokens a host accepts, kept as SHA-256 digests and compared in
/// constant time, so neither a token nor its length leaks through timing.
#[derive(Debug, Default)]
pub struct Tokens {
    admin: Option<[u8; 32]>,
    clients: Vec<[u8; 32]>,
    /// No client tokens are configured and the host is bound to loopback:
    /// client routes are open to whoever can reach it.
    clients_open: bool,
}

/// What a request's bearer token entitles it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    None,
    Client,
    Admin,
}

impl Tokens {
    /// `api_tokens` is `KAIROS_API_TOKENS` (comma-separated); without any,
    /// client routes are open, which `Settings::validate` allows only on a
    /// loopback bind.
    pub fn new(admin: Option<&str>, api_tokens: Option<&str>) -> Self {
        let clients: Vec<[u8; 32]> = api_tokens
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(digest)
            .collect();
        Self {
            admin: admin.filter(|t| !t.is_empty()).map(digest),
            clients_open: clients.is_empty(),
            clients,
        }
    }

    pub fn clients_open(&self) -> bool {
        self.clients_open
    }

    /// Whether `headers` carry the admin token (the status page shows more).
    pub fn admin_in(&self, headers: &axum::http::HeaderMap) -> bool {
        self.grant_of(headers) == Grant::Admin
    }

    fn grant(&self, request: &Request) -> Grant {
        self.grant_of(request.headers())
    }

    fn grant_of(&self, headers: &axum::http::HeaderMap) -> Grant {
        let Some(given) = bearer(headers) else {
            return Grant::None;
        };
        let given = digest(given);
        let is_admin = self
            .admin
            .as_ref()
            .is_some_and(|admin| bool::from(admin.ct_eq(&given)));
        // Every client token is compared, found or not.
        let is_client = self.clients.iter().fold(false, |found, token| {
            found | bool::from(token.ct_eq(&given))
        });
        if is_admin {
            Grant::Admin
        } else if is_client {
            Grant::Client
        } else {
            Grant::None
        }
    }
}

/// The bearer token a request carries, if any.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Who is calling, for the audit log: the fingerprint of the token the
/// request was let in with, or `anonymous` on a client route left open.
impl FromRequestParts<AppState> for Actor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(match bearer(&parts.headers) {
            Some(token) if state.tokens.grant_of(&parts.headers) != Grant::None => {
                Actor(audit::fingerprint(token))
            }
            _ => Actor(audit::ANONYMOUS.to_string()),
        })
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Client routes: a client token or the admin token (or none, when client
/// routes are open).
pub async fn client(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let tokens = &state.tokens;
    if tokens.clients_open || tokens.grant(&request) != Grant::None {
        Ok(next.run(request).await)
    } else {
        Err(refuse(
            request,
            ApiError::Unauthorized("a valid bearer token is required"),
        ))
    }
}

/// Admin routes: only the admin token; a client token is `403`.
pub async fn admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match state.tokens.grant(&request) {
        Grant::Admin => Ok(next.run(request).await),
        Grant::Client => Err(refuse(
            request,
            ApiError::Forbidden(
                "this route takes the admin token (KAIROS_ADMIN_TOKEN); a client token may not use it",
            ),
        )),
        Grant::None => Err(refuse(
            request,
            ApiError::Unauthorized("a valid admin bearer token (KAIROS_ADMIN_TOKEN) is required"),
        )),
    }
}

/// `error`, answered at once, before any of the body is read. The body is
/// read and dropped in the background, to its end or to [`DRAIN_LIMIT`]
/// within [`DRAIN_WAIT`], so that a client still writing it gets the answer
/// rather than a connection closed under it.
fn refuse(request: Request, error: ApiError) -> ApiError {
    let body = request.into_body();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(DRAIN_WAIT, axum::body::to_bytes(body, DRAIN_LIMIT)).await;
    });
    error
}
