//! Heal (README "Stuck engines"): an engine whose status API stops answering while its process
//! and port stay up (the fake engine's `/tmp/hang` switches) is restarted through Docker after
//! `heal.after`, with a doubling back-off, and quarantined after `heal.max_restarts` restarts
//! within `heal.window`; a person can still ask for a restart. Never: a busy engine, one never
//! healthy since its start, one labelled to be left alone; never two at once. What heal counted
//! survives `kill -9`.
//!
//! The tests that read the agent's log or kill it run the real binary; the others run the
//! agent in-process. Times are short (`heal.after` 2 s, a probe a second that times out after
//! one) so a whole quarantine takes about twenty seconds.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use acestream_agent::config::Config;
use chrono::{DateTime, Utc};
use common::*;
use serde_json::Value;

const AFTER: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(60);

/// Heal's keys for these tests, as the environment of a child agent.
fn heal_env(case: &str, port: u16, store: &Path) -> Vec<(&'static str, String)> {
    let mut env = case_env(case, port, store);
    env.extend([
        ("ACESTREAM_AGENT_CLEANUP__INTERVAL", "off".to_string()),
        ("ACESTREAM_AGENT_HEALTH__INTERVAL", "1s".to_string()),
        ("ACESTREAM_AGENT_HEALTH__TIMEOUT", "1s".to_string()),
        ("ACESTREAM_AGENT_ACTIVITY__INTERVAL", "200ms".to_string()),
        ("ACESTREAM_AGENT_HEAL__AFTER", "2s".to_string()),
        ("ACESTREAM_AGENT_HEAL__MAX_RESTARTS", "2".to_string()),
        ("ACESTREAM_AGENT_HEAL__STOP_TIMEOUT", "1s".to_string()),
    ]);
    env
}

/// The same for an in-process agent.
fn heal_config(case: &str, store: &Path) -> Config {
    let mut cfg = case_config(case, store);
    cfg.health.interval = Duration::from_secs(1);
    cfg.health.timeout = Duration::from_secs(1);
    cfg.heal.after = AFTER;
    cfg.heal.max_restarts = 2;
    cfg.heal.stop_timeout = Duration::from_secs(1);
    cfg
}

/// The agent binary for `case`, its store and log in `dir`, on a free port.
struct Child {
    addr: SocketAddr,
    log: std::path::PathBuf,
    proc: Running,
}

impl Child {
    fn start(case: &str, dir: &Path, name: &str) -> Child {
        let port = free_port();
        let log = dir.join(format!("{name}.log"));
        let env = heal_env(case, port, &dir.join("state.redb"));
        let proc = Running(
            agent_command(dir, &env, &log)
                .spawn()
                .expect("start the agent binary"),
        );
        Child {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            proc,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(mut self) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        let rc = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.proc.0),
            rustix::process::Signal::KILL,
        )
        .map_or(-1, |()| 0);
        assert_eq!(rc, 0, "kill -9");
        let _ = self.proc.0.wait();
    }
}

/// When Docker last started the container.
fn started_at(id: &str) -> String {
    docker_cli(&["inspect", "-f", "{{.State.StartedAt}}", id])
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not an RFC 3339 time: {v}"))
}

fn secs(from: &Value, to: &Value) -> f64 {
    (time(to) - time(from)).as_seconds_f64()
}

