//! What several checks read, read once.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use crate::{
    enrich::modules::{parse_proc_modules_full, ProcModule},
    policy::{
        event::normalise_module_name,
        modprobe_d::{self, ConfigLine, LineKind},
    },
    posture::{HostRoot, ReadError},
};

pub struct Host {
    pub root: HostRoot,
    /// `uname -r` of the host.
    pub release: Result<String, ReadError>,
    /// /proc/modules.
    pub modules: Result<Vec<ProcModule>, ReadError>,
    /// Every line of the effective modprobe configuration naming a module.
    pub modprobe: Vec<ConfigLine>,
    /// The CIS deny list of the embedded default policy, normalised.
    pub cis: Vec<String>,
}

pub(super) const PROC_MODULES: &str = "/proc/modules";

impl Host {
    pub fn read(root: HostRoot) -> Self {
        let modules = root
            .read(PROC_MODULES)
            .map(|text| parse_proc_modules_full(&text));
        let modprobe = modprobe_d::read_lines(&root.dirs(&modprobe_d::SYSTEM_DIRS));
        Self {
            release: root.kernel_release(),
            modules,
            modprobe,
            cis: crate::policy::defaults::cis_deny_list(),
            root,
        }
    }

    /// The running kernel's module directory, as the host names it.
    pub fn module_dir(&self) -> Result<String, &ReadError> {
        Ok(format!("/lib/modules/{}", self.release.as_ref()?))
    }

    /// Module name → its file (the host's path), from modules.dep, as
    /// modinfo and modprobe find them.
    pub fn module_files(&self) -> Result<BTreeMap<String, PathBuf>, ReadError> {
        let dir = self.module_dir().map_err(clone_error)?;
        let dep = self.root.read(&format!("{dir}/modules.dep"))?;
        Ok(dep
            .lines()
            .filter_map(|line| line.split(':').next())
            .filter_map(|file| {
                let name = file.rsplit('/').next()?.split(".ko").next()?;
                let path = if file.starts_with('/') {
                    PathBuf::from(file)
                } else {
                    PathBuf::from(&dir).join(file)
                };
                Some((normalise_module_name(name).into_owned(), path))
            })
            .collect())
    }

    /// The modules the configuration disables, with the reason of each:
    /// a blacklist, an install command that loads nothing, the CIS list.
    pub fn denied(&self) -> BTreeMap<String, Vec<String>> {
        let mut denied: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in &self.modprobe {
            let reason = match &line.kind {
                LineKind::Blacklist => "blacklist".to_owned(),
                LineKind::Install(command) if modprobe_d::loads_nothing(command) => {
                    format!("install {command}")
                }
                LineKind::Install(_) | LineKind::Options(_) => continue,
            };
            denied.entry(line.module.clone()).or_default().push(format!(
                "{reason} ({}:{})",
                self.root.host_path(&line.file).display(),
                line.line
            ));
        }
        for module in &self.cis {
            denied
                .entry(module.clone())
                .or_default()
                .push("the CIS deny list".to_owned());
        }
        denied
    }

    /// Names of the loaded modules, normalised.
    pub fn loaded_names(&self) -> Result<BTreeSet<String>, &ReadError> {
        Ok(self
            .modules
            .as_ref()?
            .iter()
            .map(|m| normalise_module_name(&m.name).into_owned())
            .collect())
    }
}

/// A copy of a shared read error, for a check that reports it as its own.
pub(super) fn clone_error(err: &ReadError) -> ReadError {
    ReadError {
        path: err.path.clone(),
        source: std::io::Error::new(err.source.kind(), err.source.to_string()),
    }
}
