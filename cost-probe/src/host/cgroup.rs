//! Pod and container identity of a process, from `/proc/PID/cgroup`.
//!
//! The cgroup path is all a node agent needs: kubelet names pod cgroups after the pod UID and
//! quality-of-service class, and every runtime names the container's cgroup after the container
//! id. Both cgroup drivers are understood:
//! - systemd: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
//!   cri-containerd-<id>.scope` (the UID's dashes become `_` because `-` is systemd's slice
//!   separator);
//! - cgroupfs: `kubepods/burstable/pod<uid>/<id>`.
//!
//! Guaranteed pods sit directly under `kubepods` (no class level). Outside Kubernetes: docker
//! (`docker-<id>.scope`, `/docker/<id>`), containerd/CRI-O (`cri-containerd-<id>.scope`,
//! `crio-<id>.scope`) and podman (`libpod-<id>.scope`). Nothing is guessed: a path that matches
//! none of these gives `None`, and a cgroup namespace that hides the path (`0::/`) too.
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Runtime {
    #[serde(rename = "docker")]
    Docker,
    #[serde(rename = "containerd")]
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    #[serde(rename = "podman")]
    Podman,
}

impl Runtime {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Podman => "podman",
        }
    }
}

/// Kubernetes pod quality-of-service class, as kubelet encodes it in the cgroup path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What the cgroup path says about a process. Fields the path does not carry are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    /// Kubernetes pod UID, with dashes (`7a9b…-…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Full container id (hex) as the runtime reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<QosClass>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reads `{proc_root}/{pid}/cgroup` (`proc_root` is `/proc`, or a host's `/proc` mounted
/// elsewhere, as in a Kubernetes daemon set).
pub fn read(proc_root: &Path, pid: u32) -> Result<Option<ContainerInfo>, CgroupError> {
    let path = proc_root.join(pid.to_string()).join("cgroup");
    std::fs::File::open(&path)
        .and_then(parse)
        .map_err(|source| CgroupError::Io { path, source })
}

/// Parses the contents of a `/proc/PID/cgroup` file.
pub fn parse(mut r: impl Read) -> io::Result<Option<ContainerInfo>> {
    let mut text = String::new();
    r.read_to_string(&mut text)?;
    Ok(parse_str(&text))
}

/// Parses `hierarchy-id:controllers:path` lines. The cgroup v2 line (`0::`) is tried first;
/// on v1 and hybrid hosts any hierarchy will do, since runtimes place a container at the same
/// path in each.
#[must_use]
pub fn parse_str(text: &str) -> Option<ContainerInfo> {
    let paths = || {
        text.lines()
            .filter_map(|l| l.splitn(3, ':').nth(2).map(|p| (l.starts_with("0::"), p)))
    };
    paths()
        .filter(|(v2, _)| *v2)
        .chain(paths().filter(|(v2, _)| !*v2))
        .find_map(|(_, p)| parse_path(p))
}

/// Parses one cgroup path.
#[must_use]
pub fn parse_path(path: &str) -> Option<ContainerInfo> {
    let mut info = ContainerInfo::default();
    let mut kubepods = false;
    let mut parent = "";
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if let Some(unit) = seg.strip_suffix(".slice") {
            kube_slice(unit, &mut info, &mut kubepods);
        } else if kubepods && info.pod_uid.is_none() {
            // cgroupfs driver: kubepods/[burstable|besteffort/]pod<uid>
            match seg {
                "burstable" => info.qos = Some(QosClass::Burstable),
                "besteffort" => info.qos = Some(QosClass::BestEffort),
                _ => {
                    if let Some(uid) = seg.strip_prefix("pod").and_then(pod_uid) {
                        info.pod_uid = Some(uid);
                        info.qos.get_or_insert(QosClass::Guaranteed);
                    }
                }
            }
        } else if let Some((runtime, id)) = container(seg, parent) {
            // Nested runtimes (docker in docker) list the outer one first: keep the innermost.
            info.runtime = Some(runtime);
            info.container_id = id;
        } else if kubepods && info.container_id.is_none() && is_container_id(seg) {
            // cgroupfs under kubelet: a bare id, from containerd or dockershim alike.
            info.container_id = Some(seg.to_owned());
        }
        if seg == "kubepods" {
            kubepods = true;
        }
        parent = seg;
    }
    (info.pod_uid.is_some() || info.container_id.is_some() || info.runtime.is_some())
        .then_some(info)
}

