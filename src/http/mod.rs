//! HTTP API (README "HTTP endpoints") on hyper 1.x: routing, the write-auth rule, the 64 KiB body
//! limit and JSON errors, all mapped in one place (`error`). Reads are served from the pre-rendered
//! views; only `/engines/{id}/cleanups` reads the store, and writes go to the registry or the
//! janitor.

// Handlers return ready responses as their error type; the size clippy warns about is one
// response per request, not a hot loop.
#![allow(clippy::result_large_err)]

mod auth;
mod events;
mod reply;
pub mod views;

use auth::authorize;
pub use events::{parse_ended, parse_started, MAX_ID_LEN, MAX_KEY_TYPE_LEN, MAX_URL_LEN};
use reply::{
    accepts_gzip, cleanup_error, error, json_resp, method_not_allowed, registry_error, respond,
    short, short_path, Resp,
};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, VARY};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::heal::HealError;
use crate::janitor::Janitor;
use crate::model::{StreamStatus, Trigger};
use crate::registry::{self, RegistryError, RegistryHandle};
use crate::shutdown::Shutdown;
use crate::store::Store;
use views::Rendered;

/// Bodies over this get 413 (docs/safety.md#input-limits).
pub const MAX_BODY: usize = 64 * 1024;
/// A client that has not sent its headers by then is dropped (slow-loris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A body that has not arrived by then is refused.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stream event for an engine not listed yet waits for Docker's answer: the
/// orchestrator's proxy gives up after 3 s.
const LOOKUP_WAIT: Duration = Duration::from_secs(2);
/// How long a write's answer waits for the views to show it (they render in well under a
/// millisecond; this bounds a render task that is behind).
const VIEWS_WAIT: Duration = Duration::from_secs(1);

pub struct AppState {
    pub rendered: watch::Receiver<Arc<Rendered>>,
    pub registry: RegistryHandle,
    /// For stream events naming a container not listed yet.
    pub lookup: crate::discovery::Lookup,
    pub agent: AgentFacts,
    pub janitor: Janitor,
    pub heal: crate::heal::HealHandle,
    pub store: Store,
    pub token: Option<String>,
    pub history_limit: usize,
}

/// Connections served at once: the open-file limit less room for the Docker socket, the store
/// and exec streams. Past it a new connection is closed at once, so a flood of idle clients
/// can never take the descriptors the rest of the agent needs (they are cut after
/// `HEADER_TIMEOUT` anyway).
fn max_connections() -> usize {
    // `None` is no limit at all.
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    (soft.saturating_sub(256).min(16_384) as usize).max(64)
}

/// Accepts connections until shutdown, then lets in-flight requests finish.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, mut shutdown: Shutdown) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections()));
    let mut refused: u64 = 0;
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                warn!(refused, "too many HTTP connections; closing new ones");
            }
            drop(stream);
            continue;
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
            drop(slot);
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

/// Reads a body within the size and time limits.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Resp> {
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
    Ok(bytes)
}

