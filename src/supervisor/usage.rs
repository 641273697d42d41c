//! What a task keeps on the host's disk: the upper layers of its read-write
//! grants and, when it has one, its agent's persistent home. Both count
//! against `--max-upper`; the watchdog measures them while the task runs,
//! and a persistent home is measured before the next task starts in it.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fchmodat, fstatat, FchmodatFlags, FileStat, Mode};

use crate::task::{RwLayer, TaskDir};

/// What a task wrote, measured by walking with directory descriptors (no
/// path is ever rebuilt, so a tree deeper than PATH_MAX is measured like
/// any other).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UpperUsage {
    /// Bytes, counting every entry at least [`INODE_COST`]: empty files
    /// still cost the host an inode.
    pub bytes: u64,
    /// Entries that are not folders: what a review will show.
    pub files: u64,
    /// Deeper than [`MAX_DEPTH`] folders: not measured below that.
    pub too_deep: bool,
    /// A folder the task made unreadable (`chmod 300`): what it holds
    /// cannot be measured.
    pub unreadable: bool,
}

/// What one entry costs at least: a block. The inode itself is 256 bytes,
/// but inodes are the scarcer resource (ext4 makes one per 16 KiB of
/// disk), so at 256 bytes the default 8 GiB let an agent use up some 32
/// million of them; at 4 KiB it is two million.
pub const INODE_COST: u64 = 4096;
/// How deep the measurement goes; a task that builds deeper trees is
/// stopped, since what it wrote there could not be counted.
pub const MAX_DEPTH: usize = 512;

/// A folder whose whole content counts: `dir` is walked, `shown` is how
/// messages name it (the grant a layer belongs to, or the home itself).
#[derive(Debug, Clone)]
pub struct Root {
    pub dir: PathBuf,
    pub shown: PathBuf,
}

/// The task's upper layers, each shown as its grant.
pub fn layer_roots(task_dir: &TaskDir, layers: &[RwLayer]) -> Vec<Root> {
    layers
        .iter()
        .map(|l| Root {
            dir: task_dir.upper(l.index),
            shown: l.path.clone(),
        })
        .collect()
}

/// One entry met by [`walk`].
struct Entry<'a> {
    /// The folder it is in, open.
    dir: RawFd,
    name: &'a CStr,
    st: &'a FileStat,
    /// The folder's path as messages show it.
    parent: &'a Path,
    depth: usize,
}

/// Walks the roots with directory descriptors down to [`MAX_DEPTH`].
/// `visit` sees each entry before a folder is entered. Returns whether some
/// folder could not be opened (one gone meanwhile does not count; a root
/// that does not exist yet holds nothing).
/// `paths`: whether `Entry::parent` is needed. Building it costs a copy of
/// the whole path per folder, which a deep tree of long names (made to
/// slow the watchdog down) turns into gigabytes per walk.
fn walk(roots: &[Root], paths: bool, visit: &mut dyn FnMut(&Entry)) -> bool {
    fn folder(
        dir: &mut Dir,
        parent: &Path,
        depth: usize,
        paths: bool,
        visit: &mut dyn FnMut(&Entry),
    ) -> bool {
        let fd = dir.as_raw_fd();
        let names: Vec<CString> = dir
            .iter()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_bytes();
                n != b"." && n != b".."
            })
            .map(|e| e.file_name().to_owned())
            .collect();
        let mut unopened = false;
        for name in names {
            let Ok(st) = fstatat(Some(fd), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            visit(&Entry {
                dir: fd,
                name: &name,
                st: &st,
                parent,
                depth,
            });
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR || depth >= MAX_DEPTH {
                continue;
            }
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            match Dir::openat(Some(fd), name.as_c_str(), flags, Mode::empty()) {
                Ok(mut sub) => {
                    let path = match paths {
                        true => parent.join(OsStr::from_bytes(name.to_bytes())),
                        false => PathBuf::new(),
                    };
                    unopened |= folder(&mut sub, &path, depth + 1, paths, visit);
                }
                Err(nix::errno::Errno::ENOENT) => {}
                Err(_) => unopened = true,
            }
        }
        unopened
    }
    let mut unopened = false;
    for root in roots {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match Dir::open(&root.dir, flags, Mode::empty()) {
            Ok(mut d) => unopened |= folder(&mut d, &root.shown, 1, paths, visit),
            Err(nix::errno::Errno::ENOENT) => {}
            Err(_) => unopened = true,
        }
    }
    unopened
}

