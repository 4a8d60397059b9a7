//! The store across restarts (docs/architecture.md#store): what an engine has been through (last
//! cleanup, size, counters, history) and the streams proxies reported survive a clean restart and
//! `kill -9` in the middle of sweeps; a store that cannot be opened is refused by name and left as
//! it was.
//!
//! The first test runs the agent in-process; the others spawn the real binary, because
//! `kill -9` and exit codes only mean something for a process.

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use acestream_agent::config::Config;
use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn config(case: &str, store: &Path) -> Config {
    let mut cfg = case_config(case, store);
    cfg.cleanup.exec_timeout = Duration::from_secs(10);
    cfg
}

async fn get_ok(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get_json(addr, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http_post(
        addr,
        path,
        &body.to_string(),
        &[("content-type", "application/json")],
    )
    .await;
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("POST {path} (HTTP {status}) is not JSON ({e}): {text:?}"));
    (status, v)
}

/// Waits until the agent has listed Docker (`/readyz` 200) and lists every engine in `ids`.
async fn wait_listed(addr: SocketAddr, ids: &[&str]) {
    eventually(
        Duration::from_secs(10),
        "Docker listed and engines discovered",
        || async {
            let (ready, _) = try_http_get(addr, "/readyz").await?;
            let (status, body) = try_http_get(addr, "/engines").await?;
            let list: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let listed: Vec<&str> = list
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e["container_id"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            if ready == 200 && status == 200 && ids.iter().all(|id| listed.contains(id)) {
                Ok(())
            } else {
                Err(format!("readyz {ready}, listed {listed:?}"))
            }
        },
    )
    .await;
}

/// The fields a restart must keep, for comparing before and after.
fn kept(engine: &Value) -> Value {
    json!({
        "last_cache_cleanup": engine["last_cache_cleanup"],
        "cache_size_bytes": engine["cache_size_bytes"],
        "cleanups_total": engine["cleanups_total"],
        "cleanup_failures_total": engine["cleanup_failures_total"],
        "cache_freed_bytes_total": engine["cache_freed_bytes_total"],
        "first_seen": engine["first_seen"],
        "container_name": engine["container_name"],
    })
}

fn sigkill(child: &mut Running) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    // SAFETY: plain kill(2) on the pid of a child we spawned and have not reaped yet.
    let rc = rustix::process::kill_process(
        rustix::process::Pid::from_child(&child.0),
        rustix::process::Signal::KILL,
    )
    .map_or(-1, |()| 0);
    assert_eq!(rc, 0, "kill -9 failed");
    let status = child.0.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    status
}

