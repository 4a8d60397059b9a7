//! The HTTP API (README "HTTP endpoints") of a real agent watching real fake-engine containers:
//! every endpoint with its status codes and bodies, the write-auth rule, and what the agent does
//! with bodies and paths it must refuse.

use crate::common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use acestream_agent::config::{CacheMethod, Config};
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// The label that restricts an agent's discovery to one test's engines.
/// Hostname the agent advertises engines on in these tests, so `host` is known exactly.
const ADVERTISE_HOST: &str = "agent-under-test.example";
const TOKEN: &str = "s3cret";
/// The body limit (docs/safety.md#input-limits).
const MAX_BODY: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// set-up
// ---------------------------------------------------------------------------

/// Nothing cleans on its own (every cleanup in these tests is a manual one), and streams come
/// from the event API only.
fn test_config(case: &str, store: &Path) -> Config {
    let mut cfg = case_config(case, store);
    cfg.discovery.advertise_host = ADVERTISE_HOST.into();
    cfg.cleanup.exec_timeout = Duration::from_secs(10);
    events_only(&mut cfg);
    cfg
}

async fn start_agent_with(prefix: &str, bind: &str, tweak: impl FnOnce(&mut Config)) -> TestAgent {
    TestAgent::start(prefix, bind, |case, store| {
        let mut cfg = test_config(case, store);
        tweak(&mut cfg);
        cfg
    })
    .await
}

async fn start_agent(prefix: &str) -> TestAgent {
    start_agent_with(prefix, "127.0.0.1:0", |_| {}).await
}

// ---------------------------------------------------------------------------
// raw HTTP, for what the harness's client cannot send or does not return
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status, self.body
            )
        })
    }

    /// The `{"error": "..."}` message of an error response.
    fn error_message(&self) -> String {
        let v = self.json();
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("error body is not an object: {v}"));
        assert_eq!(obj.len(), 1, "error body has exactly one key: {v}");
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("error body has no string \"error\": {v}"))
            .to_string()
    }
}

/// Sends `head` then `body` on a fresh connection (from `local` when given) and reads one
/// response. The body is written concurrently with reading, so a server that answers before
/// reading the whole body (413) is seen answering, not as a write error.
async fn raw_exchange(
    addr: SocketAddr,
    local: Option<IpAddr>,
    head: String,
    body: Vec<u8>,
) -> Result<RawResponse, String> {
    let work = async {
        let sock = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| e.to_string())?;
        if let Some(ip) = local {
            sock.bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = sock
            .connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            // Errors here (the server answered and closed early) are fine: the answer counts.
            let _ = wr.write_all(head.as_bytes()).await;
            let _ = wr.write_all(&body).await;
            let _ = wr.flush().await;
            wr
        });
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = rd
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading the response head: {e} (got {buf:?})"))?;
            if n == 0 {
                return Err(format!(
                    "connection closed before a response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head_text = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head_text.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in {head_text:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut rest = buf[head_end + 4..].to_vec();
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        match len {
            Some(len) => {
                while rest.len() < len {
                    let n = rd
                        .read(&mut chunk)
                        .await
                        .map_err(|e| format!("reading the body: {e}"))?;
                    if n == 0 {
                        return Err(format!("body cut short: {} of {len} bytes", rest.len()));
                    }
                    rest.extend_from_slice(&chunk[..n]);
                }
                rest.truncate(len);
            }
            None => {
                rd.read_to_end(&mut rest)
                    .await
                    .map_err(|e| format!("reading the body to EOF: {e}"))?;
            }
        }
        writer.abort();
        Ok(RawResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&rest).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| format!("no complete answer from {addr} within 10 s"))?
}

/// A request with an exact (unnormalised) target and optional JSON body.
async fn raw(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &str,
    extra_headers: &[(&str, &str)],
) -> RawResponse {
    raw_from(addr, None, method, target, body, extra_headers).await
}

async fn raw_from(
    addr: SocketAddr,
    local: Option<IpAddr>,
    method: &str,
    target: &str,
    body: &str,
    extra_headers: &[(&str, &str)],
) -> RawResponse {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    raw_exchange(addr, local, head, body.as_bytes().to_vec())
        .await
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

// ---------------------------------------------------------------------------
// small helpers
// ---------------------------------------------------------------------------

fn auth(token: &str) -> String {
    format!("Bearer {token}")
}

async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    post_json_with(addr, path, body, &[]).await
}

async fn post_json_with(
    addr: SocketAddr,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    let (status, text) = http_post(addr, path, &body.to_string(), &h).await;
    let v = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("POST {path} (HTTP {status}) did not return JSON ({e}): {text:?}")
    });
    (status, v)
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, v) = http_get_json(addr, path).await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

/// A `stream_started` body as the orchestrator's proxy sends it.
fn started(container_id: Option<&str>, host: &str, port: Value, key: &str, session: &str) -> Value {
    let mut b = json!({
        "engine": {"host": host, "port": port},
        "stream": {"key_type": "content_id", "key": key},
        "session": {
            "playback_session_id": session,
            "stat_url": format!("http://{host}/ace/stat/{key}/{session}"),
            "command_url": format!("http://{host}/ace/cmd/{key}/{session}"),
            "is_live": 1
        },
        "labels": {"stream_id": format!("{key}|{session}")}
    });
    if let Some(c) = container_id {
        b["container_id"] = json!(c);
    }
    b
}

fn assert_rfc3339_utc_or_null(v: &Value, what: &str) {
    if v.is_null() {
        return;
    }
    assert_rfc3339_utc(v, what);
}

