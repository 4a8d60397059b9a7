//! Reading an engine container from the host, lowest layer of the agent: directory handles
//! (`dir`), its processes' checked `/proc/<pid>` entries (`procfs`), the connections in its
//! network namespace (`procnet`), its command line (`cmdline`), the mount table
//! (`mountinfo`), its processes (`processes`), files inside its root (`root`), which candidate
//! cache paths exist there (`survey`) and its memory cgroup (`memory`). Readers only: nothing
//! here writes to a container, and nothing here uses a module above it.

pub(crate) mod cmdline;
pub(crate) mod dir;
pub(crate) mod memory;
pub(crate) mod mountinfo;
pub(crate) mod processes;
pub mod procfs;
pub mod procnet;
pub(crate) mod root;
pub(crate) mod survey;
