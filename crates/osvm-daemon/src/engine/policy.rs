//! What becomes of a component when its instance ends: pure decisions, no clock but the one
//! passed in, no I/O. The engine gathers the facts ([`ExitFacts`]), asks [`after_exit`], and
//! carries out the answer (records, events, timers).
//!
//! The order of the rules, first match wins:
//! 1. an instance stopped because it never became ready (`ready_within`) leaves the component
//!    failed, whatever its restart policy: restarting would miss the deadline again;
//! 2. a component the user stopped (disabled) or that left its stack stays stopped;
//! 3. during a hot-swap the swap decides (the new instance takes over, or it rolls back);
//! 4. an instance the engine replaced (a changed spec, `osvm restart`) starts again at once,
//!    counted as neither a failure nor a restart;
//! 5. otherwise the restart policy ([`restart_after`]): `never` and `on-failure` after a
//!    success leave it stopped or failed; a component that used up `max_restarts` fails; any
//!    other restart waits its backoff ([`backoff`]).
//!
//! An instance failed if it exited unsuccessfully or the engine stopped it for a reason that is
//! a failure (unhealthy, never ready).

use std::time::Duration;

use osvm_core::stack::RestartPolicy;

/// Why the engine itself stopped an instance. When several apply, the greater one counts
/// ([`StopReason::stronger`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopReason {
    /// Its health check failed `retries` times in a row (or its MCP session broke).
    Unhealthy,
    /// Its spec changed or the user asked for a restart: a fresh instance replaces it.
    Replace,
    /// It missed its `ready_within` deadline.
    NeverReady,
}

impl StopReason {
    /// The reason that decides when `earlier` (if any) and `self` were both given.
    pub fn stronger(self, earlier: Option<StopReason>) -> StopReason {
        earlier.map_or(self, |e| e.max(self))
    }

    /// Whether an instance stopped for this reason counts as failed.
    pub fn is_failure(self) -> bool {
        matches!(self, StopReason::Unhealthy | StopReason::NeverReady)
    }
}

/// What the engine knows when an instance has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitFacts {
    /// The instance exited with code 0.
    pub success: bool,
    /// Why the engine stopped it, if it did.
    pub stopped_for: Option<StopReason>,
    /// The user wants the component running (`osvm stop` clears it).
    pub enabled: bool,
    /// The component left its stack.
    pub removing: bool,
    /// A hot-swap of the component is under way.
    pub swapping: bool,
    /// The component's restart policy.
    pub restart: RestartPolicy,
    /// Restarts counted so far (reset after `restart_reset_after` of health).
    pub restarts: u32,
    /// The stack's `max_restarts`.
    pub max_restarts: u32,
}

impl ExitFacts {
    /// Whether the instance failed.
    pub fn failed(&self) -> bool {
        !self.success || self.stopped_for.is_some_and(StopReason::is_failure)
    }
}

/// What to do after an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// It never became ready: the component is failed, not restarted.
    FailedNeverReady,
    /// The user stopped it, or it left its stack: it stays stopped.
    Stopped,
    /// A hot-swap is under way and decides.
    LeaveToSwap,
    /// It was replaced: start a fresh instance now (not a counted restart).
    StartNow,
    /// What the restart policy says.
    Restart(Restart),
}

/// What a restart policy says about an instance that ended (or could not start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// No restart: the component ends stopped (`failed` false) or failed.
    No {
        /// Whether it ends failed.
        failed: bool,
    },
    /// It used up the stack's `max_restarts`: failed.
    GiveUp {
        /// The limit it reached.
        max: u32,
    },
    /// Start it again after its backoff.
    Backoff,
}

/// The decision for an instance that ended (see the module's rules).
pub fn after_exit(f: &ExitFacts) -> AfterExit {
    if f.stopped_for == Some(StopReason::NeverReady) {
        return AfterExit::FailedNeverReady;
    }
    if f.removing || !f.enabled {
        return AfterExit::Stopped;
    }
    if f.swapping {
        return AfterExit::LeaveToSwap;
    }
    if f.stopped_for == Some(StopReason::Replace) {
        return AfterExit::StartNow;
    }
    AfterExit::Restart(restart_after(
        f.restart,
        f.failed(),
        f.restarts,
        f.max_restarts,
    ))
}

/// What restart policy `policy` says after an end that `failed` (or not), with `restarts`
/// counted of at most `max`.
pub fn restart_after(policy: RestartPolicy, failed: bool, restarts: u32, max: u32) -> Restart {
    let wanted = match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => failed,
        RestartPolicy::Never => false,
    };
    if !wanted {
        Restart::No { failed }
    } else if restarts >= max {
        Restart::GiveUp { max }
    } else {
        Restart::Backoff
    }
}

