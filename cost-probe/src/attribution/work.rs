//! When did the server work for a request? Queue, prefill and decode windows inferred from what
//! the traffic shows, so an interval's energy goes to the requests the server was computing for,
//! not to the ones waiting in its queue.
//!
//! A request's life, as the span builder sees it: it arrives (`start`), waits in the server's
//! queue, is prefilled (the prompt goes through the model), then decodes (one chunk per token or
//! few tokens) until it ends. Only arrival, the first chunk and the end are observable on the
//! wire; where prefill began is inferred, in order of precedence:
//! 1. **timings**: the server reported its own (llama.cpp `timings`, Ollama durations): the
//!    work began `prompt_ms + predicted_ms` before the end (a non-streamed response, whose body
//!    is written at the end), or `prompt_ms` before the first chunk of a stream if that is
//!    earlier (a client that reads slowly makes the end trail the work);
//! 2. **stream**: a streamed response without timings: prefill took `rate × prompt size`, the
//!    rate learned from requests that arrived while the server had nothing else in flight (their
//!    time to first chunk is all prefill), capped at the observed time to first chunk;
//! 3. **overlap**: nothing better known: the request counts as worked on for as long as it was
//!    open (the method before this module, and still right for servers without a queue).

use serde::Serialize;

use crate::units::Nanos;

/// How a request's share of each interval was decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMethod {
    /// The server's own timings placed its prefill and decode.
    Timings,
    /// Streamed chunks placed its decode; prefill from a learned rate.
    Stream,
    /// By the time it was open.
    #[default]
    Overlap,
}

/// What the server reported of its own work on one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerWork {
    /// Prompt processing time (llama.cpp `prompt_ms`).
    pub prefill: Nanos,
    /// Generation time (llama.cpp `predicted_ms`).
    pub decode: Nanos,
    /// Prompt tokens the server actually processed (llama.cpp `prompt_n`, cached ones excluded).
    pub prefill_tokens: Option<u64>,
}

/// What is known of a request when it ends, beyond its span.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkHints {
    /// Prompt + completion tokens, for the token-weighted split.
    pub tokens: Option<u64>,
    pub prompt_tokens: Option<u64>,
    /// Request bytes, the prompt-size proxy when token counts are unknown.
    pub bytes_in: u64,
    pub server: Option<ServerWork>,
}

/// A half-open window `[start, end)`; `end` is `Nanos(u64::MAX)` while the request is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: Nanos,
    pub end: Nanos,
}

impl Window {
    #[must_use]
    pub fn len(&self) -> u64 {
        self.end.0.saturating_sub(self.start.0)
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// A request's inferred life: `[start, work_start)` queued, then prefill, then decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkWindows {
    pub method: SplitMethod,
    pub prefill: Window,
    pub decode: Window,
}

impl WorkWindows {
    /// When the server began working on the request.
    #[must_use]
    pub fn work_start(&self) -> Nanos {
        self.prefill.start
    }
}

/// What the windows are inferred from: the ledger's view of one span.
#[derive(Clone, Copy, Debug)]
pub struct SpanFacts {
    pub start: Nanos,
    pub end: Option<Nanos>,
    pub first_chunk: Option<Nanos>,
    pub hints: Option<WorkHints>,
}

const OPEN: Nanos = Nanos(u64::MAX);

/// Prefill rates learned from requests that did not wait: the median of the last samples, in
/// nanoseconds per prompt token and per request byte.
#[derive(Clone, Debug, Default)]
pub struct PrefillRates {
    per_token: Samples,
    per_byte: Samples,
}

/// A small ring of recent samples; the median resists the odd request that did wait after all.
#[derive(Clone, Debug, Default)]
struct Samples {
    ring: Vec<u64>,
    next: usize,
}

const RATE_SAMPLES: usize = 32;

impl Samples {
    fn push(&mut self, v: u64) {
        if self.ring.len() < RATE_SAMPLES {
            self.ring.push(v);
        } else {
            self.ring[self.next] = v;
        }
        self.next = (self.next + 1) % RATE_SAMPLES;
    }

