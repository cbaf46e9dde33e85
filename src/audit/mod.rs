//! Export bundles and offline verification (`herald export`, `herald verify`).

pub mod export;
pub mod verify;