/// `GET /engines/{id}/heals`, newest first.
async fn heals(addr: SocketAddr, id: &str) -> Vec<Value> {
    let (status, v) = http_get_json(addr, &format!("/engines/{id}/heals")).await;
    assert_eq!(status, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

/// The value of one engine's series of a metric family (`trigger` for the counter).
async fn engine_metric(addr: SocketAddr, family: &str, id: &str, extra: &str) -> Option<f64> {
    let (_, text) = try_http_get(addr, "/metrics").await.ok()?;
    let id12 = &id[..12];
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| l.contains(&format!("container_id=\"{id12}\"")) && l.contains(extra))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits until the engine has had `n` more health checks, asserting `each` on every reading
/// meanwhile: a window of the agent's own time, not a fixed sleep.
async fn over_health_checks(
    addr: SocketAddr,
    id: &str,
    n: usize,
    each: impl Fn(&Value) -> Result<(), String>,
) {
    let seen: std::sync::Mutex<Vec<Value>> = Default::default();
    eventually(WAIT, &format!("{n} more health checks"), || async {
        let (status, body) = try_http_get(addr, &format!("/engines/{id}")).await?;
        let e: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(body);
        }
        if let Err(why) = each(&e) {
            panic!("{why}: {e}");
        }
        let mut seen = seen.lock().unwrap();
        let at = e["last_health_check"].clone();
        if !seen.contains(&at) {
            seen.push(at);
        }
        (seen.len() > n).then_some(()).ok_or(format!("{seen:?}"))
    })
    .await;
}

/// An engine of a new case and the agent binary over it (its store and log in the returned
/// directory), once the engine answered.
async fn engine_and_agent(prefix: &str) -> (String, TestEngine, tempfile::TempDir, Child) {
    let case = unique_name(prefix);
    let engine = case_engine(&case, prefix).start();
    let dir = tempfile::tempdir().unwrap();
    let agent = Child::start(&case, dir.path(), "agent");
    wait_engine(agent.addr, &engine.id, WAIT, "healthy", |e| {
        e["health_status"] == "healthy"
    })
    .await;
    (case, engine, dir, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_engine_is_restarted_once_and_answers_again() {
    let (_case, engine, _dir, agent) = engine_and_agent("heal-once").await;
    let addr = agent.addr;
    let before = started_at(&engine.id);
    engine.exec(&["touch", "/tmp/hang-until-restart"]);
    let e = wait_engine(addr, &engine.id, WAIT, "restarted and healthy again", |e| {
        e["restarts_total"] == 1 && e["health_status"] == "healthy"
    })
    .await;
    assert_eq!(e["heal_state"], "ok", "{e}");
    assert_eq!(e["unhealthy_since"], Value::Null, "{e}");
    let after = started_at(&engine.id);
    assert_ne!(before, after, "Docker started the container again");

    let h = heals(addr, &engine.id).await;
    assert_eq!(h.len(), 1, "{h:?}");
    let r = &h[0];
    assert_eq!(r["trigger"], "unhealthy", "{r}");
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["container_name"], engine.name.as_str(), "{r}");
    assert_eq!(r["error"], Value::Null, "{r}");
    assert!(
        secs(&r["unhealthy_since"], &r["started_at"]) >= AFTER.as_secs_f64(),
        "restarted before heal.after: {r}"
    );
    assert_eq!(e["last_restart"], r["finished_at"], "{e}");
    assert_eq!(
        engine_metric(
            addr,
            "acestream_engine_restarts_total",
            &engine.id,
            "trigger=\"unhealthy\""
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        engine_metric(
            addr,
            "acestream_engine_last_restart_timestamp_seconds",
            &engine.id,
            ""
        )
        .await,
        Some(time(&r["finished_at"]).timestamp_micros() as f64 / 1e6)
    );
    assert_eq!(
        engine_metric(addr, "acestream_engine_quarantined", &engine.id, "").await,
        Some(0.0)
    );

    // Answering again, it is left alone: more than twice heal.after of checks, no restart.
    over_health_checks(addr, &engine.id, 5, |e| {
        (e["restarts_total"] == 1 && e["health_status"] == "healthy")
            .then_some(())
            .ok_or("restarted again, or unhealthy".into())
    })
    .await;
    assert_eq!(started_at(&engine.id), after);

    let log = agent.log();
    let id12 = &engine.id[..12];
    let warned = lines_with(&log, "has not answered its status API for");
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("WARN"), "{}", warned[0]);
    assert!(
        warned[0].contains(&format!("Engine {id12} ({}) has not answered", engine.name)),
        "{}",
        warned[0]
    );
    assert!(
        warned[0].contains("; restarting it (restart 1 within 1h)"),
        "{}",
        warned[0]
    );
    let healthy = lines_with(&log, "is healthy again after its restart");
    assert_eq!(healthy.len(), 1, "{log}");
    assert!(healthy[0].contains("INFO"), "{}", healthy[0]);
    assert!(
        healthy[0].contains(&format!("Engine {id12} is healthy again after its restart")),
        "{}",
        healthy[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_stuck_after_every_restart_backs_off_then_is_quarantined_until_a_person_heals_it()
{
    let (_case, engine, _dir, agent) = engine_and_agent("heal-quar").await;
    let addr = agent.addr;
    // Hangs again after every restart.
    engine.exec(&["touch", "/tmp/hang"]);
    let e = wait_engine(addr, &engine.id, WAIT, "quarantined", |e| {
        e["heal_state"] == "quarantined"
    })
    .await;
    assert_eq!(e["restarts_total"], 2, "{e}");
    let h = heals(addr, &engine.id).await;
    assert_eq!(h.len(), 2, "{h:?}");
    let (second, first) = (&h[0], &h[1]);
    for r in &h {
        assert_eq!(
            (&r["trigger"], &r["success"]),
            (&"unhealthy".into(), &true.into())
        );
    }
    // The wait doubles: heal.after before the first, twice that before the second, each
    // counted from the first failed probe since the engine last answered or was restarted.
    let wait1 = secs(&first["unhealthy_since"], &first["started_at"]);
    let wait2 = secs(&second["unhealthy_since"], &second["started_at"]);
    assert!(wait1 >= AFTER.as_secs_f64(), "{wait1} s: {first}");
    assert!(wait2 >= 2.0 * AFTER.as_secs_f64(), "{wait2} s: {second}");
    assert!(
        time(&second["unhealthy_since"]) >= time(&first["finished_at"]),
        "{h:?}"
    );
    assert_eq!(
        engine_metric(addr, "acestream_engine_quarantined", &engine.id, "").await,
        Some(1.0)
    );
    let quarantined_at = started_at(&engine.id);

    // Quarantined: no restart over more than the next back-off (4 x heal.after).
    over_health_checks(addr, &engine.id, 10, |e| {
        (e["restarts_total"] == 2 && e["heal_state"] == "quarantined")
            .then_some(())
            .ok_or("restarted in quarantine".into())
    })
    .await;
    assert_eq!(started_at(&engine.id), quarantined_at);
    let log = agent.log();
    let said = lines_with(&log, "and is still stuck; quarantined");
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains("ERROR"), "{}", said[0]);
    assert!(
        said[0].contains(&format!(
            "Engine {} restarted 2 times within 1h and is still stuck; quarantined until it is healthy or restarted by hand",
            &engine.id[..12]
        )),
        "{}",
        said[0]
    );
    let warned = lines_with(&log, "has not answered its status API for");
    assert_eq!(warned.len(), 2, "{log}");
    assert!(warned[1].contains("(restart 2 within 1h)"), "{}", warned[1]);

    // The alert fires in a real Prometheus, for this engine.
    let prom_dir = tempfile::tempdir().unwrap();
    let rules = common::prom::rules_for_tests("AcestreamEngineQuarantined", "1s", &[]);
    let prom = common::prom::start_with_rules(prom_dir.path(), &[addr], &rules).await;
    let firing = common::prom::wait_firing(prom.addr, "AcestreamEngineQuarantined", WAIT).await;
    assert_eq!(firing.len(), 1, "{firing:?}");
    let alert = &firing[0];
    assert_eq!(alert["metric"]["container_id"], &engine.id[..12], "{alert}");
    assert_eq!(alert["metric"]["container_name"], engine.name.as_str());

    // A person asks: restarted once more, still quarantined (it still hangs).
    let (status, body) = http_post(addr, &format!("/engines/{}/heal", engine.id), "", &[]).await;
    assert_eq!(status, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&r["trigger"], &r["success"]),
        (&"manual".into(), &true.into())
    );
    assert_ne!(started_at(&engine.id), quarantined_at);
    let e = wait_engine(addr, &engine.id, WAIT, "three restarts", |e| {
        e["restarts_total"] == 3
    })
    .await;
    assert_eq!(e["heal_state"], "quarantined", "{e}");
    let h = heals(addr, &engine.id).await;
    assert_eq!(h.len(), 3);
    assert_eq!(h[0]["trigger"], "manual");
    assert_eq!(
        engine_metric(
            addr,
            "acestream_engine_restarts_total",
            &engine.id,
            "trigger=\"manual\""
        )
        .await,
        Some(1.0)
    );
    // Answering again ends the quarantine.
    engine.exec(&["rm", "/tmp/hang"]);
    let e = wait_engine(addr, &engine.id, WAIT, "out of quarantine", |e| {
        e["health_status"] == "healthy" && e["heal_state"] == "ok"
    })
    .await;
    assert_eq!(e["restarts_total"], 3, "{e}");
}

/// Engines heal must leave alone, beside one it restarts in the same time (so the wait was
/// long enough for heal to act): one with a client connected (its API hung), one never healthy
/// (probed on a wrong port), one with the orchestrator's label, one with `acestream.heal=false`,
/// one `docker pause`d (frozen on purpose: a restart would undo that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_never_healthy_and_labelled_engines_are_never_restarted() {
    let agent = TestAgent::start("heal-never", "127.0.0.1:0", heal_config).await;
    let addr = agent.addr();
    let case = agent.case.clone();
    let control = case_engine(&case, "heal-ctl").start();
    let busy = case_engine(&case, "heal-busy").start();
    let never = case_engine(&case, "heal-never")
        .label("acestream.http_port", "6999")
        .start();
    let orchestrated = case_engine(&case, "heal-orch")
        .label("orchestrator.managed", "acestream")
        .start();
    let opted_out = case_engine(&case, "heal-optout")
        .label("acestream.heal", "false")
        .start();
    let paused = case_engine(&case, "heal-paused").start();
    for e in [&control, &busy, &orchestrated, &opted_out, &paused] {
        agent.wait_healthy(e).await;
    }
    wait_engine(addr, &never.id, WAIT, "unhealthy", |e| {
        e["health_status"] == "unhealthy"
    })
    .await;
    let client = busy.stream_client();
    wait_engine(addr, &busy.id, WAIT, "its client seen", |e| {
        e["streams"].as_array().is_some_and(|s| !s.is_empty())
    })
    .await;
    let left_alone = [&busy, &never, &orchestrated, &opted_out, &paused];
    let started: Vec<String> = left_alone.iter().map(|e| started_at(&e.id)).collect();
    for e in [&control, &busy, &orchestrated, &opted_out] {
        e.exec(&["touch", "/tmp/hang-until-restart"]);
    }
    docker_cli(&["pause", &paused.id]);
    wait_engine(
        addr,
        &control.id,
        WAIT,
        "the control engine restarted",
        |e| e["restarts_total"] == 1 && e["health_status"] == "healthy",
    )
    .await;
    // Every one of them has failed for well over heal.after (and the never-healthy one all
    // along): twice the wait the control engine needed.
    for e in &left_alone {
        wait_engine(addr, &e.id, WAIT, "failing for 3 x heal.after", |v| {
            v["unhealthy_since"].is_string()
                && (Utc::now() - time(&v["unhealthy_since"])).as_seconds_f64()
                    > 3.0 * AFTER.as_secs_f64()
        })
        .await;
    }
    for (e, (before, state)) in left_alone
        .iter()
        .zip(started.iter().zip(["ok", "ok", "skipped", "skipped"]))
    {
        let v = wait_engine(addr, &e.id, WAIT, "listed", |_| true).await;
        assert_eq!(v["restarts_total"], 0, "{v}");
        assert_eq!(v["heal_state"], state, "{v}");
        assert_eq!(heals(addr, &e.id).await, Vec::<Value>::new(), "{}", e.name);
        assert_eq!(&started_at(&e.id), before, "{} was restarted", e.name);
    }
    assert_eq!(
        docker_cli(&["inspect", "-f", "{{.State.Status}}", &paused.id]),
        "paused"
    );
    let (status, body) = http_post(addr, &format!("/engines/{}/heal", paused.id), "", &[]).await;
    assert_eq!(status, 409, "a manual heal of a paused engine: {body}");
    assert!(body.contains("paused"), "{body}");
    docker_cli(&["unpause", &paused.id]);
    wait_engine(addr, &paused.id, WAIT, "answering once unpaused", |v| {
        v["health_status"] == "healthy"
    })
    .await;
    // The client of the busy engine still receives its stream.
    let got = client.bytes_read();
    eventually(WAIT, "more stream bytes", || async {
        (client.bytes_read() > got)
            .then_some(())
            .ok_or(client.bytes_read())
    })
    .await;
    agent.stop().await;
}

/// Two engines stuck at once are restarted one after the other: each restart takes its whole
/// stop grace (the engines ignore SIGTERM), so two at once would overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stuck_engines_are_restarted_one_after_the_other() {
    let agent = TestAgent::start("heal-two", "127.0.0.1:0", heal_config).await;
    let addr = agent.addr();
    let engines: Vec<TestEngine> = ["heal-two-a", "heal-two-b"]
        .into_iter()
        .map(|p| case_engine(&agent.case, p).env("IGNORE_TERM", "1").start())
        .collect();
    for e in &engines {
        agent.wait_healthy(e).await;
    }
    for e in &engines {
        e.exec(&["touch", "/tmp/hang-until-restart"]);
    }
    let mut records = vec![];
    for e in &engines {
        wait_engine(addr, &e.id, WAIT, "restarted and healthy", |v| {
            v["restarts_total"] == 1 && v["health_status"] == "healthy"
        })
        .await;
        let h = heals(addr, &e.id).await;
        assert_eq!(h.len(), 1, "{h:?}");
        records.push(h[0].clone());
    }
    for r in &records {
        assert!(
            r["duration_seconds"].as_f64() >= Some(1.0),
            "a restart of an engine that ignores SIGTERM takes its grace: {r}"
        );
    }
    records.sort_by_key(|r| time(&r["started_at"]));
    assert!(
        time(&records[0]["finished_at"]) <= time(&records[1]["started_at"]),
        "restarts overlapped: {records:?}"
    );
    agent.stop().await;
}

/// What heal counted is in the store: after a `kill -9` between restarts the next restart
/// still waits its doubled back-off and is the second of the window; after one in quarantine
/// the engine stays quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_back_off_and_quarantine_survive_kill_9() {
    let (case, engine, dir, first) = engine_and_agent("heal-kill9").await;
    engine.exec(&["touch", "/tmp/hang"]);
    wait_engine(first.addr, &engine.id, WAIT, "restarted once", |e| {
        e["restarts_total"] == 1
    })
    .await;
    first.kill9();

    let second = Child::start(&case, dir.path(), "second");
    // Its first answer is from the store: the second restart is seconds of back-off away.
    let e = wait_engine(second.addr, &engine.id, WAIT, "listed", |_| true).await;
    assert_eq!(e["restarts_total"], 1, "from the store: {e}");
    let h = wait_engine(second.addr, &engine.id, WAIT, "restarted twice", |e| {
        e["restarts_total"] == 2
    })
    .await;
    assert_eq!(h["restarts_total"], 2);
    let h = heals(second.addr, &engine.id).await;
    assert_eq!(h.len(), 2, "{h:?}");
    let wait2 = secs(&h[0]["unhealthy_since"], &h[0]["started_at"]);
    assert!(
        wait2 >= 2.0 * AFTER.as_secs_f64(),
        "the back-off was lost: {wait2} s: {}",
        h[0]
    );
    let log = second.log();
    let warned = lines_with(&log, "has not answered its status API for");
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("(restart 2 within 1h)"), "{}", warned[0]);
    wait_engine(second.addr, &engine.id, WAIT, "quarantined", |e| {
        e["heal_state"] == "quarantined"
    })
    .await;
    second.kill9();

    let third = Child::start(&case, dir.path(), "third");
    let quarantined_at = started_at(&engine.id);
    wait_engine(third.addr, &engine.id, WAIT, "listed again", |e| {
        e["heal_state"] == "quarantined" && e["last_health_check"].is_string()
    })
    .await;
    assert_eq!(
        engine_metric(third.addr, "acestream_engine_quarantined", &engine.id, "").await,
        Some(1.0)
    );
    over_health_checks(third.addr, &engine.id, 8, |e| {
        (e["restarts_total"] == 2 && e["heal_state"] == "quarantined")
            .then_some(())
            .ok_or("restarted in quarantine after kill -9".into())
    })
    .await;
    assert_eq!(started_at(&engine.id), quarantined_at);
    assert_eq!(heals(third.addr, &engine.id).await.len(), 2);
}

