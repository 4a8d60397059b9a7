//! Heal: restarts stuck engines through Docker (README "Stuck engines").
//!
//! An engine is stuck when it answered its status probe at least once since its container
//! last started (or before the agent's own restart of it), has failed every probe since for
//! `heal.after`, and is idle. A probe that never reached an engine says nothing about the
//! engine, so an engine never healthy since its start is never restarted.
//!
//! A worker beside the janitor: it owns the timers and the order of restarts (one at a time on
//! the host, so a restart that takes Docker a while cannot pile up behind others), decides
//! with [`Policy`] over the registry's snapshots, restarts through Docker and reports back.
//! The registry owns the facts ([`crate::model::HealBook`]: restarts, quarantine, whether the
//! engine answered since its start), repeats the idle check right before a restart, and keeps
//! the records in the store, so the count, the back-off and a quarantine survive `kill -9`.
//! The policy is pure, over explicit instants, and tested as such.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::{HealConfig, LabelMatch};
use crate::docker::DockerClient;
use crate::logging;
use crate::model::{
    id12, EngineState, HealRecord, HealState, HealTrigger, HealthStatus, Snapshot, Timestamp,
};
use crate::registry::{RegistryCmd, RegistryError, RegistryHandle};
use crate::shutdown::Shutdown;

/// The label that keeps one container out of heal's hands.
pub const HEAL_LABEL: &str = "acestream.heal";

/// The host's hourly cap counts restarts over this long.
const HOUR: Duration = Duration::from_secs(3600);

/// The rules, from `[heal]`.
#[derive(Clone, Debug)]
pub struct Policy {
    pub enabled: bool,
    pub after: Duration,
    pub max_restarts: u32,
    pub window: Duration,
    pub max_per_hour: u32,
    pub skip_labels: Vec<LabelMatch>,
    /// An engine all of whose streams are stalled counts as stuck (`heal.stalled`).
    pub stalled: bool,
}

/// What the policy says of one engine now.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Nothing to do; the engine's state.
    Rest(HealState),
    /// Stuck, not yet for long enough: restart (or quarantine) once `due` has come.
    Wait { state: HealState, due: Timestamp },
    /// Stuck for its whole wait: restart it. `n`: which restart within the window this is.
    Restart {
        trigger: HealTrigger,
        failing_for: Duration,
        n: usize,
    },
    /// Stuck again after `n` restarts within the window: leave it alone.
    Quarantine { n: usize },
}

