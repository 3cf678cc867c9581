//! `osvm cert`: the built-in CA and the certificates it issues.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

use anyhow::Context;
use osvm_core::quantity;
use osvm_pki::Pki;
use osvm_pki::ca::IssuedEntry;
use serde_json::json;

use super::{InvalidInput, state_dir};
use crate::cli::{CaCommand, CertArgs, CertCommand, Global, Output};

/// `<state dir>/pki/<trust domain>`: one CA per trust domain.
fn pki_dir(global: &Global, trust_domain: &str) -> anyhow::Result<std::path::PathBuf> {
    Ok(state_dir(global)?.join("pki").join(trust_domain))
}

fn duration(flag: &str, value: &str) -> anyhow::Result<std::time::Duration> {
    quantity::parse_duration(value)
        .map_err(|e| InvalidInput(format!("--{flag} {value}: {e}")).into())
}

fn status(e: &IssuedEntry) -> &'static str {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if e.revoked_at.is_some() {
        "revoked"
    } else if e.not_after < now {
        "expired"
    } else {
        "valid"
    }
}

/// RFC 3339 in UTC, to the second.
fn when(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn print_entries(global: &Global, entries: &[IssuedEntry]) -> anyhow::Result<()> {
    if global.output == Output::Json {
        let docs: Vec<_> = entries
            .iter()
            .map(|e| json!({ "entry": e, "status": status(e) }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&docs)?);
        return Ok(());
    }
    println!(
        "{:<32}  {:<8}  {:<20}  SPIFFE ID",
        "SERIAL", "STATUS", "NOT AFTER"
    );
    for e in entries {
        println!(
            "{:<32}  {:<8}  {:<20}  {}",
            e.serial,
            status(e),
            when(e.not_after),
            e.spiffe_id
        );
    }
    Ok(())
}

fn write_file(path: &std::path::Path, content: &str, mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

pub fn run(global: &Global, args: CertArgs) -> anyhow::Result<ExitCode> {
    let dir = pki_dir(global, &args.trust_domain)?;
    match args.command {
        CertCommand::Ca(CaCommand::Init(a)) => {
            let validity = duration("validity", &a.validity)?;
            let pki =
                Pki::new(&dir, &args.trust_domain).map_err(|e| InvalidInput(e.to_string()))?;
            pki.init_ca(validity)?;
            match global.output {
                Output::Json => {
                    println!(
                        "{}",
                        json!({ "trust_domain": args.trust_domain, "dir": dir })
                    )
                }
                Output::Text => println!(
                    "created the CA for trust domain `{}` in {}",
                    args.trust_domain,
                    dir.display()
                ),
            }
        }
        CertCommand::Ca(CaCommand::Rotate(a)) => {
            let validity = duration("validity", &a.validity)?;
            let mut pki = Pki::open(&dir)?;
            pki.rotate_ca(validity)?;
            match global.output {
                Output::Json => println!("{}", json!({ "rotating": true, "ca": pki.ca_tag()? })),
                Output::Text => println!(
                    "a new CA ({}) issues from now on; the old one stays in the bundle until every running component has a new leaf (the daemon does this), or `osvm cert ca finish-rotation`",
                    pki.ca_tag()?
                ),
            }
        }
        CertCommand::Ca(CaCommand::FinishRotation) => {
            let finished = Pki::open(&dir)?.finish_rotation()?;
            match global.output {
                Output::Json => println!("{}", json!({ "finished": finished })),
                Output::Text if finished => println!("the previous CA left the bundle"),
                Output::Text => println!("no rotation was under way"),
            }
        }
        CertCommand::Issue(a) => issue(global, &dir, &a.stack, &a.name, &a.ttl, a.out.as_deref())?,
        // A client is a name in the reserved stack `clients`.
        CertCommand::Client(c) => {
            issue(global, &dir, "clients", &c.name, &c.ttl, c.out.as_deref())?
        }
        CertCommand::List => print_entries(global, &Pki::open(&dir)?.list()?)?,
        CertCommand::Inspect(t) => {
            let pki = Pki::open(&dir)?;
            let matching: Vec<IssuedEntry> = pki
                .list()?
                .into_iter()
                .filter(|e| {
                    e.serial.eq_ignore_ascii_case(&t.target)
                        || e.spiffe_id.ends_with(&format!("/{}", t.target))
                })
                .collect();
            if matching.is_empty() {
                anyhow::bail!("no issued certificate matches `{}`", t.target);
            }
            print_entries(global, &matching)?;
        }
        CertCommand::Revoke(t) => {
            let revoked = Pki::open(&dir)?.revoke(&t.target)?;
            match global.output {
                Output::Json => println!("{}", json!({ "revoked": revoked })),
                Output::Text if revoked.is_empty() => {
                    println!("`{}` was already revoked", t.target)
                }
                Output::Text => println!(
                    "revoked {} certificate(s); the CRL was reissued",
                    revoked.len()
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `osvm cert issue` and `osvm cert client`: a leaf for `stack/name`, printed or written to `out`.
fn issue(
    global: &Global,
    dir: &std::path::Path,
    stack: &str,
    name: &str,
    ttl: &str,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let ttl = duration("ttl", ttl)?;
    let pki = Pki::open(dir)?;
    let issued = pki.issue(stack, name, ttl).map_err(|e| match e {
        osvm_pki::PkiError::Invalid(m) => anyhow::Error::from(InvalidInput(m)),
        other => other.into(),
    })?;
    if let Some(out) = out {
        std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
        write_file(&out.join("cert.pem"), &issued.cert_pem, 0o644)?;
        write_file(&out.join("key.pem"), &issued.key_pem, 0o600)?;
        write_file(&out.join("bundle.pem"), &pki.bundle_pem()?, 0o644)?;
        write_file(&out.join("crl.pem"), &pki.crl_bundle_pem()?, 0o644)?;
    }
    match global.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "entry": issued.entry, "out": out }))?
        ),
        Output::Text => {
            println!(
                "issued {} (serial {}), valid until {}",
                issued.entry.spiffe_id,
                issued.entry.serial,
                when(issued.entry.not_after)
            );
            match out {
                Some(out) => println!(
                    "wrote cert.pem, key.pem, bundle.pem and crl.pem to {}",
                    out.display()
                ),
                None => print!("{}{}", issued.cert_pem, issued.key_pem),
            }
        }
    }
    Ok(())
}
