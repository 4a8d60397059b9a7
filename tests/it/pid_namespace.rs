//! The agent in a pid namespace of its own, as in a container run without `--pid=host`: the
//! host's engine pids that Docker reports are not in its /proc (or belong to another process
//! there). It must notice, say so once per engine for the connection probe and for the cache,
//! and do both through `docker exec`: a viewer is still seen, a cache still cleaned, and nothing
//! is read or deleted through a process that is not the engine.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `unshare` gives the agent a new pid namespace with its own /proc, and kills it when the
/// test's handle on `unshare` is dropped.
const UNSHARE: [&str; 5] = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_its_own_pid_namespace_the_agent_probes_and_cleans_through_exec() {
    let case = unique_name("pidns");
    let engine = TestEngine::builder()
        .name_prefix("pidns")
        .label(CASE_LABEL, &case)
        .start();
    engine.wait_http_ready().await;
    engine.write_cache_file("a.chunk", 200_000);
    let viewer = engine.stream_client();

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let port = free_port();
    let mut env = case_env(&case, port, &dir.path().join("state.redb"));
    env.extend([
        ("ACESTREAM_AGENT_CLEANUP__INTERVAL", "off".to_string()),
        ("ACESTREAM_AGENT_ACTIVITY__INTERVAL", "300ms".to_string()),
    ]);
    let _agent = Running(
        agent_command_via(&UNSHARE, dir.path(), &env, &log)
            .spawn()
            .expect("unshare (util-linux) runs the agent"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let engine_json = |addr: SocketAddr, id: String| async move {
        let (status, body) = try_http_get(addr, &format!("/engines/{id}")).await?;
        if status != 200 {
            return Err(format!("HTTP {status}: {body}"));
        }
        serde_json::from_str::<Value>(&body).map_err(|e| e.to_string())
    };

    // The viewer, seen through the exec probe.
    let v = eventually(Duration::from_secs(15), "the viewer seen", || async {
        let v = engine_json(addr, engine.id.clone()).await?;
        let streams = v["streams"].as_array().cloned().unwrap_or_default();
        streams
            .iter()
            .any(|s| s.as_str().is_some_and(|s| s.starts_with("conn:")))
            .then_some(v.clone())
            .ok_or(format!("{v}"))
    })
    .await;
    // A cleanup while it watches is refused: the engine is busy.
    let (status, body) = http_post(addr, &format!("/engines/{}/cleanup", engine.id), "", &[]).await;
    assert_eq!(status, 409, "busy engine: {body}; engine {v}");
    let left = engine.list_cache();
    assert!(left.contains(&"a.chunk".to_string()), "{left:?}");

    // Gone: idle again, and then cleaned through the exec.
    drop(viewer);
    eventually(Duration::from_secs(15), "the engine idle", || async {
        let v = engine_json(addr, engine.id.clone()).await?;
        v["streams"]
            .as_array()
            .is_some_and(|s| s.is_empty())
            .then_some(())
            .ok_or(format!("{v}"))
    })
    .await;
    let (status, body) = http_post(addr, &format!("/engines/{}/cleanup", engine.id), "", &[]).await;
    assert_eq!(status, 200, "{body}");
    let record: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(record["success"], true, "{record}");
    assert!(record["freed_bytes"].as_u64() >= Some(200_000), "{record}");
    // (The fake engine may still write a last chunk of the closed stream after the cleanup.)
    let left = engine.list_cache();
    assert!(
        !left.contains(&"a.chunk".to_string()),
        "a.chunk deleted: {left:?}"
    );

    // Said once each, naming what the host could not show.
    let text = std::fs::read_to_string(&log).unwrap();
    let probe = lines_with(&text, "Cannot read this engine's connections from the host");
    assert_eq!(probe.len(), 1, "probe fallback said once:\n{text}");
    assert!(probe[0].contains("INFO"), "{}", probe[0]);
    assert!(probe[0].contains(&engine.id[..12]), "{}", probe[0]);
    let cache = lines_with(&text, "Cannot reach this engine's cache from the host");
    assert_eq!(cache.len(), 1, "cache fallback said once:\n{text}");
    let (host, exec) = cache_operations(addr).await;
    assert_eq!(host, 0, "nothing from the host");
    assert!(exec >= 1, "the cleanup through exec: {exec}");
}

/// Where the host's /proc does not show the engine's processes, the engine's flags come from
/// its image's `Entrypoint` + `Cmd` (`${VAR}` expanded from its `Env`, also in `sh -c`
/// strings), its argument files and its cache directories are read through `docker exec`,
/// and a symlinked state directory is still resolved inside the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_its_own_pid_namespace_the_agent_reads_the_image_command_line() {
    let case = unique_name("pidns-cmd");
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        conf.path(),
        "--client-console\n--http-port=16227\n--state-dir /srv/st\n",
    )
    .unwrap();
    let link_image = derived_image(
        "RUN [\"/bin/sh\", \"-c\", \"rm -rf /home/appuser && mkdir -p /srv/ace && ln -s /dev/shm/.ACEStream /srv/ace/.ACEStream\"]\nENV HOME=/srv/ace",
    );
    let builder = || {
        TestEngine::builder()
            .name_prefix("pidns-cmd")
            .label(CASE_LABEL, &case)
            .publish(false)
    };
    let shell = builder()
        .docker_arg("--entrypoint")
        .docker_arg("/bin/sh")
        .env(
            "ACESTREAM_ARGS",
            "--http-port 16226 --cache-dir /srv/envcache",
        )
        .args(&["-c", "exec /fake-engine/engine.sh ${ACESTREAM_ARGS}"])
        .cache_dir("/srv/envcache")
        .start();
    let file = builder()
        .docker_arg("-v")
        .docker_arg(&format!("{}:/ace.conf:ro", conf.path().display()))
        .args(&["@/ace.conf"])
        .cache_dir("/srv/st/.acestream_cache")
        .start();
    let linked = builder()
        .image(&link_image)
        .env("CACHE_DIR", "/dev/shm/.ACEStream/.acestream_cache")
        .start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let port = free_port();
    let mut env = case_env(&case, port, &dir.path().join("state.redb"));
    env.push(("ACESTREAM_AGENT_CLEANUP__INTERVAL", "off".to_string()));
    let _agent = Running(
        agent_command_via(&UNSHARE, dir.path(), &env, &log)
            .spawn()
            .expect("unshare (util-linux) runs the agent"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for (e, want_port, path, source) in [
        (&shell, 16226, "/srv/envcache", "command_line"),
        (&file, 16227, "/srv/st/.acestream_cache", "command_line"),
        (
            &linked,
            6878,
            "/dev/shm/.ACEStream/.acestream_cache",
            "home",
        ),
    ] {
        let v = wait_engine(addr, &e.id, Duration::from_secs(20), "healthy", |v| {
            v["health_status"] == "healthy"
        })
        .await;
        assert_eq!(v["port"], want_port, "{}: {v}", e.name);
        assert_eq!(v["cache_path"], path, "{}: {v}", e.name);
        assert_eq!(v["cache_path_source"], source, "{}: {v}", e.name);
        e.write_cache_file("live.1", 20_000);
        let (status, body) = http_post(addr, &format!("/engines/{}/cleanup", e.id), "", &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(e.list_cache(), Vec::<String>::new(), "{}", e.name);
    }
}
