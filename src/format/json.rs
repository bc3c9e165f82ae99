//! The JSON format: the protocol itself (`docs/PROTOCOL.md`), one object per
//! frame, everything as sent.

use crate::protocol::Outgoing;

/// A frame as its JSON object.
pub fn spell(frame: &Outgoing<'_>) -> String {
    frame.to_json()
}

/// A message frame's JSON as its history replay: the same, marked
/// `"history":true`.
pub fn replay(json: &str) -> String {
    let body = json.strip_suffix('}').unwrap_or(json);
    format!("{body},\"history\":true}}")
}
