use std::io::Cursor;

use super::*;

fn sample_requests() -> Vec<Request> {
    vec![
        Request::Ping,
        Request::Exec {
            argv: vec!["/bin/cat".into(), "/proc/1/cmdline".into()],
            timeout_ms: 5000,
        },
        Request::Signal { signal: 15 },
        Request::Shutdown { grace_ms: 2000 },
        Request::Forward { port: 8080 },
        Request::Stdio,
        Request::Reattach,
        Request::Logs,
    ]
}

#[test]
fn a_reattach_answer_round_trips_with_the_workloads_state() {
    for answer in [
        Response::Attached {
            pid: Some(42),
            exited: false,
            code: None,
            signal: None,
        },
        Response::Attached {
            pid: None,
            exited: true,
            code: None,
            signal: Some(9),
        },
    ] {
        assert_eq!(decode::<Response>(&encode(&answer)).unwrap(), answer);
    }
}

#[test]
fn every_request_round_trips_through_a_frame() {
    for req in sample_requests() {
        let frame = encode(&req);
        assert_eq!(decode::<Request>(&frame).unwrap(), req);
        assert_eq!(read_msg::<Request>(&mut Cursor::new(&frame)).unwrap(), req);
    }
    let launch = Launch {
        hostname: "web".into(),
        command: "/bin/busybox".into(),
        args: vec!["httpd".into(), "-f".into()],
        env: vec![("A".into(), "b c".into())],
        working_dir: None,
        network: Some(GuestNetwork {
            address: "10.213.0.2/30".into(),
            gateway: "10.213.0.1".into(),
        }),
        hosts: vec![("10.214.0.1".into(), "db db.demo.osvm".into())],
        data_device: Some("/dev/vda".into()),
        stdio: true,
        mac: Some("02:00:00:00:00:01".into()),
        time_unix_ns: Some(1_796_490_760_000_000_000),
        entropy: vec![7; 64],
        tls_egress: vec![TlsEgress {
            listen: 15432,
            upstream: "10.214.0.1:5432".parse().unwrap(),
            server_name: "db.demo.osvm".into(),
            trust_domain: "osvm.local".into(),
        }],
        mounts: vec![GuestMount {
            tag: "m0".into(),
            target: "/shared".into(),
            read_only: false,
        }],
        identity: vec![IdentityFile {
            name: "key.pem".into(),
            mode: 0o400,
            text: "-----BEGIN PRIVATE KEY-----\n".into(),
        }],
    };
    assert_eq!(decode::<Launch>(&encode(&launch)).unwrap(), launch);
    let renewal = Request::Identity {
        files: launch.identity.clone(),
    };
    assert_eq!(decode::<Request>(&encode(&renewal)).unwrap(), renewal);
}

#[test]
fn an_oversized_length_is_refused_before_reading_the_body() {
    let mut frame = (MAX_FRAME + 1).to_be_bytes().to_vec();
    frame.extend_from_slice(b"{}");
    assert!(matches!(
        read_msg::<Request>(&mut Cursor::new(&frame)),
        Err(ProtoError::TooLarge(n)) if n == MAX_FRAME + 1
    ));
    let huge = u32::MAX.to_be_bytes();
    assert!(matches!(
        decode::<Request>(&huge),
        Err(ProtoError::TooLarge(u32::MAX))
    ));
}

#[test]
fn malformed_bodies_are_errors_that_say_what_is_wrong() {
    let frame = |body: &[u8]| {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    for body in [
        &b"not json"[..],
        b"{}",
        b"{\"v\":1}",
        b"{\"v\":1,\"msg\":{\"type\":\"reboot\"}}",
        b"{\"v\":1,\"msg\":{\"type\":\"exec\",\"argv\":\"ls\",\"timeout_ms\":1}}",
        b"{\"v\":1,\"msg\":{\"type\":\"forward\",\"port\":70000}}",
        b"\xff\xfe",
    ] {
        match decode::<Request>(&frame(body)) {
            Err(ProtoError::Malformed(why)) => assert!(!why.is_empty()),
            other => panic!("{:?} decoded as {other:?}", String::from_utf8_lossy(body)),
        }
    }
}

#[test]
fn another_version_is_refused_by_number() {
    let body = b"{\"v\":2,\"msg\":{\"type\":\"ping\"}}";
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    assert!(matches!(decode::<Request>(&f), Err(ProtoError::Version(2))));
    // A future version whose message this build does not know is still refused as a version.
    let body = b"{\"v\":7,\"msg\":{\"type\":\"teleport\"}}";
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    assert!(matches!(decode::<Request>(&f), Err(ProtoError::Version(7))));
}

#[test]
fn truncated_frames_and_clean_ends_are_told_apart() {
    assert!(matches!(
        read_msg::<Request>(&mut Cursor::new(Vec::<u8>::new())),
        Err(ProtoError::Closed)
    ));
    let frame = encode(&Request::Ping);
    for cut in 1..frame.len() {
        assert!(
            matches!(
                read_msg::<Request>(&mut Cursor::new(&frame[..cut])),
                Err(ProtoError::Io(_))
            ),
            "cut at {cut}"
        );
        assert!(decode::<Request>(&frame[..cut]).is_err());
    }
}

#[test]
fn log_chunks_round_trip_split_at_the_limit_and_reject_bad_streams() {
    let data = vec![b'x'; MAX_LOG_CHUNK * 2 + 10];
    let mut buf = Vec::new();
    write_log(&mut buf, Stream::Stderr, &data).unwrap();
    let mut r = Cursor::new(buf);
    let mut got = Vec::new();
    while let Some(chunk) = read_log(&mut r).unwrap() {
        assert_eq!(chunk.stream, Stream::Stderr);
        assert!(chunk.data.len() <= MAX_LOG_CHUNK);
        got.extend(chunk.data);
    }
    assert_eq!(got, data);
    let bad_stream = [0, 0, 0, 2, 9, b'x'];
    assert!(read_log(&mut Cursor::new(&bad_stream[..])).is_err());
    let too_long = ((MAX_LOG_CHUNK + 2) as u32).to_be_bytes();
    assert!(read_log(&mut Cursor::new(&too_long[..])).is_err());
    let empty = [0, 0, 0, 0];
    assert!(read_log(&mut Cursor::new(&empty[..])).is_err());
}

/// A small deterministic generator, so a failure reproduces (the fuzz target under `fuzz/`
/// explores further with coverage guidance).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_and_mutated_frames_never_panic() {
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    let seeds: Vec<Vec<u8>> = sample_requests().iter().map(encode).collect();
    for round in 0..20_000 {
        let mut bytes = if round % 2 == 0 {
            seeds[(rng.next() % seeds.len() as u64) as usize].clone()
        } else {
            let len = (rng.next() % 64) as usize;
            (0..len).map(|_| rng.next() as u8).collect()
        };
        for _ in 0..(rng.next() % 4) {
            if bytes.is_empty() {
                break;
            }
            let at = (rng.next() % bytes.len() as u64) as usize;
            match rng.next() % 3 {
                0 => bytes[at] = rng.next() as u8,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, rng.next() as u8),
            }
        }
        let _ = decode::<Request>(&bytes);
        let _ = decode::<Response>(&bytes);
        let _ = decode::<Event>(&bytes);
        let _ = read_msg::<Request>(&mut Cursor::new(&bytes));
        let _ = read_log(&mut Cursor::new(&bytes));
    }
}