/// A systemd slice of kubelet's: `kubepods`, `kubepods-burstable`,
/// `kubepods-burstable-pod<uid>`, or the same under a prefix (`kubelet-kubepods…` in kind).
fn kube_slice(unit: &str, info: &mut ContainerInfo, kubepods: &mut bool) {
    let Some(at) = unit.find("kubepods") else {
        return;
    };
    *kubepods = true;
    let rest = &unit[at + "kubepods".len()..];
    let (qos, pod) = match rest.strip_prefix('-') {
        None => return,
        Some(r) => match r.split_once('-') {
            Some(("burstable", pod)) => (QosClass::Burstable, Some(pod)),
            Some(("besteffort", pod)) => (QosClass::BestEffort, Some(pod)),
            None if r == "burstable" => (QosClass::Burstable, None),
            None if r == "besteffort" => (QosClass::BestEffort, None),
            _ => (QosClass::Guaranteed, Some(r)),
        },
    };
    info.qos = Some(qos);
    if let Some(uid) = pod.and_then(|p| p.strip_prefix("pod")).and_then(pod_uid) {
        info.pod_uid = Some(uid);
    }
}

/// A runtime-named container cgroup, with its id (`None` for a runtime's monitor process,
/// e.g. `crio-conmon-<id>.scope`, which belongs to the pod but is no container).
fn container(seg: &str, parent: &str) -> Option<(Runtime, Option<String>)> {
    const PREFIXES: [(&str, Runtime); 4] = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    if parent == "docker" && is_container_id(seg) {
        return Some((Runtime::Docker, Some(seg.to_owned())));
    }
    let name = seg.strip_suffix(".scope").unwrap_or(seg);
    PREFIXES.iter().find_map(|(prefix, runtime)| {
        let rest = name.strip_prefix(prefix)?;
        if let Some(id) = rest.strip_prefix("conmon-") {
            return is_container_id(id).then_some((*runtime, None));
        }
        is_container_id(rest).then(|| (*runtime, Some(rest.to_owned())))
    })
}

