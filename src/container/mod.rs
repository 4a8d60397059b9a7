//! Reading an engine container from the host: its processes and the checked handle on their
//! `/proc` entries (`procfs`), the connections in its network namespace (`procnet`), its
//! command line (`cmdline`), the mount table (`mountinfo`), and what discovery finds inside
//! its root: processes, candidate cache paths, its memory cgroup (`inside`). Readers only:
//! nothing here writes to a container.

pub(crate) mod cmdline;
pub(crate) mod inside;
pub(crate) mod mountinfo;
pub mod procfs;
pub mod procnet;
