//! The registry's stream records, indexed so that a stream event costs the same with 10 or
//! 11,000 records kept: started streams by engine, ended ones by the time they ended (the cap
//! on ended records drops the oldest). Owned by the registry task; no locking.

use std::collections::{BTreeSet, HashMap};

use crate::model::{StreamRecord, StreamStatus, Timestamp};

#[derive(Default)]
pub struct StreamTable {
    by_id: HashMap<String, StreamRecord>,
    /// Container id → ids of its started streams (sorted: `Engine::streams` is sorted).
    started: HashMap<String, BTreeSet<String>>,
    /// (ended at, id) of every ended record, oldest first.
    ended: BTreeSet<(Timestamp, String)>,
}

/// The order in which ended records are dropped: when they ended (the start for a record
/// without an end time, which only an old store could hold), then id.
fn ended_key(r: &StreamRecord) -> (Timestamp, String) {
    (r.ended_at.unwrap_or(r.started_at), r.id.clone())
}

impl StreamTable {
    pub fn new(records: impl IntoIterator<Item = StreamRecord>) -> StreamTable {
        let mut t = StreamTable::default();
        for r in records {
            t.insert(r);
        }
        t
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn get(&self, id: &str) -> Option<&StreamRecord> {
        self.by_id.get(id)
    }

    /// The statistics of a record, to change in place: nothing the indexes key on (status,
    /// engine, times) can change through them.
    pub fn stats_mut(&mut self, id: &str) -> Option<&mut crate::model::StreamStats> {
        self.by_id.get_mut(id).map(|r| &mut r.stats)
    }

    pub fn values(&self) -> impl Iterator<Item = &StreamRecord> {
        self.by_id.values()
    }

    fn index(&mut self, r: &StreamRecord) {
        match r.status {
            StreamStatus::Started => {
                self.started
                    .entry(r.container_id.clone())
                    .or_default()
                    .insert(r.id.clone());
            }
            StreamStatus::Ended => {
                self.ended.insert(ended_key(r));
            }
        }
    }

    fn unindex(&mut self, r: &StreamRecord) {
        match r.status {
            StreamStatus::Started => {
                if let Some(set) = self.started.get_mut(&r.container_id) {
                    set.remove(&r.id);
                    if set.is_empty() {
                        self.started.remove(&r.container_id);
                    }
                }
            }
            StreamStatus::Ended => {
                self.ended.remove(&ended_key(r));
            }
        }
    }

    /// Inserts or replaces the record with this id; returns the one replaced.
    pub fn insert(&mut self, r: StreamRecord) -> Option<StreamRecord> {
        let previous = self.remove(&r.id);
        self.index(&r);
        self.by_id.insert(r.id.clone(), r);
        previous
    }

    pub fn remove(&mut self, id: &str) -> Option<StreamRecord> {
        let r = self.by_id.remove(id)?;
        self.unindex(&r);
        Some(r)
    }

    /// Marks a started stream ended at `at`; returns the updated record, `None` when there is
    /// no such stream or it had ended already.
    pub fn end(&mut self, id: &str, at: Timestamp) -> Option<StreamRecord> {
        let mut r = self
            .by_id
            .get(id)
            .filter(|r| r.status == StreamStatus::Started)?
            .clone();
        self.unindex(&r);
        r.status = StreamStatus::Ended;
        r.ended_at = Some(at);
        self.index(&r);
        self.by_id.insert(id.to_string(), r.clone());
        Some(r)
    }

    /// Ids of the engine's started streams, sorted.
    pub fn started_ids(&self, container_id: &str) -> Vec<String> {
        self.started
            .get(container_id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn started_count(&self, container_id: &str) -> usize {
        self.started.get(container_id).map_or(0, BTreeSet::len)
    }

    pub fn ended_count(&self) -> usize {
        self.ended.len()
    }

    /// Removes the ended record that ended first; returns its id.
    pub fn pop_oldest_ended(&mut self) -> Option<String> {
        let (_, id) = self.ended.first()?.clone();
        self.remove(&id);
        Some(id)
    }

    /// Keeps the records `keep` accepts (a rare full pass: store pruning).
    pub fn retain(&mut self, keep: impl Fn(&StreamRecord) -> bool) {
        let gone: Vec<String> = self
            .by_id
            .values()
            .filter(|r| !keep(r))
            .map(|r| r.id.clone())
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(s: i64) -> Timestamp {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn rec(id: &str, container: &str, started: i64) -> StreamRecord {
        StreamRecord {
            id: id.into(),
            key_type: "content_id".into(),
            key: "k".into(),
            container_id: container.into(),
            playback_session_id: String::new(),
            stat_url: String::new(),
            command_url: String::new(),
            is_live: true,
            started_at: at(started),
            ended_at: None,
            status: StreamStatus::Started,
            stats: Default::default(),
        }
    }

    /// The indexes agree with a plain scan after every kind of change.
    fn check(t: &StreamTable) {
        let mut containers: Vec<&str> = t.values().map(|r| r.container_id.as_str()).collect();
        containers.sort();
        containers.dedup();
        for c in containers {
            let mut want: Vec<String> = t
                .values()
                .filter(|r| r.container_id == c && r.status == StreamStatus::Started)
                .map(|r| r.id.clone())
                .collect();
            want.sort();
            assert_eq!(t.started_ids(c), want, "{c}");
            assert_eq!(t.started_count(c), want.len(), "{c}");
        }
        let ended = t
            .values()
            .filter(|r| r.status == StreamStatus::Ended)
            .count();
        assert_eq!(t.ended_count(), ended);
    }

    #[test]
    fn indexes_follow_insert_end_move_remove_and_retain() {
        let mut t = StreamTable::new([rec("s1", "a", 1), rec("s2", "a", 2), rec("s3", "b", 3)]);
        check(&t);
        assert_eq!(t.started_ids("a"), ["s1", "s2"]);
        assert_eq!(t.end("s1", at(10)).map(|r| r.ended_at), Some(Some(at(10))));
        assert_eq!(t.end("s1", at(11)), None, "ended once");
        assert_eq!(t.end("nope", at(11)), None);
        check(&t);
        assert_eq!(t.started_ids("a"), ["s2"]);
        // s2 moves to engine b.
        let previous = t.insert(rec("s2", "b", 4));
        assert_eq!(previous.map(|p| p.container_id), Some("a".into()));
        check(&t);
        assert_eq!(t.started_count("a"), 0);
        assert_eq!(t.started_ids("b"), ["s2", "s3"]);
        // A restarted id that had ended is started again.
        t.insert(rec("s1", "a", 12));
        check(&t);
        assert_eq!(t.ended_count(), 0);
        t.end("s3", at(20));
        t.end("s1", at(15));
        check(&t);
        assert_eq!(t.pop_oldest_ended(), Some("s1".into()));
        assert_eq!(t.pop_oldest_ended(), Some("s3".into()));
        assert_eq!(t.pop_oldest_ended(), None);
        check(&t);
        assert_eq!(t.len(), 1);
        t.retain(|r| r.container_id != "b");
        assert_eq!(t.len(), 0);
        check(&t);
    }
}
