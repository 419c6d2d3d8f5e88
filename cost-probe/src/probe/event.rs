//! Kernel events: decoded in place from ring-buffer records, or owned for recorded fixtures.
use std::{
    mem::{offset_of, size_of},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use cost_probe_common::{
    BIG_HEAD_LEN, BigDataEvent, ConnEvent, DataEvent, EventHeader, EventKind, HEAD_LEN,
    MID_HEAD_LEN, MidDataEvent, TAIL_LEN,
};
use serde::{Deserialize, Serialize};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Identity of a connection: the process, its fd, and the accept time (fds are reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId {
    pub tgid: u32,
    pub fd: i32,
    pub id: u64,
}

/// One kernel event, over borrowed bytes (`Event<&[u8]>`, decoded in place from the ring buffer)
/// or owned ones ([`OwnedEvent`], for recorded fixtures and tests).
///
/// Serialized as one JSON object per line (`attach --record`), payload bytes as Latin-1 strings
/// so HTTP stays readable in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "ev",
    rename_all = "lowercase",
    bound(serialize = "B: AsRef<[u8]>", deserialize = "B: From<Vec<u8>>")
)]
pub enum Event<B> {
    Accept {
        ts: u64,
        conn: ConnId,
        peer: Option<SocketAddr>,
        listen_fd: i32,
        /// The kernel could not tell the socket family (no address buffer was passed).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        family_unknown: bool,
    },
    Data {
        ts: u64,
        conn: ConnId,
        dir: Direction,
        len: u64,
        #[serde(with = "latin1")]
        head: B,
        #[serde(with = "latin1", default = "latin1::empty")]
        tail: B,
    },
    Close {
        ts: u64,
        conn: ConnId,
    },
    #[serde(rename = "exit")]
    ProcExit {
        ts: u64,
        tgid: u32,
    },
    /// A process executed a new program (the agent's discovery).
    Exec {
        ts: u64,
        tgid: u32,
    },
}

/// An event that owns its payload bytes.
pub type OwnedEvent = Event<Vec<u8>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Bytes the server received.
    In,
    /// Bytes the server sent.
    Out,
}

impl<B: AsRef<[u8]>> Event<B> {
    #[must_use]
    pub fn ts(&self) -> u64 {
        match *self {
            Event::Accept { ts, .. }
            | Event::Data { ts, .. }
            | Event::Close { ts, .. }
            | Event::ProcExit { ts, .. }
            | Event::Exec { ts, .. } => ts,
        }
    }

    /// The same event over borrowed bytes.
    #[must_use]
    pub fn borrowed(&self) -> Event<&[u8]> {
        match self {
            &Event::Accept {
                ts,
                conn,
                peer,
                listen_fd,
                family_unknown,
            } => Event::Accept {
                ts,
                conn,
                peer,
                listen_fd,
                family_unknown,
            },
            Event::Data {
                ts,
                conn,
                dir,
                len,
                head,
                tail,
            } => Event::Data {
                ts: *ts,
                conn: *conn,
                dir: *dir,
                len: *len,
                head: head.as_ref(),
                tail: tail.as_ref(),
            },
            &Event::Close { ts, conn } => Event::Close { ts, conn },
            &Event::ProcExit { ts, tgid } => Event::ProcExit { ts, tgid },
            &Event::Exec { ts, tgid } => Event::Exec { ts, tgid },
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    Kind(u16),
    #[error("data record of {0} bytes matches no record size")]
    DataSize(usize),
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked above; T is a repr(C) integer-only type for which every bit
    // pattern is valid; read_unaligned copes with any alignment.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

fn conn_of(h: &EventHeader) -> ConnId {
    ConnId {
        tgid: h.tgid,
        fd: h.fd,
        id: h.conn_id,
    }
}

/// Decodes one ring-buffer record, borrowing its payload in place.
pub fn decode(bytes: &[u8]) -> Result<Event<&[u8]>, DecodeError> {
    let h: EventHeader = read(bytes)?;
    let kind = EventKind::from_u16(h.kind).ok_or(DecodeError::Kind(h.kind))?;
    Ok(match kind {
        EventKind::Read | EventKind::Write => {
            // The record's length says its head's capacity (one of three sizes, all laid out
            // as `DataRecord<N>`: the fixed part, the head, then the tail).
            let cap = match bytes.len() {
                n if n == size_of::<DataEvent>() => HEAD_LEN,
                n if n == size_of::<MidDataEvent>() => MID_HEAD_LEN,
                n if n == size_of::<BigDataEvent>() => BIG_HEAD_LEN,
                n => return Err(DecodeError::DataSize(n)),
            };
            // Only the fixed part is copied; the payload is borrowed in place.
            let len: u64 = read(&bytes[offset_of!(DataEvent, len)..])?;
            let head_len: u16 = read(&bytes[offset_of!(DataEvent, head_len)..])?;
            let tail_len: u16 = read(&bytes[offset_of!(DataEvent, tail_len)..])?;
            let head_at = offset_of!(DataEvent, head);
            let tail_at = head_at + cap;
            let head_len = usize::from(head_len).min(cap);
            let tail_len = usize::from(tail_len).min(TAIL_LEN);
            Event::Data {
                ts: h.ts_ns,
                conn: conn_of(&h),
                dir: if kind == EventKind::Read {
                    Direction::In
                } else {
                    Direction::Out
                },
                len,
                head: &bytes[head_at..head_at + head_len],
                tail: &bytes[tail_at..tail_at + tail_len],
            }
        }
        EventKind::Accept => {
            let c: ConnEvent = read(bytes)?;
            let ip = match c.family {
                AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                    c.peer_addr[0],
                    c.peer_addr[1],
                    c.peer_addr[2],
                    c.peer_addr[3],
                ))),
                AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(c.peer_addr))),
                _ => None,
            };
            Event::Accept {
                ts: h.ts_ns,
                conn: conn_of(&h),
                peer: ip.map(|ip| SocketAddr::new(ip, c.peer_port)),
                listen_fd: c.listen_fd,
                family_unknown: c.family == 0,
            }
        }
        EventKind::Close => Event::Close {
            ts: h.ts_ns,
            conn: conn_of(&h),
        },
        EventKind::ProcExit => Event::ProcExit {
            ts: h.ts_ns,
            tgid: h.tgid,
        },
        EventKind::Exec => Event::Exec {
            ts: h.ts_ns,
            tgid: h.tgid,
        },
    })
}

