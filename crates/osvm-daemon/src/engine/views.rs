//! What clients see: one [`ComponentView`] per component, computed from the engine's state
//! on every tick (the daemon publishes them; `osvm ps` reads them).

use super::*;

/// The health of one component, as last probed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum Health {
    /// The component has no health check.
    None,
    /// Not probed successfully yet.
    Pending,
    /// The last probe passed.
    Healthy(String),
    /// Probes failed this many times in a row; the last said why.
    Failing(u32, String),
}

impl Health {
    /// A word or two for tables.
    pub fn short(&self) -> String {
        match self {
            Health::None => "-".into(),
            Health::Pending => "pending".into(),
            Health::Healthy(_) => "healthy".into(),
            Health::Failing(n, _) => format!("failing ({n})"),
        }
    }
}

/// What a client sees of one component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentView {
    /// Its stack.
    pub stack: String,
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: ComponentStatus,
    /// Its health.
    pub health: Health,
    /// The current instance's id.
    pub instance: Option<String>,
    /// The last instance that ended.
    pub last_instance: Option<String>,
    /// The TCP ports it listens on.
    pub listen: Vec<u16>,
    /// Its published ports, `host:port->port` (`0.0.0.0`: every address of the host).
    #[serde(default)]
    pub published: Vec<String>,
    /// Host pid of the instance's init.
    pub pid: Option<i32>,
    /// Usage of the current instance.
    pub stats: Option<InstanceStats>,
    /// Its memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// CPU use over the last tick, in percent of one CPU.
    pub cpu_percent: f64,
    /// Restarts so far.
    pub restarts: u32,
    /// How long the current instance has run.
    pub uptime_secs: Option<u64>,
    /// How the last instance ended.
    pub last_exit: Option<ExitStatus>,
    /// Why it is in its status.
    pub reason: String,
    /// How long the last health probe took, in milliseconds.
    #[serde(default)]
    pub probe_latency_ms: Option<f64>,
    /// A hot-swap under way.
    #[serde(default)]
    pub swap: Option<crate::store::SwapRecord>,
    /// How the last hot-swap ended.
    #[serde(default)]
    pub last_swap: Option<crate::store::SwapOutcome>,
    /// Which runtime runs it.
    #[serde(default = "process_runtime")]
    pub runtime: osvm_core::RuntimeKind,
    /// The running microVM's facts (accelerator and its warning, vCPUs, memory, kernel, image,
    /// vsock context id, boot times).
    #[serde(default)]
    pub vm: Option<osvm_microvm::VmFacts>,
    /// The running unikernel's facts (launcher and why, accelerator and its warning, image,
    /// memory, boot times, deadline).
    #[serde(default)]
    pub unikernel: Option<osvm_unikernel::UnikernelFacts>,
}

pub(super) fn process_runtime() -> osvm_core::RuntimeKind {
    osvm_core::RuntimeKind::Process
}

impl Engine {
    /// The view of one component.
    pub fn view(&self, name: &str) -> Result<ComponentView, EngineError> {
        let i = self.find(name)?;
        Ok(self.views().swap_remove(i))
    }

    /// What clients see of every component.
    pub fn views(&self) -> Vec<ComponentView> {
        let now = Instant::now();
        self.units
            .iter()
            .map(|u| {
                let running = u.instance.is_some();
                ComponentView {
                    stack: u.life.record.stack.clone(),
                    name: u.component.name.clone(),
                    status: u.life.record.status,
                    health: if running {
                        u.life.health.clone()
                    } else {
                        Health::None
                    },
                    instance: u.instance.as_ref().map(|i| i.id().to_string()),
                    last_instance: u.life.record.last_instance.clone(),
                    listen: u.component.listen.clone(),
                    published: u
                        .component
                        .publish
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    pid: u.instance.as_ref().map(|i| i.init_pid()),
                    stats: if running { u.stats.clone() } else { None },
                    // What the running instance's usage is measured against (for a guest, its
                    // emulator's cgroup), as the runtime set it; the component's own otherwise.
                    memory_limit: u
                        .instance
                        .as_ref()
                        .filter(|_| running)
                        .and_then(|i| i.memory_limit())
                        .or(u.component.resources.memory_bytes),
                    cpu_percent: if running { u.cpu_percent } else { 0.0 },
                    restarts: u.life.record.restarts,
                    uptime_secs: u
                        .life
                        .started_at
                        .filter(|_| running)
                        .map(|s| now.duration_since(s).as_secs()),
                    last_exit: u.life.record.last_exit,
                    reason: u.life.record.reason.clone(),
                    probe_latency_ms: u.life.probe_latency.map(|d| d.as_secs_f64() * 1000.0),
                    swap: u.life.record.swap.clone(),
                    last_swap: u.life.record.last_swap.clone(),
                    runtime: u.component.runtime.kind(),
                    vm: u
                        .instance
                        .as_ref()
                        .and_then(|i| i.downcast::<MicroVmInstance>())
                        .map(|vm| vm.facts().clone()),
                    unikernel: u
                        .instance
                        .as_ref()
                        .and_then(|i| i.downcast::<UnikernelInstance>())
                        .map(|k| k.facts().clone()),
                }
            })
            .collect()
    }
}
