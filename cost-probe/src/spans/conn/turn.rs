//! Turn-taking for protocols we do not parse (HTTP/2, other TCP): reads after a write start a
//! request, writes until the next read answer it.
use super::{Conn, Ctx, Flags, Protocol, RequestSpan, Response, Usage};

/// Turn-taking state for non-HTTP/1 protocols.
#[derive(Debug)]
pub(super) struct Turn {
    pub(super) id: u64,
    pub(super) start: u64,
    pub(super) bytes_in: u64,
    pub(super) resp: Option<Response>,
}

impl Conn {
    pub(super) fn turn_in(&mut self, ctx: &mut Ctx<'_>, ts: u64, len: u64) {
        if self.turn.as_ref().is_some_and(|t| t.resp.is_some()) {
            self.finish_turn(ctx, None, Flags::default());
        }
        if self.turn.is_none() {
            let id = ctx.new_id();
            ctx.out.started(id, ctx.conn, ts);
            self.turn = Some(Turn {
                id,
                start: ts,
                bytes_in: 0,
                resp: None,
            });
        }
        if let Some(t) = self.turn.as_mut() {
            t.bytes_in += len;
        }
    }

    pub(super) fn turn_out(&mut self, ctx: &mut Ctx<'_>, ts: u64, len: u64) {
        let Some(t) = self.turn.as_mut() else {
            ctx.stats.unsolicited_writes += 1;
            return;
        };
        let r = t.resp.get_or_insert_with(|| Response {
            first_byte: ts,
            ..Response::default()
        });
        r.bytes_out += len;
        r.last_ts = ts;
        r.body.count(ts, false);
    }

    pub(super) fn finish_turn(&mut self, ctx: &mut Ctx<'_>, closed_at: Option<u64>, extra: Flags) {
        let Some(t) = self.turn.take() else {
            return;
        };
        let proto = self.proto.unwrap_or(Protocol::Tcp);
        let mut flags = extra;
        if proto == Protocol::Http2 {
            flags.set(Flags::APPROXIMATE);
        }
        let end = match (&t.resp, closed_at) {
            (Some(r), _) => r.last_ts,
            (None, Some(c)) => {
                flags.set(Flags::NO_RESPONSE);
                c
            }
            (None, None) => t.start,
        };
        ctx.out.finished(RequestSpan {
            id: t.id,
            conn: ctx.conn,
            local: self.local,
            peer: self.peer,
            protocol: proto,
            method: None,
            path: None,
            status: None,
            start: t.start,
            end,
            first_byte: t.resp.as_ref().map(|r| r.first_byte),
            first_chunk: None,
            chunks: t.resp.as_ref().map(|r| r.body.writes),
            bytes_in: t.bytes_in,
            bytes_out: t.resp.as_ref().map_or(0, |r| r.bytes_out),
            model: None,
            usage: Usage::default(),
            timings: None,
            flags,
            trace_parent: None,
            request_hash: None,
        });
    }
}
