//! Landlock rules matching the grants: read+execute on the system and on
//! read-only grants, read-write on read-write grants, `/tmp`, `$HOME` and
//! `/dev`; abstract unix sockets and signals scoped to the sandbox (ABI ≥
//! 6). Best effort across ABI versions, with what was enforced reported
//! back.
//!
//! No TCP port rules (ABI ≥ 4): the sandbox's own network namespace is
//! what confines its connections (its loopback, and the proxy's forwarder).
//! A port rule cannot tell that loopback from anywhere else, so limiting
//! connect to the proxy's ports refused the task's own local servers: every
//! test suite that starts one (Go's httptest, supertest, a dev database)
//! failed with EACCES, and guarded nothing the namespace does not.

use std::path::PathBuf;

use landlock::{
    Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    Scope, ABI,
};

use super::spec::SandboxSpec;

/// The ABI whose semantics we have vetted; newer kernels enforce it fully,
/// older ones as much as they can.
const TARGET_ABI: ABI = ABI::V6;

/// What Landlock enforced.
pub struct Outcome {
    pub kernel_abi: i32,
    pub status: &'static str,
}

/// The kernel's Landlock ABI version (0 when Landlock is unavailable).
pub fn kernel_abi() -> i32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    // only returns a number.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    if v < 0 {
        0
    } else {
        v as i32
    }
}

/// Applies the rules to the calling process (and every child it will have).
pub fn restrict(spec: &SandboxSpec) -> Result<Outcome, String> {
    let kernel = kernel_abi();
    if kernel == 0 && spec.require_landlock {
        return Err(
            "Landlock is not available on this kernel and --require landlock was given".into(),
        );
    }
    // Ask for what this kernel can enforce, capped at the ABI we vetted, so
    // "fully enforced" means "the best this kernel offers".
    let abi = if kernel >= TARGET_ABI as i32 {
        TARGET_ABI
    } else {
        ABI::from(kernel)
    };
    let read_exec = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);

    let mut ro: Vec<PathBuf> = [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    ro.extend(spec.ro.iter().cloned());
    let mut rw: Vec<PathBuf> = vec!["/tmp".into(), "/dev".into(), spec.user.home.clone()];
    rw.extend(spec.rw.iter().map(|m| m.path.clone()));

    let err = |e: landlock::RulesetError| e.to_string();
    let mut ruleset = Ruleset::default().handle_access(all).map_err(err)?;
    let scopes = Scope::from_all(abi);
    if !scopes.is_empty() {
        ruleset = ruleset.scope(scopes).map_err(err)?;
    }
    let mut created = ruleset.create().map_err(err)?;
    // Listing folders of the sandbox's own skeleton (/, /home) reveals only
    // what the mounts already chose to show.
    let list_only = vec![PathBuf::from("/")];
    for (paths, access) in [
        (list_only, AccessFs::ReadDir.into()),
        (ro, read_exec),
        (rw, all),
    ] {
        for p in paths {
            // Missing system folders (no /lib32 here) are simply not granted.
            let Ok(fd) = PathFd::new(&p) else { continue };
            created = created
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    let status = created.restrict_self().map_err(err)?;
    let kernel_abi = kernel;
    let status = match status.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partially enforced",
        RulesetStatus::NotEnforced => "not enforced",
    };
    if spec.require_landlock && status != "fully enforced" {
        return Err(format!(
            "Landlock is {status} on this kernel (ABI {kernel_abi}) and --require landlock was given"
        ));
    }
    Ok(Outcome { kernel_abi, status })
}
