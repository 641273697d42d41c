//! `airlock doctor`: what this machine lets Airlock enforce, found by real
//! probes (a namespace is created, an overlay mounted, a seccomp listener
//! obtained), never guessed from version numbers.
//!
//! - [`probe`] runs the probes and records plain facts ([`Probes`]);
//!   the ones that change process state run in a fresh child process
//!   ([`child`], the hidden `airlock __probe` subcommand), the session
//!   bus ones on a private runtime with timeouts (`bus`);
//! - [`report`] turns the facts into one [`Check`] per layer and decides
//!   whether Airlock can run ([`Report::can_run`]).

mod bus;
pub mod child;
pub mod probe;
pub mod report;

pub use child::{ProbeKind, Whiteout};
pub use probe::{gather, Probes, PROBE_SUBCOMMAND};
pub use report::{Check, Report, Status};

/// The Landlock ABI version of the running kernel, 0 when Landlock is
/// unavailable. Cheap (one system call), so the sandbox can record the ABI
/// it enforced.
pub fn landlock_abi() -> u32 {
    probe::landlock_abi_raw().unwrap_or(0)
}
