//! Tests of the test fixture itself: the fake AceStream engine image and the
//! shared harness in tests/common. The agent's integration tests trust both,
//! so each behaviour they rely on is pinned down here first.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn status_and_version_answer_like_an_engine() {
    let engine = TestEngine::builder().name_prefix("fx-endpoints").start();
    engine.wait_http_ready().await;

    let (status, body) = http_get_json(engine.addr(), STATUS_PATH).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"result": {"status": "ok"}, "error": null}));

    let (status, body) = http_get_json(engine.addr(), VERSION_PATH).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"result": {"code": 3010500, "platform": "linux", "version": "3.1.5-fake"}, "error": null})
    );

    let (status, _) = http_get(engine.addr(), "/no/such/path").await;
    assert_eq!(status, 404);
    let (status, _) = http_get(engine.addr(), "/server/api?method=no_such_method").await;
    assert_eq!(status, 404);
    let (status, _) = http_post(
        engine.addr(),
        STATUS_PATH,
        "{}",
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(status, 404, "only GET is served");
}

#[tokio::test]
async fn fake_version_comes_from_the_environment() {
    let engine = TestEngine::builder()
        .name_prefix("fx-version")
        .env("FAKE_VERSION", "9.8.7-test")
        .start();
    engine.wait_http_ready().await;

    let (status, body) = http_get_json(engine.addr(), VERSION_PATH).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["version"], json!("9.8.7-test"));
}

#[tokio::test]
async fn streaming_fills_the_cache_until_the_client_leaves() {
    let engine = TestEngine::builder().name_prefix("fx-stream").start();
    engine.wait_http_ready().await;
    assert_eq!(
        engine.list_cache(),
        Vec::<String>::new(),
        "cache must start empty"
    );
    let du_before = engine.cache_du_k();
    assert_eq!(engine.established_connections(), 0);

    let client = engine.stream_client();
    eventually(
        Duration::from_secs(10),
        "256 KiB of stream body",
        || async {
            let read = client.bytes_read();
            (read >= 256 * 1024).then_some(read).ok_or(read)
        },
    )
    .await;
    assert_eq!(client.status(), Some(200));
    assert!(!client.is_closed());
    let grown = eventually(
        Duration::from_secs(10),
        "the cache to grow by 256 KiB",
        || async {
            let du = engine.cache_du_k();
            (du >= du_before + 256).then_some(du).ok_or(du)
        },
    )
    .await;
    assert!(grown > du_before);
    let files = engine.list_cache();
    assert!(!files.is_empty());
    // The pieces sent (closed), and the stream's live file, held open while it plays.
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("x-") && (f.ends_with(".chunk") || f.ends_with(".live"))),
        "{files:?}"
    );
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".live")).count(),
        1,
        "{files:?}"
    );

    // The agent's idle detection reads this: the viewer must show up as an
    // ESTABLISHED connection on 6878 in the container's network namespace.
    assert_eq!(engine.established_connections(), 1);

    drop(client);
    eventually(
        Duration::from_secs(10),
        "the connection to go away",
        || async {
            let n = engine.established_connections();
            (n == 0).then_some(()).ok_or(n)
        },
    )
    .await;
    // Once the handler process is gone nothing can write to the cache. (ps
    // shows a running script as `{handler.sh} /bin/sh ...`; nc's own command
    // line also mentions handler.sh.)
    eventually(
        Duration::from_secs(10),
        "the stream handler to exit",
        || async {
            let ps = engine.exec(&["ps"]);
            (!ps.contains("{handler.sh}")).then_some(()).ok_or(ps)
        },
    )
    .await;
    let du_after = engine.cache_du_k();
    let files_after = engine.list_cache().len();
    assert!(du_after >= grown);
    // The handler was the only writer (engine.sh and nc write nothing to the cache): with it
    // gone, a second reading is the same.
    assert_eq!(
        engine.cache_du_k(),
        du_after,
        "cache still growing after the client left"
    );
    assert_eq!(engine.list_cache().len(), files_after);
}

#[tokio::test]
async fn health_checks_answer_while_a_stream_is_running() {
    let engine = TestEngine::builder().name_prefix("fx-concurrent").start();
    engine.wait_http_ready().await;
    let first = engine.stream_client();
    let second = StreamClient::connect(engine.addr(), "other");
    eventually(
        Duration::from_secs(10),
        "both streams to deliver data",
        || async {
            let (a, b) = (first.bytes_read(), second.bytes_read());
            (a > 0 && b > 0).then_some(()).ok_or((a, b))
        },
    )
    .await;

    let started = Instant::now();
    let (status, body) = http_get_json(engine.addr(), STATUS_PATH).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["status"], json!("ok"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "health check took {:?}",
        started.elapsed()
    );
    assert_eq!(engine.established_connections(), 2);
    assert!(engine.list_cache().iter().any(|f| f.starts_with("other-")));
}