/// What the roots hold.
pub fn measure(roots: &[Root]) -> UpperUsage {
    let mut u = UpperUsage::default();
    u.unreadable = walk(roots, false, &mut |e| {
        u.bytes += (e.st.st_blocks as u64 * 512).max(INODE_COST);
        if e.st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            u.files += 1;
        } else if e.depth >= MAX_DEPTH {
            u.too_deep = true;
        }
    });
    u
}

/// Gives the owner read access (and search, for folders) to every entry
/// that lacks it, once no process of a task is left: an agent that leaves
/// `chmod 000` entries behind would otherwise make its whole review fail,
/// or its home unmeasurable. Returns how many entries changed and the first
/// one. Root reads them anyway, so only for an unprivileged supervisor.
pub fn make_readable(roots: &[Root]) -> (u64, Option<PathBuf>) {
    let mut out = (0, None);
    let me = nix::unistd::geteuid();
    if me.is_root() {
        return out;
    }
    walk(roots, true, &mut |e| {
        let need = match e.st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => 0o500,
            libc::S_IFREG => 0o400,
            _ => return,
        };
        if e.st.st_mode & need == need || e.st.st_uid != me.as_raw() {
            return;
        }
        let mode = Mode::from_bits_truncate((e.st.st_mode & 0o7777) | need);
        // Never through a link: another task of the same agent may be
        // running in its home and swap the entry for one.
        if fchmodat(Some(e.dir), e.name, mode, FchmodatFlags::NoFollowSymlink).is_ok() {
            out.0 += 1;
            out.1
                .get_or_insert_with(|| e.parent.join(OsStr::from_bytes(e.name.to_bytes())));
        }
    });
    out
}

/// The free space of the file systems that hold a task's writes: a
/// backstop for what no walk or process scan can see (a deleted file whose
/// only descriptor is in flight in a unix socket, say). It reads one
/// `statfs` per file system per check.
pub struct DiskWatch {
    /// A root on each file system (as messages show it), and the space
    /// free on it when the task started.
    fss: Vec<(Root, u64)>,
    /// What the task had written when it started.
    used0: u64,
}

/// Bytes free to unprivileged users, and the size, of the file system at `p`.
fn space(p: &Path) -> Option<(u64, u64)> {
    let f = nix::sys::statfs::statfs(p).ok()?;
    let bs = f.block_size() as u64;
    Some((f.blocks_available() as u64 * bs, f.blocks() as u64 * bs))
}

impl DiskWatch {
    pub fn new(roots: &[Root]) -> DiskWatch {
        let mut devs = Vec::new();
        let mut fss = Vec::new();
        for r in roots {
            // A root not made yet lives on its parent's file system.
            let at = if r.dir.exists() {
                r.dir.as_path()
            } else {
                r.dir.parent().unwrap_or(&r.dir)
            };
            let (Ok(st), Some((free, _))) = (nix::sys::stat::stat(at), space(at)) else {
                continue;
            };
            if !devs.contains(&st.st_dev) {
                devs.push(st.st_dev);
                fss.push((
                    Root {
                        dir: at.to_path_buf(),
                        shown: r.shown.clone(),
                    },
                    free,
                ));
            }
        }
        DiskWatch {
            fss,
            used0: measure(roots).bytes,
        }
    }

