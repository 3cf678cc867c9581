//! Which MCP client may use which tool: the stack's `[[mcp_policy]]` rules, compiled once and
//! judged for every `tools/call` (and every tool a `tools/list` answer would show).
//!
//! A request has a *subject*, the client (a bearer token's client name such as `alice`, or a
//! client certificate's SPIFFE ID such as `spiffe://osvm.local/clients/alice`), and a
//! *resource*, the tool as `<server>.<tool>` where `server` is the MCP server's name (not the
//! prefix clients see). The rules are judged like the network's:
//!
//! - **default deny**: a client may use a tool only if some `allow` rule matches both;
//! - **deny overrides allow**: one matching `deny` rule refuses, whatever allows it.
//!
//! Patterns have two wildcards, `*` (any run of characters, `.` and `/` included) and `?` (one
//! character); every other character stands for itself. All the rules' client patterns form one
//! [`GlobSet`] and all their tool patterns another, so a decision is two set matches and a merge
//! of the rule numbers they hit, however many rules there are.

use std::fmt;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use osvm_core::stack::{McpRule, PolicyAction};
use serde::Serialize;

/// A stack's (or several stacks') `[[mcp_policy]]` rules, compiled for matching.
#[derive(Debug, Clone)]
pub struct McpPolicy {
    /// The rules in order; decisions name them by position.
    rules: Vec<McpRule>,
    /// Every rule's client patterns, in rule order.
    clients: GlobSet,
    /// For each pattern of `clients`, the rule it belongs to.
    client_rule: Vec<usize>,
    /// Every rule's tool patterns, in rule order.
    tools: GlobSet,
    /// For each pattern of `tools`, the rule it belongs to.
    tool_rule: Vec<usize>,
}

/// The answer for one client and one tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct McpDecision {
    /// Whether the client may call the tool (and see it in `tools/list`).
    pub allowed: bool,
    /// Index of the deciding rule (the denying one, or the first allowing one), None for the
    /// default deny.
    pub rule: Option<usize>,
    /// Human-readable: "allowed by mcp_policy #0 (alice -> fs.*)", "denied by mcp_policy #1
    /// ...", "denied: no mcp_policy rule allows client `bob` to use fs.write_file".
    pub reason: String,
}

impl McpPolicy {
    /// Compiles the stack's rules (patterns with globset: `*` matches any run of characters
    /// including `.` and `/`, `?` one character; literal otherwise).
    pub fn new(rules: &[McpRule]) -> Result<Self, String> {
        let mut clients = GlobSetBuilder::new();
        let mut client_rule = Vec::new();
        let mut tools = GlobSetBuilder::new();
        let mut tool_rule = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            for pattern in &rule.clients {
                clients.add(compile(pattern, index)?);
                client_rule.push(index);
            }
            for pattern in &rule.tools {
                tools.add(compile(pattern, index)?);
                tool_rule.push(index);
            }
        }
        let build = |set: GlobSetBuilder, what: &str| {
            set.build()
                .map_err(|e| format!("cannot compile the mcp_policy {what} patterns: {e}"))
        };
        Ok(Self {
            rules: rules.to_vec(),
            clients: build(clients, "client")?,
            client_rule,
            tools: build(tools, "tool")?,
            tool_rule,
        })
    }

    /// Rules merged from several stacks (the gateway serves all stacks' servers): a convenience
    /// that concatenates rule lists.
    pub fn merged<'a>(rules: impl IntoIterator<Item = &'a McpRule>) -> Result<Self, String> {
        let rules: Vec<McpRule> = rules.into_iter().cloned().collect();
        Self::new(&rules)
    }

    /// May `client` call (and see in tools/list) tool `tool` of server `server`? Deny overrides
    /// allow; no matching allow = denied.
    pub fn decide(&self, client: &str, server: &str, tool: &str) -> McpDecision {
        let qualified = format!("{server}.{tool}");
        let by_client = hits(&self.clients, &self.client_rule, client);
        let by_tool = hits(&self.tools, &self.tool_rule, &qualified);

        // Both lists are ascending, so the first allow and the first deny met are the
        // lowest-numbered ones.
        let (mut allow, mut deny) = (None::<usize>, None::<usize>);
        let (mut a, mut b) = (by_client.iter().peekable(), by_tool.iter().peekable());
        while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
            if x < y {
                a.next();
            } else if y < x {
                b.next();
            } else {
                let slot = match self.rules[x].action {
                    PolicyAction::Allow => &mut allow,
                    PolicyAction::Deny => &mut deny,
                };
                if slot.is_none() {
                    *slot = Some(x);
                }
                if deny.is_some() {
                    break;
                }
                a.next();
                b.next();
            }
        }

        match (deny, allow) {
            (Some(index), _) => McpDecision {
                allowed: false,
                rule: Some(index),
                reason: format!("denied by mcp_policy #{index} ({})", self.rule_text(index)),
            },
            (None, Some(index)) => McpDecision {
                allowed: true,
                rule: Some(index),
                reason: format!("allowed by mcp_policy #{index} ({})", self.rule_text(index)),
            },
            (None, None) => McpDecision {
                allowed: false,
                rule: None,
                reason: format!(
                    "denied: no mcp_policy rule allows client `{client}` to use {qualified}"
                ),
            },
        }
    }

    /// The rules, in the order decisions number them.
    pub fn rules(&self) -> &[McpRule] {
        &self.rules
    }

    /// The rule at `index` as `deny * -> fs.write_file`, if there is one.
    pub fn describe(&self, index: usize) -> Option<String> {
        let rule = self.rules.get(index)?;
        let action = rule.action.as_str();
        Some(format!("{action} {}", RuleText(rule)))
    }

    /// `clients -> tools` of the rule at `index`, which exists.
    fn rule_text(&self, index: usize) -> RuleText<'_> {
        RuleText(&self.rules[index])
    }
}

