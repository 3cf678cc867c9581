//! Leaf issuance (key generation + signing) on one core against `openssl` issuing the same
//! kind of certificate from the shell, and mTLS handshakes on loopback (full and resumed).
//!
//! Run: `cargo bench -p osvm-pki --bench pki` (`OSVM_PKI_LEAVES`, `OSVM_PKI_HANDSHAKES` set the
//! counts). Prints a Markdown table; docs/benchmarks.md keeps one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use osvm_pki::Pki;
use osvm_pki::tls::{Material, client_config, server_config};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let leaves = env("OSVM_PKI_LEAVES", 2000);
    let handshakes = env("OSVM_PKI_HANDSHAKES", 500);
    let dir = std::env::temp_dir().join(format!("osvm-pki-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = Pki::new(&dir, "bench.local").unwrap();
    pki.init_ca(osvm_pki::ca::CA_VALIDITY).unwrap();
    let raw_issuer = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap(),
    )
    .unwrap();

    // osvm: key generation and signing, in this one thread.
    let t = Instant::now();
    for i in 0..leaves {
        pki.issue("bench", &format!("c{i}"), Duration::from_secs(3600))
            .unwrap();
    }
    let osvm_rate = leaves as f64 / t.elapsed().as_secs_f64();
    // Key generation and signing alone, without recording: what the index costs on top.
    let t = Instant::now();
    for _ in 0..leaves {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["x.bench.osvm".to_string()]).unwrap();
        p.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://bench.local/bench/x".try_into().unwrap(),
        ));
        std::hint::black_box(p.signed_by(&key, &raw_issuer).unwrap());
    }
    let raw_rate = leaves as f64 / t.elapsed().as_secs_f64();

    // openssl: the same kind of certificate (P-256 key, SPIFFE URI + DNS SANs, server and client
    // auth), signed by the same CA, from a shell loop.
    let n_ssl = (leaves / 10).max(50);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=URI:spiffe://bench.local/bench/x,DNS:x.bench.osvm\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    let script = format!(
        "cd {d} && for i in $(seq {n}); do openssl ecparam -name prime256v1 -genkey -noout -out k.pem 2>/dev/null && openssl req -new -key k.pem -subj /CN=x -out r.csr 2>/dev/null && openssl x509 -req -in r.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out c.pem 2>/dev/null || exit 1; done",
        d = dir.display(),
        n = n_ssl
    );
    let t = Instant::now();
    let ok = Command::new("sh")
        .args(["-c", &script])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let ssl_rate = if ok {
        Some(n_ssl as f64 / t.elapsed().as_secs_f64())
    } else {
        None
    };

    // mTLS handshakes on loopback.
    let material = |i: &osvm_pki::Issued| Material {
        cert_pem: i.cert_pem.clone(),
        key_pem: i.key_pem.clone(),
        bundle_pem: pki.bundle_pem().unwrap(),
        crl_pem: std::fs::read_to_string(pki.crl_path()).unwrap(),
        trust_domain: "bench.local".into(),
    };
    let server_id = pki
        .issue("bench", "server", Duration::from_secs(3600))
        .unwrap();
    let client_id = pki
        .issue("bench", "client", Duration::from_secs(3600))
        .unwrap();
    let server_cfg = Arc::new(server_config(&material(&server_id)).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let total = handshakes * 2;
    std::thread::spawn(move || {
        for _ in 0..total {
            let (mut tcp, _) = listener.accept().unwrap();
            let mut conn = rustls::ServerConnection::new(server_cfg.clone()).unwrap();
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            let mut b = [0u8; 1];
            if tls.read_exact(&mut b).is_ok() {
                let _ = tls.write_all(b"!");
                let _ = tls.flush();
            }
        }
    });
    let run = |cfg: Arc<rustls::ClientConfig>| {
        let t = Instant::now();
        for _ in 0..handshakes {
            let name = rustls::pki_types::ServerName::try_from("server.bench.osvm").unwrap();
            let mut conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            tls.write_all(b"?").unwrap();
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).unwrap();
        }
        handshakes as f64 / t.elapsed().as_secs_f64()
    };
    let mut full_cfg = client_config(&material(&client_id)).unwrap();
    full_cfg.resumption = rustls::client::Resumption::disabled();
    let full = run(Arc::new(full_cfg));
    let resumed = run(Arc::new(client_config(&material(&client_id)).unwrap()));
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "\nIdentities, one core (the issuing loop and each handshake side run on one thread):\n"
    );
    println!("| measure | osvm | openssl (shell) | osvm / openssl |");
    println!("|---|---:|---:|---:|");
    match ssl_rate {
        Some(s) => println!(
            "| leaves issued per second (P-256 keygen + sign + record), {leaves} / {n_ssl} | {osvm_rate:.0} | {s:.0} | {:.1} |",
            osvm_rate / s
        ),
        None => println!(
            "| leaves issued per second, {leaves} | {osvm_rate:.0} | (openssl not installed) | - |"
        ),
    }
    println!("| keygen + sign only (no index, no files), {leaves} | {raw_rate:.0} | - | - |");
    println!(
        "| mTLS handshakes per second, full (TLS 1.3, client auth), {handshakes} | {full:.0} | - | - |"
    );
    println!("| mTLS handshakes per second, resumed, {handshakes} | {resumed:.0} | - | - |");
}