    /// A file system that lost more free space during the task than the
    /// task's visible writes (`used` now) plus `allowed`, and is down to
    /// its last tenth: the root it holds and the bytes unaccounted for.
    /// Both conditions, so that the user's own writes elsewhere on a disk
    /// with room to spare never stop a task.
    pub fn unexplained(&self, used: u64, allowed: u64) -> Option<(PathBuf, u64)> {
        let grown = used.saturating_sub(self.used0);
        self.fss.iter().find_map(|(r, free0)| {
            let (free, size) = space(&r.dir)?;
            let lost = free0.saturating_sub(free).saturating_sub(grown);
            (lost > allowed && free < size / 10).then(|| (r.shown.clone(), lost))
        })
    }
}

/// The machine's shared memory: a backstop for memory no scan can see
/// (memfds handed from process to process faster than a scan can read
/// them, pass 14A). Without a memory cgroup nothing else counts it.
pub struct MemoryWatch {
    /// `Shmem` of /proc/meminfo when the task started, in bytes.
    shmem0: u64,
}

/// `Shmem`, `MemAvailable` and `MemTotal` of a meminfo text, in bytes.
fn meminfo(text: &str) -> Option<(u64, u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let rest = text.lines().find_map(|l| l.strip_prefix(name))?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    };
    Some((
        field("Shmem:")?,
        field("MemAvailable:")?,
        field("MemTotal:")?,
    ))
}

fn read_meminfo() -> Option<(u64, u64, u64)> {
    meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

impl MemoryWatch {
    pub fn new() -> MemoryWatch {
        MemoryWatch {
            shmem0: read_meminfo().map(|m| m.0).unwrap_or(0),
        }
    }

    /// Shared memory the machine gained during the task beyond what the
    /// task shows (`shown`) plus `allowed`, while it is down to its last
    /// tenth of available memory. Both conditions, so that the user's own
    /// programs on a machine with memory to spare never stop a task.
    pub fn unexplained(&self, shown: u64, allowed: u64) -> Option<u64> {
        let (shmem, available, total) = read_meminfo()?;
        unexplained_memory(self.shmem0, shmem, available, total, shown, allowed)
    }
}

fn unexplained_memory(
    shmem0: u64,
    shmem: u64,
    available: u64,
    total: u64,
    shown: u64,
    allowed: u64,
) -> Option<u64> {
    let lost = shmem.saturating_sub(shmem0).saturating_sub(shown);
    (lost > allowed && available < total / 10).then_some(lost)
}

/// The processes of a running task: the sandbox helper's descendants
/// (orphans of the task are adopted by its PID 1, so none escapes this).
pub struct TaskProcs {
    helper: u32,
    /// The devices whose files count: the upper layers' and the home's,
    /// and the task's overlays once read from its mount table.
    devs: Vec<u64>,
    overlays_known: bool,
    /// Epoll watches the task may register in all: a share of the
    /// kernel's per-user quota, which the user's desktop shares.
    pub epoll_budget: u64,
    /// Files the task may keep open through mappings in all.
    pub mapped_budget: u64,
    /// The device of the kernel's anonymous inodes (epoll, eventfd).
    anon_dev: Option<u64>,
}

/// The device anonymous inodes report, read off an eventfd of our own.
fn anon_inode_dev() -> Option<u64> {
    // SAFETY: eventfd with constant arguments; the result is checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if raw < 0 {
        return None;
    }
    // SAFETY: a descriptor just made and owned by nobody else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    nix::sys::stat::fstat(fd.as_raw_fd())
        .ok()
        .map(|st| st.st_dev)
}

/// The kernel's limit of epoll watches per user (`fs.epoll.max_user_watches`).
/// Counted per host user, not per namespace: a task that used it up would
/// leave every event loop of the user's desktop unable to start (epoll_ctl
/// fails with ENOSPC), Airlock's own included.
fn epoll_user_quota() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/epoll/max_user_watches")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// The epoll watches one task may register: an eighth of the user's quota.
pub fn epoll_budget() -> u64 {
    epoll_user_quota() / 8
}

