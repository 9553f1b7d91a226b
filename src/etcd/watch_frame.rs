//! The wire form of the responses a `Watch` stream sends, and the gRPC codec that writes them.
//!
//! A put under a prefix that 1,000 watchers watch is 1,000 responses that differ only in their
//! `watch_id`. Building each as its own [`WatchResponse`] (a copy of the events) and encoding it
//! with prost costs the node's one thread about a microsecond per delivered event, most of it
//! copying, encoding and freeing the same bytes again and again. Here one revision's events, as
//! a group of watchers selected them, become a [`SharedEvents`]: the response header and the
//! events are encoded once, and each watcher's response ([`WatchFrame::Shared`]) is those bytes
//! with its own `watch_id` written between them.
//!
//! Invariants:
//! - A [`WatchFrame`] encodes to exactly the bytes prost writes for
//!   [`WatchFrame::into_response`] (fields in number order: `header` 1, `watch_id` 2, then the
//!   events, field 11; a `watch_id` of 0 omitted, as proto3 does); a test compares them.
//! - [`SharedEvents`] is immutable once built, so any number of streams may hold it.

use std::sync::Arc;

use prost::bytes::BufMut;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::etcdpb::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};
use crate::etcdpb::mvccpb::Event;

/// `WatchResponse`'s field numbers (etcd's rpc.proto).
const HEADER_FIELD: u32 = 1;
const WATCH_ID_FIELD: u32 = 2;
const EVENTS_FIELD: u32 = 11;

/// One revision's events as a group of watchers selected them, encoded once for all of them.
#[derive(Debug)]
pub struct SharedEvents {
    header: ResponseHeader,
    events: Vec<Event>,
    /// `header` as field 1 of a `WatchResponse`: key, length, message.
    header_bytes: Vec<u8>,
    /// Each event as field 11 of a `WatchResponse`, in order.
    events_bytes: Vec<u8>,
}

impl SharedEvents {
    pub fn new(header: ResponseHeader, events: Vec<Event>) -> SharedEvents {
        let mut header_bytes = Vec::with_capacity(2 + header.encoded_len());
        prost::encoding::message::encode(HEADER_FIELD, &header, &mut header_bytes);
        let mut events_bytes = Vec::with_capacity(
            events
                .iter()
                .map(|e| 2 + prost::length_delimiter_len(e.encoded_len()) + e.encoded_len())
                .sum(),
        );
        for event in &events {
            prost::encoding::message::encode(EVENTS_FIELD, event, &mut events_bytes);
        }
        SharedEvents {
            header,
            events,
            header_bytes,
            events_bytes,
        }
    }

    /// The events, for whoever needs them decoded (the JSON gateway).
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}

/// One response of a watch stream as it leaves the node.
#[derive(Debug)]
pub enum WatchFrame {
    /// A response of its own: created, cancelled, progress, a catch-up batch, a fragment.
    Owned(WatchResponse),
    /// `watch_id`'s view of a revision shared with other watchers.
    Shared {
        body: Arc<SharedEvents>,
        watch_id: i64,
    },
}

impl WatchFrame {
    /// The message this frame is on the wire.
    pub fn into_response(self) -> WatchResponse {
        match self {
            WatchFrame::Owned(response) => response,
            WatchFrame::Shared { body, watch_id } => WatchResponse {
                header: Some(body.header),
                watch_id,
                events: body.events.clone(),
                ..WatchResponse::default()
            },
        }
    }

    /// Writes the frame's protobuf bytes (without gRPC's length prefix).
    pub fn encode(&self, buf: &mut impl BufMut) {
        match self {
            WatchFrame::Owned(response) => response.encode_raw(buf),
            WatchFrame::Shared { body, watch_id } => {
                buf.put_slice(&body.header_bytes);
                if *watch_id != 0 {
                    prost::encoding::int64::encode(WATCH_ID_FIELD, watch_id, buf);
                }
                buf.put_slice(&body.events_bytes);
            }
        }
    }

    /// The number of bytes [`WatchFrame::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match self {
            WatchFrame::Owned(response) => response.encoded_len(),
            WatchFrame::Shared { body, watch_id } => {
                let id = if *watch_id != 0 {
                    prost::encoding::int64::encoded_len(WATCH_ID_FIELD, watch_id)
                } else {
                    0
                };
                body.header_bytes.len() + id + body.events_bytes.len()
            }
        }
    }
}

/// The `Watch` method's codec: requests decoded by prost, responses written by
/// [`WatchFrame::encode`].
#[derive(Clone, Copy, Debug, Default)]
pub struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = WatchFrame;
    type Decode = WatchRequest;
    type Encoder = WatchCodec;
    type Decoder = WatchCodec;

    fn encoder(&mut self) -> Self::Encoder {
        WatchCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        WatchCodec
    }
}

impl Encoder for WatchCodec {
    type Item = WatchFrame;
    type Error = Status;

    fn encode(&mut self, item: WatchFrame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst);
        Ok(())
    }
}

impl Decoder for WatchCodec {
    type Item = WatchRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<WatchRequest>, Status> {
        WatchRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode a WatchRequest: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdpb::mvccpb::{event::EventType, KeyValue};

    fn event(key: &[u8], value: &[u8], revision: i64, prev: bool) -> Event {
        let kv = |value: &[u8], revision: i64| KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: 2,
            mod_revision: revision,
            version: revision - 1,
            lease: 0,
        };
        Event {
            r#type: EventType::Put as i32,
            kv: Some(kv(value, revision)),
            prev_kv: prev.then(|| kv(b"older", revision - 1)),
        }
    }

    #[test]
    fn a_shared_frame_encodes_to_the_bytes_prost_writes_for_its_response() {
        let header = ResponseHeader {
            cluster_id: 0x1234_5678_9abc_def0,
            member_id: 7,
            revision: 300,
            raft_term: 4,
        };
        let events = vec![
            event(b"/a/1", &[1; 32], 300, false),
            event(b"/a/2", &[2; 300], 300, true),
        ];
        let body = Arc::new(SharedEvents::new(header, events));
        // 0: proto3 omits it; negative ids take ten bytes.
        for watch_id in [0, 1, 127, 128, 1 << 40, -1] {
            let frame = WatchFrame::Shared {
                body: Arc::clone(&body),
                watch_id,
            };
            let mut ours = Vec::new();
            frame.encode(&mut ours);
            assert_eq!(ours.len(), frame.encoded_len(), "watch_id {watch_id}");
            let response = frame.into_response();
            assert_eq!(ours, response.encode_to_vec(), "watch_id {watch_id}");
            assert_eq!(response.watch_id, watch_id);
            assert_eq!(WatchResponse::decode(&ours[..]).ok(), Some(response));
        }
        let empty = WatchFrame::Shared {
            body: Arc::new(SharedEvents::new(ResponseHeader::default(), Vec::new())),
            watch_id: 3,
        };
        let mut ours = Vec::new();
        empty.encode(&mut ours);
        assert_eq!(ours, empty.into_response().encode_to_vec());
    }
}
