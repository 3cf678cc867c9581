//! The control port: one request per connection from the host, one response back.

use std::io;
use std::net::{Ipv4Addr, Shutdown as TcpShutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::socket::Shutdown;
use osvm_agent::proto::{self, Request, Response};

use super::children::SignalError;
use super::link::Conn;
use super::vsock::VsockListener;
use super::{Agent, exec, spawn_thread, system};

/// Starts the thread that accepts control connections, one thread per connection.
pub fn spawn_server(listener: VsockListener, agent: Arc<Agent>) {
    spawn_thread("control", move || {
        loop {
            match listener.accept() {
                Ok(conn) => {
                    let agent = Arc::clone(&agent);
                    // A connection whose thread cannot start is dropped: the host sees EOF.
                    spawn_thread("control-conn", move || serve(Conn::Vsock(conn), &agent));
                }
                Err(error) => {
                    say!("cannot accept a control connection: {error}");
                    // Do not spin if the error persists (e.g. out of descriptors).
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    });
}

/// Serves one control connection: reads the request, answers it.
pub fn serve(conn: Conn, agent: &Agent) {
    let request = match proto::read_msg::<Request>(&mut &conn) {
        Ok(request) => request,
        Err(failure) => {
            // After a bad frame the stream cannot be trusted: answer (if the host still
            // listens) and close.
            reply(&conn, &error(failure.to_string()));
            return;
        }
    };
    match request {
        Request::Ping => reply(
            &conn,
            &Response::Pong {
                uptime_ms: system::uptime_ms(),
            },
        ),
        Request::Exec { argv, timeout_ms } => reply(&conn, &run_exec(agent, &argv, timeout_ms)),
        Request::Signal { signal } => reply(&conn, &send_signal(agent, signal)),
        Request::Shutdown { grace_ms } => {
            reply(&conn, &Response::Ok);
            // Close now, so the host has the whole answer while the workload stops.
            drop(conn);
            shut_down(agent, Duration::from_millis(grace_ms));
        }
        Request::Forward { port } => forward(conn, port),
        Request::Stdio => stdio(conn, agent),
        Request::Reattach => reattach(conn, agent),
        Request::Logs => {
            reply(&conn, &Response::Ok);
            agent.logs.attach(conn);
        }
        Request::Identity { files } => reply(
            &conn,
            &match super::setup::write_identity(&files) {
                Ok(()) => Response::Ok,
                Err(e) => error(format!("write the identity files: {e}")),
            },
        ),
    }
}

/// Makes the connection the workload's stdio channel: host bytes to its stdin, its stdout
/// back. When the host's side ends, the workload's stdin is closed (it sees EOF); when its
/// stdout ends, the connection is shut down.
fn stdio(conn: Conn, agent: &Agent) {
    let Some((mut stdin, mut stdout)) = super::lock(&agent.stdio).take() else {
        reply(
            &conn,
            &error("the workload has no stdio channel (its launch asked for none, or one is open)"),
        );
        return;
    };
    reply(&conn, &Response::Ok);
    let conn = Arc::new(conn);
    let host_to_workload = {
        let conn = Arc::clone(&conn);
        thread::Builder::new()
            .name("stdio-in".into())
            .spawn(move || {
                let _ = io::copy(&mut &*conn, &mut stdin);
                // Dropping stdin closes it: the workload reads EOF.
            })
    };
    let _ = io::copy(&mut stdout, &mut &*conn);
    conn.shutdown(Shutdown::Both);
    if let Ok(thread) = host_to_workload {
        let _ = thread.join();
    }
}

/// A restarted host takes the events over: tell it where the workload is, then send the
/// events on this connection. The workload's state stays locked until the connection is
/// attached, so an exit is either in the answer or sent after it, never lost between them.
fn reattach(conn: Conn, agent: &Agent) {
    let state = super::lock(&agent.workload);
    let (exited, code, signal) = match state.exit {
        Some((code, signal)) => (true, code, signal),
        None => (false, None, None),
    };
    let answer = Response::Attached {
        pid: state.pid,
        exited,
        code,
        signal,
    };
    if proto::write_msg(&mut &conn, &answer).is_ok() {
        say!("a host reattached");
        agent.events.attach(conn);
    }
    drop(state);
}

/// Sends the one response; a host that already left is nobody's problem.
fn reply(conn: &Conn, response: &Response) {
    let _ = proto::write_msg(&mut &*conn, response);
}

/// Shorthand for an error response.
fn error(message: impl Into<String>) -> Response {
    Response::Error {
        message: message.into(),
    }
}

/// Runs an exec request in the workload's context.
fn run_exec(agent: &Agent, argv: &[String], timeout_ms: u64) -> Response {
    if argv.is_empty() {
        return error("exec needs a program: argv is empty");
    }
    let context = agent.exec_context();
    match exec::run(
        &agent.children,
        argv,
        &context,
        Duration::from_millis(timeout_ms),
    ) {
        Ok(outcome) => Response::ExecResult {
            code: outcome.code,
            signal: outcome.signal,
            timed_out: outcome.timed_out,
            stdout: String::from_utf8_lossy(&outcome.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&outcome.stderr).into_owned(),
        },
        Err(failure) => error(format!("cannot run {}: {failure}", argv[0])),
    }
}

/// Sends signal number `signal` to the workload.
fn send_signal(agent: &Agent, signal: i32) -> Response {
    let Ok(signal) = Signal::try_from(signal) else {
        return error(format!("{signal} is not a valid signal number"));
    };
    match agent.children.signal_workload(signal) {
        Ok(()) => Response::Ok,
        Err(failure) => error(failure.to_string()),
    }
}

/// Stops the workload: SIGTERM, then SIGKILL after `grace`. The boot thread notices its exit,
/// reports it and powers off; with no workload there is nothing to wait for.
fn shut_down(agent: &Agent, grace: Duration) {
    say!("shutdown requested (grace {} ms)", grace.as_millis());
    match agent.children.signal_workload(Signal::SIGTERM) {
        Err(SignalError::NoWorkload) => agent.power_off(),
        Err(failure) => say!("{failure}"),
        Ok(()) => {}
    }
    thread::sleep(grace);
    if agent.children.workload_running() {
        say!("the workload outlived its grace period, killing it");
        if let Err(failure) = agent.children.signal_workload(Signal::SIGKILL) {
            say!("{failure}");
        }
    }
}

/// Turns the connection into a byte stream to `127.0.0.1:port`.
fn forward(conn: Conn, port: u16) {
    // An address, not a name: no resolver in the guest (and none in a static glibc binary).
    let tcp = match TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))) {
        Ok(tcp) => tcp,
        Err(failure) => {
            reply(
                &conn,
                &error(format!("cannot connect to 127.0.0.1:{port}: {failure}")),
            );
            return;
        }
    };
    reply(&conn, &Response::Ok);
    if let Err(failure) = splice(conn, tcp) {
        say!("forwarding to port {port}: {failure}");
    }
}

/// Copies bytes both ways until both directions ended.
///
/// The end of the host's direction is passed on to the TCP side as a half close, so that
/// request/response protocols see the host's EOF. The end of the guest's direction shuts the
/// vsock connection down *completely*: vhost-device-vsock (0.3) ignores a guest's half
/// shutdown, so the host would never see the stream end and both sides would wait forever.
fn splice(conn: Conn, tcp: TcpStream) -> io::Result<()> {
    let conn = Arc::new(conn);
    let mut tcp_in = tcp.try_clone()?;
    let mut tcp_out = tcp;
    let host_to_guest = {
        let conn = Arc::clone(&conn);
        thread::Builder::new()
            .name("forward".into())
            .spawn(move || {
                // An error ends this direction like EOF does; the other one ends on its own
                // (the TCP peer sees our half close, the host sees the shutdown below).
                let _ = io::copy(&mut &*conn, &mut tcp_in);
                let _ = tcp_in.shutdown(TcpShutdown::Write);
            })?
    };
    let _ = io::copy(&mut tcp_out, &mut &*conn);
    // Also ends the host's direction: a local read shutdown makes `recv` return EOF.
    conn.shutdown(Shutdown::Both);
    let _ = host_to_guest.join();
    Ok(())
}