/// Files the task's processes may keep open through mappings, in all: an
/// eighth of the machine's file table (`fs.file-max`), at most a million.
/// `open`, `mmap`, `close` keeps a file open that RLIMIT_NOFILE no longer
/// counts, up to `vm.max_map_count` per process: twelve processes held a
/// third of the table, and a full table fails every open of every user's
/// programs with ENFILE (pass 19A). Where the table is unbounded, what
/// such files cost is kernel memory, hence the cap.
pub fn mapped_files_budget() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/file-max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(1 << 20, |t| (t / 8).min(1 << 20))
}

/// Whether a line of `/proc/PID/maps` maps a file (an inode), which keeps
/// that file open; every such mapping is counted as one (an upper bound:
/// a library's few mappings share one open file).
fn maps_a_file(line: &str) -> bool {
    let mut f = line.split_whitespace();
    f.nth(4).is_some_and(|ino| ino != "0") && f.next().is_some()
}

/// How many watches the epoll instance at `{base}/fd/FD` holds (one
/// `tfd:` line each in its fdinfo), or None when it is not an epoll fd.
fn epoll_watches(base: &str, fd: &std::ffi::OsStr) -> Option<u64> {
    let link = std::fs::read_link(format!("{base}/fd/{}", fd.to_string_lossy())).ok()?;
    if link.as_os_str() != "anon_inode:[eventpoll]" {
        return None;
    }
    let info = std::fs::read(format!("{base}/fdinfo/{}", fd.to_string_lossy())).ok()?;
    Some(
        info.split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"tfd:"))
            .count() as u64,
    )
}

/// A mapping of a deleted file in a `maps` line (`7f…000-7f…000 r--s 0
/// 00:31 1041 /path (deleted)`): (device, inode) and the mapped length.
fn deleted_mapping(line: &str) -> Option<((u64, u64), u64)> {
    if !line.ends_with(" (deleted)") {
        return None;
    }
    let mut f = line.split_whitespace();
    let (range, dev, ino) = (f.next()?, f.nth(2)?, f.next()?);
    let hex = |x: &str| u64::from_str_radix(x, 16).ok();
    let (a, b) = range.split_once('-')?;
    let (ma, mi) = dev.split_once(':')?;
    let dev = libc::makedev(hex(ma)? as u32, hex(mi)? as u32);
    Some(((dev, ino.parse().ok()?), hex(b)?.saturating_sub(hex(a)?)))
}

/// A mapping of shared memory in a `maps` line that no memory rlimit
/// counts: a memfd (`/memfd:NAME (deleted)`) or a shared anonymous mapping
/// (`/dev/zero (deleted)`); (device, inode) and the mapped length.
/// `/dev/shm` and `/tmp` are bounded by their size.
fn shared_mapping(line: &str) -> Option<((u64, u64), u64)> {
    let key = deleted_mapping(line)?;
    // The path is what follows the first five fields.
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start().split_once(char::is_whitespace)?.1;
    }
    let path = rest.trim_start();
    (path.starts_with("/memfd:") || path == "/dev/zero (deleted)").then_some(key)
}

/// The resident bytes of each shared memory object an `smaps` text maps
/// (summed over its mappings in this process).
fn shared_resident(smaps: &str) -> std::collections::HashMap<(u64, u64), u64> {
    let mut out = std::collections::HashMap::new();
    let mut current = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header line: its object, if shared memory.
            current = shared_mapping(line).map(|(key, _)| key);
        } else if let (Some(key), Some(rest)) = (current, line.strip_prefix("Rss:")) {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            *out.entry(key).or_insert(0) += kb * 1024;
        }
    }
    out
}

