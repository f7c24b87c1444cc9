//! The admin API's routes: path and method to handler, JSON request bodies,
//! and every failure as one `ApiError` with one status code and a
//! `{"error": "<sentence>"}` body.
//!
//! A change to the pool or strategy replies only once every worker core has
//! applied its version, so an operator's next request through the proxy sees
//! it. The wait polls the cores' published versions with async sleeps: the
//! admin runtime keeps serving other connections (a `/status` during a
//! backend's drain) while one waits.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::AdminContext;
use super::report::{self, BackendView, PROMETHEUS_CONTENT_TYPE};
use super::traffic;
use crate::balance::StrategyKind;
use crate::pool::{Backend, BackendId, BackendState, PoolError, parse_backend_url};

/// How long a change may take to reach every core before the reply is 503.
/// A core applies updates between requests and at least every few
/// milliseconds when idle, so this only expires if a core is stuck.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a removal waits for the backend's in-flight requests to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_EVERY: Duration = Duration::from_millis(1);

/// The largest request body (contract: over this is 413).
pub const MAX_BODY: usize = 64 * 1024;

/// A reply before it becomes HTTP.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
    /// The `WWW-Authenticate` header of a 401 (RFC 6750 §3).
    pub www_authenticate: Option<&'static str>,
}

impl Reply {
    fn json(status: u16, value: &impl serde::Serialize) -> Reply {
        let mut body = serde_json::to_vec(value).expect("admin documents serialize");
        body.push(b'\n');
        Reply {
            status,
            content_type: "application/json",
            body,
            allow: None,
            www_authenticate: None,
        }
    }

    pub fn error(error: &ApiError) -> Reply {
        let mut reply = Reply::json(
            error.status(),
            &serde_json::json!({ "error": error.to_string() }),
        );
        match error {
            ApiError::MethodNotAllowed { allow, .. } => reply.allow = Some(*allow),
            ApiError::Unauthorized => reply.www_authenticate = Some(BEARER_CHALLENGE),
            _ => {}
        }
        reply
    }
}

/// Everything that turns into an error reply, each with its status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("there is no {0} here (see GET /status, /histograms, /metrics, /healthz)")]
    NotFound(String),
    #[error("this admin API needs an Authorization: Bearer <token> header with its admin token")]
    Unauthorized,
    #[error("{0}")]
    BadWindow(String),
    #[error("{path} does not allow {method}; use {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },
    #[error("the request body is over the {MAX_BODY}-byte limit")]
    BodyTooLarge,
    #[error("the request head is over the {0}-byte limit")]
    HeadTooLarge(usize),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("malformed HTTP request: {0}")]
    MalformedHttp(String),
    #[error("malformed request body: {0}")]
    MalformedBody(String),
    #[error("{0}")]
    Pool(#[from] PoolError),
    #[error("{0}")]
    UnknownStrategy(String),
    #[error("reload rejected: {0}")]
    Reload(String),
    #[error("this percore cannot reload: it was not started from its command line")]
    ReloadUnavailable,
    #[error(
        "pool version {version} is in place, but cores {lagging:?} did not apply it within {timeout:?}"
    )]
    NotApplied {
        version: u64,
        lagging: Vec<usize>,
        timeout: Duration,
    },
    #[error("the proxy is shutting down")]
    ShuttingDown,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::NotFound(_) => 404,
            ApiError::Unauthorized => 401,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::BodyTimeout(_) => 408,
            ApiError::BodyTooLarge => 413,
            ApiError::HeadTooLarge(_) => 431,
            ApiError::MalformedHttp(_)
            | ApiError::MalformedBody(_)
            | ApiError::UnknownStrategy(_)
            | ApiError::Reload(_)
            | ApiError::BadWindow(_) => 400,
            ApiError::ReloadUnavailable => 409,
            ApiError::Pool(PoolError::Url(_) | PoolError::Weight(_) | PoolError::Loop(_)) => 400,
            ApiError::Pool(PoolError::Duplicate(_)) => 409,
            ApiError::Pool(PoolError::Unknown(_)) => 404,
            ApiError::NotApplied { .. } | ApiError::ShuttingDown => 503,
        }
    }
}

