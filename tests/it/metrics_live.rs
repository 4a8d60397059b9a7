//! `/metrics` (README "Metrics") of a real agent watching real fake-engine containers: valid for
//! `promtool check metrics`, and saying the same as `/engines`.
//!
//! Needs `promtool` (Debian package `prometheus`); without it these tests fail and say so.

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ADVERTISE_HOST: &str = "metrics-host.example";

// ---------------------------------------------------------------------------
// set-up
// ---------------------------------------------------------------------------

/// Starts an engine for `case` and waits until it listens on 6878, read from its own TCP
/// table: no connection is made, so no agent can mistake the wait for a client.
async fn listening_engine(case: &str, builder: TestEngineBuilder) -> TestEngine {
    let e = builder.label(CASE_LABEL, case).start();
    let pid = e.pid();
    eventually(
        Duration::from_secs(10),
        &format!("engine {} listening on 6878", e.name),
        || async move {
            ["tcp", "tcp6"]
                .iter()
                .any(|f| {
                    std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
                        .unwrap_or_default()
                        .lines()
                        .skip(1)
                        .any(|l| {
                            let f: Vec<&str> = l.split_whitespace().collect();
                            f.len() > 3 && f[1].ends_with(":1ADE") && f[3] == "0A"
                        })
                })
                .then_some(())
        },
    )
    .await;
    e
}

/// An agent for `case`. Engines are started (and listening) before it, and health checks
/// come once a minute, so each engine is checked exactly once during a test: the state, and
/// so `/metrics`, changes only when the test changes it.
async fn start_agent(case: &str) -> TestAgent {
    TestAgent::start_for(case.to_string(), "127.0.0.1:0", |case, store| {
        let mut cfg = case_config(case, store);
        cfg.discovery.advertise_host = ADVERTISE_HOST.into();
        cfg.cleanup.exec_timeout = Duration::from_secs(10);
        cfg.health.interval = Duration::from_secs(60);
        cfg.health.timeout = Duration::from_secs(3);
        cfg
    })
    .await
}

/// Waits until `/engines/{id}` satisfies `ok`; returns the item.
async fn wait_engine(addr: SocketAddr, id: &str, what: &str, ok: fn(&Value) -> bool) -> Value {
    let path = format!("/engines/{id}");
    eventually(Duration::from_secs(10), what, || {
        let path = path.clone();
        async move {
            let (status, body) = try_http_get(addr, &path).await?;
            let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
            if status == 200 && ok(&v) {
                Ok(v)
            } else {
                Err(format!("HTTP {status}: {body}"))
            }
        }
    })
    .await
}

fn healthy_idle_with_version(v: &Value) -> bool {
    v["health_status"] == "healthy" && v["version"].is_string() && v["streams"] == json!([])
}

/// Two engines: `a` cleaned once by a manual cleanup (1 MiB in its cache), `b` with one open
/// viewer connection the connection probe sees as a stream.
struct TwoEngines {
    agent: TestAgent,
    a: TestEngine,
    b: TestEngine,
    _viewer: StreamClient,
}

async fn two_engines(prefix: &str) -> TwoEngines {
    let case = unique_name(prefix);
    let a = listening_engine(
        &case,
        TestEngine::builder().name_prefix("metrics-a-cleaned"),
    )
    .await;
    let b = listening_engine(
        &case,
        TestEngine::builder().name_prefix("metrics-b-streaming"),
    )
    .await;
    let agent = start_agent(&case).await;
    let addr = agent.addr();
    wait_engine(addr, &a.id, "engine a healthy", healthy_idle_with_version).await;
    wait_engine(addr, &b.id, "engine b healthy", healthy_idle_with_version).await;

    a.write_cache_file("movie.chunk", 1024 * 1024);
    let (status, body) = http_post(addr, &format!("/engines/{}/cleanup", a.id), "", &[]).await;
    assert_eq!(status, 200, "manual cleanup of a: {body}");

    let viewer = b.stream_client();
    wait_engine(addr, &b.id, "engine b streaming", |v| {
        v["streams"].as_array().is_some_and(|s| s.len() == 1)
    })
    .await;
    TwoEngines {
        agent,
        a,
        b,
        _viewer: viewer,
    }
}

/// `/engines` and `/metrics` taken from one state: `/engines` is read before and after the
/// scrape and must not have changed in between (a stray connection can come and go).
async fn consistent_scrape(addr: SocketAddr) -> (Vec<Value>, String) {
    eventually(
        Duration::from_secs(10),
        "/engines unchanged across a scrape",
        || async move {
            let (_, before) = try_http_get(addr, "/engines").await?;
            let (status, metrics) = try_http_get(addr, "/metrics").await?;
            let (_, after) = try_http_get(addr, "/engines").await?;
            if status != 200 {
                return Err(format!("/metrics HTTP {status}: {metrics}"));
            }
            if before != after {
                return Err(format!(
                    "state changed during the scrape: {before} -> {after}"
                ));
            }
            let engines: Vec<Value> =
                serde_json::from_str(&before).map_err(|e| format!("{e}: {before}"))?;
            Ok((engines, metrics))
        },
    )
    .await
}