/// The device of an overlay mount in a `mountinfo` line (`36 35 0:49 /
/// /grant rw - overlay overlay …`).
fn overlay_dev(line: &str) -> Option<u64> {
    let (mount, fs) = line.split_once(" - ")?;
    if fs.split_whitespace().next()? != "overlay" {
        return None;
    }
    let (ma, mi) = mount.split_whitespace().nth(2)?.split_once(':')?;
    Some(libc::makedev(ma.parse().ok()?, mi.parse().ok()?))
}

/// How `kcmp` orders two threads' (host ids) file tables: `Equal` when
/// they share one. `None` where it cannot tell (a thread gone, no `kcmp`).
fn files_order(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    let (Ok(a), Ok(b)) = (a.parse::<libc::pid_t>(), b.parse::<libc::pid_t>()) else {
        return None;
    };
    const KCMP_FILES: libc::c_long = 2;
    // SAFETY: kcmp only compares two tasks' kernel objects.
    match unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_FILES, 0, 0) } {
        0 => Some(std::cmp::Ordering::Equal),
        1 => Some(std::cmp::Ordering::Less),
        2 => Some(std::cmp::Ordering::Greater),
        _ => None,
    }
}

/// Whether `tid`'s file table is one not read yet; if so it joins
/// `tables`, which `kcmp`'s order keeps sorted, so that a process of many
/// threads costs a few comparisons each rather than one per earlier
/// table. A thread that cannot be compared is read (only time is lost).
fn new_table<'a>(tables: &mut Vec<&'a str>, tid: &'a str) -> bool {
    let (mut lo, mut hi) = (0, tables.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        match files_order(tables[mid], tid) {
            Some(std::cmp::Ordering::Equal) => return false,
            Some(std::cmp::Ordering::Less) => lo = mid + 1,
            Some(std::cmp::Ordering::Greater) => hi = mid,
            None => return true,
        }
    }
    tables.insert(lo, tid);
    true
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Whether a thread (`/proc/PID/task/TID`) still has its memory, i.e. runs a program. A zombie,
/// or a process past the point of its exit where it let go of its memory,
/// shows everyone a root-owned `fd` folder, yet holds nothing: it must not
/// pass for a process hiding from us.
fn has_memory(base: &str) -> bool {
    read_lossy(&format!("{base}/status"))
        .is_some_and(|s| s.lines().any(|l| l.starts_with("VmSize:")))
}

/// A `/proc` file read as text whatever its bytes: a process's name, and
/// the paths in its mappings, are the agent's to choose, and one that is
/// not UTF-8 must not make the whole file unreadable to the scan (pass
/// 20A: such a name hid an undumpable process, such a path all of a
/// process's mappings).
fn read_lossy(path: &str) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

impl TaskProcs {
    pub fn new(helper: u32, roots: &[Root]) -> TaskProcs {
        let devs = roots
            .iter()
            .filter_map(|r| nix::sys::stat::stat(&r.dir).ok().map(|st| st.st_dev))
            .collect();
        TaskProcs {
            helper,
            devs,
            overlays_known: false,
            anon_dev: anon_inode_dev(),
            epoll_budget: epoll_budget(),
            mapped_budget: mapped_files_budget(),
        }
    }

