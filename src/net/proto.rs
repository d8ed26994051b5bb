//! `/datamesh/shard/1`: the messages between a home node and a storage peer, and
//! their wire form.
//!
//! A message is one frame: a 4-byte big-endian length, then that many bytes of
//! postcard. Every length is bounded before anything is allocated for it, so a
//! malformed, truncated or oversized frame is an error on that stream only.

use crate::chunk::ShardId;
use libp2p::StreamProtocol;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{Deserialize, Serialize};
use std::io;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/datamesh/shard/1");

/// Largest shard a peer accepts: a 64 MiB chunk (the largest `init` allows) split
/// into as few as one data shard.
pub const MAX_SHARD: usize = 64 << 20;
/// Largest frame: a shard plus its header.
pub const MAX_FRAME: usize = MAX_SHARD + 4096;
/// Most ids in one `Has`, `Delete`, `List` or `Verify` exchange.
pub const MAX_IDS: usize = 16 * 1024;
/// The most member devices a home tells its storage peers of.
pub const MAX_MEMBERS: usize = 4096;
/// The longest mesh key ring a home sends (its allowed list: 40 bytes an id).
pub const MAX_RING: usize = 1 << 20;
/// Longest frame of a message that carries no shard: a full page of
/// [`MAX_IDS`] inventory entries (at most 52 bytes each) with room to spare.
/// Only `Put` and `Data` may use the rest of [`MAX_FRAME`].
pub const MAX_SMALL_FRAME: usize = (1 << 20) + (64 << 10);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Store a shard; the peer checks that `data` hashes to `id`.
    Put {
        id: ShardId,
        /// Shared, not copied, by the sends of one shard to several peers.
        #[serde(with = "shared_bytes")]
        data: bytes::Bytes,
    },
    Get {
        id: ShardId,
    },
    Has {
        ids: Vec<ShardId>,
    },
    Delete {
        ids: Vec<ShardId>,
    },
    /// Make everything stored so far durable.
    Sync,
    /// Up to `max` held shards with ids after `after`, in id order.
    List {
        after: Option<ShardId>,
        max: u32,
    },
    /// Re-hash up to `max` held shards after `after` and report the bad ones.
    Verify {
        after: Option<ShardId>,
        max: u32,
    },
    Stat,
    /// The home asks a new storage peer to prove it was invited (last, so
    /// older peers only meet it as a request they cannot read).
    Hello,
    /// The home tells a storage peer its member devices (peer ids, as bytes):
    /// the whole list, which replaces the last one (last, as `Hello`).
    Members {
        ids: Vec<Vec<u8>>,
    },
    /// Keep this root record of the volume if it is newer (docs/DESIGN.md,
    /// "Namespace protection"); authorized by its signature, not the caller.
    PutRoot {
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    /// The newest root record kept.
    GetRoot,
    /// Up to `len` bytes of a shard from `offset`, unverified (the reader's
    /// segment tags check them); answered `Data`. Last, so an older peer
    /// only meets it as a request it cannot read (the reader then asks for
    /// the whole shard).
    GetRange {
        id: ShardId,
        offset: u64,
        len: u32,
    },
    /// The home's mesh key ring (docs/DESIGN.md, "Mesh key rotation"):
    /// kept when newer, and the peers it no longer allows are cut off. Last,
    /// so an older peer only meets it as a request it cannot read.
    MeshKeys {
        #[serde(with = "serde_bytes")]
        ring: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Done,
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Have(Vec<bool>),
    Missing,
    /// The peer holds the shard but its bytes no longer match the id.
    Corrupt,
    /// Over the peer's capacity (or its disk is full): place the shard elsewhere.
    Full,
    /// The bytes sent do not hash to the id given.
    BadHash,
    Failed(String),
    /// `(id, length, mtime in seconds)`; `more` when the listing goes on after the last.
    List {
        shards: Vec<(ShardId, u64, i64)>,
        more: bool,
    },
    Verified {
        checked: u32,
        bad: Vec<ShardId>,
        last: Option<ShardId>,
        more: bool,
    },
    Stat {
        shards: u64,
        used: u64,
        capacity: u64,
    },
    /// The caller lacks the right to this request (see `net::roles`); nothing
    /// was changed. Last, so homes from before roles never meet it.
    Refused(String),
    /// `admission_proof(secret of the token it joined with, its own id)`.
    Hello {
        proof: [u8; 32],
    },
    /// The answer to `GetRoot`: the newest root record kept, if any.
    Root(Option<serde_bytes::ByteBuf>),
}

impl Request {
    /// Checks the bounds serde cannot express.
    fn check(&self) -> io::Result<()> {
        let ok = match self {
            Request::Put { data, .. } => data.len() <= MAX_SHARD,
            Request::Has { ids } | Request::Delete { ids } => ids.len() <= MAX_IDS,
            Request::List { max, .. } | Request::Verify { max, .. } => *max as usize <= MAX_IDS,
            Request::GetRange { len, .. } => *len as usize <= MAX_SHARD,
            Request::Get { .. }
            | Request::Sync
            | Request::Stat
            | Request::Hello
            | Request::GetRoot => true,
            Request::PutRoot { record } => record.len() <= super::root::MAX_RECORD,
            Request::Members { ids } => {
                ids.len() <= MAX_MEMBERS && ids.iter().all(|i| i.len() <= 64)
            }
            Request::MeshKeys { ring } => ring.len() <= MAX_RING,
        };
        if ok {
            Ok(())
        } else {
            Err(invalid("request over its size limit"))
        }
    }
}

/// A peer's own text, cut to 200 characters (with its control characters
/// shown escaped): it goes into logs and error messages.
fn short(text: &str) -> String {
    let mut s: String = text
        .chars()
        .take(200)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    s
}

impl std::fmt::Display for Response {
    /// A short form for logs and errors: never a shard's bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Response::Done => write!(f, "done"),
            Response::Data(d) => write!(f, "{} bytes of data", d.len()),
            Response::Have(v) => write!(f, "an answer about {} shards", v.len()),
            Response::Missing => write!(f, "shard missing"),
            Response::Corrupt => write!(f, "shard corrupt on the peer's disk"),
            Response::Full => write!(f, "peer full"),
            Response::BadHash => write!(f, "bytes do not match the shard id"),
            Response::Failed(why) => write!(f, "failed: {}", short(why)),
            Response::List { shards, .. } => write!(f, "a list of {} shards", shards.len()),
            Response::Verified { checked, .. } => write!(f, "{checked} shards verified"),
            Response::Stat { .. } => write!(f, "usage figures"),
            Response::Refused(why) => write!(f, "refused: {}", short(why)),
            Response::Hello { .. } => write!(f, "an admission proof"),
            Response::Root(r) => match r {
                Some(r) => write!(f, "a root record of {} bytes", r.len()),
                None => write!(f, "no root record"),
            },
        }
    }
}

