//! An accept-side repair of one client quirk: etcd's Go client (etcdctl 3.4, `endpoint status`
//! among others) sends the whole endpoint URL, e.g. `http://127.0.0.1:2379`, as the HTTP/2
//! `:authority` pseudo-header when it was given `--endpoints=http://...`. That value is not an
//! RFC 3986 authority, and the `h2` crate under tonic resets such a stream with PROTOCOL_ERROR
//! before any handler runs (it has no setting to relax the check); etcd's Go server accepts it.
//!
//! [`AuthorityRepair`] wraps each accepted connection and rewrites, in the client → server
//! direction only, an `:authority` of the form `scheme://host:port[/...]` to `host:port` when (and
//! only when) the original is not a valid authority and the result is. Every other byte reaches
//! h2 unchanged, and h2 still validates everything, the repaired authority included, so the server
//! accepts nothing it would not accept from a well-behaved client.
//!
//! How: HTTP/2 compresses headers with HPACK, whose dynamic table is shared state between the
//! client's encoder and the server's decoder, so one header block cannot be edited in place. Per
//! connection:
//! 1. Until the first header block, frames are parsed and copied (DATA and every other frame as
//!    they are). The first block (HEADERS + CONTINUATIONs) is decoded with a decoder that mirrors
//!    the client's table (`loona-hpack`).
//! 2. If its `:authority` needs no repair, the block's original frames are forwarded verbatim (so
//!    the server's table equals the client's) and the connection becomes a plain pass-through for
//!    the rest of its life: no parsing, no copy beyond the socket read. This is every well-behaved
//!    client, peers included.
//! 3. Otherwise the connection is transcoded from then on: every block is decoded, repaired and
//!    re-encoded with an encoder whose table the server's decoder mirrors, and re-emitted as
//!    HEADERS + CONTINUATION (padding dropped, priority kept, split at the protocol's minimum frame
//!    size of 16 KiB).
//!
//! The server → client direction is never touched. The decision on the first block relies on a
//! client sending one `:authority` for all streams of a connection, which gRPC clients do (grpc-go
//! derives it from the dial target, per connection); a client that switched to a URL authority
//! later on a connection would see h2's PROTOCOL_ERROR for those streams, as without this layer.
//!
//! Invariants and limits: the connection preface must match HTTP/2's, or the bytes pass through
//! untouched (hyper then refuses them as before); a header block is at most
//! [`HEADER_BLOCK_BYTES_MAX`] (the decoded list at most [`HEADER_LIST_BYTES_MAX`]); anything the
//! wrapper cannot parse (a CONTINUATION without its HEADERS, an interleaved frame, a PUSH_PROMISE
//! from a client, an HPACK error) ends the connection with an I/O error, which is what h2 itself
//! does for those protocol errors, because the two HPACK tables could no longer be kept in step.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Every HTTP/2 peer accepts frames of this size (SETTINGS_MAX_FRAME_SIZE's initial value).
const FRAME_PAYLOAD_BYTES_MIN_MAX: usize = 16_384;
/// The HPACK dynamic table size both directions start with; the server (h2 under tonic) does not
/// advertise another one.
const HPACK_TABLE_BYTES: usize = 4096;
/// The most bytes of one compressed header block (HEADERS + CONTINUATIONs) the wrapper buffers.
pub const HEADER_BLOCK_BYTES_MAX: usize = 256 * 1024;
/// The most bytes of one decoded header list (names + values).
pub const HEADER_LIST_BYTES_MAX: usize = 1024 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Repairs `value` if it is a URL where an authority belongs: `Some(host:port)` when `value` is
/// not a valid authority but `scheme://authority[/path]` with a valid authority; `None` otherwise
/// (leave the value as it is).
pub fn repair_authority(value: &[u8]) -> Option<Vec<u8>> {
    if http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, rest) = text.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority = rest.split('/').next()?;
    http::uri::Authority::try_from(authority).ok()?;
    Some(authority.as_bytes().to_vec())
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Matching the connection preface; `usize` bytes matched so far.
    Preface(usize),
    /// Parsing frames until the first header block decides (module docs, step 1).
    Inspect,
    /// Every header block is re-encoded (step 3).
    Transcode,
    /// Copy everything: not HTTP/2 with prior knowledge, or the first block needed no repair.
    Passthrough,
}

