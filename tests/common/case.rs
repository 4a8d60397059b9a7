//! An in-process agent that sees only one test's engines, and the requests most tests make
//! of it. Test files add their own methods with further `impl Case` blocks.

use std::time::Duration;

use acestream_agent::config::Config;
use acestream_agent::Agent;
use serde_json::Value;
use tempfile::TempDir;

use super::{eventually, http_get_json, try_http_get, unique_name};

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
    let mut cfg = Config::default();
    cfg.discovery.labels = vec![format!("{CASE_LABEL}={name}")
        .parse()
        .expect("a case label is a valid label match")];
    cfg.discovery.images = vec![];
    cfg.store.path = dir.path().join("state.redb");
    cfg.activity.interval = Duration::from_millis(200);
    cfg.health.interval = Duration::from_secs(1);
    cfg.cleanup.interval = None;
    cfg.cleanup.idle_grace = None;
    cfg.cleanup.measure_interval = None;
    cfg.pressure.min_free = None;
    (name, dir, cfg)
}

impl Case {
    pub async fn start(dir: TempDir, cfg: Config) -> Case {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the agent");
        let agent = Agent::start(cfg, listener).await.expect("the agent starts");
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
        let addr = self.agent.addr;
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

    /// `GET /engines/{key}/cleanups`, newest first.
    pub async fn history(&self, key: &str) -> Vec<Value> {
        let (status, v) = http_get_json(self.agent.addr, &format!("/engines/{key}/cleanups")).await;
        assert_eq!(status, 200, "GET /engines/{key}/cleanups: {v}");
        v.as_array()
            .unwrap_or_else(|| panic!("cleanup history is not an array: {v}"))
            .clone()
    }
}
