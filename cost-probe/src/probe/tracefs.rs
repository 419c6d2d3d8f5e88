//! tracefs: mounting it when missing, and reading tracepoint field offsets from `format` files so
//! the kernel side never hard-codes a layout.
use std::{
    ffi::CString,
    fs,
    io::{self, BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use cost_probe_common::TpOffsets;

use super::ProbeError;

/// Where tracefs usually lives; the second is the legacy debugfs location.
const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Returns the tracefs root, mounting it at `/sys/kernel/tracing` if no mount has the events.
pub fn ensure_mounted() -> Result<PathBuf, ProbeError> {
    match lookup() {
        Lookup::Found(dir) => return Ok(dir),
        // Mounting again would not help (and fails without CAP_SYS_ADMIN, which used to be all
        // the user was told): the mount is there, this user may not read it.
        Lookup::Unreadable { path, mode, uid } => {
            return Err(ProbeError::TracefsUnreadable { path, mode, uid });
        }
        Lookup::Missing => {}
    }
    let target = Path::new(TRACEFS_DIRS[0]);
    let c_target = CString::new(TRACEFS_DIRS[0]).expect("no NUL in a literal");
    let fstype = CString::new("tracefs").expect("no NUL in a literal");
    let source = CString::new("nodev").expect("no NUL in a literal");
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            c_target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::Tracefs {
            path: target.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    log::info!("mounted tracefs at {}", target.display());
    find().ok_or_else(|| ProbeError::Tracefs {
        path: target.to_path_buf(),
        source: io::Error::new(io::ErrorKind::NotFound, "mounted, but no events/ directory"),
    })
}

/// The first tracefs root that has an `events/syscalls` directory.
#[must_use]
pub fn find() -> Option<PathBuf> {
    match lookup() {
        Lookup::Found(root) => Some(root),
        Lookup::Unreadable { .. } | Lookup::Missing => None,
    }
}

/// What this process finds where tracefs usually lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A tracefs root with its `events/syscalls` directory.
    Found(PathBuf),
    /// Something this user may not look into is there (tracefs is mounted with mode 0700 by
    /// default): it is mounted, but only root (or `CAP_DAC_READ_SEARCH`) can read it.
    Unreadable { path: PathBuf, mode: u32, uid: u32 },
    /// Not mounted at either place.
    Missing,
}

/// Looks for tracefs at the usual places.
#[must_use]
pub fn lookup() -> Lookup {
    lookup_in(&TRACEFS_DIRS.map(PathBuf::from))
}

/// Looks for tracefs at `dirs`, in order: the first readable root wins; else the first one
/// this user is denied; else missing.
#[must_use]
pub fn lookup_in(dirs: &[PathBuf]) -> Lookup {
    use std::os::unix::fs::MetadataExt as _;
    let mut denied = None;
    for d in dirs {
        match fs::metadata(d.join("events/syscalls")) {
            Ok(m) if m.is_dir() => return Lookup::Found(d.clone()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && denied.is_none() => {
                let (mode, uid) = fs::metadata(d).map_or((0, 0), |m| (m.mode() & 0o7777, m.uid()));
                denied = Some(Lookup::Unreadable {
                    path: d.clone(),
                    mode,
                    uid,
                });
            }
            _ => {}
        }
    }
    denied.unwrap_or(Lookup::Missing)
}

/// What `doctor` and `attach` say of a tracefs this user cannot read. `CAP_BPF` and `CAP_PERFMON`
/// are not enough: the `syscalls:*` tracepoints exist only as tracefs events (they are not raw
/// tracepoints), `perf_event_open` attaches them by the id in their tracefs `id` file, and the
/// record layout comes from their `format` file. Both files are mode 0440 under a 0700 root.
#[must_use]
pub fn unreadable_message(path: &Path, mode: u32, uid: u32) -> String {
    format!(
        "tracefs is mounted at {p} but not readable by this user (mode {mode:04o}, owner uid \
         {uid}); CAP_BPF and CAP_PERFMON are not enough, since the syscall tracepoints are \
         attached by the ids in tracefs: run as root, add CAP_DAC_READ_SEARCH, or remount it \
         for a group this user is in (`mount -o remount,mode=0750,gid=GROUP {p}`)",
        p = path.display()
    )
}

/// One `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Parses a tracepoint `format` file, e.g.
/// `\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;`
pub fn parse_format(r: impl Read) -> io::Result<Vec<Field>> {
    let mut fields = Vec::new();
    for line in BufReader::new(r).lines() {
        let line = line?;
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let decl = parts.next().unwrap_or_default();
        let (mut offset, mut size) = (None, None);
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        // The name is the last word of the declaration, without an array suffix.
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()
            .unwrap_or_default();
        let name = name.split('[').next().unwrap_or_default().to_owned();
        if let (Some(offset), Some(size)) = (offset, size) {
            fields.push(Field { name, offset, size });
        }
    }
    Ok(fields)
}

fn read_fields(root: &Path, category: &str, name: &str) -> Result<Vec<Field>, ProbeError> {
    let path = root.join("events").join(category).join(name).join("format");
    let f = fs::File::open(&path).map_err(|source| ProbeError::Format {
        path: path.clone(),
        why: source.to_string(),
    })?;
    parse_format(f).map_err(|source| ProbeError::Format {
        path,
        why: source.to_string(),
    })
}

fn offset_of(fields: &[Field], name: &str, tp: &str) -> Result<u32, ProbeError> {
    fields
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.offset)
        .ok_or_else(|| ProbeError::Format {
            path: PathBuf::from(tp),
            why: format!("no field `{name}`"),
        })
}

/// Reads the offsets the kernel side needs and checks that every syscall tracepoint we attach
/// has the layout the kernel side is compiled with ([`TpOffsets::SYSCALLS`]: `__syscall_nr`,
/// then 8-byte arguments at enter or the 8-byte `ret` at exit).
pub fn offsets(root: &Path, syscalls: &[&str]) -> Result<TpOffsets, ProbeError> {
    for tp in syscalls {
        check_syscall_layout(tp, &read_fields(root, "syscalls", tp)?)?;
    }
    let fork_child_pid = offset_of(
        &read_fields(root, "sched", "sched_process_fork")?,
        "child_pid",
        "sched/sched_process_fork",
    )?;
    Ok(TpOffsets {
        fork_child_pid,
        ..TpOffsets::SYSCALLS
    })
}

/// Checks one `syscalls:*` format against the layout compiled into the kernel side.
fn check_syscall_layout(tp: &str, fields: &[Field]) -> Result<(), ProbeError> {
    let want = TpOffsets::SYSCALLS;
    let wrong = |why: String| ProbeError::Format {
        path: PathBuf::from(format!("syscalls/{tp}")),
        why,
    };
    let nr = offset_of(fields, "__syscall_nr", tp)?;
    if nr != want.enter_nr {
        return Err(wrong(format!(
            "`__syscall_nr` at offset {nr}; cost-probe's eBPF side is built for {}",
            want.enter_nr
        )));
    }
    if tp.starts_with("sys_exit_") {
        let ret = fields.iter().find(|f| f.name == "ret");
        return match ret {
            Some(f) if f.offset == want.exit_ret && f.size == 8 => Ok(()),
            Some(f) => Err(wrong(format!(
                "`ret` at offset {} size {}; cost-probe's eBPF side is built for offset {} size 8",
                f.offset, f.size, want.exit_ret
            ))),
            None => Err(wrong("no field `ret`".into())),
        };
    }
    let args = fields.iter().filter(|f| f.offset > nr);
    for (i, f) in args.enumerate() {
        let at = want.enter_args + 8 * i as u32;
        if f.offset != at || f.size != 8 {
            return Err(wrong(format!(
                "argument {i} (`{}`) at offset {} size {}; cost-probe's eBPF side is built for \
                 offset {at} size 8",
                f.name, f.offset, f.size
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from /sys/kernel/tracing/events/syscalls/sys_enter_sendto/format on the
    // project's Firecracker VM (kernel 6.18, x86_64).
    const SENDTO: &str = "name: sys_enter_sendto
ID: 2224
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * buff;\toffset:24;\tsize:8;\tsigned:0;
\tfield:size_t len;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned int flags;\toffset:40;\tsize:8;\tsigned:0;
\tfield:struct sockaddr * addr;\toffset:48;\tsize:8;\tsigned:0;
\tfield:int addr_len;\toffset:56;\tsize:8;\tsigned:0;

print fmt: \"fd: 0x%08lx, buff: 0x%08lx, len: 0x%08lx, flags: 0x%08lx, addr: 0x%08lx, addr_len: 0x%08lx\", ((unsigned long)(REC->fd)), ((unsigned long)(REC->buff)), ((unsigned long)(REC->len)), ((unsigned long)(REC->flags)), ((unsigned long)(REC->addr)), ((unsigned long)(REC->addr_len))
";

    /// Regression (#10.12): `doctor` as an unprivileged user said "tracefs not mounted" when it
    /// was mounted with mode 0700. A denied lookup needs a non-root uid (see the `cli_edges`
    /// test); here the found and missing cases, and the message.
    #[test]
    fn tracefs_mounted_but_unreadable_is_not_reported_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        assert_eq!(lookup_in(&[a.clone(), b.clone()]), Lookup::Missing);
        std::fs::create_dir_all(b.join("events/syscalls")).unwrap();
        assert_eq!(lookup_in(&[a, b.clone()]), Lookup::Found(b));
        let msg = unreadable_message(Path::new("/sys/kernel/tracing"), 0o700, 0);
        assert!(
            msg.starts_with(
                "tracefs is mounted at /sys/kernel/tracing but not readable by this user (mode \
                 0700, owner uid 0)"
            ),
            "{msg}"
        );
    }

    /// Regression (#10.12, attach side): a user with `CAP_BPF` and `CAP_PERFMON` was told "cannot
    /// mount tracefs" when tracefs was mounted mode 0700. The error now names the mount, why the
    /// capabilities are not enough, and the ways out.
    #[test]
    fn attach_with_tracefs_unreadable_says_what_is_wrong_and_what_to_do() {
        let err = ProbeError::TracefsUnreadable {
            path: PathBuf::from("/sys/kernel/tracing"),
            mode: 0o700,
            uid: 0,
        }
        .to_string();
        for want in [
            "mounted at /sys/kernel/tracing",
            "not readable by this user (mode 0700",
            "CAP_BPF and CAP_PERFMON are not enough",
            "ids in tracefs",
            "CAP_DAC_READ_SEARCH",
            "mount -o remount,mode=0750,gid=GROUP /sys/kernel/tracing",
        ] {
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
        assert!(!err.contains("cannot mount"), "{err}");
    }

    #[test]
    fn parses_names_offsets_and_sizes() {
        let f = parse_format(SENDTO.as_bytes()).unwrap();
        assert_eq!(f.len(), 11);
        assert_eq!(
            f[4],
            Field {
                name: "__syscall_nr".into(),
                offset: 8,
                size: 4
            }
        );
        assert_eq!(f[6].name, "buff");
        assert_eq!(f[9].name, "addr");
        assert_eq!(f[10].offset, 56);
    }

    // Captured from events/sched/sched_process_fork/format on the same VM: since 6.x the comms are
    // __data_loc strings, so child_pid moved from offset 44 to 20.
    const FORK: &str = "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
";

    #[test]
    fn data_loc_fields_parse() {
        let f = parse_format(FORK.as_bytes()).unwrap();
        assert_eq!(offset_of(&f, "child_pid", "fork").unwrap(), 20);
        assert_eq!(f[4].name, "parent_comm");
    }

    // Captured from events/syscalls/sys_exit_read/format on the same VM.
    const EXIT_READ: &str = "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;
";

    #[test]
    fn exit_layout_is_checked_for_ret_and_enter_layout_for_arguments() {
        let exit = parse_format(EXIT_READ.as_bytes()).unwrap();
        check_syscall_layout("sys_exit_read", &exit).unwrap();
        check_syscall_layout(
            "sys_enter_sendto",
            &parse_format(SENDTO.as_bytes()).unwrap(),
        )
        .unwrap();
        // The exit program reads `ret` at a compiled-in offset: a kernel that moved it is refused.
        let moved = EXIT_READ.replace("offset:16;\tsize:8", "offset:24;\tsize:8");
        let err = check_syscall_layout("sys_exit_read", &parse_format(moved.as_bytes()).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("`ret` at offset 24"), "{err}");
    }

    #[test]
    fn array_fields_lose_their_suffix() {
        let f = parse_format(
            "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;".as_bytes(),
        )
        .unwrap();
        assert_eq!(f[0].name, "parent_comm");
    }
}
