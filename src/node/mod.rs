//! The node: a running peer. Replication, status, subscriptions and queries
//! live here, one module each; [`query`] holds the query handler registry.
pub mod query;
