//! Export bundles and offline verification (`herald export`, `herald verify`).

pub mod export;
pub mod saga_history;
pub mod verify;
