//! Logs (README "Logs"): the orchestrator's four cleanup lines, verbatim in substance, with the
//! 12-character id and 1024-based two-decimal sizes, written to stderr when not run by
//! systemd. Runs the real binary, as an operator would, against a real engine.

use crate::common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_acestream-agent");

/// Kills the agent when the test ends, also on panic.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sweep_logs_the_seed_lines_to_stderr() {
    let case = unique_name("logs");
    let engine = TestEngine::builder()
        .name_prefix("logs")
        .label("acestream-agent.test.case", &case)
        .start();
    engine.wait_http_ready().await;
    // 10 MiB in one file: the orchestrator's example line is "10485760 bytes (10.00 MB)".
    engine.write_cache_file("big.chunk", 10 * 1024 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stderr_path = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let _agent = Agent(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ACESTREAM_AGENT_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("ACESTREAM_AGENT_STORE__PATH", dir.path().join("state.redb"))
            .env(
                "ACESTREAM_AGENT_DISCOVERY__LABELS",
                format!("[acestream-agent.test.case={case}]"),
            )
            .env("ACESTREAM_AGENT_DISCOVERY__IMAGES", "[]")
            // The lines of a sweep, not of a pressure cleanup: on a host whose disk is below
            // the default 10 % free, pressure would clean the engine first.
            .env("ACESTREAM_AGENT_PRESSURE__MIN_FREE", "off")
            .env("AUTOSCALE_INTERVAL_S", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the agent binary"),
    );
    let id12 = &engine.id[..12];
    let lines = [
        format!("Running periodic cache cleanup for idle engine {id12}"),
        format!("Cache size for container {id12}: "),
        format!("Clearing AceStream cache for container {id12}"),
        format!("Successfully cleared AceStream cache for container {id12} (freed "),
    ];
    let log = eventually(
        Duration::from_secs(15),
        "the four orchestrator lines",
        || {
            let path = stderr_path.clone();
            let lines = lines.clone();
            async move {
                let mut s = String::new();
                std::fs::File::open(&path)
                    .and_then(|mut f| f.read_to_string(&mut s))
                    .map_err(|e| e.to_string())?;
                if lines.iter().all(|l| s.contains(l.as_str())) {
                    Ok(s)
                } else {
                    Err(s)
                }
            }
        },
    )
    .await;
    // In the orchestrator's order, once each for this one cleanup.
    let at: Vec<usize> = lines
        .iter()
        .map(|l| log.find(l.as_str()).expect("present"))
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "order: {at:?}\n{log}");
    // Sizes: bytes, then MB with two decimals, 1024-based (10 MiB plus du's directory blocks).
    let size_line = log[at[1]..].lines().next().unwrap();
    let bytes: u64 = size_line
        .split(": ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {size_line:?}"));
    assert!(
        (10 * 1024 * 1024..=10 * 1024 * 1024 + 2 * 4096).contains(&bytes),
        "{size_line}"
    );
    assert!(size_line.contains("bytes (10.00 MB)"), "{size_line}");
    let freed_line = log[at[3]..].lines().next().unwrap();
    assert!(freed_line.contains("(freed 10.00 MB)"), "{freed_line}");
    // Structured fields beside the message, as the journal gets them.
    assert!(freed_line.contains("trigger=sweep"), "{freed_line}");
    assert!(
        freed_line.contains(&format!("container_id={id12}")),
        "{freed_line}"
    );
    // Not a terminal: no colour codes in a file.
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a log file");
}

/// An agent that cannot reach Docker from the start says so once, as a warning (on the default
/// log level), naming the endpoint and the reason; the retries behind it stay at debug.
#[tokio::test]
async fn docker_unreachable_at_start_is_a_warning_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let port = free_port();
    let mut env = case_env(
        &unique_name("logs-nodocker"),
        port,
        &dir.path().join("state.redb"),
    );
    let socket = dir.path().join("no-docker.sock");
    env.push((
        "ACESTREAM_AGENT_DOCKER__HOST",
        format!("unix://{}", socket.display()),
    ));
    // The retries' own debug lines, so the test can count them; the warning is at WARN, shown
    // on the default level whatever this adds.
    env.push(("RUST_LOG", "info,acestream_agent::discovery=debug".into()));
    let _agent = Running(
        agent_command(dir.path(), &env, &log)
            .spawn()
            .expect("start the agent binary"),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // Not ready (Docker down), yet answering, and retrying: /readyz names Docker.
    let body = eventually(Duration::from_secs(10), "/readyz 503", || async {
        let (status, body) = try_http_get(addr, "/readyz").await?;
        (status == 503).then_some(body).ok_or(format!("{status}"))
    })
    .await;
    assert!(body.contains("docker"), "{body}");
    // Several retries (backoff from 200 ms), each said at debug only.
    let text = eventually(Duration::from_secs(10), "three retries", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let retries = lines_with(&text, "Docker still unreachable").len();
        (retries >= 3).then_some(text).ok_or(retries)
    })
    .await;
    assert!(
        lines_with(&text, "Docker still unreachable")
            .iter()
            .all(|l| l.contains("DEBUG")),
        "retries at debug:\n{text}"
    );
    let said = lines_with(&text, "Docker unreachable");
    assert_eq!(said.len(), 1, "said once:\n{text}");
    assert!(said[0].contains("WARN"), "a warning: {}", said[0]);
    assert!(
        said[0].contains(&format!(
            "cannot connect to docker at unix://{}",
            socket.display()
        )),
        "names the endpoint: {}",
        said[0]
    );
}