/// `POST /engines/{id}/heal` answers what it did not do: 404 for an engine the agent does not
/// know, 409 for one with a client; with `heal.enabled = false` every engine is `off` and the
/// request is 409 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_heal_is_refused_for_unknown_busy_engines_and_with_heal_off() {
    let agent = TestAgent::start("heal-manual", "127.0.0.1:0", heal_config).await;
    let addr = agent.addr();
    let busy = agent.engine("heal-manual").await;
    agent.wait_healthy(&busy).await;
    let (status, body) = http_post(addr, "/engines/0123456789ab/heal", "", &[]).await;
    assert_eq!(status, 404, "{body}");
    let _client = busy.stream_client();
    wait_engine(addr, &busy.id, WAIT, "its client seen", |e| {
        e["streams"].as_array().is_some_and(|s| !s.is_empty())
    })
    .await;
    let before = started_at(&busy.id);
    let (status, body) = http_post(addr, &format!("/engines/{}/heal", busy.id), "", &[]).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("has active streams"), "{body}");
    assert_eq!(started_at(&busy.id), before);
    assert!(heals(addr, &busy.id).await.is_empty());
    let case = agent.case.clone();
    agent.stop().await;

    let off = TestAgent::start_for(case, "127.0.0.1:0", |case, store| {
        let mut cfg = heal_config(case, store);
        cfg.heal.enabled = false;
        cfg
    })
    .await;
    let e = wait_engine(off.addr(), &busy.id, WAIT, "heal off", |e| {
        e["heal_state"] == "off"
    })
    .await;
    assert_eq!(e["restarts_total"], 0, "{e}");
    let (status, body) =
        http_post(off.addr(), &format!("/engines/{}/heal", busy.id), "", &[]).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("heal is turned off"), "{body}");
    assert_eq!(started_at(&busy.id), before);
    off.stop().await;
}

