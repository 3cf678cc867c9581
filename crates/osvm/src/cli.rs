//! Command-line definitions (clap). Help is written for operators.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run components in isolation runtimes: confined processes today; microVMs and unikernels
/// report themselves unavailable until they land.
#[derive(Debug, Parser)]
#[command(name = "osvm", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Where osvm keeps instances, logs and component data
    /// [default: /var/lib/osvm as root, $XDG_STATE_HOME/osvm otherwise]
    #[arg(long, global = true, env = "OSVM_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The daemon's API socket [default: <state dir>/osvm.sock]
    #[arg(long, global = true, env = "OSVM_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// More log output (-v debug, -vv trace); OSVM_LOG overrides
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and sentences for people
    Text,
    /// One JSON document for scripts
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a stack file and report every problem with its line and column
    Validate(ValidateArgs),
    /// Run one command confined in a sandbox, in the foreground; its exit code becomes osvm's
    Run(Box<RunArgs>),
    /// Start every component of a stack in the foreground with a live status table;
    /// Ctrl-C stops them all
    Up(UpArgs),
    /// Show which isolation features this host supports, and why not where it does not
    Doctor,
    /// Run the control plane: keeps applied stacks running, serves the API on a unix socket
    Daemon(DaemonArgs),
    /// Remove a stack from the daemon (by file or name); its components stop
    Down(DownArgs),
    /// List the daemon's components
    Ps,
    /// Show one component in detail
    Status(NameArgs),
    /// Print a component's log (its current or last instance): `TIME STREAM LINE`
    Logs(LogsArgs),
    /// Let a stopped component run again
    Start(NameArgs),
    /// Stop a component and keep it stopped
    Stop(NameArgs),
    /// Replace a component's instance with a fresh one
    Restart(NameArgs),
    /// Hot-swap a component of a hub stack: start the new version beside the old one, move
    /// traffic when it is ready, drain the old one; roll back by itself on failure. Exits 0
    /// when the new version serves, 1 when the swap was rolled back
    Swap(SwapArgs),
    /// Print the daemon's events
    Events(EventsArgs),
    /// Totals and per-component usage
    Stats,
    /// The built-in certificate authority and the identities it issues
    Cert(CertArgs),
    /// A stack's network policy: list its rules, ask what it decides for one connection, or
    /// change a running stack's rules through the daemon
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The hub network of the daemon's stacks
    #[command(subcommand)]
    Net(NetCommand),
    /// The MCP gateway: serve it to an MCP client, list and call tools, manage client tokens
    #[command(subcommand)]
    Mcp(McpCommand),
    /// The dashboard (`osvm daemon --ui ADDR`): the tokens that sign in to it
    #[command(subcommand)]
    Ui(UiCommand),
    /// Guest kernels for microVMs
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Guest images for microVMs (built automatically at first start)
    #[command(subcommand)]
    Image(ImageCommand),
    /// Snapshots of booted microVM guests (`microvm = { snapshot = true }`): list them, remove
    /// those no component starts from
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Hermit unikernel images: build one from a Rust crate
    #[command(subcommand)]
    Unikernel(UnikernelCommand),
    /// Print a shell completion script (e.g. `osvm completions bash > /etc/bash_completion.d/osvm`)
    Completions(CompletionsArgs),
}

#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Be an MCP server on stdin/stdout for a local agent (the daemon's gateway behind it), or
    /// with --listen an MCP streamable-HTTP endpoint for remote clients (bearer tokens)
    Serve(McpServeArgs),
    /// List the tools the gateway offers a client: `<server>.<tool>`, the server, the policy's
    /// decision
    Tools(McpToolsArgs),
    /// The MCP servers behind the gateway and whether each is connected
    Servers,
    /// Call one tool through the gateway (policy, rate limit and audit apply); exit 0 when the
    /// tool answered, 1 when it reported an error, 3 when the gateway refused or failed the call
    Call(McpCallArgs),
    /// Bearer tokens for MCP clients
    #[command(subcommand)]
    Token(McpTokenCommand),
    /// The gateway's audit trail: every decision on tools, resources and prompts (TIME CLIENT
    /// METHOD SERVER.NAME OUTCOME DETAIL; `-o json`: the records)
    Audit(McpAuditArgs),
}

