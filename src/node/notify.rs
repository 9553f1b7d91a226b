//! systemd's readiness protocol (`sd_notify(3)`), the two messages the node sends.
//!
//! Under a `Type=notify` unit (deploy/rust-raft-log.service) systemd sets `$NOTIFY_SOCKET` to a
//! unix datagram socket; the service is "started" only once it sends `READY=1`, so units ordered
//! after it (and `systemctl start`) wait until the node serves. The node sends `READY=1` when its
//! gRPC server accepts and its event loop starts, and `STOPPING=1` when a stop begins. Without
//! `$NOTIFY_SOCKET` (not under systemd) both do nothing. A failed send is logged and ignored:
//! readiness is advice to the supervisor, never a reason to stop serving.
//!
//! Hand-written instead of a crate: the protocol is one datagram of text to a path, or to an
//! abstract socket name when the variable starts with `@`.

use std::os::unix::net::UnixDatagram;

/// Tells systemd the node is serving.
pub fn ready() {
    send("READY=1\nSTATUS=serving");
}

/// Tells systemd the node is stopping (in-flight writes finish first).
pub fn stopping() {
    send("STOPPING=1");
}

fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&path, message) {
        tracing::warn!(error = %e, socket = ?path, "sd_notify failed: {message:?} not sent");
    }
}

fn send_to(path: &std::ffi::OsStr, message: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(message.as_bytes(), &address)?;
    } else {
        socket.send_to(message.as_bytes(), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_reaches_a_path_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        send_to(path.as_os_str(), "READY=1").expect("sent");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