// ---------------------------------------------------------------------------
// promtool and the text format
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the sample lines of a text-format 0.0.4 exposition, unescaping label values.
fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = vec![];
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value on line {line:?}"));
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let mut end = None;
            loop {
                // label name
                let mut key = String::new();
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    if c == '}' {
                        end = Some(i + 1);
                        break;
                    }
                    if c != ',' {
                        key.push(c);
                    }
                }
                if end.is_some() {
                    break;
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "line {line:?}");
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        },
                        '"' => break,
                        '\n' => panic!("raw newline in a label value: {line:?}"),
                        c => value.push(c),
                    }
                }
                labels.insert(key, value);
                if let Some(&(i, '}')) = chars.peek() {
                    end = Some(i + 1);
                    break;
                }
            }
            rest = &r[end.unwrap_or_else(|| panic!("unclosed labels in {line:?}"))..];
        }
        let value_text = rest.trim();
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("bad value {v:?} on {line:?}: {e}")),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Samples of `name` whose labels include all of `want`.
fn find<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The one value of `name` for these labels; panics if there is none or more than one.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    match find(samples, name, want).as_slice() {
        [s] => s.value,
        [] => panic!("no {name} series with {want:?}"),
        many => panic!("{} {name} series with {want:?}: {many:?}", many.len()),
    }
}

/// Metric timestamps are float seconds: equal to the JSON's RFC 3339 time within 10 µs
/// (an f64 near 1.8e9 holds about 0.2 µs).
fn assert_same_time(metric: f64, json_time: f64) {
    assert!(
        (metric - json_time).abs() < 1e-5,
        "metric timestamp {metric} vs /engines {json_time}"
    );
}

fn unix_seconds(v: &Value) -> f64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    let t = chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9
}

// ---------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn live_metrics_pass_promtool_check() {
    let t = two_engines("metrics-promtool").await;
    let (_, metrics) = consistent_scrape(t.agent.addr()).await;
    let (ok, said) = promtool_check(&metrics);
    assert!(ok, "promtool check metrics failed: {said}\n{metrics}");
    assert_eq!(
        said, "",
        "promtool check metrics prints nothing:\n{metrics}"
    );
    t.agent.agent.stop().await;
}

