//! An engine's cache, in one home: which directory it is and whether it may be cleaned
//! (`path`), measuring and clearing it from the host through the container's root (`host`) or
//! by a script run inside the container (`exec`), and, under disk pressure with every engine
//! busy, deleting the files no process holds open (`busy`). The types below are what every way
//! of reaching a cache answers, so the janitor treats them alike.

pub mod busy;
pub(crate) mod exec;
pub(crate) mod host;
pub(crate) mod path;

/// What the script is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Measure only (read-only; busy engines too).
    Measure,
    /// Measure, delete the directory's contents unless below `min_bytes`, measure again.
    Clear { min_bytes: u64 },
}

/// Sizes one run found. A missing directory is size 0, not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub before: u64,
    /// Size after deleting; `None` when nothing was deleted (measure mode, or below
    /// `min_bytes`).
    pub after: Option<u64>,
}

/// The script's verdict on one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done(Sizes),
    /// Nothing to clean: the directory is missing (`before` 0) or holds no entries (`before`
    /// is the directory's own size). Nothing was deleted, in either mode.
    Empty {
        before: u64,
    },
    /// Measured (`before`), then nothing deleted: a client was connected to the engine's port
    /// right before the delete. The engine is busy, not failing.
    Busy {
        before: u64,
    },
    /// The script refused or failed; `before` is set when it got as far as measuring.
    Failed {
        before: Option<u64>,
        reason: String,
    },
}