async fn stream_started(req: Request<Incoming>, state: &AppState) -> Resp {
    let arrived = std::time::Instant::now();
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let s = match parse_started(&body) {
        Ok(s) => s,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let result = match state.registry.stream_started(s.clone()).await {
        // Not listed yet (seconds old, or the first list is not done): asked of Docker, then
        // tried again, within what a proxy waits for an answer.
        Err(RegistryError::UnknownEngine(_)) => {
            let find = state.lookup.find(s.container_id.as_deref(), arrived);
            let _ = tokio::time::timeout(LOOKUP_WAIT, find).await;
            state.registry.stream_started(s).await
        }
        r => r,
    };
    match result {
        Ok(rec) => {
            // The registry answers only once no delete is running in the engine (see
            // `registry::STREAM_ACK_WAIT`).
            views_caught_up(state).await;
            json_resp(StatusCode::OK, &rec)
        }
        Err(e) => registry_error(e),
    }
}

async fn stream_ended(req: Request<Incoming>, state: &AppState) -> Resp {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let s = match parse_ended(&body) {
        Ok(s) => s,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    match state.registry.stream_ended(s).await {
        Ok(ended) => {
            views_caught_up(state).await;
            json_resp(
                StatusCode::OK,
                &json!({ "updated": !ended.is_empty(), "streams": ended }),
            )
        }
        Err(e) => registry_error(e),
    }
}

/// What the agent is and what it chose (`GET /agent`): an operator should not need the log
/// to know whether it runs in a container, which Docker it talks to, and how it reaches
/// caches and connection tables (from the host, or through `docker exec`, which costs dockerd
/// CPU per call).
fn agent_info(state: &AppState, snap: &crate::model::Snapshot) -> serde_json::Value {
    let method = |(host, exec): (u64, u64)| {
        let in_use = match (host > 0, exec > 0) {
            (true, false) => "host",
            (false, true) => "exec",
            (true, true) => "host and exec",
            (false, false) => "none yet",
        };
        json!({"in_use": in_use, "host": host, "exec": exec})
    };
    let a = &state.agent;
    let net = a.reach.own();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "in_container": a.in_container,
        "container_id": a.container_id,
        "network_mode": net.as_ref().map(|n| n.mode.as_str()),
        "host_network": net.as_ref().map(|n| n.host),
        "advertise_host": state.lookup.advertise_host(),
        "docker": {
            "up": snap.docker_up,
            "host": a.docker.endpoint(),
            "version": a.docker.server_version(),
        },
        "cleanup_method": a.cleanup_method.as_str(),
        "cache_access": method(a.metrics.cache_operations()),
        "connection_probe": method(a.metrics.connection_probes()),
        "engines": snap.engines.len(),
    })
}

/// What `GET /agent` reports beside the snapshot.
pub struct AgentFacts {
    pub in_container: bool,
    pub container_id: Option<String>,
    pub docker: crate::docker::DockerClient,
    pub cleanup_method: crate::config::CacheMethod,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The network the agent runs on.
    pub reach: crate::reach::Reach,
}

/// Waits (briefly) until the rendered views show the registry's latest snapshot, so that a
/// client that was told a write succeeded reads it back from `/engines` at once: the views
/// render on change, in their own task, a moment after the registry publishes.
async fn views_caught_up(state: &AppState) {
    let mut rendered = state.rendered.clone();
    let registry = &state.registry;
    let _ = tokio::time::timeout(
        VIEWS_WAIT,
        rendered.wait_for(|r| Arc::ptr_eq(&r.snapshot, &registry.snapshot())),
    )
    .await;
}

async fn manual_cleanup(key: &str, state: &AppState) -> Resp {
    let snap = state.rendered.borrow().snapshot.clone();
    let Some(e) = registry::find(&snap, key) else {
        return error(StatusCode::NOT_FOUND, format!("no engine {:?}", short(key)));
    };
    let id = e.engine.container_id.clone();
    let janitor = state.janitor.clone();
    // Run apart from the request: a client that hangs up must not cancel a cleanup half-way.
    let task = tokio::spawn(async move { janitor.cleanup(&id, Trigger::Manual).await });
    let result = task.await;
    views_caught_up(state).await;
    match result {
        Ok(Ok(rec)) if rec.verdict.is_failure() => {
            json_resp(StatusCode::INTERNAL_SERVER_ERROR, &rec)
        }
        Ok(Ok(rec)) => json_resp(StatusCode::OK, &rec),
        Ok(Err(e)) => cleanup_error(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cleanup task failed: {e}"),
        ),
    }
}

/// The two per-engine histories the store keeps.
enum History {
    Cleanups,
    Heals,
}

