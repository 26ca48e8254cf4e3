//! The initramfs: rebuilt since modprobe.d last changed (or the early
//! ramdisk still loads what the configuration now denies), and which denied
//! modules it carries.
use std::{path::PathBuf, time::SystemTime};

use serde_json::json;

use super::{Check, Host, Outcome, Section, Status};
use crate::{
    policy::modprobe_d::{self, LineKind},
    posture::{
        initramfs::{self, Initramfs, Limits},
        ReadError,
    },
};

/// The image's configuration, compared with the host's.
const IMAGE_MODPROBE_DIRS: [&str; 3] =
    ["etc/modprobe.d/", "usr/lib/modprobe.d/", "lib/modprobe.d/"];

/// Debian's initramfs-tools name, then dracut's.
fn image_paths(release: &str) -> [String; 2] {
    [
        format!("/boot/initrd.img-{release}"),
        format!("/boot/initramfs-{release}.img"),
    ]
}

/// The initramfs of the running kernel, by its host path.
fn find_image(host: &Host) -> Result<Option<String>, &ReadError> {
    let release = host.release.as_ref()?;
    Ok(image_paths(release)
        .into_iter()
        .find(|p| host.root.path(p).exists()))
}

fn no_image(host: &Host) -> Outcome {
    let tried = host
        .release
        .as_ref()
        .map(|r| image_paths(r).join(" nor "))
        .unwrap_or_default();
    Outcome::new(
        Status::Unknown,
        format!("no initramfs for the running kernel: no {tried}"),
    )
    .evidence("/boot", "no initramfs")
    .data(json!({"image": null}))
}

fn update_fix(host: &Host) -> String {
    let release = host.release.as_deref().unwrap_or("all");
    format!("update-initramfs -u -k {release}")
}

pub(super) const FRESH: Check = Check {
    id: "initramfs.fresh",
    section: Section::Initramfs,
    title: "The initramfs was rebuilt after the last modprobe.d change",
    run: fresh,
};

/// The newest modification among the effective modprobe.d files and their
/// directories (a removed file changes its directory).
fn newest_config_change(host: &Host) -> Option<(PathBuf, SystemTime)> {
    let dirs = host.root.dirs(&modprobe_d::SYSTEM_DIRS);
    let files = modprobe_d::effective_files(&dirs);
    files
        .into_iter()
        .chain(dirs.iter().map(PathBuf::from))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(time, path)| (host.root.host_path(&path), time))
}

fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn fresh(host: &Host) -> Outcome {
    let image = match find_image(host) {
        Ok(Some(image)) => image,
        Ok(None) => return no_image(host),
        Err(err) => return Outcome::unreadable(err),
    };
    let built = match std::fs::metadata(host.root.path(&image)).and_then(|m| m.modified()) {
        Ok(time) => time,
        Err(source) => {
            return Outcome::unreadable(&ReadError {
                path: image.into(),
                source,
            })
        }
    };
    let Some((changed_path, changed)) = newest_config_change(host) else {
        return Outcome::new(
            Status::Pass,
            "no modprobe.d configuration to be stale against",
        )
        .evidence(&image, format!("built {}", rfc3339(built)));
    };
    let stale = changed > built;
    let outcome = Outcome::new(
        if stale { Status::Fail } else { Status::Pass },
        if stale {
            format!(
                "the initramfs is older than {}: the early ramdisk still has the old configuration",
                changed_path.display()
            )
        } else {
            "the initramfs is newer than every modprobe.d change".to_owned()
        },
    )
    .evidence(&image, format!("built {}", rfc3339(built)))
    .evidence(
        changed_path.display(),
        format!("changed {}", rfc3339(changed)),
    )
    .data(json!({
        "image": image,
        "built": rfc3339(built),
        "newest_config": changed_path,
        "config_changed": rfc3339(changed),
        "stale": stale,
    }));
    if stale {
        outcome.fix(update_fix(host))
    } else {
        outcome
    }
}