    /// One open descriptor at `{base}/fd/N`: an epoll instance's watches,
    /// a deleted file's blocks, a memfd's pages.
    fn scan_fd(
        &self,
        base: &str,
        fd: &std::fs::DirEntry,
        held: &mut Held,
        seen: &mut std::collections::HashSet<(u64, u64)>,
        shm: &mut std::collections::HashMap<(u64, u64), u64>,
    ) {
        // Follows the descriptor to the open file itself.
        let path = fd.path();
        let Ok(st) = nix::sys::stat::stat(&path) else {
            return;
        };
        // Epoll instances are anonymous inodes: one device for all of them
        // (their mode has no type on some kernels, a regular file's on
        // others).
        let anon = Some(st.st_dev) == self.anon_dev || st.st_mode & libc::S_IFMT == 0;
        if anon && held.epoll_watches <= self.epoll_budget {
            held.epoll_watches += epoll_watches(base, &fd.file_name()).unwrap_or(0);
        }
        if st.st_nlink != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return;
        }
        // tmpfs and shmem (memfd) are memory, bounded by `--tmp-size` and
        // the memory limit, not disk.
        let in_memory = nix::sys::statfs::statfs(&path)
            .is_ok_and(|f| f.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        if !in_memory && seen.insert((st.st_dev, st.st_ino)) {
            held.bytes += (st.st_blocks as u64 * 512).max(INODE_COST);
        }
        // A memfd is memory no rlimit counts (its pages belong to no
        // process): what it holds counts against `--memory`.
        if in_memory
            && std::fs::read_link(&path)
                .is_ok_and(|l| l.as_os_str().as_bytes().starts_with(b"/memfd:"))
        {
            let e = shm.entry((st.st_dev, st.st_ino)).or_insert(0);
            *e = (*e).max(st.st_blocks as u64 * 512);
        }
    }

