//! The agent's redb store (docs/architecture.md#store). Owns the file at `store.path`: engines with
//! their counters, per-engine cleanup history, stream records and the last sweep time, so that none
//! of it is lost across restarts or `kill -9`.
//!
//! Every public call opens, uses and commits one transaction synchronously; callers run it in
//! `spawn_blocking` and never hold a transaction across `.await`. A file that cannot be opened
//! (corrupt, newer format or schema, locked, no permission) is refused with an error naming it,
//! and is never deleted or recreated. This module does not decide what to keep: the registry
//! hands it whole records in a `Batch`.

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::fmt::Display;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use redb::{
    Database, DatabaseError, MultimapTableHandle, ReadableDatabase, ReadableTable, StorageError,
    TableDefinition, TableError, TableHandle,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{
    CleanupRecord, Engine, HealBook, HealRecord, StreamRecord, Timestamp, TriggerCounters,
};

/// Layout of the tables and their values. Bump it when either changes in a way an older agent
/// cannot read; an older agent then refuses the file instead of misreading it.
const SCHEMA_VERSION: u64 = 1;

// `meta` must keep this key and value type in every future schema: it is what an old agent reads
// to learn that it is too old.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ENGINES: TableDefinition<&str, &[u8]> = TableDefinition::new("engines");
/// Keyed by (container id, seq): a range over one id yields its history oldest first.
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("cleanup_history");
/// Restarts by heal, keyed as `HISTORY`. Stores written before heal lack it: a write creates
/// it, a read of a missing one is an empty history (older agents ignore the extra table).
const HEALS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("heal_history");
const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");

const META_SCHEMA_VERSION: &str = "schema_version";
const META_LAST_SWEEP: &str = "last_sweep";

// redb's default cache may grow to 1 GiB; the store holds at most a few MiB, and this is a
// small host daemon.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// An engine as kept across restarts: the `/engines` item, its per-trigger counters, and when
/// Docker stopped listing it (drives retention).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersistedEngine {
    pub engine: Engine,
    pub counters: TriggerCounters,
    pub gone_at: Option<Timestamp>,
    /// Absent in records written before heal.
    #[serde(default)]
    pub heal: HealBook,
}

/// Everything the registry changed since its last commit; written in one transaction.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Upserted by full container id.
    pub engines: Vec<PersistedEngine>,
    /// Removed with their history; applied after `engines` and `records`, so a delete wins.
    pub delete_engines: Vec<String>,
    /// Appended to each record's engine history.
    pub records: Vec<CleanupRecord>,
    /// Appended to each record's engine heal history.
    pub heal_records: Vec<HealRecord>,
    /// Upserted by stream id.
    pub streams: Vec<StreamRecord>,
    /// Applied after `streams`, so a delete wins.
    pub delete_streams: Vec<String>,
    pub last_sweep: Option<Timestamp>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.engines.is_empty()
            && self.delete_engines.is_empty()
            && self.records.is_empty()
            && self.heal_records.is_empty()
            && self.streams.is_empty()
            && self.delete_streams.is_empty()
            && self.last_sweep.is_none()
    }
}

/// What the registry starts from. Engines are sorted by container id, streams by stream id.
#[derive(Debug, Default)]
pub struct Loaded {
    pub engines: Vec<PersistedEngine>,
    pub streams: Vec<StreamRecord>,
    pub last_sweep: Option<Timestamp>,
}

/// Why a store file could not be opened; `StoreError::Open` says it in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenErrorKind {
    /// Not a redb file, truncated, or failed its integrity check.
    Corrupt,
    /// Written by a newer redb file format or a newer store schema (or an old redb format).
    UpgradeRequired,
    /// Locked by another handle, in this process or another one.
    AlreadyOpen,
    PermissionDenied,
    /// A valid redb database that holds someone else's tables.
    NotAStore,
    Io,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {path}: {reason}", path = path.display())]
    Open {
        path: PathBuf,
        kind: OpenErrorKind,
        reason: String,
        #[source]
        source: Option<Box<dyn StdError + Send + Sync>>,
    },
    /// A transaction, table or commit failed (disk full, read-only, I/O). The message carries
    /// redb's error text; it is not kept as a source, so error chains don't print it twice.
    #[error("store {path}: {message}", path = path.display())]
    Io { path: PathBuf, message: String },
    #[error("store {path}: record for {key} is unreadable: {message}", path = path.display())]
    Decode {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Opens the database file; `true`: create it when missing (the first open only).
type Opener = dyn Fn(bool) -> Result<Database, DatabaseError> + Send + Sync;

/// Handle to the open store; clones share one `Database`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    history_per_engine: usize,
    open_db: Box<Opener>,
    // None after a failed operation. redb answers every call after an I/O error with
    // `PreviousIo`, and refuses writes after a failed commit, until the file is closed and
    // reopened; dropping the handle here and reopening on the next call is what lets a commit
    // succeed again once the disk has space.
    db: Mutex<Option<Arc<Database>>>,
}

impl Store {
    /// Opens the store at `path`, creating the file (and its directory) if missing.
    pub fn open(path: &Path, history_per_engine: usize) -> Result<Store, StoreError> {
        let file = path.to_path_buf();
        let opener = move |create: bool| {
            let mut b = Database::builder();
            b.set_cache_size(CACHE_BYTES)
                // Without it redb trusts a file that was closed cleanly and may panic on one
                // damaged since; with it damage is reported as `Corrupted` before anything is
                // written. It reads the whole file, which is a few MiB at most.
                .set_check_integrity_on_open(true);
            if create {
                b.create(&file)
            } else {
                b.open(&file)
            }
        };
        Store::open_with(path, history_per_engine, Box::new(opener))
    }

