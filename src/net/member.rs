//! `/datamesh/meta/1`: the transport between member devices and the home
//! node. The mesh carries its messages as opaque bytes; what they say is
//! [`crate::member`]'s. A message is one frame: a 4-byte big-endian
//! length, then the bytes; a request is at most [`MAX_REQUEST`], an answer at
//! most [`MAX_ANSWER`], checked before anything is allocated for them.

use libp2p::StreamProtocol;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::io;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/datamesh/meta/1");
/// A request: one namespace operation, or a file's whole chunk map to commit.
pub const MAX_REQUEST: usize = 4 << 20;
/// An answer: a listing, a report of many peers, a file's chunk map.
pub const MAX_ANSWER: usize = 64 << 20;
/// The answer of a home whose network task holds as many member calls as
/// it takes: the call was not run. No answer of the member protocol starts
/// so (a lone 0xff is not a whole postcard value).
pub const BUSY_ANSWER: &[u8] = &[0xff];
/// How long a member waits for one answer of the home.
pub const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Default)]
pub struct MetaCodec;

async fn read_bounded<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message of {len} bytes, over the {max} allowed"),
        ));
    }
    let mut buf = Vec::new();
    super::proto::read_exactly(io, len, &mut buf).await?;
    Ok(buf)
}

async fn write_bounded<T: AsyncWrite + Unpin>(
    io: &mut T,
    msg: &[u8],
    max: usize,
) -> io::Result<()> {
    if msg.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message of {} bytes, over the {max} allowed", msg.len()),
        ));
    }
    io.write_all(&(msg.len() as u32).to_be_bytes()).await?;
    io.write_all(msg).await?;
    io.close().await
}

impl libp2p::request_response::Codec for MetaCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_bounded(io, MAX_REQUEST).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_bounded(io, MAX_ANSWER).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_bounded(io, &req, MAX_REQUEST).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_bounded(io, &res, MAX_ANSWER).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;
    use proptest::prelude::*;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        libp2p::futures::executor::block_on(f)
    }

    proptest! {
        #[test]
        fn messages_round_trip_and_damage_is_an_error(
            msg in proptest::collection::vec(any::<u8>(), 0..2000),
            cut in 0usize..2010,
        ) {
            let mut wire = Vec::new();
            run(MetaCodec.write_request(&PROTOCOL, &mut wire, msg.clone())).unwrap();
            let back = run(MetaCodec.read_request(&PROTOCOL, &mut &wire[..])).unwrap();
            prop_assert_eq!(&back, &msg);
            if cut < wire.len() {
                let got = run(MetaCodec.read_request(&PROTOCOL, &mut &wire[..cut]));
                prop_assert!(got.is_err());
            }
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading() {
        let wire = (MAX_REQUEST as u32 + 1).to_be_bytes();
        let err = run(MetaCodec.read_request(&PROTOCOL, &mut &wire[..])).unwrap_err();
        assert!(err.to_string().contains("over the"), "{err}");
    }
}
