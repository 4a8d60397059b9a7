//! Views rendered on change, not per request (STYLE §2): a task waits for a new registry
//! snapshot, renders the `/engines` JSON and the `/metrics` text once, and publishes them as
//! `Bytes`. Handlers clone the bytes; a burst of changes coalesces in the `watch` channel.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::model::{Engine, Snapshot};
use crate::shutdown::Shutdown;

/// The built-in status page (SPEC §6 `GET /`), self-contained.
pub const STATUS_PAGE: &str = include_str!("status.html");

#[derive(Debug, Default)]
pub struct Rendered {
    pub snapshot: Arc<Snapshot>,
    pub engines_json: Bytes,
    pub metrics: Bytes,
}

pub fn engines_json(snapshot: &Snapshot) -> Bytes {
    let items: Vec<&Engine> = snapshot.engines.iter().map(|e| &e.engine).collect();
    Bytes::from(serde_json::to_vec(&items).expect("engines serialize to JSON"))
}

pub fn render(snapshot: Arc<Snapshot>, metrics: &Metrics) -> Rendered {
    Rendered {
        engines_json: engines_json(&snapshot),
        metrics: Bytes::from(metrics.render(&snapshot, env!("CARGO_PKG_VERSION"))),
        snapshot,
    }
}

/// Keeps `tx` up to date with the latest snapshot until shutdown.
pub async fn run(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    tx: watch::Sender<Arc<Rendered>>,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) {
    loop {
        let snap = snapshots.borrow_and_update().clone();
        tx.send_replace(Arc::new(render(snap, &metrics)));
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            _ = metrics.changed() => {}
            _ = shutdown.recv() => return,
        }
    }
}
