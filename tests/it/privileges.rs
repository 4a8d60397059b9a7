//! The packaged unit's privileges, for real: the agent runs as an unprivileged user in the
//! docker group (as `packaging/acestream-agent.service` runs it), once with exactly the
//! capabilities the unit grants and once with none. With them it cleans engine caches from the
//! host (`/proc/<pid>/root`, no exec: an engine whose `du` and shell hang is cleaned at once);
//! without them it says so once in its log and cleans through `docker exec` instead.

use crate::common;

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const UNIT: &str = include_str!("../../packaging/acestream-agent.service");
const NOBODY: u32 = 65534;

/// The capabilities of `key=` in the unit (`CAP_SYS_PTRACE` → `sys_ptrace`, setpriv's names).
fn unit_caps(key: &str) -> Vec<String> {
    let line = UNIT
        .lines()
        .find(|l| l.starts_with(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}= line"));
    line[key.len() + 1..]
        .split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("odd capability {c:?} in {line:?}"))
                .to_ascii_lowercase()
        })
        .collect()
}

/// `setpriv` arguments: uid/gid nobody, the Docker socket's group, no new privileges, and
/// exactly `caps` (inheritable, ambient and bounding set).
fn setpriv(caps: &[String]) -> Vec<String> {
    let docker_gid = std::fs::metadata("/var/run/docker.sock")
        .expect("the Docker socket")
        .gid();
    let set: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        "setpriv".into(),
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        format!("--groups={docker_gid}"),
        "--no-new-privs".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        "--".into(),
    ]
}

struct Unprivileged {
    _child: Running,
    addr: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start_as_nobody(case: &str, caps: &[String]) -> Unprivileged {
    let dir = tempfile::tempdir().unwrap();
    // The state directory belongs to the service's user, as systemd's StateDirectory= makes it.
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let log = dir.path().join("agent.log");
    let port = free_port();
    let mut env = case_env(case, port, &dir.path().join("state.redb"));
    env.extend([
        ("ACESTREAM_AGENT_CLEANUP__INTERVAL", "off".to_string()),
        ("ACESTREAM_AGENT_CLEANUP__EXEC_TIMEOUT", "5s".to_string()),
    ]);
    let wrapper = setpriv(caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let child = agent_command_via(&wrapper, dir.path(), &env, &log)
        .spawn()
        .expect("setpriv (util-linux) runs the agent");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    eventually(Duration::from_secs(10), "the agent up", || async {
        try_http_get(addr, "/healthz").await
    })
    .await;
    Unprivileged {
        _child: Running(child),
        addr,
        log,
        _dir: dir,
    }
}

fn engine_for(case: &str, hang: bool) -> TestEngine {
    let mut b = TestEngine::builder()
        .name_prefix("priv")
        .label(CASE_LABEL, case);
    if hang {
        b = b.env("HANG_DU", "1");
    }
    b.start()
}

/// Writes root-owned files (the container's user) into the cache: deleting them needs more
/// than the agent user's own permissions.
fn fill(engine: &TestEngine) -> u64 {
    engine.write_cache_file("a.chunk", 200_000);
    engine.write_cache_file("sub/b.chunk", 100_000);
    300_000
}

async fn cleanup(agent: &Unprivileged, engine: &TestEngine) -> Value {
    eventually(Duration::from_secs(10), "the engine listed", || async {
        let (status, body) = try_http_get(agent.addr, &format!("/engines/{}", engine.id)).await?;
        (status == 200).then_some(()).ok_or(body)
    })
    .await;
    let (status, body) = http_post(
        agent.addr,
        &format!("/engines/{}/cleanup", engine.id),
        "",
        &[],
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(status, 200, "{v}");
    v
}

fn log_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// An engine (its `du` and shell hanging with `hang`) with root-owned files in its cache, an
/// agent as nobody with `caps`, one manual cleanup: it must succeed and empty the cache.
/// Returns the agent's log and its cache operations by method, (host, exec).
async fn cleaned_by_nobody(prefix: &str, hang: bool, caps: &[String]) -> (String, (u64, u64)) {
    let case = unique_name(prefix);
    let engine = engine_for(&case, hang);
    engine.wait_http_ready().await;
    let written = fill(&engine);
    let agent = start_as_nobody(&case, caps).await;
    let record = cleanup(&agent, &engine).await;
    let log = log_text(&agent.log);
    assert_eq!(record["success"], true, "{record}\n{log}");
    assert!(
        record["freed_bytes"].as_u64() >= Some(written),
        "{record}\n{log}"
    );
    assert_eq!(engine.list_cache(), Vec::<String>::new(), "{log}");
    (log, cache_operations(agent.addr).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_units_capabilities_caches_are_cleaned_from_the_host() {
    let caps = unit_caps("AmbientCapabilities");
    assert_eq!(
        caps,
        unit_caps("CapabilityBoundingSet"),
        "bounding = ambient"
    );
    // Its du and shell hang: only the host path can clean it within the 5 s exec timeout.
    let (log, (host, exec)) = cleaned_by_nobody("priv-caps", true, &caps).await;
    assert!(!log.contains("Cannot reach"), "{log}");
    assert!(host >= 1, "the cleanup counted as host: {host}");
    assert_eq!(exec, 0, "no exec at all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_capabilities_the_agent_says_so_and_cleans_through_exec() {
    let (log, (host, exec)) = cleaned_by_nobody("priv-none", false, &[]).await;
    // Operators see the fallback on /metrics too (every exec costs dockerd CPU).
    assert_eq!(host, 0, "nothing reached from the host");
    assert!(exec >= 1, "the cleanup counted as exec: {exec}");
    let said = lines_with(&log, "Cannot reach this engine's cache from the host");
    assert_eq!(said.len(), 1, "said once: {log}");
    assert!(said[0].contains("/root: Permission denied"), "{}", said[0]);
}

/// Without the capabilities, the engine's argv is readable in the host's /proc but its root is
/// not: the argument files it names are read through `docker exec`, so a port and a cache
/// named only there are still the engine's (a client on that port is its stream; an idle
/// engine is healthy there and cleaned at that path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_capabilities_argument_files_are_read_through_exec() {
    let case = unique_name("priv-argfile");
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        conf.path(),
        "--http-port=6879\n--cache-dir\n/srv/argcache\n",
    )
    .unwrap();
    std::fs::set_permissions(
        conf.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let engine = TestEngine::builder()
        .name_prefix("priv-argfile")
        .label(CASE_LABEL, &case)
        .publish(false)
        .docker_arg("-v")
        .docker_arg(&format!("{}:/ace.conf:ro", conf.path().display()))
        .args(&["@/ace.conf"])
        .cache_dir("/srv/argcache")
        .start();
    let agent = start_as_nobody(&case, &[]).await;
    let v = eventually(Duration::from_secs(15), "healthy on 6879", || async {
        let (status, body) = try_http_get(agent.addr, &format!("/engines/{}", engine.id)).await?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        (status == 200 && v["health_status"] == "healthy")
            .then_some(v.clone())
            .ok_or(format!("{v}"))
    })
    .await;
    assert_eq!(v["port"], 6879, "{v}");
    assert_eq!(v["cache_path"], "/srv/argcache", "{v}");
    engine.write_cache_file("live.1", 30_000);
    let record = cleanup(&agent, &engine).await;
    assert!(record["freed_bytes"].as_u64() >= Some(30_000), "{record}");
    assert_eq!(engine.list_cache(), Vec::<String>::new());
}
