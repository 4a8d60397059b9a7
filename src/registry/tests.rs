//! The registry's rules on their own: a registry task on a temporary store, in paused time,
//! driven through its handle as the workers and the HTTP API drive it. No Docker, no
//! containers: what needs those is in the integration tests.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use super::*;
use crate::model::{CacheChoice, CacheMedium, CachePathSource, DiscoveredEngine, Runtime};
use crate::shutdown;

struct Rig {
    handle: RegistryHandle,
    events: broadcast::Receiver<RegistryEvent>,
    store: Store,
    /// Dropped with the rig: the registry task ends.
    stop: shutdown::Trigger,
    _dir: tempfile::TempDir,
}

fn id_of(n: usize) -> String {
    format!("{n:0>64}")
}

/// Engine `n`: container port 6878 on 172.17.0.<n>, published on the host as 40000 + n.
fn discovered(n: usize) -> DiscoveredEngine {
    DiscoveredEngine {
        container_id: id_of(n),
        container_name: format!("engine-{n}"),
        image: "acestream/engine".into(),
        labels: BTreeMap::new(),
        host: "192.0.2.1".into(),
        port: 40_000 + n as u16,
        runtime: Runtime {
            pid: 1000 + n as u32,
            container_port: 6878,
            host_port: Some(40_000 + n as u16),
            ips: vec![IpAddr::from([172, 17, 0, n as u8])],
            aliases: vec![format!("alias-{n}")],
            ..Runtime::default()
        },
        cache: CacheChoice {
            path: "/cache".into(),
            written: "/cache".into(),
            source: CachePathSource::Config,
            error: None,
            medium: CacheMedium::Disk,
        },
        limits: Default::default(),
    }
}

fn start(id: &str, stream: &str) -> StreamStart {
    StreamStart {
        container_id: Some(id.to_string()),
        stream_id: stream.to_string(),
        key_type: "infohash".into(),
        key: stream.to_string(),
        ..StreamStart::default()
    }
}

fn end(stream: &str) -> StreamEnd {
    StreamEnd {
        container_id: None,
        stream_id: Some(stream.to_string()),
    }
}

/// A successful cleanup of engine `id` that freed `freed` bytes, as the janitor records it.
fn cleaned(id: &str, trigger: Trigger, freed: u64) -> CleanupRecord {
    let now = Utc::now();
    CleanupRecord {
        container_id: id.to_string(),
        container_name: "engine".into(),
        trigger,
        started_at: now,
        finished_at: now,
        duration_seconds: 0.0,
        size_before_bytes: Some(freed),
        freed_bytes: freed,
        remaining_bytes: Some(0),
        verdict: crate::model::Verdict::Cleaned,
    }
}

async fn rig_at(dir: tempfile::TempDir) -> Rig {
    let store = Store::open(&dir.path().join("state.redb"), 100).unwrap();
    let host_names = HashSet::from(["myhost".to_string()]);
    let (registry, parts) =
        Registry::new(store.clone(), host_names, Duration::from_secs(86_400)).unwrap();
    let (stop, shutdown) = shutdown::channel();
    let events = parts.events.subscribe();
    tokio::spawn(registry.run(parts.rx, shutdown));
    parts.handle.send(RegistryCmd::DockerUp(true)).await;
    Rig {
        handle: parts.handle,
        events,
        store,
        stop,
        _dir: dir,
    }
}

async fn rig() -> Rig {
    rig_at(tempfile::tempdir().unwrap()).await
}

impl Rig {
    /// Waits until the published snapshot satisfies `ok` (the registry publishes after each
    /// batch it commits).
    /// The first published snapshot that satisfies `ok`: the one reading a test asserts on.
    async fn until(&self, what: &str, ok: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        let mut rx = self.handle.subscribe();
        let snap = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| ok(s)))
            .await
            .unwrap_or_else(|_| panic!("registry never showed: {what}"))
            .expect("registry running");
        Arc::clone(&snap)
    }

    /// Syncs engines `ns` and returns the first snapshot that lists exactly them.
    async fn sync(&self, ns: &[usize]) -> Arc<Snapshot> {
        self.handle
            .send(RegistryCmd::Sync(
                ns.iter().map(|n| discovered(*n)).collect(),
            ))
            .await;
        let ids: Vec<String> = ns.iter().map(|n| id_of(*n)).collect();
        self.until("the synced engines", |s| {
            s.engines.len() == ids.len()
                && s.engines
                    .iter()
                    .all(|e| ids.contains(&e.engine.container_id))
        })
        .await
    }

    fn engine(&self, n: usize) -> EngineState {
        self.handle
            .snapshot()
            .engines
            .iter()
            .find(|e| e.engine.container_id == id_of(n))
            .cloned()
            .expect("engine in the snapshot")
    }

    fn drain_events(&mut self) -> Vec<RegistryEvent> {
        let mut v = vec![];
        while let Ok(e) = self.events.try_recv() {
            v.push(e);
        }
        v
    }
}