/// The paths the API serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Status,
    Backends,
    /// `/backends/{id}`, the id as written (unparsed: a bad one is a 404).
    Backend(String),
    Strategy,
    Histograms,
    Metrics,
    Healthz,
    /// Rereads the configuration, as SIGHUP does (beyond the contract).
    Reload,
}

impl Route {
    pub fn parse(path: &str) -> Option<Route> {
        Some(match path {
            "/status" => Route::Status,
            "/backends" => Route::Backends,
            "/strategy" => Route::Strategy,
            "/histograms" => Route::Histograms,
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Healthz,
            "/reload" => Route::Reload,
            _ => {
                let id = path.strip_prefix("/backends/")?;
                if id.is_empty() || id.contains('/') {
                    return None;
                }
                Route::Backend(id.to_string())
            }
        })
    }

    /// The methods the route serves, as an `Allow` header value.
    pub fn allow(&self) -> &'static str {
        match self {
            Route::Status | Route::Histograms | Route::Metrics | Route::Healthz => "GET",
            Route::Backends => "POST, DELETE",
            Route::Backend(_) => "DELETE",
            Route::Strategy | Route::Reload => "POST",
        }
    }
}

/// The `WWW-Authenticate` challenge of a 401.
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"percore-admin\"";

/// The request as the routes see it.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The query string, without its `?`.
    pub query: Option<&'a str>,
    /// Whole and within `MAX_BODY`.
    pub body: &'a [u8],
}

/// Answers one request.
pub async fn respond(context: &AdminContext, request: Request<'_>) -> Reply {
    match dispatch(context, request).await {
        Ok(reply) => reply,
        Err(error) => Reply::error(&error),
    }
}

async fn dispatch(context: &AdminContext, request: Request<'_>) -> Result<Reply, ApiError> {
    let Request {
        method,
        path,
        query,
        body,
    } = request;
    let route = Route::parse(path).ok_or_else(|| ApiError::NotFound(path.to_string()))?;
    match (&route, method) {
        (Route::Status, "GET") => Ok(Reply::json(200, &report::status(&context.plane))),
        (Route::Histograms, "GET") => {
            let window = traffic::window_from_query(query).map_err(ApiError::BadWindow)?;
            Ok(Reply::json(
                200,
                &traffic::histograms(&context.plane, window),
            ))
        }
        (Route::Metrics, "GET") => Ok(Reply {
            status: 200,
            content_type: PROMETHEUS_CONTENT_TYPE,
            body: report::metrics(&context.plane).into_bytes(),
            allow: None,
            www_authenticate: None,
        }),
        (Route::Healthz, "GET") => {
            if context.stopping.is_set() {
                return Err(ApiError::ShuttingDown);
            }
            Ok(Reply {
                status: 200,
                content_type: "text/plain; charset=utf-8",
                body: b"ok".to_vec(),
                allow: None,
                www_authenticate: None,
            })
        }
        (Route::Reload, "POST") => {
            let reloader = context
                .plane
                .reloader
                .get()
                .ok_or(ApiError::ReloadUnavailable)?;
            let report = reloader
                .reload(&context.plane)
                .map_err(|error| ApiError::Reload(error.to_string()))?;
            Ok(Reply::json(200, &report))
        }
        (Route::Backends, "POST") => add_backend(context, body).await,
        (Route::Backends, "DELETE") => {
            let id = removal_target(context, body)?;
            remove_backend(context, id).await
        }
        (Route::Backend(id), "DELETE") => {
            let id = id.parse().map_err(|_| PoolError::Unknown(id.clone()))?;
            remove_backend(context, id).await
        }
        (Route::Strategy, "POST") => set_strategy(context, body).await,
        _ => Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
            allow: route.allow(),
        }),
    }
}

