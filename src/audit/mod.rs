//! Export bundles, proof files and offline verification (`herald export`,
//! `herald prove`, `herald verify`).

pub mod export;
pub mod proof;
pub mod saga_history;
pub mod verify;
