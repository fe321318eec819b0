//! Callosum: a change-data-capture replication agent between PostgreSQL and
//! MariaDB/MySQL. See ARCHITECTURE.md for the code map and invariants.

pub mod agent;
pub mod apply;
pub mod capture;
pub mod check;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod demo;
pub mod http;
pub mod lease;
pub mod log;
pub mod mapped_sink;
pub mod metrics;
pub mod panics;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod testkit;
pub mod text_table;
