//! The CLI's input handling: validate, usage errors, doctor. These need no root.

mod common;

use std::path::Path;

use common::*;

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

#[test]
fn validate_accepts_the_quickstart_stack() {
    let o = std::process::Command::new(osvm_bin())
        .arg("validate")
        .arg(example("quickstart.toml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("valid: stack `quickstart` with 2 component(s)"),
        "{}",
        stdout(&o)
    );
    assert_eq!(stderr(&o), "", "the quickstart draws no warning");
}

#[test]
fn validate_warns_where_policy_rules_have_no_network_to_govern() {
    let dir = std::env::temp_dir().join(format!("osvm-cli-warn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("s.toml");
    std::fs::write(
        &file,
        "[stack]\nname = \"s\"\n\n[[component]]\nname = \"a\"\ncommand = \"true\"\n\
         listen = [80]\n\n[[component]]\nname = \"b\"\ncommand = \"true\"\n\n\
         [[policy]]\nallow = { from = \"b\", to = \"a\" }\n",
    )
    .unwrap();
    let o = std::process::Command::new(osvm_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "a warning is not an error: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).starts_with(&format!(
            "{}:13:1: warning: stack `s` is not on the hub network",
            file.display()
        )),
        "{}",
        stderr(&o)
    );
    let o = std::process::Command::new(osvm_bin())
        .args(["-o", "json", "validate"])
        .arg(&file)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["warnings"][0]["line"], 13, "{v}");
    assert_eq!(stderr(&o), "", "JSON output carries the warnings itself");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn validate_accepts_the_mcp_example_with_its_two_servers_and_three_rules() {
    let o = std::process::Command::new(osvm_bin())
        .args(["-o", "json", "validate"])
        .arg(example("mcp.toml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v["stack"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["mcp"]["name"].as_str())
        .collect();
    assert_eq!(names, ["fs", "everything"]);
    assert_eq!(v["stack"]["mcp_policy"].as_array().unwrap().len(), 3);
}

#[test]
fn validate_reports_file_line_and_column_and_exits_2() {
    let dir = StateDir::new("validate");
    let file = dir.path.join("bad.toml");
    std::fs::write(&file, "[stack]\nname = \"demo\"\n\n[[component]]\nname = \"a\"\ncommand = \"true\"\nlisten = [70000]\n").unwrap();
    let o = std::process::Command::new(osvm_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}:7:", file.display())),
        "names file and line: {err}"
    );

    let o = std::process::Command::new(osvm_bin())
        .args(["-o", "json", "validate"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["error"]["line"], 7);
    assert!(doc["error"]["column"].as_u64().unwrap() > 0);
}

#[test]
fn validate_of_a_missing_file_names_it() {
    let o = std::process::Command::new(osvm_bin())
        .args(["validate", "/nonexistent/stack.toml"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("/nonexistent/stack.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_without_a_command_is_a_usage_error() {
    let o = std::process::Command::new(osvm_bin())
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn up_refuses_runtimes_this_release_lacks_and_says_so() {
    let dir = StateDir::new("up-microvm");
    let file = dir.path.join("vm.toml");
    std::fs::write(&file, "[stack]\nname = \"vm\"\n\n[[component]]\nname = \"a\"\nruntime = \"microvm\"\ncommand = \"true\"\n").unwrap();
    let o = dir.osvm().arg("up").arg(&file).output().unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("runtime microvm unavailable"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn doctor_reports_every_area_as_json() {
    let o = std::process::Command::new(osvm_bin())
        .args(["doctor", "-o", "json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let checks = doc["checks"].as_array().unwrap();
    let areas: std::collections::HashSet<&str> =
        checks.iter().map(|c| c["area"].as_str().unwrap()).collect();
    for area in [
        "namespaces",
        "cgroups",
        "seccomp",
        "landlock",
        "network",
        "kvm",
        "microvm",
        "hermit",
    ] {
        assert!(areas.contains(area), "doctor covers {area}: {areas:?}");
    }
    for c in checks {
        assert!(
            c["available"].is_boolean() && !c["detail"].as_str().unwrap().is_empty(),
            "{c}"
        );
    }
    assert_eq!(o.status.success(), doc["required_ok"].as_bool().unwrap());
}

#[test]
fn without_root_the_process_runtime_is_unavailable_and_says_why() {
    use std::os::unix::process::CommandExt;
    let exe = AnyoneBin::new("nobody");
    let mut cmd = std::process::Command::new(&exe.path);
    cmd.args([
        "--state-dir",
        "/tmp/osvm-test-nobody-state",
        "run",
        "--",
        "/bin/true",
    ]);
    if nix::unistd::geteuid().is_root() {
        cmd.uid(65534).gid(65534);
    }
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("runtime process unavailable: osvm must run as root"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let o = std::process::Command::new(osvm_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}");
        assert!(stdout(&o).contains("osvm"), "{shell}");
    }
}

#[test]
fn the_cert_commands_issue_list_and_revoke() {
    let dir = StateDir::new("cert-cli");
    let osvm = |args: &[&str]| dir.osvm().args(args).output().unwrap();
    let o = osvm(&["cert", "list"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("osvm cert ca init"), "{}", stderr(&o));
    assert!(
        osvm(&["cert", "--trust-domain", "prod.example", "ca", "init"])
            .status
            .success()
    );
    let out = dir.path.join("id");
    let o = osvm(&[
        "cert",
        "--trust-domain",
        "prod.example",
        "issue",
        "web",
        "--stack",
        "shop",
        "--ttl",
        "30m",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("spiffe://prod.example/shop/web"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    for f in ["cert.pem", "bundle.pem", "crl.pem"] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert!(
        osvm(&[
            "cert",
            "--trust-domain",
            "prod.example",
            "revoke",
            "shop/web"
        ])
        .status
        .success()
    );
    let o = osvm(&[
        "-o",
        "json",
        "cert",
        "--trust-domain",
        "prod.example",
        "list",
    ]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0]["status"], "revoked");
    assert_eq!(
        list[0]["entry"]["spiffe_id"],
        "spiffe://prod.example/shop/web"
    );
    let o = osvm(&[
        "cert",
        "--trust-domain",
        "prod.example",
        "issue",
        "Bad",
        "--stack",
        "shop",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn policy_check_answers_with_the_deciding_rule_and_exit_code() {
    let dir = std::env::temp_dir().join(format!("osvm-cli-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("stack.toml");
    std::fs::write(
        &file,
        r#"
[stack]
name = "demo"

[[component]]
name = "web"
command = "/bin/true"
network_access = "restricted"

[[component]]
name = "db"
command = "/bin/true"

[[policy]]
allow = { from = "web", to = "db", ports = [5432] }

[[policy]]
allow = { from = "web", to = "cidr:192.0.2.0/24", ports = [443] }

[[policy]]
deny = { from = "*", to = "db", ports = [22] }

[[policy]]
allow = { from = "db", to = "cidr:192.0.2.0/24", ports = [443] }
"#,
    )
    .unwrap();
    let check = |args: &[&str]| {
        std::process::Command::new(osvm_bin())
            .args(["policy", "check"])
            .arg(&file)
            .args(args)
            .output()
            .unwrap()
    };
    let o = check(&["web", "db", "5432"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("allowed: web -> db tcp/5432: rule #0"),
        "{}",
        stdout(&o)
    );
    let o = check(&["db", "web", "5432"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("default deny"), "{}", stdout(&o));
    let o = check(&["web", "db", "22", "--protocol", "tcp"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("rule #2: deny * -> db tcp/22"),
        "{}",
        stdout(&o)
    );
    assert_eq!(check(&["web", "192.0.2.9", "443"]).status.code(), Some(0));
    assert_eq!(
        check(&["web", "198.51.100.1", "443"]).status.code(),
        Some(1)
    );
    // db keeps the default network access, internal: no rule can send it off the host.
    let o = check(&["db", "192.0.2.9", "443"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("db has network access Internal"),
        "{}",
        stdout(&o)
    );
    let o = check(&["web", "nope", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no component `nope`"), "{}", stderr(&o));

    let o = std::process::Command::new(osvm_bin())
        .args(["-o", "json", "policy", "list"])
        .arg(&file)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        doc["rules"][1]["text"],
        "allow web -> cidr:192.0.2.0/24 tcp/443"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
