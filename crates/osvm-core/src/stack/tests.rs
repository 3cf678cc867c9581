//! Good stack files parse to exactly the values they describe.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::launch::BindMount;
use crate::model::ComponentKind;

/// The complete example of `docs/stack-file.md`: the ```toml block after the marker comment,
/// so the reference cannot drift from what the parser accepts.
fn full_example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/stack-file.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let after_marker = doc.split("<!-- complete-example -->").nth(1).unwrap();
    let block = after_marker.split("```toml\n").nth(1).unwrap();
    block.split("```").next().unwrap().to_owned()
}

const MIB: u64 = 1024 * 1024;

fn expected_full() -> Stack {
    let defaults = Resources::defaults();
    Stack {
        name: "demo".into(),
        trust_domain: "prod.example.com".into(),
        max_restarts: 7,
        certificate_validity_days: 2,
        certificate_ttl: Duration::from_secs(2 * 24 * 3600),
        restart_backoff: Duration::from_secs(5),
        restart_backoff_max: Duration::from_secs(120),
        restart_reset_after: Duration::from_secs(900),
        log_max_size: 1 << 20,
        log_files: 5,
        network: StackNetwork::Hub,
        components: vec![
            Component {
                name: "rpc".into(),
                component_type: ComponentType::RpcNode {
                    network: "devnet".into(),
                    bind_address: Some("0.0.0.0:8899".into()),
                },
                runtime: crate::launch::RuntimeSpec::Process,
                command: "python3".into(),
                args: vec!["-m".into(), "http.server".into(), "8899".into()],
                env: vec![
                    ("KEY".into(), "value".into()),
                    ("ZED".into(), "last".into()),
                ],
                working_dir: Some("/data".into()),
                resources: Resources {
                    memory_bytes: Some(256 * MIB),
                    cpus: Some(0.5),
                    pids: Some(64),
                    open_files: Some(4096),
                    disk_bytes: Some(Resources::DEFAULT_DISK),
                },
                listen: vec![8899],
                health: Some(HealthCheck {
                    probe: HealthProbe::Http {
                        path: "/".into(),
                        port: 8899,
                        expect_status: Some(200),
                    },
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_millis(500),
                    retries: 4,
                    start_period: Duration::from_secs(90),
                    ready_within: None,
                }),
                restart: RestartPolicy::Always,
                readonly_root: true,
                rootfs: Some("/srv/rootfs".into()),
                mounts: vec![
                    BindMount {
                        source: "/srv/www".into(),
                        target: "/www".into(),
                        writable: false,
                    },
                    BindMount {
                        source: "/var/cache/rpc".into(),
                        target: "/cache".into(),
                        writable: true,
                    },
                ],
                allow_weaker_isolation: false,
                stop_grace: Duration::from_secs(30),
                identity_reload: Some(IdentityReload::Signal(1)),
                mtls: false,
                mtls_egress: vec![],
                publish: vec![Publish {
                    port: 8899,
                    host: "127.0.0.1:18899".parse().unwrap(),
                }],
                network_access: Default::default(),
                swap: Default::default(),
                socket_activation: false,
                native_aio: false,
                mcp: None,
            },
            Component {
                name: "mcp-fs".into(),
                component_type: ComponentType::McpServer {
                    name: "filesystem".into(),
                    version: Some("1.0.0".into()),
                },
                runtime: crate::launch::RuntimeSpec::Process,
                command: "/usr/bin/mcp-fs".into(),
                args: vec![],
                env: vec![],
                working_dir: None,
                resources: defaults.clone(),
                listen: vec![],
                health: Some(HealthCheck {
                    probe: HealthProbe::Exec {
                        command: vec!["/usr/bin/mcp-fs".into(), "--check".into()],
                    },
                    interval: HealthCheck::DEFAULT_INTERVAL,
                    timeout: HealthCheck::DEFAULT_TIMEOUT,
                    retries: HealthCheck::DEFAULT_RETRIES,
                    start_period: HealthCheck::DEFAULT_START_PERIOD,
                    ready_within: None,
                }),
                restart: RestartPolicy::OnFailure,
                readonly_root: false,
                rootfs: None,
                mounts: vec![],
                allow_weaker_isolation: false,
                stop_grace: Component::DEFAULT_STOP_GRACE,
                identity_reload: None,
                mtls: false,
                mtls_egress: vec![],
                publish: vec![],
                network_access: Default::default(),
                swap: Default::default(),
                socket_activation: false,
                native_aio: false,
                mcp: Some(McpServerSpec {
                    name: "filesystem".into(),
                    version: Some("1.0.0".into()),
                    transport: McpTransport::Stdio,
                    prefix: "files".into(),
                }),
            },
            Component {
                name: "val".into(),
                component_type: ComponentType::Validator {
                    network: "devnet".into(),
                    identity: None,
                },
                runtime: crate::launch::RuntimeSpec::microvm(),
                command: "agave-validator".into(),
                args: vec![],
                env: vec![],
                working_dir: None,
                resources: Resources {
                    memory_bytes: Some(1024 * MIB),
                    ..defaults
                },
                listen: vec![8001, 8002],
                health: Some(HealthCheck {
                    probe: HealthProbe::Tcp { port: 8002 },
                    interval: Duration::from_secs(2),
                    timeout: Duration::from_secs(1),
                    retries: 3,
                    start_period: Duration::ZERO,
                    ready_within: None,
                }),
                restart: RestartPolicy::Never,
                readonly_root: false,
                rootfs: None,
                mounts: vec![],
                allow_weaker_isolation: false,
                stop_grace: Duration::from_secs(10),
                identity_reload: None,
                mtls: false,
                mtls_egress: vec![],
                publish: vec![],
                network_access: Default::default(),
                swap: Default::default(),
                socket_activation: false,
                native_aio: false,
                mcp: None,
            },
        ],
        policies: vec![
            PolicyRule {
                action: PolicyAction::Allow,
                from: Selector::Component("mcp-fs".into()),
                to: Selector::Component("rpc".into()),
                ports: vec![8899],
                protocol: Protocol::Tcp,
            },
            PolicyRule {
                action: PolicyAction::Deny,
                from: Selector::Any,
                to: Selector::Kind(ComponentKind::Validator),
                ports: vec![],
                protocol: Protocol::Tcp,
            },
            PolicyRule {
                action: PolicyAction::Allow,
                from: Selector::Component("rpc".into()),
                to: Selector::Cidr("10.0.0.0/8".parse().unwrap()),
                ports: vec![53],
                protocol: Protocol::Udp,
            },
            PolicyRule {
                action: PolicyAction::Allow,
                from: Selector::world(),
                to: Selector::Component("rpc".into()),
                ports: vec![8899],
                protocol: Protocol::Tcp,
            },
        ],
        mcp: McpSettings {
            call_timeout: Duration::from_secs(10),
            max_message_bytes: MIB,
            rate_per_second: 5,
            burst: 10,
        },
        mcp_policy: vec![
            McpRule {
                action: PolicyAction::Allow,
                clients: vec!["alice".into(), "spiffe://prod.example.com/clients/*".into()],
                tools: vec![
                    "filesystem.read_*".into(),
                    "filesystem.list_directory".into(),
                ],
            },
            McpRule {
                action: PolicyAction::Deny,
                clients: vec!["*".into()],
                tools: vec!["filesystem.write_file".into()],
            },
        ],
        source: PathBuf::from("full.toml"),
        warnings: Vec::new(),
    }
}

