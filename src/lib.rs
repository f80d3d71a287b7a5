//! slotgate: a SAS gateway between the slot machines of a gaming hall and the state monitoring
//! system.
//!
//! # Layout
//! - `firmware_protocols` (workspace crate): the sans-IO SAS protocol, framing and firmware
//!   profiles. No I/O and no clock.
//! - [`admin`]: the admin socket: the daemon's local JSON API for the technician commands.
//! - [`app`]: the wiring of `slotgate run`: state directory lock, journal, line pollers,
//!   forwarders, status file, supervision, ordered stop.
//! - [`cli`]: the command line.
//! - [`command`]: remote shutdown and startup of machines: signed commands, their verification,
//!   durable command journal, audit records and the LP 01 / LP 02 executor.
//! - [`durable`]: fsync helpers: what survives a power cut, not only a kill.
//! - [`diag`]: `slotgate diag-bundle`, a tar.gz for support with no secret inside.
//! - [`demo`]: `slotgate demo`, a simulated floor polled by the real gateway in one process.
//! - [`config`]: the configuration file, parsed and validated into typed values.
//! - [`inspect`]: `slotgate journal verify|stats|export|keygen`.
//! - [`journal`]: the durable, hash-chained event journal on sled; the only module that imports
//!   sled.
//! - [`forward`]: one task per upstream destination (MQTT, HTTPS): reads the journal, sends
//!   CloudEvents, moves the destination's cursor over what it acknowledged.
//! - [`event`]: the canonical event, its versioned schema, and exact money.
//! - [`normalizer`]: pure and synchronous; turns one machine's session events into canonical
//!   events. Protocol quirks end there.
//! - [`probe`]: `slotgate probe`, a line and address diagnosis for a field technician.
//! - [`poller`]: one task per SAS line: sessions, normalizers, durable-before-acknowledged.
//! - [`progress`]: progress bars for long work, on a terminal only.
//! - [`service`]: the daemon as systemd sees it: READY, STATUS, the progress watchdog,
//!   STOPPING (sd_notify).
//! - [`shutdown`]: SIGINT/SIGTERM as a future, injected into every long-running command.
//! - [`simulator`]: `slotgate simulate`, faithful EGMs over TCP or pseudo-terminals, with fault
//!   injection and a ground-truth ledger.
//! - [`state`]: the live state model every view (status file, admin socket, CLI, metrics) reads.
//! - [`technician`]: `slotgate status|machines|machine show|tail|replay`: views of the state
//!   model, and replay.
//! - [`telemetry`]: Prometheus metrics: the exporter and the gauges mirrored from status.
//! - [`transport`]: the lines to the machines (serial with the 9th bit, 9-bit framing over TCP,
//!   in-memory pairs for tests), with reconnect backoff. The only module that opens serial
//!   ports or sockets to machines.

pub mod admin;
pub mod app;
pub mod cli;
pub mod command;
pub mod config;
pub mod demo;
pub mod diag;
pub mod durable;
pub mod event;
pub mod forward;
pub mod inspect;
pub mod journal;
pub mod normalizer;
pub mod poller;
pub mod probe;
pub mod progress;
pub mod service;
pub mod shutdown;
pub mod simulator;
pub mod state;
pub mod technician;
pub mod telemetry;
pub mod transport;