/// One sample of `name` (a series without labels, or the first one matching `labels`) in a
/// /metrics text.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(&format!("{name}{labels}")) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Nothing to clean is not a cleanup (docs/cache-paths.md#nothing-to-clean): after a real cleanup,
/// sweep after sweep over the now empty cache adds no record, no counter, no info line and leaves
/// the orchestrator's fields (the size before the last real cleanup, its time) as they were; the sweep does
/// not even look at the cache (no cache operation) until the engine has streamed again, and then it
/// looks once and still leaves no trace.
#[tokio::test]
async fn an_empty_cache_leaves_no_trace_sweep_after_sweep() {
    let case = unique_name("logs-empty");
    let engine = TestEngine::builder()
        .name_prefix("logs-empty")
        .label(CASE_LABEL, &case)
        .start();
    engine.wait_http_ready().await;
    engine.write_cache_file("live.1", 3 * 1024 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let port = free_port();
    let mut env = case_env(&case, port, &dir.path().join("state.redb"));
    env.extend([
        ("ACESTREAM_AGENT_CLEANUP__INTERVAL", "300ms".to_string()),
        // Streams come from the event API only in this test.
        ("ACESTREAM_AGENT_ACTIVITY__INTERVAL", "10m".to_string()),
    ]);
    let _agent = Running(
        agent_command(dir.path(), &env, &log)
            .spawn()
            .expect("start the agent binary"),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let id = engine.id.clone();
    let cleaned = wait_engine(
        addr,
        &id,
        Duration::from_secs(15),
        "the real cleanup",
        |v| v["cleanups_total"] == 1,
    )
    .await;
    assert!(
        cleaned["cache_size_bytes"].as_u64() >= Some(3 * 1024 * 1024),
        "{cleaned}"
    );
    assert!(engine.list_cache().is_empty());
    let metrics = || async {
        let (status, text) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        text
    };
    let id12 = &id[..12];
    let cleanups = format!(
        "{{container_name=\"{}\",container_id=\"{id12}\",trigger=\"sweep\"}}",
        engine.name
    );
    let last_sweep = |t: &str| sample(t, "acestream_agent_last_sweep_timestamp_seconds", "");
    let seed_lines = [
        format!("Running periodic cache cleanup for idle engine {id12}"),
        format!("Cache size for container {id12}: "),
        format!("Clearing AceStream cache for container {id12}"),
        format!("Successfully cleared AceStream cache for container {id12} (freed "),
    ];
    let seed_counts = || {
        let text = std::fs::read_to_string(&log).unwrap();
        seed_lines
            .iter()
            .map(|l| lines_with(&text, l).len())
            .collect::<Vec<_>>()
    };
    // Sweeps begin every 300 ms; wait for several after the cleanup, counting them by the
    // last-sweep timestamp.
    let sweeps_after = |n: usize| {
        let metrics = &metrics;
        async move {
            let mut seen = last_sweep(&metrics().await);
            for i in 0..n {
                seen = Some(
                    eventually(Duration::from_secs(5), &format!("sweep {i}"), || async {
                        let now = last_sweep(&metrics().await);
                        (now > seen).then_some(now.unwrap_or(0.0))
                    })
                    .await,
                );
            }
        }
    };
    sweeps_after(1).await;
    let before_text = metrics().await;
    let ops = cache_operations(addr).await;
    assert_eq!(
        seed_counts(),
        vec![1, 1, 1, 1],
        "the real cleanup's four lines"
    );
    sweeps_after(5).await;

    let after = http_get_json(addr, &format!("/engines/{id}")).await.1;
    for field in [
        "cleanups_total",
        "cache_size_bytes",
        "last_cache_cleanup",
        "cleanup_failures_total",
        "cache_freed_bytes_total",
    ] {
        assert_eq!(after[field], cleaned[field], "{field}: {after}");
    }
    assert_eq!(
        history(addr, &id).await.len(),
        1,
        "one record: the real cleanup"
    );
    let after_text = metrics().await;
    assert_eq!(
        sample(&after_text, "acestream_cache_cleanups_total", &cleanups),
        sample(&before_text, "acestream_cache_cleanups_total", &cleanups),
    );
    assert_eq!(
        seed_counts(),
        vec![1, 1, 1, 1],
        "no line for an empty cache"
    );
    assert_eq!(
        cache_operations(addr).await,
        ops,
        "the sweep does not look at a cache known empty"
    );

    // A stream comes and goes without writing: the next sweep looks once, finds it empty, and
    // still leaves no trace.
    let started = serde_json::json!({
        "container_id": id,
        "engine": {"host": "127.0.0.1", "port": engine.host_port},
        "stream": {"key_type": "content_id", "key": "k"},
        "session": {"playback_session_id": "s", "stat_url": "http://x/ace/stat/a/s",
                    "command_url": "http://x/cmd", "is_live": 1}
    });
    let (status, body) = http_post(addr, "/events/stream_started", &started.to_string(), &[]).await;
    assert_eq!(status, 200, "{body}");
    let ended = serde_json::json!({"container_id": id});
    let (status, body) = http_post(addr, "/events/stream_ended", &ended.to_string(), &[]).await;
    assert_eq!(status, 200, "{body}");
    sweeps_after(3).await;
    let (host, exec) = cache_operations(addr).await;
    assert_eq!(
        (host, exec),
        (ops.0 + 1, ops.1),
        "looked once after the stream"
    );
    let last = http_get_json(addr, &format!("/engines/{id}")).await.1;
    for field in ["cleanups_total", "cache_size_bytes", "last_cache_cleanup"] {
        assert_eq!(last[field], cleaned[field], "{field}: {last}");
    }
    assert_eq!(history(addr, &id).await.len(), 1);
    assert_eq!(seed_counts(), vec![1, 1, 1, 1]);
}
