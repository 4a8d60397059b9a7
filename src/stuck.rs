//! Blocking calls that may never return, run with a deadline: a statvfs or canonicalize on a
//! hung mount (NFS, FUSE), a read of `/proc` that waits in the kernel. A call that timed out
//! leaves its thread blocked; its key is then marked stuck and skipped until that call
//! returns, so blocked threads do not pile up one per tick (node_exporter's
//! `stuckMountWatcher`). Disk pressure, the connection probe and the janitor's host walks
//! (keyed by engine: a walk hung in one container's filesystem holds back that engine only)
//! use it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What a guarded call gave.
pub enum Call<T> {
    Done(T),
    /// Timed out now, or still stuck from an earlier call.
    Unavailable,
    /// The call panicked: why, as the runtime tells it.
    Panicked(String),
}

/// Ends a call however it ends (a panic included): marks it finished and clears its key's
/// stuck mark, under the lock, so the timeout path either sees the call finished or marks it
/// stuck before this removes the mark. A key whose call panicked is not left stuck for good.
struct Finish {
    stuck: Arc<Mutex<HashSet<String>>>,
    key: String,
    finished: Arc<AtomicBool>,
    recovered: fn(&str),
}

impl Drop for Finish {
    fn drop(&mut self) {
        let mut s = self.stuck.lock().unwrap_or_else(PoisonError::into_inner);
        self.finished.store(true, Ordering::SeqCst);
        if s.remove(&self.key) {
            (self.recovered)(&self.key);
        }
    }
}

/// Runs blocking calls off the async threads with a deadline. A key (a path, a task) whose
/// call timed out is skipped until that call returns. std `Mutex`: held to test or change the
/// set only.
#[derive(Clone)]
pub struct Guarded {
    stuck: Arc<Mutex<HashSet<String>>>,
    timeout: Duration,
    /// Said once when a key's call times out (key, seconds), and once when it returns.
    on_stuck: fn(&str, f64),
    on_recovered: fn(&str),
}

impl Guarded {
    pub fn new(timeout: Duration, on_stuck: fn(&str, f64), on_recovered: fn(&str)) -> Guarded {
        Guarded {
            stuck: Arc::new(Mutex::new(HashSet::new())),
            timeout,
            on_stuck,
            on_recovered,
        }
    }

    pub fn is_stuck(&self, key: &str) -> bool {
        self.stuck
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key)
    }

    pub async fn run<T: Send + 'static>(
        &self,
        key: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Call<T> {
        if self.is_stuck(key) {
            return Call::Unavailable;
        }
        let finished = Arc::new(AtomicBool::new(false));
        let finish = Finish {
            stuck: self.stuck.clone(),
            key: key.to_string(),
            finished: finished.clone(),
            recovered: self.on_recovered,
        };
        let handle = tokio::task::spawn_blocking(move || {
            let _finish = finish;
            f()
        });
        match tokio::time::timeout(self.timeout, handle).await {
            Ok(Ok(r)) => Call::Done(r),
            Ok(Err(join)) => Call::Panicked(join.to_string()),
            Err(_) => {
                let mut s = self.stuck.lock().unwrap_or_else(PoisonError::into_inner);
                if !finished.load(Ordering::SeqCst) && s.insert(key.to_string()) {
                    (self.on_stuck)(key, self.timeout.as_secs_f64());
                }
                Call::Unavailable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging;

    fn guard(timeout: Duration) -> Guarded {
        Guarded::new(
            timeout,
            logging::filesystem_stuck,
            logging::filesystem_recovered,
        )
    }

    /// Waits (at most 2 s) for `key`'s stuck call to return.
    async fn until_returned(g: &Guarded, key: &str) {
        for _ in 0..200 {
            if !g.is_stuck(key) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_hung_call_marks_its_path_stuck_until_it_returns() {
        let g = guard(Duration::from_millis(50));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let r = g
            .run("/hung", move || {
                let _ = rx.recv();
                1
            })
            .await;
        assert!(matches!(r, Call::Unavailable));
        assert!(g.is_stuck("/hung"));
        // Skipped without a new thread while stuck; other paths are unaffected.
        let ran = Arc::new(AtomicBool::new(false));
        let r2 = ran.clone();
        let r = g
            .run("/hung", move || r2.store(true, Ordering::SeqCst))
            .await;
        assert!(matches!(r, Call::Unavailable));
        assert!(!ran.load(Ordering::SeqCst));
        assert!(matches!(g.run("/fine", || 2).await, Call::Done(2)));
        // The hung call returns: the path is usable again.
        tx.send(()).unwrap();
        until_returned(&g, "/hung").await;
        assert!(!g.is_stuck("/hung"));
        assert!(matches!(g.run("/hung", || 3).await, Call::Done(3)));
    }

    #[tokio::test]
    async fn a_call_that_panics_says_why_and_leaves_its_key_usable() {
        // Time enough for the panic hook, which may print a backtrace.
        let patient = guard(Duration::from_secs(30));
        match patient.run("/p", || -> u8 { panic!("walk broke") }).await {
            Call::Panicked(why) => assert!(why.contains("walk broke"), "{why}"),
            _ => panic!("a panic is not a result"),
        }
        assert!(!patient.is_stuck("/p"));
        let g = guard(Duration::from_millis(50));
        // Timed out first, then panicked: the mark goes with the thread.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let r = g
            .run("/p", move || -> u8 {
                let _ = rx.recv();
                panic!("late")
            })
            .await;
        assert!(matches!(r, Call::Unavailable));
        assert!(g.is_stuck("/p"));
        tx.send(()).unwrap();
        until_returned(&g, "/p").await;
        assert!(!g.is_stuck("/p"), "a panicked call is not stuck for good");
        assert!(matches!(g.run("/p", || 4).await, Call::Done(4)));
    }
}
