//! What the engine says about its streams (README "Stream statistics"): each started stream's
//! statistics, asked of its engine at the path of the `stat_url` the proxy posted, reach
//! `/streams`, `/engines` and `/metrics` and follow changes; a stream with no peers and no
//! download is stalled after `streams.stall_after` and not before; a `stat_url` never makes the
//! agent fetch another host or scheme; the engine's own cache limit comes from its command
//! line, or from its answer, which wins; a cache over that limit fires the alert in a real
//! Prometheus. Real fake engines (`/ace/stat/<infohash>/<session>` answers what the test wrote
//! into the container), agents in-process.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use acestream_agent::config::Config;
use chrono::{DateTime, Utc};
use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const STALL_AFTER: Duration = Duration::from_secs(3);

fn config(case: &str, store: &Path) -> Config {
    let mut cfg = case_config(case, store);
    cfg.streams.stat_interval = Some(Duration::from_millis(500));
    cfg.streams.stall_after = STALL_AFTER;
    cfg.health.timeout = Duration::from_secs(1);
    cfg
}

/// What the engine answers for `session` from now on.
fn set_stat(engine: &TestEngine, session: &str, response: Value) {
    let body = json!({"response": response, "error": null}).to_string();
    engine.exec(&[
        "sh",
        "-c",
        "mkdir -p /tmp/stat && printf '%s' \"$2\" > \"/tmp/stat/$1\"",
        "sh",
        session,
        &body,
    ]);
}

fn stat(peers: u64, down: u64, up: u64) -> Value {
    json!({"status": "dl", "peers": peers, "speed_down": down, "speed_up": up,
           "downloaded": 10 * 1048576, "uploaded": 1048576,
           "disk_cache_stats": {"avail": 1000, "disk_cache_limit": 0,
                                "inactive_inuse": 0, "active_inuse": 1}})
}

/// `POST /events/stream_started` of stream `key|session` on `engine`, with `stat_url`.
async fn start_stream(addr: SocketAddr, engine: &TestEngine, key: &str, session: &str, url: &str) {
    let body = json!({
        "container_id": engine.id,
        "engine": {"host": "127.0.0.1", "port": 1},
        "stream": {"key_type": "infohash", "key": key},
        "session": {"playback_session_id": session, "stat_url": url,
                    "command_url": format!("http://127.0.0.1:1/ace/cmd/{key}/{session}"),
                    "is_live": 1},
        "labels": {"stream_id": format!("{key}|{session}")}
    });
    let (status, reply) = http_post(addr, "/events/stream_started", &body.to_string(), &[]).await;
    assert_eq!(status, 200, "{reply}");
}

/// The stream record `id` of `GET /streams`, once `pred` holds for it.
async fn wait_stream(
    addr: SocketAddr,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let pred = &pred;
    eventually(WAIT, what, || async move {
        let (status, body) = try_http_get(addr, "/streams?status=started").await?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let r = v
            .as_array()
            .and_then(|a| a.iter().find(|r| r["id"] == id))
            .cloned()
            .ok_or(format!("HTTP {status}: {body}"))?;
        pred(&r).then_some(r.clone()).ok_or(r.to_string())
    })
    .await
}

