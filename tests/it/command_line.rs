//! The engine's own command line and the places images keep their cache
//! (docs/cache-paths.md#command-line, docs/cache-paths.md#order): the port and cache directory an
//! engine really runs with, read from its process (exec form, `--flag=V`, `sh -c` with `${VAR}`,
//! `@file`), images that keep their state under `$HOME`, in `/dev/shm`, or behind a symlink, and
//! flag values that are refused.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

fn engine(case: &str) -> TestEngineBuilder {
    TestEngine::builder()
        .name_prefix("cmdline")
        .label(CASE_LABEL, case)
        .publish(false)
}

/// `/engines/{id}` once the engine is healthy (its port is the right one).
async fn healthy(case: &Case, e: &TestEngine) -> Value {
    case.wait_engine(&e.id, WAIT, "healthy on its own port", |v| {
        v["health_status"] == "healthy"
    })
    .await
}

/// `POST /engines/{id}/cleanup`: status and body.
async fn manual_cleanup(case: &Case, e: &TestEngine) -> (u16, String) {
    http_post(
        case.agent.addr,
        &format!("/engines/{}/cleanup", e.id),
        "",
        &[],
    )
    .await
}

/// A manual cleanup that frees what the cache held; the record.
async fn cleaned(case: &Case, e: &TestEngine) -> Value {
    let (status, body) = manual_cleanup(case, e).await;
    assert_eq!(status, 200, "{}: {body}", e.name);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["freed_bytes"].as_u64() >= Some(10_000), "{v}");
    v
}

/// Every form public images pass the flags in, with no label: the port is the engine's (it is
/// healthy there) and the cache that is cleaned is the one its flags name, not the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_and_cache_dir_come_from_the_engines_command_line() {
    let (name, dir, cfg) = new_case("cmdline-forms");
    let conf = tempfile::NamedTempFile::new().unwrap();
    // One argument or `flag value` a line, a value on its own line, a blank line, CRLF.
    std::fs::write(
        conf.path(),
        "--client-console\r\n\n--http-port 16217\n--cache-dir\n/srv/filecache\n",
    )
    .unwrap();
    let forms: Vec<(&str, TestEngine, u16, &str)> = vec![
        (
            "exec form",
            engine(&name)
                .args(&[
                    "--client-console",
                    "--http-port",
                    "16214",
                    "--cache-dir",
                    "/srv/ace/cache",
                ])
                .cache_dir("/srv/ace/cache")
                .start(),
            16214,
            "/srv/ace/cache",
        ),
        (
            "--flag=V",
            engine(&name)
                .args(&["--http-port=16215", "--state-dir=/srv/state"])
                .cache_dir("/srv/state/.acestream_cache")
                .start(),
            16215,
            "/srv/state/.acestream_cache",
        ),
        (
            "sh -c with ${VAR}",
            engine(&name)
                .docker_arg("--entrypoint")
                .docker_arg("/bin/sh")
                .env(
                    "ACESTREAM_ARGS",
                    "--client-console --http-port 16216 --cache-dir /srv/envcache ",
                )
                .args(&["-c", "/fake-engine/engine.sh ${ACESTREAM_ARGS}"])
                .cache_dir("/srv/envcache")
                .start(),
            16216,
            "/srv/envcache",
        ),
        (
            "@file",
            engine(&name)
                .docker_arg("-v")
                .docker_arg(&format!(
                    "{}:/opt/acestream/acestream.conf:ro",
                    conf.path().display()
                ))
                .args(&["@/opt/acestream/acestream.conf"])
                .cache_dir("/srv/filecache")
                .start(),
            16217,
            "/srv/filecache",
        ),
    ];
    let case = Case::start(dir, cfg).await;
    for (form, e, port, cache) in &forms {
        let v = healthy(&case, e).await;
        assert_eq!(v["port"], *port, "{form}: {v}");
        assert_eq!(v["host"], e.ip().to_string().as_str(), "{form}: {v}");
        assert_eq!(v["cache_path"], *cache, "{form}: {v}");
        assert_eq!(v["cache_path_source"], "command_line", "{form}: {v}");
        e.write_cache_file("live.1", 20_000);
        // The default directory exists in this image too, and is not the engine's cache.
        e.exec(&[
            "/usr/bin/busybox",
            "sh",
            "-c",
            &format!("echo keep > {DEFAULT_CACHE_DIR}/other"),
        ]);
        cleaned(&case, e).await;
        assert_eq!(e.list_cache(), Vec::<String>::new(), "{form}");
        assert_eq!(
            e.exec(&[
                "/usr/bin/busybox",
                "cat",
                &format!("{DEFAULT_CACHE_DIR}/other")
            ]),
            "keep",
            "{form}: the default directory was cleaned instead"
        );
    }
    case.agent.stop().await;
}