#[test]
fn documented_complete_example_parses_to_expected_values() {
    let stack = parse(&full_example(), "full.toml").unwrap();
    assert_eq!(stack, expected_full());
}

#[test]
fn validated_stack_round_trips_through_json() {
    let stack = parse(&full_example(), "full.toml").unwrap();
    let json = serde_json::to_string(&stack).unwrap();
    let back: Stack = serde_json::from_str(&json).unwrap();
    assert_eq!(back, stack);
}

#[test]
fn a_component_carries_only_its_own_runtimes_settings_and_older_records_still_load() {
    let text = "[stack]\nname = \"s\"\n[[component]]\nname = \"vm\"\ncommand = \"/bin/true\"\n\
                runtime = \"microvm\"\nmicrovm = { accel = \"tcg\" }\n\
                [[component]]\nname = \"p\"\ncommand = \"true\"\n";
    let stack = parse(text, "s.toml").unwrap();
    let vm = serde_json::to_value(&stack.components[0]).unwrap();
    assert_eq!(vm["runtime"], "microvm");
    assert_eq!(vm["microvm"]["accel"], "tcg");
    assert!(vm.get("unikernel").is_none(), "{vm}");
    let p = serde_json::to_value(&stack.components[1]).unwrap();
    assert_eq!(p["runtime"], "process");
    assert!(
        p.get("microvm").is_none() && p.get("unikernel").is_none(),
        "{p}"
    );
    // What a daemon before the typed runtime stored: the kind plus both settings blocks.
    let mut old = p.clone();
    old["microvm"] = serde_json::to_value(crate::launch::VmOptions::default()).unwrap();
    old["unikernel"] = serde_json::to_value(crate::launch::UnikernelOptions::default()).unwrap();
    let back: Component = serde_json::from_value(old).unwrap();
    assert_eq!(back, stack.components[1]);
    let mut old_vm = vm.clone();
    old_vm["unikernel"] = serde_json::to_value(crate::launch::UnikernelOptions::default()).unwrap();
    let back: Component = serde_json::from_value(old_vm).unwrap();
    assert_eq!(back, stack.components[0]);
}

