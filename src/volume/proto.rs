//! The volume socket's wire format, version 5 (version 1 was the admin
//! protocol's JSON lines on `mount.sock`, which answered status, repair and
//! scrub only).
//!
//! Every message is a frame: a 4-byte big-endian length, then that many bytes.
//! The first frame each way is the handshake, the same in every version: the
//! caller sends [`MAGIC`] and its version (u32, big-endian); the daemon
//! answers [`MAGIC`], its version, a status byte (0 welcome, 1 refused) and,
//! when refused, why (UTF-8). A daemon of another version refuses, naming
//! both. After it, frames are postcard-encoded [`ToDaemon`] and [`FromDaemon`].
//!
//! Calls are made one at a time on a connection: [`ToDaemon::Call`], then the
//! daemon's [`FromDaemon::Progress`] frames (long operations), its
//! [`FromDaemon::Data`] frames ([`Request::ReadFile`]), and one
//! [`FromDaemon::Done`]. [`Request::PutFile`] is followed by the caller's
//! `Data` frames and an [`ToDaemon::End`] (or [`ToDaemon::Abort`] when reading
//! the source failed); the daemon answers `Done` once all of it has been read,
//! the file committed or the put undone. Data frames carry at most
//! [`DATA_FRAME`] bytes. Errors keep their meaning ([`Kind`]) and their text.

use super::{Ask, ChunkInfo, NewFile, Report};
use crate::data::{CheckReport, Usage};
use crate::error::Kind;
use crate::types::{Attr, DirEntry, Ino};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::io::{self, Read, Write};

/// The protocol version this build speaks.
pub const VERSION: u32 = 5;
/// The first bytes of each side's handshake.
pub const MAGIC: &[u8; 8] = b"dmvolume";
/// The most file bytes one data frame carries.
pub const DATA_FRAME: usize = 1 << 20;
/// The longest frame a daemon reads (a data frame and its envelope).
pub const MAX_TO_DAEMON: usize = DATA_FRAME + 4096;
/// The longest frame a caller reads (a status report of many peers).
pub const MAX_FROM_DAEMON: usize = 64 << 20;

/// One operation of [`super::Volume`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Lookup {
        parent: Ino,
        name: ByteBuf,
    },
    Getattr(Ino),
    Readdir {
        ino: Ino,
        offset: u64,
        max: u32,
    },
    Readlink(Ino),
    Mkdir {
        parent: Ino,
        name: ByteBuf,
        perm: u16,
        uid: u32,
        gid: u32,
    },
    Symlink {
        parent: Ino,
        name: ByteBuf,
        target: ByteBuf,
        uid: u32,
        gid: u32,
    },
    Unlink {
        parent: Ino,
        name: ByteBuf,
    },
    Rmdir {
        parent: Ino,
        name: ByteBuf,
    },
    Rename {
        from: Ino,
        name: ByteBuf,
        to: Ino,
        new_name: ByteBuf,
    },
    /// Followed by the caller's data frames and `End`.
    PutFile(NewFile),
    /// Answered with data frames, then `Done(Count)`.
    ReadFile(Ino),
    Chunks(Ino),
    Usage,
    Check {
        repair: bool,
    },
    Gc {
        grace_secs: u64,
    },
    Mesh(Ask),
    /// What this caller changed is durable (see [`super::Volume::barrier`]).
    Barrier,
    /// Entries with their attributes (version 3).
    ReaddirPlus {
        ino: Ino,
        offset: u64,
        max: u32,
    },
    /// The volume's parameters (version 3).
    Params,
    /// Create, list or delete snapshots (version 4).
    Snapshot(SnapshotOp),
}

/// What `datamesh snapshot` asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotOp {
    Create(ByteBuf),
    List,
    Delete(ByteBuf),
}

/// One snapshot, as `snapshot list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapInfo {
    pub name: ByteBuf,
    pub created: crate::types::Timestamp,
    /// Stored bytes of chunks the live files no longer hold.
    pub pinned_bytes: u64,
}