/// Waits for a process to exit, up to `within`.
fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let end = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            panic!("the agent did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_history_survive_a_restart() {
    let case = unique_name("store-restart");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("state.redb");
    let e = TestEngine::builder()
        .name_prefix("store-restart")
        .label(CASE_LABEL, &case)
        .start();

    let a = start_agent(config(&case, &store)).await;
    wait_listed(a.addr, &[&e.id]).await;

    // Two manual cleanups, of different sizes.
    let mut records = vec![];
    for (file, bytes) in [("a.bin", 300 * 1024), ("b/c.bin", 700 * 1024)] {
        e.write_cache_file(file, bytes);
        let (status, rec) =
            post_json(a.addr, &format!("/engines/{}/cleanup", e.id), &json!({})).await;
        assert_eq!(status, 200, "{rec}");
        assert_eq!(rec["trigger"], "manual");
        assert!(
            rec["size_before_bytes"].as_u64().unwrap() >= bytes,
            "measured {rec}"
        );
        records.push(rec);
    }
    assert_eq!(
        e.list_cache(),
        Vec::<String>::new(),
        "both cleanups deleted"
    );
    let before = get_ok(a.addr, &format!("/engines/{}", e.id)).await;
    assert_eq!(before["cleanups_total"], 2);
    assert_eq!(
        before["cache_size_bytes"], records[1]["size_before_bytes"],
        "cache_size_bytes = size before the last cleanup"
    );
    let history_before = get_ok(a.addr, &format!("/engines/{}/cleanups", e.id)).await;
    assert_eq!(
        history_before,
        json!([records[1], records[0]]),
        "history newest first"
    );

    // A stream reported by the proxy (it does not know the container: address only).
    let started = json!({
        "engine": {"host": "127.0.0.1", "port": e.host_port},
        "stream": {"key_type": "content_id", "key": "feedface"},
        "session": {
            "playback_session_id": "sess-1",
            "stat_url": format!("http://127.0.0.1:{}/ace/stat/feedface/sess-1", e.host_port),
            "command_url": format!("http://127.0.0.1:{}/ace/cmd/feedface/sess-1", e.host_port),
            "is_live": 1
        },
        "labels": {"stream_id": "feedface|sess-1"}
    });
    let (status, stream) = post_json(a.addr, "/events/stream_started", &started).await;
    assert_eq!(status, 200, "{stream}");
    assert_eq!(stream["container_id"], e.id.as_str());
    let busy = get_ok(a.addr, &format!("/engines/{}", e.id)).await;
    assert_eq!(busy["streams"], json!(["feedface|sess-1"]));
    let before = kept(&before);
    a.stop().await;

    let b = start_agent(config(&case, &store)).await;
    // Right away, from the store (before discovery may have listed Docker) and again once
    // discovery has re-listed the container: the same engine, same state, still busy.
    for phase in ["from the store", "after discovery re-listed it"] {
        if phase != "from the store" {
            wait_listed(b.addr, &[&e.id]).await;
        }
        let after = get_ok(b.addr, &format!("/engines/{}", e.id)).await;
        assert_eq!(kept(&after), before, "engine state {phase}");
        assert_eq!(
            after["streams"],
            json!(["feedface|sess-1"]),
            "event stream still started {phase}"
        );
        let history = get_ok(b.addr, &format!("/engines/{}/cleanups", e.id)).await;
        assert_eq!(history, history_before, "cleanup history {phase}");
        let streams = get_ok(b.addr, "/streams?status=started").await;
        assert_eq!(streams, json!([stream]), "/streams {phase}");
    }
    // Busy means busy: a restart did not make it look idle to the janitor either.
    let (status, body) = post_json(b.addr, &format!("/engines/{}/cleanup", e.id), &json!({})).await;
    assert_eq!(
        status, 409,
        "cleanup of a busy engine after restart: {body}"
    );

    // The stream ends normally, through the restarted agent.
    let (status, body) = post_json(
        b.addr,
        "/events/stream_ended",
        &json!({"stream_id": "feedface|sess-1"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let idle = get_ok(b.addr, &format!("/engines/{}", e.id)).await;
    assert_eq!(idle["streams"], json!([]));
    let metrics = http_get(b.addr, "/metrics").await.1;
    let id12 = &e.id[..12];
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("acestream_cache_cleanups_total{")
                && l.contains(&format!("container_id=\"{id12}\""))
                && l.contains("trigger=\"manual\"")
        })
        .unwrap_or_else(|| panic!("no manual cleanups counter for {id12} in:\n{metrics}"));
    assert!(line.ends_with(" 2"), "counter from the store: {line}");
    b.stop().await;
}

/// Per engine: every cleanup record seen so far and the highest `cleanups_total` seen.
#[derive(Default, Clone, Debug)]
struct Seen {
    records: Vec<Value>,
    total: u64,
}

/// Reads every engine's history and counter from a running agent.
async fn observe(addr: SocketAddr, ids: &[String]) -> Result<BTreeMap<String, Seen>, String> {
    let mut out = BTreeMap::new();
    for id in ids {
        let (status, body) = try_http_get(addr, &format!("/engines/{id}/cleanups")).await?;
        if status != 200 {
            return Err(format!("cleanups of {id}: HTTP {status} {body}"));
        }
        let records: Vec<Value> = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let (status, body) = try_http_get(addr, &format!("/engines/{id}")).await?;
        if status != 200 {
            return Err(format!("engine {id}: HTTP {status} {body}"));
        }
        let engine: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let total = engine["cleanups_total"]
            .as_u64()
            .ok_or("no cleanups_total")?;
        out.insert(id.clone(), Seen { records, total });
    }
    Ok(out)
}

/// Asserts nothing seen before a kill is missing after it.
fn assert_kept(round: usize, before: &BTreeMap<String, Seen>, after: &BTreeMap<String, Seen>) {
    for (id, seen) in before {
        let now = &after[id];
        assert!(
            now.total >= seen.total,
            "round {round}: cleanups_total of {} went back from {} to {}",
            &id[..12],
            seen.total,
            now.total
        );
        for rec in &seen.records {
            assert!(
                now.records.contains(rec),
                "round {round}: record of {} lost after kill -9: {rec}",
                &id[..12]
            );
        }
    }
}

/// `kill -9` at random moments, 20 times: the agent sweeps every 300 ms over engines whose
/// caches refill all the time, and is killed a random 300-1000 ms after it answered (mostly
/// while a cleanup's exec is measuring and deleting, sometimes while its record is being
/// committed), or, every fourth round, right after a new record. Every restart must open the
/// file, show every record seen before the kill and counters that never went back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_sweep_loses_nothing_committed() {
    const ROUNDS: usize = 20;
    let case = unique_name("store-kill");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("state.redb");
    let log = dir.path().join("agent.log");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("random seed {seed}");
    let mut below = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };

    // Engines whose caches refill all the time, so every sweep has something to delete.
    let engines: Vec<TestEngine> = (0..3)
        .map(|_| {
            TestEngine::builder()
                .name_prefix("store-kill")
                .label(CASE_LABEL, &case)
                .start()
        })
        .collect();
    for e in &engines {
        let out = Command::new("docker")
            .args([
                "exec",
                "-d",
                &e.id,
                "/usr/bin/busybox",
                "sh",
                "-c",
                r#"i=0; while true; do i=$((i+1)); mkdir -p "$1"; head -c 32768 /dev/urandom > "$1/refill-$i" 2>/dev/null; usleep 50000; done"#,
                "sh",
                &e.cache_dir,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ids: Vec<String> = engines.iter().map(|e| e.id.clone()).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();

    let spawn = || {
        let port = free_port();
        let mut env = case_env(&case, port, &store);
        env.extend([
            ("ACESTREAM_AGENT_CLEANUP__INTERVAL", "300ms".to_string()),
            ("ACESTREAM_AGENT_ACTIVITY__INTERVAL", "1s".to_string()),
            // Through the exec, a cleanup is in flight for ~100 ms, which is what the kills aim
            // at; from the host it lasts a few ms and too few kills would land in one. What is
            // under test (records committed or not) is the same either way.
            ("ACESTREAM_AGENT_CLEANUP__METHOD", "exec".to_string()),
            // The orchestrator's lines come after the one exec (an empty cache must leave none); the
            // janitor's debug line marks where a cleanup begins.
            (
                "RUST_LOG",
                "info,acestream_agent::janitor=debug".to_string(),
            ),
        ]);
        let child = agent_command(dir.path(), &env, &log)
            .spawn()
            .expect("spawn the agent");
        (Running(child), SocketAddr::from(([127, 0, 0, 1], port)))
    };

    let mut seen: BTreeMap<String, Seen> =
        ids.iter().map(|id| (id.clone(), Seen::default())).collect();
    let (mut kills_in_exec, mut kills_committing) = (0, 0);
    let t0 = Instant::now();
    for round in 0..=ROUNDS {
        let log_start = std::fs::metadata(&log)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let (mut child, addr) = spawn();
        // The file opens, and everything seen before the last kill is there.
        eventually(
            Duration::from_secs(10),
            "the agent to answer /healthz",
            || async { try_http_get(addr, "/healthz").await },
        )
        .await;
        if round == 0 {
            wait_listed(addr, &id_refs).await;
        }
        let now = eventually(Duration::from_secs(10), "histories after restart", || {
            observe(addr, &ids)
        })
        .await;
        assert_kept(round, &seen, &now);
        seen = now;
        if round == ROUNDS {
            break;
        }
        // A random moment, then one more look (what it shows is committed: the API shows
        // only what the store has), then the kill a random few milliseconds later. The first
        // sweep starts `cleanup.interval` (300 ms) after start-up and is the one that cleans
        // (the refills come without a stream, so a later sweep takes the cache for empty
        // still), so the moment is drawn from 250-650 ms, mostly while that cleanup is in
        // flight or just after it. Every
        // fourth round instead waits for a new record, so that records are committed (and
        // then must survive) however slow the machine is.
        let before: u64 = seen.values().map(|s| s.total).sum();
        if round % 4 == 3 {
            eventually(Duration::from_secs(15), "a new cleanup record", || async {
                let now = observe(addr, &ids).await?;
                let total: u64 = now.values().map(|s| s.total).sum();
                (total > before)
                    .then_some(())
                    .ok_or_else(|| "no new cleanup yet".to_string())
            })
            .await;
        } else if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(250 + below(400))).await;
        } else {
            // Aimed: the moment this agent begins a cleanup (its debug line), then the kill
            // within the ~100-200 ms its exec takes, however late the first sweep comes on a
            // loaded machine.
            eventually(Duration::from_secs(10), "a cleanup beginning", || {
                let log = log.clone();
                async move {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    text.get(log_start..)
                        .is_some_and(|t| t.contains("cache cleanup starting"))
                        .then_some(())
                }
            })
            .await;
        }
        if round % 2 == 0 || round % 4 == 3 {
            let now = observe(addr, &ids).await.unwrap();
            assert_kept(round, &seen, &now);
            seen = now;
        }
        tokio::time::sleep(Duration::from_millis(below(40))).await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let text = text.get(log_start..).unwrap_or_default();
        let starts = text.matches("cache cleanup starting").count();
        let clearing = text.matches("Clearing AceStream cache").count();
        let dones = text.matches("Successfully cleared").count()
            + text.matches("Cache cleanup failed").count()
            + text.matches("nothing to clean").count()
            + text.matches("nothing deleted").count()
            + text.matches("not deleting").count();
        if starts > dones {
            if clearing > dones {
                kills_committing += 1;
            } else {
                kills_in_exec += 1;
            }
        }
        sigkill(&mut child);
    }
    let total_records: usize = seen.values().map(|s| s.records.len()).sum();
    println!(
        "{ROUNDS} kill -9 rounds in {:?}: {kills_in_exec} while a cleanup's exec was measuring and deleting, \
         {kills_committing} while its record was being committed; {total_records} cleanup \
         records kept across them",
        t0.elapsed()
    );
    assert!(
        kills_in_exec + kills_committing >= 3,
        "too few kills landed while a cleanup was in flight for the test to prove anything"
    );
    assert!(
        total_records >= ROUNDS / 4,
        "the sweeps must have produced records for the test to mean anything: {seen:?}"
    );
    for (id, s) in &seen {
        assert!(
            s.total >= s.records.len() as u64,
            "{}: cleanups_total {} below its history length {}",
            &id[..12],
            s.total,
            s.records.len()
        );
    }
}