async fn metric(addr: SocketAddr, family: &str, id: &str) -> Option<f64> {
    let (_, text) = try_http_get(addr, "/metrics").await.ok()?;
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| l.contains(&format!("container_id=\"{}\"", &id[..12])))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn requests(engine: &TestEngine) -> Vec<String> {
    engine
        .try_exec(&["cat", "/tmp/requests.log"])
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.to_utc())
        .unwrap_or_else(|| panic!("not an RFC 3339 time: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_reach_streams_engines_and_metrics_and_follow_changes() {
    let agent = TestAgent::start("stats-flow", "127.0.0.1:0", config).await;
    let addr = agent.addr();
    let engine = agent.engine("stats-flow").await;
    agent.wait_healthy(&engine).await;
    set_stat(&engine, "s1", stat(5, 100, 20));
    // The URL names another host and port: the engine is asked all the same.
    start_stream(
        addr,
        &engine,
        "abc",
        "s1",
        "http://10.99.99.99:1234/ace/stat/abc/s1",
    )
    .await;
    let r = wait_stream(addr, "abc|s1", "statistics of s1", |r| r["peers"] == 5).await;
    assert_eq!(r["speed_down_bytes"], 100 * 1024, "{r}");
    assert_eq!(r["speed_up_bytes"], 20 * 1024, "{r}");
    assert_eq!(r["downloaded_bytes"], 10 * 1048576, "{r}");
    assert_eq!(r["uploaded_bytes"], 1048576, "{r}");
    assert_eq!(r["stat_status"], "dl", "{r}");
    assert_eq!(r["stalled"], false, "{r}");
    assert!(time(&r["stat_at"]) >= time(&r["started_at"]), "{r}");
    let e = wait_engine(addr, &engine.id, WAIT, "the engine's sums", |e| {
        e["peers"] == 5
    })
    .await;
    assert_eq!(
        (
            &e["speed_down_bytes"],
            &e["speed_up_bytes"],
            &e["stalled_streams"]
        ),
        (&json!(102400), &json!(20480), &json!(0)),
        "{e}"
    );
    assert_eq!(
        metric(addr, "acestream_engine_peers", &engine.id).await,
        Some(5.0)
    );
    assert_eq!(
        metric(addr, "acestream_engine_download_speed_bytes", &engine.id).await,
        Some(102400.0)
    );
    assert_eq!(
        metric(addr, "acestream_engine_upload_speed_bytes", &engine.id).await,
        Some(20480.0)
    );
    assert!(
        requests(&engine)
            .iter()
            .any(|l| l == "GET /ace/stat/abc/s1"),
        "{:?}",
        requests(&engine)
    );

    // A second stream, and new values for the first: the sums follow.
    set_stat(&engine, "s2", stat(2, 50, 0));
    start_stream(
        addr,
        &engine,
        "def",
        "s2",
        "http://127.0.0.1:1/ace/stat/def/s2",
    )
    .await;
    set_stat(&engine, "s1", stat(9, 300, 10));
    let e = wait_engine(addr, &engine.id, WAIT, "the new sums", |e| e["peers"] == 11).await;
    assert_eq!(e["speed_down_bytes"], 350 * 1024, "{e}");
    assert_eq!(e["speed_up_bytes"], 10 * 1024, "{e}");
    let r = wait_stream(addr, "abc|s1", "s1's new values", |r| r["peers"] == 9).await;
    assert_eq!(r["speed_down_bytes"], 300 * 1024, "{r}");
    // Ended, a stream no longer counts.
    let (status, reply) = http_post(
        addr,
        "/events/stream_ended",
        &json!({"stream_id": "abc|s1"}).to_string(),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let e = wait_engine(addr, &engine.id, WAIT, "s2 alone", |e| e["peers"] == 2).await;
    assert_eq!(e["speed_down_bytes"], 50 * 1024, "{e}");
    agent.stop().await;
}

/// A posted `stat_url` never makes the agent fetch anything but the engine's `/ace/stat/…`:
/// another port or IP is the engine all the same; another scheme or path is refused and said
/// so in `stat_status`. A listener on the port one URL names is never connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stat_url_never_makes_the_agent_fetch_anything_else() {
    let agent = TestAgent::start("stats-url", "127.0.0.1:0", config).await;
    let addr = agent.addr();
    let engine = agent.engine("stats-url").await;
    agent.wait_healthy(&engine).await;
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    for s in ["s3", "s4", "s5"] {
        set_stat(&engine, s, stat(1, 1, 1));
    }
    let sent = [
        ("s3", format!("http://127.0.0.1:{trap_port}/ace/stat/x/s3")),
        ("s4", "http://169.254.169.254/ace/stat/x/s4".to_string()),
        ("s5", "/ace/stat/x/s5".to_string()),
    ];
    let refused = [
        ("r1", "file:///etc/passwd"),
        ("r2", "unix:/var/run/docker.sock"),
        ("r3", "http://127.0.0.1:2375/containers/json"),
        ("r4", "http://engine/server/api?method=stop"),
        ("r5", "/ace/stat/../../webui/api/service?method=get_version"),
    ];
    for (session, url) in &sent {
        start_stream(addr, &engine, "x", session, url).await;
    }
    for (session, url) in &refused {
        start_stream(addr, &engine, "x", session, url).await;
    }
    for (session, _) in &sent {
        wait_stream(addr, &format!("x|{session}"), "asked of the engine", |r| {
            r["peers"] == 1
        })
        .await;
    }
    for (session, url) in &refused {
        let r = wait_stream(addr, &format!("x|{session}"), "refused", |r| {
            r["stat_status"]
                .as_str()
                .is_some_and(|s| s.starts_with("refused: "))
        })
        .await;
        assert_eq!(r["peers"], Value::Null, "{url}: {r}");
    }
    let log = requests(&engine);
    let stat_lines: Vec<&String> = log
        .iter()
        .filter(|l| {
            !l.contains("/server/api?api_version=3&method=get_status")
                && !l.contains("method=get_version")
        })
        .collect();
    for l in &stat_lines {
        assert!(
            [
                "GET /ace/stat/x/s3",
                "GET /ace/stat/x/s4",
                "GET /ace/stat/x/s5"
            ]
            .contains(&l.as_str()),
            "the engine was asked {l:?}"
        );
    }
    for want in [
        "GET /ace/stat/x/s3",
        "GET /ace/stat/x/s4",
        "GET /ace/stat/x/s5",
    ] {
        assert!(log.iter().any(|l| l == want), "{want} not asked: {log:?}");
    }
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the agent connected to the port a stat_url named"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_no_peers_is_stalled_after_stall_after_and_not_before() {
    let agent = TestAgent::start("stats-stall", "127.0.0.1:0", config).await;
    let addr = agent.addr();
    let engine = agent.engine("stats-stall").await;
    agent.wait_healthy(&engine).await;
    set_stat(&engine, "s1", stat(0, 0, 0));
    start_stream(addr, &engine, "k", "s1", "http://e/ace/stat/k/s1").await;
    // Every reading: not stalled while the stream is younger than stall_after (by its own
    // answer's time), stalled from then on.
    let readings: std::sync::Mutex<Vec<Value>> = Default::default();
    let r = wait_stream(addr, "k|s1", "stalled", |r| {
        readings.lock().unwrap().push(r.clone());
        r["stalled"] == true
    })
    .await;
    let started = time(&r["started_at"]);
    let stalled_at = time(&r["stat_at"]);
    assert!(
        (stalled_at - started).to_std().unwrap() >= STALL_AFTER,
        "stalled after {:?}: {r}",
        stalled_at - started
    );
    let before: Vec<Value> = readings
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["stat_at"].is_string())
        .cloned()
        .collect();
    assert!(
        before.iter().any(|r| r["stalled"] == false),
        "never seen answered and not yet stalled: {before:?}"
    );
    for r in before.iter().filter(|r| r["stalled"] == false) {
        assert!(
            (time(&r["stat_at"]) - started).to_std().unwrap_or_default() < STALL_AFTER,
            "not stalled long after stall_after: {r}"
        );
    }
    let e = wait_engine(addr, &engine.id, WAIT, "one stalled stream", |e| {
        e["stalled_streams"] == 1
    })
    .await;
    assert_eq!(e["peers"], 0, "{e}");
    assert_eq!(
        metric(addr, "acestream_engine_stalled_streams", &engine.id).await,
        Some(1.0)
    );
    // Peers again: no longer stalled.
    set_stat(&engine, "s1", stat(3, 10, 0));
    wait_stream(addr, "k|s1", "flowing again", |r| {
        r["stalled"] == false && r["peers"] == 3
    })
    .await;
    wait_engine(addr, &engine.id, WAIT, "no stalled stream", |e| {
        e["stalled_streams"] == 0
    })
    .await;
    agent.stop().await;
}