/// What a call returns when it succeeds.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Attr(Attr),
    Entries(Vec<DirEntry>),
    Bytes(ByteBuf),
    Unit,
    Count(u64),
    Chunks(Vec<ChunkInfo>),
    Usage(Usage),
    Check(CheckReport),
    Report(Box<Report>),
    EntriesPlus(Vec<(DirEntry, Attr)>),
    Params(crate::meta::VolumeParams),
    /// The snapshots after a `Snapshot` call.
    Snapshots(Vec<SnapInfo>),
}

/// A failed call: what it means and what happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub kind: Kind,
    pub text: String,
}

impl From<&crate::Error> for WireError {
    fn from(e: &crate::Error) -> Self {
        WireError {
            kind: e.kind(),
            text: e.to_string(),
        }
    }
}

impl From<WireError> for crate::Error {
    fn from(e: WireError) -> Self {
        crate::Error::from_kind(e.kind, e.text)
    }
}

/// Frames from a caller, after the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToDaemon {
    Call(Request),
    Data(ByteBuf),
    End,
    /// The caller could not read its source; the put is undone.
    Abort(String),
}

/// Frames from the daemon, after the handshake.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromDaemon {
    Progress { done: u64, total: u64 },
    Data(ByteBuf),
    Done(Result<Reply, WireError>),
}