    /// What the task's processes hold that no walk of its layers sees
    /// ([`Held`]): deleted files still open or mapped (on disk as much as
    /// any file in its layer), epoll watches, memfds and shared mappings,
    /// and whether some process hides from us. The helper's own children
    /// (PID 1, the uid-map writer) hold none; PID 1 does not even let us
    /// look (it is not dumpable), its children are read all the same.
    ///
    /// The task decides how much there is to read (processes, threads,
    /// descriptors, mappings), so the scan stops once it has taken more
    /// than `budget` of CPU time and says so ([`Held::too_costly`]).
    ///
    /// It also stops as soon as what it has found so far is past one of
    /// `limits`: the task is stopped at first sight, not after the rest of
    /// the scan.
    pub fn scan(&mut self, limits: ScanLimits) -> Held {
        let mut held = Held::default();
        if self.helper == 0 {
            return held;
        }
        let start = thread_cpu();
        let over_budget = || thread_cpu().saturating_sub(start) > limits.budget;
        let epoll_budget = self.epoll_budget;
        let mapped_budget = self.mapped_budget;
        // Whether the scan may stop here: past its budget, or past a limit
        // with what it found so far.
        let enough = |held: &mut Held, shm: &std::collections::HashMap<(u64, u64), u64>| {
            held.shared_memory = shm.values().sum();
            if held.shared_memory > limits.memory
                || held.epoll_watches > epoll_budget
                || held.mapped_files > mapped_budget
                || held.bytes > limits.bytes
            {
                return true;
            }
            if over_budget() {
                held.too_costly = true;
                return true;
            }
            false
        };
        // Children of every thread: a child belongs to the thread that
        // made it.
        let children = |pid: &str| -> Vec<String> {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return Vec::new();
            };
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                .flat_map(|c| c.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .collect()
        };
        let helper = self.helper.to_string();
        let pid1s = children(&helper);
        let mut seen = std::collections::HashSet::new();
        let mut mapped: std::collections::HashMap<(u64, u64), u64> = Default::default();
        // Shared memory objects: their size, or the most any one process
        // maps of them (a fork maps the same object again).
        let mut shm: std::collections::HashMap<(u64, u64), u64> = Default::default();
        let mut next = pid1s.clone();
        // Bounded: the task has at most its pids limit of processes, and a
        // process is visited once.
        let mut visited = std::collections::HashSet::new();
        while let Some(pid) = next.pop() {
            if !visited.insert(pid.clone()) {
                continue;
            }
            if enough(&mut held, &shm) {
                return held;
            }
            next.extend(children(&pid));
            // Thread by thread: a thread may have a file table of its own
            // (unshare(CLONE_FILES)), and once the main thread has exited
            // the process's own fd and maps show nothing while its other
            // threads run on. Threads sharing a table are read once.
            let tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let mut tables: Vec<&str> = Vec::new();
            let mut maps_read = false;
            for tid in &tids {
                if enough(&mut held, &shm) {
                    return held;
                }
                if !new_table(&mut tables, tid) {
                    continue;
                }
                let base = format!("/proc/{pid}/task/{tid}");
                let Ok(fds) = std::fs::read_dir(format!("{base}/fd")) else {
                    // Our own processes (PID 1 and the network forwarder,
                    // forks of the helper) keep the agent out and us too.
                    // Any other thread we may not inspect (a program run
                    // from a file it may not read, or one that made itself
                    // undumpable) could hold files unseen. A thread that
                    // let go of its memory (exiting, a zombie) holds none.
                    // Ours are told by what the agent cannot have: no
                    // seccomp filter. Every process of the agent inherits
                    // its filters, which nothing removes; a command line
                    // can be copied (pass 19A: an execute-only program
                    // named as the helper held 2 GiB unseen).
                    let own = pid1s.contains(&pid) || without_seccomp(&base);
                    if !own && has_memory(&base) {
                        held.uninspectable = true;
                    }
                    continue;
                };
                for (i, fd) in fds.flatten().enumerate() {
                    if i % 256 == 255 && enough(&mut held, &shm) {
                        return held;
                    }
                    self.scan_fd(&base, &fd, &mut held, &mut seen, &mut shm);
                }
                if maps_read {
                    continue;
                }
                // Threads share their memory: one live thread's maps.
                let Some(maps) = read_lossy(&format!("{base}/maps")) else {
                    continue;
                };
                if maps.is_empty() {
                    continue;
                }
                maps_read = true;
                held.mapped_files += maps.lines().filter(|l| maps_a_file(l)).count() as u64;
                // Not from the helper's own children: the uid-map writer
                // lives in the host's mount table.
                if !self.overlays_known && !pid1s.contains(&pid) {
                    // A mapping names an overlay file by the overlay's
                    // device: those of the task's read-write grants.
                    if let Some(mi) = read_lossy(&format!("{base}/mountinfo")) {
                        self.devs.extend(mi.lines().filter_map(overlay_dev));
                        self.overlays_known = true;
                    }
                }
                // A deleted file kept only through a mapping (mmap, close,
                // unlink) holds the disk too. Its size cannot be read
                // without privileges: what is mapped of it is counted.
                for (key, len) in maps.lines().filter_map(deleted_mapping) {
                    // Only files on the devices that count (tmpfs and
                    // memory objects are bounded by other limits).
                    if self.devs.contains(&key.0) {
                        *mapped.entry(key).or_insert(0) += len;
                    }
                }
                // Shared memory counts by what is resident of it, read
                // from smaps (dearer than maps: only where there is some).
                // A segment mapped whole but little used (a database's
                // buffers) must not count at its mapped length.
                // A process that maps nothing more of any object than is
                // already counted (the forks of a database, each mapping
                // the same pool another was seen holding whole) has
                // nothing to add: its smaps is not read.
                let mut here: std::collections::HashMap<(u64, u64), u64> = Default::default();
                for (key, len) in maps.lines().filter_map(shared_mapping) {
                    *here.entry(key).or_insert(0) += len;
                }
                if here
                    .iter()
                    .all(|(key, len)| shm.get(key).is_some_and(|seen| seen >= len))
                {
                    continue;
                }
                let Some(smaps) = read_lossy(&format!("{base}/smaps")) else {
                    continue;
                };
                for (key, len) in shared_resident(&smaps) {
                    let e = shm.entry(key).or_insert(0);
                    *e = (*e).max(len);
                }
            }
        }
        held.shared_memory = shm.values().sum();
        for ((dev, ino), len) in mapped {
            if !seen.contains(&(dev, ino)) {
                held.bytes += len.max(INODE_COST);
            }
        }
        held
    }
}

/// When a scan of the task's processes may stop early.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    /// CPU time one scan may take.
    pub budget: Duration,
    /// Shared memory past which the task is over its memory limit.
    pub memory: u64,
    /// Deleted files past which the task is over `--max-upper` (what it
    /// may still write beyond its layers' size).
    pub bytes: u64,
}