#[tokio::test]
async fn live_metrics_agree_with_engines() {
    let t = two_engines("metrics-values").await;
    let (engines, metrics) = consistent_scrape(t.agent.addr()).await;
    let samples = parse_samples(&metrics);
    assert_eq!(engines.len(), 2, "{engines:?}");
    let ea = engines
        .iter()
        .find(|e| e["container_id"] == json!(t.a.id))
        .expect("a listed");
    let eb = engines
        .iter()
        .find(|e| e["container_id"] == json!(t.b.id))
        .expect("b listed");
    let (a12, b12) = (&t.a.id[..12], &t.b.id[..12]);
    let a = [("container_name", t.a.name.as_str()), ("container_id", a12)];
    let b = [("container_name", t.b.name.as_str()), ("container_id", b12)];

    // Info: address, image and engine version, as /engines has them.
    for (e, item, id12) in [(&t.a, ea, a12), (&t.b, eb, b12)] {
        let port = e.host_port.to_string();
        let info = value(
            &samples,
            "acestream_engine_info",
            &[
                ("container_name", e.name.as_str()),
                ("container_id", id12),
                ("host", ADVERTISE_HOST),
                ("port", port.as_str()),
                ("image", item["image"].as_str().expect("image")),
                ("version", "3.1.5-fake"),
            ],
        );
        assert_eq!(info, 1.0);
        assert_eq!(
            value(
                &samples,
                "acestream_engine_healthy",
                &[("container_id", id12)]
            ),
            1.0
        );
        assert_same_time(
            value(
                &samples,
                "acestream_engine_last_health_check_timestamp_seconds",
                &[("container_id", id12)],
            ),
            unix_seconds(&item["last_health_check"]),
        );
    }

    assert_eq!(value(&samples, "acestream_engine_active_streams", &a), 0.0);
    assert_eq!(value(&samples, "acestream_engine_active_streams", &b), 1.0);
    assert_eq!(eb["streams"].as_array().map(Vec::len), Some(1));

    // a: one manual cleanup, its size and time as /engines says.
    let manual: Vec<(&str, &str)> = a.iter().copied().chain([("trigger", "manual")]).collect();
    assert_eq!(
        value(&samples, "acestream_cache_cleanups_total", &manual),
        1.0
    );
    assert_eq!(
        value(&samples, "acestream_cache_freed_bytes_total", &manual),
        ea["cache_freed_bytes_total"].as_u64().expect("freed total") as f64
    );
    for trigger in ["stream_end", "sweep", "pressure"] {
        let l: Vec<(&str, &str)> = a.iter().copied().chain([("trigger", trigger)]).collect();
        assert_eq!(value(&samples, "acestream_cache_cleanups_total", &l), 0.0);
    }
    for trigger in ["stream_end", "sweep", "manual", "pressure"] {
        let l: Vec<(&str, &str)> = a.iter().copied().chain([("trigger", trigger)]).collect();
        assert_eq!(
            value(&samples, "acestream_cache_cleanup_failures_total", &l),
            0.0
        );
        let l: Vec<(&str, &str)> = b.iter().copied().chain([("trigger", trigger)]).collect();
        assert_eq!(value(&samples, "acestream_cache_cleanups_total", &l), 0.0);
    }
    let size = ea["cache_size_bytes"].as_u64().expect("a has a cache size");
    assert!(size >= 1024 * 1024, "1 MiB was in the cache: {size}");
    assert_eq!(
        value(&samples, "acestream_engine_cache_size_bytes", &a),
        size as f64,
        "metric = /engines cache_size_bytes"
    );
    assert_same_time(
        value(
            &samples,
            "acestream_engine_last_cache_cleanup_timestamp_seconds",
            &a,
        ),
        unix_seconds(&ea["last_cache_cleanup"]),
    );
    if let Some(current) = ea["cache_current_bytes"].as_u64() {
        assert_eq!(
            value(&samples, "acestream_engine_cache_current_bytes", &a),
            current as f64
        );
    }

    // b: never cleaned, so no size and no cleanup time; streaming, so a last-usage time.
    assert_eq!(eb["last_cache_cleanup"], Value::Null);
    assert!(
        find(
            &samples,
            "acestream_engine_last_cache_cleanup_timestamp_seconds",
            &b
        )
        .is_empty(),
        "no last_cache_cleanup series for an engine never cleaned"
    );
    assert!(find(&samples, "acestream_engine_cache_size_bytes", &b).is_empty());
    assert_same_time(
        value(
            &samples,
            "acestream_engine_last_stream_usage_timestamp_seconds",
            &b,
        ),
        unix_seconds(&eb["last_stream_usage"]),
    );
    assert!(
        find(
            &samples,
            "acestream_engine_last_stream_usage_timestamp_seconds",
            &a
        )
        .is_empty(),
        "a never streamed"
    );

    // Agent-wide.
    assert_eq!(value(&samples, "acestream_agent_docker_up", &[]), 1.0);
    assert_eq!(value(&samples, "acestream_agent_engines", &[]), 2.0);
    assert_eq!(
        value(
            &samples,
            "acestream_agent_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "acestream_cache_cleanup_duration_seconds_count",
            &[("trigger", "manual")]
        ),
        1.0,
        "one manual cleanup timed"
    );
    assert!(
        find(
            &samples,
            "acestream_agent_last_sweep_timestamp_seconds",
            &[]
        )
        .is_empty(),
        "no sweep has run (cleanup.interval off)"
    );

    // Every per-engine series names its engine with the 12-char id.
    for s in &samples {
        let per_engine = s.name.starts_with("acestream_engine_")
            || (s.name.starts_with("acestream_cache_")
                && !s
                    .name
                    .starts_with("acestream_cache_cleanup_duration_seconds"));
        if per_engine {
            let id = s.labels.get("container_id").map(String::as_str);
            let name = s.labels.get("container_name").map(String::as_str);
            assert!(
                (id == Some(a12) && name == Some(t.a.name.as_str()))
                    || (id == Some(b12) && name == Some(t.b.name.as_str())),
                "series without its engine's name and 12-char id: {s:?}"
            );
        } else {
            assert!(
                !s.labels.contains_key("container_id"),
                "agent-wide series carries no engine labels: {s:?}"
            );
        }
    }
    t.agent.agent.stop().await;
}

