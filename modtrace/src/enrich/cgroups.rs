//! Cgroup v2 paths by id. The kernel captures each caller's cgroup id at the
//! call; `/proc/PID/cgroup` is gone with the process, the cgroup usually is
//! not, and a cgroup v2 directory's inode number is its id. Reading the path
//! this way also names the cgroup of the call, not one the process moved to.
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::process::ProcRoot;

/// How often an unknown id may trigger a walk of the hierarchy: records of a
/// cgroup removed since must not make every record walk it again.
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on directories visited per walk.
const MAX_CGROUPS: usize = 100_000;

pub(super) struct CgroupPaths {
    /// The cgroup2 mount point, and the hierarchy path it shows as its root.
    mount: Option<(PathBuf, String)>,
    known: HashMap<u64, String>,
    last_scan: Option<Instant>,
}

impl CgroupPaths {
    /// For the cgroup2 hierarchy mounted on this host, if any.
    pub(super) fn new(proc: &ProcRoot) -> Self {
        let mount = fs::read_to_string(proc.path().join("self/mountinfo"))
            .ok()
            .and_then(|text| cgroup2_mount(&text));
        Self::at(mount)
    }

    fn at(mount: Option<(PathBuf, String)>) -> Self {
        Self {
            mount,
            known: HashMap::new(),
            last_scan: None,
        }
    }

    /// The path of cgroup `id` in the hierarchy, as `/proc/PID/cgroup` shows it.
    pub(super) fn path_of(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.known.get(&id) {
            return Some(path.clone());
        }
        if self
            .last_scan
            .is_some_and(|t| t.elapsed() < RESCAN_INTERVAL)
        {
            return None;
        }
        self.scan();
        self.known.get(&id).cloned()
    }

    /// Indexes the cgroups that exist now. The index is rebuilt, not added
    /// to, so that on a host where containers come and go it holds the
    /// live cgroups, not every one ever seen.
    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        let Some((mount, root)) = &self.mount else {
            return;
        };
        self.known.clear();
        let mut pending = vec![mount.clone()];
        let mut visited = 0;
        while let Some(dir) = pending.pop() {
            visited += 1;
            if visited > MAX_CGROUPS {
                tracing::warn!(
                    "more than {MAX_CGROUPS} cgroups under {}: stopped indexing them",
                    mount.display()
                );
                return;
            }
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            let relative = dir.strip_prefix(mount).unwrap_or(Path::new(""));
            self.known.insert(meta.ino(), join(root, relative));
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            pending.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
}

fn join(root: &str, relative: &Path) -> String {
    let relative = relative.to_string_lossy();
    match (root.trim_end_matches('/'), relative.as_ref()) {
        ("", "") => "/".to_owned(),
        (root, "") => root.to_owned(),
        (root, rel) => format!("{root}/{rel}"),
    }
}

/// The mount point and root of the first cgroup2 line of a mountinfo file:
/// `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [TAGS…] - FSTYPE SOURCE SUPER`.
fn cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = mount.split_whitespace().collect();
        Some((
            PathBuf::from(unescape(fields.get(4)?)),
            unescape(fields.get(3)?),
        ))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_and_its_root() {
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                    30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(info),
            Some((PathBuf::from("/sys/fs/cgroup"), "/".to_owned()))
        );
        let nested = "30 24 0:26 /docker/abc /sys/fs/cgroup\\040x rw shared:9 - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount(nested),
            Some((PathBuf::from("/sys/fs/cgroup x"), "/docker/abc".to_owned()))
        );
        assert_eq!(cgroup2_mount("22 1 0:21 / /proc rw - proc proc rw\n"), None);
        assert_eq!(cgroup2_mount("garbage\n\n - cgroup2\n"), None);
    }

    #[test]
    fn paths_are_relative_to_the_hierarchy() {
        assert_eq!(join("/", Path::new("")), "/");
        assert_eq!(
            join("/", Path::new("system.slice/a.service")),
            "/system.slice/a.service"
        );
        assert_eq!(join("/docker/abc", Path::new("")), "/docker/abc");
        assert_eq!(join("/docker/abc", Path::new("x")), "/docker/abc/x");
    }

    #[test]
    fn names_directories_by_inode_and_rescans_at_most_once_a_second() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("system.slice/a.service")).unwrap();
        let ino = |p: &str| fs::metadata(dir.path().join(p)).unwrap().ino();
        let mut paths = CgroupPaths::at(Some((dir.path().to_path_buf(), "/".into())));
        assert_eq!(
            paths.path_of(ino("system.slice/a.service")).as_deref(),
            Some("/system.slice/a.service")
        );
        assert_eq!(paths.path_of(ino("")).as_deref(), Some("/"));
        fs::create_dir(dir.path().join("late")).unwrap();
        assert_eq!(
            paths.path_of(ino("late")),
            None,
            "no second walk within a second"
        );
        let gone = ino("system.slice/a.service");
        fs::remove_dir(dir.path().join("system.slice/a.service")).unwrap();
        paths.last_scan = None;
        assert_eq!(paths.path_of(ino("late")).as_deref(), Some("/late"));
        assert!(
            !paths.known.contains_key(&gone),
            "a removed cgroup leaves the index"
        );
        assert_eq!(CgroupPaths::at(None).path_of(1), None);
    }

    #[test]
    fn this_process_cgroup_by_its_id() {
        let mut paths = CgroupPaths::new(&ProcRoot::default());
        let own =
            crate::enrich::process::parse_cgroup(&fs::read_to_string("/proc/self/cgroup").unwrap())
                .unwrap();
        let (mount, _) = paths
            .mount
            .clone()
            .expect("cgroup2 is mounted where the tests run");
        let id = fs::metadata(mount.join(own.trim_start_matches('/')))
            .unwrap()
            .ino();
        assert_eq!(paths.path_of(id), Some(own));
    }
}