/// Parses a JSON body, naming what was expected when it is not that.
fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8], expected: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedBody(format!(
            "the body is empty; send a JSON object like {expected}"
        )));
    }
    serde_json::from_slice(body).map_err(|error| {
        ApiError::MalformedBody(format!("{error}; expected a JSON object like {expected}"))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBackend {
    url: String,
    /// Kept loose so that a bad weight gets its own message, not serde's.
    weight: Option<Value>,
}

async fn add_backend(context: &AdminContext, body: &[u8]) -> Result<Reply, ApiError> {
    let request: AddBackend = parse_body(body, r#"{"url": "http://127.0.0.1:8085", "weight": 1}"#)?;
    let weight = match &request.weight {
        None => 1,
        Some(value) => value
            .as_u64()
            .map(|weight| u32::try_from(weight).unwrap_or(u32::MAX))
            .ok_or_else(|| {
                ApiError::MalformedBody(format!(
                    "weight must be a whole number from 1 to 1000, not {value}"
                ))
            })?,
    };
    let (backend, version) = context.plane.add_backend(&request.url, weight)?;
    tracing::info!(id = backend.id, url = %backend.url, weight, version, "admin: backend added");
    until_applied(context, version).await?;
    Ok(Reply::json(
        201,
        &BackendView::new(&context.plane, &backend, BackendState::Up),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBackend {
    url: Option<String>,
    id: Option<Value>,
}

/// The id a `DELETE /backends` body names, by `url` or by `id`.
fn removal_target(context: &AdminContext, body: &[u8]) -> Result<BackendId, ApiError> {
    let request: RemoveBackend =
        parse_body(body, r#"{"url": "http://127.0.0.1:8085"} or {"id": 3}"#)?;
    match (request.url, request.id) {
        (Some(url), None) => {
            find_by_url(context, &url).ok_or(ApiError::Pool(PoolError::Unknown(url)))
        }
        (None, Some(id)) => id.as_u64().ok_or_else(|| {
            ApiError::MalformedBody(format!("id must be a backend's numeric id, not {id}"))
        }),
        (Some(_), Some(_)) => Err(ApiError::MalformedBody(
            "name the backend by url or by id, not both".into(),
        )),
        (None, None) => Err(ApiError::MalformedBody(
            r#"name the backend: {"url": "..."} or {"id": 3}"#.into(),
        )),
    }
}

/// Matches the url as written, or in its canonical form (`http://host:port`,
/// no trailing slash), which is how the pool stores it.
fn find_by_url(context: &AdminContext, url: &str) -> Option<BackendId> {
    let snapshot = context.plane.snapshot();
    let find = |wanted: &str| {
        snapshot
            .backends
            .iter()
            .find(|(backend, _)| backend.url == wanted)
            .map(|(backend, _)| backend.id)
    };
    find(url).or_else(|| find(&parse_backend_url(url).ok()?.0))
}

async fn remove_backend(context: &AdminContext, id: BackendId) -> Result<Reply, ApiError> {
    let (backend, version) = context.plane.remove_backend(id)?;
    tracing::info!(id, url = %backend.url, version, "admin: backend removed; draining");
    until_applied(context, version).await?;
    let drained = until_drained(context, &backend).await;
    if !drained {
        tracing::warn!(id, url = %backend.url, in_flight = backend.in_flight(), "admin: removed backend still had requests in flight after the drain timeout");
    }
    let mut view = BackendView::new(&context.plane, &backend, BackendState::Draining);
    view.drained = Some(drained);
    Ok(Reply::json(200, &view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStrategy {
    strategy: String,
}

async fn set_strategy(context: &AdminContext, body: &[u8]) -> Result<Reply, ApiError> {
    let request: SetStrategy = parse_body(body, r#"{"strategy": "least_connections"}"#)?;
    let strategy: StrategyKind = request
        .strategy
        .parse()
        .map_err(ApiError::UnknownStrategy)?;
    let (previous, version) = context.plane.set_strategy(strategy);
    tracing::info!(%strategy, %previous, version, "admin: strategy set");
    until_applied(context, version).await?;
    Ok(Reply::json(
        200,
        &serde_json::json!({ "strategy": strategy, "previous": previous, "version": version }),
    ))
}

/// Waits until every core routes by `version`.
async fn until_applied(context: &AdminContext, version: u64) -> Result<(), ApiError> {
    let deadline = Instant::now() + APPLY_TIMEOUT;
    while !context.plane.is_applied(version) {
        if context.stopping.is_set() {
            return Err(ApiError::ShuttingDown);
        }
        if Instant::now() >= deadline {
            let lagging = context
                .plane
                .workers
                .iter()
                .enumerate()
                .filter(|(_, w)| w.applied_version.get() < version)
                .map(|(core, _)| core)
                .collect();
            return Err(ApiError::NotApplied {
                version,
                lagging,
                timeout: APPLY_TIMEOUT,
            });
        }
        monoio::time::sleep(POLL_EVERY).await;
    }
    Ok(())
}

/// Waits (bounded) for a removed backend's in-flight requests to finish.
async fn until_drained(context: &AdminContext, backend: &Backend) -> bool {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while backend.in_flight() > 0 {
        if context.stopping.is_set() || Instant::now() >= deadline {
            return false;
        }
        monoio::time::sleep(POLL_EVERY).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_allowed_methods() {
        assert_eq!(Route::parse("/status"), Some(Route::Status));
        assert_eq!(
            Route::parse("/backends/12"),
            Some(Route::Backend("12".into()))
        );
        assert_eq!(Route::parse("/backends/"), None);
        assert_eq!(Route::parse("/backends/1/x"), None);
        assert_eq!(Route::parse("/status/"), None);
        assert_eq!(Route::parse("/histograms"), Some(Route::Histograms));
        assert_eq!(Route::Histograms.allow(), "GET");
        assert_eq!(Route::Backends.allow(), "POST, DELETE");
    }

    #[test]
    fn errors_map_to_statuses_and_sentences() {
        let error = ApiError::UnknownStrategy("fastest".parse::<StrategyKind>().unwrap_err());
        assert_eq!(error.status(), 400);
        assert!(
            error.to_string().contains("round_robin, least_connections"),
            "{error}"
        );
        assert_eq!(
            ApiError::Pool(PoolError::Duplicate("http://a:1".into())).status(),
            409
        );
        assert_eq!(ApiError::Pool(PoolError::Weight(0)).status(), 400);
        assert_eq!(ApiError::Pool(PoolError::Unknown("9".into())).status(), 404);
        let reply = Reply::error(&ApiError::MethodNotAllowed {
            method: "GET".into(),
            path: "/backends".into(),
            allow: "POST, DELETE",
        });
        assert_eq!((reply.status, reply.allow), (405, Some("POST, DELETE")));
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body["error"],
            "/backends does not allow GET; use POST, DELETE"
        );
        let reply = Reply::error(&ApiError::Unauthorized);
        assert_eq!(reply.status, 401);
        assert_eq!(reply.www_authenticate, Some(BEARER_CHALLENGE));
    }

    #[test]
    fn bodies_name_what_was_expected() {
        let error = parse_body::<AddBackend>(b"", "{}").err().unwrap();
        assert!(error.to_string().contains("empty"), "{error}");
        let error = parse_body::<AddBackend>(br#"{"url": "http://a:1", "wieght": 2}"#, "{}")
            .err()
            .unwrap();
        assert!(error.to_string().contains("wieght"), "{error}");
        let request: AddBackend = parse_body(br#"{"url": "http://a:1"}"#, "{}").unwrap();
        assert!(request.weight.is_none());
    }
}