    fn open_with(
        path: &Path,
        history_per_engine: usize,
        open_db: Box<Opener>,
    ) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    let kind = match e.kind() {
                        io::ErrorKind::PermissionDenied => OpenErrorKind::PermissionDenied,
                        _ => OpenErrorKind::Io,
                    };
                    let reason = format!("cannot create directory {}: {e}", dir.display());
                    open_error(path, kind, reason, Some(Box::new(e)))
                })?;
            }
        }
        let inner = Inner {
            path: path.to_path_buf(),
            history_per_engine,
            open_db,
            db: Mutex::new(None),
        };
        let db = inner.connect(true)?;
        *inner.slot() = Some(db);
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn load(&self) -> Result<Loaded, StoreError> {
        self.inner.run("load", |db| {
            let txn = db.begin_read()?;
            let mut loaded = Loaded::default();
            for entry in txn.open_table(ENGINES)?.iter()? {
                let (key, value) = entry?;
                let key = key.value();
                loaded
                    .engines
                    .push(decode(value.value(), || format!("engine {key}"))?);
            }
            for entry in txn.open_table(STREAMS)?.iter()? {
                let (key, value) = entry?;
                let key = key.value();
                loaded
                    .streams
                    .push(decode(value.value(), || format!("stream {key}"))?);
            }
            if let Some(value) = txn.open_table(META)?.get(META_LAST_SWEEP)? {
                loaded.last_sweep = Some(decode(value.value(), || META_LAST_SWEEP.to_string())?);
            }
            Ok(loaded)
        })
    }

    /// Writes the whole batch in one transaction and returns once it is durable (fsync).
    pub fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let keep = self.inner.history_per_engine;
        self.inner.run("write", |db| {
            let txn = db.begin_write()?;
            {
                let mut engines = txn.open_table(ENGINES)?;
                let mut history = txn.open_table(HISTORY)?;
                let mut heals = txn.open_table(HEALS)?;
                let mut streams = txn.open_table(STREAMS)?;
                let mut meta = txn.open_table(META)?;

                for e in &batch.engines {
                    let id = e.engine.container_id.as_str();
                    engines.insert(id, encode(e, || format!("engine {id}"))?.as_slice())?;
                }

                append(&mut history, &batch.records, |r| &r.container_id, keep)?;
                append(&mut heals, &batch.heal_records, |r| &r.container_id, keep)?;

                for id in &batch.delete_engines {
                    engines.remove(id.as_str())?;
                    history.retain_in(history_range(id), |_, _| false)?;
                    heals.retain_in(history_range(id), |_, _| false)?;
                }

                for s in &batch.streams {
                    let id = s.id.as_str();
                    streams.insert(id, encode(s, || format!("stream {id}"))?.as_slice())?;
                }
                for id in &batch.delete_streams {
                    streams.remove(id.as_str())?;
                }

                if let Some(at) = &batch.last_sweep {
                    meta.insert(
                        META_LAST_SWEEP,
                        encode(at, || META_LAST_SWEEP.to_string())?.as_slice(),
                    )?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// The engine's cleanup records, newest first, at most `limit`.
    pub fn history(
        &self,
        container_id: &str,
        limit: usize,
    ) -> Result<Vec<CleanupRecord>, StoreError> {
        self.inner.run("read history", |db| {
            read_history(db, HISTORY, container_id, limit)
        })
    }

    /// The engine's heal records (restarts by the agent), newest first, at most `limit`.
    pub fn heals(&self, container_id: &str, limit: usize) -> Result<Vec<HealRecord>, StoreError> {
        self.inner.run("read heal history", |db| {
            read_history(db, HEALS, container_id, limit)
        })
    }

    /// Removes engines gone for longer than `retention` (with their history) and streams ended
    /// longer ago than that. Returns how many engines and streams were removed.
    pub fn prune(&self, now: Timestamp, retention: chrono::Duration) -> Result<usize, StoreError> {
        // A retention so long that the cutoff precedes the calendar keeps everything.
        let Some(cutoff) = now.checked_sub_signed(retention) else {
            return Ok(0);
        };
        self.inner.run("prune", |db| {
            let txn = db.begin_write()?;
            let removed;
            {
                let mut engines = txn.open_table(ENGINES)?;
                let mut history = txn.open_table(HISTORY)?;
                let mut heals = txn.open_table(HEALS)?;
                let mut streams = txn.open_table(STREAMS)?;

                let mut old_engines = Vec::new();
                for entry in engines.iter()? {
                    let (key, value) = entry?;
                    let key = key.value();
                    let e: PersistedEngine = decode(value.value(), || format!("engine {key}"))?;
                    if e.gone_at.is_some_and(|at| at < cutoff) {
                        old_engines.push(key.to_string());
                    }
                }
                let mut old_streams = Vec::new();
                for entry in streams.iter()? {
                    let (key, value) = entry?;
                    let key = key.value();
                    let s: StreamRecord = decode(value.value(), || format!("stream {key}"))?;
                    if s.ended_at.is_some_and(|at| at < cutoff) {
                        old_streams.push(key.to_string());
                    }
                }

                for id in &old_engines {
                    engines.remove(id.as_str())?;
                    history.retain_in(history_range(id), |_, _| false)?;
                    heals.retain_in(history_range(id), |_, _| false)?;
                }
                for id in &old_streams {
                    streams.remove(id.as_str())?;
                }
                removed = old_engines.len() + old_streams.len();
            }
            if removed == 0 {
                // Nothing to make durable; skip the fsync.
                txn.abort()?;
            } else {
                txn.commit()?;
            }
            Ok(removed)
        })
    }
}

impl Inner {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Database>>> {
        // The guarded value is a plain Option, valid whatever a panicking holder was doing.
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens the file and checks (or sets up) the schema.
    fn connect(&self, create: bool) -> Result<Arc<Database>, StoreError> {
        // redb may panic on damage its checks do not catch; that is a corrupt file, not a bug
        // worth taking the agent down without naming the file.
        let opened = panic::catch_unwind(AssertUnwindSafe(|| (self.open_db)(create)));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(database_error(&self.path, e)),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                return Err(open_error(
                    &self.path,
                    OpenErrorKind::Corrupt,
                    format!("{CORRUPT} (redb failed reading it: {what})"),
                    None,
                ));
            }
        };
        init_schema(&db, &self.path)?;
        Ok(Arc::new(db))
    }

    /// Runs one operation against the database, reopening it first if a previous one failed.
    fn run<T>(
        &self,
        what: &str,
        op: impl FnOnce(&Database) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let db = {
            let mut slot = self.slot();
            match &*slot {
                Some(db) => db.clone(),
                None => {
                    // Never `create` here: a store whose file is gone (its filesystem
                    // unmounted under the agent, the file removed) is not silently replaced
                    // by an empty one; the agent keeps its changes and retries.
                    let db = self.connect(false).map_err(|e| {
                        let reason = match e {
                            StoreError::Open { reason, .. } => reason,
                            other => other.to_string(),
                        };
                        StoreError::Io {
                            path: self.path.clone(),
                            message: format!(
                                "{what} failed: cannot reopen it after an earlier error: {reason}"
                            ),
                        }
                    })?;
                    *slot = Some(db.clone());
                    db
                }
            }
        };
        match op(&db) {
            Ok(v) => Ok(v),
            Err(Fail::Redb(e)) => {
                let mut slot = self.slot();
                if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, &db)) {
                    *slot = None;
                }
                Err(StoreError::Io {
                    path: self.path.clone(),
                    message: format!("{what} failed: {e}"),
                })
            }
            Err(Fail::Encode { key, message }) => Err(StoreError::Io {
                path: self.path.clone(),
                message: format!("{what} failed: cannot encode {key}: {message}"),
            }),
            Err(Fail::Decode { key, message }) => Err(StoreError::Decode {
                path: self.path.clone(),
                key,
                message,
            }),
        }
    }
}

