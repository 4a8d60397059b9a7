//! Cache janitor against real containers (docs/safety.md#cleanups): what a cleanup measures,
//! deletes, keeps and records, for each trigger the janitor owns (sweep, manual), and what it must
//! never touch: busy engines, invalid or symlinked cache paths, anything outside the cache
//! directory.
//!
//! Every test runs its own agent in-process, restricted to engines carrying a label unique to
//! the test, so tests running in parallel never see each other's engines.

use crate::common;

use std::time::{Duration, Instant};

use acestream_agent::config::CacheMethod;
use common::*;
use serde_json::Value;

/// Slack per file (and per directory) when comparing a measured size with what was written:
/// `du` counts whole blocks or directory entries, never less than the data.
const BLOCK: u64 = 4096;

impl Case {
    /// `POST /engines/{key}/cleanup` from loopback (no token configured): status and JSON.
    async fn manual_cleanup(&self, key: &str) -> (u16, Value) {
        let (status, body) =
            http_post(self.agent.addr, &format!("/engines/{key}/cleanup"), "", &[]).await;
        let v = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("POST /engines/{key}/cleanup: not JSON ({e}): {body}"));
        (status, v)
    }
}

fn u64_of(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not an unsigned integer in {v}"))
}

/// Everything under `dir` in the container (files, directories, links), relative, sorted.
fn entries(engine: &TestEngine, dir: &str) -> Vec<String> {
    let out = engine.exec(&["/usr/bin/busybox", "find", dir, "-mindepth", "1"]);
    let prefix = format!("{dir}/");
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix(&prefix).unwrap_or(l).to_string())
        .collect();
    v.sort();
    v
}

fn is_dir(engine: &TestEngine, path: &str) -> bool {
    engine
        .try_exec(&["/usr/bin/busybox", "test", "-d", path])
        .is_ok()
}

fn read_file(engine: &TestEngine, path: &str) -> String {
    engine.exec(&["/usr/bin/busybox", "cat", path])
}

/// Number of processes in the container whose command line contains `needle` (`docker top`).
fn processes_matching(engine: &TestEngine, needle: &str) -> usize {
    let out = std::process::Command::new("docker")
        .args(["top", &engine.id, "-o", "pid,args"])
        .output()
        .expect("docker top");
    assert!(
        out.status.success(),
        "docker top {}: {}",
        engine.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| l.contains(needle))
        .count()
}

#[tokio::test]
async fn sweep_records_sizes_that_match_what_was_written() {
    let (name, dir, mut cfg) = new_case("jan-sweep-sizes");
    // Long enough that the first sweep can be caught before the second (which would record
    // the emptied directory as the latest size).
    cfg.cleanup.interval = Some(Duration::from_secs(2));
    let engine = case_engine(&name, "jan").start();
    engine.wait_http_ready().await;
    let files: &[(&str, u64)] = &[
        ("a.chunk", 300_000),
        ("b.chunk", 123_457),
        (".hidden", 50_000),
        ("..double-dot", 7_000),
        ("sub/c.chunk", 200_000),
        ("sub/.d", 10_001),
        ("sub/deeper/e", 1),
    ];
    let written = write_files(&engine, files);
    // The cache dir, sub and sub/deeper count as entries too.
    let slack = BLOCK * (files.len() as u64 + 3);
    assert_eq!(engine.list_cache().len(), files.len());

    let case = Case::start(dir, cfg).await;
    let e = case
        .wait_engine(
            &engine.id,
            Duration::from_secs(10),
            "the first sweep",
            |v| v["cleanups_total"].as_u64() >= Some(1),
        )
        .await;
    assert_eq!(e["cleanups_total"], 1, "{e}");
    assert_eq!(e["cleanup_failures_total"], 0, "{e}");
    assert_eq!(e["last_cleanup_error"], Value::Null, "{e}");
    assert!(e["last_cache_cleanup"].is_string(), "{e}");
    let size = u64_of(&e, "cache_size_bytes");
    println!(
        "written {written} bytes in {} files; measured {size}",
        files.len()
    );
    assert!(
        size.abs_diff(written) <= slack,
        "cache_size_bytes {size} is not within {slack} of the {written} bytes written"
    );
    let freed = u64_of(&e, "cache_freed_bytes_total");
    // Freed = before - what is left, and what is left is the empty directory itself.
    assert!(
        freed <= size && freed + 2 * BLOCK >= written,
        "cache_freed_bytes_total {freed} implausible for {written} written, {size} measured"
    );

    assert!(
        is_dir(&engine, &engine.cache_dir),
        "the cache directory itself must stay"
    );
    assert_eq!(entries(&engine, &engine.cache_dir), Vec::<String>::new());
    assert_eq!(engine.list_cache(), Vec::<String>::new());

    let history = case.history(&engine.id).await;
    let first = history.last().expect("the sweep's record in the history");
    assert_eq!(first["trigger"], "sweep", "{first}");
    assert_eq!(first["success"], true, "{first}");
    assert_eq!(first["container_id"], engine.id.as_str(), "{first}");
    assert_eq!(first["size_before_bytes"], size, "{first}");
    assert_eq!(first["freed_bytes"], freed, "{first}");
    case.agent.stop().await;
}

