//! The stream events the orchestrator's proxy posts (`stream_started`, `stream_ended`): their
//! JSON bodies, parsed and bounded (docs/safety.md#input-limits). Pure, so they are fuzzed.

use serde::Deserialize;

use crate::registry::{StreamEnd, StreamStart};

/// Longest stream id, key, session id (real ones are a 40-digit hash, a `|` and a short id).
/// Stream records are kept (up to `registry::MAX_ENDED_STREAMS` of them), so a proxy that
/// sends huge values must not turn each into 64 KiB of memory and store.
pub const MAX_ID_LEN: usize = 512;

/// Longest `stat_url` / `command_url`.
pub const MAX_URL_LEN: usize = 1024;

/// Longest `key_type` (`content_id`, `infohash`, `url`, ...).
pub const MAX_KEY_TYPE_LEN: usize = 64;

#[derive(Deserialize)]
pub(super) struct EngineAddr {
    host: String,
    port: PortValue,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum PortValue {
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
pub(super) struct StreamKey {
    #[serde(default)]
    key_type: String,
    key: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Session {
    playback_session_id: String,
    stat_url: String,
    command_url: String,
    is_live: LiveFlag,
}

/// The proxy sends `1`/`0`; a boolean is accepted too.
#[derive(Deserialize, Default)]
#[serde(untagged)]
pub(super) enum LiveFlag {
    Bool(bool),
    Int(i64),
    #[default]
    Missing,
}

#[derive(Deserialize)]
pub(super) struct StartedBody {
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
pub(super) struct EndedBody {
    #[serde(default)]
    container_id: Option<String>,
    #[serde(default)]
    stream_id: Option<String>,
    // The orchestrator also sends `reason` ("eof", "stopped"); nothing depends on it, and
    // serde ignores fields a struct does not name.
}

/// Checks that a text field is at most `max` bytes.
pub(super) fn bounded(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        Err(format!("{field} is longer than {max} bytes"))
    } else {
        Ok(())
    }
}

/// Parses and checks a `stream_started` body (docs/deployments.md#stream-events-from-proxies).
/// Pure, so it is fuzzed.
pub fn parse_started(body: &[u8]) -> Result<StreamStart, String> {
    let b: StartedBody =
        serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let port = b.engine.port.get()?;
    if b.stream.key.is_empty() {
        return Err("stream.key must not be empty".into());
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
    let container_id = b.container_id.filter(|c| !c.is_empty());
    bounded(
        "container_id",
        container_id.as_deref().unwrap_or(""),
        MAX_ID_LEN,
    )?;
    bounded("engine.host", &b.engine.host, MAX_ID_LEN)?;
    bounded("stream id", &stream_id, MAX_ID_LEN)?;
    bounded("stream.key", &b.stream.key, MAX_ID_LEN)?;
    bounded("stream.key_type", &b.stream.key_type, MAX_KEY_TYPE_LEN)?;
    bounded(
        "session.playback_session_id",
        &b.session.playback_session_id,
        MAX_ID_LEN,
    )?;
    bounded("session.stat_url", &b.session.stat_url, MAX_URL_LEN)?;
    bounded("session.command_url", &b.session.command_url, MAX_URL_LEN)?;
    Ok(StreamStart {
        container_id,
        host: b.engine.host,
        port,
        stream_id,
        key_type: b.stream.key_type,
        key: b.stream.key,
        playback_session_id: b.session.playback_session_id,
        stat_url: b.session.stat_url,
        command_url: b.session.command_url,
        is_live,
    })
}

/// Parses a `stream_ended` body. Pure, so it is fuzzed.
pub fn parse_ended(body: &[u8]) -> Result<StreamEnd, String> {
    let b: EndedBody = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    Ok(StreamEnd {
        container_id: b.container_id.filter(|s| !s.is_empty()),
        stream_id: b.stream_id.filter(|s| !s.is_empty()),
    })
}
