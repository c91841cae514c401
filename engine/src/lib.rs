//! The bootlun engine: thread-per-core reactors over io_uring.
//!
//! * [`reactor`]: one thread per core, pinned, each with its own io_uring,
//!   its own registered buffer pool and a poll loop (busy, adaptive or
//!   interrupt driven). Connections are spread across reactors by the
//!   acceptor and never move. Completions are caller-owned: every SQE
//!   carries (connection slot, tag) and the completion goes straight back
//!   to the connection that submitted it.
//! * [`bufpool`]: fixed-size I/O buffers allocated once at start-up and
//!   registered with the ring, so disk I/O uses `READ_FIXED`/`WRITE_FIXED`
//!   and no I/O allocates.
//! * [`ops`]: the typed operations a connection asks its reactor for
//!   ([`IoOps`]); the engine is the only place that builds SQEs.
//! * [`backend`]: block backends (file or block device, `ram:`, `null:`)
//!   behind one trait that turns a request into an SQE.
//! * [`config`]: CLI-facing value parsing (core lists, sizes, poll modes).
//! * [`stats`]: counters shared with the outside world (log lines, status
//!   page).

pub mod backend;
pub mod blkid;
pub mod bufpool;
pub mod config;
pub mod ops;
pub mod reactor;
pub mod stats;

pub use backend::{open_backend, BackendInfo, BlockBackend, LunSpec, Prep};
pub use bufpool::{BufId, BufPool, PoolBuf};
pub use config::{parse_core_list, parse_size, PollMode, ZeroCopySend};
pub use ops::{IoOps, Issued, Spill};
pub use reactor::{Connection, Engine, EngineConfig, Io, Service};
pub use stats::{ReactorStats, Stats};