/// Writes `(path, bytes)` files into the cache; returns the bytes written.
fn write_files(engine: &TestEngine, files: &[(&str, u64)]) -> u64 {
    for (f, n) in files {
        engine.write_cache_file(f, *n);
    }
    files.iter().map(|(_, n)| n).sum()
}

/// Fills the cache with the same tree every time (sizes, dotfiles, subdirectories).
fn fill_tree(engine: &TestEngine) -> u64 {
    write_files(
        engine,
        &[
            ("a.chunk", 300_000),
            (".hidden", 50_000),
            ("sub/c.chunk", 200_000),
            ("sub/deeper/e", 1),
        ],
    )
}

/// `cleanup.method = "exec"` (the container's own `du -sb` and `rm`) and the default host path
/// (`/proc/<pid>/root`) record the very same sizes for the same tree, and both leave the
/// directory empty and in place.
#[tokio::test]
async fn host_path_and_exec_record_the_same_sizes() {
    let (name, dir, mut cfg) = new_case("jan-methods");
    let engine = case_engine(&name, "jan").start();
    engine.wait_http_ready().await;
    let mut records = Vec::new();
    // Each run gets its own store; the case's first one is not used.
    drop(dir);
    for method in [CacheMethod::Exec, CacheMethod::Auto] {
        let dir = tempfile::tempdir().unwrap();
        cfg.store.path = dir.path().join("state.redb");
        cfg.cleanup.method = method;
        let written = fill_tree(&engine);
        let case = Case::start(dir, cfg.clone()).await;
        case.wait_engine(&engine.name, Duration::from_secs(5), "discovery", |_| true)
            .await;
        let (status, record) = case.manual_cleanup(&engine.name).await;
        assert_eq!(status, 200, "{method:?}: {record}");
        assert_eq!(record["success"], true, "{method:?}: {record}");
        let before = u64_of(&record, "size_before_bytes");
        assert!(
            before > written && before - written <= 4 * BLOCK,
            "{method:?}: {before} measured for {written} written"
        );
        assert_eq!(engine.list_cache(), Vec::<String>::new(), "{method:?}");
        assert!(is_dir(&engine, &engine.cache_dir), "{method:?}");
        records.push(record);
        case.agent.stop().await;
    }
    for key in ["size_before_bytes", "freed_bytes", "remaining_bytes"] {
        assert_eq!(
            records[0][key], records[1][key],
            "{key}: exec {} vs host {}",
            records[0], records[1]
        );
    }
}

/// The host path needs no exec: an engine whose `du` and shell hang (HANG_DU) would time out
/// under `cleanup.method = "exec"`, and is cleaned at once by the default method.
#[tokio::test]
async fn host_path_cleans_where_an_exec_would_hang() {
    let (name, dir, mut cfg) = new_case("jan-host-nohang");
    cfg.cleanup.exec_timeout = Duration::from_secs(3);
    let engine = case_engine(&name, "jan").env("HANG_DU", "1").start();
    engine.wait_http_ready().await;
    let written = fill_tree(&engine);
    let case = Case::start(dir, cfg).await;
    case.wait_engine(&engine.name, Duration::from_secs(5), "discovery", |_| true)
        .await;
    let (status, record) = case.manual_cleanup(&engine.name).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["success"], true, "{record}");
    assert_eq!(record["error"], Value::Null, "{record}");
    assert!(u64_of(&record, "freed_bytes") >= written, "{record}");
    assert!(
        record["duration_seconds"].as_f64() < Some(3.0),
        "not through a hung exec: {record}"
    );
    assert_eq!(engine.list_cache(), Vec::<String>::new());
    case.agent.stop().await;
}