/// An engine that stops answering its statistics: the stream keeps its last values, `stat_at`
/// stays at the last answer while time goes on, and it becomes stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_engine_stops_answering_keeps_its_last_values_and_becomes_stalled() {
    let agent = TestAgent::start("stats-silent", "127.0.0.1:0", config).await;
    let addr = agent.addr();
    let engine = agent.engine("stats-silent").await;
    agent.wait_healthy(&engine).await;
    set_stat(&engine, "s1", stat(4, 64, 8));
    start_stream(addr, &engine, "k", "s1", "http://e/ace/stat/k/s1").await;
    wait_stream(addr, "k|s1", "flowing", |r| r["peers"] == 4).await;
    engine.exec(&["touch", "/tmp/hang"]);
    // The last answer's time, once no new answer comes.
    let last = wait_stream(addr, "k|s1", "no new answer", |r| r["peers"] == 4).await;
    let r = wait_stream(addr, "k|s1", "stalled", |r| r["stalled"] == true).await;
    assert_eq!(
        (&r["peers"], &r["speed_down_bytes"], &r["stat_status"]),
        (&json!(4), &json!(64 * 1024), &json!("dl")),
        "{r}"
    );
    assert!(
        time(&r["stat_at"]) <= time(&last["stat_at"]) + chrono::Duration::milliseconds(600),
        "answers went on: {last} then {r}"
    );
    assert!(
        (Utc::now() - time(&r["stat_at"])).to_std().unwrap() >= STALL_AFTER,
        "stalled while answering: {r}"
    );
    let e = wait_engine(addr, &engine.id, WAIT, "its stream stalled", |e| {
        e["stalled_streams"] == 1
    })
    .await;
    assert_eq!(e["peers"], 4, "the last values: {e}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_limit_comes_from_the_command_line_and_the_engines_answer_wins() {
    let agent = TestAgent::start("stats-limit", "127.0.0.1:0", config).await;
    let addr = agent.addr();
    let engine = case_engine(&agent.case, "stats-limit")
        .args(&[
            "--disk-cache-limit",
            "300000",
            "--live-cache-type",
            "memory",
        ])
        .start();
    agent.wait_healthy(&engine).await;
    let e = wait_engine(addr, &engine.id, WAIT, "the command line's limit", |e| {
        e["cache_limit_bytes"] == 300000
    })
    .await;
    assert_eq!(e["cache_limit_source"], "command_line", "{e}");
    assert_eq!(e["live_cache_type"], "memory", "{e}");
    assert_eq!(
        metric(addr, "acestream_engine_cache_limit_bytes", &engine.id).await,
        Some(300000.0)
    );
    let mut answer = stat(1, 1, 1);
    answer["disk_cache_stats"]["disk_cache_limit"] = json!(2147483648u64);
    set_stat(&engine, "s1", answer);
    start_stream(addr, &engine, "k", "s1", "http://e/ace/stat/k/s1").await;
    let e = wait_engine(addr, &engine.id, WAIT, "the engine's own limit", |e| {
        e["cache_limit_bytes"] == 2147483648u64
    })
    .await;
    assert_eq!(e["cache_limit_source"], "engine", "{e}");
    // An engine without flags or streams says nothing.
    let plain = agent.engine("stats-nolimit").await;
    agent.wait_healthy(&plain).await;
    let e = wait_engine(addr, &plain.id, WAIT, "listed", |_| true).await;
    assert_eq!(
        (
            &e["cache_limit_bytes"],
            &e["cache_limit_source"],
            &e["live_cache_type"]
        ),
        (&Value::Null, &Value::Null, &Value::Null),
        "{e}"
    );
    agent.stop().await;
}

