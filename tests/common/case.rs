//! An in-process agent that sees only one test's engines, and the requests most tests make
//! of it. Test files add their own methods with further `impl Case` blocks.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use acestream_agent::config::Config;
use acestream_agent::Agent;
use serde_json::Value;
use tempfile::TempDir;

use super::{eventually, http_get_json, try_http_get, unique_name, TestEngine};

/// Label that ties engines to the one test (and agent) that owns them.
pub const CASE_LABEL: &str = "acestream-agent.test.case";

/// An agent that sees only this test's engines; its store lives in `_dir`.
pub struct Case {
    pub agent: Agent,
    _dir: TempDir,
}

/// A unique case name (the label value), its temp dir and its config: discovery limited to the
/// case label, a temp store, a fast activity probe, and nothing on a timer that the test does
/// not ask for (no sweep, no stream-end cleanup, no periodic measuring, no disk pressure).
pub fn new_case(prefix: &str) -> (String, TempDir, Config) {
    let name = unique_name(prefix);
    let dir = tempfile::tempdir().expect("temp dir for the case's store");
    let cfg = case_config(&name, &dir.path().join("state.redb"));
    (name, dir, cfg)
}

/// The config every in-process test agent starts from: it sees only the engines labelled
/// `CASE_LABEL=<case>`, keeps its store at `store`, probes connections every 200 ms and health
/// every second, and does nothing on a timer the test does not ask for (no sweep, no
/// stream-end cleanup, no periodic measuring, no disk pressure: the host's own disk may be
/// fuller than the default threshold).
pub fn case_config(case: &str, store: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.discovery.labels = vec![format!("{CASE_LABEL}={case}")
        .parse()
        .expect("a case label is a valid label match")];
    cfg.discovery.images = vec![];
    cfg.store.path = store.to_path_buf();
    cfg.activity.interval = Duration::from_millis(200);
    cfg.health.interval = Duration::from_secs(1);
    cfg.cleanup.interval = None;
    cfg.cleanup.idle_grace = None;
    cfg.cleanup.measure_interval = None;
    cfg.pressure.min_free = None;
    cfg
}

/// For tests whose streams come from the event API only: the connection probe runs once at
/// start (no engines yet) and not again during the test. A probe running concurrently with the
/// agent's own health checks can count a health-check connection as a stream for one interval,
/// which would make engines look busy at random.
pub fn events_only(cfg: &mut Config) {
    cfg.activity.interval = Duration::from_secs(600);
    cfg.health.interval = Duration::from_secs(1);
    cfg.health.timeout = Duration::from_secs(2);
}

/// An in-process agent with `cfg` on a free loopback port.
pub async fn start_agent(cfg: Config) -> Agent {
    start_agent_on(cfg, "127.0.0.1:0").await
}

/// An in-process agent with `cfg` listening on `bind`.
pub async fn start_agent_on(cfg: Config, bind: &str) -> Agent {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .unwrap_or_else(|e| panic!("bind the agent on {bind}: {e}"));
    Agent::start(cfg, listener).await.expect("the agent starts")
}

impl Case {
    pub async fn start(dir: TempDir, cfg: Config) -> Case {
        let agent = start_agent(cfg).await;
        Case { agent, _dir: dir }
    }

    /// `GET /engines/{key}`; panics unless 200.
    pub async fn engine_json(&self, key: &str) -> Value {
        let (status, v) = http_get_json(self.agent.addr, &format!("/engines/{key}")).await;
        assert_eq!(status, 200, "GET /engines/{key}: {v}");
        v
    }

    /// Polls `GET /engines/{key}` until `pred` holds; returns that engine JSON.
    pub async fn wait_engine(
        &self,
        key: &str,
        deadline: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_engine(self.agent.addr, key, deadline, what, pred).await
    }

    /// `GET /engines/{key}/cleanups`, newest first.
    pub async fn history(&self, key: &str) -> Vec<Value> {
        history(self.agent.addr, key).await
    }
}

/// Polls `GET /engines/{key}` of the agent at `addr` until `pred` holds; returns that engine.
pub async fn wait_engine(
    addr: SocketAddr,
    key: &str,
    deadline: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let pred = &pred;
    eventually(deadline, what, || async move {
        let (status, v) = try_http_get(addr, &format!("/engines/{key}")).await?;
        let v: Value = serde_json::from_str(&v).map_err(|e| format!("{e}: {v}"))?;
        if status == 200 && pred(&v) {
            Ok(v)
        } else {
            Err(format!("HTTP {status}: {v}"))
        }
    })
    .await
}

/// `GET /engines/{key}/cleanups` of the agent at `addr`, newest first.
pub async fn history(addr: SocketAddr, key: &str) -> Vec<Value> {
    let (status, v) = http_get_json(addr, &format!("/engines/{key}/cleanups")).await;
    assert_eq!(status, 200, "GET /engines/{key}/cleanups: {v}");
    v.as_array()
        .unwrap_or_else(|| panic!("cleanup history is not an array: {v}"))
        .clone()
}

/// A short stream on the engine `container_id`, through the event API: started, then ended.
/// What a test does after writing into a cache behind the agent's back, as a real stream
/// would: the sweep does not look again at a cache it found empty unless the engine has
/// streamed since (docs/cache-paths.md#nothing-to-clean).
pub async fn stream_visit(addr: SocketAddr, container_id: &str) {
    let stream_id = unique_name("visit");
    let started = serde_json::json!({
        "container_id": container_id,
        "engine": {"host": "127.0.0.1", "port": 1},
        "stream": {"key_type": "content_id", "key": "visit"},
        "session": {"playback_session_id": stream_id, "stat_url": "http://x/ace/stat/a/s",
                    "command_url": "http://x/cmd", "is_live": 1},
        "labels": {"stream_id": stream_id}
    });
    let ended = serde_json::json!({ "stream_id": stream_id });
    for (path, body) in [
        ("/events/stream_started", started),
        ("/events/stream_ended", ended),
    ] {
        let (status, reply) = super::http_post(addr, path, &body.to_string(), &[]).await;
        assert_eq!(status, 200, "{path}: {reply}");
    }
}

