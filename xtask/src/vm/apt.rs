//! The harness's own apt: one configuration per Debian release under
//! `target/vm/apt/<release>/` (sources list, package lists, cache, an empty
//! status file, downloaded archives), so that a guest's kernel and userland come
//! from that release alone and the machine's apt sources, lists and settings are
//! never read or changed.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _, Result};

use crate::sh::{output, status};

const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
/// Read only: the archive's signing keys, as Debian's keyring package installs them.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Private lists older than this are refreshed before they are used.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// A Debian release: the suites its packages come from (kernels move to the
/// security suite after the point release).
pub(crate) struct Release {
    pub name: &'static str,
    suites: &'static [&'static str],
}

pub(crate) const BULLSEYE: Release = Release {
    name: "bullseye",
    suites: &["bullseye", "bullseye-updates", "bullseye-security"],
};
pub(crate) const BOOKWORM: Release = Release {
    name: "bookworm",
    suites: &["bookworm", "bookworm-updates", "bookworm-security"],
};
pub(crate) const TRIXIE: Release = Release {
    name: "trixie",
    suites: &["trixie", "trixie-updates", "trixie-security"],
};
pub(crate) const SID: Release = Release {
    name: "sid",
    suites: &["sid"],
};

impl Release {
    /// One `deb` line per suite, main component only, signed by Debian's archive keys.
    fn sources_list(&self) -> String {
        self.suites
            .iter()
            .map(|suite| {
                let mirror = if suite.ends_with("-security") {
                    SECURITY_MIRROR
                } else {
                    MIRROR
                };
                format!("deb [arch=amd64 signed-by={KEYRING}] {mirror} {suite} main\n")
            })
            .collect()
    }
}

/// apt-get and apt-cache over one release's private state.
pub(crate) struct Apt {
    release: &'static Release,
    dir: PathBuf,
}