#[test]
fn a_microvm_may_ask_for_a_confidential_guest_by_name() {
    let text = |c: &str| {
        format!(
            "[stack]\nname = \"s\"\n[[component]]\nname = \"vm\"\ncommand = \"/bin/true\"\n\
             runtime = \"microvm\"\nmicrovm = {{ confidential = \"{c}\" }}\n"
        )
    };
    let stack = parse(&text("sev-snp"), "s.toml").unwrap();
    let vm = serde_json::to_value(&stack.components[0]).unwrap();
    assert_eq!(vm["microvm"]["confidential"], "sev-snp");
    let stack = parse(&text("tdx"), "s.toml").unwrap();
    let vm = serde_json::to_value(&stack.components[0]).unwrap();
    assert_eq!(vm["microvm"]["confidential"], "tdx");
    assert_eq!(
        vm["microvm"]["no_data_disk"], false,
        "a data disk by default"
    );
    let stateless = text("tdx").replace("confidential = \"tdx\"", "data_disk = false");
    let stack = parse(&stateless, "s.toml").unwrap();
    let vm = serde_json::to_value(&stack.components[0]).unwrap();
    assert_eq!(vm["microvm"]["no_data_disk"], true);
    assert_eq!(vm["microvm"]["link"], "vsock", "vsock by default");
    let serial = text("tdx").replace("confidential = \"tdx\"", "link = \"serial\"");
    let stack = parse(&serial, "s.toml").unwrap();
    let vm = serde_json::to_value(&stack.components[0]).unwrap();
    assert_eq!(vm["microvm"]["link"], "serial");
    let err = parse(
        &text("tdx").replace("confidential = \"tdx\"", "link = \"pigeon\""),
        "s.toml",
    )
    .unwrap_err();
    assert_eq!(err.line(), Some(7), "{err}");
    assert!(err.message().contains("serial"), "{err}");
    // SGX protects enclaves inside a process, not a guest: not a choice here.
    let err = parse(&text("sgx"), "s.toml").unwrap_err();
    assert_eq!(err.line(), Some(7), "{err}");
    assert!(err.message().contains("sev-snp"), "{err}");
}

