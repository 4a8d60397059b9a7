//! Looking up in Docker a container a stream event names before discovery has listed it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::registry::{RegistryCmd, RegistryHandle};

use super::inspect::Inspector;

/// Looks up in Docker what a stream event names but the registry does not have yet
/// (docs/deployments.md#stream-events-from-proxies: a container seconds old, or the agent just
/// started and its first list is not done): by container id one inspect, by address one list. At
/// most one lookup runs at a time; a list is not repeated for a request that arrived before the
/// last one began (it was answered by it), and an id Docker did not have as an engine is not asked
/// again for a second, so a misbehaving proxy cannot turn its requests into a load on Docker.
#[derive(Clone)]
pub struct Lookup {
    inspector: Inspector,
    registry: RegistryHandle,
    gate: Arc<tokio::sync::Mutex<LookupState>>,
}

#[derive(Default)]
pub(super) struct LookupState {
    last_list: Option<std::time::Instant>,
    misses: HashMap<String, std::time::Instant>,
}

/// Lists made for stream events are at least this far apart.
pub(super) const MIN_LIST_SPACING: Duration = Duration::from_secs(1);

/// How long an id that Docker did not have as an engine is not asked about again.
pub(super) const MISS_TTL: Duration = Duration::from_secs(1);

/// Misses remembered at most.
pub(super) const MAX_MISSES: usize = 1024;

impl Lookup {
    pub fn new(inspector: Inspector, registry: RegistryHandle) -> Lookup {
        Lookup {
            inspector,
            registry,
            gate: Arc::default(),
        }
    }

    /// The address engines published on the host are advertised at.
    pub fn advertise_host(&self) -> String {
        self.inspector.advertise_host()
    }

    /// Brings the engine a stream event names into the registry if Docker has it, before the
    /// event is applied again (commands are applied in order: the upsert comes first).
    /// `arrived` is when the request came in.
    pub async fn find(&self, container_id: Option<&str>, arrived: std::time::Instant) {
        let mut state = self.gate.lock().await;
        if self.inspector.docker.ensure_connected().await.is_err() {
            return;
        }
        match container_id {
            Some(id) => {
                let now = std::time::Instant::now();
                state
                    .misses
                    .retain(|_, at| now.duration_since(*at) < MISS_TTL);
                if state.misses.contains_key(id) {
                    return;
                }
                match self.inspector.engine_by_id(id).await {
                    Ok(Some(d)) => self.registry.send(RegistryCmd::Upsert(Box::new(d))).await,
                    Ok(None) | Err(_) => {
                        if state.misses.len() < MAX_MISSES {
                            state.misses.insert(id.to_string(), now);
                        }
                    }
                }
            }
            None => {
                // Answered by a list that began after the request came, or one less than a
                // second ago (a flood of unknown addresses costs one list a second).
                if state
                    .last_list
                    .is_some_and(|t| t >= arrived || t.elapsed() < MIN_LIST_SPACING)
                {
                    return;
                }
                let began = std::time::Instant::now();
                let Ok(list) = self.inspector.list().await else {
                    return;
                };
                // Stamped once done: a list cut short (the request's deadline) answered nobody.
                state.last_list = Some(began);
                let snap = self.registry.snapshot();
                for d in list {
                    let known = snap
                        .engines
                        .iter()
                        .any(|e| e.running && e.engine.container_id == d.container_id);
                    if !known {
                        self.registry.send(RegistryCmd::Upsert(Box::new(d))).await;
                    }
                }
            }
        }
    }
}