/// An in-process agent that sees only the engines labelled with its case (`case`), and what
/// the HTTP-level tests ask of it; its store lives in `_dir`.
pub struct TestAgent {
    pub agent: Agent,
    pub case: String,
    _dir: TempDir,
}

impl TestAgent {
    /// An agent for a new case named after `prefix`, on `bind`, with the config `cfg` makes
    /// from the case's name and store path (usually a [`case_config`] it adjusts).
    pub async fn start(
        prefix: &str,
        bind: &str,
        cfg: impl FnOnce(&str, &Path) -> Config,
    ) -> TestAgent {
        TestAgent::start_for(unique_name(prefix), bind, cfg).await
    }

    /// [`TestAgent::start`] for a case the test has named already (its engines may be
    /// started before the agent).
    pub async fn start_for(
        case: String,
        bind: &str,
        cfg: impl FnOnce(&str, &Path) -> Config,
    ) -> TestAgent {
        let dir = tempfile::tempdir().expect("temp dir for the store");
        let cfg = cfg(&case, &dir.path().join("state.redb"));
        let agent = start_agent_on(cfg, bind).await;
        TestAgent {
            agent,
            case,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.agent.addr
    }

    /// A fake engine this agent discovers.
    pub async fn engine(&self, prefix: &str) -> TestEngine {
        // No wait_http_ready here: its requests through docker-proxy are client connections
        // the agent's probe may count as streams for a moment. The agent's own health check
        // (every second, not counted) tells when the engine answers.
        TestEngine::builder()
            .name_prefix(prefix)
            .label(CASE_LABEL, &self.case)
            .start()
    }

    /// Waits until `/engines/{id}` shows the engine healthy and idle, and returns it.
    pub async fn wait_healthy(&self, e: &TestEngine) -> Value {
        let addr = self.addr();
        let path = format!("/engines/{}", e.id);
        eventually(
            Duration::from_secs(10),
            &format!("engine {} listed healthy and idle", e.name),
            || {
                let path = path.clone();
                async move {
                    let (status, body) = try_http_get(addr, &path).await?;
                    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                    if status == 200
                        && v["health_status"] == "healthy"
                        && v["streams"] == serde_json::json!([])
                    {
                        Ok(v)
                    } else {
                        Err(format!("HTTP {status}: {body}"))
                    }
                }
            },
        )
        .await
    }

    pub async fn stop(self) {
        self.agent.stop().await;
    }
}

// ---------------------------------------------------------------------------
// Negative windows, counted in the agent's own rounds
// ---------------------------------------------------------------------------
//
// "Nothing is cleaned meanwhile" needs a window. A fixed sleep is the wrong one: on a starved
// machine it can end before the agent has run a single round, and the test passes having
// watched nothing. These wait until the agent shows it has done the rounds the window is
// about, however long that takes.

/// Waits until `agent` has finished `n` more sweeps than when called (its `last_sweep` moved
/// `n` times; the sweep records one even when it had nothing to do, or Docker was away).
pub async fn after_sweeps(agent: &Agent, n: usize) {
    after_sweeps_within(agent, n, ROUNDS_WITHIN).await;
}

/// [`after_sweeps`], failing when a sweep takes longer than `within` after the one before.
pub async fn after_sweeps_within(agent: &Agent, n: usize, within: Duration) {
    after_rounds(agent, n, within, "sweeps (is cleanup.interval set?)", |s| {
        s.last_sweep
    })
    .await;
}

/// Waits until the disk-pressure watcher has finished `n` more rounds than when called.
pub async fn after_pressure_rounds(agent: &Agent, n: usize) {
    after_rounds(agent, n, ROUNDS_WITHIN, "pressure rounds", |s| {
        s.last_pressure_check
    })
    .await;
}

/// How long a test waits for each round of a window before it fails.
const ROUNDS_WITHIN: Duration = Duration::from_secs(30);

async fn after_rounds(
    agent: &Agent,
    n: usize,
    within: Duration,
    what: &str,
    stamp: impl Fn(&acestream_agent::model::Snapshot) -> Option<chrono::DateTime<chrono::Utc>>,
) {
    let mut last = stamp(&agent.snapshot());
    for i in 1..=n {
        let prev = last;
        last = eventually(within, &format!("{what}: {i} of {n}"), || async {
            let now = stamp(&agent.snapshot());
            (now != prev).then_some(now)
        })
        .await;
    }
}

/// Waits until the agent has checked engine `id`'s health at or after `t` by its own clock:
/// the agent was running through everything before `t`, not merely the test's clock.
pub async fn after_health_check_past(agent: &Agent, id: &str, t: chrono::DateTime<chrono::Utc>) {
    let window = (t - chrono::Utc::now()).to_std().unwrap_or_default();
    eventually(
        window + ROUNDS_WITHIN,
        &format!("a health check of {id} at or after {t}"),
        || async {
            let snap = agent.snapshot();
            let checked =
                acestream_agent::registry::find(&snap, id).and_then(|e| e.engine.last_health_check);
            checked
                .filter(|c| *c >= t)
                .map(|_| ())
                .ok_or(format!("last {checked:?}"))
        },
    )
    .await;
}
