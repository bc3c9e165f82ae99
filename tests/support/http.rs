//! Raw HTTP and handshakes, sockets from other loopback addresses, and the
//! process's own figures.

use super::*;

/// A raw HTTP exchange: sends `request` as written and reads the whole response
/// (the request should say `Connection: close`).
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

pub fn http_raw(addr: SocketAddr, request: &str) -> HttpResponse {
    try_http_raw(addr, request, PATIENCE).unwrap_or_else(|e| panic!("HTTP exchange failed: {e}"))
}

/// [`http_raw`], with failures as values (for a server that may be refusing) and a
/// read timeout of its own.
pub fn try_http_raw(
    addr: SocketAddr,
    request: &str,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    parse_response(&raw)
}

/// A whole HTTP response, head and body.
pub(super) fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status code")?;
    Ok(HttpResponse {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    })
}

/// `GET path` with `Connection: close`.
pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_raw(addr, &get_request(addr, path))
}

/// [`http_get`], with failures as values and a read timeout of its own.
pub fn try_http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    try_http_raw(addr, &get_request(addr, path), timeout)
}

/// `GET path` with extra header lines (`"If-None-Match: ..."`).
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &[&str]) -> HttpResponse {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"),
    )
}

/// Runs the binary to completion (`--check-config`, `--help`) with `args` and `env`,
/// and without any `THREADCHAT_*` variable of the caller's.
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_threadchat"));
    for (name, _) in std::env::vars() {
        if name.starts_with("THREADCHAT_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run the threadchat binary")
}

/// The `www/` folder of this checkout.
pub const WWW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/www");

fn get_request(addr: SocketAddr, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
}

/// Sends a WebSocket upgrade request by hand and returns the response's status and
/// head; for checking what tungstenite's client would refuse to look at.
pub fn raw_handshake(addr: SocketAddr, path: &str, extra_headers: &[&str]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for header in extra_headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut stream);
    (status_in(&head).unwrap_or(0), head)
}

/// Reads an HTTP response head byte by byte (so nothing after it is consumed),
/// up to its blank line or until the server closes; empty if it sent nothing.
pub fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The status code in a response head.
pub fn status_in(head: &str) -> Option<u16> {
    head.split(' ').nth(1).and_then(|s| s.parse().ok())
}

/// A TCP connection whose receive buffer is set to `bytes` before connecting (set
/// afterwards, the window already advertised would not shrink).
pub fn connect_with_receive_buffer(addr: SocketAddr, bytes: usize) -> TcpStream {
    use rustix::net::{connect, sockopt};
    let fd = test_socket();
    sockopt::set_socket_recv_buffer_size(&fd, bytes).expect("SO_RCVBUF");
    connect(&fd, &addr).expect("connect");
    TcpStream::from(fd)
}

/// A TCP connection to `addr` from the loopback address `source` (all of 127/8
/// answers on Linux): how a test plays several hosts, an attacker on `127.0.0.2`
/// beside an honest user on `127.0.0.1`.
pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    use rustix::net::{bind, connect};
    let fd = test_socket();
    bind(&fd, &SocketAddr::new(source, 0)).expect("bind the source address");
    connect(&fd, &addr).expect("connect");
    TcpStream::from(fd)
}

/// The loopback address of the `n`th device of a LAN (127.0.1.1, 127.0.1.2, …).
pub fn lan_host(n: usize) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        127,
        0,
        1 + (n / 250) as u8,
        1 + (n % 250) as u8,
    ))
}

/// What the server process holds now, from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub rss_kib: u64,
    pub threads: usize,
    pub fds: usize,
}

/// [`connect_with_receive_buffer`] from the loopback address `source`.
pub fn connect_with_receive_buffer_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    bytes: usize,
) -> TcpStream {
    use rustix::net::{bind, connect, sockopt};
    let fd = test_socket();
    sockopt::set_socket_recv_buffer_size(&fd, bytes).expect("SO_RCVBUF");
    bind(&fd, &SocketAddr::new(source, 0)).expect("bind the source address");
    connect(&fd, &addr).expect("connect");
    TcpStream::from(fd)
}

/// A TCP socket that a server this test starts does not inherit: without
/// close-on-exec, every socket open in any test thread would land in the child
/// process and count against its open-files limit.
fn test_socket() -> rustix::fd::OwnedFd {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socket_with};
    socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket")
}