    fn median(&self) -> Option<u64> {
        if self.ring.is_empty() {
            return None;
        }
        let mut v = self.ring.clone();
        let mid = v.len() / 2;
        Some(*v.select_nth_unstable(mid).1)
    }
}

impl PrefillRates {
    /// Learns from a finished request. `alone`: nothing else of the target was in flight when it
    /// arrived, so its time to first chunk was prefill, not queueing.
    pub fn learn(&mut self, facts: &SpanFacts, alone: bool) {
        let Some(hints) = facts.hints else {
            return;
        };
        if let Some(server) = hints.server
            && let Some(n) = server.prefill_tokens.filter(|&n| n > 0)
        {
            self.per_token.push(server.prefill.0 / n);
            return;
        }
        let Some(fc) = facts.first_chunk.filter(|_| alone) else {
            return;
        };
        let ttft = fc.0.saturating_sub(facts.start.0);
        if let Some(p) = hints.prompt_tokens.filter(|&p| p > 0) {
            self.per_token.push(ttft / p);
        }
        if let Some(rate) = ttft.checked_div(hints.bytes_in) {
            self.per_byte.push(rate);
        }
    }

    /// Estimated prefill time of a request of this size, if a rate has been learned.
    #[must_use]
    pub fn estimate(&self, hints: &WorkHints) -> Option<Nanos> {
        if let (Some(p), Some(rate)) = (hints.prompt_tokens, self.per_token.median()) {
            return Some(Nanos(p.saturating_mul(rate)));
        }
        let rate = self.per_byte.median()?;
        Some(Nanos(hints.bytes_in.saturating_mul(rate)))
    }
}

/// The windows of one request, from what is known of it now. A request still open reaches to
/// [`Window::end`] = `u64::MAX`; one not yet streaming and not ended counts as working from its
/// arrival (nothing tells its queue time yet).
#[must_use]
pub fn windows(facts: &SpanFacts, rates: &PrefillRates) -> WorkWindows {
    let end = facts.end.unwrap_or(OPEN);
    let overlap = WorkWindows {
        method: SplitMethod::Overlap,
        prefill: Window {
            start: facts.start,
            end: facts.start,
        },
        decode: Window {
            start: facts.start,
            end,
        },
    };
    let server = facts.hints.and_then(|h| h.server);
    match (facts.first_chunk, server) {
        (fc, Some(s)) if facts.end.is_some() => {
            // The work ended by the response's end: a non-streamed body goes out then, and so
            // does a "stream" whose chunks were buffered to the end. A stream that really
            // streamed has its prefill end at the first chunk; when the client read slowly, the
            // chunks trail the work, and the first chunk places it better than the end does.
            let work = Nanos(s.prefill.0.saturating_add(s.decode.0));
            let mut work_start = Nanos(end.0.saturating_sub(work.0));
            if let Some(fc) = fc {
                work_start = work_start.min(Nanos(fc.0.saturating_sub(s.prefill.0)));
            }
            let work_start = work_start.max(facts.start);
            let split = Nanos(work_start.0.saturating_add(s.prefill.0)).min(end);
            WorkWindows {
                method: SplitMethod::Timings,
                prefill: Window {
                    start: work_start,
                    end: split,
                },
                decode: Window { start: split, end },
            }
        }
        (Some(fc), None) => match facts.hints.and_then(|h| rates.estimate(&h)) {
            Some(prefill) => phased(facts.start, fc, end, prefill, SplitMethod::Stream),
            None => overlap,
        },
        _ => overlap,
    }
}

/// Prefill ends at the first chunk and lasted `prefill` (at most since arrival); decode follows.
fn phased(start: Nanos, fc: Nanos, end: Nanos, prefill: Nanos, method: SplitMethod) -> WorkWindows {
    let fc = fc.max(start).min(end);
    let work_start = Nanos(fc.0.saturating_sub(prefill.0)).max(start);
    WorkWindows {
        method,
        prefill: Window {
            start: work_start,
            end: fc,
        },
        decode: Window { start: fc, end },
    }
}

/// Whether `windows` can no longer change for the part of a request inside an interval that
/// starts at `from`: the request has ended (everything is known), or it was already streaming
/// when the interval began (its part is decode, whatever its prefill turns out to be).
#[must_use]
pub fn settled_from(facts: &SpanFacts, from: Nanos) -> bool {
    facts.end.is_some() || facts.first_chunk.is_some_and(|fc| fc <= from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Nanos {
        Nanos(x * 1_000_000)
    }

    fn hints(server: Option<ServerWork>) -> WorkHints {
        WorkHints {
            tokens: Some(10),
            prompt_tokens: Some(8),
            bytes_in: 400,
            server,
        }
    }

    #[test]
    fn streamed_with_timings_queues_until_prefill_began() {
        let f = SpanFacts {
            start: ms(0),
            end: Some(ms(1000)),
            first_chunk: Some(ms(600)),
            hints: Some(hints(Some(ServerWork {
                prefill: ms(100),
                decode: ms(400),
                prefill_tokens: Some(8),
            }))),
        };
        let w = windows(&f, &PrefillRates::default());
        assert_eq!(w.method, SplitMethod::Timings);
        assert_eq!(w.work_start(), ms(500));
        assert_eq!(
            w.decode,
            Window {
                start: ms(600),
                end: ms(1000)
            }
        );
    }

    #[test]
    fn a_chunked_body_written_at_the_end_is_not_taken_for_a_stream() {
        // One chunk, at the end: the work is the timings' length before the end.
        let f = SpanFacts {
            start: ms(0),
            end: Some(ms(1000)),
            first_chunk: Some(ms(999)),
            hints: Some(hints(Some(ServerWork {
                prefill: ms(100),
                decode: ms(300),
                prefill_tokens: None,
            }))),
        };
        let w = windows(&f, &PrefillRates::default());
        assert_eq!(w.work_start(), ms(600));
        assert_eq!(
            w.decode,
            Window {
                start: ms(700),
                end: ms(1000)
            }
        );
    }

    #[test]
    fn non_streamed_with_timings_works_at_the_end() {
        let f = SpanFacts {
            start: ms(0),
            end: Some(ms(1000)),
            first_chunk: None,
            hints: Some(hints(Some(ServerWork {
                prefill: ms(100),
                decode: ms(300),
                prefill_tokens: None,
            }))),
        };
        let w = windows(&f, &PrefillRates::default());
        assert_eq!(
            w.prefill,
            Window {
                start: ms(600),
                end: ms(700)
            }
        );
        assert_eq!(
            w.decode,
            Window {
                start: ms(700),
                end: ms(1000)
            }
        );
    }

    #[test]
    fn timings_longer_than_the_request_start_at_arrival() {
        let f = SpanFacts {
            start: ms(100),
            end: Some(ms(200)),
            first_chunk: None,
            hints: Some(hints(Some(ServerWork {
                prefill: ms(500),
                decode: ms(500),
                prefill_tokens: None,
            }))),
        };
        let w = windows(&f, &PrefillRates::default());
        assert_eq!(w.work_start(), ms(100));
        assert!(w.prefill.end <= ms(200) && w.decode.end == ms(200));
    }

    #[test]
    fn stream_without_timings_uses_the_learned_rate() {
        let mut rates = PrefillRates::default();
        let alone = SpanFacts {
            start: ms(0),
            end: Some(ms(500)),
            first_chunk: Some(ms(80)),
            hints: Some(hints(None)),
        };
        rates.learn(&alone, true);
        let queued = SpanFacts {
            start: ms(1000),
            end: Some(ms(3000)),
            first_chunk: Some(ms(2000)),
            hints: Some(hints(None)),
        };
        let w = windows(&queued, &rates);
        assert_eq!(w.method, SplitMethod::Stream);
        assert_eq!(w.work_start(), ms(1920));
        // Not learned from a request that had company on arrival.
        let mut none = PrefillRates::default();
        none.learn(&alone, false);
        assert_eq!(windows(&queued, &none).method, SplitMethod::Overlap);
    }

    #[test]
    fn settled_once_ended_or_streaming_before_the_interval() {
        let mut f = SpanFacts {
            start: ms(0),
            end: None,
            first_chunk: None,
            hints: None,
        };
        assert!(!settled_from(&f, ms(10)));
        f.first_chunk = Some(ms(5));
        assert!(settled_from(&f, ms(10)));
        assert!(!settled_from(&f, ms(4)));
        f.end = Some(ms(20));
        assert!(settled_from(&f, ms(4)));
    }
}