fn assert_rfc3339_utc(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is neither a string nor null: {v}"));
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{what} = {s:?} is not RFC 3339: {e}"));
    assert_eq!(t.offset().local_minus_utc(), 0, "{what} = {s:?} is not UTC");
}

fn assert_uint_or_null(v: &Value, what: &str) {
    assert!(
        v.is_null() || v.is_u64(),
        "{what} is neither an integer nor null: {v}"
    );
}

fn is_full_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// An address of this machine other than loopback (the docker0 bridge, eth0, ...).
fn non_loopback_local_ip() -> IpAddr {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "up"])
        .output()
        .expect("this test needs the `ip` command (iproute2) to find a local address");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            f.position(|w| w == "inet")?;
            f.next()?.split('/').next()?.parse::<IpAddr>().ok()
        })
        .find(|ip| !ip.is_loopback())
        .unwrap_or_else(|| panic!("this host has no non-loopback IPv4 address: {text}"))
}

// ---------------------------------------------------------------------------
// reads
// ---------------------------------------------------------------------------

#[tokio::test]
async fn engines_list_has_seed_fields_sorted_by_container_name() {
    let agent = start_agent("api-list").await;
    // Started in the opposite order of their names, so sorting is visible.
    let zeta = agent.engine("api-zeta").await;
    let alpha = agent.engine("api-alpha").await;
    agent.wait_healthy(&zeta).await;
    agent.wait_healthy(&alpha).await;

    let (status, list) = http_get_json(agent.addr(), "/engines").await;
    assert_eq!(status, 200);
    let items = list.as_array().expect("/engines is a JSON array");
    assert_eq!(items.len(), 2, "exactly this test's engines: {list}");
    let names: Vec<&str> = items
        .iter()
        .map(|e| {
            e["container_name"]
                .as_str()
                .expect("container_name is a string")
        })
        .collect();
    assert_eq!(
        names,
        [alpha.name.as_str(), zeta.name.as_str()],
        "sorted by container_name"
    );

    for (item, engine) in items.iter().zip([&alpha, &zeta]) {
        let obj = item.as_object().expect("engine item is an object");
        let id = item["container_id"]
            .as_str()
            .expect("container_id is a string");
        assert!(is_full_id(id), "container_id is the full 64-hex id: {id}");
        assert_eq!(id, engine.id);
        assert_eq!(item["container_name"], json!(engine.name));
        assert_eq!(item["host"], json!(ADVERTISE_HOST), "advertised host");
        assert!(
            item["port"].is_u64(),
            "port is an integer: {}",
            item["port"]
        );
        assert_eq!(item["port"], json!(engine.host_port), "published host port");
        assert_eq!(item["streams"], json!([]), "streams is an (empty) array");
        assert_eq!(item["health_status"], json!("healthy"));
        assert_rfc3339_utc(&item["last_health_check"], "last_health_check");
        assert_eq!(item["last_stream_usage"], Value::Null, "never used");
        assert_eq!(item["last_cache_cleanup"], Value::Null, "never cleaned");
        assert_eq!(item["cache_size_bytes"], Value::Null, "never cleaned");

        for key in [
            "image",
            "labels",
            "version",
            "first_seen",
            "last_seen",
            "cache_current_bytes",
            "cache_measured_at",
            "cleanups_total",
            "cleanup_failures_total",
            "cache_freed_bytes_total",
            "last_cleanup_error",
            "cache_path",
            "cache_mountpoint",
        ] {
            assert!(
                obj.contains_key(key),
                "/engines field {key:?} missing: {item}"
            );
        }
        assert!(
            item["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("acestream-agent-fake-engine")),
            "image: {}",
            item["image"]
        );
        assert_eq!(
            item["labels"][CASE_LABEL],
            json!(agent.case),
            "labels carry the container's"
        );
        assert_eq!(
            item["version"],
            json!("3.1.5-fake"),
            "version from get_version"
        );
        assert_rfc3339_utc(&item["first_seen"], "first_seen");
        assert_rfc3339_utc(&item["last_seen"], "last_seen");
        assert_uint_or_null(&item["cache_current_bytes"], "cache_current_bytes");
        assert_rfc3339_utc_or_null(&item["cache_measured_at"], "cache_measured_at");
        assert_eq!(item["cleanups_total"], json!(0));
        assert_eq!(item["cleanup_failures_total"], json!(0));
        assert_eq!(item["cache_freed_bytes_total"], json!(0));
        assert_eq!(item["last_cleanup_error"], Value::Null);
        assert_eq!(item["cache_path"], json!(DEFAULT_CACHE_DIR));
        assert!(
            item["cache_mountpoint"].is_null() || item["cache_mountpoint"].is_string(),
            "cache_mountpoint: {}",
            item["cache_mountpoint"]
        );
    }
    agent.stop().await;
}

#[tokio::test]
async fn engine_is_found_by_full_id_prefix_and_name() {
    let agent = start_agent("api-find").await;
    let engine = agent.engine("api-find").await;
    let _other = agent.engine("api-find-other").await;
    agent.wait_healthy(&engine).await;

    for key in [engine.id.as_str(), &engine.id[..12], engine.name.as_str()] {
        let (status, v) = http_get_json(agent.addr(), &format!("/engines/{key}")).await;
        assert_eq!(status, 200, "GET /engines/{key}: {v}");
        assert!(v.is_object(), "one engine, not a list: {v}");
        assert_eq!(v["container_id"], json!(engine.id), "by {key:?}");
        assert_eq!(v["container_name"], json!(engine.name), "by {key:?}");
        assert_eq!(v["port"], json!(engine.host_port), "by {key:?}");
    }
    agent.stop().await;
}

#[tokio::test]
async fn unknown_engine_is_404_with_json_error() {
    let agent = start_agent("api-unknown").await;
    let _engine = agent.engine("api-unknown").await;
    let addr = agent.addr();
    for (method, path) in [
        ("GET", "/engines/no-such-engine"),
        ("GET", "/engines/0123456789ab"),
        ("GET", "/engines/no-such-engine/cleanups"),
        ("POST", "/engines/no-such-engine/cleanup"),
    ] {
        let r = raw(addr, method, path, "", &[]).await;
        assert_eq!(r.status, 404, "{method} {path}: {r:?}");
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{method} {path} content type: {r:?}"
        );
        let msg = r.error_message();
        assert!(!msg.is_empty(), "{method} {path}: empty error message");
    }
    agent.stop().await;
}