#[test]
fn minimal_component_gets_documented_defaults() {
    let stack = parse(
        "[stack]\nname = \"s\"\n[[component]]\nname = \"a\"\ncommand = \"true\"\n",
        "min.toml",
    )
    .unwrap();
    assert_eq!(stack.trust_domain, "osvm.local");
    assert_eq!(stack.max_restarts, 5);
    assert_eq!(stack.certificate_validity_days, 1);
    assert_eq!(stack.restart_backoff, Stack::DEFAULT_RESTART_BACKOFF);
    assert_eq!(
        stack.restart_backoff_max,
        Stack::DEFAULT_RESTART_BACKOFF_MAX
    );
    assert_eq!(
        stack.restart_reset_after,
        Stack::DEFAULT_RESTART_RESET_AFTER
    );
    assert!(stack.policies.is_empty());
    let c = &stack.components[0];
    assert_eq!(c.component_type, ComponentType::Service { name: None });
    assert_eq!(c.runtime.kind(), RuntimeKind::Process);
    assert_eq!(c.isolation_level(), IsolationLevel::ProcessSandbox);
    assert_eq!(c.restart, RestartPolicy::OnFailure);
    assert_eq!(c.stop_grace, Duration::from_secs(10));
    assert_eq!(c.resources.memory_bytes, Some(512 * MIB));
    assert_eq!(c.resources.cpus, Some(2.0));
    assert_eq!(c.resources.open_files, Some(1024));
    assert_eq!(c.resources.pids, Some(4096));
    assert_eq!(c.resources.disk_bytes, Some(1 << 30));
    assert_eq!(c.resources, Resources::defaults(), "the same as osvm run's");
    assert!(!c.native_aio);
    assert!(c.health.is_none());
    assert!(!c.readonly_root);
}

#[test]
fn weaker_isolation_is_accepted_when_the_component_says_so() {
    let text = "[stack]\nname = \"s\"\n[[component]]\nname = \"core\"\n\
                type = { kind = \"osvm_core\" }\ncommand = \"osvm\"\nallow_weaker_isolation = true\n";
    let stack = parse(text, "s.toml").unwrap();
    assert!(stack.components[0].allow_weaker_isolation);
    assert!(stack.components[0].component_type.is_security_critical());
}

#[test]
fn launch_spec_maps_every_field() {
    let stack = parse(&full_example(), "full.toml").unwrap();
    let rpc = stack.component("rpc").unwrap();
    let spec = rpc.launch_spec("demo");
    assert_eq!(spec.name, "rpc");
    assert_eq!(spec.command, "python3");
    assert_eq!(spec.args, rpc.args);
    assert_eq!(spec.env, rpc.env);
    assert_eq!(spec.working_dir.as_deref(), Some(Path::new("/data")));
    assert_eq!(spec.resources, rpc.resources);
    assert_eq!(spec.listen, vec![8899]);
    assert!(spec.readonly_root);
    assert_eq!(spec.binds, rpc.mounts);
    assert_eq!(spec.rootfs.as_deref(), Some(Path::new("/srv/rootfs")));
    assert!(stack.component("nope").is_none());
}

#[test]
fn every_example_stack_file_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} example stacks found");
}

