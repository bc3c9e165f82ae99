//! Real WebSocket clients, over plain TCP or TLS (a certificate of the test's
//! own), and what they read.

use super::*;

/// A client's connection: plain TCP, or TLS over it (wss, https).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }

    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_mut(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A certificate for `localhost` and 127.0.0.1 made for one test, its files in a
/// folder of the test's own, and a client configuration that trusts it (and only
/// it): the clients check the server's certificate as a browser would.
pub struct TestCert {
    pub dir: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client: Arc<rustls::ClientConfig>,
}

impl TestCert {
    pub fn new(label: &str) -> TestCert {
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("a test certificate");
        let dir =
            std::env::temp_dir().join(format!("threadchat-tls-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(made.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TestCert {
            dir,
            cert,
            key,
            client: Arc::new(client),
        }
    }

    /// The server flags that serve with it.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }

    /// TLS to `addr` over `tcp`, the handshake done, checking the certificate for
    /// `name`.
    pub fn wrap(&self, tcp: TcpStream, name: &str) -> Stream {
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(Arc::clone(&self.client), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .unwrap_or_else(|e| panic!("TLS handshake failed: {e}"));
        }
        Stream::Tls(Box::new(tls))
    }

    /// A wss client, its handshake done (`url` is `wss://localhost:<port>/...`).
    pub fn connect(&self, url: &str) -> Result<Client, Refused> {
        self.connect_with(url, &[])
    }

    pub fn connect_with(
        &self,
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Client, Refused> {
        let request = url.into_client_request().unwrap();
        let host = request.uri().host().unwrap().to_string();
        let port = request.uri().port_u16().unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        Client::handshake_over(self.wrap(tcp, &host), url, headers)
    }

    /// A wss chat client that has read its welcome and its own join notification.
    pub fn join(&self, server: &impl Running) -> Client {
        let url = format!("wss://localhost:{}/", server.ws_addr().port());
        let mut client = self.connect(&url).expect("handshake");
        let welcome = client.recv_json();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client.id = welcome["id"].as_u64();
        client.recv_type("notification");
        client
    }

    /// `GET path` over https with `Connection: close`.
    pub fn get(&self, addr: SocketAddr, path: &str) -> HttpResponse {
        let tcp = TcpStream::connect(addr).expect("connect");
        let mut stream = self.wrap(tcp, "localhost");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        );
        stream.write_all(request.as_bytes()).expect("write");
        let mut raw = Vec::new();
        match stream.read_to_end(&mut raw) {
            Ok(_) => {}
            // A server that closes without close_notify: the answer is still whole.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => panic!("https read: {e}"),
        }
        parse_response(&raw).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `/stats` over https.
    pub fn stats(&self, server: &impl Running) -> Value {
        let response = self.get(server.http_addr(), "/stats");
        assert_eq!(response.status, 200);
        serde_json::from_slice(&response.body).expect("/stats is JSON")
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A WebSocket client on a blocking socket with a short read timeout, so every
/// receive can be bounded by a deadline.
pub struct Client {
    pub ws: WebSocket<Stream>,
    /// The subprotocol the server selected, if any.
    pub protocol: Option<String>,
    /// This client's id from its welcome frame, once read by [`Client::join`].
    pub id: Option<u64>,
}

/// How a handshake went when it was refused.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl Client {
    /// Connects and completes the handshake, or panics.
    pub fn connect(url: &str) -> Client {
        Client::connect_with(url, &[]).unwrap_or_else(|r| panic!("handshake refused: {r:?}"))
    }

    /// Connects with extra request headers; `Err` carries a refusal's status.
    pub fn connect_with(url: &str, headers: &[(&'static str, &str)]) -> Result<Client, Refused> {
        let request = url.into_client_request().unwrap();
        let addr = request.uri().authority().unwrap().as_str().to_string();
        let stream = TcpStream::connect(addr).expect("connect");
        Client::handshake(stream, url, headers)
    }

    /// Handshake over an already connected stream.
    pub fn handshake(
        stream: TcpStream,
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Client, Refused> {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Client::handshake_over(Stream::Plain(stream), url, headers)
    }

    /// Handshake over a plain or TLS stream.
    pub fn handshake_over(
        stream: Stream,
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Client, Refused> {
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            // Insert, not append: a test's Host replaces the one from the URL.
            request
                .headers_mut()
                .insert(*name, HeaderValue::from_str(value).unwrap());
        }
        match tungstenite::client(request, stream) {
            Ok((ws, response)) => {
                ws.get_ref()
                    .tcp()
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                let protocol = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().unwrap().to_string());
                Ok(Client {
                    ws,
                    protocol,
                    id: None,
                })
            }
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                Err(Refused {
                    status: response.status().as_u16(),
                    body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                        .into(),
                })
            }
            Err(e) => panic!("handshake failed: {e}"),
        }
    }

    /// A chat client that has read its welcome and its own join notification.
    pub fn join(server: &impl Running) -> Client {
        Client::join_over(
            server,
            TcpStream::connect(server.ws_addr()).expect("connect"),
        )
    }

    /// [`Client::join`] over a given stream.
    pub fn join_over(server: &impl Running, stream: TcpStream) -> Client {
        let mut client = Client::handshake(stream, &server.ws_url("/"), &[]).expect("handshake");
        let welcome = client.recv_json();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client.id = welcome["id"].as_u64();
        client.recv_type("notification");
        client
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    pub fn send_chat(&mut self, name: &str, msg: &str) {
        self.send_text(&serde_json::json!({ "name": name, "msg": msg }).to_string());
    }

    /// The next data or close message, within `PATIENCE`. Pings are answered by
    /// tungstenite on the way.
    pub fn recv(&mut self) -> Message {
        self.try_recv(PATIENCE)
            .expect("a message within the deadline")
    }

    /// The next data or close message, or `None` if `patience` passes first.
    pub fn try_recv(&mut self, patience: Duration) -> Option<Message> {
        let deadline = Instant::now() + patience;
        loop {
            match self.ws.read() {
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(message) => return Some(message),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => panic!("connection failed while waiting for a message: {e}"),
            }
        }
    }

    /// The next text message, as JSON.
    pub fn recv_json(&mut self) -> Value {
        match self.recv() {
            Message::Text(text) => serde_json::from_str(&text).expect("the server sends JSON"),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Skips messages until one of type `kind` arrives.
    pub fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let value = self.recv_json();
            if value["type"] == kind {
                return value;
            }
        }
    }

    /// Reads until the server's Close frame; returns its code (1005 if none).
    pub fn recv_close(&mut self) -> u16 {
        loop {
            match self.recv() {
                Message::Close(frame) => {
                    return frame.map_or(1005, |f: CloseFrame| u16::from(f.code));
                }
                _ => continue,
            }
        }
    }

    /// Whether the server has closed the TCP connection (EOF or reset), waiting up
    /// to `PATIENCE`. Reads raw bytes, so use it on a client that stopped reading
    /// WebSocket frames.
    pub fn wait_for_socket_closed(&mut self) -> bool {
        socket_closed_within(self.ws.get_mut().tcp_mut(), PATIENCE)
    }
}

/// Reads and discards until the peer closes `stream`; false if `patience` passes.
pub fn socket_closed_within(stream: &mut TcpStream, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= deadline {
                    return false;
                }
            }
            Err(_) => return true, // reset
        }
    }
}
