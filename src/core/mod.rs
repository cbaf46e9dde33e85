//! The sans-IO core: limits, the event, its canonical codec, sealing,
//! verification, the ingest rules and the Merkle trees over feeds. Nothing
//! here reads a clock, touches a disk, opens a socket or asks the OS for
//! randomness.

pub mod cert;
pub mod checkpoint;
pub mod codec;
pub mod crypto;
pub mod event;
pub mod ingest;
pub mod limits;
pub mod merkle;
pub mod note;
pub mod query;
pub mod replication;
pub mod signature;
pub mod transition;
pub mod verify;
pub mod wire;