#[tokio::test]
async fn odd_characters_in_label_values_stay_valid() {
    let case = unique_name("metrics-odd");
    // get_version's JSON is built by the fake engine from FAKE_VERSION as is, so JSON escapes
    // here become a quote, a backslash, non-ASCII letters and a newline in `version`.
    let fake_version = r#"1.0 \"q\" back\\slash caf\u00e9 \u2713 \ud83d\ude00 line\nbreak"#;
    let version = "1.0 \"q\" back\\slash café ✓ 😀 line\nbreak";
    let note = "say \"hi\" \\ café ✓ {x=\"y\"},";
    let e = listening_engine(
        &case,
        TestEngine::builder()
            .name_prefix("metrics-odd")
            .label("acestream-agent.test.note", note)
            .env("FAKE_VERSION", fake_version),
    )
    .await;
    let agent = start_agent(&case).await;
    let addr = agent.addr();
    let item = wait_engine(
        addr,
        &e.id,
        "engine with its odd version",
        healthy_idle_with_version,
    )
    .await;
    assert_eq!(
        item["version"],
        json!(version),
        "version read as the engine sent it"
    );
    assert_eq!(item["labels"]["acestream-agent.test.note"], json!(note));

    // /engines as a whole is valid JSON that round-trips the values.
    let (status, list) = http_get_json(addr, "/engines").await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["version"], json!(version));

    let (status, metrics) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let (ok, said) = promtool_check(&metrics);
    assert!(ok, "promtool check metrics failed: {said}\n{metrics}");
    assert_eq!(
        said, "",
        "promtool check metrics prints nothing:\n{metrics}"
    );
    assert!(
        metrics.contains(r#"version="1.0 \"q\" back\\slash café ✓ 😀 line\nbreak""#),
        "label value escaped as the text format says:\n{metrics}"
    );
    let samples = parse_samples(&metrics);
    assert_eq!(
        value(
            &samples,
            "acestream_engine_info",
            &[("container_id", &e.id[..12]), ("version", version)]
        ),
        1.0
    );
    agent.agent.stop().await;
}

#[tokio::test]
async fn metrics_are_unchanged_between_scrapes_without_state_change() {
    let case = unique_name("metrics-stable");
    let e = listening_engine(&case, TestEngine::builder().name_prefix("metrics-stable")).await;
    let agent = start_agent(&case).await;
    let addr = agent.addr();
    wait_engine(addr, &e.id, "engine healthy", healthy_idle_with_version).await;

    // Several connection-probe rounds (200 ms) pass between the scrapes; none changes state.
    let mut tries = 0;
    loop {
        tries += 1;
        let (_, before) = http_get(addr, "/engines").await;
        let (_, first) = http_get(addr, "/metrics").await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (_, second) = http_get(addr, "/metrics").await;
        let (_, after) = http_get(addr, "/engines").await;
        if before != after {
            // A stray connection came or went: state did change; look again.
            assert!(tries < 5, "state kept changing: {before} -> {after}");
            continue;
        }
        assert_eq!(first, second, "same state, same bytes");
        break;
    }
    agent.agent.stop().await;
}

/// `/metrics` answers `Accept-Encoding: gzip` (as Prometheus sends it) with a gzip body whose
/// text is the plain answer's, says so (`Content-Encoding`, `Vary`), and answers plain text
/// when not asked or asked with q=0. With curl, as an operator would check it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_gzipped_when_asked_and_plain_otherwise() {
    let t = two_engines("live-gzip").await;
    let url = format!("http://{}/metrics", t.agent.addr());
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "10"])
            .args(args)
            .arg(&url)
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl {args:?}");
        out.stdout
    };
    let gunzip = |b: &[u8]| {
        let mut child = std::process::Command::new("gzip")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), b).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "not a gzip body");
        out.stdout
    };
    // The views render on change: compare bodies of one rendering (retry if one came between).
    let (plain, zipped) = eventually(
        Duration::from_secs(10),
        "two answers of one rendering",
        || async {
            let plain = curl(&[]);
            let zipped = curl(&["-H", "Accept-Encoding: gzip"]);
            let again = curl(&[]);
            (plain == again && gunzip(&zipped) == plain)
                .then_some((plain, zipped))
                .ok_or("the rendering changed between the requests")
        },
    )
    .await;
    println!(
        "/metrics: {} bytes plain, {} gzip'd",
        plain.len(),
        zipped.len()
    );
    assert!(
        zipped.len() * 4 < plain.len(),
        "{} vs {}",
        zipped.len(),
        plain.len()
    );
    let head = String::from_utf8_lossy(&curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Accept-Encoding: gzip, deflate",
    ]))
    .to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    for not in ["identity", "gzip;q=0", "br"] {
        let head = String::from_utf8_lossy(&curl(&[
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            &format!("Accept-Encoding: {not}"),
        ]))
        .to_ascii_lowercase();
        assert!(!head.contains("content-encoding"), "{not}: {head}");
    }
    // curl --compressed decodes it back to the same text (of one rendering, as above: a
    // health check may have changed the views since the first answers).
    eventually(
        Duration::from_secs(10),
        "curl --compressed to give the plain text",
        || async {
            let plain = curl(&[]);
            let decoded = curl(&["--compressed"]);
            let again = curl(&[]);
            (plain == again && decoded == plain)
                .then_some(())
                .ok_or("the rendering changed between the requests")
        },
    )
    .await;
    t.agent.agent.stop().await;
}