impl Request {
    /// The request's name, as a right: what a refusal names.
    pub fn right(&self) -> &'static str {
        match self {
            Request::Put { .. } => "Put",
            Request::Get { .. } => "Get",
            Request::Has { .. } => "Has",
            Request::Delete { .. } => "Delete",
            Request::Sync => "Sync",
            Request::List { .. } => "List",
            Request::Verify { .. } => "Verify",
            Request::Stat => "Stat",
            Request::Hello => "Hello",
            Request::Members { .. } => "Members",
            Request::PutRoot { .. } => "PutRoot",
            Request::GetRoot => "GetRoot",
            Request::MeshKeys { .. } => "MeshKeys",
            // Reading part of a shard is reading it.
            Request::GetRange { .. } => "Get",
        }
    }

    /// A root record's request: authorized by its signature, whoever asks.
    pub fn is_root(&self) -> bool {
        matches!(self, Request::PutRoot { .. } | Request::GetRoot)
    }

    /// Small enough to answer on the network thread: a put or get of a small
    /// shard, or a question about a few ids. Everything else goes to the
    /// blocking pool.
    pub fn is_quick(&self) -> bool {
        const SMALL: usize = 64 << 10;
        match self {
            Request::Put { data, .. } => data.len() <= SMALL,
            Request::Has { ids } => ids.len() <= 16,
            Request::Stat => true,
            _ => false,
        }
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

pub fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; 4];
    postcard::to_io(msg, &mut out).map_err(|e| invalid(&e.to_string()))?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        return Err(invalid("message over the frame limit"));
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes one frame's payload (what follows the length).
pub fn decode_request(payload: &[u8]) -> io::Result<Request> {
    let req: Request = postcard::from_bytes(payload).map_err(|e| invalid(&e.to_string()))?;
    req.check()?;
    Ok(req)
}