#[tokio::test]
async fn hang_du_makes_docker_exec_du_hang() {
    let engine = TestEngine::builder()
        .name_prefix("fx-hangdu")
        .env("HANG_DU", "1")
        .start();
    engine.wait_http_ready().await;

    let mut du = Command::new("docker")
        .args(["exec", engine.id.as_str(), "du", "-sk", "/tmp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run docker exec");
    let started = Instant::now();
    let mut finished = None;
    while started.elapsed() < Duration::from_secs(2) {
        finished = du.try_wait().expect("cannot poll docker exec");
        if finished.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        finished, None,
        "`docker exec du` returned although HANG_DU=1"
    );
    du.kill().expect("cannot kill docker exec");
    du.wait().expect("cannot reap docker exec");

    // The harness's own du calls busybox directly and must still work.
    engine.write_cache_file("probe.bin", 64 * 1024);
    assert!(engine.cache_du_k() >= 64);
}

#[tokio::test]
async fn without_hang_du_docker_exec_du_answers() {
    let engine = TestEngine::builder().name_prefix("fx-du").start();
    let started = Instant::now();
    let out = engine.exec(&["du", "-sk", "/tmp"]);
    assert!(out.ends_with("/tmp"), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn cache_helpers_write_list_and_measure() {
    let engine = TestEngine::builder().name_prefix("fx-cache").start();
    let empty = engine.cache_du_k();
    engine.write_cache_file("a.bin", 100 * 1024);
    engine.write_cache_file("sub/dir/b.bin", 200 * 1024);
    assert_eq!(
        engine.list_cache(),
        vec!["a.bin".to_string(), "sub/dir/b.bin".to_string()]
    );
    let du = engine.cache_du_k();
    assert!(du >= empty + 300, "du {du} KiB, empty {empty} KiB");
    assert!(du < empty + 400, "du {du} KiB, empty {empty} KiB");
    let size = engine.exec(&["stat", "-c", "%s", &format!("{}/a.bin", engine.cache_dir)]);
    assert_eq!(size, "102400");
}

#[tokio::test]
async fn builder_options_reach_docker_and_drop_removes_the_container() {
    let engine = TestEngine::builder()
        .name_prefix("fx-builder")
        .label("team", "blue")
        .without_label(ENGINE_LABEL)
        .publish(false)
        .env("CACHE_DIR", "/tmp/other-cache")
        .start();
    assert_eq!(engine.host_port, 0);
    assert!(engine.name.starts_with("fx-builder-"), "{}", engine.name);
    let inspect = |format: &str| {
        let out = Command::new("docker")
            .args(["inspect", "-f", format, engine.id.as_str()])
            .output()
            .expect("cannot run docker inspect");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let labels: serde_json::Value =
        serde_json::from_str(&inspect("{{json .Config.Labels}}")).expect("labels are not JSON");
    assert_eq!(labels[TEST_LABEL], json!(run_id()));
    assert_eq!(labels["team"], json!("blue"));
    assert_eq!(labels.get(ENGINE_LABEL), None);
    assert_eq!(
        inspect("{{json .NetworkSettings.Ports}}"),
        r#"{"6878/tcp":null}"#
    );
    assert!(engine.ip().is_ipv4());
    assert!(engine.pid() > 0);
    assert_eq!(engine.cache_dir, "/tmp/other-cache");
    assert_eq!(engine.list_cache(), Vec::<String>::new());

    let engine_label = TestEngine::builder().name_prefix("fx-default").start();
    assert_eq!(
        Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{index .Config.Labels \"acestream.engine\"}}",
                engine_label.id.as_str()
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .expect("cannot run docker inspect"),
        "true"
    );
    assert!(engine_label.host_port > 0);

    let id = engine.id.clone();
    drop(engine);
    let gone = Command::new("docker")
        .args(["inspect", id.as_str()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("cannot run docker inspect");
    assert!(!gone.success(), "container {id} still exists after drop");
}

#[tokio::test]
async fn docker_stop_is_prompt_and_clean() {
    let engine = TestEngine::builder().name_prefix("fx-stop").start();
    engine.wait_http_ready().await;
    let _client = engine.stream_client();
    let started = Instant::now();
    engine.stop();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "docker stop took {:?}",
        started.elapsed()
    );
    assert_eq!(engine.pid(), 0);
    let code = Command::new("docker")
        .args(["inspect", "-f", "{{.State.ExitCode}}", engine.id.as_str()])
        .output()
        .expect("cannot run docker inspect");
    assert_eq!(String::from_utf8_lossy(&code.stdout).trim(), "0");
}

#[tokio::test]
#[should_panic(expected = "waiting for the impossible; last seen: 41")]
async fn eventually_panics_with_the_last_value_seen() {
    eventually(Duration::from_millis(200), "the impossible", || async {
        Err::<(), u32>(41)
    })
    .await;
}

#[tokio::test]
async fn eventually_returns_the_first_success() {
    let mut n = 0u32;
    let value = eventually(Duration::from_secs(5), "the third attempt", || {
        n += 1;
        let attempt = n;
        async move { (attempt >= 3).then_some(attempt) }
    })
    .await;
    assert_eq!(value, 3);
}
