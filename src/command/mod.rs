//! Remote shutdown and startup of machines (issue 10; requirements R13, R22): signed,
//! expiring, idempotent commands, audited before every step, executed only as SAS LP 01 / LP 02,
//! confirmed by the machine's ACK and by its behaviour, and re-asserted until revoked.
//!
//! The path of a command: bytes from MQTT, HTTPS or the admin socket → [`verify::Verifier`]
//! (→ a [`verify::Rejection`], audited by [`store::CommandStore::reject`]) →
//! [`store::CommandStore::admit`] (a new command, or the stored result of a repeated id) →
//! [`executor::Executor::submit`] → [`store::CommandStore::advance`] for each step and the
//! line task for each send. Every step goes to the [`audit::AuditSink`] before it happens.
//!
//! # Layout
//! - [`envelope`]: the wire format (the `command-envelope` crate) and its signed encoding.
//! - [`verify`]: trusted keys, roles, signatures, times, targets: accept or reject with a reason.
//! - [`store`]: the durable command journal and id store, and each machine's desired state.
//! - [`audit`]: the `remote_command` audit records.
//! - [`executor`]: when to send LP 01 / LP 02, re-assertion, confirmation, expiry.
//! - [`local`]: commands of the technician on the gateway, signed with the local key.

pub mod audit;
pub mod envelope;
pub mod executor;
pub mod journal_sink;
pub mod local;
pub mod service;
pub mod store;
pub mod verify;
