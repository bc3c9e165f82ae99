
/* threadchat: this server speaks Socket.IO over WebSocket only (HTTP long-polling
   is not served), so io() connects over WebSocket unless the page says otherwise. */
(function (global) {
  var lookup = global.io;
  if (typeof lookup !== "function") return;
  function io(uri, opts) {
    if (typeof uri === "object") {
      opts = uri;
      uri = undefined;
    }
    return lookup(uri, Object.assign({ transports: ["websocket"] }, opts));
  }
  Object.assign(io, lookup);
  io.io = io;
  io.connect = io;
  global.io = io;
})(typeof globalThis !== "undefined" ? globalThis : self);
