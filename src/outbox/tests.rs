//! The outbox's tests: real sockets on loopback, one side kept from reading.

use super::*;
use crate::places::{Cap, Caps, Kind, Places};
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};

const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A connected pair; `small` shrinks both buffers so a few KiB fill the pipe.
fn pair(small: bool) -> (TcpStream, TcpStream) {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    if small {
        sockopt::set_socket_recv_buffer_size(&fd, 4096).unwrap();
    }
    rustix::net::connect(&fd, &listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    if small {
        sockopt::set_socket_send_buffer_size(&server, 4096).unwrap();
    }
    (server, TcpStream::from(fd))
}

fn places() -> Arc<Places> {
    Places::new(Caps {
        clients: Cap {
            total: 10,
            per_host: 0,
        },
        ..Caps::default()
    })
}

fn outbox(server: TcpStream, limit: usize, drain: Duration, places: &Arc<Places>) -> Arc<Outbox> {
    let place = places.take(Kind::Chat, LOCAL).unwrap();
    Outbox::new(ClientId(1), Arc::new(server), limit, drain, place, None)
}

/// Sends one large shared batch, so that the pipe is full and a writer thread
/// owns the socket: whatever is sent next waits in the backlog.
fn fill_the_pipe(outbox: &Arc<Outbox>) {
    outbox
        .send_shared(&Arc::new(vec![b'.'; 60_000]), 0)
        .unwrap();
    assert!(outbox.lock().writer_running, "the pipe took 60 KB at once");
}

#[test]
fn bytes_arrive_in_order_through_write_through_and_the_writer() {
    let (server, mut client) = pair(false);
    let outbox = outbox(server, 64 << 20, Duration::from_secs(10), &places());
    // Far more than a socket buffer holds, so the writer thread must take over.
    let mut expected = Vec::new();
    for i in 0..2_000u32 {
        let batch: Vec<u8> = (0..1_000).map(|j| ((i * 7 + j) % 251) as u8).collect();
        expected.extend_from_slice(&batch);
        if i % 2 == 0 {
            outbox.send_shared(&Arc::new(batch), 0).unwrap();
        } else {
            // Not a close frame: its first byte's low bits are not 0x8.
            let mut own = batch;
            own[0] = 0x81;
            expected[i as usize * 1_000] = 0x81;
            outbox.send_own(&own).unwrap();
        }
    }
    outbox.finish();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes were reordered or interleaved");
}

/// A TLS server connection on `server` and a client on `client`, both
/// handshakes done; the client trusts the server's certificate.
fn tls_pair(
    server: &TcpStream,
    client: TcpStream,
) -> (
    Session,
    rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
) {
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
    let client_side = thread::spawn(move || {
        let mut tls = rustls::StreamOwned::new(conn, client);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        tls
    });
    let mut conn = crate::tls::accept(&Arc::new(config)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    crate::tls::handshake(&mut conn, &mut crate::tls::Deadline::new(server, deadline)).unwrap();
    (Session::new(conn), client_side.join().unwrap())
}

#[test]
fn tls_records_stay_in_order_through_write_through_and_the_writer() {
    let (server, client) = pair(true);
    let (session, mut client) = tls_pair(&server, client);
    let place = places().take(Kind::Chat, LOCAL).unwrap();
    let outbox = Outbox::new(
        ClientId(1),
        Arc::new(server),
        64 << 20,
        Duration::from_secs(10),
        place,
        Some(session),
    );
    // Far more than the small socket buffers hold: the first batches are sealed
    // by this thread and written through, the rest queue as plaintext and are
    // sealed by the writer thread, in its order.
    let mut expected = Vec::new();
    for i in 0..2_000u32 {
        let batch: Vec<u8> = (0..1_000).map(|j| ((i * 7 + j) % 251) as u8).collect();
        let mut batch = batch;
        batch[0] = 0x81; // not a close frame
        expected.extend_from_slice(&batch);
        if i % 2 == 0 {
            outbox.send_shared(&Arc::new(batch), 0).unwrap();
        } else {
            outbox.send_own(&batch).unwrap();
        }
    }
    assert!(outbox.lock().writer_running, "the pipe took everything");
    outbox.finish();
    let mut got = Vec::new();
    // `Ok` only after close_notify: an end without it is `UnexpectedEof`.
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "records were reordered or lost");
}

#[test]
fn a_backlog_past_its_limit_cuts_the_client_off() {
    let (server, _client_never_reads) = pair(false);
    let outbox = outbox(server, 100_000, Duration::from_secs(10), &places());
    let batch = Arc::new(vec![0u8; 10_000]);
    let mut result = Ok(());
    for _ in 0..10_000 {
        result = outbox.send_shared(&batch, 0);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(SendError::SlowConsumer));
    assert_eq!(outbox.send_shared(&batch, 0), Err(SendError::Closed));
}

#[test]
fn tiny_chunks_are_charged_their_overhead() {
    let (server, _client_never_reads) = pair(true);
    let limit = 100_000;
    let outbox = outbox(server, limit, Duration::from_secs(10), &places());
    fill_the_pipe(&outbox);
    let ping = Arc::new(vec![0x89, 0]);
    let mut accepted = 0;
    while outbox.send_shared(&ping, 0).is_ok() {
        accepted += 1;
        assert!(accepted < limit / 2, "two-byte chunks counted as two bytes");
    }
    assert!(
        accepted <= limit / CHUNK_OVERHEAD,
        "{accepted} chunks accepted"
    );
}

#[test]
fn the_readers_small_frames_share_one_chunk() {
    let (server, _client_never_reads) = pair(true);
    let outbox = outbox(server, 100_000, Duration::from_secs(10), &places());
    fill_the_pipe(&outbox);
    outbox.send_own(&[0x81, 1, b'x']).unwrap();
    // Ten thousand small frames, 30 KB: as chunks of their own they would cost
    // 990 KB.
    for _ in 0..10_000 {
        outbox.send_own(&[0x81, 1, b'x']).unwrap();
    }
    let (cost, chunks) = outbox.backlog_cost();
    assert!(chunks <= 4, "{chunks} chunks");
    assert!(cost < 60_000 + 30_003 + 4 * CHUNK_OVERHEAD, "cost {cost}");
}

#[test]
fn a_client_that_does_not_read_has_one_pong_waiting_at_most() {
    let (server, _client_never_reads) = pair(true);
    let outbox = outbox(server, 100_000, Duration::from_secs(10), &places());
    fill_the_pipe(&outbox);
    let (before, _) = outbox.backlog_cost();
    for _ in 0..10_000 {
        outbox.send_own(&[0x8A, 0]).unwrap();
    }
    let (after, _) = outbox.backlog_cost();
    assert!(
        after - before <= 2 + CHUNK_OVERHEAD,
        "pongs cost {}",
        after - before
    );
}

#[test]
fn nothing_is_sent_after_close() {
    let (server, mut client) = pair(false);
    let outbox = outbox(server, 1 << 20, Duration::from_secs(10), &places());
    outbox.send_close(CloseCode::Away, "", Failure::Stopped);
    assert_eq!(outbox.failure(), Some(Failure::Stopped));
    assert_eq!(outbox.send_own(b"\x81\x01x"), Err(SendError::Closed));
    outbox.finish();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, frame::close(CloseCode::Away, ""));
}

