//! One shutdown signal, many listeners (docs/architecture.md#shutdown, after mini-redis
//! `shutdown.rs`).

use tokio::sync::watch;

/// Cloneable listener; `recv()` completes once shutdown has been requested.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending side, held by `lib::run`.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }
}

impl Shutdown {
    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes when shutdown is requested (or the trigger is dropped, which means the same).
    pub async fn recv(&mut self) {
        let _ = self.rx.wait_for(|v| *v).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_sees_the_signal() {
        let (t, s) = channel();
        let mut a = s.clone();
        let mut b = s.clone();
        assert!(!a.is_shutdown());
        t.fire();
        a.recv().await;
        b.recv().await;
        assert!(s.is_shutdown());
    }
}