/// A header block being reassembled from HEADERS + CONTINUATION frames.
struct PendingBlock {
    /// The block's frames as received (forwarded verbatim when nothing is repaired while
    /// inspecting).
    raw: Vec<u8>,
    stream_id: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// The client → server byte transformer, independent of any socket (unit-testable).
pub struct Transcoder {
    phase: Phase,
    input: Vec<u8>,
    pending: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    /// Authorities rewritten so far (for tests and logs).
    pub repaired: u64,
}

impl Default for Transcoder {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE_BYTES);
        let mut encoder = loona_hpack::Encoder::new();
        encoder.set_max_table_size(HPACK_TABLE_BYTES);
        Transcoder {
            phase: Phase::Preface(0),
            input: Vec::new(),
            pending: None,
            decoder,
            encoder,
            repaired: 0,
        }
    }
}

impl Transcoder {
    /// Feeds bytes received from the client; appends what the server should read to `out`.
    ///
    /// # Errors
    /// A protocol error the connection cannot survive (see the module docs).
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let mut bytes = bytes;
        if let Phase::Preface(matched) = self.phase {
            let want = PREFACE.len() - matched;
            let take = want.min(bytes.len());
            if bytes[..take] != PREFACE[matched..matched + take] {
                // Not an HTTP/2 prior-knowledge client: hand over what was held back and step aside.
                out.extend_from_slice(&PREFACE[..matched]);
                self.phase = Phase::Passthrough;
            } else {
                out.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                self.phase = if matched + take == PREFACE.len() {
                    Phase::Inspect
                } else {
                    Phase::Preface(matched + take)
                };
            }
        }
        match self.phase {
            Phase::Passthrough => {
                out.extend_from_slice(bytes);
                Ok(())
            }
            Phase::Preface(_) => Ok(()),
            Phase::Inspect | Phase::Transcode => {
                self.input.extend_from_slice(bytes);
                self.frames(out)
            }
        }
    }

    /// Whether every further byte passes through unchanged (the reader may skip the transcoder).
    pub fn is_passthrough(&self) -> bool {
        self.phase == Phase::Passthrough
    }

    fn frames(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let mut at = 0;
        while self.input.len() - at >= FRAME_HEADER_BYTES {
            let head = &self.input[at..at + FRAME_HEADER_BYTES];
            let length =
                usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let frame_type = head[3];
            let flags = head[4];
            let stream_id = [head[5], head[6], head[7], head[8]];
            if frame_type == TYPE_HEADERS || frame_type == TYPE_CONTINUATION {
                // Refuse before buffering a giant header frame.
                if length > HEADER_BLOCK_BYTES_MAX {
                    return Err(protocol_error(format!(
                        "a header frame of {length} bytes is above the limit of \
                         {HEADER_BLOCK_BYTES_MAX}"
                    )));
                }
            }
            let end = at + FRAME_HEADER_BYTES + length;
            if self.input.len() < end {
                break;
            }
            let payload = &self.input[at + FRAME_HEADER_BYTES..end];
            match frame_type {
                TYPE_HEADERS => {
                    if self.pending.is_some() {
                        return Err(protocol_error("HEADERS while a header block is open"));
                    }
                    let block = headers_fragment(flags, payload)?;
                    let pending = PendingBlock {
                        raw: self.input[at..end].to_vec(),
                        stream_id,
                        end_stream: flags & FLAG_END_STREAM != 0,
                        priority: block.priority,
                        block: block.fragment.to_vec(),
                    };
                    self.pending = Some(pending);
                    if flags & FLAG_END_HEADERS != 0 {
                        self.finish_block(out)?;
                    }
                }
                TYPE_CONTINUATION => {
                    let Some(pending) = self.pending.as_mut() else {
                        return Err(protocol_error("CONTINUATION without HEADERS"));
                    };
                    if pending.stream_id != stream_id {
                        return Err(protocol_error("CONTINUATION on another stream"));
                    }
                    if pending.block.len() + payload.len() > HEADER_BLOCK_BYTES_MAX {
                        return Err(protocol_error(format!(
                            "a header block above the limit of {HEADER_BLOCK_BYTES_MAX} bytes"
                        )));
                    }
                    pending.block.extend_from_slice(payload);
                    pending.raw.extend_from_slice(&self.input[at..end]);
                    if flags & FLAG_END_HEADERS != 0 {
                        self.finish_block(out)?;
                    }
                }
                TYPE_PUSH_PROMISE => {
                    return Err(protocol_error("PUSH_PROMISE from a client"));
                }
                _ => {
                    if self.pending.is_some() {
                        return Err(protocol_error("a frame inside an open header block"));
                    }
                    out.extend_from_slice(&self.input[at..end]);
                }
            }
            at = end;
            if self.phase == Phase::Passthrough {
                // The first block needed no repair: the rest goes through as it is.
                out.extend_from_slice(&self.input[at..]);
                self.input = Vec::new();
                return Ok(());
            }
        }
        self.input.drain(..at);
        Ok(())
    }

    /// Decodes the complete block, repairs `:authority`, re-encodes and emits it.
    fn finish_block(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let mut headers = self
            .decoder
            .decode(&pending.block)
            .map_err(|e| protocol_error(format!("HPACK: {e}")))?;
        let list_bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        if list_bytes > HEADER_LIST_BYTES_MAX {
            return Err(protocol_error(format!(
                "a header list of {list_bytes} bytes is above the limit of {HEADER_LIST_BYTES_MAX}"
            )));
        }
        let mut repaired_here = false;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" {
                if let Some(repaired) = repair_authority(value) {
                    repaired_here = true;
                    tracing::debug!(
                        from = %String::from_utf8_lossy(value),
                        to = %String::from_utf8_lossy(&repaired),
                        "repaired an HTTP/2 :authority"
                    );
                    *value = repaired;
                    self.repaired += 1;
                }
            }
        }
        if self.phase == Phase::Inspect && !repaired_here {
            out.extend_from_slice(&pending.raw);
            self.phase = Phase::Passthrough;
            return Ok(());
        }
        self.phase = Phase::Transcode;
        let mut block = Vec::with_capacity(pending.block.len() + 16);
        self.encoder
            .encode_into(
                headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
                &mut block,
            )
            .map_err(|e| protocol_error(format!("HPACK encode: {e}")))?;
        emit_header_frames(&pending, &block, out);
        Ok(())
    }
}