async fn history(key: &str, state: &AppState, which: History) -> Resp {
    let snap = state.rendered.borrow().snapshot.clone();
    let Some(e) = registry::find(&snap, key) else {
        return error(StatusCode::NOT_FOUND, format!("no engine {:?}", short(key)));
    };
    let id = e.engine.container_id.clone();
    let store = state.store.clone();
    let limit = state.history_limit;
    let read = move || match which {
        History::Cleanups => store.history(&id, limit).map(|v| json!(v)),
        History::Heals => store.heals(&id, limit).map(|v| json!(v)),
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(v)) => json_resp(StatusCode::OK, &v),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn manual_heal(key: &str, state: &AppState) -> Resp {
    let heal = state.heal.clone();
    let key = key.to_string();
    // Apart from the request, as a cleanup is: a client that hangs up does not cancel it.
    let result = tokio::spawn(async move { heal.heal(&key).await }).await;
    views_caught_up(state).await;
    match result {
        Ok(Ok(rec)) if rec.success => json_resp(StatusCode::OK, &rec),
        Ok(Ok(rec)) => json_resp(StatusCode::INTERNAL_SERVER_ERROR, &rec),
        Ok(Err(HealError::UnknownEngine(k))) => {
            error(StatusCode::NOT_FOUND, format!("no engine {}", short(&k)))
        }
        Ok(Err(e @ HealError::DockerDown(_))) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Ok(Err(e @ HealError::Off)) => error(StatusCode::CONFLICT, e),
        Ok(Err(HealError::Registry(e))) => registry_error(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("heal task failed: {e}"),
        ),
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

/// What a request asks for, decided from its method and path alone (pure, so it is fuzzed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    StatusPage,
    Healthz,
    Readyz,
    Agent,
    Metrics,
    Engines,
    Engine(String),
    Cleanups(String),
    Cleanup(String),
    Heals(String),
    Heal(String),
    StreamStarted,
    StreamEnded,
    Streams,
    /// A known path with the wrong method; the `Allow` header value.
    MethodNotAllowed(&'static str),
    /// The path's percent-encoding is invalid or not UTF-8.
    BadPath,
    NotFound,
}

/// Maps a method and a raw (percent-encoded) path to a `Route`.
pub fn route(method: &Method, path: &str) -> Route {
    let mut segs = Vec::new();
    for s in path.trim_start_matches('/').split('/') {
        match decode_segment(s) {
            Some(s) => segs.push(s),
            None => return Route::BadPath,
        }
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let is_get = method == Method::GET || method == Method::HEAD;
    let is_post = method == Method::POST;
    match segs.as_slice() {
        [""] if is_get => Route::StatusPage,
        ["healthz"] if is_get => Route::Healthz,
        ["readyz"] if is_get => Route::Readyz,
        ["agent"] if is_get => Route::Agent,
        ["metrics"] if is_get => Route::Metrics,
        ["engines"] if is_get => Route::Engines,
        ["engines", key] if is_get => Route::Engine(key.to_string()),
        ["engines", key, "cleanups"] if is_get => Route::Cleanups(key.to_string()),
        ["engines", key, "cleanup"] if is_post => Route::Cleanup(key.to_string()),
        ["engines", key, "heals"] if is_get => Route::Heals(key.to_string()),
        ["engines", key, "heal"] if is_post => Route::Heal(key.to_string()),
        ["events", "stream_started"] if is_post => Route::StreamStarted,
        ["events", "stream_ended"] if is_post => Route::StreamEnded,
        ["streams"] if is_get => Route::Streams,
        [""]
        | ["healthz"]
        | ["readyz"]
        | ["agent"]
        | ["metrics"]
        | ["engines"]
        | ["engines", _]
        | ["engines", _, "cleanups"]
        | ["engines", _, "heals"]
        | ["streams"] => Route::MethodNotAllowed("GET, HEAD"),
        ["engines", _, "cleanup"]
        | ["engines", _, "heal"]
        | ["events", "stream_started"]
        | ["events", "stream_ended"] => Route::MethodNotAllowed("POST"),
        _ => Route::NotFound,
    }
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, state: &AppState) -> Resp {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let rendered = state.rendered.borrow().clone();
    let write = |req: &Request<Incoming>| authorize(req, peer, state.token.as_deref());
    match route(req.method(), &path) {
        Route::StatusPage => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            views::STATUS_PAGE,
        ),
        Route::Healthz => json_resp(StatusCode::OK, &json!({"status": "ok"})),
        Route::Agent => json_resp(StatusCode::OK, &agent_info(state, &rendered.snapshot)),
        Route::Readyz => {
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
        Route::Metrics => {
            let gzip = accepts_gzip(&req);
            let mut r = respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                if gzip {
                    rendered.metrics_gzip.clone()
                } else {
                    rendered.metrics.clone()
                },
            );
            if gzip {
                r.headers_mut()
                    .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            r.headers_mut()
                .insert(VARY, HeaderValue::from_static("Accept-Encoding"));
            r
        }
        Route::Engines => respond(
            StatusCode::OK,
            "application/json",
            rendered.engines_json.clone(),
        ),
        Route::Engine(key) => match registry::find(&rendered.snapshot, &key) {
            Some(e) => json_resp(StatusCode::OK, &e.engine),
            None => error(
                StatusCode::NOT_FOUND,
                format!("no engine {:?}", short(&key)),
            ),
        },
        Route::Cleanups(key) => history(&key, state, History::Cleanups).await,
        Route::Heals(key) => history(&key, state, History::Heals).await,
        Route::Heal(key) => match write(&req) {
            Err(r) => r,
            Ok(()) => manual_heal(&key, state).await,
        },
        Route::Cleanup(key) => match write(&req) {
            Err(r) => r,
            Ok(()) => manual_cleanup(&key, state).await,
        },
        Route::StreamStarted => match write(&req) {
            Err(r) => r,
            Ok(()) => stream_started(req, state).await,
        },
        Route::StreamEnded => match write(&req) {
            Err(r) => r,
            Ok(()) => stream_ended(req, state).await,
        },
        Route::Streams => list_streams(query.as_deref(), state).await,
        Route::MethodNotAllowed(allow) => method_not_allowed(allow),
        Route::BadPath => error(StatusCode::BAD_REQUEST, "invalid percent-encoding in path"),
        Route::NotFound => error(
            StatusCode::NOT_FOUND,
            format!("no route for {}", short_path(&path)),
        ),
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
    fn routes() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(route(&get, "/"), Route::StatusPage);
        assert_eq!(route(&Method::HEAD, "/healthz"), Route::Healthz);
        assert_eq!(route(&get, "/agent"), Route::Agent);
        assert_eq!(route(&post, "/agent"), Route::MethodNotAllowed("GET, HEAD"));
        assert_eq!(
            route(&get, "/engines/abc%2Fdef"),
            Route::Engine("abc/def".into())
        );
        assert_eq!(route(&get, "/engines/%2e%2e"), Route::Engine("..".into()));
        assert_eq!(
            route(&get, "/engines/x/cleanups"),
            Route::Cleanups("x".into())
        );
        assert_eq!(
            route(&post, "/engines/x/cleanup"),
            Route::Cleanup("x".into())
        );
        assert_eq!(
            route(&get, "/engines/x/cleanup"),
            Route::MethodNotAllowed("POST")
        );
        assert_eq!(
            route(&post, "/engines"),
            Route::MethodNotAllowed("GET, HEAD")
        );
        assert_eq!(route(&post, "/events/stream_started"), Route::StreamStarted);
        assert_eq!(
            route(&Method::PUT, "/events/stream_ended"),
            Route::MethodNotAllowed("POST")
        );
        assert_eq!(route(&get, "/engines/%ff"), Route::BadPath);
        assert_eq!(route(&get, "/engines/%"), Route::BadPath);
        assert_eq!(route(&get, "/../etc/passwd"), Route::NotFound);
        let brew = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(
            route(&brew, "/healthz"),
            Route::MethodNotAllowed("GET, HEAD")
        );
        assert_eq!(route(&brew, "/nope"), Route::NotFound);
    }

    fn started_json(id: &str) -> String {
        json!({
            "engine": {"host": "h", "port": 6878},
            "stream": {"key_type": "content_id", "key": "k"},
            "session": {"playback_session_id": "s", "stat_url": "", "command_url": "", "is_live": 1},
            "labels": {"stream_id": id}
        })
        .to_string()
    }

    #[test]
    fn started_bodies() {
        let s = parse_started(started_json("k|s").as_bytes()).unwrap();
        assert_eq!(
            (s.stream_id.as_str(), s.port, s.is_live),
            ("k|s", 6878, true)
        );
        // Without labels the id is key|session; a string port and a boolean is_live are fine.
        let s = parse_started(
            br#"{"engine":{"host":"h","port":" 81 "},"stream":{"key":"k"},"session":{"playback_session_id":"p","is_live":false}}"#,
        )
        .unwrap();
        assert_eq!(
            (s.stream_id.as_str(), s.port, s.is_live),
            ("k|p", 81, false)
        );
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            br#"{"engine":{"host":"h","port":6878}}"#,
            br#"{"engine":{"host":"h","port":-1},"stream":{"key":"k"}}"#,
            br#"{"engine":{"host":"h","port":70000},"stream":{"key":"k"}}"#,
            br#"{"engine":{"host":"h","port":"x"},"stream":{"key":"k"}}"#,
            br#"{"engine":{"host":1,"port":1},"stream":{"key":"k"}}"#,
            br#"{"engine":{"host":"h","port":1},"stream":{"key":""}}"#,
            br#"{"engine":{"host":"h","port":1},"stream":{"key":"k"},"session":{"is_live":"yes"}}"#,
            b"\xff\xfe",
        ] {
            assert!(
                parse_started(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        let e = parse_started(started_json(&long).as_bytes()).unwrap_err();
        assert!(e.contains("stream id is longer than 512 bytes"), "{e}");
        assert!(parse_started(started_json(&"x".repeat(MAX_ID_LEN)).as_bytes()).is_ok());
    }

    #[test]
    fn ended_bodies() {
        let e = parse_ended(br#"{"stream_id":"a","container_id":""}"#).unwrap();
        assert_eq!((e.stream_id.as_deref(), e.container_id), (Some("a"), None));
        assert!(parse_ended(br#"{"stream_id":5}"#).is_err());
        assert!(parse_ended(b"{\"stream_id\":\"a\"").is_err());
    }

    // Bounded fuzzing of the pure request edge: the router and the two event-body parsers
    // never panic, and what they accept is what was sent. `PROPTEST_CASES` raises the count for
    // a longer run (see RELIABILITY.md).
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                ".{0,20}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                    prop::collection::btree_map(
                        prop_oneof![
                            Just("engine".to_string()),
                            Just("host".to_string()),
                            Just("port".to_string()),
                            Just("stream".to_string()),
                            Just("key".to_string()),
                            Just("key_type".to_string()),
                            Just("session".to_string()),
                            Just("is_live".to_string()),
                            Just("labels".to_string()),
                            Just("stream_id".to_string()),
                            Just("container_id".to_string()),
                            ".{0,8}",
                        ],
                        inner,
                        0..8
                    )
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn router_never_panics(path in "(/|%|[a-z]{1,8}|%[0-9a-fA-F]{2}|%[^/]{0,2}|\\.\\.|[^/%]{0,4}){0,12}",
                                   m in prop_oneof![Just("GET"), Just("POST"), Just("HEAD"), Just("PUT"), Just("DELETE"), Just("BREW"), Just("OPTIONS")]) {
                let method = Method::from_bytes(m.as_bytes()).unwrap();
                let _ = route(&method, &path);
            }

            #[test]
            fn any_engine_id_routes_to_itself(id in "[^/]{1,80}") {
                let enc: String = id.bytes().map(|b| format!("%{b:02X}")).collect();
                prop_assert_eq!(route(&Method::GET, &format!("/engines/{enc}")), Route::Engine(id.clone()));
                prop_assert_eq!(route(&Method::GET, &format!("/engines/{enc}/cleanups")), Route::Cleanups(id.clone()));
                prop_assert_eq!(route(&Method::POST, &format!("/engines/{enc}/cleanup")), Route::Cleanup(id));
            }

            #[test]
            fn parsers_never_panic_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_started(&body);
                let _ = parse_ended(&body);
            }

            #[test]
            fn parsers_never_panic_on_json(v in json_value()) {
                let body = serde_json::to_vec(&v).unwrap();
                let _ = parse_started(&body);
                let _ = parse_ended(&body);
            }

            #[test]
            fn accepted_started_bodies_keep_what_was_sent(
                key in ".{1,40}", session in ".{0,40}", host in ".{0,40}", port in any::<u16>(),
                live in prop_oneof![Just(json!(1)), Just(json!(0)), Just(json!(true)), Just(json!(false))],
            ) {
                let body = json!({
                    "engine": {"host": host, "port": port},
                    "stream": {"key_type": "content_id", "key": key},
                    "session": {"playback_session_id": session, "is_live": live},
                });
                let s = parse_started(body.to_string().as_bytes()).unwrap();
                prop_assert_eq!(s.stream_id, format!("{key}|{session}"));
                prop_assert_eq!(s.port, port);
                prop_assert_eq!(s.host, host);
                prop_assert_eq!(s.is_live, live == json!(1) || live == json!(true));
            }
        }
    }
}