/// Failure inside an operation, before it gets the store's path attached.
enum Fail {
    Redb(redb::Error),
    Encode { key: String, message: String },
    Decode { key: String, message: String },
}

impl<E: Into<redb::Error>> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail::Redb(e.into())
    }
}

fn encode<T: Serialize>(value: &T, key: impl FnOnce() -> String) -> Result<Vec<u8>, Fail> {
    serde_json::to_vec(value).map_err(|e| Fail::Encode {
        key: key(),
        message: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8], key: impl FnOnce() -> String) -> Result<T, Fail> {
    serde_json::from_slice(bytes).map_err(|e| Fail::Decode {
        key: key(),
        message: e.to_string(),
    })
}

fn history_range(id: &str) -> std::ops::RangeInclusive<(&str, u64)> {
    (id, 0)..=(id, u64::MAX)
}

type HistoryTable<'txn> = redb::Table<'txn, (&'static str, u64), &'static [u8]>;

/// Appends records to their engines' histories in `table` and trims each engine touched to
/// its newest `keep`.
fn append<R: Serialize>(
    table: &mut HistoryTable<'_>,
    records: &[R],
    id_of: impl Fn(&R) -> &String,
    keep: usize,
) -> Result<(), Fail> {
    let mut touched = BTreeSet::new();
    for r in records {
        let id = id_of(r).as_str();
        // Trimming keeps the newest entry, so the last key is the highest seq ever given to
        // this engine and seq keeps growing across restarts.
        let next = match table.range(history_range(id))?.next_back() {
            Some(last) => last?.0.value().1 + 1,
            None => 0,
        };
        let value = encode(r, || format!("{} {id}#{next}", table.name()))?;
        table.insert((id, next), value.as_slice())?;
        touched.insert(id);
    }
    for id in touched {
        trim_history(table, id, keep)?;
    }
    Ok(())
}

/// One engine's records of a history table, newest first, at most `limit`; a table that does
/// not exist yet (a store from before it) is an empty history.
fn read_history<R: DeserializeOwned>(
    db: &Database,
    def: TableDefinition<(&str, u64), &[u8]>,
    id: &str,
    limit: usize,
) -> Result<Vec<R>, Fail> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(vec![]),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for entry in table.range(history_range(id))?.rev().take(limit) {
        let (key, value) = entry?;
        let (id, seq) = key.value();
        out.push(decode(value.value(), || {
            format!("{} {id}#{seq}", def.name())
        })?);
    }
    Ok(out)
}

/// Drops the oldest entries of one engine's history beyond `keep`.
fn trim_history(history: &mut HistoryTable<'_>, id: &str, keep: usize) -> Result<(), Fail> {
    let mut seqs = Vec::new();
    for entry in history.range(history_range(id))? {
        seqs.push(entry?.0.value().1);
    }
    let excess = seqs.len().saturating_sub(keep);
    for seq in &seqs[..excess] {
        history.remove((id, *seq))?;
    }
    Ok(())
}

const CORRUPT: &str = "the file is corrupt or not a redb database; it was left untouched \
                       (move it aside to start with an empty store)";

fn open_error(
    path: &Path,
    kind: OpenErrorKind,
    reason: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
) -> StoreError {
    StoreError::Open {
        path: path.to_path_buf(),
        kind,
        reason,
        source,
    }
}

/// Turns redb's open error into words an operator can act on.
fn database_error(path: &Path, e: DatabaseError) -> StoreError {
    let (kind, reason) = match &e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => (
            OpenErrorKind::AlreadyOpen,
            "the file is already open, is another acestream-agent running?".to_string(),
        ),
        DatabaseError::UpgradeRequired(v) => (
            OpenErrorKind::UpgradeRequired,
            format!(
                "the file uses the old redb file format {v}, which this build cannot read \
                 (upgrade required: convert it with an older redb or move it aside); \
                 it was left untouched"
            ),
        ),
        DatabaseError::Storage(s) => storage_reason(s),
        // RepairAborted: our repair callback never aborts; TransactionInProgress: nothing else
        // has the new handle. Both would still be worth a clear line.
        other => (
            OpenErrorKind::Io,
            format!("redb refused to open it: {other}"),
        ),
    };
    open_error(path, kind, reason, Some(Box::new(e)))
}