#[tokio::test]
async fn cleanup_history_is_empty_then_newest_first() {
    let agent = start_agent("api-history").await;
    let engine = agent.engine("api-history").await;
    agent.wait_healthy(&engine).await;
    let addr = agent.addr();
    let path = format!("/engines/{}/cleanups", &engine.id[..12]);

    assert_eq!(get_json(addr, &path).await, json!([]), "no cleanup yet");

    // Two cleanups of different sizes, so the records can be told apart.
    let sizes = [300 * 1024_u64, 700 * 1024];
    for (i, size) in sizes.iter().enumerate() {
        engine.write_cache_file(&format!("chunk-{i}"), *size);
        let (status, rec) =
            post_json(addr, &format!("/engines/{}/cleanup", engine.id), &json!({})).await;
        assert_eq!(status, 200, "manual cleanup {i}: {rec}");
    }

    let history = get_json(addr, &path).await;
    let records = history.as_array().expect("history is an array");
    assert_eq!(records.len(), 2, "two cleanups recorded: {history}");
    let started: Vec<chrono::DateTime<chrono::FixedOffset>> = records
        .iter()
        .map(|r| {
            chrono::DateTime::parse_from_rfc3339(r["started_at"].as_str().expect("started_at"))
                .expect("started_at is RFC 3339")
        })
        .collect();
    assert!(started[0] > started[1], "newest first: {history}");
    for (rec, size) in records.iter().zip(sizes.iter().rev()) {
        assert_eq!(rec["trigger"], json!("manual"));
        assert_eq!(rec["success"], json!(true));
        assert_eq!(rec["container_id"], json!(engine.id));
        let before = rec["size_before_bytes"]
            .as_u64()
            .expect("size_before_bytes");
        // du -sb counts the directory entry itself (a few KiB) on top of the file.
        assert!(
            before >= *size && before <= size + 16 * 1024,
            "size_before_bytes {before} for a {size}-byte file: {rec}"
        );
    }
    agent.stop().await;
}

#[tokio::test]
async fn manual_cleanup_returns_its_record_and_updates_the_engine() {
    let agent = start_agent("api-cleanup").await;
    let engine = agent.engine("api-cleanup").await;
    agent.wait_healthy(&engine).await;
    let size = 1024 * 1024_u64;
    engine.write_cache_file("movie.chunk", size);
    engine.write_cache_file(".hidden", 4096);

    let (status, rec) = post_json(
        agent.addr(),
        &format!("/engines/{}/cleanup", engine.name),
        &json!({}),
    )
    .await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["trigger"], json!("manual"));
    assert_eq!(rec["success"], json!(true));
    assert_eq!(rec["container_id"], json!(engine.id));
    assert_eq!(rec["container_name"], json!(engine.name));
    assert_eq!(rec["error"], Value::Null);
    assert_rfc3339_utc(&rec["started_at"], "started_at");
    assert_rfc3339_utc(&rec["finished_at"], "finished_at");
    let before = rec["size_before_bytes"]
        .as_u64()
        .expect("size_before_bytes");
    assert!(
        before >= size + 4096 && before <= size + 4096 + 16 * 1024,
        "size_before_bytes {before}: {rec}"
    );
    assert_eq!(
        engine.list_cache(),
        Vec::<String>::new(),
        "cache emptied, dotfiles too"
    );

    let item = get_json(agent.addr(), &format!("/engines/{}", engine.id)).await;
    assert_eq!(
        item["cache_size_bytes"],
        json!(before),
        "orchestrator field = size before cleanup"
    );
    assert_eq!(
        item["last_cache_cleanup"], rec["finished_at"],
        "when it finished"
    );
    assert_eq!(item["cleanups_total"], json!(1));
    assert!(
        rec["freed_bytes"].as_u64().expect("freed_bytes") + 8 * 1024 >= size + 4096,
        "{rec}"
    );
    // The record is committed before the reply: the history shows it at once.
    let history = get_json(agent.addr(), &format!("/engines/{}/cleanups", engine.id)).await;
    assert_eq!(history, json!([rec]), "{history}");
    agent.stop().await;
}

#[tokio::test]
async fn manual_cleanup_of_a_streaming_engine_is_409() {
    let agent = start_agent("api-409-streaming").await;
    let engine = agent.engine("api-409-streaming").await;
    agent.wait_healthy(&engine).await;
    let addr = agent.addr();
    engine.write_cache_file("in-use.chunk", 64 * 1024);
    let (status, v) = post_json(
        addr,
        "/events/stream_started",
        &started(
            Some(&engine.id),
            "127.0.0.1",
            json!(engine.host_port),
            "busy",
            "s",
        ),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    let r = raw(
        addr,
        "POST",
        &format!("/engines/{}/cleanup", engine.id),
        "",
        &[],
    )
    .await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.error_message().contains("stream"), "{r:?}");
    assert_eq!(engine.list_cache(), ["in-use.chunk"], "cache untouched");
    assert_eq!(
        get_json(addr, &format!("/engines/{}/cleanups", engine.id)).await,
        json!([]),
        "nothing recorded"
    );
    agent.stop().await;
}

