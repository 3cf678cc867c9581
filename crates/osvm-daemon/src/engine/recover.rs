//! After a daemon restart: each component's recorded instance (or the one its recorded
//! intent named) is adopted through its runtime, recorded as ended, or forgotten and started
//! again — never a component twice.

use super::*;

impl Engine {
    /// Finds unit `i`'s instance again, or decides what to do without it.
    pub(super) fn recover(&mut self, i: usize) {
        let now = Instant::now();
        let record = self.units[i].life.record.clone();
        let id = match &record.intent {
            Some(Intent::Start { instance }) | Some(Intent::Stop { instance }) => {
                Some(instance.clone())
            }
            None => record.instance.clone(),
        };
        let Some(id) = id else {
            // Keep a backoff that was running when the previous engine stopped.
            let wait = record
                .next_start_ms
                .map(|due| due.saturating_sub(now_ms()))
                .unwrap_or(0);
            let wait = Duration::from_millis(wait);
            return self.observe(i, Observation::Resume { wait }, now);
        };
        let runtime = match self.runtime_of(i) {
            Ok(r) => r,
            Err(e) => return self.lost(i, now, &format!("instance {id}: {e}")),
        };
        if stdio_mcp(&self.units[i].component) && self.mcp.is_some() {
            // Its stdio channel was the previous engine's pipes, gone with it.
            if let Ok(Adoption::Running(inst)) = runtime.adopt(&id) {
                let _ = inst.stop(self.units[i].component.stop_grace);
            }
            return self.lost(
                i,
                now,
                &format!(
                    "instance {id}: its MCP stdio channel belonged to the previous daemon; it \
                     was stopped and starts again"
                ),
            );
        }
        match runtime.adopt(&id) {
            Ok(Adoption::Running(inst)) => {
                let hub = self.net.as_ref().map(|n| n.hub_path());
                let inst = Arc::new(Workload::new(inst, hub));
                // Uptime counts from the instance's real start, not from the adoption.
                let age = self
                    .store
                    .instance(&id)
                    .ok()
                    .flatten()
                    .map(|r| Duration::from_millis(now_ms().saturating_sub(r.started_at_ms)))
                    .unwrap_or_default();
                let stack = self.stack_of(i);
                let ttl = stack.certificate_ttl;
                let dir = identity::identity_dir(
                    &self.runtime.config().state_dir,
                    &stack.name,
                    &self.units[i].component.name,
                );
                let seed = self.renewal_seed(i);
                // A certificate that expired while no engine ran is renewed at once.
                let renew_in = identity::due_in(&dir, ttl, seed);
                let u = &mut self.units[i];
                u.renew_at = Some(now + renew_in);
                u.instance = Some(inst.clone());
                self.emit(
                    i,
                    EventKind::Adopted,
                    &format!("instance {id} (pid {}) still runs", inst.init_pid()),
                );
                self.observe(i, Observation::Adopted { id, age }, now);
            }
            Ok(Adoption::Ended(status)) => {
                self.record_end(&id, Some(status));
                self.observe(i, Observation::EndedWhileAway { id, status }, now);
            }
            Ok(Adoption::Stopped(why)) => self.lost(i, now, &format!("instance {id}: {why}")),
            // The start was recorded but never happened (or its directory is gone).
            Err(e) => self.lost(i, now, &format!("instance {id}: {e}")),
        }
    }

    /// Unit `i`'s instance is gone without an exit record: forgotten, and started again now
    /// unless the component is meant to be stopped or has failed.
    pub(super) fn lost(&mut self, i: usize, now: Instant, detail: &str) {
        self.observe(i, Observation::Lost(detail.into()), now);
    }
}
