//! herald: a cryptographically signed, distributed event log.
//!
//! Layout (see `docs/` and the architecture brief):
//!
//! * [`core`]: the sans-IO heart. Limits, the event and its canonical codec,
//!   sealing (encrypt, chain, sign), verification and the replication
//!   connection's state machine. No clock, no disk, no sockets, no OS
//!   randomness: time and randomness are passed in.
//! * [`identity`]: certificates, keys, the trust anchor and revocation.
//! * [`store`]: the durable local log in SQLite, with a group-committing writer.
//! * [`audit`]: the export bundle and offline verification.
//! * [`net`]: QUIC with mutual TLS: endpoints, certificate checks, framing.
//! * [`node`]: a running peer: replication, status, subscriptions, queries.
//! * [`config`]: the node configuration file.
//! * [`saga`]: sagas across peers: definitions, the sans-IO state machine,
//!   the orchestrator and participants.
//! * [`outbox`]: the service's own database: the outbox relay and the
//!   inbox sink (PostgreSQL, MariaDB, SQLite).
//! * [`api`]: the node's HTTP/JSON API (publish, read, SSE, durable
//!   consumers, queries, sagas), served inside `herald node`.
//! * [`cli`]: the `herald` command line.
//! * [`bench`](mod@bench): the benchmark harness behind `herald bench`.
//!
//! Dependencies point one way, bottom to top: core → identity → config →
//! store → saga → outbox → node/net → cli/bench/audit. A lower layer never names a
//! higher one (`tests/layers.rs` checks it); what two layers share lives in
//! the lower.
#![forbid(unsafe_code)]
#![deny(unused_must_use)]

pub mod api;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod identity;
pub mod net;
pub mod node;
pub mod outbox;
pub mod saga;
pub mod store;