impl Verdict {
    pub fn state(&self) -> HealState {
        match self {
            Verdict::Rest(s) | Verdict::Wait { state: s, .. } => *s,
            Verdict::Restart { n, .. } if *n > 1 => HealState::Backoff,
            Verdict::Restart { .. } => HealState::Waiting,
            Verdict::Quarantine { .. } => HealState::Quarantined,
        }
    }
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Policy {
    pub fn from_config(c: &HealConfig) -> Policy {
        Policy {
            enabled: c.enabled,
            after: c.after,
            max_restarts: c.max_restarts,
            window: c.window,
            max_per_hour: c.max_per_hour,
            skip_labels: c.skip_labels.clone(),
            stalled: c.stalled,
        }
    }

    /// Labelled to be left alone: `acestream.heal=false`, or one of `heal.skip_labels`.
    pub fn skipped(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        if labels.get(HEAL_LABEL).map(String::as_str) == Some("false") {
            return true;
        }
        let labels: HashMap<String, String> =
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        self.skip_labels.iter().any(|m| m.matches(&labels))
    }

    /// How far back restarts are remembered: the longer of the window and the hour of the
    /// host's cap.
    pub fn memory(&self) -> Duration {
        self.window.max(HOUR)
    }

    /// The engine's automatic restarts that count toward its back-off and quarantine at `now`:
    /// within the window, and since its count last started afresh.
    pub fn counted(&self, e: &EngineState, now: Timestamp) -> usize {
        let from = now - chrono(self.window);
        let from = e.heal.counted_from.map_or(from, |c| c.max(from));
        e.heal.recent.iter().filter(|t| **t >= from).count()
    }

    /// How long a stuck engine fails before its next restart, after `k` counted restarts:
    /// `after`, doubled for each.
    pub fn wait(&self, k: usize) -> Duration {
        self.after.saturating_mul(1u32 << k.min(20))
    }

    pub fn judge(&self, e: &EngineState, now: Timestamp) -> Verdict {
        if !self.enabled {
            return Verdict::Rest(HealState::Off);
        }
        if self.skipped(&e.engine.labels) {
            return Verdict::Rest(HealState::Skipped);
        }
        if e.heal.quarantined.is_some() {
            return Verdict::Rest(HealState::Quarantined);
        }
        if e.heal.restart_pending {
            // Being restarted: as it stood.
            return Verdict::Rest(e.engine.heal_state);
        }
        if !e.running || e.runtime.paused || !e.heal.healthy_since_start {
            return Verdict::Rest(HealState::Ok);
        }
        let (stuck_since, trigger) = match (e.engine.unhealthy_since, e.streams_stalled_since) {
            (Some(since), _)
                if e.engine.health_status == HealthStatus::Unhealthy && e.is_idle() =>
            {
                (since, HealTrigger::Unhealthy)
            }
            // Answering, streaming, and every stream it has statistics for is stalled.
            (_, Some(since)) if self.stalled => (since, HealTrigger::Stalled),
            _ => return Verdict::Rest(HealState::Ok),
        };
        let k = self.counted(e, now);
        let due = stuck_since + chrono(self.wait(k));
        let state = if k == 0 {
            HealState::Waiting
        } else {
            HealState::Backoff
        };
        if now < due {
            return Verdict::Wait { state, due };
        }
        if k >= self.max_restarts as usize {
            return Verdict::Quarantine { n: k };
        }
        Verdict::Restart {
            trigger,
            failing_for: (now - stuck_since).to_std().unwrap_or_default(),
            n: k + 1,
        }
    }

    /// When the host may restart again: `None` now; else when the oldest of the last hour's
    /// `max_per_hour` restarts leaves the hour.
    pub fn host_cap(&self, snap: &Snapshot, now: Timestamp) -> Option<Timestamp> {
        let from = now - chrono(HOUR);
        let mut last_hour: Vec<Timestamp> = snap
            .engines
            .iter()
            .flat_map(|e| e.heal.recent.iter().copied())
            .filter(|t| *t > from)
            .collect();
        if last_hour.len() < self.max_per_hour as usize {
            return None;
        }
        last_hour.sort_unstable();
        let oldest_that_matters = last_hour[last_hour.len() - self.max_per_hour as usize];
        Some(oldest_that_matters + chrono(HOUR))
    }
}

/// What one pass over a snapshot found.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Engines whose state changed.
    pub states: Vec<(String, HealState)>,
    /// Engines to quarantine now: (id, name, restarts within the window).
    pub quarantine: Vec<(String, String, usize)>,
    /// The next engine to restart: the one stuck longest. (id, name, trigger, failing for, n).
    pub restart: Option<(String, String, HealTrigger, Duration, usize)>,
    /// When to look again (a wait ends, the hourly cap lifts).
    pub wake: Option<Timestamp>,
    /// Restarts are due but the host's hourly cap holds them until `wake`.
    pub capped: bool,
}

