//! A hostile local client for the descriptor-flood test: opens COUNT idle
//! TCP connections to ADDR (and tries as many to a Unix socket PATH, if
//! given), prints what it got, and holds them all until stdin closes.
//!
//!     sipguard-flood COUNT ADDR [PATH]
//!
//! Connects do not wait (non-blocking): a server that stops accepting
//! cannot stall the flood. The test runs it as an unprivileged user.
use std::{
    io::{Read, Write},
    net::SocketAddr,
    process::ExitCode,
};

use socket2::{Domain, SockAddr, Socket, Type};

/// Starts a connection without waiting for it; the socket, or why not.
fn start(domain: Domain, to: &SockAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(domain, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    match socket.connect(to) {
        Ok(()) => Ok(socket),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(socket),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(socket),
        Err(e) => Err(e),
    }
}

/// COUNT connection attempts: the sockets held, and the first error.
fn flood(domain: Domain, to: &SockAddr, count: usize) -> (Vec<Socket>, Option<String>) {
    let mut held = Vec::new();
    let mut first_error = None;
    for _ in 0..count {
        match start(domain, to) {
            Ok(socket) => held.push(socket),
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    (held, first_error)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(count), Some(addr)) = (
        args.first().and_then(|c| c.parse::<usize>().ok()),
        args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()),
    ) else {
        eprintln!("usage: sipguard-flood COUNT ADDR [PATH]");
        return ExitCode::from(2);
    };
    let (tcp, tcp_error) = flood(Domain::for_address(addr), &addr.into(), count);
    println!("tcp {} {}", tcp.len(), tcp_error.unwrap_or_default());
    let unix = args.get(2).map(|path| match SockAddr::unix(path) {
        Ok(to) => flood(Domain::UNIX, &to, count),
        Err(e) => (Vec::new(), Some(e.to_string())),
    });
    if let Some((held, error)) = &unix {
        println!("unix {} {}", held.len(), error.clone().unwrap_or_default());
    }
    let _ = std::io::stdout().flush();
    // Hold everything until the test closes our stdin.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop((tcp, unix));
    ExitCode::SUCCESS
}
