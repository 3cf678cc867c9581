//! Every kind of bad stack file is rejected with the exact line and column of the offending
//! text and a message that says what was expected.

use osvm_core::stack::{self, StackError};

/// The smallest valid prefix: lines 1-6. Cases append from line 7 on.
const BASE: &str =
    "[stack]\nname = \"demo\"\n\n[[component]]\nname = \"web\"\ncommand = \"python3\"\n";

/// One bad file: its text, where the error must point, and part of the message.
struct Case {
    /// What the case proves.
    what: &'static str,
    /// The file's text.
    text: String,
    /// Expected 1-based line.
    line: usize,
    /// Expected 1-based column.
    column: usize,
    /// A substring the message must contain.
    message: &'static str,
}

fn case(
    what: &'static str,
    text: impl Into<String>,
    line: usize,
    column: usize,
    message: &'static str,
) -> Case {
    Case {
        what,
        text: text.into(),
        line,
        column,
        message,
    }
}

/// `BASE` followed by `extra`, which therefore starts on line 7.
fn base(extra: &str) -> String {
    format!("{BASE}{extra}\n")
}

fn cases() -> Vec<Case> {
    vec![
        case(
            "toml syntax error",
            "[stack]\nname = demo\n",
            2,
            8,
            "string values must be quoted",
        ),
        // Attack: a stack named `osvm` with a component `mcp-gateway` would be issued
        // spiffe://<td>/osvm/mcp-gateway, the identity MCP servers with tls = true trust as
        // the gateway.
        case(
            "the reserved stack name osvm",
            "[stack]\nname = \"osvm\"\n",
            2,
            8,
            "the stack name `osvm` is reserved",
        ),
        case(
            "unclosed table header",
            "[stack\nname = \"demo\"\n",
            1,
            7,
            "expected `]`",
        ),
        case(
            "unknown top-level key",
            "bogus = 1\n[stack]\nname = \"demo\"\n",
            1,
            1,
            "unknown field `bogus`",
        ),
        case(
            "misspelled [[component]]",
            "[stack]\nname = \"demo\"\n\n[[components]]\nname = \"web\"\n",
            4,
            3,
            "unknown field `components`, expected one of `stack`, `component`, `policy`",
        ),
        case(
            "unknown [stack] key",
            "[stack]\nname = \"demo\"\nmax_restart = 3\n",
            3,
            1,
            "unknown field `max_restart`",
        ),
        case(
            "unknown component key",
            base("cmd = \"x\""),
            7,
            1,
            "unknown field `cmd`",
        ),
        case(
            "[[stack]] instead of [stack]",
            "[[stack]]\nname = \"demo\"\n",
            1,
            1,
            "invalid type: sequence, expected a [stack] table with `name`",
        ),
        case(
            "table written as an array of values",
            base("resources = [\"1G\"]"),
            7,
            13,
            "invalid type: sequence, expected a table such as { memory = \"256M\", cpus = 0.5 }",
        ),
        case(
            "keyword of the wrong type",
            base("runtime = 1"),
            7,
            11,
            "invalid type: integer `1`, expected a string",
        ),
        case(
            "port of the wrong type",
            base("listen = [80.5]"),
            7,
            11,
            "expected a whole number",
        ),
        case(
            "missing [stack]",
            "[[component]]\nname = \"a\"\ncommand = \"x\"\n",
            1,
            1,
            "missing [stack] table",
        ),
        case(
            "missing stack name",
            "[stack]\ntrust_domain = \"osvm.local\"\n",
            1,
            1,
            "[stack] has no `name`",
        ),
        case(
            "bad stack name",
            base("").replace("\"demo\"", "\"Demo\""),
            2,
            8,
            "invalid stack name `Demo`: it does not start with a lowercase letter",
        ),
        case(
            "stack name with underscore",
            base("").replace("\"demo\"", "\"my_stack\""),
            2,
            8,
            "it contains '_'",
        ),
        case(
            "stack name too long",
            base("").replace("\"demo\"", &format!("\"{}\"", "a".repeat(64))),
            2,
            8,
            "it is 64 characters long",
        ),
        case(
            "bad trust domain",
            base("").replace(
                "name = \"demo\"",
                "name = \"demo\"\ntrust_domain = \"osvm..local\"",
            ),
            3,
            16,
            "invalid trust_domain",
        ),
        case(
            "certificate validity zero",
            base("").replace(
                "name = \"demo\"",
                "name = \"demo\"\ncertificate_validity_days = 0",
            ),
            3,
            29,
            "expected a whole number from 1 to 365",
        ),
        case(
            "no components",
            "[stack]\nname = \"demo\"\n",
            1,
            1,
            "stack `demo` has no components",
        ),
        case(
            "missing component name",
            "[stack]\nname = \"demo\"\n\n[[component]]\ncommand = \"x\"\n",
            4,
            1,
            "this [[component]] has no `name`",
        ),
        case(
            "missing command",
            "[stack]\nname = \"demo\"\n\n[[component]]\nname = \"web\"\n",
            4,
            1,
            "component `web` has no `command`",
        ),
        case(
            "empty command",
            base("").replace("\"python3\"", "\" \""),
            6,
            11,
            "`command` is empty",
        ),
        case(
            "bad component name",
            base("").replace("\"web\"", "\"web-\""),
            5,
            8,
            "it ends with '-'",
        ),
        case(
            "bad type kind",
            base("type = { kind = \"vm\" }"),
            7,
            17,
            "unknown variant `vm`, expected one of `osvm_core`, `validator`",
        ),
        case(
            "type without kind",
            base("type = { network = \"devnet\" }"),
            7,
            8,
            "`type` has no `kind`",
        ),
        case(
            "field of another kind",
            base("type = { kind = \"service\", network = \"x\" }"),
            7,
            38,
            "`network` is not a field of kind `service`; its fields are name",
        ),
        case(
            "validator without network",
            base("type = { kind = \"validator\" }\nruntime = \"microvm\""),
            7,
            8,
            "kind `validator` needs `network`",
        ),
        case(
            "unknown key in type",
            base("type = { kind = \"service\", colour = \"x\" }"),
            7,
            28,
            "unknown field `colour`",
        ),
        case(
            "duplicate component names",
            base("\n[[component]]\nname = \"web\"\ncommand = \"x\""),
            9,
            8,
            "duplicate component name `web`",
        ),
        case(
            "listen port 0",
            base("listen = [0]"),
            7,
            11,
            "listen port 0 is out of range; expected a whole number from 1 to 65535",
        ),
        case(
            "listen port 70000",
            base("listen = [80, 70000]"),
            7,
            15,
            "listen port 70000 is out of range",
        ),
        case(
            "duplicate listen port",
            base("listen = [80, 81, 80]"),
            7,
            19,
            "port 80 is listed twice",
        ),
        case(
            "listen is not a list",
            base("listen = \"8080\""),
            7,
            10,
            "invalid type: string \"8080\", expected a sequence",
        ),
        case(
            "bad memory size",
            base("resources = { memory = \"12X\" }"),
            7,
            24,
            "invalid memory size: `12X` has unknown unit `X`",
        ),
        case(
            "zero memory",
            base("resources = { memory = 0 }"),
            7,
            24,
            "invalid memory size: `0` is zero",
        ),
        case(
            "zero cpus",
            base("resources = { cpus = 0 }"),
            7,
            22,
            "invalid cpus",
        ),
        case(
            "unknown resource key",
            base("resources = { mem = \"1G\" }"),
            7,
            15,
            "unknown field `mem`",
        ),
        case(
            "bad duration",
            base("stop_grace = \"soon\""),
            7,
            14,
            "invalid `stop_grace`: `soon` is not a duration",
        ),
        case(
            "restart backoff ceiling below its start",
            "[stack]\nname = \"demo\"\nrestart_backoff = \"1m\"\nrestart_backoff_max = \"30s\"\n\n[[component]]\nname = \"web\"\ncommand = \"x\"\n",
            4,
            23,
            "restart_backoff_max (30s) is shorter than restart_backoff (1m)",
        ),
        case(
            "bad restart value",
            base("restart = \"sometimes\""),
            7,
            11,
            "unknown variant `sometimes`, expected one of `always`, `on-failure`, `never`",
        ),
        case(
            "bad runtime name",
            base("runtime = \"vm\""),
            7,
            11,
            "unknown variant `vm`, expected one of `process`, `microvm`, `unikernel`",
        ),
        case(
            "relative working_dir",
            base("working_dir = \"data\""),
            7,
            15,
            "working_dir `data` must be an absolute path",
        ),
        case(
            "relative mount source",
            base("mounts = [{ source = \"srv\", target = \"/www\" }]"),
            7,
            22,
            "mount source `srv` must be an absolute path",
        ),
        case(
            "mount target with ..",
            base("mounts = [{ source = \"/srv\", target = \"/a/../etc\" }]"),
            7,
            39,
            "mount target `/a/../etc` must not contain `..`",
        ),
        case(
            "mount without target",
            base("mounts = [{ source = \"/srv\" }]"),
            7,
            11,
            "mount has no `target`",
        ),
        case(
            "bad mount mode",
            base("mounts = [{ source = \"/srv\", target = \"/srv\", mode = \"rx\" }]"),
            7,
            54,
            "unknown variant `rx`, expected `ro` or `rw`",
        ),
        case(
            "bad env key",
            base("env = { \"A=B\" = \"x\" }"),
            7,
            9,
            "invalid environment variable name \"A=B\"",
        ),
        case(
            "columns count characters",
            base("env = { \"é\" = \"x\", \"\" = \"y\" }"),
            7,
            20,
            "invalid environment variable name \"\"",
        ),
        case(
            "health with two probes",
            base("listen = [8080]\nhealth = { http = \"/\", tcp = true, port = 8080 }"),
            8,
            30,
            "`health` has both `http` and `tcp`",
        ),
        case(
            "health with no probe",
            base("health = { port = 8080 }"),
            7,
            10,
            "`health` has no probe",
        ),
        case(
            "http probe without port",
            base("health = { http = \"/\" }"),
            7,
            10,
            "an http health probe needs `port`",
        ),
        case(
            "http path without slash",
            base("health = { http = \"healthz\", port = 80 }"),
            7,
            19,
            "must start with '/'",
        ),
        case(
            "health port not listened on",
            base("listen = [8080]\nhealth = { tcp = true, port = 9090 }"),
            8,
            31,
            "health port 9090 is not one of this component's listen ports [8080]",
        ),
        case(
            "tcp = false",
            base("health = { tcp = false, port = 80 }"),
            7,
            18,
            "`tcp` must be true",
        ),
        case(
            "exec probe with port",
            base("health = { exec = [\"true\"], port = 80 }"),
            7,
            36,
            "`port` is only used by http and tcp probes",
        ),
        case(
            "zero interval",
            base("health = { exec = [\"true\"], interval = \"0s\" }"),
            7,
            40,
            "`interval` must be longer than zero",
        ),
        case(
            "bad expect_status",
            base("health = { http = \"/\", port = 80, expect_status = 42 }"),
            7,
            51,
            "expect_status 42 is out of range",
        ),
        case(
            "validator on process runtime",
            "[stack]\nname = \"demo\"\n\n[[component]]\nname = \"val\"\ntype = { kind = \"validator\", network = \"devnet\" }\ncommand = \"agave-validator\"\n",
            6,
            8,
            "component `val` is of kind `validator`, which is security-critical and must run at micro_vm isolation or stronger, but runtime \"process\" gives process_sandbox; set runtime = \"microvm\"",
        ),
        case(
            "osvm_core with explicit process runtime",
            "[stack]\nname = \"demo\"\n\n[[component]]\nname = \"core\"\ntype = { kind = \"osvm_core\" }\nruntime = \"process\"\ncommand = \"osvm\"\n",
            7,
            11,
            "allow_weaker_isolation = true",
        ),
        case(
            "policy with unknown component",
            base("\n[[policy]]\nallow = { from = \"web\", to = \"db\" }"),
            9,
            30,
            "policy refers to component `db`, which this stack does not define; expected one of web",
        ),
        case(
            "policy with both allow and deny",
            base(
                "\n[[policy]]\nallow = { from = \"web\", to = \"web\" }\ndeny = { from = \"web\", to = \"web\" }",
            ),
            10,
            8,
            "has both `allow` and `deny`",
        ),
        case(
            "policy with neither allow nor deny",
            base("\n[[policy]]"),
            8,
            1,
            "this [[policy]] has no rule",
        ),
        case(
            "policy without to",
            base("\n[[policy]]\ndeny = { from = \"web\" }"),
            9,
            8,
            "policy rule has no `to`",
        ),
        case(
            "policy with bad type selector",
            base("\n[[policy]]\nallow = { from = \"type:vm\", to = \"*\" }"),
            9,
            18,
            "unknown component kind `vm`",
        ),
        case(
            "policy with host bits in cidr",
            base("\n[[policy]]\nallow = { from = \"web\", to = \"cidr:10.0.0.1/8\" }"),
            9,
            30,
            "did you mean 10.0.0.0/8?",
        ),
        case(
            "policy between two outside networks",
            base("\n[[policy]]\nallow = { from = \"world\", to = \"cidr:10.0.0.0/8\" }"),
            9,
            32,
            "must go to components",
        ),
        case(
            "policy to a SPIFFE ID",
            base(
                "\n[[policy]]\nallow = { from = \"web\", to = \"spiffe://osvm.local/clients/a\" }",
            ),
            9,
            30,
            "a SPIFFE ID names who connects",
        ),
        case(
            "policy from a SPIFFE ID to a network",
            base(
                "\n[[policy]]\nallow = { from = \"spiffe://osvm.local/clients/a\", to = \"cidr:10.0.0.0/8\" }",
            ),
            9,
            56,
            "must go to components",
        ),
        case(
            "policy from a malformed SPIFFE ID",
            base("\n[[policy]]\nallow = { from = \"spiffe://osvm.local/a*b\", to = \"web\" }"),
            9,
            18,
            "is not a SPIFFE ID",
        ),
        case(
            "policy port 0",
            base("\n[[policy]]\nallow = { from = \"*\", to = \"web\", ports = [0] }"),
            9,
            44,
            "policy port 0 is out of range",
        ),
        case(
            "policy bad protocol",
            base("\n[[policy]]\nallow = { from = \"*\", to = \"web\", protocol = \"icmp\" }"),
            9,
            46,
            "unknown variant `icmp`, expected `tcp` or `udp`",
        ),
        case(
            "mtls without listen ports",
            base("mtls = true"),
            7,
            8,
            "has mtls = true but no `listen` ports",
        ),
        case(
            "mtls_egress to an unknown component",
            base("mtls_egress = [{ to = \"db\", port = 5432, listen = 15432 }]"),
            7,
            16,
            "no component `db` in the stack",
        ),
        case(
            "mtls_egress to a component without mtls",
            base(
                "mtls_egress = [{ to = \"api\", port = 80, listen = 15432 }]\n\n[[component]]\nname = \"api\"\ncommand = \"x\"\nlisten = [80]",
            ),
            7,
            16,
            "`api` does not have mtls = true",
        ),
        case(
            "socket_activation without listen ports",
            base("socket_activation = true"),
            7,
            21,
            "socket_activation = true but no `listen` ports",
        ),
        case(
            "microvm table on a process component",
            base("microvm = { accel = \"tcg\" }"),
            7,
            11,
            "has a `microvm` table but runtime \"process\"",
        ),
        case(
            "unknown accelerator",
            base("runtime = \"microvm\"\nmicrovm = { accel = \"fast\" }"),
            8,
            21,
            "expected one of `auto`, `kvm`, `tcg`",
        ),
        case(
            "relative microvm include",
            base("runtime = \"microvm\"\nmicrovm = { include = [\"srv/www\"] }"),
            8,
            24,
            "must be an absolute path",
        ),
        case(
            "socket_activation in a microVM",
            base("runtime = \"microvm\"\nlisten = [80]\nsocket_activation = true"),
            4,
            1,
            "does not support socket_activation",
        ),
        case(
            "a data volume for a unikernel",
            base("runtime = \"unikernel\"\nresources = { disk = \"64M\" }"),
            8,
            22,
            "gets no persistent /data volume",
        ),
        case(
            "shared data and no data disk",
            base("runtime = \"microvm\"\nmicrovm = { data_disk = false, shared_data = true }"),
            8,
            46,
            "keep one",
        ),
        case(
            "a snapshot with a data disk",
            base("runtime = \"microvm\"\nmicrovm = { snapshot = true }"),
            8,
            24,
            "needs data_disk = false",
        ),
        case(
            "a snapshot over vsock",
            base(
                "runtime = \"microvm\"\nmicrovm = { data_disk = false, link = \"vsock\", snapshot = true }",
            ),
            8,
            59,
            "needs link = \"serial\"",
        ),
        case(
            "a snapshot with mounts",
            base(
                "runtime = \"microvm\"\nmounts = [{ source = \"/srv\", target = \"/srv\" }]\nmicrovm = { data_disk = false, snapshot = true }",
            ),
            9,
            43,
            "cannot be combined with mounts",
        ),
        case(
            "rootfs in a microVM",
            base("runtime = \"microvm\"\nrootfs = \"/srv/root\""),
            4,
            1,
            "its root is its image",
        ),
        case(
            "unikernel table on a process component",
            base("unikernel = { deadline = \"5s\" }"),
            7,
            13,
            "has a `unikernel` table but runtime \"process\"",
        ),
        case(
            "unknown unikernel launcher",
            base("runtime = \"unikernel\"\nunikernel = { launcher = \"firecracker\" }"),
            8,
            26,
            "expected one of `auto`, `uhyve`, `qemu`",
        ),
        case(
            "uhyve under TCG",
            base("runtime = \"unikernel\"\nunikernel = { launcher = \"uhyve\", accel = \"tcg\" }"),
            8,
            13,
            "uhyve runs guests only under KVM",
        ),
        case(
            "malformed unikernel deadline",
            base("runtime = \"unikernel\"\nunikernel = { deadline = \"soon\" }"),
            8,
            26,
            "invalid `deadline`",
        ),
        case(
            "exec health check in a unikernel",
            base("runtime = \"unikernel\"\nhealth = { exec = [\"true\"] }"),
            4,
            1,
            "does not support exec health checks",
        ),
        case(
            "mounts in a unikernel",
            base("runtime = \"unikernel\"\nmounts = [{ source = \"/srv\", target = \"/srv\" }]"),
            4,
            1,
            "a Hermit image is one ELF file",
        ),
        case(
            "mtls_egress entry without listen",
            base("mtls_egress = [{ to = \"web\", port = 80 }]"),
            7,
            16,
            "needs `to`, `port` and `listen`",
        ),
        case(
            "mcp table on a component that is not an MCP server",
            base("mcp = { transport = \"stdio\" }"),
            7,
            7,
            "component `web` has an `mcp` table but is of kind `service`",
        ),
        case(
            "http transport without port",
            base("type = { kind = \"mcp_server\", name = \"fs\" }\nmcp = { transport = \"http\" }"),
            8,
            7,
            "transport = \"http\" needs `port`",
        ),
        case(
            "http port not in listen",
            base(
                "type = { kind = \"mcp_server\", name = \"fs\" }\nlisten = [80]\nmcp = { transport = \"http\", port = 8080 }",
            ),
            9,
            36,
            "mcp port 8080 is not one of component `web`'s listen ports (it listens on [80])",
        ),
        case(
            "http port with no listen ports at all",
            base(
                "type = { kind = \"mcp_server\", name = \"fs\" }\nmcp = { transport = \"http\", port = 8080 }",
            ),
            8,
            36,
            "it has no `listen` ports",
        ),
        case(
            "port on a stdio server",
            base("type = { kind = \"mcp_server\", name = \"fs\" }\nmcp = { port = 80 }"),
            8,
            16,
            "`port` only applies to transport = \"http\"",
        ),
        case(
            "unknown mcp transport",
            base("type = { kind = \"mcp_server\", name = \"fs\" }\nmcp = { transport = \"sse\" }"),
            8,
            21,
            "unknown variant `sse`, expected `stdio` or `http`",
        ),
        case(
            "duplicate mcp prefix",
            base(
                "type = { kind = \"mcp_server\", name = \"fs\" }\n\n[[component]]\nname = \"fs2\"\ncommand = \"x\"\ntype = { kind = \"mcp_server\", name = \"files\" }\nmcp = { prefix = \"fs\" }",
            ),
            13,
            18,
            "components `web` and `fs2` both give their MCP tools the prefix `fs`",
        ),
        case(
            "bad mcp prefix",
            base("type = { kind = \"mcp_server\", name = \"fs\" }\nmcp = { prefix = \"Files\" }"),
            8,
            18,
            "invalid mcp prefix `Files`",
        ),
        case(
            "mcp server name with a dot",
            base("type = { kind = \"mcp_server\", name = \"my.fs\" }"),
            7,
            38,
            "MCP server name `my.fs` contains '.'",
        ),
        case(
            "mcp_policy with both allow and deny",
            base(
                "\n[[mcp_policy]]\nallow = { clients = [\"*\"], tools = [\"*\"] }\ndeny = { clients = [\"*\"], tools = [\"*\"] }",
            ),
            10,
            8,
            "this [[mcp_policy]] has both `allow` and `deny`",
        ),
        case(
            "mcp_policy with neither allow nor deny",
            base("\n[[mcp_policy]]"),
            8,
            1,
            "this [[mcp_policy]] has no rule",
        ),
        case(
            "mcp_policy without tools",
            base("\n[[mcp_policy]]\nallow = { clients = [\"*\"] }"),
            9,
            9,
            "mcp_policy rule has no `tools`",
        ),
        case(
            "mcp_policy with no clients",
            base("\n[[mcp_policy]]\nallow = { clients = [], tools = [\"*\"] }"),
            9,
            21,
            "`clients` is empty",
        ),
        case(
            "mcp_policy naming an unknown server",
            base(
                "type = { kind = \"mcp_server\", name = \"fs\" }\n\n[[mcp_policy]]\nallow = { clients = [\"alice\"], tools = [\"db.query\"] }",
            ),
            10,
            41,
            "tool pattern `db.query` names MCP server `db`, which this stack does not define; its MCP servers are fs",
        ),
        case(
            "mcp_policy naming a server by its prefix",
            base(
                "type = { kind = \"mcp_server\", name = \"fs\" }\nmcp = { prefix = \"files\" }\n\n[[mcp_policy]]\nallow = { clients = [\"alice\"], tools = [\"files.*\"] }",
            ),
            11,
            41,
            "not its prefix",
        ),
        case(
            "tool pattern without a dot",
            base("\n[[mcp_policy]]\ndeny = { clients = [\"*\"], tools = [\"write_file\"] }"),
            9,
            36,
            "tool pattern `write_file` has no `.`; tool patterns are `<server>.<tool>`",
        ),
        case(
            "mcp rate 0",
            base("").replace("name = \"demo\"", "name = \"demo\"\nmcp = { rate = 0 }"),
            3,
            16,
            "mcp rate 0 is out of range; expected a whole number from 1 to 1000000",
        ),
        case(
            "bad mcp max_message_size",
            base("").replace(
                "name = \"demo\"",
                "name = \"demo\"\nmcp = { max_message_size = \"4Q\" }",
            ),
            3,
            28,
            "invalid `mcp.max_message_size`",
        ),
    ]
}

#[test]
fn every_bad_file_names_line_column_and_expectation() {
    let mut failures = Vec::new();
    for c in cases() {
        match stack::parse(&c.text, "bad.toml") {
            Ok(_) => failures.push(format!("{}: parsed without error", c.what)),
            Err(err) => {
                let StackError::Invalid {
                    file,
                    line,
                    column,
                    message,
                } = &err
                else {
                    failures.push(format!("{}: not an Invalid error: {err}", c.what));
                    continue;
                };
                let ok = file == "bad.toml"
                    && (*line, *column) == (c.line, c.column)
                    && message.contains(c.message)
                    && err.to_string() == format!("bad.toml:{line}:{column}: {message}");
                if !ok {
                    failures.push(format!(
                        "{}: expected {}:{} containing {:?}\n    got {err}",
                        c.what, c.line, c.column, c.message
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases().len(),
        failures.join("\n")
    );
}

#[test]
fn there_are_enough_cases() {
    assert!(cases().len() >= 20);
}