/// Volumes mounted *inside* the cache directory (a directory and a single file): the host
/// path runs in another mount namespace, where unlinking a mount point would detach it from the
/// container. They are left alone (contents, and the mounts themselves), everything else is
/// deleted, and the cleanup says why it is incomplete.
#[tokio::test]
async fn mounts_inside_the_cache_are_left_in_place() {
    let (name, dir, cfg) = new_case("jan-mounts");
    let host = tempfile::tempdir().unwrap();
    let (cache, inner, conf) = (
        host.path().join("cache"),
        host.path().join("other-volume"),
        host.path().join("engine.conf"),
    );
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(inner.join("keep"), b"another volume's data").unwrap();
    std::fs::write(&conf, b"setting=1").unwrap();
    let v = |src: &std::path::Path, dst: &str| format!("{}:{dst}", src.display());
    let engine = case_engine(&name, "jan")
        .docker_arg("-v")
        .docker_arg(&v(&cache, DEFAULT_CACHE_DIR))
        .docker_arg("-v")
        .docker_arg(&v(&inner, &format!("{DEFAULT_CACHE_DIR}/inner")))
        .docker_arg("-v")
        .docker_arg(&v(&conf, &format!("{DEFAULT_CACHE_DIR}/engine.conf")))
        .start();
    engine.wait_http_ready().await;
    engine.write_cache_file("chunk", 100_000);
    let mounts = || {
        engine
            .exec(&["/usr/bin/busybox", "cat", "/proc/1/mountinfo"])
            .lines()
            .filter(|l| l.contains(DEFAULT_CACHE_DIR))
            .count()
    };
    assert_eq!(mounts(), 3);
    let case = Case::start(dir, cfg).await;
    case.wait_engine(&engine.name, Duration::from_secs(5), "discovery", |_| true)
        .await;
    let (status, record) = case.manual_cleanup(&engine.name).await;
    assert_eq!(status, 500, "{record}");
    assert_eq!(record["success"], false, "{record}");
    let error = record["error"].as_str().unwrap_or("");
    assert!(
        error.contains("a mount point inside the cache directory"),
        "{record}"
    );
    assert_eq!(mounts(), 3, "the container keeps all its mounts");
    assert_eq!(
        std::fs::read(inner.join("keep")).unwrap(),
        b"another volume's data"
    );
    assert_eq!(std::fs::read(&conf).unwrap(), b"setting=1");
    assert!(!cache.join("chunk").exists(), "the rest is deleted");
    case.agent.stop().await;
}

#[tokio::test]
async fn missing_cache_directory_is_nothing_to_clean() {
    let (name, dir, cfg) = new_case("jan-missing");
    let engine = case_engine(&name, "jan").start();
    engine.wait_http_ready().await;
    engine.exec(&["/usr/bin/busybox", "rm", "-rf", &engine.cache_dir]);
    assert!(!is_dir(&engine, &engine.cache_dir));
    let case = Case::start(dir, cfg).await;
    case.wait_engine(&engine.name, Duration::from_secs(5), "discovery", |_| true)
        .await;

    // Nothing to clean is not a cleanup (docs/cache-paths.md#nothing-to-clean): the answer says so,
    // nothing is kept.
    let (status, record) = case.manual_cleanup(&engine.name).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["success"], true, "{record}");
    assert_eq!(record["nothing_to_clean"], true, "{record}");
    assert_eq!(record["size_before_bytes"], 0, "{record}");
    assert_eq!(record["freed_bytes"], 0, "{record}");
    assert_eq!(record["error"], Value::Null, "{record}");
    assert!(
        !is_dir(&engine, &engine.cache_dir),
        "a missing directory is not created"
    );

    let e = case.engine_json(&engine.name).await;
    assert_eq!(e["cache_current_bytes"], 0, "{e}");
    assert_eq!(e["cache_size_bytes"], Value::Null, "{e}");
    assert_eq!(e["last_cache_cleanup"], Value::Null, "{e}");
    assert_eq!(e["cleanups_total"], 0, "{e}");
    assert_eq!(e["cleanup_failures_total"], 0, "{e}");
    assert_eq!(e["last_cleanup_error"], Value::Null, "{e}");
    assert_eq!(case.history(&engine.name).await, Vec::<Value>::new());
    case.agent.stop().await;
}