#[tokio::test]
async fn manual_cleanup_while_one_runs_is_409() {
    let exec_timeout = Duration::from_secs(3);
    let agent = start_agent_with("api-409-busy", "127.0.0.1:0", |c| {
        c.cleanup.exec_timeout = exec_timeout;
        c.cleanup.method = CacheMethod::Exec;
    })
    .await;
    // HANG_DU: the agent's measuring `du -s` never returns, so a cleanup stays running until
    // cleanup.exec_timeout.
    let engine = TestEngine::builder()
        .name_prefix("api-409-busy")
        .label(CASE_LABEL, &agent.case)
        .env("HANG_DU", "1")
        .start();
    agent.wait_healthy(&engine).await;
    let addr = agent.addr();
    let path = format!("/engines/{}/cleanup", engine.id);

    let first = tokio::spawn({
        let path = path.clone();
        async move { raw(addr, "POST", &path, "", &[]).await }
    });
    // The first cleanup is running once its hung du shows in the container.
    eventually(
        Duration::from_secs(5),
        "the first cleanup's du running",
        || async {
            let ps = engine.exec(&["/usr/bin/busybox", "ps", "-o", "args"]);
            ps.contains("sleep 2147483647").then_some(())
        },
    )
    .await;
    let second = raw(addr, "POST", &path, "", &[]).await;
    assert_eq!(
        second.status, 409,
        "a second cleanup while one runs: {second:?}"
    );
    assert!(second.error_message().contains("already"), "{second:?}");

    let first = first.await.expect("first request task");
    assert_eq!(
        first.status, 500,
        "the first one failed at the exec timeout: {first:?}"
    );
    let rec = first.json();
    assert_eq!(rec["success"], json!(false), "{rec}");
    assert_eq!(rec["trigger"], json!("manual"), "{rec}");
    assert!(
        rec["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{rec}"
    );
    let history = get_json(addr, &format!("/engines/{}/cleanups", engine.id)).await;
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(1),
        "only the first was recorded: {history}"
    );
    agent.stop().await;
}

#[tokio::test]
async fn stream_events_start_and_end_a_stream() {
    let agent = start_agent("api-events").await;
    let engine = agent.engine("api-events").await;
    agent.wait_healthy(&engine).await;
    let addr = agent.addr();

    // As the proxy sends it: no container id, the engine by the published address.
    let body = started(
        None,
        "127.0.0.1",
        json!(engine.host_port),
        "abc123",
        "sess-1",
    );
    let (status, rec) = post_json(addr, "/events/stream_started", &body).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(
        rec["id"],
        json!("abc123|sess-1"),
        "id from labels.stream_id"
    );
    assert_eq!(rec["container_id"], json!(engine.id));
    assert_eq!(rec["status"], json!("started"));

    let item = get_json(addr, &format!("/engines/{}", engine.id)).await;
    assert_eq!(item["streams"], json!(["abc123|sess-1"]));
    assert_rfc3339_utc(&item["last_stream_usage"], "last_stream_usage");

    let (status, v) = post_json(
        addr,
        "/events/stream_ended",
        &json!({"stream_id": "abc123|sess-1", "reason": "eof"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let item = get_json(addr, &format!("/engines/{}", engine.id)).await;
    assert_eq!(item["streams"], json!([]), "stream gone from the engine");
    let ended = get_json(
        addr,
        &format!("/streams?container_id={}&status=ended", engine.id),
    )
    .await;
    assert_eq!(ended.as_array().map(Vec::len), Some(1), "{ended}");
    assert_eq!(ended[0]["id"], json!("abc123|sess-1"));
    assert_eq!(ended[0]["status"], json!("ended"));
    assert_rfc3339_utc(&ended[0]["ended_at"], "ended_at");
    agent.stop().await;
}

#[tokio::test]
async fn streams_are_listed_newest_first_with_orchestrator_fields() {
    let agent = start_agent("api-streams").await;
    let engine = agent.engine("api-streams").await;
    let other = agent.engine("api-streams-other").await;
    agent.wait_healthy(&engine).await;
    agent.wait_healthy(&other).await;
    let addr = agent.addr();

    // Three on `engine` (is_live 1, 0 and true), one on `other`; the stream id is left to
    // the `key|playback_session_id` default on the last one.
    let mut bodies = vec![
        started(
            Some(&engine.id),
            "127.0.0.1",
            json!(engine.host_port),
            "k1",
            "s1",
        ),
        started(
            Some(&engine.id[..12]),
            "127.0.0.1",
            json!(engine.host_port),
            "k2",
            "s2",
        ),
        started(
            None,
            "localhost",
            json!(engine.host_port.to_string()),
            "k3",
            "s3",
        ),
        started(
            Some(&other.id),
            "127.0.0.1",
            json!(other.host_port),
            "k4",
            "s4",
        ),
    ];
    bodies[1]["session"]["is_live"] = json!(0);
    bodies[2]["session"]["is_live"] = json!(true);
    bodies[2].as_object_mut().unwrap().remove("labels");
    for b in &bodies {
        let (status, v) = post_json(addr, "/events/stream_started", b).await;
        assert_eq!(status, 200, "{b} -> {v}");
    }
    let (status, v) = post_json(addr, "/events/stream_ended", &json!({"stream_id": "k1|s1"})).await;
    assert_eq!(status, 200, "{v}");

    let all = get_json(addr, &format!("/streams?container_id={}", engine.id)).await;
    let ids: Vec<&str> = all
        .as_array()
        .expect("/streams is an array")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        ["k3|s3", "k2|s2", "k1|s1"],
        "newest first, this engine only"
    );

    let r = &all[0];
    let obj = r.as_object().expect("record is an object");
    for key in [
        "id",
        "key_type",
        "key",
        "container_id",
        "playback_session_id",
        "stat_url",
        "command_url",
        "is_live",
        "started_at",
        "status",
    ] {
        assert!(obj.contains_key(key), "record field {key:?} missing: {r}");
    }
    assert_eq!(r["key_type"], json!("content_id"));
    assert_eq!(r["key"], json!("k3"));
    assert_eq!(
        r["container_id"],
        json!(engine.id),
        "full id even when found by address"
    );
    assert_eq!(r["playback_session_id"], json!("s3"));
    assert_eq!(r["stat_url"], json!("http://localhost/ace/stat/k3/s3"));
    assert_eq!(r["command_url"], json!("http://localhost/ace/cmd/k3/s3"));
    assert_eq!(r["status"], json!("started"));
    assert_rfc3339_utc(&r["started_at"], "started_at");
    assert!(
        r.get("ended_at").is_none_or(Value::is_null),
        "a started stream has no ended_at: {r}"
    );
    assert_eq!(all[0]["is_live"], json!(true), "is_live true");
    assert_eq!(all[1]["is_live"], json!(false), "is_live 0");
    assert_eq!(all[2]["is_live"], json!(true), "is_live 1");

    let started_only = get_json(
        addr,
        &format!("/streams?container_id={}&status=started", engine.id),
    )
    .await;
    let ids: Vec<&str> = started_only
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["k3|s3", "k2|s2"]);
    let ended_only = get_json(addr, "/streams?status=ended").await;
    let ids: Vec<&str> = ended_only
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["k1|s1"]);
    let everything = get_json(addr, "/streams").await;
    assert_eq!(everything.as_array().map(Vec::len), Some(4), "{everything}");
    assert_eq!(
        everything[0]["id"],
        json!("k4|s4"),
        "newest first across engines"
    );

    let (status, v) = http_get_json(addr, "/streams?status=bogus").await;
    assert_eq!(status, 400, "{v}");
    agent.stop().await;
}