#[test]
fn quickstart_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml");
    let stack = load(&path).unwrap();
    assert_eq!(stack.name, "quickstart");
    assert_eq!(stack.source, path);
    let names: Vec<&str> = stack.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["web", "echo"]);
    let web = stack.component("web").unwrap();
    assert_eq!(web.command, "python3");
    assert_eq!(web.args, ["-m", "http.server", "8080"]);
    assert_eq!(web.working_dir, None);
    assert_eq!(web.resources.memory_bytes, Some(128 * MIB));
    assert_eq!(web.resources.cpus, Some(0.5));
    assert_eq!(web.resources.pids, Some(32));
    assert_eq!(web.listen, [8080]);
    assert!(web.readonly_root);
    assert_eq!(
        web.health.as_ref().map(|h| &h.probe),
        Some(&HealthProbe::Http {
            path: "/".into(),
            port: 8080,
            expect_status: None
        })
    );
    let echo = stack.component("echo").unwrap();
    assert_eq!(echo.command, "busybox");
    assert_eq!(echo.resources.memory_bytes, Some(32 * MIB));
    assert_eq!(
        echo.health.as_ref().map(|h| &h.probe),
        Some(&HealthProbe::Http {
            path: "/hostname".into(),
            port: 8081,
            expect_status: None
        })
    );
    // On the hub, web published on the host's loopback; world -> web and web -> echo.
    assert_eq!(stack.network, StackNetwork::Hub);
    let web = stack.component("web").unwrap();
    assert_eq!(web.publish.len(), 1);
    assert_eq!(web.publish[0].port, 8080);
    assert_eq!(web.publish[0].host.to_string(), "127.0.0.1:18080");
    let rules: Vec<String> = stack
        .policies
        .iter()
        .map(|r| format!("{} -> {} {:?}", r.from, r.to, r.ports))
        .collect();
    assert_eq!(rules, ["world -> web [8080]", "web -> echo [8081]"]);
    assert!(stack.warnings.is_empty(), "{:?}", stack.warnings);
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let err = load(Path::new("/nonexistent/osvm/stack.toml")).unwrap_err();
    assert!(matches!(err, StackError::Io { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/osvm/stack.toml: cannot read stack file")
    );
    assert_eq!(err.line(), None);
}

/// Two MCP servers, one on stdio and one on HTTP, a plain service, and two `[[mcp_policy]]`
/// rules; `[stack]` has no `mcp` table.
const TWO_MCP_SERVERS: &str = r#"
[stack]
name = "mcp"

[[component]]
name = "files"
type = { kind = "mcp_server", name = "fs", version = "1.0" }
command = "/usr/bin/mcp-fs"

[[component]]
name = "demo"
type = { kind = "mcp_server", name = "everything" }
command = "/usr/bin/mcp-everything"
listen = [8080]
mcp = { transport = "http", port = 8080, prefix = "ev" }

[[component]]
name = "web"
command = "python3"

[[mcp_policy]]
allow = { clients = ["alice", "spiffe://osvm.local/*"], tools = ["fs.*", "everything.echo"] }

[[mcp_policy]]
deny = { clients = ["*"], tools = ["fs.write_file"] }
"#;

#[test]
fn mcp_servers_and_rules_parse_to_their_values() {
    let stack = parse(TWO_MCP_SERVERS, "mcp.toml").unwrap();

    let files = stack.component("files").unwrap();
    let spec = files.mcp.as_ref().unwrap();
    assert_eq!(spec.name, "fs");
    assert_eq!(spec.version.as_deref(), Some("1.0"));
    assert_eq!(spec.transport, McpTransport::Stdio);
    assert_eq!(
        spec.prefix, "fs",
        "the prefix defaults to the server's name"
    );

    let demo = stack.component("demo").unwrap();
    let spec = demo.mcp.as_ref().unwrap();
    assert_eq!(spec.name, "everything");
    assert_eq!(spec.version, None);
    assert_eq!(
        spec.transport,
        McpTransport::Http {
            port: 8080,
            path: "/mcp".into(),
            tls: false,
        }
    );
    assert_eq!(spec.prefix, "ev");
    // The MCP settings are the gateway's business: the launch is that of any component.
    assert_eq!(demo.launch_spec("mcp").listen, vec![8080]);
    assert_eq!(demo.launch_spec("mcp").command, "/usr/bin/mcp-everything");

    assert_eq!(stack.component("web").unwrap().mcp, None);

    assert_eq!(stack.mcp, McpSettings::default());
    assert_eq!(stack.mcp.call_timeout, Duration::from_secs(30));
    assert_eq!(stack.mcp.max_message_bytes, 4 * MIB);
    assert_eq!(stack.mcp.rate_per_second, 200);
    assert_eq!(stack.mcp.burst, 400);

    assert_eq!(stack.mcp_policy.len(), 2);
    let allow = &stack.mcp_policy[0];
    assert_eq!(allow.action, PolicyAction::Allow);
    assert_eq!(allow.clients, ["alice", "spiffe://osvm.local/*"]);
    assert_eq!(allow.tools, ["fs.*", "everything.echo"]);
    let deny = &stack.mcp_policy[1];
    assert_eq!(deny.action, PolicyAction::Deny);
    assert_eq!(deny.clients, ["*"]);
    assert_eq!(deny.tools, ["fs.write_file"]);
}

#[test]
fn mcp_settings_take_sizes_and_durations() {
    let text = TWO_MCP_SERVERS.replace(
        "name = \"mcp\"\n",
        "name = \"mcp\"\nmcp = { call_timeout = \"1m30s\", max_message_size = 65536, rate = 1000 }\n",
    );
    let stack = parse(&text, "mcp.toml").unwrap();
    assert_eq!(stack.mcp.call_timeout, Duration::from_secs(90));
    assert_eq!(stack.mcp.max_message_bytes, 65536);
    assert_eq!(stack.mcp.rate_per_second, 1000);
    assert_eq!(
        stack.mcp.burst, 1000,
        "an unset burst is never below the rate"
    );
}

#[test]
fn a_stdio_server_may_not_ask_for_socket_activation() {
    let text = TWO_MCP_SERVERS.replace(
        "command = \"/usr/bin/mcp-fs\"\n",
        "command = \"/usr/bin/mcp-fs\"\nlisten = [9000]\nsocket_activation = true\n",
    );
    let err = parse(&text, "mcp.toml").unwrap_err();
    assert!(err.message().contains("MCP server on stdio"), "{err}");
    let http = TWO_MCP_SERVERS.replace(
        "listen = [8080]\n",
        "listen = [8080]\nsocket_activation = true\n",
    );
    assert!(parse(&http, "mcp.toml").unwrap().components[1].socket_activation);
}

#[test]
fn guests_take_the_mcp_transports_the_gateway_can_reach_in_them() {
    let runtime = |component: &str, kind: &str| {
        TWO_MCP_SERVERS.replace(
            &format!("name = \"{component}\"\n"),
            &format!("name = \"{component}\"\nruntime = \"{kind}\"\n"),
        )
    };
    // A microVM server over stdio is carried over vsock.
    parse(&runtime("files", "microvm"), "mcp.toml").unwrap();
    for (component, kind, line, why) in [
        ("files", "unikernel", 5, "no stdin"),
        ("demo", "unikernel", 10, "set network = \"hub\""),
        ("demo", "microvm", 10, "set network = \"hub\""),
    ] {
        let err = parse(&runtime(component, kind), "mcp.toml").unwrap_err();
        assert!(err.message().contains(why), "{component} as {kind}: {err}");
        assert_eq!(err.line(), Some(line), "{err}");
    }
    // Over HTTP at its hub address.
    for kind in ["unikernel", "microvm"] {
        let on_hub = runtime("demo", kind)
            .replace("name = \"mcp\"\n", "name = \"mcp\"\nnetwork = \"hub\"\n");
        parse(&on_hub, "mcp.toml").unwrap();
    }
}

#[test]
fn mcp_transport_is_tagged_in_json() {
    let http = McpTransport::Http {
        port: 8080,
        path: "/mcp".into(),
        tls: false,
    };
    assert_eq!(
        serde_json::to_value(&http).unwrap(),
        serde_json::json!({ "transport": "http", "port": 8080, "path": "/mcp" })
    );
    assert_eq!(
        serde_json::to_value(McpTransport::Stdio).unwrap(),
        serde_json::json!({ "transport": "stdio" })
    );
}

#[test]
fn stacks_stored_before_mcp_still_load() {
    let stack = parse(&full_example(), "full.toml").unwrap();
    let mut json = serde_json::to_value(&stack).unwrap();
    let object = json.as_object_mut().unwrap();
    object.remove("mcp");
    object.remove("mcp_policy");
    for c in object["components"].as_array_mut().unwrap() {
        c.as_object_mut().unwrap().remove("mcp");
    }
    let old: Stack = serde_json::from_value(json).unwrap();
    assert_eq!(old.mcp, McpSettings::default());
    assert!(old.mcp_policy.is_empty());
    assert!(old.components.iter().all(|c| c.mcp.is_none()));
}

#[test]
fn policy_rules_on_a_stack_without_the_hub_are_warned_about_at_the_first_rule() {
    let text = "[stack]\nname = \"s\"\n[[component]]\nname = \"a\"\ncommand = \"true\"\n\
                listen = [80]\n[[component]]\nname = \"b\"\ncommand = \"true\"\n\
                [[policy]]\nallow = { from = \"a\", to = \"b\" }\n";
    let stack = parse(text, "s.toml").unwrap();
    assert_eq!(stack.warnings.len(), 1, "{:?}", stack.warnings);
    let w = &stack.warnings[0];
    assert_eq!((w.line, w.column), (10, 1), "{w}");
    assert!(
        w.to_string()
            .starts_with("s.toml:10:1: warning: stack `s` is not on the hub network"),
        "{w}"
    );
    let on_hub = text.replace("name = \"s\"\n", "name = \"s\"\nnetwork = \"hub\"\n");
    assert!(parse(&on_hub, "s.toml").unwrap().warnings.is_empty());
    let no_rules = text.split("[[policy]]").next().unwrap().to_owned();
    assert!(parse(&no_rules, "s.toml").unwrap().warnings.is_empty());
}

#[test]
fn published_ports_parse_in_every_host_form_and_world_is_a_source() {
    let text = |publish: &str, network: &str| {
        format!(
            "[stack]\nname = \"s\"\nnetwork = \"{network}\"\n[[component]]\nname = \"web\"\n\
             command = \"true\"\nlisten = [80, 81]\npublish = {publish}\n\
             [[policy]]\nallow = {{ from = \"world\", to = \"web\", ports = [80] }}\n"
        )
    };
    let stack = parse(
        &text(
            "[{ port = 80, host = \"127.0.0.1:8080\" }, { port = 81, host = 8081 }, { port = 80, host = \"8082\" }]",
            "hub",
        ),
        "s.toml",
    )
    .unwrap();
    let hosts: Vec<String> = stack.components[0]
        .publish
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        hosts,
        ["127.0.0.1:8080->80", "0.0.0.0:8081->81", "0.0.0.0:8082->80"]
    );
    assert_eq!(stack.policies[0].from, Selector::world());
    assert_eq!(stack.policies[0].from.to_string(), "world");
    for (publish, network, want) in [
        (
            "[{ port = 80, host = 8080 }]",
            "none",
            "needs the hub network",
        ),
        ("[{ port = 90, host = 8080 }]", "hub", "does not listen on"),
        ("[{ port = 80, host = \"[::]:8080\" }]", "hub", "IPv6"),
        (
            "[{ port = 80, host = \"localhost:8080\" }]",
            "hub",
            "is not a host address",
        ),
        ("[{ port = 80, host = 0 }]", "hub", "out of range"),
        (
            "[{ port = 80, host = 8080 }, { port = 81, host = \"127.0.0.1:8080\" }]",
            "hub",
            "already published",
        ),
        ("[{ port = 80 }]", "hub", "needs `port` and `host`"),
    ] {
        let e = parse(&text(publish, network), "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{publish} on {network}: {e}");
        assert!(
            e.starts_with("s.toml:8:"),
            "points at the publish line: {e}"
        );
    }
}

#[test]
fn a_component_cannot_be_called_world_which_names_every_outside_address() {
    // Otherwise `to = "world"` in a rule would silently mean the whole internet, not it.
    let text = "[stack]\nname = \"s\"\n[[component]]\nname = \"world\"\ncommand = \"true\"\n\
                [[component]]\nname = \"a\"\ncommand = \"true\"\n\
                [[policy]]\nallow = { from = \"a\", to = \"world\" }\n";
    let e = parse(text, "s.toml").unwrap_err().to_string();
    assert!(e.starts_with("s.toml:4:8:"), "{e}");
    assert!(e.contains("reserved"), "{e}");
}