pub fn decode_response(payload: &[u8]) -> io::Result<Response> {
    postcard::from_bytes(payload).map_err(|e| invalid(&e.to_string()))
}

/// The postcard variant tags of the two messages that carry a shard, which are
/// read and written without a copy of the shard (`Request::Put`, `Response::Data`).
const PUT_TAG: u8 = 0;
const DATA_TAG: u8 = 1;
/// A frame's first allocation; larger frames grow as their bytes arrive, so a
/// lying length cannot make a reader allocate 64 MiB up front.
const FIRST_ALLOC: usize = 8 << 20;

async fn read_len<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<usize> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(invalid("frame length out of bounds"));
    }
    Ok(len)
}

pub(super) async fn read_exactly<T: AsyncRead + Unpin>(
    io: &mut T,
    len: usize,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    // Grown a step at a time and filled by `read_exact`: futures'
    // `read_to_end` zeroes ahead of each read and, when the bytes fill the
    // buffer exactly (a shard always does), doubles it to look for more, a
    // second zeroing and a copy of every shard received.
    let want = buf.len() + len;
    while buf.len() < want {
        let at = buf.len();
        let step = (want - at).min(FIRST_ALLOC);
        if buf.capacity() == 0 {
            // Fresh zeroed pages rather than a memset of the whole step.
            *buf = vec![0; step];
        } else {
            buf.resize(at + step, 0);
        }
        io.read_exact(&mut buf[at..]).await?;
    }
    Ok(())
}

/// A LEB128 length, as postcard writes one; returns it and the bytes it took.
async fn read_varint<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<(usize, usize)> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await?;
        v |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return usize::try_from(v)
                .map(|v| (v, i + 1))
                .map_err(|_| invalid("length overflow"));
        }
    }
    Err(invalid("bad length"))
}

fn varint(mut v: usize, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The shard of a `Put` or `Data` frame, read straight into its own buffer.
/// `header` bytes of the frame (tag, id) are read already.
async fn read_payload<T: AsyncRead + Unpin>(
    io: &mut T,
    len: usize,
    header: usize,
) -> io::Result<Vec<u8>> {
    let (n, vlen) = read_varint(io).await?;
    if n > MAX_SHARD || header + vlen + n != len {
        return Err(invalid("shard length does not match its frame"));
    }
    let mut data = Vec::new();
    read_exactly(io, n, &mut data).await?;
    Ok(data)
}

/// The rest of a frame whose first byte (`tag`) is read, as postcard.
async fn read_rest<T: AsyncRead + Unpin>(io: &mut T, len: usize, tag: u8) -> io::Result<Vec<u8>> {
    if len > MAX_SMALL_FRAME {
        return Err(invalid("a frame without a shard over its size limit"));
    }
    let mut buf = vec![tag];
    read_exactly(io, len - 1, &mut buf).await?;
    Ok(buf)
}

async fn read_tag<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<u8> {
    let mut tag = [0u8; 1];
    io.read_exact(&mut tag).await?;
    Ok(tag[0])
}

/// Writes a frame whose payload is `head` followed by `shard` (a varint length
/// then the bytes), without copying the shard into one buffer.
async fn write_shard_frame<T: AsyncWrite + Unpin>(
    io: &mut T,
    mut head: Vec<u8>,
    shard: &[u8],
) -> io::Result<()> {
    varint(shard.len(), &mut head);
    let len = head.len() + shard.len();
    if shard.len() > MAX_SHARD {
        return Err(invalid("shard over the size limit"));
    }
    io.write_all(&(len as u32).to_be_bytes()).await?;
    io.write_all(&head).await?;
    io.write_all(shard).await?;
    io.close().await
}

async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, frame: Vec<u8>) -> io::Result<()> {
    io.write_all(&frame).await?;
    io.close().await
}

/// `Bytes` in the encoding of the `Vec<u8>` it stands for (postcard: a
/// length, then the bytes).
mod shared_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &bytes::Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        serde_bytes::ByteBuf::deserialize(d).map(|b| b.into_vec().into())
    }
}