#[test]
fn after_the_readers_close_the_server_sends_no_close_of_its_own() {
    let (server, mut client) = pair(false);
    let outbox = outbox(server, 1 << 20, Duration::from_secs(10), &places());
    // The peer's Close arrived: the reader stops broadcasts, then tungstenite
    // answers it through the outbox.
    outbox.stop_broadcasts();
    let answer = frame::close(CloseCode::Normal, "");
    outbox.send_own(&answer).unwrap();
    // Shutdown comes a moment later: no 1001 may follow the answer.
    outbox.send_close(CloseCode::Away, "server shutting down", Failure::Stopped);
    assert_eq!(outbox.send_own(&[0x8A, 0]), Err(SendError::Closed));
    outbox.finish();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, answer);
}

#[test]
fn the_place_is_kept_until_the_writer_has_let_go_of_the_socket() {
    let (server, client) = pair(true);
    let places = places();
    let outbox = outbox(server, 1 << 20, Duration::from_secs(60), &places);
    fill_the_pipe(&outbox);
    // The reader has finished and the hub has let go: only the writer, blocked
    // on a client that does not read, still holds the outbox.
    outbox.finish();
    drop(outbox);
    assert_eq!(
        places.occupancy().chat,
        1,
        "given back while a thread still writes"
    );
    // The client goes away; the writer's write fails, and it lets go.
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while places.occupancy().chat != 0 {
        assert!(Instant::now() < deadline, "the place was never given back");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn draining_after_the_reader_ends_stops_at_the_deadline() {
    let (server, mut client) = pair(true);
    server
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let places = places();
    let outbox = outbox(server, 4 << 20, Duration::from_millis(300), &places);
    // A client that reads, but a trickle: 1 KB every 20 ms, 50 KB/s. Each write
    // makes progress well within the write timeout; 2 MB would take 40 s.
    let trickle = thread::spawn(move || {
        let mut got = 0;
        let mut buf = [0u8; 1024];
        loop {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => return got,
                Ok(n) => got += n,
            }
            thread::sleep(Duration::from_millis(20)); // the slow reader being modelled
        }
    });
    for _ in 0..32 {
        outbox
            .send_shared(&Arc::new(vec![b'x'; 64 * 1024]), 0)
            .unwrap();
    }
    let finished = Instant::now();
    outbox.finish();
    drop(outbox);
    let got = trickle.join().unwrap();
    assert!(got < 2 << 20, "everything was written: {got} bytes");
    assert!(
        finished.elapsed() < Duration::from_secs(10),
        "the writer went on for {:?}",
        finished.elapsed()
    );
    assert_eq!(places.occupancy().chat, 0);
}