/// A cache measured over its engine's own limit (by more than 10 %) fires
/// `AcestreamEngineCacheOverLimit` in a real Prometheus, for that engine only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_over_its_own_limit_fires_the_alert_in_a_real_prometheus() {
    let agent = TestAgent::start("stats-over", "127.0.0.1:0", |case, store| {
        let mut cfg = config(case, store);
        cfg.cleanup.measure_interval = Some(Duration::from_secs(1));
        cfg
    })
    .await;
    let addr = agent.addr();
    let over = case_engine(&agent.case, "stats-over")
        .args(&["--disk-cache-limit", "100000"])
        .start();
    let within = case_engine(&agent.case, "stats-within")
        .args(&["--disk-cache-limit", "1000000"])
        .start();
    for e in [&over, &within] {
        agent.wait_healthy(e).await;
        e.write_cache_file("live.1", 300_000);
    }
    for e in [&over, &within] {
        wait_engine(addr, &e.id, WAIT, "measured", |v| {
            v["cache_current_bytes"].as_u64() >= Some(300_000)
        })
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = common::prom::rules_for_tests("AcestreamEngineCacheOverLimit", "1s", &[]);
    let prom = common::prom::start_with_rules(dir.path(), &[addr], &rules).await;
    let firing = common::prom::wait_firing(
        prom.addr,
        "AcestreamEngineCacheOverLimit",
        Duration::from_secs(60),
    )
    .await;
    let ids: Vec<&str> = firing
        .iter()
        .filter_map(|a| a["metric"]["container_id"].as_str())
        .collect();
    assert_eq!(ids, vec![&over.id[..12]], "{firing:?}");
    agent.stop().await;
}
