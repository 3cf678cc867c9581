//! The CA, checked by rustls in real mTLS handshakes over loopback and independently by
//! `openssl verify` (Debian `openssl`), CRL included.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use osvm_pki::Pki;
use osvm_pki::tls::{Material, client_config, peer_spiffe_id, server_config};

struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Self {
        let p = std::env::temp_dir().join(format!("osvm-pki-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pki(dir: &Path, domain: &str) -> Pki {
    let pki = Pki::new(dir, domain).unwrap();
    if !pki.has_ca() {
        pki.init_ca(osvm_pki::ca::CA_VALIDITY).unwrap();
    }
    pki
}

fn material(pki: &Pki, issued: &osvm_pki::Issued) -> Material {
    Material {
        cert_pem: issued.cert_pem.clone(),
        key_pem: issued.key_pem.clone(),
        bundle_pem: pki.bundle_pem().unwrap(),
        crl_pem: pki.crl_bundle_pem().unwrap(),
        trust_domain: pki.trust_domain().to_string(),
    }
}

/// One mTLS exchange on loopback: the server's view of the client's SPIFFE ID, or why the
/// handshake failed (from either side).
fn handshake(server: &Material, client: &Material, server_name: &str) -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Arc::new(server_config(server).map_err(|e| e.to_string())?);
    let server_thread = std::thread::spawn(move || -> Result<String, String> {
        let (mut tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut conn = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
        }
        let id = peer_spiffe_id(conn.peer_certificates()).ok_or("no peer SPIFFE ID")?;
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        tls.write_all(b"hello").map_err(|e| e.to_string())?;
        let _ = tls.flush();
        Ok(id)
    });
    let client_cfg = Arc::new(client_config(client).map_err(|e| e.to_string())?);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(client_cfg, name).unwrap();
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let mut buf = [0u8; 5];
    let client_result = tls.read_exact(&mut buf).map_err(|e| e.to_string());
    drop(tcp);
    let server_result = server_thread.join().unwrap();
    match (server_result, client_result) {
        (Ok(id), Ok(())) if &buf == b"hello" => Ok(id),
        (Ok(_), Ok(())) => Err("no greeting".into()),
        (s, c) => Err(format!("server: {:?}; client: {:?}", s.err(), c.err()).to_lowercase()),
    }
}

#[test]
fn components_of_the_trust_domain_complete_mtls_and_see_each_others_ids() {
    let d = Dir::new("good");
    let pki = pki(&d.0, "osvm.local");
    let server = pki.issue("demo", "rpc", Duration::from_secs(3600)).unwrap();
    let client = pki
        .issue("demo", "mcp-fs", Duration::from_secs(3600))
        .unwrap();
    assert_eq!(server.entry.spiffe_id, "spiffe://osvm.local/demo/rpc");
    let id = handshake(
        &material(&pki, &server),
        &material(&pki, &client),
        "rpc.demo.osvm",
    )
    .unwrap();
    assert_eq!(id, "spiffe://osvm.local/demo/mcp-fs");
}

#[test]
fn revoked_expired_foreign_ca_and_foreign_domain_clients_are_refused() {
    let d = Dir::new("refused");
    let pki = pki(&d.0, "osvm.local");
    let server = pki.issue("demo", "rpc", Duration::from_secs(3600)).unwrap();

    let revoked = pki.issue("demo", "bad", Duration::from_secs(3600)).unwrap();
    assert_eq!(
        pki.revoke(&revoked.entry.serial).unwrap(),
        vec![revoked.entry.serial.clone()]
    );
    let now = time::OffsetDateTime::now_utc();
    let expired = pki
        .issue_between(
            "demo",
            "old",
            now - time::Duration::hours(3),
            now - time::Duration::hours(1),
        )
        .unwrap();
    let other = Dir::new("refused-other-ca");
    let other_pki = self::pki(&other.0, "osvm.local");
    let foreign_ca = other_pki
        .issue("demo", "intruder", Duration::from_secs(3600))
        .unwrap();
    // Signed by this very CA, but naming another trust domain.
    let foreign_domain = Pki::new(&d.0, "elsewhere.local")
        .unwrap()
        .issue("demo", "visitor", Duration::from_secs(3600))
        .unwrap();

    // The server's material is read after the revocation, so its CRL lists it.
    let server_m = material(&pki, &server);
    for (what, client, needle) in [
        ("revoked", material(&pki, &revoked), "revoked"),
        ("expired", material(&pki, &expired), "expired"),
        ("foreign CA", material(&pki, &foreign_ca), "unknownissuer"),
        (
            "foreign trust domain",
            material(&pki, &foreign_domain),
            "not in trust domain osvm.local",
        ),
    ] {
        let err = handshake(&server_m, &client, "rpc.demo.osvm").expect_err(what);
        assert!(err.contains(needle), "{what}: {err}");
    }
    // And a good client still gets in.
    let good = pki.issue("demo", "ok", Duration::from_secs(3600)).unwrap();
    assert!(
        handshake(
            &material(&pki, &server),
            &material(&pki, &good),
            "rpc.demo.osvm"
        )
        .is_ok()
    );
}

#[test]
fn a_server_of_another_name_is_refused_by_the_client() {
    let d = Dir::new("name");
    let pki = pki(&d.0, "osvm.local");
    let server = pki.issue("demo", "rpc", Duration::from_secs(3600)).unwrap();
    let client = pki.issue("demo", "cli", Duration::from_secs(3600)).unwrap();
    let err = handshake(
        &material(&pki, &server),
        &material(&pki, &client),
        "db.demo.osvm",
    )
    .unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
}

#[test]
fn openssl_verifies_the_chain_and_the_crl_independently() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        osvm_testkit::skip(
            "openssl",
            "openssl-verify",
            "openssl not installed (Debian openssl)",
        );
        return;
    }
    let d = Dir::new("openssl");
    let pki = pki(&d.0, "osvm.local");
    let good = pki.issue("demo", "web", Duration::from_secs(3600)).unwrap();
    let bad = pki
        .issue("demo", "evil", Duration::from_secs(3600))
        .unwrap();
    pki.revoke("demo/evil").unwrap();
    let write = |name: &str, text: &str| {
        let p = d.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let good_p = write("good.pem", &good.cert_pem);
    let bad_p = write("bad.pem", &bad.cert_pem);
    let ca = d.0.join("ca.pem");
    let crl = pki.crl_path();
    let verify = |cert: &Path| {
        std::process::Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(&ca)
            .arg("-CRLfile")
            .arg(&crl)
            .arg(cert)
            .output()
            .unwrap()
    };
    let o = verify(&good_p);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = verify(&bad_p);
    assert!(!o.status.success());
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(text.contains("certificate revoked"), "{text}");
    let o = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage",
            "-in",
        ])
        .arg(&good_p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("URI:spiffe://osvm.local/demo/web") && text.contains("DNS:web.demo.osvm"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Server Authentication")
            && text.contains("TLS Web Client Authentication"),
        "{text}"
    );
}

