//! Which container or service a process runs in, read from its cgroup path.
//!
//! Runtimes name a container's cgroup after its id, in one of two layouts:
//! the systemd driver (`…/docker-<id>.scope`) and the cgroupfs driver
//! (`/docker/<id>`). Kubernetes nests them under `kubepods…` with the pod's
//! uid. Anything else under `*.service` is a systemd unit.
use crate::record::Container;

/// Systemd-driver scope prefixes, by runtime.
const SCOPE_PREFIXES: &[(&str, &str)] = &[
    ("docker-", "docker"),
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("libpod-", "podman"),
];

fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container of the process whose cgroup path is `cgroup`.
pub(super) fn container_of(cgroup: &str) -> Option<Container> {
    let parts: Vec<&str> = cgroup.split('/').filter(|p| !p.is_empty()).collect();
    let (index, runtime, id) = parts.iter().enumerate().rev().find_map(|(i, part)| {
        let name = part.strip_suffix(".scope").unwrap_or(part);
        let scoped = SCOPE_PREFIXES.iter().find_map(|(prefix, runtime)| {
            let id = name.strip_prefix(prefix)?;
            is_container_id(id).then_some((*runtime, id))
        });
        let bare = || {
            is_container_id(name).then(|| {
                let parent = i.checked_sub(1).map(|p| parts[p]).unwrap_or_default();
                let runtime = if parent == "docker" {
                    "docker"
                } else {
                    "unknown"
                };
                (runtime, name)
            })
        };
        scoped.or_else(bare).map(|(runtime, id)| (i, runtime, id))
    })?;
    Some(Container {
        runtime: runtime.into(),
        id: id.to_owned(),
        pod_uid: parts[..index].iter().rev().find_map(|p| pod_uid(p)),
    })
}

/// `kubepods-besteffort-pod<uid>.slice` (systemd driver, `_` for `-`) or
/// `pod<uid>` (cgroupfs driver).
fn pod_uid(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let uid = name
        .rsplit_once("-pod")
        .map(|(_, uid)| uid)
        .or_else(|| name.strip_prefix("pod"))?;
    (uid.len() == 36).then(|| uid.replace('_', "-"))
}

/// The systemd service a process belongs to (`sshd.service`), if any.
pub(super) fn systemd_unit(cgroup: &str) -> Option<String> {
    cgroup
        .split('/')
        .rev()
        .find(|p| p.ends_with(".service"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1ca4b2e5d6f7a8091b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071";

    #[test]
    fn docker_with_either_cgroup_driver() {
        let systemd = container_of(&format!("/system.slice/docker-{ID}.scope")).unwrap();
        assert_eq!(
            (&*systemd.runtime, systemd.id.as_str(), systemd.pod_uid),
            ("docker", ID, None)
        );
        let cgroupfs = container_of(&format!("/docker/{ID}")).unwrap();
        assert_eq!((&*cgroupfs.runtime, cgroupfs.id.as_str()), ("docker", ID));
    }

    #[test]
    fn kubernetes_pods_with_their_runtime_and_uid() {
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-{ID}.scope"
        );
        let c = container_of(&path).unwrap();
        assert_eq!((&*c.runtime, c.id.as_str()), ("containerd", ID));
        assert_eq!(
            c.pod_uid.as_deref(),
            Some("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d")
        );
        let cgroupfs = container_of(&format!(
            "/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/{ID}"
        ))
        .unwrap();
        assert_eq!(
            (&*cgroupfs.runtime, cgroupfs.pod_uid.as_deref()),
            ("unknown", Some("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"))
        );
        let crio = container_of(&format!("/kubepods.slice/crio-{ID}.scope")).unwrap();
        assert_eq!(crio.runtime, "cri-o");
    }

    #[test]
    fn podman_and_plain_hosts() {
        assert_eq!(
            container_of(&format!("/machine.slice/libpod-{ID}.scope"))
                .unwrap()
                .runtime,
            "podman"
        );
        assert_eq!(
            container_of("/user.slice/user-1000.slice/session-3.scope"),
            None
        );
        assert_eq!(container_of("/"), None);
        // Not 64 hex digits: not a container id.
        assert_eq!(container_of("/docker/abc"), None);
        assert_eq!(
            container_of(&format!("/system.slice/docker-{}.scope", &ID[1..])),
            None
        );
    }

    #[test]
    fn systemd_units() {
        assert_eq!(
            systemd_unit("/system.slice/systemd-modules-load.service").as_deref(),
            Some("systemd-modules-load.service")
        );
        assert_eq!(
            systemd_unit("/user.slice/user-1000.slice/session-3.scope"),
            None
        );
    }
}
