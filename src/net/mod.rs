//! Placeholder: the QUIC transport (built on branch net).