/// What the processes of a task hold on disk beyond their layers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Held {
    /// Deleted files still open or mapped.
    pub bytes: u64,
    /// A process of the task could not be inspected.
    pub uninspectable: bool,
    /// The scan stopped at its CPU budget: the task keeps more processes,
    /// threads, descriptors or mappings than can be checked in time.
    pub too_costly: bool,
    /// Epoll watches registered by the task's processes (counted up to a
    /// little past the budget).
    pub epoll_watches: u64,
    /// Bytes in memfds and shared anonymous mappings, which per-process
    /// memory rlimits do not count.
    pub shared_memory: u64,
    /// File mappings of the task's processes (each keeps a file open).
    pub mapped_files: u64,
}

/// Whether the thread at `base` (`/proc/PID/task/TID`) runs without a
/// seccomp filter: only Airlock's own processes in a sandbox do. Its
/// `status` can be read when its descriptors cannot.
fn without_seccomp(base: &str) -> bool {
    read_lossy(&format!("{base}/status")).is_some_and(|st| {
        st.lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .is_some_and(|v| v.trim() == "0")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_backstop_needs_both_growth_and_a_nearly_full_machine() {
        let text =
            "MemTotal:       1000 kB\nMemFree: 5 kB\nMemAvailable:     50 kB\nShmem:  700 kB\n";
        assert_eq!(meminfo(text), Some((700 << 10, 50 << 10, 1000 << 10)));
        let g = 1u64 << 30;
        // Grew 3 GiB, shows 1, allowed 1: 2 GiB unexplained, memory low.
        assert_eq!(unexplained_memory(0, 3 * g, g, 16 * g, g, g), Some(2 * g));
        // The same growth with memory to spare: not stopped.
        assert_eq!(unexplained_memory(0, 3 * g, 8 * g, 16 * g, g, g), None);
        // Memory low but the growth is the task's own, shown and allowed.
        assert_eq!(unexplained_memory(0, 3 * g, g, 16 * g, 2 * g, g), None);
    }

    #[test]
    fn maps_lines_name_deleted_files_and_shared_memory() {
        let file = "7f00a000-7f00c000 r--s 00000000 00:31 1041 /g/big (deleted)";
        let dev = libc::makedev(0, 0x31);
        assert_eq!(deleted_mapping(file), Some(((dev, 1041), 0x2000)));
        assert_eq!(shared_mapping(file), None);
        let memfd = "7f00a000-7f01a000 rw-s 00000000 00:01 77 /memfd:x y (deleted)";
        assert_eq!(
            shared_mapping(memfd),
            Some(((libc::makedev(0, 1), 77), 0x10000))
        );
        let anon = "7f00a000-7f00b000 rw-s 00000000 00:01 9 /dev/zero (deleted)";
        assert_eq!(shared_mapping(anon).map(|(_, l)| l), Some(0x1000));
        // A file the agent named like one is not shared memory.
        let named = "7f00a000-7f00b000 rw-s 00000000 00:31 9 /g/memfd:x (deleted)";
        assert_eq!(shared_mapping(named), None);
        assert_eq!(
            shared_mapping("7f00a000-7f00b000 rw-s 00000000 00:01 9 /dev/zero"),
            None
        );
        let smaps = "7f00a000-7f01a000 rw-s 00000000 00:01 9 /dev/zero (deleted)
Size:                 64 kB
Rss:                   8 kB
7f01a000-7f01b000 r--p 00000000 00:31 5 /usr/lib/x
Rss:                   4 kB
7f01b000-7f01c000 rw-s 00001000 00:01 9 /dev/zero (deleted)
Rss:                   4 kB
";
        let r = shared_resident(smaps);
        assert_eq!(r.get(&(libc::makedev(0, 1), 9)), Some(&(12 * 1024)));
        assert_eq!(r.len(), 1);
    }
}