#[tokio::test]
async fn healthz_readyz_and_metrics_answer() {
    let agent = start_agent("api-probes").await;
    let addr = agent.addr();

    let r = raw(addr, "GET", "/healthz", "", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");

    // Ready once discovery has reached Docker; the store is open from the start.
    let ready = eventually(Duration::from_secs(10), "/readyz 200", || async move {
        let (status, body) = try_http_get(addr, "/readyz").await?;
        if status == 200 {
            Ok(body)
        } else {
            Err(format!("HTTP {status}: {body}"))
        }
    })
    .await;
    let ready: Value = serde_json::from_str(&ready).expect("/readyz answers JSON");
    assert_eq!(ready["ready"], json!(true), "{ready}");
    assert_eq!(ready["docker_up"], json!(true), "{ready}");

    // What the agent is: on the host, talking to this Docker, the default cache method.
    let info = get_json(addr, "/agent").await;
    assert_eq!(info["in_container"], json!(false), "{info}");
    assert_eq!(info["container_id"], Value::Null, "{info}");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"), "{info}");
    assert_eq!(info["cleanup_method"], "auto", "{info}");
    assert_eq!(info["docker"]["up"], json!(true), "{info}");
    assert!(info["docker"]["version"].is_string(), "{info}");

    let r = raw(addr, "GET", "/metrics", "", &[]).await;
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").expect("content type");
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "Prometheus text format 0.0.4: {ct}"
    );
    assert!(
        r.body.contains("\nacestream_agent_docker_up 1\n"),
        "{}",
        r.body
    );

    let r = raw(addr, "GET", "/", "", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/html")));
    agent.stop().await;
}

// ---------------------------------------------------------------------------
// auth
// ---------------------------------------------------------------------------

#[tokio::test]
async fn writes_need_the_bearer_token_when_one_is_set() {
    let agent = start_agent_with("api-token", "127.0.0.1:0", |c| {
        c.http.token = Some(TOKEN.into())
    })
    .await;
    let engine = agent.engine("api-token").await;
    agent.wait_healthy(&engine).await;
    let addr = agent.addr();
    let body = started(
        Some(&engine.id),
        "127.0.0.1",
        json!(engine.host_port),
        "tok",
        "s",
    );
    let cleanup = format!("/engines/{}/cleanup", engine.id);

    let wrong = [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cre"),
        Some("Bearer s3cret2"),
        Some("s3cret"),
        Some("Basic s3cret"),
    ];
    for header in wrong {
        let h: Vec<(&str, &str)> = header.iter().map(|v| ("Authorization", *v)).collect();
        let r = raw(
            addr,
            "POST",
            "/events/stream_started",
            &body.to_string(),
            &h,
        )
        .await;
        assert_eq!(r.status, 401, "stream_started with {header:?}: {r:?}");
        assert!(!r.error_message().is_empty());
        let r = raw(addr, "POST", &cleanup, "", &h).await;
        assert_eq!(r.status, 401, "cleanup with {header:?}: {r:?}");
        let r = raw(
            addr,
            "POST",
            "/events/stream_ended",
            r#"{"stream_id":"tok|s"}"#,
            &h,
        )
        .await;
        assert_eq!(r.status, 401, "stream_ended with {header:?}: {r:?}");
    }
    assert_eq!(
        get_json(addr, "/streams").await,
        json!([]),
        "refused writes changed nothing"
    );

    let right = auth(TOKEN);
    let (status, v) = post_json_with(
        addr,
        "/events/stream_started",
        &body,
        &[("Authorization", &right)],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = post_json_with(
        addr,
        "/events/stream_ended",
        &json!({"stream_id": "tok|s"}),
        &[("Authorization", &right)],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) =
        post_json_with(addr, &cleanup, &json!({}), &[("Authorization", &right)]).await;
    assert_eq!(status, 200, "{v}");
    agent.stop().await;
}

#[tokio::test]
async fn reads_stay_open_when_a_token_is_set() {
    let agent = start_agent_with("api-token-reads", "127.0.0.1:0", |c| {
        c.http.token = Some(TOKEN.into())
    })
    .await;
    let engine = agent.engine("api-token-reads").await;
    agent.wait_healthy(&engine).await;
    let addr = agent.addr();
    for path in [
        "/".to_string(),
        "/engines".to_string(),
        format!("/engines/{}", engine.id),
        format!("/engines/{}/cleanups", engine.id),
        "/streams".to_string(),
        "/metrics".to_string(),
        "/healthz".to_string(),
        "/readyz".to_string(),
    ] {
        let (status, body) = http_get(addr, &path).await;
        assert_eq!(status, 200, "GET {path} without a token: {body}");
    }
    agent.stop().await;
}

#[tokio::test]
async fn writes_without_token_are_refused_from_non_loopback() {
    let agent = start_agent_with("api-loopback", "0.0.0.0:0", |_| {}).await;
    let engine = agent.engine("api-loopback").await;
    agent.wait_healthy(&engine).await;
    let port = agent.addr().port();
    let local = non_loopback_local_ip();
    let outside = SocketAddr::new(local, port);
    let inside = SocketAddr::from(([127, 0, 0, 1], port));
    println!("non-loopback address of this host: {local}");
    let body = started(
        Some(&engine.id),
        "127.0.0.1",
        json!(engine.host_port),
        "lo",
        "s",
    )
    .to_string();
    let cleanup = format!("/engines/{}/cleanup", engine.id);

    for (path, body) in [
        ("/events/stream_started", body.as_str()),
        ("/events/stream_ended", r#"{"stream_id":"lo|s"}"#),
        (cleanup.as_str(), ""),
    ] {
        let r = raw_from(outside, Some(local), "POST", path, body, &[]).await;
        assert_eq!(r.status, 403, "POST {path} from {local}: {r:?}");
        assert!(!r.error_message().is_empty());
    }
    assert_eq!(
        get_json(inside, "/streams").await,
        json!([]),
        "refused writes changed nothing"
    );

    // Reads from the same address are fine.
    let r = raw_from(outside, Some(local), "GET", "/engines", "", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));

    // The same writes from loopback go through.
    let r = raw(inside, "POST", "/events/stream_started", &body, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = raw(
        inside,
        "POST",
        "/events/stream_ended",
        r#"{"stream_id":"lo|s"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = raw(inside, "POST", &cleanup, "", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    agent.stop().await;
}

#[tokio::test]
async fn token_lets_writes_in_from_any_address() {
    let agent = start_agent_with("api-token-remote", "0.0.0.0:0", |c| {
        c.http.token = Some(TOKEN.into())
    })
    .await;
    let engine = agent.engine("api-token-remote").await;
    agent.wait_healthy(&engine).await;
    let local = non_loopback_local_ip();
    let outside = SocketAddr::new(local, agent.addr().port());
    let body = started(
        Some(&engine.id),
        "127.0.0.1",
        json!(engine.host_port),
        "rt",
        "s",
    )
    .to_string();

    let r = raw_from(
        outside,
        Some(local),
        "POST",
        "/events/stream_started",
        &body,
        &[],
    )
    .await;
    assert_eq!(r.status, 401, "no token from {local}: {r:?}");
    let right = auth(TOKEN);
    let r = raw_from(
        outside,
        Some(local),
        "POST",
        "/events/stream_started",
        &body,
        &[("Authorization", &right)],
    )
    .await;
    assert_eq!(r.status, 200, "right token from {local}: {r:?}");
    agent.stop().await;
}

// ---------------------------------------------------------------------------
// bodies
// ---------------------------------------------------------------------------

/// A syntactically valid JSON object of exactly `len` bytes.
fn json_of_len(len: usize) -> String {
    let overhead = r#"{"stream_id":""}"#.len();
    format!(r#"{{"stream_id":"{}"}}"#, "x".repeat(len - overhead))
}

#[tokio::test]
async fn body_over_64_kib_is_413() {
    let agent = start_agent("api-413").await;
    let addr = agent.addr();

    // Exactly the limit is read (and then refused on its merits: unknown stream).
    let at_limit = json_of_len(MAX_BODY);
    let r = raw(addr, "POST", "/events/stream_ended", &at_limit, &[]).await;
    assert_eq!(
        r.status, 404,
        "a 64 KiB body is accepted for reading: {r:?}"
    );

    for path in ["/events/stream_ended", "/events/stream_started"] {
        let over = json_of_len(MAX_BODY + 1);
        let r = raw(addr, "POST", path, &over, &[]).await;
        assert_eq!(r.status, 413, "{path} with {} bytes: {r:?}", over.len());
        assert!(!r.error_message().is_empty());
    }
    let r = raw(addr, "GET", "/healthz", "", &[]).await;
    assert_eq!(r.status, 200, "agent still answers");
    agent.stop().await;
}

#[tokio::test]
async fn chunked_body_over_64_kib_is_413() {
    let agent = start_agent("api-413-chunked").await;
    let addr = agent.addr();

    // No Content-Length: the limit must hold while reading, over several chunks.
    let payload = json_of_len(MAX_BODY + 1000);
    let mut body = Vec::new();
    for chunk in payload.as_bytes().chunks(16 * 1024) {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST /events/stream_ended HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let r = raw_exchange(addr, None, head, body)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 413, "{r:?}");
    assert!(!r.error_message().is_empty());

    // A small chunked body is read like any other.
    let small = br#"{"stream_id":"nope"}"#;
    let mut body = format!("{:x}\r\n", small.len()).into_bytes();
    body.extend_from_slice(small);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = format!(
        "POST /events/stream_ended HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let r = raw_exchange(addr, None, head, body)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 404, "small chunked body read: {r:?}");
    agent.stop().await;
}

#[tokio::test]
async fn malformed_json_is_400_with_json_error() {
    let agent = start_agent("api-400").await;
    let addr = agent.addr();
    for path in ["/events/stream_started", "/events/stream_ended"] {
        for body in [
            "{not json",
            "",
            "[1,2",
            "\"just a string\"",
            "{\"stream_id\": \"a\"} trailing",
        ] {
            let r = raw(addr, "POST", path, body, &[]).await;
            assert_eq!(r.status, 400, "{path} with {body:?}: {r:?}");
            assert!(
                r.header("content-type")
                    .is_some_and(|c| c.starts_with("application/json")),
                "{r:?}"
            );
            assert!(!r.error_message().is_empty());
        }
    }
    agent.stop().await;
}

#[tokio::test]
async fn wrong_field_types_are_400() {
    let agent = start_agent("api-types").await;
    let engine = agent.engine("api-types").await;
    agent.wait_healthy(&engine).await;
    let addr = agent.addr();
    let good = started(
        Some(&engine.id),
        "127.0.0.1",
        json!(engine.host_port),
        "t",
        "s",
    );

    let mut port_abc = good.clone();
    port_abc["engine"]["port"] = json!("abc");
    let mut port_big = good.clone();
    port_big["engine"]["port"] = json!(70000);
    let mut no_stream = good.clone();
    no_stream.as_object_mut().unwrap().remove("stream");
    let mut no_engine = good.clone();
    no_engine.as_object_mut().unwrap().remove("engine");
    let mut key_number = good.clone();
    key_number["stream"]["key"] = json!(42);
    let mut engine_string = good.clone();
    engine_string["engine"] = json!("127.0.0.1:6878");
    for (what, body) in [
        ("port \"abc\"", port_abc),
        ("port 70000", port_big),
        ("stream missing", no_stream),
        ("engine missing", no_engine),
        ("stream.key a number", key_number),
        ("engine a string", engine_string),
    ] {
        let r = raw(
            addr,
            "POST",
            "/events/stream_started",
            &body.to_string(),
            &[],
        )
        .await;
        assert_eq!(r.status, 400, "{what}: {r:?}");
        assert!(!r.error_message().is_empty(), "{what}");
    }
    let r = raw(
        addr,
        "POST",
        "/events/stream_ended",
        r#"{"stream_id": 7}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "stream_id a number: {r:?}");

    assert_eq!(
        get_json(addr, "/streams").await,
        json!([]),
        "nothing was started"
    );
    let (status, v) = post_json(addr, "/events/stream_started", &good).await;
    assert_eq!(status, 200, "the well-typed body goes through: {v}");
    agent.stop().await;
}

#[tokio::test]
async fn stream_started_for_unknown_engine_is_404_with_reason() {
    let agent = start_agent("api-nomatch").await;
    let engine = agent.engine("api-nomatch").await;
    agent.wait_healthy(&engine).await;
    let addr = agent.addr();

    for body in [
        // Nothing listens there.
        started(None, "127.0.0.1", json!(1), "n", "s1"),
        // A host that is not this machine, with the engine's port.
        started(None, "203.0.113.7", json!(engine.host_port), "n", "s2"),
        // A container id nobody has.
        started(
            Some("ffffffffffff"),
            "127.0.0.1",
            json!(engine.host_port),
            "n",
            "s3",
        ),
    ] {
        let r = raw(
            addr,
            "POST",
            "/events/stream_started",
            &body.to_string(),
            &[],
        )
        .await;
        assert_eq!(r.status, 404, "{body}: {r:?}");
        let msg = r.error_message();
        assert!(
            msg.contains("no discovered engine"),
            "the reason says no engine matched: {msg:?}"
        );
    }
    assert_eq!(get_json(addr, "/streams").await, json!([]));
    let item = get_json(addr, &format!("/engines/{}", engine.id)).await;
    assert_eq!(item["streams"], json!([]));
    agent.stop().await;
}

#[tokio::test]
async fn stream_ended_for_unknown_stream_is_404_and_changes_nothing() {
    let agent = start_agent("api-end-unknown").await;
    let engine = agent.engine("api-end-unknown").await;
    agent.wait_healthy(&engine).await;
    let addr = agent.addr();
    let (status, v) = post_json(
        addr,
        "/events/stream_started",
        &started(
            Some(&engine.id),
            "127.0.0.1",
            json!(engine.host_port),
            "live",
            "s",
        ),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let streams_before = get_json(addr, "/streams").await;
    let engine_before = get_json(addr, &format!("/engines/{}", engine.id)).await;

    for body in [
        json!({"stream_id": "no-such-stream"}),
        json!({"stream_id": "no-such-stream", "container_id": engine.id}),
    ] {
        let (status, v) = post_json(addr, "/events/stream_ended", &body).await;
        assert_eq!(status, 404, "{body}: {v}");
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    assert_eq!(
        get_json(addr, "/streams").await,
        streams_before,
        "streams unchanged"
    );
    let engine_after = get_json(addr, &format!("/engines/{}", engine.id)).await;
    assert_eq!(engine_after["streams"], json!(["live|s"]));
    assert_eq!(
        engine_after["last_stream_usage"],
        engine_before["last_stream_usage"]
    );
    agent.stop().await;
}

#[tokio::test]
async fn stream_ended_twice_is_200_and_second_changes_nothing() {
    let agent = start_agent("api-end-twice").await;
    let engine = agent.engine("api-end-twice").await;
    agent.wait_healthy(&engine).await;
    let addr = agent.addr();
    let (status, v) = post_json(
        addr,
        "/events/stream_started",
        &started(None, "127.0.0.1", json!(engine.host_port), "twice", "s"),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    let end = json!({"stream_id": "twice|s", "reason": "stopped"});
    let (status, v) = post_json(addr, "/events/stream_ended", &end).await;
    assert_eq!(status, 200, "first end: {v}");
    let streams_after_first = get_json(addr, "/streams").await;
    let engine_after_first = get_json(addr, &format!("/engines/{}", engine.id)).await;
    assert_eq!(streams_after_first[0]["status"], json!("ended"));

    // The proxy retries; the retry finds the stream ended and leaves it as it is.
    // Past the first end by the clock the agent stamps with: a later ended_at would show.
    let first_end: chrono::DateTime<chrono::Utc> = streams_after_first[0]["ended_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("an ended stream has its ended_at");
    while chrono::Utc::now() <= first_end + chrono::Duration::milliseconds(1) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (status, v) = post_json(addr, "/events/stream_ended", &end).await;
    assert_eq!(status, 200, "second end: {v}");
    assert_eq!(
        get_json(addr, "/streams").await,
        streams_after_first,
        "second end changed nothing"
    );
    let engine_after_second = get_json(addr, &format!("/engines/{}", engine.id)).await;
    assert_eq!(engine_after_second["streams"], json!([]));
    assert_eq!(
        engine_after_second["last_stream_usage"],
        engine_after_first["last_stream_usage"]
    );
    agent.stop().await;
}

// ---------------------------------------------------------------------------
// routing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unknown_path_is_404_json() {
    let agent = start_agent("api-404").await;
    let addr = agent.addr();
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/engines/x/y/z"),
        ("GET", "/events"),
        ("POST", "/events/stream_paused"),
        ("GET", "/metrics/extra"),
        ("DELETE", "/nothing/here"),
    ] {
        let r = raw(addr, method, path, "", &[]).await;
        assert_eq!(r.status, 404, "{method} {path}: {r:?}");
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{r:?}"
        );
        assert!(!r.error_message().is_empty());
    }
    agent.stop().await;
}

#[tokio::test]
async fn wrong_method_is_405() {
    let agent = start_agent("api-405").await;
    let addr = agent.addr();
    for (method, path, allow) in [
        ("POST", "/engines", "GET"),
        ("DELETE", "/engines/abc", "GET"),
        ("PUT", "/metrics", "GET"),
        ("POST", "/healthz", "GET"),
        ("POST", "/streams", "GET"),
        ("GET", "/events/stream_started", "POST"),
        ("GET", "/events/stream_ended", "POST"),
        ("GET", "/engines/abc/cleanup", "POST"),
        ("POST", "/", "GET"),
    ] {
        let r = raw(addr, method, path, "", &[]).await;
        assert_eq!(r.status, 405, "{method} {path}: {r:?}");
        assert!(
            r.header("allow").is_some_and(|a| a.contains(allow)),
            "{method} {path}: Allow should list {allow}: {r:?}"
        );
        assert!(!r.error_message().is_empty());
    }
    agent.stop().await;
}

#[tokio::test]
async fn odd_engine_ids_are_refused_and_agent_keeps_answering() {
    let agent = start_agent("api-odd").await;
    let engine = agent.engine("api-odd").await;
    agent.wait_healthy(&engine).await;
    let addr = agent.addr();
    let long = "a".repeat(300);
    let targets = [
        "/engines/..".to_string(),
        "/engines/%2e%2e".to_string(),
        "/engines/%2E%2E/cleanups".to_string(),
        "/engines/../engines".to_string(),
        format!("/engines/{long}"),
        format!("/engines/{long}/cleanups"),
        "/engines/%ff".to_string(),
        "/engines/%zz".to_string(),
        "/engines/%".to_string(),
        "/engines/%00".to_string(),
        "/engines/%2f".to_string(),
        "/engines/.".to_string(),
        "/engines/abc".to_string(), // a prefix too short to mean anything
    ];
    for target in &targets {
        let r = raw(addr, "GET", target, "", &[]).await;
        assert!(
            r.status == 404 || r.status == 400,
            "GET {target}: expected 404 or 400, got {r:?}"
        );
        assert!(!r.error_message().is_empty(), "GET {target}");
        assert!(
            r.body.len() < 512,
            "GET {target}: the error does not echo a huge path: {r:?}"
        );
        let r = raw(addr, "POST", &format!("{target}/cleanup"), "", &[]).await;
        assert!(
            r.status == 404 || r.status == 400,
            "POST {target}/cleanup: expected 404 or 400, got {r:?}"
        );
    }
    let r = raw(addr, "GET", "/healthz", "", &[]).await;
    assert_eq!(r.status, 200, "agent still answers");
    // And the real engine is still found.
    let item = get_json(addr, &format!("/engines/{}", engine.name)).await;
    assert_eq!(item["container_id"], json!(engine.id));
    agent.stop().await;
}