fn storage_reason(s: &StorageError) -> (OpenErrorKind, String) {
    match s {
        // redb reports a header of a format newer than it knows as corruption; tell them apart,
        // because the remedy is an upgrade, not moving the file aside.
        StorageError::Corrupted(msg) if msg.starts_with("Expected file format version") => (
            OpenErrorKind::UpgradeRequired,
            format!(
                "the file was written by a newer redb ({msg}); upgrade required: run a newer \
                 acestream-agent; it was left untouched"
            ),
        ),
        StorageError::Corrupted(_) => (OpenErrorKind::Corrupt, CORRUPT.to_string()),
        // A bad magic number is InvalidData; a file shorter than a header is UnexpectedEof.
        StorageError::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            (OpenErrorKind::Corrupt, CORRUPT.to_string())
        }
        StorageError::Io(e) => io_reason(e),
        other => (OpenErrorKind::Io, format!("storage error: {other}")),
    }
}

fn io_reason(e: &io::Error) -> (OpenErrorKind, String) {
    match e.kind() {
        io::ErrorKind::PermissionDenied => (
            OpenErrorKind::PermissionDenied,
            "permission denied: the agent's user must be able to read and write the file \
             and create files in its directory"
                .to_string(),
        ),
        io::ErrorKind::ReadOnlyFilesystem => (
            OpenErrorKind::Io,
            "the file system is read-only; the store must be writable".to_string(),
        ),
        io::ErrorKind::StorageFull => (
            OpenErrorKind::Io,
            "no space left on the device holding it".to_string(),
        ),
        io::ErrorKind::NotFound => (
            OpenErrorKind::Io,
            "the file is gone (its file system unmounted, or the file removed); an empty store \
             is not created in its place"
                .to_string(),
        ),
        _ => (OpenErrorKind::Io, format!("I/O error: {e}")),
    }
}

/// Checks the schema version, or stamps a new file with it and creates the tables.
fn init_schema(db: &Database, path: &Path) -> Result<(), StoreError> {
    let failed = |what: &str, e: &dyn Display| {
        open_error(path, OpenErrorKind::Io, format!("{what} failed: {e}"), None)
    };
    let txn = db
        .begin_read()
        .map_err(|e| failed("reading the schema version", &e))?;
    let version = match txn.open_table(META) {
        Ok(meta) => match meta
            .get(META_SCHEMA_VERSION)
            .map_err(|e| failed("reading the schema version", &e))?
        {
            Some(v) => Some(serde_json::from_slice::<u64>(v.value()).map_err(|e| {
                open_error(
                    path,
                    OpenErrorKind::Corrupt,
                    format!("its schema version record is unreadable ({e}); it was left untouched"),
                    Some(Box::new(e)),
                )
            })?),
            None => None,
        },
        Err(TableError::TableDoesNotExist(_)) => None,
        // Our `meta` with other types: a store of a schema this build does not know.
        Err(e @ TableError::TableTypeMismatch { .. })
        | Err(e @ TableError::TypeDefinitionChanged { .. })
        | Err(e @ TableError::TableIsMultimap(_)) => {
            return Err(open_error(
                path,
                OpenErrorKind::UpgradeRequired,
                format!(
                    "its tables are laid out by a different acestream-agent ({e}); upgrade \
                     required; it was left untouched"
                ),
                None,
            ));
        }
        Err(e) => return Err(failed("reading the schema version", &e)),
    };

    match version {
        Some(SCHEMA_VERSION) => Ok(()),
        Some(v) if v > SCHEMA_VERSION => Err(open_error(
            path,
            OpenErrorKind::UpgradeRequired,
            format!(
                "it was written by a newer acestream-agent (store schema {v}, this build reads \
                 {SCHEMA_VERSION}); upgrade required; it was left untouched"
            ),
            None,
        )),
        Some(v) => Err(open_error(
            path,
            OpenErrorKind::UpgradeRequired,
            format!(
                "it has store schema {v}, which this build ({SCHEMA_VERSION}) cannot read; \
                 it was left untouched"
            ),
            None,
        )),
        None => {
            // Someone else's redb file: adding our tables to it would be a silent mix-up.
            let mut foreign: Vec<String> = txn
                .list_tables()
                .map_err(|e| failed("listing tables", &e))?
                .map(|t| t.name().to_string())
                .collect();
            foreign.extend(
                txn.list_multimap_tables()
                    .map_err(|e| failed("listing tables", &e))?
                    .map(|t| t.name().to_string()),
            );
            if !foreign.is_empty() {
                return Err(open_error(
                    path,
                    OpenErrorKind::NotAStore,
                    format!(
                        "it is a redb database but not an acestream-agent store (tables: {}); \
                         it was left untouched",
                        foreign.join(", ")
                    ),
                    None,
                ));
            }
            drop(txn);
            create_schema(db).map_err(|e| failed("creating the tables", &e))
        }
    }
}