struct HeadersFragment<'a> {
    priority: Option<[u8; 5]>,
    fragment: &'a [u8],
}

/// The header block fragment of a HEADERS payload, without padding, and its priority fields.
fn headers_fragment(flags: u8, payload: &[u8]) -> io::Result<HeadersFragment<'_>> {
    let mut body = payload;
    let mut padding = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&pad, rest) = body
            .split_first()
            .ok_or_else(|| protocol_error("a padded HEADERS frame without its pad length"))?;
        padding = usize::from(pad);
        body = rest;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        if body.len() < 5 {
            return Err(protocol_error("a HEADERS frame too short for its priority"));
        }
        let mut p = [0u8; 5];
        p.copy_from_slice(&body[..5]);
        priority = Some(p);
        body = &body[5..];
    }
    if padding > body.len() {
        return Err(protocol_error("HEADERS padding longer than the frame"));
    }
    Ok(HeadersFragment {
        priority,
        fragment: &body[..body.len() - padding],
    })
}

fn frame_header(out: &mut Vec<u8>, length: usize, frame_type: u8, flags: u8, stream: [u8; 4]) {
    debug_assert!(
        length <= FRAME_PAYLOAD_BYTES_MIN_MAX,
        "frame of {length} bytes"
    );
    out.extend_from_slice(&[
        (length >> 16) as u8,
        (length >> 8) as u8,
        length as u8,
        frame_type,
        flags,
    ]);
    out.extend_from_slice(&stream);
}

/// Emits `block` as one HEADERS frame and as many CONTINUATIONs as needed.
fn emit_header_frames(pending: &PendingBlock, block: &[u8], out: &mut Vec<u8>) {
    let priority_bytes = if pending.priority.is_some() { 5 } else { 0 };
    let first_room = FRAME_PAYLOAD_BYTES_MIN_MAX - priority_bytes;
    let first_len = block.len().min(first_room);
    let mut flags = 0;
    if pending.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if pending.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if first_len == block.len() {
        flags |= FLAG_END_HEADERS;
    }
    frame_header(
        out,
        first_len + priority_bytes,
        TYPE_HEADERS,
        flags,
        pending.stream_id,
    );
    if let Some(p) = pending.priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(&block[..first_len]);
    let mut rest = &block[first_len..];
    while !rest.is_empty() {
        let len = rest.len().min(FRAME_PAYLOAD_BYTES_MIN_MAX);
        let flags = if len == rest.len() {
            FLAG_END_HEADERS
        } else {
            0
        };
        frame_header(out, len, TYPE_CONTINUATION, flags, pending.stream_id);
        out.extend_from_slice(&rest[..len]);
        rest = &rest[len..];
    }
}