mod latin1 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<B: AsRef<[u8]>, S: Serializer>(b: &B, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(
            &b.as_ref()
                .iter()
                .map(|&c| char::from(c))
                .collect::<String>(),
        )
    }

    pub fn deserialize<'de, B: From<Vec<u8>>, D: Deserializer<'de>>(d: D) -> Result<B, D::Error> {
        let s = String::deserialize(d)?;
        s.chars()
            .map(|c| u8::try_from(u32::from(c)).map_err(serde::de::Error::custom))
            .collect::<Result<Vec<u8>, _>>()
            .map(B::from)
    }

    pub fn empty<B: From<Vec<u8>>>() -> B {
        B::from(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use cost_probe_common::DataRecord;

    use super::*;

    fn data_record(len: u64, head: &[u8], tail: &[u8]) -> Vec<u8> {
        record::<HEAD_LEN>(len, head, tail)
    }

    fn record<const N: usize>(len: u64, head: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut ev = Box::new(DataRecord::<N> {
            hdr: EventHeader {
                ts_ns: 7,
                conn_id: 9,
                tgid: 100,
                tid: 101,
                fd: 5,
                kind: EventKind::Write as u16,
                syscall: 44,
            },
            len,
            head_len: head.len() as u16,
            tail_len: tail.len() as u16,
            pad: 0,
            head: [0; N],
            tail: [0; TAIL_LEN],
        });
        ev.head[..head.len()].copy_from_slice(head);
        ev.tail[..tail.len()].copy_from_slice(tail);
        // SAFETY: DataRecord is repr(C) with no padding (sizes asserted in the common crate).
        unsafe {
            std::slice::from_raw_parts((&raw const *ev).cast::<u8>(), size_of::<DataRecord<N>>())
        }
        .to_vec()
    }

    /// A payload of production-size headers comes whole in the larger records; the head and
    /// tail are found from the record's length.
    #[test]
    fn decodes_every_record_size() {
        for (rec, len) in [
            (record::<MID_HEAD_LEN>(3000, &[b'a'; 3000], b""), 3000),
            (record::<BIG_HEAD_LEN>(12_000, &[b'b'; 12_000], b""), 12_000),
            (
                record::<BIG_HEAD_LEN>(65_536, &[b'c'; BIG_HEAD_LEN], b"end"),
                65_536,
            ),
        ] {
            let Event::Data {
                len: got,
                head,
                tail,
                ..
            } = decode(&rec).unwrap()
            else {
                panic!("not data")
            };
            assert_eq!(got, len);
            assert_eq!(head.len() as u64, len.min(BIG_HEAD_LEN as u64));
            assert_eq!(
                tail,
                if len > BIG_HEAD_LEN as u64 {
                    &b"end"[..]
                } else {
                    b""
                }
            );
        }
    }

    #[test]
    fn decodes_a_write_with_head_and_tail() {
        let rec = data_record(2000, b"HTTP/1.1 200 OK\r\n", b"0\r\n\r\n");
        let Event::Data {
            ts,
            conn,
            dir,
            len,
            head,
            tail,
        } = decode(&rec).unwrap()
        else {
            panic!("not data")
        };
        assert_eq!((ts, conn.tgid, conn.fd, conn.id), (7, 100, 5, 9));
        assert_eq!(dir, Direction::Out);
        assert_eq!(len, 2000);
        assert_eq!(head, b"HTTP/1.1 200 OK\r\n");
        assert_eq!(tail, b"0\r\n\r\n");
    }

    #[test]
    fn short_and_unknown_records_are_errors_not_panics() {
        assert_eq!(decode(&[0; 8]).unwrap_err(), DecodeError::Short(8));
        let mut rec = data_record(1, b"x", b"");
        rec[28] = 99;
        assert_eq!(decode(&rec).unwrap_err(), DecodeError::Kind(99));
        let rec = data_record(1, b"x", b"");
        assert_eq!(decode(&rec[..100]).unwrap_err(), DecodeError::DataSize(100));
    }

    #[test]
    fn owned_events_round_trip_through_json() {
        let rec = data_record(3, b"\x00\xff\r\n", b"");
        let ev = decode(&rec).unwrap();
        let line = serde_json::to_string(&ev).unwrap();
        let back: OwnedEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(back.borrowed(), ev);
    }
}
