//! osvm's Hermit example: a std-only app built for `x86_64-unknown-hermit` and linked against
//! the hermit-kernel archive by osvm (no build.rs). The first argument picks the behaviour:
//!
//! - `hello` (default): prints a greeting, its arguments and the `APP_*` environment variables,
//!   then exits with the code in `APP_EXIT` (default 0);
//! - `panic`: panics;
//! - `spin`: never returns, printing a tick every second;
//! - `serve PORT`: answers every HTTP request on `0.0.0.0:PORT` with `hello from hermit-app`;
//! - `stderr`: writes one line to stderr and one to stdout, exits 3;
//! - `watch PATH`: prints `digest <FNV-1a 64 of the file>` now and whenever the file changes,
//!   checking every second (a renewed identity reaching the guest);
//! - `random`: prints a hash keyed by std's random keys (`random 0123...`), which differs
//!   between runs only if the kernel gives the app entropy;
//! - `cat PATH...`: prints each file (`== PATH` first) or why it could not be read, then exits
//!   0 (`/run/osvm/identity/*.pem` are the component's identity files).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;
use std::{env, process, thread};

const GREETING: &str = "hello from hermit-app";

fn main() {
    let args: Vec<String> = env::args().collect();
    match args.get(1).map(String::as_str) {
        None | Some("hello") => hello(&args),
        Some("panic") => {
            println!("about to panic");
            panic!("hermit-app panicked on purpose");
        }
        Some("spin") => spin(),
        Some("serve") => {
            let port = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(8080);
            serve(port)
        }
        Some("cat") => cat(&args[2..]),
        Some("watch") => watch(
            args.get(2)
                .map_or("/run/osvm/identity/cert.pem", String::as_str),
        ),
        Some("random") => {
            use std::hash::BuildHasher;
            let keyed = std::collections::hash_map::RandomState::new().hash_one(0u64);
            println!("random {keyed:016x}");
            process::exit(0);
        }
        Some("stderr") => {
            eprintln!("this line goes to stderr");
            println!("this line goes to stdout");
            process::exit(3);
        }
        Some(other) => {
            eprintln!(
                "unknown mode {other:?}: use hello, panic, spin, serve PORT, stderr, cat, watch or random"
            );
            process::exit(2);
        }
    }
}

fn hello(args: &[String]) -> ! {
    println!("{GREETING}");
    // std's maths calls C symbols (`sin`, `exp`) that the Hermit kernel does not export.
    let x = std::hint::black_box(1.0f64);
    println!("maths sin(1)={:.4} exp(1)={:.4}", x.sin(), x.exp());
    for (i, arg) in args.iter().enumerate() {
        println!("arg[{i}]={arg}");
    }
    let mut vars: Vec<(String, String)> =
        env::vars().filter(|(k, _)| k.starts_with("APP_")).collect();
    vars.sort();
    for (key, value) in &vars {
        println!("env {key}={value}");
    }
    let code = env::var("APP_EXIT")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    process::exit(code);
}

fn cat(paths: &[String]) -> ! {
    for path in paths {
        println!("== {path}");
        match std::fs::read_to_string(path) {
            Ok(text) => print!("{text}"),
            Err(e) => println!("cannot read: {e}"),
        }
    }
    process::exit(0);
}

fn watch(path: &str) -> ! {
    let mut last = None;
    loop {
        let digest = std::fs::read(path).map(|bytes| {
            // FNV-1a, 64 bits: enough to tell two certificates apart.
            bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        });
        let shown = match &digest {
            Ok(d) => format!("digest {d:016x}"),
            Err(e) => format!("cannot read {path}: {e}"),
        };
        if last.as_ref() != Some(&shown) {
            println!("{shown}");
            last = Some(shown);
        }
        thread::sleep(Duration::from_secs(1));
    }
}

fn spin() -> ! {
    println!("spinning");
    let mut tick = 0u64;
    loop {
        thread::sleep(Duration::from_secs(1));
        tick += 1;
        println!("tick {tick}");
    }
}

fn serve(port: u16) -> ! {
    let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
        eprintln!("cannot bind port {port}: {e}");
        process::exit(1);
    });
    println!("listening on {port}");
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                thread::spawn(move || {
                    if let Err(e) = answer(stream) {
                        eprintln!("connection error: {e}");
                    }
                });
            }
            Err(e) => eprintln!("accept error: {e}"),
        }
    }
}

/// Reads the request head (up to the blank line) and answers `200 OK`.
fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let body = format!("{GREETING}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}