pub(super) const DENIED_MODULES: Check = Check {
    id: "initramfs.denied-modules",
    section: Section::Initramfs,
    title: "The initramfs holds no module the configuration denies, or denies it inside too",
    run: denied_modules,
};

fn is_image_config(name: &str) -> bool {
    IMAGE_MODPROBE_DIRS.iter().any(|d| name.starts_with(d)) && name.ends_with(".conf")
}

fn read_image(host: &Host, image: &str) -> Result<Initramfs, Box<Outcome>> {
    let bytes = host
        .root
        .read_bytes(image)
        .map_err(|e| Outcome::unreadable(&e))?;
    initramfs::read(&bytes, &Limits::default(), &is_image_config).map_err(|err| {
        Box::new(
            Outcome::new(Status::Unknown, format!("{image}: {err}"))
                .evidence(image, err.to_string())
                .fix(update_fix(host)),
        )
    })
}

/// Module name of an image entry that is a module file.
fn module_of_entry(name: &str) -> Option<String> {
    let file = name.rsplit('/').next()?;
    let stem = file.split(".ko").next()?;
    (stem.len() < file.len() && name.contains("modules/"))
        .then(|| crate::policy::event::normalise_module_name(stem).into_owned())
}

fn denied_modules(host: &Host) -> Outcome {
    let image = match find_image(host) {
        Ok(Some(image)) => image,
        Ok(None) => return no_image(host),
        Err(err) => return Outcome::unreadable(err),
    };
    let found = match read_image(host, &image) {
        Ok(found) => found,
        Err(outcome) => return *outcome,
    };
    // What the image's own modprobe.d denies (its copy of the host's).
    let inside: Vec<String> = found
        .entries
        .iter()
        .filter_map(|e| Some((e.name.as_str(), e.data.as_deref()?)))
        .flat_map(|(name, data)| {
            modprobe_d::parse_lines(&String::from_utf8_lossy(data), name.as_ref())
        })
        .filter(|l| match &l.kind {
            LineKind::Blacklist => true,
            LineKind::Install(command) => modprobe_d::loads_nothing(command),
            LineKind::Options(_) => false,
        })
        .map(|l| l.module)
        .collect();
    let denied = host.denied();
    let mut outcome = Outcome::new(Status::Pass, "");
    let (mut open, mut closed) = (Vec::new(), Vec::new());
    for entry in &found.entries {
        let Some(module) = module_of_entry(&entry.name) else {
            continue;
        };
        let Some(reasons) = denied.get(&module) else {
            continue;
        };
        let denied_inside = inside.contains(&module);
        outcome = outcome.evidence(
            format!("{image}:/{}", entry.name),
            format!(
                "{module}, denied by {}{}",
                reasons.join(", "),
                if denied_inside {
                    "; the image's modprobe.d denies it too"
                } else {
                    "; the image's modprobe.d does not deny it"
                }
            ),
        );
        if denied_inside {
            closed.push(module);
        } else {
            open.push(module);
        }
    }
    outcome.status = if !open.is_empty() {
        Status::Fail
    } else if !closed.is_empty() {
        Status::Warn
    } else {
        Status::Pass
    };
    outcome.summary = format!(
        "{} denied modules in the initramfs load from it unhindered, {} more are there but denied inside",
        open.len(),
        closed.len()
    );
    if !open.is_empty() {
        outcome = outcome.fix(update_fix(host));
    }
    let parts: Vec<String> = found
        .parts
        .iter()
        .map(|p| {
            let how = p
                .compression
                .map_or_else(|| "uncompressed".into(), |c| c.to_string());
            format!("{how} at {}", p.offset)
        })
        .collect();
    outcome
        .evidence(
            &image,
            format!("{} files in {}", found.entries.len(), parts.join(", ")),
        )
        .data(json!({
            "image": image,
            "files": found.entries.len(),
            "parts": parts,
            "unhindered": open,
            "denied_inside": closed,
        }))
}