#[test]
fn keys_are_private_and_serials_unique() {
    let d = Dir::new("files");
    let pki = pki(&d.0, "osvm.local");
    for f in ["ca.key", "issued.jsonl", "crl.pem"] {
        let mode = std::fs::metadata(d.0.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let mut serials: Vec<String> = (0..200)
        .map(|i| {
            pki.issue("demo", &format!("c{i}"), Duration::from_secs(600))
                .unwrap()
                .entry
                .serial
        })
        .collect();
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 200);
    assert!(matches!(
        pki.init_ca(osvm_pki::ca::CA_VALIDITY),
        Err(osvm_pki::PkiError::CaExists(_))
    ));
    assert!(matches!(
        pki.revoke("nobody"),
        Err(osvm_pki::PkiError::NotFound(_))
    ));
}

/// A client reconnects over mTLS every 100 ms while the CA rotates and both leaves are replaced
/// (each connection uses the files as they are at that moment): no handshake fails.
#[test]
fn a_ca_rotation_and_leaf_rotations_never_fail_a_handshake() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    let d = Dir::new("rotation");
    let mut pki = pki(&d.0, "osvm.local");
    let server = Arc::new(Mutex::new(
        pki.issue("demo", "rpc", Duration::from_secs(3600)).unwrap(),
    ));
    let client = Arc::new(Mutex::new(
        pki.issue("demo", "cli", Duration::from_secs(3600)).unwrap(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let dir = d.0.clone();
    let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (s2, c2, stop2, ok2) = (server.clone(), client.clone(), stop.clone(), ok.clone());
    let prober = std::thread::spawn(move || {
        let reader = Pki::new(&dir, "osvm.local").unwrap();
        let mut failed = Vec::new();
        while !stop2.load(Ordering::Relaxed) {
            let s = material(&reader, &s2.lock().unwrap());
            let c = material(&reader, &c2.lock().unwrap());
            match handshake(&s, &c, "rpc.demo.osvm") {
                Ok(_) => {
                    ok2.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => failed.push(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        failed
    });
    // Each step of the rotation is seen by three handshakes of the prober before the next.
    let pause = || {
        let from = ok.load(Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ok.load(Ordering::Relaxed) < from + 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    pause();
    let old_bundle = pki.bundle_pem().unwrap();
    let old_client = client.lock().unwrap().clone();
    pki.rotate_ca(osvm_pki::ca::CA_VALIDITY).unwrap();
    assert!(pki.rotation_pending());
    assert!(
        pki.bundle_pem().unwrap().contains(old_bundle.trim()),
        "the old CA stays in the bundle"
    );
    pause();
    *server.lock().unwrap() = pki.issue("demo", "rpc", Duration::from_secs(3600)).unwrap();
    pause();
    *client.lock().unwrap() = pki.issue("demo", "cli", Duration::from_secs(3600)).unwrap();
    pause();
    assert!(pki.finish_rotation().unwrap());
    assert!(
        !pki.bundle_pem().unwrap().contains(old_bundle.trim()),
        "then it leaves"
    );
    pause();
    // Leaf rotations under the new CA.
    *server.lock().unwrap() = pki.issue("demo", "rpc", Duration::from_secs(3600)).unwrap();
    pause();
    *client.lock().unwrap() = pki.issue("demo", "cli", Duration::from_secs(3600)).unwrap();
    pause();
    stop.store(true, Ordering::Relaxed);
    let failed = prober.join().unwrap();
    let ok = ok.load(Ordering::Relaxed);
    assert!(failed.is_empty(), "failed handshakes: {failed:?}");
    assert!(
        ok >= 21,
        "{ok} handshakes: three after each of the seven steps"
    );

    // A leaf of the old CA is refused once the rotation has ended.
    let now_server = material(&pki, &server.lock().unwrap());
    let err = handshake(&now_server, &material(&pki, &old_client), "rpc.demo.osvm").unwrap_err();
    assert!(err.contains("unknownissuer"), "{err}");
}