#[tokio::test(start_paused = true)]
async fn an_engine_takes_streams_up_to_its_cap_and_a_repeat_is_not_a_new_one() {
    let r = rig().await;
    r.sync(&[1]).await;
    let id = id_of(1);
    for i in 0..MAX_STREAMS_PER_ENGINE {
        r.handle
            .stream_started(start(&id, &format!("s{i}")))
            .await
            .unwrap();
    }
    let over = r.handle.stream_started(start(&id, "one-more")).await;
    assert_eq!(over, Err(RegistryError::TooManyStreams(id[..12].into())));
    // The same stream again is an update, not a new stream: accepted at the cap.
    let again = r.handle.stream_started(start(&id, "s0")).await.unwrap();
    assert_eq!(again.status, StreamStatus::Started);
    assert_eq!(r.engine(1).engine.streams.len(), MAX_STREAMS_PER_ENGINE);
    // One ends: room for one more.
    r.handle.stream_ended(end("s0")).await.unwrap();
    r.handle
        .stream_started(start(&id, "one-more"))
        .await
        .unwrap();
    assert_eq!(r.engine(1).engine.streams.len(), MAX_STREAMS_PER_ENGINE);
}

#[tokio::test(start_paused = true)]
async fn ending_a_stream_twice_ends_it_once() {
    let mut r = rig().await;
    r.sync(&[1]).await;
    r.drain_events();
    r.handle
        .stream_started(start(&id_of(1), "a"))
        .await
        .unwrap();
    let first = r.handle.stream_ended(end("a")).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].status, StreamStatus::Ended);
    let ended_at = first[0].ended_at.expect("ended_at");
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The proxy retries: nothing changes, not even the end time.
    let second = r.handle.stream_ended(end("a")).await.unwrap();
    assert!(second.is_empty(), "{second:?}");
    let listed = r
        .handle
        .list_streams(Some(id_of(1)), Some(StreamStatus::Ended))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].ended_at, Some(ended_at));
    // One busy and one idle transition, not two idle ones.
    let events = r.drain_events();
    let idle = events
        .iter()
        .filter(|e| matches!(e, RegistryEvent::BecameIdle { .. }))
        .count();
    let busy = events
        .iter()
        .filter(|e| matches!(e, RegistryEvent::BecameBusy { .. }))
        .count();
    assert_eq!((busy, idle), (1, 1), "{events:?}");
    // An unknown stream is an error, not a silent success.
    assert_eq!(
        r.handle.stream_ended(end("never")).await,
        Err(RegistryError::UnknownStream("never".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_event_without_a_container_id_is_resolved_by_address() {
    let r = rig().await;
    r.sync(&[1, 2]).await;
    let by = |host: &str, port: u16, stream: &str| StreamStart {
        container_id: None,
        host: host.to_string(),
        port,
        stream_id: stream.to_string(),
        key: stream.to_string(),
        ..StreamStart::default()
    };
    let cases = [
        // The container's IP and its own port (a proxy on the same network).
        (by("172.17.0.2", 6878, "ip"), 2),
        // Its name or an alias.
        (by("engine-1", 6878, "name"), 1),
        (by("ALIAS-2", 6878, "alias"), 2),
        // A name of this host and the published port.
        (by("myhost", 40_001, "published"), 1),
        // The address the agent advertises for it.
        (by("192.0.2.1", 40_002, "advertised"), 2),
    ];
    for (s, n) in cases {
        let what = s.stream_id.clone();
        let rec = r.handle.stream_started(s).await.unwrap();
        assert_eq!(rec.container_id, id_of(n), "{what}");
    }
    // The port inside the container is not the published one, and an unknown host is no one.
    for s in [by("myhost", 6878, "x"), by("198.51.100.7", 40_001, "y")] {
        let what = format!("{}:{}", s.host, s.port);
        let r = r.handle.stream_started(s).await;
        assert!(
            matches!(r, Err(RegistryError::UnknownEngine(_))),
            "{what}: {r:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_resync_removes_engines_docker_no_longer_runs_and_ends_their_streams() {
    let mut r = rig().await;
    r.sync(&[1, 2]).await;
    r.handle
        .stream_started(start(&id_of(2), "on-2"))
        .await
        .unwrap();
    r.drain_events();
    r.sync(&[1]).await;
    let events = r.drain_events();
    assert!(
        events.contains(&RegistryEvent::Removed { id: id_of(2) }),
        "{events:?}"
    );
    assert!(!events.contains(&RegistryEvent::Removed { id: id_of(1) }));
    // Its stream ended with it: nobody will send that `stream_ended`.
    let streams = r.handle.list_streams(Some(id_of(2)), None).await.unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0].status, StreamStatus::Ended);
    // And a stream event for it now is for an unknown engine.
    let late = r.handle.stream_started(start(&id_of(2), "late")).await;
    assert!(
        matches!(late, Err(RegistryError::UnknownEngine(_))),
        "{late:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_gone_engine_that_comes_back_keeps_its_counters_and_history() {
    let r = rig().await;
    r.sync(&[1]).await;
    r.handle.begin_delete(&id_of(1)).await.unwrap();
    let record = cleaned(&id_of(1), Trigger::Manual, 5_000);
    r.handle.finish_cleanup(record, Some(0)).await.unwrap();
    r.until("the cleanup counted", |s| {
        s.engines
            .iter()
            .any(|e| e.engine.container_id == id_of(1) && e.engine.cleanups_total == 1)
    })
    .await;
    r.sync(&[2]).await;
    // Docker starts the same container again (same id).
    let snap = r.sync(&[1, 2]).await;
    let e = find(&snap, &id_of(1)).expect("engine 1");
    assert_eq!(e.engine.cleanups_total, 1);
    assert_eq!(e.engine.cache_freed_bytes_total, 5_000);
    assert!(e.running);
    let history = {
        let store = r.store.clone();
        tokio::task::spawn_blocking(move || store.history(&id_of(1), 10))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].freed_bytes, 5_000);
}

#[tokio::test(start_paused = true)]
async fn a_delete_is_begun_only_on_an_idle_engine_and_blocks_a_restart_until_recorded() {
    let r = rig().await;
    r.sync(&[1, 2]).await;
    let (one, two) = (id_of(1), id_of(2));
    r.handle.stream_started(start(&two, "busy")).await.unwrap();
    assert!(matches!(
        r.handle.begin_delete(&two).await,
        Err(RegistryError::HasStreams(_))
    ));
    // A client the connection probe saw counts as a stream too.
    r.handle
        .send(RegistryCmd::Connections {
            id: one.clone(),
            streams: vec!["conn:10.0.0.9:5000".into()],
        })
        .await;
    assert!(matches!(
        r.handle.begin_delete(&one).await,
        Err(RegistryError::HasStreams(_))
    ));
    r.handle
        .send(RegistryCmd::Connections {
            id: one.clone(),
            streams: vec![],
        })
        .await;
    r.handle.begin_delete(&one).await.unwrap();
    r.until("engine 1 cleaning", |s| {
        s.engines
            .iter()
            .any(|e| e.engine.container_id == id_of(1) && e.cleaning)
    })
    .await;
    // No restart while it runs (one delete per engine at a time is the janitor's lock).
    let restart = r
        .handle
        .begin_restart(&one, HealTrigger::Manual, Utc::now())
        .await;
    assert!(
        matches!(restart, Err(RegistryError::Busy(..))),
        "{restart:?}"
    );
    // The record of the delete ends it.
    let record = cleaned(&one, Trigger::Sweep, 10);
    r.handle.finish_cleanup(record, Some(0)).await.unwrap();
    let e = r.engine(1);
    assert!(!e.cleaning);
    assert_eq!(e.engine.cleanups_total, 1);
    r.handle
        .begin_restart(&one, HealTrigger::Manual, Utc::now())
        .await
        .unwrap();
    assert!(matches!(
        r.handle.begin_delete(&id_of(9)).await,
        Err(RegistryError::UnknownEngine(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_restart_is_counted_before_docker_is_asked_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let r = rig_at(dir).await;
    r.sync(&[1]).await;
    let id = id_of(1);
    let began = Utc::now();
    let start = r
        .handle
        .begin_restart(
            &id,
            HealTrigger::Unhealthy,
            began - chrono::Duration::hours(1),
        )
        .await
        .unwrap();
    let approved = Utc::now();
    assert_eq!(start.container_name, "engine-1");
    let snap = r
        .until("the restart pending", |s| {
            s.engines
                .iter()
                .any(|e| e.engine.container_id == id_of(1) && e.heal.restart_pending)
        })
        .await;
    // The registry stamps the restart with its own (wall) clock, within the call.
    let recent = find(&snap, &id_of(1))
        .expect("engine 1")
        .heal
        .recent
        .clone();
    assert_eq!(recent.len(), 1, "{recent:?}");
    assert!(began <= recent[0] && recent[0] <= approved, "{recent:?}");
    // One restart at a time, and no delete meanwhile.
    assert!(matches!(
        r.handle
            .begin_restart(&id, HealTrigger::Manual, began)
            .await,
        Err(RegistryError::Busy(..))
    ));
    assert!(matches!(
        r.handle.begin_delete(&id).await,
        Err(RegistryError::Busy(..))
    ));
    // The agent stops before Docker answers: the count was committed with the approval.
    let dir = stopped(r).await;
    let reopened = {
        let store = Store::open(&path.join("state.redb"), 100).unwrap();
        let loaded = tokio::task::spawn_blocking(move || store.load())
            .await
            .unwrap()
            .unwrap();
        loaded
            .engines
            .into_iter()
            .find(|p| p.engine.container_id == id)
            .expect("engine in the store")
    };
    assert_eq!(reopened.heal.recent, recent);
    assert!(reopened.heal.restart_pending);
    drop(dir);
}

#[tokio::test(start_paused = true)]
async fn a_stream_started_during_a_delete_is_answered_once_the_delete_is_recorded() {
    let r = rig().await;
    r.sync(&[1, 2]).await;
    let one = id_of(1);
    r.handle.begin_delete(&one).await.unwrap();
    let h = r.handle.clone();
    let answer = tokio::spawn(async move { h.stream_started(start(&id_of(1), "s")).await });
    // Another engine's stream is answered at once meanwhile.
    r.handle
        .stream_started(start(&id_of(2), "t"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!answer.is_finished(), "answered while the delete runs");
    // The stream is known at once, though: no new delete begins on the engine.
    assert!(matches!(
        r.handle.begin_delete(&id_of(1)).await,
        Err(RegistryError::HasStreams(_))
    ));
    r.handle
        .finish_cleanup(cleaned(&one, Trigger::Sweep, 10), Some(0))
        .await
        .unwrap();
    let rec = tokio::time::timeout(Duration::from_secs(1), answer)
        .await
        .expect("answered once the delete is recorded")
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, StreamStatus::Started);
    let e = r.engine(1);
    assert!(!e.cleaning);
    assert_eq!(e.engine.streams, vec!["s".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn a_held_answer_is_given_when_the_delete_never_reports_or_the_engine_goes() {
    let r = rig().await;
    r.sync(&[1, 2]).await;
    r.handle.begin_delete(&id_of(1)).await.unwrap();
    r.handle.begin_delete(&id_of(2)).await.unwrap();
    let h = r.handle.clone();
    let late = tokio::spawn(async move { h.stream_started(start(&id_of(1), "a")).await });
    let h = r.handle.clone();
    let gone = tokio::spawn(async move { h.stream_started(start(&id_of(2), "b")).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Engine 2's container is gone: nothing runs in it any more.
    r.sync(&[1]).await;
    tokio::time::timeout(Duration::from_secs(1), gone)
        .await
        .expect("answered once the engine is gone")
        .unwrap()
        .unwrap();
    tokio::time::sleep(STREAM_ACK_WAIT - Duration::from_secs(3)).await;
    assert!(!late.is_finished(), "answered before STREAM_ACK_WAIT");
    let rec = tokio::time::timeout(Duration::from_secs(10), late)
        .await
        .expect("answered within the retry tick after STREAM_ACK_WAIT")
        .unwrap()
        .unwrap();
    assert_eq!(rec.container_id, id_of(1));
}

/// Stops the rig's registry and waits until its task is gone (with its hold on the store);
/// the store's directory is handed back for a reopen.
async fn stopped(r: Rig) -> tempfile::TempDir {
    let Rig {
        stop,
        handle,
        events,
        store,
        _dir: dir,
    } = r;
    let mut published = handle.subscribe();
    drop((handle, events, store));
    stop.fire();
    // The registry's snapshot sender goes with its task (and its hold on the store).
    while published.changed().await.is_ok() {}
    dir
}

#[tokio::test(start_paused = true)]
async fn the_cache_choice_is_kept_whole_and_a_refused_or_unknown_one_is_never_cleanable() {
    let r = rig().await;
    let snap = r.sync(&[1]).await;
    let e = find(&snap, &id_of(1)).expect("engine 1");
    assert_eq!(e.cache_to_clean(), Ok(&discovered(1).cache));
    assert_eq!(
        (
            e.engine.cache_path.as_str(),
            e.engine.cache_path_source,
            e.engine.cache_medium
        ),
        ("/cache", Some(CachePathSource::Config), CacheMedium::Disk)
    );

    // A label naming a dangerous path: refused whole, and said where `/engines` shows it.
    let mut refused = discovered(1);
    refused.cache = CacheChoice {
        path: "/etc".into(),
        written: "/etc".into(),
        source: CachePathSource::Label,
        error: Some("invalid label acestream.cache_path: /etc is a system directory".into()),
        medium: CacheMedium::Disk,
    };
    r.handle
        .send(RegistryCmd::Upsert(Box::new(refused.clone())))
        .await;
    let snap = r
        .until("the refused choice", |s| {
            find(s, &id_of(1)).is_some_and(|e| e.engine.cache_path == "/etc")
        })
        .await;
    let e = find(&snap, &id_of(1)).expect("engine 1");
    let reason = refused.cache.error.as_deref().unwrap();
    assert_eq!(e.cache_to_clean(), Err(reason));
    assert_eq!(e.engine.last_cleanup_error.as_deref(), Some(reason));
    assert_eq!(e.engine.cache_path_source, Some(CachePathSource::Label));

    // Fixed: cleanable again.
    r.sync(&[1]).await;
    r.until("the fixed choice", |s| {
        find(s, &id_of(1)).is_some_and(|e| e.cache_to_clean().is_ok())
    })
    .await;

    // Remembered from the store only: the path it last had is shown, none is cleanable until
    // discovery has read the container again.
    let dir = stopped(r).await;
    let r = rig_at(dir).await;
    let e = r.engine(1);
    assert!(!e.running);
    assert_eq!(e.engine.cache_path, "/cache");
    let why = e.cache_to_clean().unwrap_err();
    assert!(why.contains("not known yet"), "{why}");
    r.sync(&[1]).await;
    let snap = r
        .until("discovery's choice again", |s| {
            find(s, &id_of(1)).is_some_and(|e| e.running)
        })
        .await;
    let e = find(&snap, &id_of(1)).expect("engine 1");
    assert_eq!(e.cache_to_clean(), Ok(&discovered(1).cache));
}

#[tokio::test(start_paused = true)]
async fn only_a_cleanup_is_counted_and_kept_the_other_verdicts_bring_a_size() {
    let r = rig().await;
    r.sync(&[1]).await;
    let id = id_of(1);
    for (n, verdict) in [
        Verdict::ClientAtDelete,
        Verdict::BelowMin,
        Verdict::NothingToClean,
    ]
    .into_iter()
    .enumerate()
    {
        r.handle.begin_delete(&id).await.unwrap();
        let size = 100 * (n as u64 + 1);
        let record = CleanupRecord {
            verdict: verdict.clone(),
            freed_bytes: 0,
            ..cleaned(&id, Trigger::Manual, size)
        };
        r.handle.finish_cleanup(record, Some(size)).await.unwrap();
        let snap = r
            .until("the new size", |s| {
                find(s, &id).is_some_and(|e| e.engine.cache_current_bytes == Some(size))
            })
            .await;
        let e = find(&snap, &id).expect("engine 1");
        assert!(!e.cleaning, "{verdict:?}");
        assert_eq!(
            (e.engine.cleanups_total, e.engine.cleanup_failures_total),
            (0, 0),
            "{verdict:?}"
        );
        assert_eq!(e.engine.last_cache_cleanup, None, "{verdict:?}");
        // Found empty is known empty; a cache kept or left for a client is not.
        assert_eq!(
            e.cache_empty_since.is_some(),
            verdict == Verdict::NothingToClean,
            "{verdict:?}"
        );
    }
    r.handle.begin_delete(&id).await.unwrap();
    let failed = CleanupRecord {
        verdict: Verdict::Failed("cache cleanup failed: x".into()),
        ..cleaned(&id, Trigger::Sweep, 0)
    };
    r.handle.finish_cleanup(failed, None).await.unwrap();
    let snap = r
        .until("the failure counted", |s| {
            find(s, &id).is_some_and(|e| e.engine.cleanup_failures_total == 1)
        })
        .await;
    let e = find(&snap, &id).expect("engine 1");
    assert_eq!(
        e.engine.last_cleanup_error.as_deref(),
        Some("cache cleanup failed: x")
    );
    assert_eq!(e.engine.cleanups_total, 0);
    let history = {
        let store = r.store.clone();
        tokio::task::spawn_blocking(move || store.history(&id_of(1), 10))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(history.len(), 1, "{history:?}");
    assert!(history[0].verdict.is_failure());
}