/// An accepted connection whose client → server bytes go through a [`Transcoder`].
pub struct AuthorityRepair<IO> {
    inner: IO,
    transcoder: Transcoder,
    /// Transformed bytes not yet handed to the reader.
    ready: Vec<u8>,
    ready_at: usize,
    chunk: Box<[u8]>,
}

impl<IO> AuthorityRepair<IO> {
    pub fn new(inner: IO) -> Self {
        AuthorityRepair {
            inner,
            transcoder: Transcoder::default(),
            ready: Vec::new(),
            ready_at: 0,
            chunk: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityRepair<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_at == this.ready.len() && this.transcoder.is_passthrough() {
                // Nothing held back: read straight into the caller's buffer.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.ready_at < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_at);
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                if this.ready_at == this.ready.len() {
                    this.ready.clear();
                    this.ready_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let filled = chunk.filled();
                    if filled.is_empty() {
                        // End of stream: whatever is still buffered was an incomplete frame.
                        return Poll::Ready(Ok(()));
                    }
                    this.transcoder.feed(filled, &mut this.ready)?;
                    // Loop: hand out what became ready, or read more if a frame is incomplete.
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityRepair<IO>
{
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(frame_type: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_header(
            &mut out,
            payload.len(),
            frame_type,
            flags,
            stream.to_be_bytes(),
        );
        out.extend_from_slice(payload);
        out
    }

    /// Splits the server-side byte stream back into frames, decoding header blocks.
    fn server_view(bytes: &[u8], decoder: &mut loona_hpack::Decoder) -> Vec<(u8, u8, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut at = PREFACE.len();
        let mut frames = Vec::new();
        let mut block = Vec::new();
        while at < bytes.len() {
            let h = &bytes[at..at + 9];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let payload = &bytes[at + 9..at + 9 + len];
            assert!(len <= FRAME_PAYLOAD_BYTES_MIN_MAX, "frame of {len} bytes");
            match h[3] {
                TYPE_HEADERS | TYPE_CONTINUATION => {
                    let skip = if h[3] == TYPE_HEADERS && h[4] & FLAG_PRIORITY != 0 {
                        5
                    } else {
                        0
                    };
                    block.extend_from_slice(&payload[skip..]);
                    if h[4] & FLAG_END_HEADERS != 0 {
                        let headers = decoder.decode(&block).expect("server decodes");
                        let text: Vec<String> = headers
                            .iter()
                            .map(|(n, v)| {
                                format!(
                                    "{}={}",
                                    String::from_utf8_lossy(n),
                                    String::from_utf8_lossy(v)
                                )
                            })
                            .collect();
                        frames.push((TYPE_HEADERS, h[4], text.join(" ").into_bytes()));
                        block.clear();
                    }
                }
                t => frames.push((t, h[4], payload.to_vec())),
            }
            at += 9 + len;
        }
        frames
    }

    #[test]
    fn a_url_authority_is_repaired_and_a_valid_one_kept() {
        assert_eq!(
            repair_authority(b"http://127.0.0.1:2379"),
            Some(b"127.0.0.1:2379".to_vec())
        );
        assert_eq!(
            repair_authority(b"https://node1:2379/"),
            Some(b"node1:2379".to_vec())
        );
        assert_eq!(repair_authority(b"127.0.0.1:2379"), None);
        assert_eq!(repair_authority(b"unix://x y"), None);
        assert_eq!(repair_authority(b"http://bad host:1"), None);
    }

    #[test]
    fn header_blocks_are_transcoded_across_frames_and_table_state_stays_in_step() {
        // A client encoder that indexes everything, as Go's does: the second request refers to
        // the dynamic-table entries of the first, including the URL authority.
        let mut client = loona_hpack::Encoder::new();
        let first: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
            (b":authority", b"http://127.0.0.1:2379"),
            (b"content-type", b"application/grpc"),
        ];
        let block_1 = client.encode(first.iter().copied());
        let block_2 = client.encode(first.iter().copied());
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                             // The first block split over HEADERS (padded, with priority) + CONTINUATION.
        let split = block_1.len() / 2;
        let mut headers_payload = vec![3u8]; // pad length
        headers_payload.extend_from_slice(&[0, 0, 0, 0, 15]); // priority
        headers_payload.extend_from_slice(&block_1[..split]);
        headers_payload.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            1,
            &headers_payload,
        ));
        input.extend(frame(
            TYPE_CONTINUATION,
            FLAG_END_HEADERS,
            1,
            &block_1[split..],
        ));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"grpc-body"));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &block_2,
        ));

        // Fed one byte at a time: frame boundaries never line up with reads.
        let mut transcoder = Transcoder::default();
        let mut out = Vec::new();
        for b in &input {
            transcoder
                .feed(std::slice::from_ref(b), &mut out)
                .expect("valid input");
        }
        assert_eq!(transcoder.repaired, 2);
        let mut server = loona_hpack::Decoder::new();
        let frames = server_view(&out, &mut server);
        let expected = ":method=POST :scheme=http :path=/etcdserverpb.Maintenance/Status \
                        :authority=127.0.0.1:2379 content-type=application/grpc";
        assert_eq!(frames.len(), 4, "{frames:?}");
        assert_eq!(frames[0].0, 0x4);
        assert_eq!(String::from_utf8_lossy(&frames[1].2), expected);
        assert_eq!(
            frames[1].1 & (FLAG_PRIORITY | FLAG_PADDED),
            FLAG_PRIORITY,
            "priority kept, padding dropped"
        );
        assert_eq!(frames[2], (0x0, FLAG_END_STREAM, b"grpc-body".to_vec()));
        assert_eq!(String::from_utf8_lossy(&frames[3].2), expected);
        assert_ne!(frames[3].1 & FLAG_END_STREAM, 0);
    }

    #[test]
    fn a_connection_whose_first_block_needs_no_repair_passes_through_byte_for_byte() {
        let mut client = loona_hpack::Encoder::new();
        let good: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.KV/Put"),
            (b":authority", b"127.0.0.1:2379"),
        ];
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &client.encode(good.iter().copied()),
        ));
        let head = input.len();
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"body"));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &client.encode(good.iter().copied()),
        ));
        let mut transcoder = Transcoder::default();
        let mut out = Vec::new();
        // The first block arrives in pieces, the rest in one read.
        for b in &input[..head] {
            transcoder
                .feed(std::slice::from_ref(b), &mut out)
                .expect("valid");
        }
        assert!(transcoder.is_passthrough());
        transcoder.feed(&input[head..], &mut out).expect("valid");
        assert_eq!(out, input, "verbatim");
        assert_eq!(transcoder.repaired, 0);
    }

    #[test]
    fn a_large_header_block_is_re_emitted_within_the_minimum_frame_size() {
        let mut client = loona_hpack::Encoder::new();
        let big = vec![b'x'; 40_000];
        let headers: Vec<(&[u8], &[u8])> =
            vec![(b":authority", b"http://h:1"), (b"x-big", big.as_slice())];
        let block = client.encode(headers.iter().copied());
        let mut input = PREFACE.to_vec();
        let mut rest = block.as_slice();
        let mut first = true;
        while !rest.is_empty() {
            let n = rest.len().min(16_000);
            let end = if n == rest.len() { FLAG_END_HEADERS } else { 0 };
            let t = if first {
                TYPE_HEADERS
            } else {
                TYPE_CONTINUATION
            };
            input.extend(frame(t, end, 1, &rest[..n]));
            rest = &rest[n..];
            first = false;
        }
        let mut transcoder = Transcoder::default();
        let mut out = Vec::new();
        transcoder.feed(&input, &mut out).expect("valid");
        let frames = server_view(&out, &mut loona_hpack::Decoder::new());
        assert_eq!(frames.len(), 1);
        assert!(String::from_utf8_lossy(&frames[0].2).starts_with(":authority=h:1 x-big=xxx"));
    }

    #[test]
    fn protocol_errors_end_the_connection_and_non_http2_passes_through() {
        let mut t = Transcoder::default();
        let mut out = Vec::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b"x"));
        assert!(t.feed(&input, &mut out).is_err());

        let mut t = Transcoder::default();
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff],
        ));
        assert!(t.feed(&input, &mut Vec::new()).is_err(), "bad HPACK");

        let mut t = Transcoder::default();
        let mut out = Vec::new();
        t.feed(b"PRI * HTTP/1.1\r\n", &mut out)
            .expect("passthrough");
        t.feed(b"more", &mut out).expect("passthrough");
        assert_eq!(out, b"PRI * HTTP/1.1\r\nmore");
    }
}