/// Container ids are 64 hex digits; 12 is the short form some tools write.
fn is_container_id(s: &str) -> bool {
    (12..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod UID: a UUID (with `-`, or `_` under the systemd driver), or the 32-hex hash kubelet
/// gives static pods.
fn pod_uid(s: &str) -> Option<String> {
    let ok = (32..=36).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
    ok.then(|| s.replace('_', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "4b0a8a1a7b5ef7c0d2a3e6a1c9b8f7e6d5c4b3a29180f7e6d5c4b3a2918071ab";
    const UID: &str = "9e4cf2a3-41a1-4bd7-9f43-2b7c0f5a1e3d";

    #[expect(
        clippy::unnecessary_wraps,
        reason = "compared with parse_str's Option directly"
    )]
    fn info(
        uid: Option<&str>,
        id: Option<&str>,
        rt: Option<Runtime>,
        qos: Option<QosClass>,
    ) -> Option<ContainerInfo> {
        Some(ContainerInfo {
            pod_uid: uid.map(str::to_owned),
            container_id: id.map(str::to_owned),
            runtime: rt,
            qos,
        })
    }

    #[test]
    fn kubernetes_systemd_driver_cgroup_v2() {
        // Shape: kubelet's systemd cgroup driver (kubernetes pkg/kubelet/cm/cgroup_manager_linux.go
        // escapes the UID's dashes; design-proposals "Kubelet and systemd interaction") with
        // containerd's CRI plugin naming the scope `cri-containerd-<id>`.
        let uid = UID.replace('-', "_");
        let line = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{CID}.scope\n"
        );
        assert_eq!(
            parse_str(&line),
            info(
                Some(UID),
                Some(CID),
                Some(Runtime::Containerd),
                Some(QosClass::Burstable)
            )
        );
        let best = line.replace("burstable", "besteffort");
        assert_eq!(parse_str(&best).unwrap().qos, Some(QosClass::BestEffort));
    }

    #[test]
    fn kubernetes_guaranteed_pod_under_cri_o_and_docker() {
        // Shape: CJLove/rt-operator notes/cgroupv1_notes.md (Kubernetes 1.25 with CRI-O, 1.23 with
        // Docker): guaranteed pods sit directly under kubepods.slice.
        let uid = UID.replace('-', "_");
        let crio = format!("0::/kubepods.slice/kubepods-pod{uid}.slice/crio-{CID}.scope/container");
        assert_eq!(
            parse_str(&crio),
            info(
                Some(UID),
                Some(CID),
                Some(Runtime::CriO),
                Some(QosClass::Guaranteed)
            )
        );
        let docker = format!(
            "11:memory:/kubepods.slice/kubepods-pod{uid}.slice/docker-{CID}.scope\n1:name=systemd:/kubepods.slice/kubepods-pod{uid}.slice/docker-{CID}.scope\n0::/\n"
        );
        assert_eq!(parse_str(&docker).unwrap().runtime, Some(Runtime::Docker));
        // CRI-O's container monitor shares the pod's cgroup tree but is not a container.
        let conmon = format!("0::/kubepods.slice/kubepods-pod{uid}.slice/crio-conmon-{CID}.scope");
        assert_eq!(
            parse_str(&conmon),
            info(
                Some(UID),
                None,
                Some(Runtime::CriO),
                Some(QosClass::Guaranteed)
            )
        );
    }

    #[test]
    fn kubernetes_cgroupfs_driver_cgroup_v1() {
        // Shape: Qard/container-info test/fixtures (GKE, cgroupfs, besteffort) and rt-operator's
        // K3s notes (kubepods/pod<uid>/<id> for guaranteed pods).
        let best = "11:devices:/kubepods/besteffort/pod74c13223-5a00-11e9-b385-42010a80018d/34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376\n";
        assert_eq!(
            parse_str(best),
            info(
                Some("74c13223-5a00-11e9-b385-42010a80018d"),
                Some("34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376"),
                None,
                Some(QosClass::BestEffort)
            )
        );
        let guaranteed = format!("4:cpu,cpuacct:/kubepods/pod{UID}/{CID}");
        assert_eq!(
            parse_str(&guaranteed),
            info(Some(UID), Some(CID), None, Some(QosClass::Guaranteed))
        );
        // CRI-O with cgroupfs keeps its prefix.
        let crio = format!("0::/kubepods/burstable/pod{UID}/crio-{CID}");
        assert_eq!(parse_str(&crio).unwrap().runtime, Some(Runtime::CriO));
    }

    #[test]
    fn kind_nests_kubepods_under_kubelet_slice() {
        // Shape: kind nodes run kubelet with --cgroup-root=/kubelet, giving kubelet-kubepods-….
        let uid = UID.replace('-', "_");
        let line = format!(
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            parse_str(&line),
            info(
                Some(UID),
                Some(CID),
                Some(Runtime::Containerd),
                Some(QosClass::BestEffort)
            )
        );
    }

    #[test]
    fn paths_relative_to_our_own_cgroup_namespace() {
        // A hostPID daemon set pod with a private cgroup namespace (the cgroup v2 default) sees
        // other pods' paths relative to its own root, climbing out with `..`.
        let uid = UID.replace('-', "_");
        let line =
            format!("0::/../../kubepods-besteffort-pod{uid}.slice/cri-containerd-{CID}.scope\n");
        assert_eq!(
            parse_str(&line),
            info(
                Some(UID),
                Some(CID),
                Some(Runtime::Containerd),
                Some(QosClass::BestEffort)
            )
        );
    }

    #[test]
    fn static_pods_have_hash_uids() {
        // kubelet derives a static (mirror) pod's UID from an md5 of its manifest: 32 hex digits.
        let line = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5c2b7a6e0f1d4c3b2a1908f7e6d5c4b3.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            parse_str(&line).unwrap().pod_uid.as_deref(),
            Some("5c2b7a6e0f1d4c3b2a1908f7e6d5c4b3")
        );
    }

    #[test]
    fn plain_docker_and_podman() {
        // Shapes: neuvector share/system/cgroup_test.go (CentOS: system.slice/docker-<id>.scope);
        // docker's cgroupfs driver parent `/docker`; podman rootful in machine.slice and
        // rootless in the user's systemd instance, with crun's `container` leaf on cgroup v2.
        let systemd = format!("2:cpuacct,cpu:/system.slice/docker-{CID}.scope");
        assert_eq!(
            parse_str(&systemd),
            info(None, Some(CID), Some(Runtime::Docker), None)
        );
        let cgroupfs = format!("4:memory:/docker/{CID}");
        assert_eq!(
            parse_str(&cgroupfs),
            info(None, Some(CID), Some(Runtime::Docker), None)
        );
        let dind = format!("0::/docker/{CID}/docker/{}", &CID[..12]);
        assert_eq!(
            parse_str(&dind).unwrap().container_id.as_deref(),
            Some(&CID[..12])
        );
        for line in [
            format!("0::/machine.slice/libpod-{CID}.scope/container"),
            format!(
                "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope"
            ),
        ] {
            assert_eq!(
                parse_str(&line),
                info(None, Some(CID), Some(Runtime::Podman), None)
            );
        }
    }

    #[test]
    fn host_processes_and_hidden_paths_are_not_containers() {
        for text in [
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/\n",
            "0::/system.slice/docker.service\n",
            "0::/system.slice/docker-compose@web.service\n",
            "12:pids:/system.slice/sshd.service\n1:name=systemd:/system.slice/sshd.service\n",
            "",
        ] {
            assert_eq!(parse_str(text), None, "{text}");
        }
    }

    #[test]
    fn reads_under_a_proc_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("4242")).unwrap();
        std::fs::write(
            dir.path().join("4242/cgroup"),
            format!("0::/system.slice/docker-{CID}.scope\n"),
        )
        .unwrap();
        assert_eq!(
            read(dir.path(), 4242)
                .unwrap()
                .unwrap()
                .container_id
                .as_deref(),
            Some(CID)
        );
        let err = read(dir.path(), 1).unwrap_err().to_string();
        assert!(err.contains("1/cgroup"), "{err}");
    }

    #[test]
    fn serializes_for_records() {
        let v = serde_json::to_value(
            parse_str(&format!("0::/kubepods/besteffort/pod{UID}/crio-{CID}")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"pod_uid": UID, "container_id": CID, "runtime": "cri-o", "qos": "besteffort"})
        );
    }
}