/// A restart Docker refuses is a failed heal record with Docker's reason: an engine whose bind
/// mount's source is gone is stopped by Docker and cannot be started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_docker_refuses_is_a_failed_record_with_its_reason() {
    let agent = TestAgent::start("heal-refused", "127.0.0.1:0", heal_config).await;
    let addr = agent.addr();
    let source = tempfile::tempdir().unwrap();
    let engine = case_engine(&agent.case, "heal-refused")
        .docker_arg("--mount")
        .docker_arg(&format!(
            "type=bind,source={},destination=/data",
            source.path().display()
        ))
        .start();
    agent.wait_healthy(&engine).await;
    drop(source);
    let (status, body) = http_post(addr, &format!("/engines/{}/heal", engine.id), "", &[]).await;
    assert_eq!(status, 500, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&r["trigger"], &r["success"]),
        (&"manual".into(), &false.into())
    );
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("docker restart:") && error.contains("Cannot restart container"),
        "Docker's reason: {r}"
    );
    assert_eq!(
        docker_cli(&["inspect", "-f", "{{.State.Running}}", &engine.id]),
        "false"
    );
    agent.stop().await;
}

/// With `heal.stalled = true`, an engine that answers but whose every stream is stalled (its
/// statistics say no peers, no download) is restarted, with its streams, after the stall and
/// `heal.after`: a record with trigger `stalled`, its own warning line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_heal_stalled_an_engine_whose_streams_are_all_stalled_is_restarted() {
    let case = unique_name("heal-stalled");
    let engine = case_engine(&case, "heal-stalled").start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut env = heal_env(&case, port, &dir.path().join("state.redb"));
    env.extend([
        ("ACESTREAM_AGENT_HEAL__STALLED", "true".to_string()),
        (
            "ACESTREAM_AGENT_STREAMS__STAT_INTERVAL",
            "500ms".to_string(),
        ),
        ("ACESTREAM_AGENT_STREAMS__STALL_AFTER", "2s".to_string()),
    ]);
    let log = dir.path().join("agent.log");
    let _agent = Running(
        agent_command(dir.path(), &env, &log)
            .spawn()
            .expect("start the agent binary"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_engine(addr, &engine.id, WAIT, "healthy", |e| {
        e["health_status"] == "healthy"
    })
    .await;
    let before = started_at(&engine.id);
    engine.exec(&[
        "sh",
        "-c",
        r#"mkdir -p /tmp/stat && echo '{"response": {"status": "dl", "peers": 0, "speed_down": 0, "speed_up": 0}, "error": null}' > /tmp/stat/s1"#,
    ]);
    let body = serde_json::json!({
        "container_id": engine.id,
        "engine": {"host": "127.0.0.1", "port": 1},
        "stream": {"key_type": "infohash", "key": "k"},
        "session": {"playback_session_id": "s1", "stat_url": "http://e/ace/stat/k/s1",
                    "command_url": "http://e/ace/cmd/k/s1", "is_live": 1},
        "labels": {"stream_id": "k|s1"}
    });
    let (status, reply) = http_post(addr, "/events/stream_started", &body.to_string(), &[]).await;
    assert_eq!(status, 200, "{reply}");
    let e = wait_engine(addr, &engine.id, WAIT, "restarted", |e| {
        e["restarts_total"] == 1
    })
    .await;
    assert_ne!(started_at(&engine.id), before);
    let h = heals(addr, &engine.id).await;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(
        (&h[0]["trigger"], &h[0]["success"]),
        (&"stalled".into(), &true.into())
    );
    // Its stream died with the container; answering, it is left alone.
    let e2 = wait_engine(addr, &engine.id, WAIT, "idle and healthy", |e| {
        e["streams"] == serde_json::json!([]) && e["health_status"] == "healthy"
    })
    .await;
    assert_eq!(e2["heal_state"], "ok", "{e2}");
    assert_eq!(
        engine_metric(
            addr,
            "acestream_engine_restarts_total",
            &engine.id,
            "trigger=\"stalled\""
        )
        .await,
        Some(1.0),
        "{e}"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let warned = lines_with(&text, "has had every stream stalled for");
    assert_eq!(warned.len(), 1, "{text}");
    assert!(
        warned[0].contains(&format!("Engine {} (", &engine.id[..12]))
            && warned[0].contains("; restarting it (restart 1 within 1h)"),
        "{}",
        warned[0]
    );
}
