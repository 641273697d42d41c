//! Airlock: run autonomous AI agents on your own files, safely.
//!
//! The crate is the whole engine; `main.rs` only dispatches. Parts follow
//! DESIGN.md:
//!
//! - [`policy`]: what a task may do (grants, network, limits, seccomp).
//! - [`sandbox`]: the single-threaded helper that builds the sandbox.
//! - [`event`]: the one event type every part speaks.
//! - [`task`]: task ids, states and the task folder layout.
//! - [`cli`]: the `airlock` command line.
//! - [`doctor`]: what this machine can enforce, found by real probes.
//! - [`ui`]: the libadwaita window.

pub mod api;
pub mod audit;
pub mod cli;
pub mod config;
pub mod dirs;
pub mod doctor;
pub mod error;
pub mod event;
pub mod i18n;
pub mod monitor;
pub mod netproxy;
pub mod policy;
pub mod sandbox;
pub mod supervisor;
pub mod task;
pub mod ui;
pub mod workspace;

pub use error::Error;