#[derive(Clone, Default)]
pub struct WireCodec;

impl libp2p::request_response::Codec for WireCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let len = read_len(io).await?;
        let tag = read_tag(io).await?;
        if tag == PUT_TAG {
            let mut id = [0u8; 32];
            io.read_exact(&mut id).await?;
            let data = read_payload(io, len, 33).await?;
            return Ok(Request::Put {
                id: ShardId(id),
                data: data.into(),
            });
        }
        decode_request(&read_rest(io, len, tag).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let len = read_len(io).await?;
        let tag = read_tag(io).await?;
        if tag == DATA_TAG {
            return read_payload(io, len, 1).await.map(Response::Data);
        }
        decode_response(&read_rest(io, len, tag).await?)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        req.check()?;
        if let Request::Put { id, data } = &req {
            let mut head = vec![PUT_TAG];
            head.extend_from_slice(&id.0);
            return write_shard_frame(io, head, data).await;
        }
        write_frame(io, encode(&req)?).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        if let Response::Data(data) = &res {
            return write_shard_frame(io, vec![DATA_TAG], data).await;
        }
        write_frame(io, encode(&res)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::futures::executor::block_on;
    use libp2p::request_response::Codec as _;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = ShardId> {
        any::<[u8; 32]>().prop_map(ShardId)
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (id(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(id, data)| {
                Request::Put {
                    id,
                    data: data.into(),
                }
            }),
            id().prop_map(|id| Request::Get { id }),
            proptest::collection::vec(id(), 0..20).prop_map(|ids| Request::Has { ids }),
            proptest::collection::vec(id(), 0..20).prop_map(|ids| Request::Delete { ids }),
            Just(Request::Sync),
            Just(Request::Stat),
            (proptest::option::of(id()), 0u32..100)
                .prop_map(|(after, max)| Request::List { after, max }),
            Just(Request::Hello),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5)
                .prop_map(|ids| Request::Members { ids }),
            proptest::collection::vec(any::<u8>(), 0..300)
                .prop_map(|record| Request::PutRoot { record }),
            Just(Request::GetRoot),
            proptest::collection::vec(any::<u8>(), 0..300)
                .prop_map(|ring| Request::MeshKeys { ring }),
            (id(), any::<u64>(), 0u32..1 << 20).prop_map(|(id, offset, len)| Request::GetRange {
                id,
                offset,
                len
            }),
        ]
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Response::Data),
            Just(Response::Done),
            Just(Response::Missing),
            Just(Response::Full),
            proptest::collection::vec(any::<bool>(), 0..20).prop_map(Response::Have),
            ".{0,40}".prop_map(Response::Failed),
            ".{0,40}".prop_map(Response::Refused),
            (
                proptest::collection::vec((id(), any::<u64>(), any::<i64>()), 0..10),
                any::<bool>()
            )
                .prop_map(|(shards, more)| Response::List { shards, more }),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|r| Response::Root(r.map(serde_bytes::ByteBuf::from))),
        ]
    }

    fn read_req(bytes: &[u8]) -> io::Result<Request> {
        let mut io = bytes;
        block_on(WireCodec.read_request(&PROTOCOL, &mut io))
    }

    fn read_res(bytes: &[u8]) -> io::Result<Response> {
        let mut io = bytes;
        block_on(WireCodec.read_response(&PROTOCOL, &mut io))
    }

    proptest! {
        /// What the codec writes is postcard's own encoding (the shard-carrying
        /// messages are written in pieces), and reads back as it was.
        #[test]
        fn requests_round_trip(req in request()) {
            let frame = encode(&req).unwrap();
            let mut written = Vec::new();
            block_on(WireCodec.write_request(&PROTOCOL, &mut written, req.clone())).unwrap();
            prop_assert_eq!(&written, &frame);
            prop_assert_eq!(read_req(&frame).unwrap(), req);
        }

        #[test]
        fn responses_round_trip(res in response()) {
            let frame = encode(&res).unwrap();
            let mut written = Vec::new();
            block_on(WireCodec.write_response(&PROTOCOL, &mut written, res.clone())).unwrap();
            prop_assert_eq!(&written, &frame);
            prop_assert_eq!(read_res(&frame).unwrap(), res);
        }

        #[test]
        fn truncated_responses_are_errors(res in response(), cut in any::<prop::sample::Index>()) {
            let frame = encode(&res).unwrap();
            let cut = cut.index(frame.len());
            prop_assert!(read_res(&frame[..cut]).is_err());
        }

        #[test]
        fn truncated_frames_are_errors(req in request(), cut in any::<prop::sample::Index>()) {
            let frame = encode(&req).unwrap();
            let cut = cut.index(frame.len());
            prop_assert!(read_req(&frame[..cut]).is_err());
        }

        /// Arbitrary bytes never panic the decoder and never make it allocate
        /// what a length field claims.
        #[test]
        fn garbage_is_an_error_not_a_crash(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = read_req(&bytes);
            let _ = read_res(&bytes);
            let _ = decode_response(&bytes);
        }

        /// Flipping bytes inside a valid frame gives a valid message or an error.
        #[test]
        fn mutated_frames_do_not_crash(req in request(), at in any::<prop::sample::Index>(), val in any::<u8>()) {
            let mut frame = encode(&req).unwrap();
            let i = at.index(frame.len());
            frame[i] = val;
            let _ = read_req(&frame);
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_reading() {
        let mut frame = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&[0; 16]);
        assert!(read_req(&frame).is_err());
    }

    #[test]
    fn a_large_frame_without_a_shard_is_refused() {
        // A 60 MiB "List" answer: within MAX_FRAME, far over a page.
        let len = 60usize << 20;
        let mut frame = (len as u32).to_be_bytes().to_vec();
        frame.push(8); // the List variant, not a shard-carrying one
        frame.extend(std::iter::repeat_n(0u8, 64));
        let err = read_res(&frame).unwrap_err();
        assert!(err.to_string().contains("size limit"), "{err}");
        // The largest real page fits.
        let shards = vec![(ShardId([0xff; 32]), u64::MAX, i64::MIN); MAX_IDS];
        let page = Response::List { shards, more: true };
        let mut frame = vec![0u8; 4];
        postcard::to_io(&page, &mut frame).unwrap();
        let n = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&n.to_be_bytes());
        assert!(frame.len() <= MAX_SMALL_FRAME);
        assert_eq!(read_res(&frame).unwrap(), page);
    }

    /// A shard over one growth step, delivered a few KiB at a time as a
    /// stream does, reads back whole; cut short, it is an error.
    #[test]
    fn a_shard_over_one_growth_step_arrives_whole() {
        struct Trickle<'a>(&'a [u8]);
        impl AsyncRead for Trickle<'_> {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                out: &mut [u8],
            ) -> std::task::Poll<io::Result<usize>> {
                let n = out.len().min(self.0.len()).min(5000);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                std::task::Poll::Ready(Ok(n))
            }
        }
        let data: Vec<u8> = (0..FIRST_ALLOC + 12345)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let res = Response::Data(data);
        let frame = encode(&res).unwrap();
        let read = |bytes: &[u8]| block_on(WireCodec.read_response(&PROTOCOL, &mut Trickle(bytes)));
        assert_eq!(read(&frame).unwrap(), res);
        let err = read(&frame[..frame.len() - 1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A put's shard is encoded as the `Vec<u8>` it was before it was
    /// shared: tag, id, length, bytes.
    #[test]
    fn a_put_keeps_its_wire_form() {
        let req = Request::Put {
            id: ShardId([9; 32]),
            data: vec![1, 2, 3].into(),
        };
        let mut want = vec![PUT_TAG];
        want.extend_from_slice(&[9; 32]);
        want.extend_from_slice(&[3, 1, 2, 3]);
        assert_eq!(postcard::to_allocvec(&req).unwrap(), want);
        assert_eq!(postcard::from_bytes::<Request>(&want).unwrap(), req);
    }

    #[test]
    fn too_many_ids_are_refused() {
        let req = Request::Has {
            ids: vec![ShardId([7; 32]); MAX_IDS + 1],
        };
        let mut frame = vec![0u8; 4];
        postcard::to_io(&req, &mut frame).unwrap();
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        assert!(read_req(&frame).is_err());
    }
}
