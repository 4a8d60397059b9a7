//! Responses: JSON and text bodies, and every error mapped to its status in one place.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT_ENCODING, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::janitor::CleanupError;
use crate::registry::RegistryError;

pub(super) type Resp = Response<Full<Bytes>>;

/// Whether the client takes a gzip body (`Accept-Encoding: gzip`, or `*`, with a q-value
/// above 0).
pub(super) fn accepts_gzip(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (name == "gzip" || name == "*") && q > 0.0
        })
}

pub(super) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) fn json_resp(status: StatusCode, v: &impl serde::Serialize) -> Resp {
    respond(
        status,
        "application/json",
        serde_json::to_vec(v).expect("response serializes to JSON"),
    )
}

pub(super) fn error(status: StatusCode, msg: impl std::fmt::Display) -> Resp {
    json_resp(status, &json!({ "error": msg.to_string() }))
}

pub(super) fn registry_error(e: RegistryError) -> Resp {
    let status = match e {
        RegistryError::UnknownEngine(_) | RegistryError::UnknownStream(_) => StatusCode::NOT_FOUND,
        RegistryError::HasStreams(_) | RegistryError::NotRunning(_) | RegistryError::Busy(..) => {
            StatusCode::CONFLICT
        }
        RegistryError::BadRequest(_) => StatusCode::BAD_REQUEST,
        RegistryError::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
        RegistryError::Closed => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e)
}

pub(super) fn cleanup_error(e: CleanupError) -> Resp {
    let status = match e {
        CleanupError::UnknownEngine(_) => StatusCode::NOT_FOUND,
        CleanupError::Closed | CleanupError::DockerDown(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::CONFLICT,
    };
    error(status, e)
}

pub(super) fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// An id as echoed in an error: at most 64 characters.
pub(super) fn short(key: &str) -> String {
    short_path(key)
}

/// Echoes at most a short prefix of an unknown path, so a huge path is not mirrored back.
pub(super) fn short_path(p: &str) -> String {
    let short: String = p.chars().take(64).collect();
    if short.len() < p.len() {
        format!("{short}…")
    } else {
        short
    }
}