/// Bytes that are not a redb file.
fn garbage() -> Vec<u8> {
    let mut bytes = b"this is not a redb database, just some bytes\n".repeat(100);
    bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    bytes
}

/// Runs the binary on `store` and returns (exit status, stderr).
fn run_on_store(dir: &Path, store: &Path) -> (ExitStatus, String) {
    let log = dir.join(format!(
        "{}.log",
        store.file_name().unwrap().to_string_lossy()
    ));
    let env = [
        ("ACESTREAM_AGENT_HTTP__LISTEN", "127.0.0.1:0".to_string()),
        ("ACESTREAM_AGENT_STORE__PATH", store.display().to_string()),
        (
            "ACESTREAM_AGENT_DISCOVERY__LABELS",
            format!("{CASE_LABEL}={}", unique_name("store-corrupt")),
        ),
    ];
    let mut child = agent_command(dir, &env, &log).spawn().unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    (status, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn corrupt_store_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();

    // Not a redb file at all.
    let garbage_path = dir.path().join("garbage.redb");
    std::fs::write(&garbage_path, garbage()).unwrap();

    // A real store, cut short: what a disk error or a bad copy leaves.
    let truncated_path = dir.path().join("truncated.redb");
    {
        let store = acestream_agent::store::Store::open(&truncated_path, 100).unwrap();
        drop(store);
    }
    let full = std::fs::read(&truncated_path).unwrap();
    std::fs::write(&truncated_path, &full[..full.len() / 2]).unwrap();

    for path in [&garbage_path, &truncated_path] {
        let bytes_before = std::fs::read(path).unwrap();
        let (status, stderr) = run_on_store(dir.path(), path);
        assert!(
            !status.success() && status.code().is_some(),
            "the agent must exit with an error on {}: {status:?}\n{stderr}",
            path.display()
        );
        assert!(
            stderr.contains(&path.display().to_string()),
            "stderr must name {}:\n{stderr}",
            path.display()
        );
        assert!(
            stderr.to_lowercase().contains("corrupt"),
            "stderr must say the store is corrupt:\n{stderr}"
        );
        assert_eq!(
            std::fs::read(path).unwrap(),
            bytes_before,
            "{} must be left untouched",
            path.display()
        );
        let leftovers: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "redb")
                    && p != &garbage_path
                    && p != &truncated_path
            })
            .collect();
        assert_eq!(
            leftovers,
            Vec::<PathBuf>::new(),
            "no replacement store created"
        );
    }
}