impl Default for McpPolicy {
    /// No rules: every client is refused every tool.
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            clients: GlobSet::empty(),
            client_rule: Vec::new(),
            tools: GlobSet::empty(),
            tool_rule: Vec::new(),
        }
    }
}

/// A rule's patterns as `alice, bob -> fs.*, everything.echo`.
struct RuleText<'a>(&'a McpRule);

impl fmt::Display for RuleText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}",
            self.0.clients.join(", "),
            self.0.tools.join(", ")
        )
    }
}

/// The rules (ascending, each once) of which some pattern of `set` matches `text`;
/// `owner[p]` is the rule of pattern `p`.
fn hits(set: &GlobSet, owner: &[usize], text: &str) -> Vec<usize> {
    let mut patterns = Vec::new();
    set.matches_candidate_into(&Candidate::from_bytes(text.as_bytes()), &mut patterns);
    // Patterns were added rule by rule, so ascending patterns give non-decreasing rules.
    let mut rules: Vec<usize> = patterns.into_iter().map(|p| owner[p]).collect();
    rules.dedup();
    rules
}

/// A pattern of rule `index` as a glob in which only `*` and `?` are special.
fn compile(pattern: &str, index: usize) -> Result<globset::Glob, String> {
    let mut glob = String::with_capacity(pattern.len() + 8);
    let mut after_star = false;
    for c in pattern.chars() {
        match c {
            // `**` means "any directories" to globset; any run of stars is one star here.
            '*' if after_star => {}
            '*' | '?' => glob.push(c),
            // Brackets and braces are classes and alternatives to globset: a one-character
            // class makes them literal (`[]]` is how a class holds `]`).
            '[' | ']' | '{' | '}' => {
                glob.push('[');
                glob.push(c);
                glob.push(']');
            }
            _ => glob.push(c),
        }
        after_star = c == '*';
    }
    GlobBuilder::new(&glob)
        .literal_separator(false)
        .backslash_escape(false)
        .build()
        .map_err(|e| format!("mcp_policy #{index}: invalid pattern `{pattern}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: PolicyAction, clients: &[&str], tools: &[&str]) -> McpRule {
        McpRule {
            action,
            clients: clients.iter().map(|s| s.to_string()).collect(),
            tools: tools.iter().map(|s| s.to_string()).collect(),
        }
    }

    use PolicyAction::{Allow, Deny};

    #[test]
    fn nothing_is_allowed_that_no_rule_allows() {
        let none = McpPolicy::default();
        let d = none.decide("alice", "fs", "read_file");
        assert!(!d.allowed);
        assert_eq!(d.rule, None);
        assert_eq!(
            d.reason,
            "denied: no mcp_policy rule allows client `alice` to use fs.read_file"
        );

        let policy = McpPolicy::new(&[rule(Allow, &["alice"], &["fs.read_file"])]).unwrap();
        for (client, server, tool) in [
            ("bob", "fs", "read_file"),
            ("alice", "fs", "write_file"),
            ("alice", "other", "read_file"),
            ("alice2", "fs", "read_file"),
            ("Alice", "fs", "read_file"),
        ] {
            let d = policy.decide(client, server, tool);
            assert!(!d.allowed, "{client} {server}.{tool}");
            assert_eq!(d.rule, None);
        }
    }

    #[test]
    fn an_allow_rule_grants_what_its_patterns_match() {
        let policy = McpPolicy::new(&[
            rule(Allow, &["bob"], &["everything.echo"]),
            rule(Allow, &["alice", "carol"], &["fs.*", "everything.echo"]),
        ])
        .unwrap();
        let d = policy.decide("alice", "fs", "read_file");
        assert_eq!(
            d,
            McpDecision {
                allowed: true,
                rule: Some(1),
                reason: "allowed by mcp_policy #1 (alice, carol -> fs.*, everything.echo)".into(),
            }
        );
        assert_eq!(policy.decide("carol", "everything", "echo").rule, Some(1));
        assert_eq!(policy.decide("bob", "everything", "echo").rule, Some(0));
        assert!(!policy.decide("bob", "fs", "read_file").allowed);
        // `fs.*` is about server `fs`, not every server whose name starts with `fs`.
        assert!(!policy.decide("alice", "fsx", "read_file").allowed);
    }

    #[test]
    fn a_deny_overrides_every_allow_whatever_the_order() {
        let policy = McpPolicy::new(&[
            rule(Allow, &["*"], &["*"]),
            rule(Deny, &["*"], &["fs.write_file"]),
            rule(Allow, &["alice"], &["fs.write_file"]),
            rule(Deny, &["alice"], &["fs.write_*"]),
        ])
        .unwrap();
        let d = policy.decide("alice", "fs", "write_file");
        assert_eq!(
            d,
            McpDecision {
                allowed: false,
                rule: Some(1),
                reason: "denied by mcp_policy #1 (* -> fs.write_file)".into(),
            }
        );
        assert_eq!(policy.decide("alice", "fs", "write_many").rule, Some(3));
        assert_eq!(policy.decide("bob", "fs", "read_file").rule, Some(0));
        assert!(policy.decide("bob", "fs", "read_file").allowed);
        assert_eq!(policy.describe(1).unwrap(), "deny * -> fs.write_file");
        assert_eq!(policy.describe(4), None);
    }

    #[test]
    fn a_question_mark_is_exactly_one_character() {
        let policy =
            McpPolicy::new(&[rule(Allow, &["agent-?"], &["fs.read_?", "db.q?ery"])]).unwrap();
        assert!(policy.decide("agent-1", "fs", "read_a").allowed);
        assert!(policy.decide("agent-x", "db", "query").allowed);
        assert!(!policy.decide("agent-", "fs", "read_a").allowed);
        assert!(!policy.decide("agent-12", "fs", "read_a").allowed);
        assert!(!policy.decide("agent-1", "fs", "read_ab").allowed);
        assert!(!policy.decide("agent-1", "fs", "read_").allowed);
    }

    #[test]
    fn a_star_spans_the_slashes_of_spiffe_ids() {
        let policy = McpPolicy::new(&[
            rule(Allow, &["spiffe://osvm.local/*"], &["fs.*"]),
            rule(Deny, &["spiffe://osvm.local/clients/*/ci"], &["*.delete_*"]),
        ])
        .unwrap();
        assert!(
            policy
                .decide("spiffe://osvm.local/clients/alice", "fs", "read_file")
                .allowed
        );
        assert!(
            policy
                .decide("spiffe://osvm.local/a/b/c/d", "fs", "x.y/z")
                .allowed
        );
        assert_eq!(
            policy
                .decide("spiffe://osvm.local/clients/team/x/ci", "fs", "delete_file")
                .rule,
            Some(1)
        );
        assert!(
            !policy
                .decide("spiffe://other.domain/clients/alice", "fs", "read_file")
                .allowed
        );
    }

    #[test]
    fn characters_other_than_star_and_question_mark_are_literal() {
        let brackets = McpPolicy::new(&[rule(Allow, &["[abc]"], &["fs.get[1]"])]).unwrap();
        assert!(brackets.decide("[abc]", "fs", "get[1]").allowed);
        assert!(!brackets.decide("a", "fs", "get[1]").allowed);
        assert!(!brackets.decide("[abc]", "fs", "get1").allowed);
        let braces = McpPolicy::new(&[rule(Allow, &["{x,y}"], &["fs.{a,b}"])]).unwrap();
        assert!(braces.decide("{x,y}", "fs", "{a,b}").allowed);
        assert!(!braces.decide("x", "fs", "a").allowed);
        let backslash = McpPolicy::new(&[rule(Allow, &["a\\*"], &["fs.a**b"])]).unwrap();
        assert!(backslash.decide("a\\anything", "fs", "a.c/d.b").allowed);
        assert!(!backslash.decide("a*", "fs", "ab").allowed);
    }

    #[test]
    fn merged_rules_are_numbered_in_concatenation_order() {
        let first = [rule(Allow, &["alice"], &["fs.*"])];
        let second = [rule(Deny, &["alice"], &["fs.write_file"])];
        let policy = McpPolicy::merged(first.iter().chain(second.iter())).unwrap();
        assert_eq!(policy.rules().len(), 2);
        assert_eq!(policy.decide("alice", "fs", "write_file").rule, Some(1));
        assert_eq!(policy.decide("alice", "fs", "read_file").rule, Some(0));
    }

    /// Wildcard matching by backtracking, the reference the compiled sets are checked against.
    /// (The test's patterns and texts are ASCII, so bytes are characters.)
    fn naive_match(pattern: &str, text: &str) -> bool {
        let (p, t) = (pattern.as_bytes(), text.as_bytes());
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) && p[pi] != b'*' {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }

    /// The decision by looking at every rule in turn.
    fn naive_decide(rules: &[McpRule], client: &str, server: &str, tool: &str) -> Option<usize> {
        let qualified = format!("{server}.{tool}");
        let matching = |r: &McpRule| {
            r.clients.iter().any(|p| naive_match(p, client))
                && r.tools.iter().any(|p| naive_match(p, &qualified))
        };
        let deny = rules
            .iter()
            .position(|r| r.action == PolicyAction::Deny && matching(r));
        deny.or_else(|| {
            rules
                .iter()
                .position(|r| r.action == PolicyAction::Allow && matching(r))
        })
    }

    /// A small deterministic generator (xorshift), so the test needs no dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn ten_thousand_rules_decide_as_a_rule_by_rule_scan_does() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut rules = Vec::with_capacity(10_000);
        for i in 0..10_000u64 {
            let client = match rng.below(5) {
                0 => format!("client-{}", rng.below(300)),
                1 => format!("spiffe://osvm.local/clients/team-{}/*", rng.below(40)),
                2 => format!("client-{}?", rng.below(30)),
                3 => format!("*-{}", rng.below(100)),
                _ => format!("spiffe://osvm.local/clients/*/agent-{}", rng.below(50)),
            };
            let tool = match rng.below(5) {
                0 => format!("srv{}.tool_{}", rng.below(20), rng.below(50)),
                1 => format!("srv{}.*", rng.below(20)),
                2 => format!("srv{}.tool_{}*", rng.below(20), rng.below(5)),
                3 => format!("*.tool_{}?", rng.below(5)),
                _ => format!("srv?.tool_{}", rng.below(50)),
            };
            let action = if i % 7 == 0 { Deny } else { Allow };
            rules.push(McpRule {
                action,
                clients: vec![client],
                tools: vec![tool],
            });
        }
        let policy = McpPolicy::new(&rules).unwrap();

        let (mut allowed, mut denied_by_rule) = (0, 0);
        for _ in 0..1_000 {
            let client = match rng.below(3) {
                0 => format!("client-{}", rng.below(320)),
                1 => format!(
                    "spiffe://osvm.local/clients/team-{}/agent-{}",
                    rng.below(45),
                    rng.below(55)
                ),
                _ => format!("user-{}", rng.below(120)),
            };
            let server = format!("srv{}", rng.below(22));
            let tool = format!("tool_{}", rng.below(60));
            let d = policy.decide(&client, &server, &tool);
            let expected = naive_decide(&rules, &client, &server, &tool);
            assert_eq!(d.rule, expected, "{client} {server}.{tool}");
            let expected_allowed = expected.is_some_and(|i| rules[i].action == Allow);
            assert_eq!(d.allowed, expected_allowed, "{client} {server}.{tool}");
            match (d.allowed, d.rule) {
                (true, _) => allowed += 1,
                (false, Some(_)) => denied_by_rule += 1,
                (false, None) => {}
            }
        }
        // The queries exercise all three outcomes, so the comparison proves something.
        assert!(allowed > 50, "{allowed}");
        assert!(denied_by_rule > 25, "{denied_by_rule}");
    }
}