/// Writes one frame.
pub fn write_frame(w: &mut dyn Write, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame too long"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// Reads one frame of at most `max` bytes; `None` at a clean end of stream
/// (before the frame's first byte).
pub fn read_frame(r: &mut dyn Read, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes, more than the {max} allowed"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

pub fn send<T: Serialize>(w: &mut dyn Write, msg: &T) -> io::Result<()> {
    let body = postcard::to_stdvec(msg).map_err(io::Error::other)?;
    write_frame(w, &body)
}

/// Reads and decodes one message; `None` at a clean end of stream.
pub fn recv<T: DeserializeOwned>(r: &mut dyn Read, max: usize) -> io::Result<Option<T>> {
    let Some(body) = read_frame(r, max)? else {
        return Ok(None);
    };
    postcard::from_bytes(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad frame: {e}")))
}

/// The caller's handshake frame.
pub fn hello() -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend(VERSION.to_be_bytes());
    b
}

/// The daemon's reading of a caller's handshake: its version, or why not.
pub fn check_hello(frame: &[u8]) -> Result<u32, String> {
    let Some(v) = frame.strip_prefix(MAGIC).filter(|v| v.len() == 4) else {
        return Err("not a datamesh volume-protocol handshake".into());
    };
    let v = u32::from_be_bytes(v.try_into().expect("4 bytes"));
    if v != VERSION {
        return Err(format!(
            "this daemon speaks volume protocol version {VERSION}, the caller version {v}: \
             use the same datamesh for both (stop the daemon, or unmount, and start it \
             again after an upgrade)"
        ));
    }
    Ok(v)
}

/// The daemon's handshake answer: welcome, or refused with `why`.
pub fn welcome(refused: Option<&str>) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend(VERSION.to_be_bytes());
    match refused {
        None => b.push(0),
        Some(why) => {
            b.push(1);
            b.extend(why.as_bytes());
        }
    }
    b
}

/// The caller's reading of the daemon's handshake answer.
pub fn check_welcome(frame: &[u8]) -> Result<(), String> {
    let Some(rest) = frame.strip_prefix(MAGIC).filter(|r| r.len() >= 5) else {
        return Err("the socket's answer is not a datamesh daemon's".into());
    };
    let v = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
    match rest[4] {
        0 if v == VERSION => Ok(()),
        0 => Err(format!(
            "the daemon speaks volume protocol version {v}, this datamesh version {VERSION}"
        )),
        _ => Err(String::from_utf8_lossy(&rest[5..]).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FileKind;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = ByteBuf> {
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(ByteBuf::from)
    }

    fn ino() -> impl Strategy<Value = Ino> {
        any::<u64>().prop_map(Ino)
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (ino(), bytes()).prop_map(|(parent, name)| Request::Lookup { parent, name }),
            ino().prop_map(Request::Getattr),
            (ino(), any::<u64>(), any::<u32>()).prop_map(|(ino, offset, max)| Request::Readdir {
                ino,
                offset,
                max
            }),
            (ino(), any::<u64>(), any::<u32>())
                .prop_map(|(ino, offset, max)| { Request::ReaddirPlus { ino, offset, max } }),
            Just(Request::Params),
            bytes().prop_map(|n| Request::Snapshot(SnapshotOp::Create(n))),
            bytes().prop_map(|n| Request::Snapshot(SnapshotOp::Delete(n))),
            Just(Request::Snapshot(SnapshotOp::List)),
            ino().prop_map(Request::Readlink),
            (ino(), bytes(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
                |(parent, name, perm, uid, gid)| Request::Mkdir {
                    parent,
                    name,
                    perm,
                    uid,
                    gid
                }
            ),
            (ino(), bytes(), bytes(), any::<u32>(), any::<u32>()).prop_map(
                |(parent, name, target, uid, gid)| Request::Symlink {
                    parent,
                    name,
                    target,
                    uid,
                    gid
                }
            ),
            (ino(), bytes()).prop_map(|(parent, name)| Request::Unlink { parent, name }),
            (ino(), bytes()).prop_map(|(parent, name)| Request::Rmdir { parent, name }),
            (ino(), bytes(), ino(), bytes()).prop_map(|(from, name, to, new_name)| {
                Request::Rename {
                    from,
                    name,
                    to,
                    new_name,
                }
            }),
            (ino(), bytes(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
                |(dir, name, perm, uid, gid)| Request::PutFile(NewFile {
                    dir,
                    name: name.into_vec(),
                    perm,
                    uid,
                    gid
                })
            ),
            ino().prop_map(Request::ReadFile),
            ino().prop_map(Request::Chunks),
            Just(Request::Usage),
            any::<bool>().prop_map(|repair| Request::Check { repair }),
            any::<u64>().prop_map(|grace_secs| Request::Gc { grace_secs }),
            prop_oneof![Just(Ask::Status), Just(Ask::Repair), Just(Ask::Scrub)]
                .prop_map(Request::Mesh),
            Just(Request::Barrier),
        ]
    }

    fn to_daemon() -> impl Strategy<Value = ToDaemon> {
        prop_oneof![
            request().prop_map(ToDaemon::Call),
            bytes().prop_map(ToDaemon::Data),
            Just(ToDaemon::End),
            ".{0,100}".prop_map(ToDaemon::Abort),
        ]
    }

    fn framed<T: Serialize>(msg: &T) -> Vec<u8> {
        let mut out = Vec::new();
        send(&mut out, msg).unwrap();
        out
    }

    proptest! {
        #[test]
        fn caller_frames_round_trip(msgs in proptest::collection::vec(to_daemon(), 1..8)) {
            let mut wire = Vec::new();
            for m in &msgs {
                wire.extend(framed(m));
            }
            let mut r = &wire[..];
            for m in &msgs {
                let got: ToDaemon = recv(&mut r, MAX_TO_DAEMON).unwrap().unwrap();
                prop_assert_eq!(&got, m);
            }
            prop_assert!(recv::<ToDaemon>(&mut r, MAX_TO_DAEMON).unwrap().is_none());
        }

        #[test]
        fn damaged_frames_are_errors_not_panics(
            msg in to_daemon(), cut in 0usize..400, junk in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            let wire = framed(&msg);
            let mut damaged = wire[..cut.min(wire.len())].to_vec();
            damaged.extend(&junk);
            let mut r = &damaged[..];
            // Whatever it decodes to, it must not panic or over-allocate.
            while let Ok(Some(_)) = recv::<ToDaemon>(&mut r, MAX_TO_DAEMON) {}
            let mut r = &damaged[..];
            while let Ok(Some(_)) = recv::<FromDaemon>(&mut r, MAX_FROM_DAEMON) {}
        }

        #[test]
        fn errors_keep_their_kind_and_text(text in ".{0,100}", not_found in any::<bool>()) {
            let e = if not_found { crate::Error::NotFound } else { crate::Error::Db(text.clone()) };
            let back: FromDaemon = recv(
                &mut &framed(&FromDaemon::Done(Err(WireError::from(&e))))[..],
                MAX_FROM_DAEMON,
            ).unwrap().unwrap();
            let FromDaemon::Done(Err(w)) = back else { panic!("not an error") };
            let e2 = crate::Error::from(w);
            prop_assert_eq!(e2.kind(), e.kind());
            prop_assert_eq!(e2.to_string(), e.to_string());
            if not_found {
                prop_assert!(matches!(e2, crate::Error::NotFound));
            }
        }
    }

    #[test]
    fn a_frame_longer_than_allowed_is_refused_before_it_is_read() {
        let mut wire = (u32::MAX).to_be_bytes().to_vec();
        wire.extend([0u8; 16]);
        let err = read_frame(&mut &wire[..], MAX_TO_DAEMON).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
        // A stream that ends inside a frame is an error, not a clean end.
        let mut short = 10u32.to_be_bytes().to_vec();
        short.extend([1, 2, 3]);
        assert!(read_frame(&mut &short[..], MAX_TO_DAEMON).is_err());
        assert!(read_frame(&mut &[0u8, 0][..], MAX_TO_DAEMON).is_err());
        assert!(read_frame(&mut &[][..], MAX_TO_DAEMON).unwrap().is_none());
    }

    #[test]
    fn handshakes_name_both_versions() {
        assert_eq!(check_hello(&hello()), Ok(VERSION));
        let mut other = MAGIC.to_vec();
        other.extend(7u32.to_be_bytes());
        let err = check_hello(&other).unwrap_err();
        assert!(
            err.contains(&format!("version {VERSION}")) && err.contains("version 7"),
            "{err}"
        );
        assert!(check_hello(b"GET / HTTP/1.1").is_err());
        assert_eq!(check_welcome(&welcome(None)), Ok(()));
        let err = check_welcome(&welcome(Some("busy: try again"))).unwrap_err();
        assert_eq!(err, "busy: try again");
        let mut newer = MAGIC.to_vec();
        newer.extend(9u32.to_be_bytes());
        newer.push(0);
        let err = check_welcome(&newer).unwrap_err();
        assert!(err.contains("version 9"), "{err}");
        assert!(check_welcome(b"{\"version\":1}").is_err());
    }

    #[test]
    fn replies_survive_the_wire() {
        let attr = Attr {
            ino: Ino(5),
            kind: FileKind::Symlink,
            perm: 0o777,
            uid: 1,
            gid: 2,
            size: 3,
            atime: Default::default(),
            mtime: Default::default(),
            ctime: Default::default(),
            crtime: Default::default(),
            nlink: 1,
            rdev: 0,
            blocks: 0,
        };
        let entries = vec![DirEntry {
            ino: Ino(9),
            offset: 77,
            kind: FileKind::Dir,
            name: b"d\xff".to_vec(),
        }];
        for reply in [
            Reply::Attr(attr.clone()),
            Reply::Entries(entries.clone()),
            Reply::Report(Box::new(Report {
                peers: None,
                redundancy: Default::default(),
                data_shards: 4,
                parity_shards: 2,
                corrupt: vec!["ab".into()],
                unverified: Vec::new(),
                workers: Vec::new(),
                running: vec![crate::data::Pass {
                    what: "repair".into(),
                    done: 3,
                    total: 8,
                    started: 1_700_000_000,
                }],
            })),
        ] {
            let wire = framed(&FromDaemon::Done(Ok(reply)));
            let back: FromDaemon = recv(&mut &wire[..], MAX_FROM_DAEMON).unwrap().unwrap();
            match back {
                FromDaemon::Done(Ok(Reply::Attr(a))) => assert_eq!(a, attr),
                FromDaemon::Done(Ok(Reply::Entries(e))) => assert_eq!(e, entries),
                FromDaemon::Done(Ok(Reply::Report(r))) => {
                    assert_eq!(r.corrupt, vec!["ab".to_string()]);
                    assert_eq!(r.data_shards, 4);
                    assert_eq!(
                        (r.running[0].what.as_str(), r.running[0].total),
                        ("repair", 8)
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