/// The wait before a restart: `first` doubled `exponent` times, at most `ceiling` (the stack's
/// `restart_backoff` and `restart_backoff_max`; the exponent grows with each restart and is
/// reset with the count).
pub fn backoff(first: Duration, ceiling: Duration, exponent: u32) -> Duration {
    first.saturating_mul(1 << exponent.min(16)).min(ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ExitFacts {
        ExitFacts {
            success: false,
            stopped_for: None,
            enabled: true,
            removing: false,
            swapping: false,
            restart: RestartPolicy::OnFailure,
            restarts: 0,
            max_restarts: 5,
        }
    }

    #[test]
    fn the_restart_policy_decides_after_an_ordinary_end() {
        use RestartPolicy::*;
        // (policy, success, expected)
        for (policy, success, want) in [
            (Always, true, Restart::Backoff),
            (Always, false, Restart::Backoff),
            (OnFailure, true, Restart::No { failed: false }),
            (OnFailure, false, Restart::Backoff),
            (Never, true, Restart::No { failed: false }),
            (Never, false, Restart::No { failed: true }),
        ] {
            let f = ExitFacts {
                success,
                restart: policy,
                ..facts()
            };
            assert_eq!(
                after_exit(&f),
                AfterExit::Restart(want),
                "{policy:?}, success {success}"
            );
        }
    }

    #[test]
    fn max_restarts_ends_in_failure_and_only_restarts_count() {
        let at = |restarts| {
            after_exit(&ExitFacts {
                restarts,
                max_restarts: 3,
                ..facts()
            })
        };
        assert_eq!(at(2), AfterExit::Restart(Restart::Backoff));
        assert_eq!(at(3), AfterExit::Restart(Restart::GiveUp { max: 3 }));
        assert_eq!(at(9), AfterExit::Restart(Restart::GiveUp { max: 3 }));
        // A policy that would not restart anyway says so rather than "gave up".
        let never = ExitFacts {
            restart: RestartPolicy::Never,
            restarts: 3,
            max_restarts: 3,
            ..facts()
        };
        assert_eq!(
            after_exit(&never),
            AfterExit::Restart(Restart::No { failed: true })
        );
        // max_restarts = 0: the first failure is final.
        assert_eq!(
            restart_after(RestartPolicy::Always, true, 0, 0),
            Restart::GiveUp { max: 0 }
        );
    }

    #[test]
    fn a_health_stop_is_a_failure_even_after_exit_code_zero() {
        let f = ExitFacts {
            success: true,
            stopped_for: Some(StopReason::Unhealthy),
            ..facts()
        };
        assert!(f.failed());
        assert_eq!(after_exit(&f), AfterExit::Restart(Restart::Backoff));
        let never_restarted = ExitFacts {
            restart: RestartPolicy::Never,
            ..f
        };
        assert_eq!(
            after_exit(&never_restarted),
            AfterExit::Restart(Restart::No { failed: true })
        );
    }

    #[test]
    fn never_ready_fails_the_component_whatever_else_holds() {
        for (enabled, removing, swapping, restart) in [
            (true, false, false, RestartPolicy::Always),
            (false, false, false, RestartPolicy::OnFailure),
            (true, true, false, RestartPolicy::Always),
            (true, false, true, RestartPolicy::Never),
        ] {
            let f = ExitFacts {
                success: true,
                stopped_for: Some(StopReason::NeverReady),
                enabled,
                removing,
                swapping,
                restart,
                ..facts()
            };
            assert_eq!(after_exit(&f), AfterExit::FailedNeverReady, "{f:?}");
        }
    }

    #[test]
    fn stopped_and_removed_components_stay_stopped() {
        for (enabled, removing) in [(false, false), (true, true), (false, true)] {
            for stopped_for in [None, Some(StopReason::Replace), Some(StopReason::Unhealthy)] {
                let f = ExitFacts {
                    enabled,
                    removing,
                    stopped_for,
                    restart: RestartPolicy::Always,
                    ..facts()
                };
                assert_eq!(after_exit(&f), AfterExit::Stopped, "{f:?}");
            }
        }
    }

    #[test]
    fn a_swap_decides_for_the_instance_it_replaces() {
        let f = ExitFacts {
            swapping: true,
            stopped_for: Some(StopReason::Replace),
            ..facts()
        };
        assert_eq!(after_exit(&f), AfterExit::LeaveToSwap);
    }

    #[test]
    fn a_replaced_instance_starts_again_at_once_without_counting() {
        for success in [true, false] {
            let f = ExitFacts {
                success,
                stopped_for: Some(StopReason::Replace),
                restart: RestartPolicy::Never,
                restarts: 99,
                ..facts()
            };
            assert_eq!(after_exit(&f), AfterExit::StartNow);
        }
    }

    #[test]
    fn the_stronger_stop_reason_wins() {
        use StopReason::*;
        assert_eq!(Unhealthy.stronger(Some(Replace)), Replace);
        assert_eq!(Replace.stronger(Some(Unhealthy)), Replace);
        assert_eq!(Replace.stronger(Some(NeverReady)), NeverReady);
        assert_eq!(NeverReady.stronger(None), NeverReady);
        assert!(Unhealthy.is_failure() && NeverReady.is_failure() && !Replace.is_failure());
    }

    #[test]
    fn backoff_doubles_from_its_first_wait_to_its_ceiling() {
        let (first, ceiling) = (Duration::from_secs(10), Duration::from_secs(300));
        let waits: Vec<u64> = (0..8)
            .map(|e| backoff(first, ceiling, e).as_secs())
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        // Huge exponents neither overflow nor pass the ceiling.
        assert_eq!(backoff(first, ceiling, u32::MAX), ceiling);
        assert_eq!(
            backoff(Duration::from_millis(500), Duration::from_secs(60), 3),
            Duration::from_secs(4)
        );
    }
}