impl Policy {
    /// Judges every engine of `snap` at `now`. Nothing is restarted while Docker is away (the
    /// restart would fail anyway, and the engine may only look stuck because Docker is).
    pub fn plan(&self, snap: &Snapshot, now: Timestamp) -> Plan {
        let mut plan = Plan::default();
        let mut due: Vec<(&EngineState, HealTrigger, Duration, usize)> = vec![];
        for e in &snap.engines {
            let v = self.judge(e, now);
            let state = v.state();
            if state != e.engine.heal_state {
                plan.states.push((e.engine.container_id.clone(), state));
            }
            match v {
                Verdict::Wait { due, .. } => {
                    plan.wake = Some(plan.wake.map_or(due, |w| w.min(due)));
                }
                Verdict::Restart {
                    trigger,
                    failing_for,
                    n,
                } => due.push((e, trigger, failing_for, n)),
                Verdict::Quarantine { n } if snap.docker_up => plan.quarantine.push((
                    e.engine.container_id.clone(),
                    e.engine.container_name.clone(),
                    n,
                )),
                _ => {}
            }
        }
        if due.is_empty() || !snap.docker_up {
            return plan;
        }
        if let Some(lifts) = self.host_cap(snap, now) {
            plan.capped = true;
            plan.wake = Some(plan.wake.map_or(lifts, |w| w.min(lifts)));
            return plan;
        }
        // The one failing longest first.
        let Some(&(e, trigger, failing_for, n)) = due.iter().max_by_key(|d| d.2) else {
            return plan;
        };
        plan.restart = Some((
            e.engine.container_id.clone(),
            e.engine.container_name.clone(),
            trigger,
            failing_for,
            n,
        ));
        plan
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HealError {
    #[error("no engine {0}")]
    UnknownEngine(String),
    #[error("engine {0} is not restarted while Docker is unreachable")]
    DockerDown(String),
    #[error("heal is turned off (heal.enabled = false)")]
    Off,
    #[error("{0}")]
    Registry(#[from] RegistryError),
}

/// A person's `POST /engines/{id}/heal`.
struct Request {
    id: String,
    reply: oneshot::Sender<Result<HealRecord, HealError>>,
}

/// How the HTTP API asks heal for a restart; clones share the worker.
#[derive(Clone)]
pub struct HealHandle {
    tx: Option<mpsc::Sender<Request>>,
    registry: RegistryHandle,
}

impl HealHandle {
    /// Restarts the engine now (one restart at a time on the host: it waits for one in
    /// progress); the record says how it went.
    pub async fn heal(&self, key: &str) -> Result<HealRecord, HealError> {
        let snap = self.registry.snapshot();
        let Some(e) = crate::registry::find(&snap, key) else {
            return Err(HealError::UnknownEngine(format!("{key:?}")));
        };
        let id = e.engine.container_id.clone();
        let Some(tx) = &self.tx else {
            return Err(HealError::Off);
        };
        if !snap.docker_up {
            return Err(HealError::DockerDown(id12(&id).to_string()));
        }
        let (reply, rx) = oneshot::channel();
        tx.send(Request { id, reply })
            .await
            .map_err(|_| RegistryError::Closed)?;
        rx.await.map_err(|_| RegistryError::Closed)?
    }
}

pub struct Heal {
    pub registry: RegistryHandle,
    pub docker: DockerClient,
    pub policy: Arc<Policy>,
    pub stop_timeout: Duration,
    requests: Option<mpsc::Receiver<Request>>,
}

impl Heal {
    /// The worker and the handle the HTTP API asks it through. With heal off the handle
    /// refuses (`HealError::Off`) and the worker only shows every engine `off`.
    pub fn new(
        registry: RegistryHandle,
        docker: DockerClient,
        policy: Policy,
        stop_timeout: Duration,
    ) -> (Heal, HealHandle) {
        let (tx, rx) = mpsc::channel(16);
        let on = policy.enabled;
        (
            Heal {
                registry: registry.clone(),
                docker,
                policy: Arc::new(policy),
                stop_timeout,
                requests: on.then_some(rx),
            },
            HealHandle {
                tx: on.then_some(tx),
                registry,
            },
        )
    }

    /// Looks again whenever the registry publishes (a health result, a stream, a start) or a
    /// wait ends; restarts what is due, one at a time.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut snaps = self.registry.subscribe();
        let mut requests = self.requests.take();
        let mut capped = false;
        loop {
            let snap = snaps.borrow_and_update().clone();
            let now = Utc::now();
            let plan = self.policy.plan(&snap, now);
            if !plan.states.is_empty() {
                self.registry
                    .send(RegistryCmd::HealStates(plan.states))
                    .await;
            }
            for (id, name, n) in plan.quarantine {
                logging::heal_quarantined(&id, &name, n, self.policy.window);
                self.registry
                    .send(RegistryCmd::Quarantine { id, at: now })
                    .await;
            }
            if plan.capped != capped {
                capped = plan.capped;
                if capped {
                    warn!(max_per_hour = self.policy.max_per_hour,
                        "Heal has restarted {} engines within the hour (heal.max_per_hour); stuck engines wait", self.policy.max_per_hour);
                } else {
                    info!("Heal's hourly limit has room again");
                }
            }
            if let Some((id, name, trigger, failing_for, n)) = plan.restart {
                logging::heal_restarting(&id, &name, trigger, failing_for, n, self.policy.window);
                // Whatever the outcome, the next pass sees it in the snapshot.
                let _ = self.restart(&id, trigger).await;
                continue;
            }
            let sleep = plan
                .wake
                .map(|w| (w - now).to_std().unwrap_or_default())
                // Nothing timed: the next snapshot says when.
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.recv() => return,
                r = snaps.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(sleep) => {}
                Some(req) = async {
                    match requests.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let r = self.restart(&req.id, HealTrigger::Manual).await;
                    let _ = req.reply.send(r);
                }
            }
        }
    }

    /// One restart: the registry's idle re-check (and its count, committed), Docker's restart,
    /// the record.
    async fn restart(&self, id: &str, trigger: HealTrigger) -> Result<HealRecord, HealError> {
        let forget = Utc::now() - chrono(self.policy.memory());
        let start = self.registry.begin_restart(id, trigger, forget).await?;
        if trigger == HealTrigger::Manual {
            info!(container_id = %id12(id), container_name = %start.container_name,
                "Restarting engine {} ({}) on request", id12(id), start.container_name);
        }
        let started_at = Utc::now();
        let t0 = std::time::Instant::now();
        let result = self.docker.restart(id, self.stop_timeout).await;
        let finished_at = Utc::now();
        if let Err(e) = &result {
            warn!(container_id = %id12(id), error = %e, "Docker did not restart engine {}: {e}", id12(id));
        } else {
            debug!(container_id = %id12(id), "engine restarted");
        }
        let record = HealRecord {
            container_id: id.to_string(),
            container_name: start.container_name,
            trigger,
            unhealthy_since: start.unhealthy_since,
            started_at,
            finished_at,
            duration_seconds: t0.elapsed().as_secs_f64(),
            success: result.is_ok(),
            error: result.err().map(|e| e.to_string()),
        };
        self.registry.finish_restart(record.clone()).await?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HealBook;
    use chrono::TimeZone;

    const T0: i64 = 1_790_000_000;

    fn at(secs: i64) -> Timestamp {
        Utc.timestamp_opt(T0 + secs, 0).unwrap()
    }

    fn policy() -> Policy {
        Policy::from_config(&HealConfig {
            after: Duration::from_secs(180),
            max_restarts: 3,
            window: Duration::from_secs(3600),
            max_per_hour: 10,
            ..HealConfig::default()
        })
    }

    /// An engine that answered since its start and has failed every probe since `since`.
    fn stuck(id: &str, since: i64) -> EngineState {
        let mut e = crate::metrics::testing::engine(id, id);
        e.engine.health_status = HealthStatus::Unhealthy;
        e.engine.unhealthy_since = Some(at(since));
        e.heal = HealBook {
            healthy_since_start: true,
            pid: 100,
            ..HealBook::default()
        };
        e
    }

    fn snap(engines: Vec<EngineState>) -> Snapshot {
        Snapshot {
            engines,
            docker_up: true,
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_stuck_engine_waits_for_after_then_is_restarted() {
        let p = policy();
        let e = stuck("a", 0);
        assert_eq!(
            p.judge(&e, at(179)),
            Verdict::Wait {
                state: HealState::Waiting,
                due: at(180)
            }
        );
        assert_eq!(
            p.judge(&e, at(180)),
            Verdict::Restart {
                trigger: HealTrigger::Unhealthy,
                failing_for: Duration::from_secs(180),
                n: 1
            }
        );
    }

    #[test]
    fn only_an_idle_running_engine_that_answered_since_its_start_is_stuck() {
        let p = policy();
        let later = at(10_000);
        let mut never = stuck("a", 0);
        never.heal.healthy_since_start = false;
        assert_eq!(p.judge(&never, later), Verdict::Rest(HealState::Ok));
        let mut busy = stuck("a", 0);
        busy.engine.streams = vec!["conn:10.0.0.9:4000".into()];
        assert_eq!(p.judge(&busy, later), Verdict::Rest(HealState::Ok));
        let mut answering = stuck("a", 0);
        answering.engine.health_status = HealthStatus::Healthy;
        answering.engine.unhealthy_since = None;
        assert_eq!(p.judge(&answering, later), Verdict::Rest(HealState::Ok));
        let mut stopped = stuck("a", 0);
        stopped.running = false;
        assert_eq!(p.judge(&stopped, later), Verdict::Rest(HealState::Ok));
        let mut paused = stuck("a", 0);
        paused.runtime.paused = true;
        assert_eq!(p.judge(&paused, later), Verdict::Rest(HealState::Ok));
        let mut off = p.clone();
        off.enabled = false;
        assert_eq!(
            off.judge(&stuck("a", 0), later),
            Verdict::Rest(HealState::Off)
        );
    }

    #[test]
    fn with_heal_stalled_an_engine_whose_streams_are_all_stalled_is_stuck() {
        let mut p = policy();
        let mut e = stuck("a", 0);
        // Answering, one stream, stalled since 100.
        e.engine.health_status = HealthStatus::Healthy;
        e.engine.unhealthy_since = None;
        e.engine.streams = vec!["k|s".into()];
        e.streams_stalled_since = Some(at(100));
        assert_eq!(p.judge(&e, at(10_000)), Verdict::Rest(HealState::Ok));
        p.stalled = true;
        assert!(matches!(
            p.judge(&e, at(279)),
            Verdict::Wait {
                state: HealState::Waiting,
                ..
            }
        ));
        assert_eq!(
            p.judge(&e, at(280)),
            Verdict::Restart {
                trigger: HealTrigger::Stalled,
                failing_for: Duration::from_secs(180),
                n: 1
            }
        );
        e.streams_stalled_since = None;
        assert_eq!(p.judge(&e, at(10_000)), Verdict::Rest(HealState::Ok));
    }

    #[test]
    fn labelled_engines_are_skipped() {
        let p = policy();
        let mut orchestrated = stuck("a", 0);
        orchestrated
            .engine
            .labels
            .insert("orchestrator.managed".into(), "acestream".into());
        assert_eq!(
            p.judge(&orchestrated, at(10_000)),
            Verdict::Rest(HealState::Skipped)
        );
        let mut opted_out = stuck("a", 0);
        opted_out
            .engine
            .labels
            .insert(HEAL_LABEL.into(), "false".into());
        assert_eq!(
            p.judge(&opted_out, at(10_000)),
            Verdict::Rest(HealState::Skipped)
        );
        let mut opted_in = stuck("a", 0);
        opted_in
            .engine
            .labels
            .insert(HEAL_LABEL.into(), "true".into());
        assert!(matches!(
            p.judge(&opted_in, at(10_000)),
            Verdict::Restart { .. }
        ));
    }

    /// After each restart the wait doubles (3m, 6m, 12m), counted from the first failure
    /// after that restart; stuck after the third, the engine is quarantined, not restarted.
    #[test]
    fn the_back_off_doubles_and_the_fourth_time_is_quarantine() {
        let p = policy();
        let mut e = stuck("a", 0);
        let mut now = 0;
        for (k, wait) in [(0usize, 180i64), (1, 360), (2, 720)] {
            e.engine.unhealthy_since = Some(at(now));
            assert_eq!(
                p.judge(&e, at(now + wait - 1)),
                Verdict::Wait {
                    state: if k == 0 {
                        HealState::Waiting
                    } else {
                        HealState::Backoff
                    },
                    due: at(now + wait)
                },
                "restart {k}"
            );
            assert!(
                matches!(p.judge(&e, at(now + wait)), Verdict::Restart { n, .. } if n == k + 1),
                "restart {k}"
            );
            now += wait;
            e.heal.recent.push(at(now));
            now += 5;
        }
        e.engine.unhealthy_since = Some(at(now));
        assert!(matches!(p.judge(&e, at(now + 1439)), Verdict::Wait { .. }));
        assert_eq!(p.judge(&e, at(now + 1440)), Verdict::Quarantine { n: 3 });
        e.heal.quarantined = Some(at(now + 1440));
        assert_eq!(
            p.judge(&e, at(now + 100_000)),
            Verdict::Rest(HealState::Quarantined)
        );
    }

    #[test]
    fn restarts_leave_the_count_with_the_window_or_a_fresh_start() {
        let p = policy();
        let mut e = stuck("a", 0);
        e.heal.recent = vec![at(0), at(600), at(1200)];
        assert_eq!(p.counted(&e, at(1300)), 3);
        // The first leaves the window an hour after it began.
        assert_eq!(p.counted(&e, at(3600)), 3);
        assert_eq!(p.counted(&e, at(3601)), 2);
        // Quarantine lifted at 700 (the engine answered): only the later one counts.
        e.heal.counted_from = Some(at(700));
        assert_eq!(p.counted(&e, at(1300)), 1);
        // Manual restarts are not in `recent` at all (the registry does not count them).
        e.engine.unhealthy_since = Some(at(1300));
        assert!(matches!(
            p.judge(&e, at(1300 + 359)),
            Verdict::Wait {
                state: HealState::Backoff,
                ..
            }
        ));
        assert!(matches!(
            p.judge(&e, at(1300 + 360)),
            Verdict::Restart { n: 2, .. }
        ));
    }

    #[test]
    fn the_host_restarts_at_most_max_per_hour_and_the_longest_stuck_first() {
        let mut p = policy();
        p.max_per_hour = 2;
        let mut a = stuck("a", 0);
        let b = stuck("b", 100);
        let c = stuck("c", 50);
        let plan = p.plan(&snap(vec![a.clone(), b.clone(), c.clone()]), at(1000));
        let (id, _, trigger, failing_for, n) = plan.restart.expect("one restart");
        assert_eq!(
            (id.as_str(), trigger, failing_for, n),
            ("a", HealTrigger::Unhealthy, Duration::from_secs(1000), 1)
        );
        assert!(!plan.capped);
        // Two restarts in the last hour (one of them another engine's): capped until the
        // older of them is an hour old.
        a.heal.recent = vec![at(-2000)];
        let mut other = stuck("z", 0);
        other.engine.health_status = HealthStatus::Healthy;
        other.engine.unhealthy_since = None;
        other.heal.recent = vec![at(200)];
        let s = snap(vec![a.clone(), b.clone(), c.clone(), other.clone()]);
        let plan = p.plan(&s, at(1000));
        assert_eq!(plan.restart, None);
        assert!(plan.capped);
        assert_eq!(plan.wake, Some(at(1600)));
        // An hour after the older one: room for one.
        let plan = p.plan(&s, at(1601));
        assert!(!plan.capped);
        assert!(plan.restart.is_some());
    }

    #[test]
    fn nothing_is_restarted_or_quarantined_while_docker_is_away() {
        let p = policy();
        let mut s = snap(vec![stuck("a", 0)]);
        s.docker_up = false;
        let plan = p.plan(&s, at(10_000));
        assert_eq!(plan.restart, None);
        let mut q = stuck("q", 0);
        q.heal.recent = vec![at(9000), at(9100), at(9200)];
        s.engines = vec![q];
        assert!(p.plan(&s, at(9900)).quarantine.is_empty());
        s.docker_up = true;
        assert_eq!(p.plan(&s, at(9900)).quarantine.len(), 1);
    }

    #[test]
    fn the_plan_reports_state_changes_and_the_next_wake() {
        let p = policy();
        let a = stuck("a", 0);
        let mut b = stuck("b", 100);
        b.engine.heal_state = HealState::Waiting;
        let plan = p.plan(&snap(vec![a, b]), at(10));
        assert_eq!(plan.states, vec![("a".to_string(), HealState::Waiting)]);
        assert_eq!(plan.wake, Some(at(180)));
        assert_eq!(plan.restart, None);
    }
}
