//! Health (docs/architecture.md#health): HTTP GET `get_status` on every engine every
//! `health.interval`, with `health.timeout`; `get_version` once per container start. Sends
//! `RegistryCmd::Health`.
//!
//! Probes go to the IP of the engine's network namespace (its own, or its namespace owner's)
//! and the engine port, or to loopback for an engine on the host's network, never through a
//! published port: no docker-proxy in between, so the connection the engine sees comes from
//! this socket's local port. Those ports are lent to the connection probe
//! (`activity::ProbePorts`) so the agent's own checks never count as streams.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tracing::{debug, info};

use crate::activity::ProbePorts;
use crate::model::{id12, EngineState, HealthStatus};
use crate::reach::Reach;
use crate::registry::{RegistryCmd, RegistryHandle};
use crate::shutdown::Shutdown;

pub const STATUS_PATH: &str = "/server/api?api_version=3&method=get_status";
pub const VERSION_PATH: &str = "/webui/api/service?method=get_version";

/// Why a probe GET gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Not made: the engine's cache is being deleted (`ProbePorts::pause`).
    #[error("probe paused while the engine's cache is deleted")]
    Paused,
    /// Connect, request or deadline failed; the text says which.
    #[error("{0}")]
    Failed(String),
}

fn failed(e: impl std::fmt::Display) -> ProbeError {
    ProbeError::Failed(e.to_string())
}

/// One HTTP/1.1 GET with a deadline; returns status and body. Refused with
/// [`ProbeError::Paused`], before connecting, while `engine`'s cache is being deleted.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    ports: &ProbePorts,
    engine: &str,
) -> Result<(u16, Bytes), ProbeError> {
    let work = async {
        let sock = match addr.ip() {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(failed)?;
        let any = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        // Bound before connecting so the port is known before the engine can see the connection.
        sock.bind(SocketAddr::new(any, 0)).map_err(failed)?;
        let local = sock.local_addr().map_err(failed)?;
        let _guard = ports.hold(local.port(), engine);
        // After holding the port (see `ProbePorts`): a pause that came first stops us here.
        if ports.is_paused(engine) {
            return Err(ProbeError::Paused);
        }
        let stream = sock.connect(addr).await.map_err(failed)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(failed)?;
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(failed)?;
        // The sender moves into the request so it is dropped once the body is read; the
        // connection task then ends by itself (engines may also close after responding).
        let request = async move {
            let res = sender.send_request(req).await.map_err(failed)?;
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.map_err(failed)?;
            drop(sender);
            Ok::<_, ProbeError>((status, body.to_bytes()))
        };
        let (r, _) = tokio::join!(request, conn);
        r
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| failed(format!("timed out after {}s", timeout.as_secs_f64())))?
}

/// Where to probe an engine from this host (discovery works it out: the namespace's IP, or
/// loopback on the host's network).
pub fn probe_addr(e: &EngineState) -> Option<SocketAddr> {
    e.runtime.probe
}

/// `healthy` needs a 200 whose body is JSON.
fn judge(r: &Result<(u16, Bytes), ProbeError>) -> HealthStatus {
    match r {
        Ok((200, body)) if serde_json::from_slice::<serde_json::Value>(body).is_ok() => {
            HealthStatus::Healthy
        }
        _ => HealthStatus::Unhealthy,
    }
}

fn parse_version(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let r = v.get("result").unwrap_or(&v);
    r.get("version")
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

pub struct Health {
    pub registry: RegistryHandle,
    pub interval: Duration,
    pub timeout: Duration,
    pub ports: ProbePorts,
    /// Explains a failed probe that is the agent's network's doing.
    pub reach: Reach,
}

impl Health {
    /// Checks each engine when its interval is due, looking every second so a new engine is
    /// checked within a second of being discovered rather than up to a full interval later.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut due: HashMap<String, (Instant, u32)> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.recv() => return,
            }
            let snap = self.registry.snapshot();
            let now = Instant::now();
            due.retain(|id, _| snap.engines.iter().any(|e| &e.engine.container_id == id));
            self.reach
                .retain(|id| snap.engines.iter().any(|e| e.engine.container_id == id));
            let todo: Vec<&EngineState> = snap
                .engines
                .iter()
                .filter(|e| e.running)
                .filter(|e| {
                    due.get(&e.engine.container_id)
                        .is_none_or(|(at, pid)| *pid != e.runtime.pid || now >= *at)
                })
                .collect();
            if todo.is_empty() {
                continue;
            }
            let checks = todo.iter().map(|e| self.check(e));
            let results = futures_util::future::join_all(checks).await;
            for (e, cmd) in todo.iter().zip(results) {
                // A skipped check (engine paused for a delete) is retried on the next tick.
                let Some(cmd) = cmd else { continue };
                due.insert(
                    e.engine.container_id.clone(),
                    (now + self.interval, e.runtime.pid),
                );
                self.registry.send(cmd).await;
            }
        }
    }

    /// One check; `None` when it was not made (the engine's cache is being deleted).
    async fn check(&self, e: &EngineState) -> Option<RegistryCmd> {
        let id = e.engine.container_id.clone();
        let Some(addr) = probe_addr(e) else {
            return Some(RegistryCmd::Health {
                id,
                status: HealthStatus::Unhealthy,
                at: Utc::now(),
                version: None,
            });
        };
        let r = http_get(addr, STATUS_PATH, self.timeout, &self.ports, &id).await;
        if matches!(r, Err(ProbeError::Paused)) {
            return None;
        }
        let status = judge(&r);
        if status != e.engine.health_status {
            match &r {
                Ok((code, _)) if status == HealthStatus::Unhealthy => info!(
                    container_id = %id12(&id), status = code,
                    "engine {} unhealthy: HTTP {code}", id12(&id)),
                Err(err) if status == HealthStatus::Unhealthy => {
                    if !self.reach.explain(e, addr, &err.to_string()).await {
                        info!(container_id = %id12(&id), error = %err,
                            "engine {} unhealthy: {err}", id12(&id));
                    }
                }
                _ => debug!(container_id = %id12(&id), "engine {} healthy", id12(&id)),
            }
        }
        let version = if status == HealthStatus::Healthy && e.engine.version.is_none() {
            match http_get(addr, VERSION_PATH, self.timeout, &self.ports, &id).await {
                Ok((200, body)) => parse_version(&body),
                _ => None,
            }
        } else {
            None
        };
        Some(RegistryCmd::Health {
            id,
            status,
            at: Utc::now(),
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_needs_200_and_json() {
        assert_eq!(
            judge(&Ok((200, Bytes::from_static(b"{\"result\":{}}")))),
            HealthStatus::Healthy
        );
        assert_eq!(
            judge(&Ok((200, Bytes::from_static(b"not json")))),
            HealthStatus::Unhealthy
        );
        assert_eq!(
            judge(&Ok((500, Bytes::from_static(b"{}")))),
            HealthStatus::Unhealthy
        );
        assert_eq!(
            judge(&Err(ProbeError::Failed("refused".into()))),
            HealthStatus::Unhealthy
        );
    }

    #[test]
    fn version_from_result_or_top_level() {
        assert_eq!(
            parse_version(br#"{"result":{"version":"3.1.5"},"error":null}"#).as_deref(),
            Some("3.1.5")
        );
        assert_eq!(
            parse_version(br#"{"version":"3.2"}"#).as_deref(),
            Some("3.2")
        );
        assert_eq!(parse_version(b"nope"), None);
    }
}
