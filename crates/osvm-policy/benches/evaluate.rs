//! Policy evaluation with 100,000 rules: [`PolicySet::evaluate`] (flows between components
//! judged by the compiled decision table) against the index by `from` alone
//! ([`PolicySet::evaluate_by_source_index`], osvm's previous evaluator) and a scan of every rule
//! ([`PolicySet::evaluate_by_scan`], the obvious implementation).
//!
//! Run: `cargo bench -p osvm-policy --bench evaluate` (`OSVM_POLICY_RULES`, `OSVM_POLICY_FLOWS`
//! set the sizes). Prints a Markdown table; docs/benchmarks.md keeps one.

use std::hint::black_box;
use std::time::{Duration, Instant};

use osvm_core::model::{ComponentKind, NetworkAccess};
use osvm_core::stack::{PolicyAction, PolicyRule, Protocol, Selector};
use osvm_policy::{Endpoint, Flow, PolicySet};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Deterministic xorshift, so every run judges the same rules and flows.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

const KINDS: [ComponentKind; 3] = [
    ComponentKind::Service,
    ComponentKind::RpcNode,
    ComponentKind::Validator,
];

fn kind_of(i: usize) -> ComponentKind {
    KINDS[i % KINDS.len()]
}

/// Per-call times (ns) of `f` over `flows`, sorted.
fn time_each(flows: &[Flow], mut f: impl FnMut(&Flow) -> bool) -> (Vec<u64>, usize) {
    let mut times = Vec::with_capacity(flows.len());
    let mut allowed = 0;
    for flow in flows {
        let t = Instant::now();
        allowed += usize::from(black_box(f(black_box(flow))));
        times.push(t.elapsed().as_nanos() as u64);
    }
    times.sort_unstable();
    (times, allowed)
}

fn pct(sorted: &[u64], p: f64) -> Duration {
    Duration::from_nanos(sorted[((sorted.len() - 1) as f64 * p) as usize])
}

fn main() {
    let n_rules = env("OSVM_POLICY_RULES", 100_000);
    let n_flows = env("OSVM_POLICY_FLOWS", 2_000);
    let components = 2_000;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);

    // Mostly component-to-component allows, some type and wildcard rules, 5% denies.
    let mut rules = Vec::with_capacity(n_rules);
    for _ in 0..n_rules {
        let from = match rng.below(100) {
            0 => Selector::Any,
            1..=2 => Selector::Kind(kind_of(rng.below(3))),
            _ => Selector::Component(format!("c{}", rng.below(components))),
        };
        let to = match rng.below(100) {
            0 => Selector::Any,
            1..=2 => Selector::Kind(kind_of(rng.below(3))),
            _ => Selector::Component(format!("c{}", rng.below(components))),
        };
        rules.push(PolicyRule {
            action: if rng.below(20) == 0 {
                PolicyAction::Deny
            } else {
                PolicyAction::Allow
            },
            from,
            to,
            ports: vec![1000 + rng.below(50) as u16],
            protocol: Protocol::Tcp,
        });
    }
    let t = Instant::now();
    let set = PolicySet::new(rules);
    let build = t.elapsed();

    let flows: Vec<Flow> = (0..n_flows)
        .map(|_| {
            let (a, b) = (rng.below(components), rng.below(components));
            Flow {
                from: Endpoint::component(&format!("c{a}"), kind_of(a), NetworkAccess::Internal),
                to: Endpoint::component(&format!("c{b}"), kind_of(b), NetworkAccess::Internal),
                port: 1000 + rng.below(50) as u16,
                protocol: Protocol::Tcp,
            }
        })
        .collect();

    let (compiled, allowed_c) = time_each(&flows, |f| set.evaluate(f).allowed);
    let (indexed, allowed_i) = time_each(&flows, |f| set.evaluate_by_source_index(f).allowed);
    let (scanned, allowed_s) = time_each(&flows, |f| set.evaluate_by_scan(f).allowed);
    assert_eq!(
        allowed_i, allowed_s,
        "the index and the scan decide the same"
    );
    assert_eq!(
        allowed_c, allowed_s,
        "the table and the scan decide the same"
    );
    for f in &flows {
        assert_eq!(set.evaluate(f), set.evaluate_by_scan(f), "{f}");
    }

    println!(
        "policy evaluation, {n_rules} rules over {components} components, {n_flows} flows ({allowed_c} allowed); table and index built in {:.1} ms\n",
        build.as_secs_f64() * 1e3
    );
    println!("| evaluator | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for (name, t) in [
        ("osvm-policy (compiled table)", &compiled),
        ("index by source (the previous evaluator)", &indexed),
        ("scan of every rule", &scanned),
    ] {
        println!(
            "| {name} | {:.2?} | {:.2?} | {:.2?} |",
            pct(t, 0.5),
            pct(t, 0.99),
            pct(t, 1.0)
        );
    }
    let ratio =
        |a: &[u64], b: &[u64]| pct(a, 0.5).as_secs_f64() / pct(b, 0.5).as_secs_f64().max(1e-9);
    println!(
        "\nat p50: index / table {:.0}x, scan / table {:.0}x",
        ratio(&indexed, &compiled),
        ratio(&scanned, &compiled)
    );
}
