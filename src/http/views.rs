//! Views rendered on change, not per request (docs/architecture.md#views): a task waits for a new
//! registry snapshot, renders the `/engines` JSON and the `/metrics` text once, and publishes them
//! as `Bytes`. Handlers clone the bytes; a burst of changes coalesces in the `watch` channel.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::model::{Engine, Snapshot};
use crate::shutdown::Shutdown;

/// The built-in status page (`GET /`, README "HTTP endpoints"), self-contained.
pub const STATUS_PAGE: &str = include_str!("status.html");

#[derive(Debug, Default)]
pub struct Rendered {
    pub snapshot: Arc<Snapshot>,
    pub engines_json: Bytes,
    pub metrics: Bytes,
    /// `metrics` gzip'd, for scrapers that send `Accept-Encoding: gzip` (Prometheus does),
    /// compressed once here rather than per scrape.
    pub metrics_gzip: Bytes,
}

/// gzip at a fast level: the exposition is repetitive text (label names and values on every
/// line), which even level 1 shrinks ~10×, in well under a millisecond per engine.
pub fn gzip(text: &[u8]) -> Bytes {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 8),
        flate2::Compression::fast(),
    );
    e.write_all(text)
        .and_then(|()| e.finish())
        .map(fit)
        .expect("gzip into memory cannot fail")
}

pub fn engines_json(snapshot: &Snapshot) -> Bytes {
    let items: Vec<&Engine> = snapshot.engines.iter().map(|e| &e.engine).collect();
    fit(serde_json::to_vec(&items).expect("engines serialize to JSON"))
}

/// A rendered body as `Bytes`, without the spare room its buffer grew by. `Bytes::from` keeps
/// a `Vec`'s whole allocation, and a buffer that outgrew its estimate doubled: up to half of
/// it empty, kept for as long as the rendering is served (and by every response in flight
/// when the next one replaces it).
fn fit(mut body: Vec<u8>) -> Bytes {
    if body.capacity() - body.len() > body.len() / 16 {
        body.shrink_to_fit();
    }
    Bytes::from(body)
}

pub fn render(snapshot: Arc<Snapshot>, metrics: &Metrics) -> Rendered {
    let text = fit(metrics
        .render(&snapshot, env!("CARGO_PKG_VERSION"))
        .into_bytes());
    Rendered {
        engines_json: engines_json(&snapshot),
        metrics_gzip: gzip(&text),
        metrics: text,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_round_trips_and_shrinks_an_exposition() {
        use std::io::Read;
        let text = crate::metrics::Metrics::new()
            .render(&crate::metrics::testing::golden_snapshot(), "1.2.3");
        let z = gzip(text.as_bytes());
        let mut back = String::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);
        assert!(z.len() * 4 < text.len(), "{} of {}", z.len(), text.len());
    }
}
