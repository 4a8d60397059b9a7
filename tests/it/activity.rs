//! Activity and health against real containers (docs/architecture.md#health,
//! docs/architecture.md#activity): streams seen by the connection probe and by the stream event API
//! make an engine busy, its cache is never cleaned while it streams, and its last stream ending
//! starts the `idle_grace` countdown to a `stream_end` cleanup. The agent's own health checks never
//! count as streams.
//!
//! Every test runs its own agent in-process, restricted to engines carrying a label unique to
//! the test, so tests running in parallel never see each other's engines.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use serde_json::{json, Value};

impl Case {
    /// POSTs a stream event as the acexy proxy does (JSON body, fire-and-forget client).
    async fn event(&self, kind: &str, body: &Value) -> (u16, Value) {
        let (status, text) = http_post(
            self.agent.addr,
            &format!("/events/{kind}"),
            &body.to_string(),
            &[("content-type", "application/json")],
        )
        .await;
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("POST /events/{kind}: not JSON ({e}): {text}"));
        (status, v)
    }
}

/// A `stream_started` body exactly as the orchestrator's acexy proxy sends it.
fn started_body(host: &str, port: u16, key: &str, session: &str) -> Value {
    json!({
        "engine": {"host": host, "port": port},
        "stream": {"key_type": "content_id", "key": key},
        "session": {
            "playback_session_id": session,
            "stat_url": format!("http://{host}:{port}/ace/stat/{key}/{session}"),
            "command_url": format!("http://{host}:{port}/ace/cmd/{key}/{session}"),
            "is_live": 1
        },
        "labels": {"stream_id": format!("{key}|{session}")}
    })
}