fn create_schema(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let version = SCHEMA_VERSION.to_string();
        meta.insert(META_SCHEMA_VERSION, version.as_bytes())?;
        txn.open_table(ENGINES)?;
        txn.open_table(HISTORY)?;
        txn.open_table(HEALS)?;
        txn.open_table(STREAMS)?;
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HealthStatus, StreamStatus, Trigger};
    use chrono::{TimeZone, Utc};
    use std::collections::BTreeMap;
    use std::ops::Bound;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn at(secs: i64) -> Timestamp {
        Utc.timestamp_opt(1_760_000_000 + secs, 0).unwrap()
    }

    fn engine(id: &str, gone_at: Option<Timestamp>) -> PersistedEngine {
        let mut counters = TriggerCounters::default();
        counters.get_mut(Trigger::Sweep).cleanups = 3;
        counters.get_mut(Trigger::Manual).freed_bytes = 1234;
        counters.get_mut(Trigger::Pressure).failures = 1;
        PersistedEngine {
            engine: Engine {
                container_id: id.to_string(),
                container_name: format!("name-{id}"),
                host: "10.0.0.2".to_string(),
                port: 6878,
                streams: vec!["s1".to_string()],
                health_status: HealthStatus::Healthy,
                last_health_check: Some(at(10)),
                last_stream_usage: None,
                last_cache_cleanup: Some(at(20)),
                cache_size_bytes: Some(4096),
                image: "acestream/engine:latest".to_string(),
                labels: BTreeMap::from([("acestream.cache_path".to_string(), "/c".to_string())]),
                version: Some("3.2.3".to_string()),
                first_seen: at(0),
                last_seen: at(30),
                cache_current_bytes: Some(100),
                cache_measured_at: Some(at(25)),
                cleanups_total: 3,
                cleanup_failures_total: 1,
                cache_freed_bytes_total: 1234,
                last_cleanup_error: Some("exec timed out".to_string()),
                cache_path: "/c".to_string(),
                cache_path_source: None,
                cache_medium: Default::default(),
                cache_mountpoint: Some("/".to_string()),
                restarts_total: 0,
                last_restart: None,
                unhealthy_since: None,
                heal_state: Default::default(),
                peers: None,
                speed_down_bytes: None,
                speed_up_bytes: None,
                stalled_streams: 0,
                cache_limit_bytes: None,
                cache_limit_source: None,
                live_cache_type: None,
                log_bytes: None,
                log_rotation: None,
            },
            counters,
            gone_at,
            heal: Default::default(),
        }
    }

    fn record(id: &str, n: i64) -> CleanupRecord {
        CleanupRecord {
            container_id: id.to_string(),
            container_name: format!("name-{id}"),
            trigger: Trigger::Sweep,
            started_at: at(n),
            finished_at: at(n + 1),
            duration_seconds: 1.5,
            size_before_bytes: Some(n as u64 * 10),
            freed_bytes: n as u64,
            remaining_bytes: Some(0),
            verdict: crate::model::Verdict::Cleaned,
        }
    }

    fn stream(id: &str, container_id: &str, ended_at: Option<Timestamp>) -> StreamRecord {
        StreamRecord {
            id: id.to_string(),
            key_type: "content_id".to_string(),
            key: "abc".to_string(),
            container_id: container_id.to_string(),
            playback_session_id: "p1".to_string(),
            stat_url: "http://e/stat".to_string(),
            command_url: "http://e/cmd".to_string(),
            is_live: true,
            started_at: at(5),
            ended_at,
            status: if ended_at.is_some() {
                StreamStatus::Ended
            } else {
                StreamStatus::Started
            },
            stats: Default::default(),
        }
    }

    /// After an error the store reopens its file, and never creates an empty one in its place:
    /// a file system unmounted under the agent uncovers the mount point's directory, where a
    /// `create` would quietly start a new store that the remounted disk then hides (found by
    /// `faults::state_disk_read_only_is_reported_and_recovered_from`).
    #[test]
    fn a_reopen_never_creates_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = Store::open(&path, 10).unwrap();
        store.apply(&records_batch("aaa", 1..2)).unwrap();
        // As after a failed commit: the handle is dropped, the next call reopens.
        *store.inner.slot() = None;
        let moved = dir.path().join("elsewhere.redb");
        std::fs::rename(&path, &moved).unwrap();
        let err = store.apply(&records_batch("aaa", 2..3)).unwrap_err();
        assert!(err.to_string().contains("the file is gone"), "{err}");
        assert!(!path.exists(), "no empty store created in its place");
        // Back in place: the next call reopens it and goes on.
        std::fs::rename(&moved, &path).unwrap();
        store.apply(&records_batch("aaa", 2..3)).unwrap();
        assert_eq!(freed(&store.history("aaa", 10).unwrap()), [2, 1]);
    }

    fn records_batch(id: &str, ns: std::ops::Range<i64>) -> Batch {
        Batch {
            records: ns.map(|n| record(id, n)).collect(),
            ..Batch::default()
        }
    }

    fn freed(records: &[CleanupRecord]) -> Vec<u64> {
        records.iter().map(|r| r.freed_bytes).collect()
    }

    fn open_kind(err: &StoreError) -> Option<OpenErrorKind> {
        match err {
            StoreError::Open { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    #[test]
    fn apply_then_reopen_restores_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let engines = vec![engine("aaa", None), engine("bbb", Some(at(40)))];
        let streams = vec![stream("s1", "aaa", None), stream("s2", "bbb", Some(at(50)))];
        let store = Store::open(&path, 5).unwrap();
        assert_eq!(store.path(), path);
        store
            .apply(&Batch {
                engines: engines.clone(),
                records: vec![record("aaa", 1), record("aaa", 2)],
                streams: streams.clone(),
                last_sweep: Some(at(60)),
                ..Batch::default()
            })
            .unwrap();
        drop(store);

        let store = Store::open(&path, 5).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.engines, engines);
        assert_eq!(
            loaded.engines[0].counters.get(Trigger::Manual).freed_bytes,
            1234
        );
        assert_eq!(loaded.streams, streams);
        assert_eq!(loaded.last_sweep, Some(at(60)));
        assert_eq!(
            store.history("aaa", 10).unwrap(),
            vec![record("aaa", 2), record("aaa", 1)]
        );
    }

    #[test]
    fn file_copied_while_open_opens_with_committed_data() {
        // What `kill -9` leaves: the last commit on disk, the file never closed.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path, 5).unwrap();
        let batch = Batch {
            engines: vec![engine("aaa", None)],
            records: vec![record("aaa", 1)],
            streams: vec![stream("s1", "aaa", None)],
            last_sweep: Some(at(7)),
            ..Batch::default()
        };
        store.apply(&batch).unwrap();
        let crashed = dir.path().join("crashed.redb");
        std::fs::copy(&path, &crashed).unwrap();
        drop(store);

        let store = Store::open(&crashed, 5).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.engines, batch.engines);
        assert_eq!(loaded.streams, batch.streams);
        assert_eq!(loaded.last_sweep, Some(at(7)));
        assert_eq!(store.history("aaa", 5).unwrap(), batch.records);
    }

    #[test]
    fn fresh_store_loads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = Store::open(&dir.path().join("s.redb"), 5)
            .unwrap()
            .load()
            .unwrap();
        assert!(loaded.engines.is_empty());
        assert!(loaded.streams.is_empty());
        assert_eq!(loaded.last_sweep, None);
    }

    #[test]
    fn upsert_replaces_engine_and_later_last_sweep_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), 5).unwrap();
        store
            .apply(&Batch {
                engines: vec![engine("aaa", None)],
                last_sweep: Some(at(1)),
                ..Batch::default()
            })
            .unwrap();
        let mut changed = engine("aaa", Some(at(9)));
        changed.engine.cache_size_bytes = Some(1);
        store
            .apply(&Batch {
                engines: vec![changed.clone()],
                last_sweep: Some(at(2)),
                ..Batch::default()
            })
            .unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.engines, vec![changed]);
        assert_eq!(loaded.last_sweep, Some(at(2)));
    }

    #[test]
    fn history_is_newest_first_and_trimmed_to_history_per_engine() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), 5).unwrap();
        store.apply(&records_batch("aaa", 1..8)).unwrap();
        store.apply(&records_batch("bbb", 100..102)).unwrap();
        assert_eq!(freed(&store.history("aaa", 100).unwrap()), [7, 6, 5, 4, 3]);
        assert_eq!(freed(&store.history("bbb", 100).unwrap()), [101, 100]);
        // One record at a time trims as well.
        store.apply(&records_batch("aaa", 8..9)).unwrap();
        assert_eq!(freed(&store.history("aaa", 100).unwrap()), [8, 7, 6, 5, 4]);
    }

    #[test]
    fn history_seq_keeps_growing_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path, 3).unwrap();
        store.apply(&records_batch("aaa", 1..6)).unwrap();
        drop(store);
        let store = Store::open(&path, 3).unwrap();
        store.apply(&records_batch("aaa", 6..8)).unwrap();
        assert_eq!(freed(&store.history("aaa", 10).unwrap()), [7, 6, 5]);
    }

    #[test]
    fn history_honours_limit_and_unknown_id_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), 100).unwrap();
        store.apply(&records_batch("aaa", 1..6)).unwrap();
        // An id that is a prefix of another must not see its records.
        store.apply(&records_batch("aaab", 50..51)).unwrap();
        assert_eq!(freed(&store.history("aaa", 2).unwrap()), [5, 4]);
        assert_eq!(store.history("aaa", 0).unwrap(), vec![]);
        assert_eq!(store.history("zzz", 10).unwrap(), vec![]);
        assert_eq!(freed(&store.history("aaab", 10).unwrap()), [50]);
    }

    #[test]
    fn delete_engines_removes_engine_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), 10).unwrap();
        store
            .apply(&Batch {
                engines: vec![engine("aaa", None), engine("bbb", None)],
                records: vec![record("aaa", 1), record("bbb", 2)],
                ..Batch::default()
            })
            .unwrap();
        store
            .apply(&Batch {
                delete_engines: vec!["aaa".to_string(), "never-seen".to_string()],
                ..Batch::default()
            })
            .unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.engines, vec![engine("bbb", None)]);
        assert_eq!(store.history("aaa", 10).unwrap(), vec![]);
        assert_eq!(store.history("bbb", 10).unwrap(), vec![record("bbb", 2)]);
    }

    #[test]
    fn delete_in_the_same_batch_wins_over_upsert() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), 10).unwrap();
        store
            .apply(&Batch {
                engines: vec![engine("aaa", None)],
                records: vec![record("aaa", 1)],
                delete_engines: vec!["aaa".to_string()],
                streams: vec![stream("s1", "aaa", None)],
                delete_streams: vec!["s1".to_string()],
                ..Batch::default()
            })
            .unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.engines.is_empty());
        assert!(loaded.streams.is_empty());
        assert_eq!(store.history("aaa", 10).unwrap(), vec![]);
    }

    #[test]
    fn delete_streams_removes_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), 10).unwrap();
        store
            .apply(&Batch {
                streams: vec![stream("s1", "aaa", None), stream("s2", "aaa", None)],
                ..Batch::default()
            })
            .unwrap();
        store
            .apply(&Batch {
                delete_streams: vec!["s1".to_string()],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(
            store.load().unwrap().streams,
            vec![stream("s2", "aaa", None)]
        );
    }

    #[test]
    fn prune_removes_only_old_gone_engines_and_old_ended_streams() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), 10).unwrap();
        let now = at(10_000);
        let retention = chrono::Duration::seconds(1_000);
        store
            .apply(&Batch {
                engines: vec![
                    engine("old-gone", Some(at(8_000))),
                    engine("recent-gone", Some(at(9_500))),
                    engine("running", None),
                ],
                records: vec![record("old-gone", 1), record("recent-gone", 2)],
                streams: vec![
                    stream("old-ended", "old-gone", Some(at(8_999))),
                    stream("recent-ended", "running", Some(at(9_001))),
                    stream("started", "running", None),
                ],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(store.prune(now, retention).unwrap(), 2);

        let loaded = store.load().unwrap();
        let ids: Vec<_> = loaded
            .engines
            .iter()
            .map(|e| e.engine.container_id.as_str())
            .collect();
        assert_eq!(ids, ["recent-gone", "running"]);
        let ids: Vec<_> = loaded.streams.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["recent-ended", "started"]);
        assert_eq!(store.history("old-gone", 10).unwrap(), vec![]);
        assert_eq!(
            store.history("recent-gone", 10).unwrap(),
            vec![record("recent-gone", 2)]
        );
        // Nothing left to prune.
        assert_eq!(store.prune(now, retention).unwrap(), 0);
    }

    fn assert_refused_as_corrupt(path: &Path) {
        let before = std::fs::read(path).unwrap();
        let err = Store::open(path, 5)
            .err()
            .expect("corrupt file must be refused");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("corrupt"), "{msg}");
        assert!(msg.contains("left untouched"), "{msg}");
        assert_eq!(open_kind(&err), Some(OpenErrorKind::Corrupt), "{msg}");
        assert!(std::fs::read(path).unwrap() == before, "file was modified");
    }

    #[test]
    fn corrupt_store_is_refused_by_name_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.redb");
        std::fs::write(&garbage, vec![0xAB; 4096]).unwrap();
        assert_refused_as_corrupt(&garbage);

        let good = dir.path().join("good.redb");
        let store = Store::open(&good, 100).unwrap();
        store.apply(&records_batch("aaa", 0..200)).unwrap();
        drop(store);
        let bytes = std::fs::read(&good).unwrap();

        for (i, len) in [10, 4096, bytes.len() / 2, bytes.len() - 4096]
            .into_iter()
            .enumerate()
        {
            let truncated = dir.path().join(format!("truncated-{i}.redb"));
            std::fs::write(&truncated, &bytes[..len]).unwrap();
            assert_refused_as_corrupt(&truncated);
        }

        // Damage in the middle of an otherwise valid file: caught by the integrity check
        // rather than by a panic later.
        let mut flipped = bytes.clone();
        let mid = bytes.len() / 2;
        flipped[mid..mid + 4096].iter_mut().for_each(|b| *b ^= 0xFF);
        let damaged = dir.path().join("damaged.redb");
        std::fs::write(&damaged, &flipped).unwrap();
        assert_refused_as_corrupt(&damaged);
    }

    #[test]
    fn second_open_of_same_file_is_refused_as_already_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let _first = Store::open(&path, 5).unwrap();
        let err = Store::open(&path, 5).err().expect("second open must fail");
        let msg = err.to_string();
        assert_eq!(open_kind(&err), Some(OpenErrorKind::AlreadyOpen));
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains("already open, is another acestream-agent running?"),
            "{msg}"
        );
    }

    #[test]
    fn newer_schema_is_refused_with_upgrade_required() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        drop(Store::open(&path, 5).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(META_SCHEMA_VERSION, b"2".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&path, 5)
            .err()
            .expect("newer schema must be refused");
        let msg = err.to_string();
        assert_eq!(open_kind(&err), Some(OpenErrorKind::UpgradeRequired));
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("upgrade required"), "{msg}");
        assert!(msg.contains("schema 2"), "{msg}");
    }

    #[test]
    fn newer_redb_file_format_is_refused_with_upgrade_required() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        drop(Store::open(&path, 5).unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        // The format version is the first byte of each of the two commit slots.
        bytes[64] = 4;
        bytes[64 + 128] = 4;
        std::fs::write(&path, &bytes).unwrap();
        let err = Store::open(&path, 5)
            .err()
            .expect("newer format must be refused");
        let msg = err.to_string();
        assert_eq!(
            open_kind(&err),
            Some(OpenErrorKind::UpgradeRequired),
            "{msg}"
        );
        assert!(msg.contains("newer redb"), "{msg}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn foreign_redb_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(TableDefinition::<u64, u64>::new("their_data"))
                .unwrap()
                .insert(1, 2)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&path, 5)
            .err()
            .expect("foreign file must be refused");
        assert_eq!(open_kind(&err), Some(OpenErrorKind::NotAStore));
        assert!(err.to_string().contains("their_data"), "{err}");
        let db = Database::create(&path).unwrap();
        let tables: Vec<_> = db
            .begin_read()
            .unwrap()
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        assert_eq!(tables, ["their_data"]);
    }

    #[test]
    fn open_creates_missing_parent_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/state.redb");
        Store::open(&path, 5).unwrap();
        assert!(path.is_file());
    }

    #[test]
    fn unreadable_record_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        drop(Store::open(&path, 5).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(ENGINES)
                .unwrap()
                .insert("bad", b"{not json".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&path, 5).unwrap().load().unwrap_err();
        assert!(
            matches!(&err, StoreError::Decode { key, .. } if key == "engine bad"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("record for engine bad is unreadable"),
            "{err}"
        );
    }

    #[test]
    fn empty_batch_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), 5).unwrap();
        assert!(Batch::default().is_empty());
        let path = dir.path().join("s.redb");
        let before = std::fs::read(&path).unwrap();
        for _ in 0..100 {
            store.apply(&Batch::default()).unwrap();
        }
        // A commit, even of nothing, writes redb's header (a new transaction id).
        assert!(std::fs::read(&path).unwrap() == before, "the file changed");
        let loaded = store.load().unwrap();
        assert!(loaded.engines.is_empty() && loaded.last_sweep.is_none());
    }

    /// A file backend whose writes fail with "no space left" while `full` is set.
    #[derive(Debug)]
    struct FullDisk {
        file: redb::backends::FileBackend,
        full: Arc<AtomicBool>,
    }

    impl FullDisk {
        fn check(&self) -> io::Result<()> {
            if self.full.load(Ordering::SeqCst) {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            } else {
                Ok(())
            }
        }
    }

    impl redb::StorageBackend for FullDisk {
        fn len(&self) -> io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.check()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.check()?;
            self.file.write(offset, data)
        }
        fn close(&self) -> io::Result<()> {
            self.file.close()
        }
        fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, redb::BackendError> {
            self.file.try_lock_range(s, e)
        }
        fn try_lock_shared_range(
            &self,
            s: Bound<u64>,
            e: Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.try_lock_shared_range(s, e)
        }
        fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
            self.file.lock_range(s, e)
        }
        fn lock_shared_range(
            &self,
            s: Bound<u64>,
            e: Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.file.lock_shared_range(s, e)
        }
        fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
            self.file.unlock_range(s, e)
        }
        fn query_lock_range(
            &self,
            s: Bound<u64>,
            e: Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.query_lock_range(s, e)
        }
    }

    #[test]
    fn failed_commit_is_reported_and_next_commit_succeeds_once_space_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let full = Arc::new(AtomicBool::new(false));
        let (file_path, flag) = (path.clone(), full.clone());
        let opener = move |_create: bool| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&file_path)?;
            let backend = FullDisk {
                file: redb::backends::FileBackend::new(file)?,
                full: flag.clone(),
            };
            Database::builder()
                .set_check_integrity_on_open(true)
                .create_with_backend(backend)
        };
        let store = Store::open_with(&path, 10, Box::new(opener)).unwrap();
        store.apply(&records_batch("aaa", 1..2)).unwrap();

        full.store(true, Ordering::SeqCst);
        let err = store.apply(&records_batch("aaa", 2..3)).unwrap_err();
        let err_msg = err.to_string();
        assert!(matches!(err, StoreError::Io { .. }), "{err_msg}");
        assert!(err_msg.contains(&path.display().to_string()), "{err_msg}");
        assert!(err_msg.contains("No space left on device"), "{err_msg}");
        // Still full: the reopen fails too, and says so.
        let msg = store
            .apply(&records_batch("aaa", 3..4))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cannot reopen"), "{msg}");
        assert!(msg.contains("no space left on the device"), "{msg}");
        eprintln!("first: {err_msg}\nsecond: {msg}");

        full.store(false, Ordering::SeqCst);
        store.apply(&records_batch("aaa", 4..5)).unwrap();
        assert_eq!(freed(&store.history("aaa", 10).unwrap()), [4, 1]);
        drop(store);
        let reopened = Store::open(&path, 10).unwrap();
        assert_eq!(freed(&reopened.history("aaa", 10).unwrap()), [4, 1]);
    }
}
