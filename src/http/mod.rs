//! HTTP API (SPEC §6) on hyper 1.x: routing, the write-auth rule, the 64 KiB body limit and
//! JSON errors, all mapped in one place (`error`). Reads are served from the pre-rendered
//! views; only `/engines/{id}/cleanups` reads the store, and writes go to the registry or the
//! janitor.

// Handlers return ready responses as their error type; the size clippy warns about is one
// response per request, not a hot loop.
#![allow(clippy::result_large_err)]

pub mod views;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::janitor::{CleanupError, Janitor};
use crate::model::{StreamStatus, Trigger};
use crate::registry::{self, RegistryError, RegistryHandle, StreamEnd, StreamStart};
use crate::shutdown::Shutdown;
use crate::store::Store;
use views::Rendered;

/// SPEC §6: bodies over this get 413.
pub const MAX_BODY: usize = 64 * 1024;
/// A client that has not sent its headers by then is dropped (slow-loris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A body that has not arrived by then is refused.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AppState {
    pub rendered: watch::Receiver<Arc<Rendered>>,
    pub registry: RegistryHandle,
    pub janitor: Janitor,
    pub store: Store,
    pub token: Option<String>,
    pub history_limit: usize,
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_resp(status: StatusCode, v: &impl serde::Serialize) -> Resp {
    respond(
        status,
        "application/json",
        serde_json::to_vec(v).expect("response serializes to JSON"),
    )
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Resp {
    json_resp(status, &json!({ "error": msg.to_string() }))
}

fn registry_error(e: RegistryError) -> Resp {
    let status = match e {
        RegistryError::UnknownEngine(_) | RegistryError::UnknownStream(_) => StatusCode::NOT_FOUND,
        RegistryError::HasStreams(_) | RegistryError::NotRunning(_) => StatusCode::CONFLICT,
        RegistryError::BadRequest(_) => StatusCode::BAD_REQUEST,
        RegistryError::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
        RegistryError::Closed => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e)
}

fn cleanup_error(e: CleanupError) -> Resp {
    let status = match e {
        CleanupError::UnknownEngine(_) => StatusCode::NOT_FOUND,
        CleanupError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::CONFLICT,
    };
    error(status, e)
}

/// Accepts connections until shutdown, then lets in-flight requests finish.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, mut shutdown: Shutdown) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let svc = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(req, peer, &state).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        // Tracked by the graceful-shutdown watcher, which waits for it below.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "connection error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(3), graceful.shutdown()).await;
}

/// Percent-decodes one path segment; `None` for invalid escapes or non-UTF-8.
fn decode_segment(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| decode_segment(&v.replace('+', " ")))
}

/// SPEC §6: a token requires `Authorization: Bearer <token>`; without one, writes come only
/// from loopback.
fn authorize(req: &Request<Incoming>, peer: SocketAddr, token: Option<&str>) -> Result<(), Resp> {
    match token {
        Some(t) => {
            let given = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if constant_time_eq(given.as_bytes(), t.as_bytes()) {
                Ok(())
            } else {
                Err(error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong bearer token",
                ))
            }
        }
        None if is_loopback(peer) => Ok(()),
        None => Err(error(
            StatusCode::FORBIDDEN,
            "writes are accepted only from loopback when no http.token is set",
        )),
    }
}

fn is_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a JSON body within the size and time limits.
async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Resp> {
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > MAX_BODY as u64 {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over {MAX_BODY} bytes"),
            ));
        }
    }
    let body = Limited::new(req.into_body(), MAX_BODY);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "body not received in time",
            ))
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over {MAX_BODY} bytes"),
            ))
        }
        Ok(Err(e)) => return Err(error(StatusCode::BAD_REQUEST, format!("reading body: {e}"))),
        Ok(Ok(c)) => c.to_bytes(),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))
}

#[derive(Deserialize)]
struct EngineAddr {
    host: String,
    port: PortValue,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortValue {
    Num(u16),
    Str(String),
}

impl PortValue {
    fn get(&self) -> Result<u16, String> {
        match self {
            PortValue::Num(n) => Ok(*n),
            PortValue::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| format!("invalid engine.port {s:?}")),
        }
    }
}