#[tokio::test]
async fn busy_engine_cache_is_untouched() {
    let (name, dir, mut cfg) = new_case("jan-busy");
    cfg.cleanup.interval = Some(Duration::from_secs(1));
    cfg.activity.interval = Duration::from_millis(100);
    // Busy by the connection probe (a viewer reading), by the event API, and one idle.
    let viewed = case_engine(&name, "jan").start();
    let evented = case_engine(&name, "jan").start();
    let idle = case_engine(&name, "jan").start();
    for e in [&viewed, &evented, &idle] {
        e.wait_http_ready().await;
    }
    let client = viewed.stream_client();
    eventually(
        Duration::from_secs(5),
        "a connected stream client",
        || async {
            (viewed.established_connections() == 1 && client.bytes_read() > 0).then_some(())
        },
    )
    .await;

    let case = Case::start(dir, cfg).await;
    case.wait_engine(
        &viewed.id,
        Duration::from_secs(5),
        "the viewer's stream",
        |v| v["streams"].as_array().is_some_and(|s| s.len() == 1),
    )
    .await;
    let body = serde_json::json!({
        "engine": {"host": "127.0.0.1", "port": evented.host_port},
        "stream": {"key_type": "content_id", "key": "abc"},
        "session": {"playback_session_id": "s1", "stat_url": "http://x/ace/stat/a/b",
                    "command_url": "http://x/cmd", "is_live": 1},
        "labels": {"stream_id": "abc|b"}
    });
    let (status, reply) = http_post(
        case.agent.addr,
        "/events/stream_started",
        &body.to_string(),
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    // A sweep that began before the engines were known busy may still be deleting; once it is
    // over, every later sweep knows.
    after_sweeps_within(&case.agent, 1, Duration::from_secs(10)).await;
    let counted: Vec<u64> = {
        let mut v = vec![];
        for e in [&viewed, &evented] {
            e.write_cache_file("marker", 100_000);
            v.push(u64_of(&case.engine_json(&e.id).await, "cleanups_total"));
        }
        v
    };
    let before = viewed.list_cache();
    let idle_seen = u64_of(&case.engine_json(&idle.id).await, "cleanups_total");
    // What a short stream leaves behind (the sweep does not look at a cache it found empty
    // unless the engine has streamed since).
    idle.write_cache_file("marker", 100_000);
    stream_visit(case.agent.addr, &idle.id).await;

    // A sweep that cleaned the idle engine, and two more sweeps after it.
    case.wait_engine(
        &idle.id,
        Duration::from_secs(10),
        "a sweep that cleans the idle engine",
        |v| v["cleanups_total"].as_u64() >= Some(idle_seen + 1),
    )
    .await;
    assert_eq!(idle.list_cache(), Vec::<String>::new());
    after_sweeps_within(&case.agent, 2, Duration::from_secs(10)).await;

    let after = viewed.list_cache();
    for f in &before {
        assert!(
            after.contains(f),
            "{f} of the busy engine was deleted; left: {after:?}"
        );
    }
    assert!(
        after.len() > before.len(),
        "the busy engine's cache stopped growing: {after:?}"
    );
    assert_eq!(evented.list_cache(), vec!["marker".to_string()]);
    for (e, n) in [&viewed, &evented].into_iter().zip(counted) {
        let v = case.engine_json(&e.id).await;
        assert_eq!(v["cleanups_total"], n, "{v}");
        assert_eq!(v["cleanup_failures_total"], 0, "{v}");
        assert_eq!(v["streams"].as_array().map(Vec::len), Some(1), "{v}");
    }

    for e in [&viewed, &evented] {
        let (status, body) = case.manual_cleanup(&e.name).await;
        assert_eq!(status, 409, "{body}");
    }
    let later = viewed.list_cache();
    for f in &after {
        assert!(later.contains(f), "{f} deleted by a refused manual cleanup");
    }
    assert_eq!(evented.list_cache(), vec!["marker".to_string()]);
    assert!(!client.is_closed());
    drop(client);
    case.agent.stop().await;
}

#[tokio::test]
async fn hung_exec_times_out_and_is_recorded_without_blocking_others() {
    let (name, dir, mut cfg) = new_case("jan-hung");
    let exec_timeout = Duration::from_secs(2);
    cfg.cleanup.interval = Some(Duration::from_secs(1));
    cfg.cleanup.exec_timeout = exec_timeout;
    cfg.cleanup.method = CacheMethod::Exec;
    // One at a time: the hung engine holds the only slot, the other must still get it.
    cfg.cleanup.concurrency = 1;
    let hung = case_engine(&name, "jan").env("HANG_DU", "1").start();
    let normal = case_engine(&name, "jan").start();
    hung.wait_http_ready().await;
    normal.wait_http_ready().await;
    hung.write_cache_file("kept", 10_000);
    normal.write_cache_file("gone", 10_000);
    assert_eq!(processes_matching(&hung, "2147483647"), 0);

    let t0 = Instant::now();
    let case = Case::start(dir, cfg).await;
    let e = case
        .wait_engine(
            &hung.id,
            Duration::from_secs(10),
            "the hung engine's failure",
            |v| v["cleanup_failures_total"].as_u64() >= Some(1),
        )
        .await;
    let failed_after = t0.elapsed();
    println!("hung engine's failure recorded {failed_after:?} after the agent started");
    let err = e["last_cleanup_error"].as_str().unwrap_or_default();
    assert!(err.contains("timed out"), "last_cleanup_error: {e}");
    assert_eq!(e["cleanups_total"], 0, "{e}");
    // First sweep at 1 s, then the exec timeout; the rest is slack for a loaded machine.
    assert!(
        failed_after <= Duration::from_secs(1) + exec_timeout + Duration::from_secs(3),
        "failure recorded only after {failed_after:?}"
    );
    let history = case.history(&hung.id).await;
    let rec = history.last().expect("the failed cleanup's record");
    assert_eq!(rec["success"], false, "{rec}");
    let took = rec["duration_seconds"].as_f64().unwrap();
    assert!(
        took >= exec_timeout.as_secs_f64() - 0.1 && took <= exec_timeout.as_secs_f64() + 2.0,
        "the hung cleanup took {took} s, exec_timeout is {exec_timeout:?}"
    );

    case.wait_engine(
        &normal.id,
        Duration::from_secs(10),
        "the normal engine cleaned",
        |v| v["cleanups_total"].as_u64() >= Some(1),
    )
    .await;
    assert_eq!(normal.list_cache(), Vec::<String>::new());

    // Later sweeps: no second exec piles up next to the hung one. (The normal engine's empty
    // cache is nothing to clean: those sweeps leave it no record.)
    after_sweeps_within(&case.agent, 3, Duration::from_secs(10)).await;
    assert_eq!(case.history(&normal.id).await.len(), 1);
    assert_eq!(
        processes_matching(&hung, "2147483647"),
        1,
        "execs piled up in the hung engine"
    );
    assert_eq!(hung.list_cache(), vec!["kept".to_string()]);
    case.agent.stop().await;
}

#[tokio::test]
async fn min_bytes_skips_small_caches() {
    let (name, dir, mut cfg) = new_case("jan-min-bytes");
    cfg.cleanup.interval = Some(Duration::from_secs(1));
    cfg.cleanup.min_bytes = 1024 * 1024;
    let small = case_engine(&name, "jan").start();
    let large = case_engine(&name, "jan").start();
    small.wait_http_ready().await;
    large.wait_http_ready().await;
    small.write_cache_file("small", 100_000);
    large.write_cache_file("large", 2 * 1024 * 1024);
    let case = Case::start(dir, cfg).await;

    case.wait_engine(
        &large.id,
        Duration::from_secs(10),
        "the large cache cleaned",
        |v| v["cleanups_total"].as_u64() >= Some(1),
    )
    .await;
    assert_eq!(large.list_cache(), Vec::<String>::new());
    // The small one was measured by that sweep, and left alone by the next ones too.
    let e = case
        .wait_engine(
            &small.id,
            Duration::from_secs(5),
            "the small cache measured",
            |v| v["cache_current_bytes"].is_u64(),
        )
        .await;
    assert!(
        u64_of(&e, "cache_current_bytes").abs_diff(100_000) <= 2 * BLOCK,
        "{e}"
    );
    after_sweeps_within(&case.agent, 2, Duration::from_secs(5)).await;
    assert_eq!(small.list_cache(), vec!["small".to_string()]);
    let e = case.engine_json(&small.id).await;
    assert_eq!(e["cleanups_total"], 0, "{e}");
    assert_eq!(e["cleanup_failures_total"], 0, "{e}");
    assert_eq!(e["last_cache_cleanup"], Value::Null, "{e}");
    assert_eq!(e["cache_freed_bytes_total"], 0, "{e}");
    case.agent.stop().await;
}

#[tokio::test]
async fn invalid_cache_path_label_is_reported_and_never_cleaned() {
    let (name, dir, mut cfg) = new_case("jan-bad-label");
    cfg.cleanup.interval = Some(Duration::from_secs(1));
    let system = case_engine(&name, "jan")
        .label("acestream.cache_path", "/etc")
        .start();
    let relative = case_engine(&name, "jan")
        .label(
            "acestream.cache_path",
            "home/appuser/.ACEStream/.acestream_cache",
        )
        .start();
    system.wait_http_ready().await;
    relative.wait_http_ready().await;
    for e in [&system, &relative] {
        e.write_cache_file("kept", 10_000);
    }
    let etc_before = entries(&system, "/etc");
    assert!(!etc_before.is_empty());
    let case = Case::start(dir, cfg).await;

    for e in [&system, &relative] {
        let v = case
            .wait_engine(&e.id, Duration::from_secs(5), "the label's error", |v| {
                v["last_cleanup_error"].is_string()
            })
            .await;
        let err = v["last_cleanup_error"].as_str().unwrap();
        assert!(err.contains("acestream.cache_path"), "{err}");
        println!("{}: {err}", e.name);
    }
    after_sweeps_within(&case.agent, 2, Duration::from_secs(5)).await;
    let (status, body) = case.manual_cleanup(&system.name).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = case.manual_cleanup(&relative.name).await;
    assert_eq!(status, 409, "{body}");

    for e in [&system, &relative] {
        assert_eq!(e.list_cache(), vec!["kept".to_string()], "{}", e.name);
        let v = case.engine_json(&e.id).await;
        assert_eq!(v["cleanups_total"], 0, "{v}");
        assert_eq!(v["last_cache_cleanup"], Value::Null, "{v}");
        assert!(case.history(&e.id).await.is_empty());
    }
    assert_eq!(entries(&system, "/etc"), etc_before);
    case.agent.stop().await;
}

#[tokio::test]
async fn cache_path_label_overrides_the_default() {
    let (name, dir, mut cfg) = new_case("jan-label-path");
    cfg.cleanup.interval = Some(Duration::from_secs(1));
    let custom = "/data/ace/cache";
    // The fake engine creates and fills CACHE_DIR, as a real image with another home would.
    let engine = case_engine(&name, "jan")
        .label("acestream.cache_path", custom)
        .env("CACHE_DIR", custom)
        .start();
    engine.wait_http_ready().await;
    assert_eq!(engine.cache_dir, custom);
    engine.write_cache_file("there", 30_000);
    engine.write_cache_file("sub/.there", 30_000);
    engine.exec(&[
        "/usr/bin/busybox",
        "sh",
        "-c",
        "mkdir -p \"$1\" && echo keep > \"$1/default-file\"",
        "sh",
        DEFAULT_CACHE_DIR,
    ]);
    let case = Case::start(dir, cfg).await;

    let e = case
        .wait_engine(&engine.id, Duration::from_secs(10), "a cleanup", |v| {
            v["cleanups_total"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(e["cache_path"], custom, "{e}");
    let history = case.history(&engine.id).await;
    let first = history.last().unwrap();
    assert!(
        u64_of(first, "size_before_bytes").abs_diff(60_000) <= 4 * BLOCK,
        "{first}"
    );
    assert!(is_dir(&engine, custom));
    assert_eq!(entries(&engine, custom), Vec::<String>::new());
    assert_eq!(
        read_file(&engine, &format!("{DEFAULT_CACHE_DIR}/default-file")),
        "keep"
    );
    case.agent.stop().await;
}

/// A cache path through a symlink (vstavrinov/acestream-engine: `~/.ACEStream ->
/// /dev/shm/.ACEStream`) is resolved once, inside the container's root, shown resolved, and
/// that directory is cleaned; the link and everything beside the target stay.
#[tokio::test]
async fn a_symlinked_cache_path_is_resolved_inside_the_container_and_cleaned() {
    let (name, dir, cfg) = new_case("jan-symlink-path");
    let engine = case_engine(&name, "jan").start();
    engine.wait_http_ready().await;
    engine.exec(&[
        "/usr/bin/busybox",
        "sh",
        "-c",
        r#"mkdir -p /data/ace-cache && echo keep > /data/keep && head -c 50000 /dev/urandom > /data/ace-cache/live.1 && rm -rf "$1" && ln -s ../../../data/ace-cache "$1""#,
        "sh",
        &engine.cache_dir,
    ]);
    let case = Case::start(dir, cfg).await;
    let e = case
        .wait_engine(&engine.name, Duration::from_secs(5), "discovery", |_| true)
        .await;
    assert_eq!(e["cache_path"], "/data/ace-cache", "{e}");
    assert_eq!(e["cache_path_source"], "config", "{e}");
    assert_eq!(e["last_cleanup_error"], Value::Null, "{e}");
    let (status, record) = case.manual_cleanup(&engine.name).await;
    assert_eq!(status, 200, "{record}");
    assert!(record["freed_bytes"].as_u64() >= Some(50_000), "{record}");
    assert_eq!(entries(&engine, "/data/ace-cache"), Vec::<String>::new());
    assert_eq!(read_file(&engine, "/data/keep"), "keep");
    let link = engine.exec(&["/usr/bin/busybox", "readlink", &engine.cache_dir]);
    assert_eq!(link, "../../../data/ace-cache", "the link itself stays");
    case.agent.stop().await;
}

/// A link to a system directory is refused by what it resolves to, with the reason, and nothing
/// is ever deleted; a cache directory swapped for a symlink after discovery is refused by the
/// cleanup itself, and nothing outside is touched.
#[tokio::test]
async fn cache_dir_symlinks_to_system_dirs_or_swapped_in_later_are_refused() {
    let (name, dir, mut cfg) = new_case("jan-symlink-dir");
    cfg.cleanup.interval = Some(Duration::from_secs(1));
    let to_etc = case_engine(&name, "jan").start();
    let swapped = case_engine(&name, "jan").start();
    let normal = case_engine(&name, "jan").start();
    for e in [&to_etc, &swapped, &normal] {
        e.wait_http_ready().await;
    }
    to_etc.exec(&[
        "/usr/bin/busybox",
        "sh",
        "-c",
        "echo keep > /etc/canary && rm -rf \"$1\" && ln -s /etc \"$1\"",
        "sh",
        &to_etc.cache_dir,
    ]);
    normal.write_cache_file("gone", 10_000);
    let case = Case::start(dir, cfg).await;
    let e = case
        .wait_engine(&to_etc.id, Duration::from_secs(10), "the refusal", |v| {
            v["last_cleanup_error"].is_string()
        })
        .await;
    let err = e["last_cleanup_error"].as_str().unwrap_or_default();
    println!("cache dir linked to /etc: {err}");
    assert!(err.contains("resolves to /etc"), "{e}");
    assert!(err.contains("top-level system directory"), "{e}");
    case.wait_engine(&swapped.id, Duration::from_secs(5), "discovery", |v| {
        v["cache_path"] == DEFAULT_CACHE_DIR
    })
    .await;
    swapped.exec(&[
        "/usr/bin/busybox",
        "sh",
        "-c",
        "mkdir -p /outside && echo keep > /outside/canary && rm -rf \"$1\" && ln -s /outside \"$1\"",
        "sh",
        &swapped.cache_dir,
    ]);
    // A re-read of the same process (a rename is one) must not follow the link that now
    // stands where the cache directory was: the path discovered is kept, and refused.
    let renamed = format!("{}-renamed", swapped.name);
    docker_cli(&["rename", &swapped.name, &renamed]);
    let e = case
        .wait_engine(&swapped.id, Duration::from_secs(10), "the re-read", |v| {
            v["container_name"] == renamed.as_str()
        })
        .await;
    assert_eq!(e["cache_path"], DEFAULT_CACHE_DIR, "{e}");
    stream_visit(case.agent.addr, &swapped.id).await;
    let e = case
        .wait_engine(&swapped.id, Duration::from_secs(10), "the refusal", |v| {
            v["cleanup_failures_total"].as_u64() >= Some(1)
        })
        .await;
    let err = e["last_cleanup_error"].as_str().unwrap_or_default();
    println!("cache dir swapped for a symlink: {err}");
    assert!(err.contains("symlink"), "{e}");
    assert_eq!(e["cleanups_total"], 0, "{e}");
    case.wait_engine(
        &normal.id,
        Duration::from_secs(10),
        "the other engine cleaned",
        |v| v["cleanups_total"].as_u64() >= Some(1),
    )
    .await;
    assert_eq!(normal.list_cache(), Vec::<String>::new());
    let e = case.engine_json(&to_etc.id).await;
    assert_eq!(
        (
            e["cleanups_total"].as_u64(),
            e["cleanup_failures_total"].as_u64()
        ),
        (Some(0), Some(0)),
        "never tried: {e}"
    );
    assert_eq!(case.history(&to_etc.id).await, Vec::<Value>::new());
    assert_eq!(read_file(&to_etc, "/etc/canary"), "keep");
    assert_eq!(read_file(&swapped, "/outside/canary"), "keep");
    assert_eq!(entries(&swapped, "/outside"), vec!["canary".to_string()]);
    let link = swapped.exec(&["/usr/bin/busybox", "readlink", &swapped.cache_dir]);
    assert_eq!(link, "/outside");
    case.agent.stop().await;
}

#[tokio::test]
async fn symlinks_inside_the_cache_are_removed_not_followed() {
    let (name, dir, cfg) = new_case("jan-symlink-inside");
    let engine = case_engine(&name, "jan").start();
    engine.wait_http_ready().await;
    engine.write_cache_file("data", 10_000);
    engine.exec(&[
        "/usr/bin/busybox",
        "sh",
        "-c",
        "mkdir -p /outside/dir && echo keep > /outside/canary && echo keep > /outside/dir/canary \
         && ln -s /outside/dir \"$1/dirlink\" && ln -s /outside/canary \"$1/.filelink\" \
         && mkdir \"$1/sub\" && ln -s / \"$1/sub/root\"",
        "sh",
        &engine.cache_dir,
    ]);
    let case = Case::start(dir, cfg).await;
    case.wait_engine(&engine.name, Duration::from_secs(5), "discovery", |_| true)
        .await;

    let (status, record) = case.manual_cleanup(&engine.name).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(entries(&engine, &engine.cache_dir), Vec::<String>::new());
    assert_eq!(read_file(&engine, "/outside/canary"), "keep");
    assert_eq!(read_file(&engine, "/outside/dir/canary"), "keep");
    assert!(is_dir(&engine, "/etc"));
    case.agent.stop().await;
}

/// Live sizes (docs/cache-paths.md#live-sizes): every `cleanup.measure_interval` each engine is
/// measured, busy ones too, read-only: `cache_current_bytes` follows a cache that grows while it
/// streams, and nothing is cleaned.
#[tokio::test]
async fn live_sizes_follow_a_growing_cache_without_cleaning() {
    let (name, dir, mut cfg) = new_case("jan-measure");
    cfg.cleanup.measure_interval = Some(Duration::from_millis(500));
    let engine = case_engine(&name, "jan").start();
    engine.wait_http_ready().await;
    let case = Case::start(dir, cfg).await;
    case.wait_engine(&engine.name, Duration::from_secs(5), "discovery", |_| true)
        .await;
    let client = engine.stream_client();
    let first = case
        .wait_engine(
            &engine.name,
            Duration::from_secs(10),
            "a first live size while streaming",
            |e| {
                e["cache_current_bytes"]
                    .as_u64()
                    .is_some_and(|b| b > 64 * 1024)
            },
        )
        .await;
    let b1 = first["cache_current_bytes"].as_u64().unwrap();
    let later = case
        .wait_engine(
            &engine.name,
            Duration::from_secs(10),
            "a larger live size, measured while the stream is listed",
            // In one reading: under load the connection probe can miss the stream for a round,
            // so the size and the stream are judged together, not the stream at one instant.
            |e| {
                e["cache_current_bytes"]
                    .as_u64()
                    .is_some_and(|b| b >= b1 + 256 * 1024)
                    && e["streams"].as_array().is_some_and(|s| !s.is_empty())
            },
        )
        .await;
    assert!(client.bytes_read() > 0, "the client is still reading");
    // The gauge follows too (same name as the field).
    let series = format!(
        "acestream_engine_cache_current_bytes{{container_name=\"{}\",container_id=\"{}\"}} ",
        engine.name,
        &engine.id[..12]
    );
    let (_, metrics) = http_get(case.agent.addr, "/metrics").await;
    let gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
    assert!(
        gauge >= (b1 + 256 * 1024) as f64,
        "{series}{gauge}, first size {b1}"
    );
    assert_eq!(later["cleanups_total"], 0, "{later}");
    assert_eq!(later["last_cache_cleanup"], Value::Null, "{later}");
    assert!(later["cache_measured_at"].is_string(), "{later}");
    assert!(
        !later["streams"].as_array().unwrap().is_empty(),
        "measured while busy: {later}"
    );
    // The measurement never exceeds what is really there (the cache only grows).
    let now = engine.cache_du_k() * 1024;
    assert!(
        now >= later["cache_current_bytes"].as_u64().unwrap(),
        "du now {now} < measured {later}"
    );
    drop(client);
    case.agent.stop().await;
}
