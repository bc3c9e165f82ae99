//! Server-to-client WebSocket frames as plain bytes, built once and sent to many.
//!
//! A frame a server sends is never masked (RFC 6455 §5.1), so the bytes of one
//! broadcast are valid on every client's socket: the hub encodes a message once and
//! appends the same bytes to every outbox. Only the header comes from tungstenite;
//! the payload is copied straight into the batch buffer.

use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// Appends one final text frame carrying `payload` to `out`.
pub fn append_text(out: &mut Vec<u8>, payload: &str) {
    append(out, OpCode::Data(Data::Text), payload.as_bytes());
}

/// Appends an empty ping frame to `out` (the heartbeat).
pub fn append_ping(out: &mut Vec<u8>) {
    append(
        out,
        OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping),
        &[],
    );
}

/// A text frame on its own.
pub fn text(payload: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    append_text(&mut out, payload);
    out
}

/// A close frame with a status code and a short reason.
pub fn close(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut out = Vec::new();
    Frame::close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
    .format(&mut out)
    .expect("formatting into a Vec cannot fail");
    out
}

/// Whether `frame`, which starts at a frame boundary, is a close frame.
pub fn is_close(frame: &[u8]) -> bool {
    frame.first().is_some_and(|byte| byte & 0x0F == 0x8)
}

/// Whether `frame` (a whole server frame, as tungstenite hands it over) is a pong.
pub fn is_pong(frame: &[u8]) -> bool {
    frame.first().is_some_and(|byte| byte & 0x0F == 0xA)
}

fn append(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    header
        .format(payload.len() as u64, out)
        .expect("formatting into a Vec cannot fail");
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frame_is_unmasked_final_with_the_right_length() {
        assert_eq!(text("hi"), vec![0x81, 2, b'h', b'i']);
        let long = "x".repeat(300);
        let f = text(&long);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]); // 16-bit length 300
        assert_eq!(f.len(), 4 + 300);
    }

    #[test]
    fn ping_and_close_frames() {
        let mut ping = Vec::new();
        append_ping(&mut ping);
        assert_eq!(ping, vec![0x89, 0]);
        assert_eq!(close(CloseCode::Away, ""), vec![0x88, 2, 0x03, 0xE9]);
        assert!(is_close(&close(CloseCode::Normal, "bye")));
        assert!(!is_close(&ping) && !is_close(&text("x")) && !is_close(&[]));
        assert!(!is_pong(&ping) && !is_pong(&text("x")) && !is_pong(&[]));
        assert!(is_pong(&[0x8A, 0]));
    }
}