impl Apt {
    /// The release's apt state under `vm_dir/apt/<release>/`, created if missing.
    pub(crate) fn open(release: &'static Release, vm_dir: &Path) -> Result<Self> {
        let apt = Self {
            release,
            dir: vm_dir.join("apt").join(release.name),
        };
        for dir in [
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/sources.list.d",
            "lists/partial",
            "cache",
            "archives/partial",
        ] {
            let path = apt.dir.join(dir);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        apt.write_if_changed("etc/sources.list", &release.sources_list())?;
        // Read before any `-o` option: keeps the machine's apt.conf.d out.
        apt.write_if_changed(
            "etc/apt.conf",
            &format!(
                "Dir::Etc::Main \"/dev/null\";\nDir::Etc::Parts \"{}\";\n",
                apt.dir.join("etc/apt.conf.d").display()
            ),
        )?;
        // Nothing is installed: apt resolves every dependency from the lists.
        apt.write_if_changed("status", "")?;
        Ok(apt)
    }

    fn write_if_changed(&self, file: &str, text: &str) -> Result<()> {
        let path = self.dir.join(file);
        if fs::read_to_string(&path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    pub(crate) fn archives(&self) -> PathBuf {
        self.dir.join("archives")
    }

    /// `tool` (apt-get, apt-cache) with every directory and setting pointed at
    /// this release's private state.
    pub(crate) fn command(&self, tool: &str) -> Command {
        let dir = |sub: &str| self.dir.join(sub).display().to_string();
        let mut cmd = Command::new(tool);
        cmd.env("APT_CONFIG", dir("etc/apt.conf"));
        for (key, value) in [
            ("Dir::Etc::SourceList", dir("etc/sources.list")),
            ("Dir::Etc::SourceParts", dir("etc/sources.list.d")),
            ("Dir::Etc::Preferences", dir("etc/preferences")),
            ("Dir::Etc::PreferencesParts", dir("etc/preferences.d")),
            ("Dir::State::Lists", dir("lists")),
            ("Dir::State::Status", dir("status")),
            ("Dir::Cache", dir("cache")),
            ("Dir::Cache::Archives", dir("archives")),
            ("APT::Architecture", "amd64".into()),
            ("APT::Architectures", "amd64".into()),
            ("Acquire::Languages", "none".into()),
            // The private directories belong to root; apt's _apt user cannot write them.
            ("APT::Sandbox::User", "root".into()),
            // A mirror that serves a snapshot serves sid's InRelease past its
            // Valid-Until (a week); its signature is still checked against KEYRING.
            ("Acquire::Check-Valid-Until", "false".into()),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("lists/.updated")
    }

    /// `apt-get update` of the private lists.
    pub(crate) fn update(&self) -> Result<()> {
        eprintln!("vm: refreshing the {} package lists", self.release.name);
        status(self.command("apt-get").args(["update", "-qq"]))
            .with_context(|| format!("updating the {} lists", self.release.name))?;
        fs::write(self.stamp(), "")?;
        Ok(())
    }

    /// Refreshes the lists when they were never fetched or are older than a day;
    /// lists that are only old serve, with a warning, when the mirror cannot be reached.
    fn ensure_fresh(&self) -> Result<()> {
        let age = fs::metadata(self.stamp())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        match age {
            Some(age) if age < LISTS_MAX_AGE => Ok(()),
            None => self.update(),
            Some(age) => self.update().or_else(|err| {
                eprintln!(
                    "vm: WARNING: using the {} lists of {} h ago: {err:#}",
                    self.release.name,
                    age.as_secs() / 3600
                );
                Ok(())
            }),
        }
    }

    /// The newest package whose name matches `glob` ([`glob_matches`]), refreshing
    /// the lists once when nothing matches.
    pub(crate) fn newest_matching(&self, glob: &str) -> Result<String> {
        self.ensure_fresh()?;
        if let Some(name) = self.newest_listed(glob)? {
            return Ok(name);
        }
        self.update()?;
        self.newest_listed(glob)?.with_context(|| {
            format!(
                "no package of {} matches {glob} (suites {})",
                self.release.name,
                self.release.suites.join(", ")
            )
        })
    }

    fn newest_listed(&self, glob: &str) -> Result<Option<String>> {
        let prefix = glob.split('*').next().unwrap_or_default();
        let names = output(self.command("apt-cache").args(["pkgnames", prefix]))?;
        Ok(newest(glob, names.lines()).map(str::to_owned))
    }

    /// The .deb of `package` in the private archives, downloaded unless it is there.
    pub(crate) fn download(&self, package: &str) -> Result<PathBuf> {
        if let Some(deb) = self.cached(package)? {
            return Ok(deb);
        }
        self.ensure_fresh()?;
        status(
            self.command("apt-get")
                .args(["download", "-q", package])
                .current_dir(self.archives()),
        )?;
        self.cached(package)?.with_context(|| {
            format!(
                "apt-get download {package} left no .deb in {}",
                self.archives().display()
            )
        })
    }

    /// The newest .deb of `package` already in the archives.
    fn cached(&self, package: &str) -> Result<Option<PathBuf>> {
        let dir = self.archives();
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            if file.ends_with(".deb") && file.split('_').next() == Some(package) {
                found.push((file.into_owned(), path));
            }
        }
        found.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        Ok(found.pop().map(|(_, path)| path))
    }

    /// The .debs of `packages` and everything they depend on (no recommends), as
    /// apt resolves them for an empty system, downloaded into the archives.
    pub(crate) fn download_with_depends(&self, packages: &[&str]) -> Result<Vec<PathBuf>> {
        self.ensure_fresh()?;
        let install = |mode: &str| {
            let mut cmd = self.command("apt-get");
            cmd.args(["install", mode, "-y", "-q", "--no-install-recommends"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive");
            cmd
        };
        let plan = output(&mut install("--simulate"))?;
        let files = planned_debs(&plan);
        if files.is_empty() {
            bail!("apt plans to install nothing for {packages:?}: {plan}");
        }
        let debs: Vec<PathBuf> = files.iter().map(|f| self.archives().join(f)).collect();
        if debs.iter().any(|deb| !deb.is_file()) {
            status(&mut install("--download-only"))?;
        }
        for deb in &debs {
            if !deb.is_file() {
                bail!("apt downloaded no {}", deb.display());
            }
        }
        Ok(debs)
    }
}

/// The file apt downloads for each `Inst` line of `apt-get install --simulate`
/// (`Inst kmod (28-1 Debian:11.11/oldoldstable [amd64])`, with ` []` after it when
/// the package breaks an ordering loop): `name_version_arch.deb`,
/// the epoch's colon escaped (`zlib1g_1%3a1.2.11.dfsg-2_amd64.deb`).
fn planned_debs(plan: &str) -> Vec<String> {
    plan.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("Inst ")?;
            let (package, rest) = rest.split_once(" (")?;
            let (planned, _) = rest.split_once(')')?;
            let version = planned.split_whitespace().next()?.replace(':', "%3a");
            let arch = planned.rsplit_once('[')?.1.strip_suffix(']')?;
            Some(format!("{package}_{version}_{arch}.deb"))
        })
        .collect()
}

/// The upstream part of a Debian version: no epoch, no Debian revision, no
/// `+` suffix (`30+20221128-1` → `30`, `1:34.2-2+b2` → `34.2`).
pub(crate) fn upstream_version(debian: &str) -> &str {
    let no_epoch = debian.split_once(':').map_or(debian, |(_, v)| v);
    let no_revision = no_epoch.rsplit_once('-').map_or(no_epoch, |(v, _)| v);
    no_revision.split('+').next().unwrap_or(no_revision)
}

/// The greatest of `names` that match `glob`, numbers compared by value.
pub(crate) fn newest<'a>(glob: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    names
        .filter(|name| glob_matches(glob, name))
        .max_by(|a, b| natural_cmp(a, b))
}

/// `*` matches one or more characters other than `-`, so `6.1.0-*-amd64` does not
/// match `6.1.0-56-cloud-amd64`.
pub(crate) fn glob_matches(glob: &str, name: &str) -> bool {
    match glob.split_once('*') {
        None => glob == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (1..=rest.len()).any(|n| {
                rest.is_char_boundary(n)
                    && !rest[..n].contains('-')
                    && glob_matches(tail, &rest[n..])
            })
        }
    }
}

/// Orders names with numbers by value: `6.1.0-9` < `6.1.0-56`.
pub(crate) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() && !b.is_empty() {
        let (chunk_a, rest_a) = split_chunk(a);
        let (chunk_b, rest_b) = split_chunk(b);
        let order = match (chunk_a.parse::<u64>(), chunk_b.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => chunk_a.cmp(chunk_b),
        };
        if order.is_ne() {
            return order;
        }
        (a, b) = (rest_a, rest_b);
    }
    a.len().cmp(&b.len())
}