#[derive(Debug, Args)]
pub struct McpAuditArgs {
    /// Only this client's records
    #[arg(long)]
    pub client: Option<String>,
    /// Only the last N records (of those that match)
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Keep printing records as they are written (across rotations)
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct McpServeArgs {
    /// The client identity this session acts as (the policy's `clients`); root only, as the
    /// daemon's socket is
    #[arg(long = "as", value_name = "CLIENT", conflicts_with = "token")]
    pub client: Option<String>,
    /// A bearer token osvm issued (`osvm mcp token issue`); also OSVM_MCP_TOKEN
    #[arg(long, env = "OSVM_MCP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve streamable HTTP at this address (`/mcp`); each request must carry
    /// `Authorization: Bearer <token>` (or, with --tls, a client certificate)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// With --listen: HTTPS with mutual TLS. The gateway presents a certificate of osvm's CA
    /// (`mcp-gateway.osvm.osvm`, SPIFFE ID spiffe://<trust domain>/osvm/mcp-gateway) and
    /// requires a client certificate of the same CA and trust domain, not revoked; the client
    /// is its SPIFFE ID (issue one with `osvm cert issue NAME --stack clients`)
    #[arg(long, requires = "listen")]
    pub tls: bool,
    /// The trust domain whose CA --tls uses
    #[arg(long, default_value = "osvm.local", requires = "tls")]
    pub trust_domain: String,
}

#[derive(Debug, Args)]
pub struct McpToolsArgs {
    /// Whose view (default: `operator`)
    #[arg(long = "as", value_name = "CLIENT")]
    pub client: Option<String>,
    /// Also list the tools the client may not call, with the reason
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct McpCallArgs {
    /// `<server>.<tool>`
    pub name: String,
    /// The arguments, a JSON object
    #[arg(long, default_value = "{}", value_name = "JSON")]
    pub args: String,
    /// The client to call as (default: `operator`)
    #[arg(long = "as", value_name = "CLIENT")]
    pub client: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum McpTokenCommand {
    /// Issue a token for a client; it is printed once and only its hash is kept
    Issue(McpTokenIssueArgs),
    /// List issued tokens (without secrets)
    List,
    /// Revoke a token by id, or every token of a client
    Revoke(McpTokenRevokeArgs),
}

#[derive(Debug, Args)]
pub struct McpTokenIssueArgs {
    /// The client name the token stands for
    pub client: String,
    /// How long it is valid (e.g. `24h`); default: until revoked
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
}

#[derive(Debug, Args)]
pub struct McpTokenRevokeArgs {
    /// A token id or a client name
    pub what: String,
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Download Debian's cloud kernel (the package linux-image-cloud-amd64 depends on) through
    /// apt, check it, and keep the kernel and the virtio/vsock modules in the state directory
    Fetch(KernelFetchArgs),
    /// Show the stored kernel microVMs boot by default
    Show,
}

#[derive(Debug, Args)]
pub struct KernelFetchArgs {
    /// Download again even when this package version is stored
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the guest image of every microVM component of a stack (or of one); an identical
    /// image already stored is reused
    Build(ImageBuildArgs),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List the stored snapshots: key, size on disk, when made, the components that start from
    /// each (a snapshot of a component that left its stack, or of a stack taken down, stays
    /// for the next start of the same component, with no user, until pruned)
    Ls,
    /// Remove every snapshot no component starts from now, and the marks of those set aside
    /// after a failed restore
    Prune,
}

#[derive(Debug, Subcommand)]
pub enum UnikernelCommand {
    /// Build a Hermit image from a Rust crate: the hermit-kernel 0.11.0 crate from the Rust
    /// package registry (built once), osvm's loader for QEMU (built once), then the app for
    /// x86_64-unknown-hermit; an unchanged crate is not built again
    Build(UnikernelBuildArgs),
}

#[derive(Debug, Args)]
pub struct UnikernelBuildArgs {
    /// The crate's directory (with its Cargo.toml); -v prints every line cargo prints
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImageBuildArgs {
    /// The stack file
    pub file: PathBuf,
    /// Only this component
    pub component: Option<String>,
}

#[derive(Debug, Args)]
pub struct CertArgs {
    /// The trust domain whose CA to use (the stack's `trust_domain`)
    #[arg(long, global = true, default_value = "osvm.local")]
    pub trust_domain: String,
    #[command(subcommand)]
    pub command: CertCommand,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// The CA itself
    #[command(subcommand)]
    Ca(CaCommand),
    /// Issue a certificate for a component: SPIFFE ID spiffe://<trust domain>/<stack>/<name>
    Issue(CertIssueArgs),
    /// Issue a client certificate: SPIFFE ID spiffe://<trust domain>/clients/<name>, for a client
    /// of a published mtls = true component (allowed by a policy rule `from =
    /// "spiffe://<trust domain>/clients/<name>"`) or of `osvm mcp serve --tls`
    Client(CertClientArgs),
    /// List every issued certificate
    List,
    /// Show the certificates of a component (`name` or `stack/name`) or one serial
    Inspect(CertTarget),
    /// Revoke the certificates of a component, or one serial; the CRL is reissued
    Revoke(CertTarget),
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA (ECDSA P-256); its key is stored 0600 under <state dir>/pki
    Init(CaInitArgs),
    /// Start a CA rotation: a new CA issues, the old one stays trusted until every running
    /// component has a leaf of the new one (the daemon carries it through), then leaves
    Rotate(CaInitArgs),
    /// End a rotation by hand (without a daemon): the previous CA leaves the bundle
    FinishRotation,
}

#[derive(Debug, Args)]
pub struct CaInitArgs {
    /// How long the CA is valid
    #[arg(long, default_value = "365d", value_name = "DURATION")]
    pub validity: String,
}

#[derive(Debug, Args)]
pub struct CertIssueArgs {
    /// The component's name
    pub name: String,
    /// Its stack
    #[arg(long)]
    pub stack: String,
    /// How long the certificate is valid (minutes to days)
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub ttl: String,
    /// Write cert.pem, key.pem (0600), bundle.pem and crl.pem into this directory
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CertClientArgs {
    /// The client's name
    pub name: String,
    /// How long the certificate is valid (minutes to days)
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub ttl: String,
    /// Write cert.pem, key.pem (0600), bundle.pem and crl.pem into this directory
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CertTarget {
    /// A component (`name` or `stack/name`) or a serial number (hex)
    pub target: String,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Serve Prometheus metrics over HTTP at this address (opt-in; e.g. 127.0.0.1:9464)
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve the read-only dashboard over HTTP at this address (opt-in; e.g. 127.0.0.1:7070).
    /// It asks for a token from `osvm ui token issue`; port 0 picks a free port, written to
    /// <state dir>/ui.addr. Plain HTTP: keep it on loopback or behind a TLS proxy
    #[arg(long, value_name = "ADDR")]
    pub ui: Option<std::net::SocketAddr>,
    /// Serve the dashboard over HTTPS with a certificate of this trust domain's CA (created if
    /// missing); its client certificates (`osvm cert client NAME`) sign in as well as tokens
    #[arg(long, value_name = "TRUST_DOMAIN", requires = "ui", num_args = 0..=1, default_missing_value = "osvm.local")]
    pub ui_tls: Option<String>,
    /// Close a connection to the dashboard or the metrics endpoint once nothing has moved on it
    /// (no byte read or written) for this many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = osvm_daemon::daemon::HTTP_IDLE_DEFAULT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_idle_timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum UiCommand {
    /// Tokens that sign in to the dashboard (kept hashed in <state dir>/ui/tokens.json)
    #[command(subcommand)]
    Token(UiTokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum UiTokenCommand {
    /// Issue a token for a person or tool; it is printed once and only its hash is kept
    Issue(McpTokenIssueArgs),
    /// List issued tokens (without secrets)
    List,
    /// Revoke a token by id, or every token of a name; a signed-in browser is refused at its
    /// next request
    Revoke(McpTokenRevokeArgs),
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// A stack file, or a stack's name
    pub stack: String,
}

#[derive(Debug, Args)]
pub struct SwapArgs {
    /// The component's name (`stack/name` when several stacks have one)
    pub name: String,
    /// Take the new version of the component from this stack file
    #[arg(long, conflicts_with = "command")]
    pub file: Option<PathBuf>,
    /// How long the new instance must pass its checks before and after the switch
    /// [default: the component's `swap.min_healthy_time`, 2s]
    #[arg(long, value_name = "DURATION")]
    pub min_healthy_time: Option<String>,
    /// How long the new instance has to become ready [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub healthy_deadline: Option<String>,
    /// How long the old instance's connections may take to finish [default: 60s]
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// Do not move traffic back when the new instance fails after the switch
    #[arg(long)]
    pub no_revert: bool,
    /// Move traffic in steps: percent of new connections to the new version at each step,
    /// each held healthy for the min healthy time, ending at 100 (e.g. 10,50,100)
    #[arg(long, value_delimiter = ',', value_name = "PERCENTS")]
    pub canary: Option<Vec<u8>>,
    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Return once the swap has started instead of following it to its outcome
    #[arg(long, short)]
    pub detach: bool,
    /// The new version's command line [default: the component's command]
    #[arg(last = true, value_name = "PROGRAM [ARGS]")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The component's name (`stack/name` when several stacks have one)
    pub name: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The component's name
    pub name: String,
    /// Keep printing what the component writes
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Which stream: both (interleaved by time), stdout or stderr of the workload, or a
    /// microVM's guest console (kernel and agent messages)
    #[arg(long, default_value = "both", value_parser = ["both", "stdout", "stderr", "console"])]
    pub stream: String,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only events after this sequence number
    #[arg(long, default_value_t = 0, value_name = "SEQ")]
    pub after: u64,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// List the rules of a stack file, or of a stack the daemon runs (`--stack`), in order
    /// (verdicts name them by this number)
    List(PolicyListArgs),
    /// Decide one connection: FROM a component, TO a component or an IP address, on PORT.
    /// Exits 0 when allowed, 1 when denied
    Check(PolicyCheckArgs),
    /// Add an allow rule to a stack the daemon runs; enforced at once. It lasts until the
    /// stack is applied again from its file
    Allow(PolicyRuleArgs),
    /// Add a deny rule (it overrides every allow) to a stack the daemon runs; enforced at once,
    /// and connections it now forbids are cut
    Deny(PolicyRuleArgs),
    /// Remove rule INDEX (see `osvm policy list --stack`) from a stack the daemon runs;
    /// connections it allowed and nothing else allows are cut
    Revoke(PolicyRevokeArgs),
}

#[derive(Debug, Args)]
pub struct PolicyListArgs {
    /// The stack file (TOML)
    #[arg(required_unless_present = "stack", conflicts_with = "stack")]
    pub file: Option<PathBuf>,
    /// A stack the daemon runs, instead of a file
    #[arg(long)]
    pub stack: Option<String>,
}

#[derive(Debug, Args)]
pub struct PolicyRuleArgs {
    /// The stack the daemon runs
    #[arg(long)]
    pub stack: String,
    /// Where the traffic comes from: a component, `type:<kind>` or `*`
    pub from: String,
    /// Where it goes: a component, `type:<kind>`, `cidr:<network>` or `*`
    pub to: String,
    /// Destination port (repeat for several); none means every port
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Transport protocol
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
    pub protocol: String,
}

#[derive(Debug, Args)]
pub struct PolicyRevokeArgs {
    /// The stack the daemon runs
    #[arg(long)]
    pub stack: String,
    /// The rule's number, as `osvm policy list --stack` shows it
    pub index: usize,
}

#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Components' addresses and namespaces, the service map, what each policy rule let
    /// through, what was refused, and the mTLS proxies
    Show,
}

#[derive(Debug, Args)]
pub struct PolicyCheckArgs {
    /// The stack file (TOML)
    pub file: PathBuf,
    /// The component the connection comes from, or an IP address outside the stack (a client
    /// of a published port)
    pub from: String,
    /// The component (or IP address outside the stack) it goes to
    pub to: String,
    /// The destination port
    pub port: u16,
    /// Transport protocol
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
    pub protocol: String,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The stack file (TOML)
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Component name: the sandbox's hostname, and the owner of a /data volume and a uid range
    /// kept across runs; without it /data is scratch space gone with the run
    /// [default hostname: the command's file name]
    #[arg(long)]
    pub name: Option<String>,
    /// Memory limit, e.g. 256M, 1G (swap included) [default: 512M]
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU quota in CPUs, e.g. 0.5 [default: 2]
    #[arg(long, value_name = "CPUS")]
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads [default: 4096]
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// Maximum number of open files [default: 1024]
    #[arg(long, value_name = "N")]
    pub open_files: Option<u64>,
    /// How much the command may store: the size of /data, and of /tmp and /dev/shm at most
    /// (which count against --memory too) [default: 1G]
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<String>,
    /// Allow native AIO (io_setup): every AIO context counts against the host-wide
    /// fs.aio-max-nr, which one sandbox could exhaust for the whole host
    #[arg(long)]
    pub allow_native_aio: bool,
    /// Rotate stdout.log and stderr.log when one grows past SIZE
    #[arg(long, default_value = "10M", value_name = "SIZE")]
    pub log_max_size: String,
    /// How many rotated copies of each log to keep
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub log_files: u32,
    /// Make the root file system read-only (only /tmp, /data and writable binds stay writable)
    #[arg(long)]
    pub readonly_root: bool,
    /// Bind a host path into the sandbox: SRC:DST[:ro|:rw], read-only by default (repeatable)
    #[arg(long, value_name = "SRC:DST[:MODE]")]
    pub bind: Vec<String>,
    /// Use this directory as the root file system (must contain proc, dev, tmp, data)
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Join this network namespace (a name under /run/netns, as `ip netns` makes, or a path)
    /// instead of a fresh one with only loopback; the sandbox cannot reconfigure it
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// TCP port the command listens on; binding any other port is then denied (repeatable)
    #[arg(long, value_name = "PORT")]
    pub listen: Vec<u16>,
    /// Environment variable for the command, KEY=VALUE (repeatable); nothing else is inherited
    #[arg(long, short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the sandbox [default: /data]
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Run the command as this user (and group) of the sandbox's own ids, 0-65535, instead of
    /// its root; on the host it is an unprivileged uid either way
    #[arg(long, short = 'u', value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// How long the command gets to exit after SIGTERM (Ctrl-C) before it is killed
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub stop_timeout: String,
    /// Print nothing of osvm's own (the command's output still shows)
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Connect osvm's stdin to the command's (otherwise it reads /dev/null); a terminal is
    /// not handed over: the command gets a terminal of its own, fed from osvm's
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Remove the instance's directory (plan, logs, exit record) once the command has ended;
    /// a named component's /data is kept
    #[arg(long)]
    pub rm: bool,
    /// The command and its arguments
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The stack file (TOML)
    pub file: PathBuf,
    /// Hand the stack to the daemon (`osvm daemon`) instead of running it in the foreground
    #[arg(long, short = 'd')]
    pub detach: bool,
}