/// `--cache-dir /` and `--state-dir /etc` are refused like a bad label or config value: the
/// reason in `last_cleanup_error`, and nothing of that engine is ever deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangerous_flag_values_are_refused_and_nothing_is_deleted() {
    let (name, dir, mut cfg) = new_case("cmdline-bad");
    cfg.cleanup.interval = Some(Duration::from_millis(300));
    let root = engine(&name).args(&["--cache-dir", "/"]).start();
    let etc = engine(&name).args(&["--state-dir", "/etc"]).start();
    for e in [&root, &etc] {
        e.exec(&[
            "/usr/bin/busybox",
            "sh",
            "-c",
            "echo keep > /etc/canary; echo keep > /canary",
        ]);
    }
    let case = Case::start(dir, cfg).await;
    for (e, flag) in [(&root, "--cache-dir"), (&etc, "--state-dir")] {
        let v = case
            .wait_engine(&e.id, WAIT, "the refusal", |v| {
                v["last_cleanup_error"].is_string()
            })
            .await;
        let err = v["last_cleanup_error"].as_str().unwrap();
        println!("{flag}: {err}");
        assert!(
            err.starts_with(&format!("invalid {flag} on the engine's command line")),
            "{v}"
        );
        let (status, body) = manual_cleanup(&case, e).await;
        assert_eq!(status, 409, "{body}");
        assert!(body.contains("is not cleaned"), "{body}");
    }
    // Sweeps come and go (every 300 ms): none touches a refused engine.
    after_sweeps(&case.agent, 3).await;
    for e in [&root, &etc] {
        assert_eq!(e.exec(&["/usr/bin/busybox", "cat", "/etc/canary"]), "keep");
        assert_eq!(e.exec(&["/usr/bin/busybox", "cat", "/canary"]), "keep");
        assert!(e
            .try_exec(&["/usr/bin/busybox", "test", "-x", "/fake-engine/engine.sh"])
            .is_ok());
        let v = case.engine_json(&e.id).await;
        assert_eq!(
            (
                v["cleanups_total"].as_u64(),
                v["cleanup_failures_total"].as_u64()
            ),
            (Some(0), Some(0)),
            "{v}"
        );
    }
    case.agent.stop().await;
}

/// Images that do not keep their state under /home/appuser: `$HOME` (here `/srv/eng`), the
/// orchestrator's `/dev/shm` (a well-known state directory, in memory), and vstavrinov's
/// `~/.ACEStream -> /dev/shm/.ACEStream` symlink, resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_under_home_in_dev_shm_and_behind_a_symlink_are_found() {
    let (name, dir, cfg) = new_case("cmdline-home");
    let home_image =
        derived_image("RUN [\"/bin/rm\", \"-rf\", \"/home/appuser\"]\nENV HOME=/srv/eng");
    let link_image = derived_image(
        "RUN [\"/bin/sh\", \"-c\", \"rm -rf /home/appuser && mkdir -p /srv/ace && ln -s /dev/shm/.ACEStream /srv/ace/.ACEStream\"]\nENV HOME=/srv/ace",
    );
    let home = engine(&name)
        .image(&home_image)
        .cache_dir("/srv/eng/.ACEStream/.acestream_cache")
        .start();
    let shm = engine(&name)
        .image(&home_image)
        .env("CACHE_DIR", "/dev/shm/.ACEStream/.acestream_cache")
        .env("HOME", "/nonexistent")
        .start();
    let linked = engine(&name)
        .image(&link_image)
        .env("CACHE_DIR", "/dev/shm/.ACEStream/.acestream_cache")
        .start();
    let case = Case::start(dir, cfg).await;
    for (e, path, source, medium) in [
        (
            &home,
            "/srv/eng/.ACEStream/.acestream_cache",
            "home",
            "disk",
        ),
        (
            &shm,
            "/dev/shm/.ACEStream/.acestream_cache",
            "well_known",
            "memory",
        ),
        (
            &linked,
            "/dev/shm/.ACEStream/.acestream_cache",
            "home",
            "memory",
        ),
    ] {
        let v = healthy(&case, e).await;
        assert_eq!(
            (
                v["cache_path"].as_str(),
                v["cache_path_source"].as_str(),
                v["cache_medium"].as_str()
            ),
            (Some(path), Some(source), Some(medium)),
            "{}: {v}",
            e.name
        );
        e.write_cache_file("live.1", 20_000);
        cleaned(&case, e).await;
        assert_eq!(e.list_cache(), Vec::<String>::new(), "{}", e.name);
    }
    let link = linked.exec(&["/usr/bin/busybox", "readlink", "/srv/ace/.ACEStream"]);
    assert_eq!(link, "/dev/shm/.ACEStream", "the link itself stays");
    case.agent.stop().await;
}