#[derive(Deserialize)]
struct StreamKey {
    #[serde(default)]
    key_type: String,
    key: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Session {
    playback_session_id: String,
    stat_url: String,
    command_url: String,
    is_live: LiveFlag,
}

/// The proxy sends `1`/`0`; a boolean is accepted too.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum LiveFlag {
    Bool(bool),
    Int(i64),
    #[default]
    Missing,
}

#[derive(Deserialize)]
struct StartedBody {
    #[serde(default)]
    container_id: Option<String>,
    engine: EngineAddr,
    stream: StreamKey,
    #[serde(default)]
    session: Session,
    #[serde(default)]
    labels: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct EndedBody {
    #[serde(default)]
    container_id: Option<String>,
    #[serde(default)]
    stream_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    reason: Option<String>,
}

async fn stream_started(req: Request<Incoming>, state: &AppState) -> Resp {
    let b: StartedBody = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let port = match b.engine.port.get() {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    if b.stream.key.is_empty() {
        return error(StatusCode::BAD_REQUEST, "stream.key must not be empty");
    }
    let label_id = b
        .labels
        .as_ref()
        .and_then(|l| l.get("stream_id"))
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let stream_id =
        label_id.unwrap_or_else(|| format!("{}|{}", b.stream.key, b.session.playback_session_id));
    let is_live = match b.session.is_live {
        LiveFlag::Bool(v) => v,
        LiveFlag::Int(n) => n != 0,
        LiveFlag::Missing => false,
    };
    let s = StreamStart {
        container_id: b.container_id,
        host: b.engine.host,
        port,
        stream_id,
        key_type: b.stream.key_type,
        key: b.stream.key,
        playback_session_id: b.session.playback_session_id,
        stat_url: b.session.stat_url,
        command_url: b.session.command_url,
        is_live,
    };
    match state.registry.stream_started(s).await {
        Ok(rec) => json_resp(StatusCode::OK, &rec),
        Err(e) => registry_error(e),
    }
}

async fn stream_ended(req: Request<Incoming>, state: &AppState) -> Resp {
    let b: EndedBody = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let s = StreamEnd {
        container_id: b.container_id,
        stream_id: b.stream_id.filter(|s| !s.is_empty()),
    };
    match state.registry.stream_ended(s).await {
        Ok(ended) => json_resp(
            StatusCode::OK,
            &json!({ "updated": !ended.is_empty(), "streams": ended }),
        ),
        Err(e) => registry_error(e),
    }
}

async fn manual_cleanup(key: &str, state: &AppState) -> Resp {
    let snap = state.rendered.borrow().snapshot.clone();
    let Some(e) = registry::find(&snap, key) else {
        return error(StatusCode::NOT_FOUND, format!("no engine {key:?}"));
    };
    let id = e.engine.container_id.clone();
    let janitor = state.janitor.clone();
    // Run apart from the request: a client that hangs up must not cancel a cleanup half-way.
    let task = tokio::spawn(async move { janitor.cleanup(&id, Trigger::Manual).await });
    match task.await {
        Ok(Ok(rec)) if rec.success => json_resp(StatusCode::OK, &rec),
        Ok(Ok(rec)) => json_resp(StatusCode::INTERNAL_SERVER_ERROR, &rec),
        Ok(Err(e)) => cleanup_error(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cleanup task failed: {e}"),
        ),
    }
}

async fn history(key: &str, state: &AppState) -> Resp {
    let snap = state.rendered.borrow().snapshot.clone();
    let Some(e) = registry::find(&snap, key) else {
        return error(StatusCode::NOT_FOUND, format!("no engine {key:?}"));
    };
    let id = e.engine.container_id.clone();
    let store = state.store.clone();
    let limit = state.history_limit;
    match tokio::task::spawn_blocking(move || store.history(&id, limit)).await {
        Ok(Ok(v)) => json_resp(StatusCode::OK, &v),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn list_streams(query: Option<&str>, state: &AppState) -> Resp {
    let status = match query_param(query, "status").as_deref() {
        None | Some("") => None,
        Some("started") => Some(StreamStatus::Started),
        Some("ended") => Some(StreamStatus::Ended),
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("status must be started or ended, not {other:?}"),
            )
        }
    };
    let container = query_param(query, "container_id").filter(|c| !c.is_empty());
    match state.registry.list_streams(container, status).await {
        Ok(v) => json_resp(StatusCode::OK, &v),
        Err(e) => registry_error(e),
    }
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, state: &AppState) -> Resp {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let raw: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut segs = Vec::with_capacity(raw.len());
    for s in &raw {
        match decode_segment(s) {
            Some(s) => segs.push(s),
            None => return error(StatusCode::BAD_REQUEST, "invalid percent-encoding in path"),
        }
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let method = req.method().clone();
    let is_get = method == Method::GET || method == Method::HEAD;
    let rendered = state.rendered.borrow().clone();
    match segs.as_slice() {
        [""] if is_get => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            views::STATUS_PAGE,
        ),
        [""] => method_not_allowed("GET, HEAD"),
        ["healthz"] if is_get => json_resp(StatusCode::OK, &json!({"status": "ok"})),
        ["readyz"] if is_get => {
            let s = &rendered.snapshot;
            let ready = s.docker_up && s.store_error.is_none();
            json_resp(
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                &json!({
                    "ready": ready,
                    "docker_up": s.docker_up,
                    "store": s.store_error.as_deref().unwrap_or("ok"),
                }),
            )
        }
        ["metrics"] if is_get => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            rendered.metrics.clone(),
        ),
        ["engines"] if is_get => respond(
            StatusCode::OK,
            "application/json",
            rendered.engines_json.clone(),
        ),
        ["engines", key] if is_get => match registry::find(&rendered.snapshot, key) {
            Some(e) => json_resp(StatusCode::OK, &e.engine),
            None => error(StatusCode::NOT_FOUND, format!("no engine {key:?}")),
        },
        ["engines", key, "cleanups"] if is_get => history(key, state).await,
        ["engines", key, "cleanup"] if method == Method::POST => {
            if let Err(r) = authorize(&req, peer, state.token.as_deref()) {
                return r;
            }
            manual_cleanup(key, state).await
        }
        ["events", "stream_started"] | ["events", "stream_ended"] if method == Method::POST => {
            if let Err(r) = authorize(&req, peer, state.token.as_deref()) {
                return r;
            }
            if segs[1] == "stream_started" {
                stream_started(req, state).await
            } else {
                stream_ended(req, state).await
            }
        }
        ["streams"] if is_get => list_streams(query.as_deref(), state).await,
        ["healthz"]
        | ["readyz"]
        | ["metrics"]
        | ["engines"]
        | ["engines", _]
        | ["engines", _, "cleanups"]
        | ["streams"] => method_not_allowed("GET, HEAD"),
        ["engines", _, "cleanup"] | ["events", "stream_started"] | ["events", "stream_ended"] => {
            method_not_allowed("POST")
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route for {}", short_path(&path)),
        ),
    }
}

/// Echoes at most a short prefix of an unknown path, so a huge path is not mirrored back.
fn short_path(p: &str) -> String {
    let short: String = p.chars().take(64).collect();
    if short.len() < p.len() {
        format!("{short}…")
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(decode_segment("%2e%2e").as_deref(), Some(".."));
        assert_eq!(decode_segment("abc").as_deref(), Some("abc"));
        assert_eq!(decode_segment("%zz"), None);
        assert_eq!(decode_segment("%ff"), None);
        assert_eq!(decode_segment("%4"), None);
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("a=1&status=ended"), "status").as_deref(),
            Some("ended")
        );
        assert_eq!(
            query_param(Some("container_id=ab%20c"), "container_id").as_deref(),
            Some("ab c")
        );
        assert_eq!(query_param(None, "x"), None);
        assert_eq!(query_param(Some("flag"), "flag").as_deref(), Some(""));
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:1".parse().unwrap()));
        assert!(is_loopback("[::1]:1".parse().unwrap()));
        assert!(is_loopback("[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1:1".parse().unwrap()));
    }

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
