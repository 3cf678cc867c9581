//! `osvm-cri-client SOCKET`: containerd's CRI v1 API, called as kubelet calls it, for
//! osvm-shim's tests and bench. One JSON command per line on stdin (`{"op": "run_pod", ...}`,
//! see [`Command`]), one JSON line per command on stdout: `{"ok": <the CRI response>}` or
//! `{"error": "<gRPC status>"}`. Pod and container configurations are built here the way
//! kubelet builds them (the pod's network and IPC namespaces, a pid namespace per container).

use std::collections::HashMap;
use std::io::{BufRead, Write};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use serde::Deserialize;
use tonic::transport::Channel;

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Command {
    /// RunPodSandbox of a pod named `name` (its logs under `logs/<name>`) with `handler`.
    RunPod {
        name: String,
        logs: String,
        handler: String,
        /// The pod's cgroup (kubelet's `kubepods/.../pod<uid>`).
        #[serde(default)]
        cgroup_parent: String,
    },
    PodStatus {
        pod: String,
    },
    /// CreateContainer `name` in `pod` (run with `run_pod` by this client), of `image`,
    /// running `command`, with volumes `mounts`.
    Create {
        pod: String,
        name: String,
        image: String,
        command: Vec<String>,
        #[serde(default)]
        mounts: Vec<Volume>,
        /// runAsUser and runAsGroup.
        #[serde(default)]
        run_as: Option<(i64, i64)>,
    },
    Start {
        id: String,
    },
    Status {
        id: String,
    },
    ExecSync {
        id: String,
        cmd: Vec<String>,
        timeout: i64,
    },
    Stats {
        id: String,
    },
    StopContainer {
        id: String,
        timeout: i64,
    },
    StopPod {
        pod: String,
    },
    RemovePod {
        pod: String,
    },
    ListPods,
}

#[derive(Deserialize)]
struct Volume {
    host: String,
    inside: String,
    readonly: bool,
}

/// kubelet's namespaces for a pod and its containers.
fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn pod_config(name: &str, logs: &str, cgroup_parent: String) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            namespace: "default".to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        log_directory: format!("{logs}/{name}"),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent,
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(
    name: &str,
    image: &str,
    command: Vec<String>,
    mounts: Vec<Volume>,
    run_as: Option<(i64, i64)>,
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        command,
        log_path: format!("{name}.log"),
        mounts: mounts
            .into_iter()
            .map(|v| Mount {
                container_path: v.inside,
                host_path: v.host,
                readonly: v.readonly,
                ..Default::default()
            })
            .collect(),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespaces()),
                run_as_user: run_as.map(|(uid, _)| Int64Value { value: uid }),
                run_as_group: run_as.map(|(_, gid)| Int64Value { value: gid }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Client {
    rpc: RuntimeServiceClient<Channel>,
    /// The configurations of the pods this client ran, by id (CreateContainer repeats it).
    pods: HashMap<String, PodSandboxConfig>,
}

fn json<T: serde::Serialize>(
    r: Result<tonic::Response<T>, tonic::Status>,
) -> Result<serde_json::Value, String> {
    r.map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        .and_then(|r| serde_json::to_value(r.into_inner()).map_err(|e| e.to_string()))
}

impl Client {
    async fn call(&mut self, command: Command) -> Result<serde_json::Value, String> {
        let rpc = &mut self.rpc;
        match command {
            Command::RunPod {
                name,
                logs,
                handler,
                cgroup_parent,
            } => {
                let config = pod_config(&name, &logs, cgroup_parent);
                let r = rpc
                    .run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(config.clone()),
                        runtime_handler: handler,
                    })
                    .await;
                if let Ok(r) = &r {
                    self.pods.insert(r.get_ref().pod_sandbox_id.clone(), config);
                }
                json(r)
            }
            Command::PodStatus { pod } => json(
                rpc.pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: pod,
                    verbose: false,
                })
                .await,
            ),
            Command::Create {
                pod,
                name,
                image,
                command,
                mounts,
                run_as,
            } => {
                let sandbox_config = self
                    .pods
                    .get(&pod)
                    .cloned()
                    .ok_or_else(|| format!("pod {pod} was not run by this client"))?;
                json(
                    rpc.create_container(CreateContainerRequest {
                        pod_sandbox_id: pod,
                        config: Some(container_config(&name, &image, command, mounts, run_as)),
                        sandbox_config: Some(sandbox_config),
                    })
                    .await,
                )
            }
            Command::Start { id } => json(
                rpc.start_container(StartContainerRequest { container_id: id })
                    .await,
            ),
            Command::Status { id } => json(
                rpc.container_status(ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await,
            ),
            Command::ExecSync { id, cmd, timeout } => json(
                rpc.exec_sync(ExecSyncRequest {
                    container_id: id,
                    cmd,
                    timeout,
                })
                .await,
            ),
            Command::Stats { id } => json(
                rpc.container_stats(ContainerStatsRequest { container_id: id })
                    .await,
            ),
            Command::StopContainer { id, timeout } => json(
                rpc.stop_container(StopContainerRequest {
                    container_id: id,
                    timeout,
                })
                .await,
            ),
            Command::StopPod { pod } => json(
                rpc.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod,
                })
                .await,
            ),
            Command::RemovePod { pod } => {
                self.pods.remove(&pod);
                json(
                    rpc.remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: pod,
                    })
                    .await,
                )
            }
            Command::ListPods => json(rpc.list_pod_sandbox(ListPodSandboxRequest::default()).await),
        }
    }
}

fn main() {
    let Some(socket) = std::env::args().nth(1) else {
        eprintln!("usage: osvm-cri-client SOCKET (JSON commands on stdin)");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let channel = rt.block_on(
        tonic::transport::Endpoint::from_static("http://[::1]:1").connect_with_connector(
            tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    tokio::net::UnixStream::connect(socket)
                        .await
                        .map(hyper_util::rt::TokioIo::new)
                }
            }),
        ),
    );
    let channel = match channel {
        Ok(c) => c,
        Err(e) => {
            eprintln!("osvm-cri-client: connect: {e}");
            std::process::exit(1);
        }
    };
    let mut client = Client {
        rpc: RuntimeServiceClient::new(channel),
        pods: HashMap::new(),
    };
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match serde_json::from_str::<Command>(&line) {
            Ok(command) => match rt.block_on(client.call(command)) {
                Ok(v) => serde_json::json!({ "ok": v }),
                Err(e) => serde_json::json!({ "error": e }),
            },
            Err(e) => serde_json::json!({ "error": format!("bad command: {e}") }),
        };
        let mut out = stdout.lock();
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
}