fn split_chunk(s: &str) -> (&str, &str) {
    let digits = s.starts_with(|c: char| c.is_ascii_digit());
    let end = s
        .find(|c: char| c.is_ascii_digit() != digits)
        .unwrap_or(s.len());
    s.split_at(end)
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use super::*;

    #[test]
    fn glob_matches_abi_numbers_only() {
        let image = "linux-image-6.1.0-*-amd64";
        assert!(glob_matches(image, "linux-image-6.1.0-56-amd64"));
        assert!(!glob_matches(image, "linux-image-6.1.0-56-cloud-amd64"));
        assert!(!glob_matches(image, "linux-image-6.1.0-56-amd64-dbg"));
        let cloud = "linux-image-6.12.*+deb12-cloud-amd64";
        assert!(glob_matches(
            cloud,
            "linux-image-6.12.117+deb12-cloud-amd64"
        ));
        assert!(!glob_matches(
            cloud,
            "linux-image-6.12.118+deb13-cloud-amd64"
        ));
        assert!(!glob_matches(
            cloud,
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned"
        ));
        let generic = "linux-image-6.12.*+deb13-amd64";
        assert!(glob_matches(generic, "linux-image-6.12.118+deb13-amd64"));
        assert!(!glob_matches(
            generic,
            "linux-image-6.12.118+deb13-rt-amd64"
        ));
        assert!(!glob_matches(
            generic,
            "linux-image-6.12.118+deb13-cloud-amd64"
        ));
        assert!(glob_matches(
            "linux-binary-7.2.*+deb14-cloud-amd64",
            "linux-binary-7.2.13+deb14-cloud-amd64"
        ));
    }

    #[test]
    fn natural_order_compares_numbers_by_value() {
        assert_eq!(
            natural_cmp("6.1.0-9-amd64", "6.1.0-56-amd64"),
            Ordering::Less
        );
        assert_eq!(
            natural_cmp("6.12.117+deb12", "6.12.99+deb12"),
            Ordering::Greater
        );
    }

    #[test]
    fn newest_is_the_greatest_match() {
        let names = [
            "linux-image-5.10.0-9-amd64",
            "linux-image-5.10.0-46-amd64",
            "linux-image-5.10.0-46-rt-amd64",
            "linux-image-5.10.0-32-amd64",
            "linux-image-5.10.0-47-cloud-amd64",
        ];
        assert_eq!(
            newest("linux-image-5.10.0-*-amd64", names.into_iter()),
            Some("linux-image-5.10.0-46-amd64")
        );
        assert_eq!(
            newest("linux-image-4.19.0-*-amd64", names.into_iter()),
            None
        );
    }

    #[test]
    fn every_apt_command_uses_only_the_private_state() {
        let apt = Apt {
            release: &BULLSEYE,
            dir: PathBuf::from("/t/vm/apt/bullseye"),
        };
        let cmd = apt.command("apt-get");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let options: Vec<&str> = args
            .chunks(2)
            .map(|pair| {
                assert_eq!(pair[0], "-o", "{args:?}");
                pair[1].as_str()
            })
            .collect();
        for dir in [
            "Dir::Etc::SourceList=/t/vm/apt/bullseye/etc/sources.list",
            "Dir::Etc::SourceParts=/t/vm/apt/bullseye/etc/sources.list.d",
            "Dir::State::Lists=/t/vm/apt/bullseye/lists",
            "Dir::State::Status=/t/vm/apt/bullseye/status",
            "Dir::Cache=/t/vm/apt/bullseye/cache",
            "Dir::Cache::Archives=/t/vm/apt/bullseye/archives",
        ] {
            assert!(options.contains(&dir), "{dir} not in {options:?}");
        }
        let paths = options
            .iter()
            .filter_map(|o| o.split_once('=').map(|(_, v)| v))
            .filter(|v| v.starts_with('/'));
        for path in paths {
            assert!(path.starts_with("/t/vm/apt/bullseye/"), "{path}");
        }
        let config = cmd
            .get_envs()
            .find(|(k, _)| *k == "APT_CONFIG")
            .and_then(|(_, v)| v);
        assert_eq!(
            config,
            Some(Path::new("/t/vm/apt/bullseye/etc/apt.conf").as_os_str())
        );
    }

    #[test]
    fn sources_name_each_suite_on_its_archive() {
        assert_eq!(
            BULLSEYE.sources_list(),
            format!(
                "deb [arch=amd64 signed-by={KEYRING}] http://deb.debian.org/debian bullseye main\n\
                 deb [arch=amd64 signed-by={KEYRING}] http://deb.debian.org/debian bullseye-updates main\n\
                 deb [arch=amd64 signed-by={KEYRING}] http://deb.debian.org/debian-security bullseye-security main\n"
            )
        );
    }

    #[test]
    fn simulated_installs_name_the_files_apt_downloads() {
        let plan = "NOTE: This is only a simulation!\n\
            Inst libkmod2 (28-1 Debian:11.11/oldoldstable [amd64])\n\
            Inst lsb-base (11.1.0 Debian:11.11/oldoldstable [all])\n\
            Inst libc6 (2.31-13+deb11u14 Debian-Security:11/oldoldstable-security [amd64]) []\n\
            Inst zlib1g (1:1.2.11.dfsg-2+deb11u2 Debian:11.11/oldoldstable, Debian-Security:11/oldoldstable-security [amd64])\n\
            Conf libkmod2 (28-1 Debian:11.11/oldoldstable [amd64])\n";
        assert_eq!(
            planned_debs(plan),
            [
                "libkmod2_28-1_amd64.deb",
                "lsb-base_11.1.0_all.deb",
                "libc6_2.31-13+deb11u14_amd64.deb",
                "zlib1g_1%3a1.2.11.dfsg-2+deb11u2_amd64.deb"
            ]
        );
    }

    #[test]
    fn upstream_version_drops_epoch_revision_and_suffix() {
        assert_eq!(upstream_version("28-1"), "28");
        assert_eq!(upstream_version("30+20221128-1"), "30");
        assert_eq!(upstream_version("34.2-2+b2"), "34.2");
        assert_eq!(upstream_version("1:34.2-2"), "34.2");
    }
}