fn streams_of(v: &Value) -> Vec<String> {
    v["streams"]
        .as_array()
        .unwrap_or_else(|| panic!("streams is not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("stream ids are strings").to_string())
        .collect()
}

fn time_of(v: &Value, field: &str) -> DateTime<Utc> {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a timestamp in {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("{field} is not RFC 3339 in {v}: {e}"))
}

fn cleanups_total(v: &Value) -> u64 {
    v["cleanups_total"]
        .as_u64()
        .unwrap_or_else(|| panic!("cleanups_total missing in {v}"))
}

#[tokio::test]
async fn open_stream_is_listed_and_never_cleaned_while_it_reads() {
    let (name, dir, mut cfg) = new_case("act-open-stream");
    cfg.cleanup.interval = Some(Duration::from_secs(1));
    cfg.cleanup.idle_grace = Some(Duration::from_secs(1));
    let engine = case_engine(&name, "act").start();
    engine.wait_http_ready().await;
    let since = unix_time();
    let case = Case::start(dir, cfg).await;
    case.wait_engine(&engine.id, Duration::from_secs(5), "discovery", |_| true)
        .await;

    let client = engine.stream_client();
    let v = case
        .wait_engine(
            &engine.id,
            Duration::from_secs(5),
            "the stream listed",
            |v| !streams_of(v).is_empty(),
        )
        .await;
    let streams = streams_of(&v);
    assert_eq!(streams.len(), 1, "{v}");
    let peer: SocketAddr = streams[0]
        .strip_prefix("conn:")
        .unwrap_or_else(|| panic!("stream id {:?} is not conn:<ip>:<port>", streams[0]))
        .parse()
        .unwrap_or_else(|e| panic!("stream id {:?} is not conn:<ip>:<port>: {e}", streams[0]));
    assert_ne!(peer.port(), 0);
    assert_eq!(engine.established_connections(), 1);
    assert!(v["last_stream_usage"].is_string(), "{v}");
    println!("stream listed as {}", streams[0]);

    // Several sweep periods and idle grace periods: the engine stays busy and untouched.
    let mut bytes = client.bytes_read();
    let mut files = engine.list_cache().len();
    for period in 1..=4 {
        after_sweeps(&case.agent, 1).await;
        let v = case.engine_json(&engine.id).await;
        assert_eq!(streams_of(&v), streams, "period {period}: {v}");
        assert_eq!(cleanups_total(&v), 0, "period {period}: {v}");
        assert_eq!(v["cleanup_failures_total"], 0, "period {period}: {v}");
        let now_bytes = client.bytes_read();
        let now_files = engine.list_cache().len();
        assert!(
            now_bytes > bytes,
            "period {period}: the client stopped reading"
        );
        assert!(
            now_files > files,
            "period {period}: the cache stopped growing ({now_files} files)"
        );
        (bytes, files) = (now_bytes, now_files);
    }
    assert!(case.history(&engine.id).await.is_empty());
    assert!(
        case.agent.snapshot().last_sweep.is_some(),
        "no sweep ran at all"
    );
    assert!(!client.is_closed());
    drop(client);
    case.agent.stop().await;
    // Every probe (every 200 ms) read the connections from the host: no exec at all.
    let execs: Vec<String> = exec_creates(&name, since, unix_time())
        .into_iter()
        .map(|(_, action)| action)
        .filter(|a| a.contains("/proc/net/tcp"))
        .collect();
    assert!(execs.is_empty(), "the probe ran execs: {execs:?}");
}

#[tokio::test]
async fn engine_becomes_idle_and_is_cleaned_after_idle_grace_when_the_client_goes() {
    let (name, dir, mut cfg) = new_case("act-client-goes");
    let idle_grace = Duration::from_secs(1);
    let activity = Duration::from_millis(200);
    cfg.cleanup.interval = None;
    cfg.cleanup.idle_grace = Some(idle_grace);
    cfg.activity.interval = activity;
    let engine = case_engine(&name, "act").start();
    engine.wait_http_ready().await;
    let case = Case::start(dir, cfg).await;

    let client = engine.stream_client();
    case.wait_engine(
        &engine.id,
        Duration::from_secs(5),
        "the stream listed",
        |v| streams_of(v).len() == 1,
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "a few chunks in the cache",
        || async { (engine.list_cache().len() >= 3).then_some(()) },
    )
    .await;

    let dropped = Instant::now();
    let dropped_at = Utc::now();
    drop(client);
    let v = case
        .wait_engine(&engine.id, Duration::from_secs(5), "the engine idle", |v| {
            streams_of(v).is_empty()
        })
        .await;
    let idle_after = dropped.elapsed();
    let last_usage = time_of(&v, "last_stream_usage");
    assert!(
        last_usage >= dropped_at,
        "last_stream_usage {last_usage} before the client left"
    );

    let v = case
        .wait_engine(
            &engine.id,
            Duration::from_secs(10),
            "the stream-end cleanup",
            |v| cleanups_total(v) >= 1,
        )
        .await;
    assert_eq!(cleanups_total(&v), 1, "{v}");
    let history = case.history(&engine.id).await;
    let rec = &history[0];
    assert_eq!(rec["trigger"], "stream_end", "{rec}");
    assert_eq!(rec["success"], true, "{rec}");
    assert!(
        rec["size_before_bytes"].as_u64() >= Some(3 * 65536),
        "{rec}"
    );
    // When the cleanup began, not when it ended: how long the two execs take on a loaded
    // machine is not what idle_grace is about.
    let started = time_of(rec, "started_at");
    let waited = (started - last_usage).to_std().unwrap_or_default();
    let began_after = (started - dropped_at).to_std().unwrap_or_default();
    println!(
        "client dropped: idle after {idle_after:?}, cleanup began {began_after:?} after the drop \
         ({waited:?} after the engine went idle), recorded {:?} after the drop",
        dropped.elapsed()
    );
    assert!(
        waited + Duration::from_millis(20) >= idle_grace,
        "cleaned {waited:?} after the engine became idle, before idle_grace {idle_grace:?}"
    );
    let bound = idle_grace + activity + Duration::from_secs(1);
    assert!(
        began_after <= bound,
        "stream-end cleanup began {began_after:?} after the client left (bound {bound:?})"
    );
    assert_eq!(engine.list_cache(), Vec::<String>::new());
    case.agent.stop().await;
}

#[tokio::test]
async fn stream_events_make_an_engine_busy_and_stream_end_cleans_it() {
    let (name, dir, mut cfg) = new_case("act-events");
    let idle_grace = Duration::from_secs(1);
    // No sweep: the stream end's own trigger is under test (busy engines and sweeps are
    // tests/janitor.rs's `busy_engine_cache_is_untouched`).
    cfg.cleanup.interval = None;
    cfg.cleanup.idle_grace = Some(idle_grace);
    let engine = case_engine(&name, "act").start();
    engine.wait_http_ready().await;
    engine.write_cache_file("chunk", 200_000);
    let case = Case::start(dir, cfg).await;
    case.wait_engine(&engine.id, Duration::from_secs(5), "discovery", |_| true)
        .await;

    let body = started_body("127.0.0.1", engine.host_port, "abc", "b");
    let (status, rec) = case.event("stream_started", &body).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["container_id"], engine.id.as_str(), "{rec}");
    assert_eq!(rec["id"], "abc|b", "{rec}");
    assert_eq!(rec["is_live"], true, "{rec}");
    assert_eq!(rec["status"], "started", "{rec}");
    // Answered after the change is published.
    let v = case.engine_json(&engine.id).await;
    assert_eq!(streams_of(&v), vec!["abc|b".to_string()], "{v}");
    assert!(v["last_stream_usage"].is_string(), "{v}");

    // Well over idle_grace goes by while the stream is started, by the agent's own clock:
    // nothing is cleaned.
    let window = chrono::Duration::from_std(idle_grace * 2 + Duration::from_millis(500)).unwrap();
    after_health_check_past(&case.agent, &engine.id, Utc::now() + window).await;
    let v = case.engine_json(&engine.id).await;
    assert_eq!(streams_of(&v), vec!["abc|b".to_string()], "{v}");
    assert_eq!(cleanups_total(&v), 0, "{v}");
    assert_eq!(engine.list_cache(), vec!["chunk".to_string()]);

    let (status, ended) = case
        .event(
            "stream_ended",
            &json!({"stream_id": "abc|b", "reason": "client_gone"}),
        )
        .await;
    assert_eq!(status, 200, "{ended}");
    let v = case.engine_json(&engine.id).await;
    assert!(streams_of(&v).is_empty(), "{v}");
    let v = case
        .wait_engine(
            &engine.id,
            Duration::from_secs(10),
            "the stream-end cleanup",
            |v| cleanups_total(v) >= 1,
        )
        .await;
    assert_eq!(cleanups_total(&v), 1, "{v}");
    assert_eq!(engine.list_cache(), Vec::<String>::new());
    let history = case.history(&engine.id).await;
    assert_eq!(history.len(), 1, "{history:?}");
    let rec = &history[0];
    assert_eq!(rec["trigger"], "stream_end", "{rec}");
    assert_eq!(rec["success"], true, "{rec}");
    assert!(rec["size_before_bytes"].as_u64() >= Some(200_000), "{rec}");

    let (_, streams) = http_get_json(
        case.agent.addr,
        &format!("/streams?container_id={}&status=ended", engine.id),
    )
    .await;
    let stream = &streams[0];
    assert_eq!(stream["id"], "abc|b", "{streams}");
    let waited = (time_of(rec, "started_at") - time_of(stream, "ended_at"))
        .to_std()
        .unwrap_or_default();
    println!("stream_ended to the start of its cleanup: {waited:?}");
    assert!(
        waited + Duration::from_millis(20) >= idle_grace,
        "cleaned {waited:?} after stream_ended, before idle_grace {idle_grace:?}"
    );
    assert!(
        waited <= idle_grace + Duration::from_secs(1),
        "cleanup began {waited:?} after stream_ended (idle_grace {idle_grace:?})"
    );
    case.agent.stop().await;
}

#[tokio::test]
async fn stream_event_finds_the_engine_by_name_address_or_id_prefix() {
    let (name, dir, cfg) = new_case("act-resolve");
    let engine = case_engine(&name, "act").start();
    let other = case_engine(&name, "act").start();
    engine.wait_http_ready().await;
    other.wait_http_ready().await;
    let case = Case::start(dir, cfg).await;
    for e in [&engine, &other] {
        case.wait_engine(&e.id, Duration::from_secs(5), "discovery", |_| true)
            .await;
    }
    let ip = engine.ip().to_string();
    let slash_name = format!("/{}", engine.name);
    let port = engine.host_port;
    let cases: Vec<(&str, Value)> = vec![
        (
            "loopback + published port",
            started_body("127.0.0.1", port, "k1", "s1"),
        ),
        (
            "localhost + published port",
            started_body("localhost", port, "k2", "s2"),
        ),
        (
            "container name + 6878",
            started_body(&engine.name, ENGINE_PORT, "k3", "s3"),
        ),
        (
            "/container name + 6878",
            started_body(&slash_name, ENGINE_PORT, "k4", "s4"),
        ),
        (
            "container IP + 6878",
            started_body(&ip, ENGINE_PORT, "k5", "s5"),
        ),
        ("container_id prefix", {
            let mut b = started_body("proxy-does-not-know", 1, "k6", "s6");
            b["container_id"] = json!(&engine.id[..12]);
            b
        }),
        ("full container_id", {
            let mut b = started_body("proxy-does-not-know", 1, "k7", "s7");
            b["container_id"] = json!(engine.id);
            b
        }),
        ("no labels: key|playback_session_id", {
            let mut b = started_body("127.0.0.1", port, "k8", "s8");
            b.as_object_mut().unwrap().remove("labels");
            b
        }),
    ];
    for (how, body) in &cases {
        let (status, rec) = case.event("stream_started", body).await;
        assert_eq!(status, 200, "{how}: {rec}");
        assert_eq!(rec["container_id"], engine.id.as_str(), "{how}: {rec}");
    }
    let v = case.engine_json(&engine.id).await;
    let expected: Vec<String> = (1..=8).map(|i| format!("k{i}|s{i}")).collect();
    assert_eq!(streams_of(&v), expected, "{v}");
    assert!(streams_of(&case.engine_json(&other.id).await).is_empty());

    for (how, body) in [
        (
            "unknown host",
            started_body("no-such-host.invalid", port, "x", "y"),
        ),
        (
            "name with the published port",
            started_body(&engine.name, port, "x", "y"),
        ),
        (
            "loopback with an unpublished port",
            started_body("127.0.0.1", 1, "x", "y"),
        ),
    ] {
        let (status, v) = case.event("stream_started", &body).await;
        assert_eq!(status, 404, "{how}: {v}");
        assert!(v["error"].is_string(), "{how}: {v}");
    }
    let (status, v) = case
        .event("stream_started", &{
            let mut b = started_body("127.0.0.1", port, "x", "y");
            b["container_id"] = json!("ffffffffffff");
            b
        })
        .await;
    assert_eq!(status, 404, "unknown container_id: {v}");
    assert_eq!(streams_of(&case.engine_json(&engine.id).await), expected);
    case.agent.stop().await;
}

#[tokio::test]
async fn health_checks_do_not_count_as_streams() {
    let (name, dir, mut cfg) = new_case("act-health-conns");
    cfg.health.interval = Duration::from_millis(200);
    cfg.health.timeout = Duration::from_secs(1);
    cfg.activity.interval = Duration::from_millis(100);
    let engine = case_engine(&name, "act").start();
    engine.wait_http_ready().await;
    let case = Case::start(dir, cfg).await;
    let v = case
        .wait_engine(&engine.id, Duration::from_secs(5), "a health check", |v| {
            v["health_status"] == "healthy"
        })
        .await;
    let first_check = time_of(&v, "last_health_check");

    // Answered checks: connections live for milliseconds.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let v = case.engine_json(&engine.id).await;
        assert!(streams_of(&v).is_empty(), "{v}");
        assert_eq!(v["last_stream_usage"], Value::Null, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = case.engine_json(&engine.id).await;
    assert!(
        time_of(&v, "last_health_check") > first_check,
        "no further check ran: {v}"
    );

    // A frozen engine: the kernel still accepts the agent's checks, which then stay
    // ESTABLISHED for the whole health.timeout, long enough for the probe to see every one.
    let out = std::process::Command::new("docker")
        .args(["pause", &engine.id])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker pause: {out:?}");
    let mut seen_open = false;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        seen_open |= engine.established_connections() > 0;
        let v = case.engine_json(&engine.id).await;
        assert!(streams_of(&v).is_empty(), "{v}");
        assert_eq!(v["last_stream_usage"], Value::Null, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("docker")
        .args(["unpause", &engine.id])
        .output();
    assert!(
        seen_open,
        "the agent's health checks were never seen open in the engine"
    );
    case.agent.stop().await;
}

#[tokio::test]
async fn health_and_version_are_reported() {
    let (name, dir, mut cfg) = new_case("act-health");
    cfg.health.interval = Duration::from_millis(200);
    cfg.health.timeout = Duration::from_secs(1);
    let engine = case_engine(&name, "act")
        .env("FAKE_VERSION", "9.9.9-activity")
        .start();
    let plain = case_engine(&name, "act").start();
    let started = Instant::now();
    let case = Case::start(dir, cfg).await;
    let v = case
        .wait_engine(
            &engine.id,
            Duration::from_secs(5),
            "healthy with a version",
            |v| v["health_status"] == "healthy" && v["version"].is_string(),
        )
        .await;
    println!(
        "healthy with a version {:?} after the container started",
        started.elapsed()
    );
    assert_eq!(v["version"], "9.9.9-activity", "{v}");
    assert!(v["last_health_check"].is_string(), "{v}");
    let v = case
        .wait_engine(
            &plain.id,
            Duration::from_secs(5),
            "healthy with a version",
            |v| v["health_status"] == "healthy" && v["version"].is_string(),
        )
        .await;
    assert_eq!(v["version"], "3.1.5-fake", "{v}");

    // Stop the engine's listener (SIGSTOP): connections are accepted by the kernel but never
    // answered, so checks time out.
    // A connection being accepted shows a second, short-lived nc (forked, not yet the handler).
    let nc = eventually(Duration::from_secs(5), "one nc listener", || async {
        let pids = engine.exec(&["/usr/bin/busybox", "pidof", "nc"]);
        (!pids.is_empty() && !pids.contains(' ')).then_some(pids)
    })
    .await;
    engine.exec(&["/usr/bin/busybox", "kill", "-STOP", &nc]);
    let stopped = Instant::now();
    let v = case
        .wait_engine(&engine.id, Duration::from_secs(10), "unhealthy", |v| {
            v["health_status"] == "unhealthy"
        })
        .await;
    println!(
        "unhealthy {:?} after the listener stopped",
        stopped.elapsed()
    );
    assert_eq!(
        v["version"], "9.9.9-activity",
        "the version stays known: {v}"
    );
    assert_eq!(
        case.engine_json(&plain.id).await["health_status"],
        "healthy",
        "one engine's trouble is not another's"
    );
    engine.exec(&["/usr/bin/busybox", "kill", "-CONT", &nc]);
    case.wait_engine(&engine.id, Duration::from_secs(10), "healthy again", |v| {
        v["health_status"] == "healthy"
    })
    .await;
    case.agent.stop().await;
}
