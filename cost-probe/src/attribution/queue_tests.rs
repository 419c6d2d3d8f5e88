//! The activity-aware split: queued requests pay nothing for the time they wait, phases and
//! conservation hold with progress events and server timings in the stream.
use proptest::prelude::*;

use super::*;

const MS: u64 = 1_000_000;

fn gpu(start: u64, end: u64, uj: u64) -> DomainInterval {
    super::tests::iv(0, EnergyKind::Gpu, start, end, uj)
}

fn ledger() -> Ledger {
    let mut l = Ledger::new(LedgerConfig::default());
    l.set_domain_idle_watts(DomainId(0), 0.0);
    l
}

/// One request of a one-slot server: arrives, waits, is prefilled, streams, ends.
#[derive(Clone, Copy, Debug)]
struct Served {
    arrive: u64,
    work_start: u64,
    first_chunk: u64,
    end: u64,
}

impl Served {
    fn hints(&self, timings: bool) -> WorkHints {
        WorkHints {
            tokens: Some(50),
            prompt_tokens: Some(20),
            bytes_in: 300,
            server: timings.then(|| ServerWork {
                prefill: Nanos(self.first_chunk - self.work_start),
                decode: Nanos(self.end - self.first_chunk),
                prefill_tokens: Some(20),
            }),
        }
    }
}

enum Ev {
    Start(u64),
    Chunk(u64),
    End(u64),
}

/// Feeds a one-slot schedule, a chunk every 10 ms, and 100 ms intervals of a device that draws
/// 1 W while it works (and nothing else): returns each request's energy.
fn run_one_slot(reqs: &[Served], timings: bool) -> Vec<RequestEnergy> {
    let mut ev: Vec<(u64, u8, usize, Ev)> = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        ev.push((r.arrive, 0, i, Ev::Start(r.arrive)));
        let mut t = r.first_chunk;
        while t < r.end {
            ev.push((t, 1, i, Ev::Chunk(t)));
            t += 10 * MS;
        }
        ev.push((r.end, 2, i, Ev::End(r.end)));
    }
    let horizon = reqs.iter().map(|r| r.end).max().unwrap() + 100 * MS;
    let mut t = 100 * MS;
    while t <= horizon {
        ev.push((t, 3, usize::MAX, Ev::Start(t)));
        t += 100 * MS;
    }
    ev.sort_by_key(|e| (e.0, e.1));
    let working_ns = |s: u64, e: u64| -> u64 {
        reqs.iter()
            .map(|r| r.end.min(e).saturating_sub(r.work_start.max(s)))
            .sum()
    };
    let mut l = ledger();
    let mut out = vec![RequestEnergy::default(); reqs.len()];
    let mut prev = 0;
    for (at, kind, i, e) in ev {
        match (kind, e) {
            (0, Ev::Start(t)) => l.span_started(i as u64, Nanos(t)),
            (1, Ev::Chunk(t)) => l.span_progress(i as u64, Nanos(t)),
            (2, Ev::End(t)) => l.span_finished(i as u64, Nanos(t), reqs[i].hints(timings)),
            _ => {
                // 1 W = 1 µJ per µs of work.
                let uj = working_ns(prev, at) / 1_000;
                let r = l.interval(&gpu(prev, at, uj));
                assert!(r.is_conserved());
                prev = at;
                for (id, e) in l.drain_ready() {
                    out[id as usize] = e;
                }
            }
        }
    }
    for (id, e) in l.drain_all() {
        out[id as usize] = e;
    }
    out
}

/// Three clients at once on one slot: A computes 900 ms, B 600 ms, C 300 ms, one after the
/// other. By time open they would pay 9:15:18; by work, 9:6:3.
fn three_queued() -> Vec<Served> {
    vec![
        Served {
            arrive: 5 * MS,
            work_start: 5 * MS,
            first_chunk: 205 * MS,
            end: 905 * MS,
        },
        Served {
            arrive: 7 * MS,
            work_start: 905 * MS,
            first_chunk: 1_005 * MS,
            end: 1_505 * MS,
        },
        Served {
            arrive: 9 * MS,
            work_start: 1_505 * MS,
            first_chunk: 1_605 * MS,
            end: 1_805 * MS,
        },
    ]
}

fn assert_shares_match_work(reqs: &[Served], got: &[RequestEnergy], tol: f64) {
    let total: u64 = got.iter().map(|e| e.energy.gpu.0).sum();
    let work: u64 = reqs.iter().map(|r| r.end - r.work_start).sum();
    for (r, e) in reqs.iter().zip(got) {
        let want = (r.end - r.work_start) as f64 / work as f64;
        let have = e.energy.gpu.0 as f64 / total as f64;
        assert!(
            (have - want).abs() <= tol * want,
            "share {have:.4} against work share {want:.4}: {got:?}"
        );
    }
}

#[test]
fn queued_requests_pay_for_their_work_not_their_wait_with_timings() {
    let reqs = three_queued();
    let got = run_one_slot(&reqs, true);
    assert_shares_match_work(&reqs, &got, 0.01);
    for (r, e) in reqs.iter().zip(&got) {
        assert_eq!(e.phases.method, SplitMethod::Timings);
        assert_eq!(e.phases.queue, Some(Nanos(r.work_start - r.arrive)));
        assert_eq!(
            e.phases.prefill_time,
            Some(Nanos(r.first_chunk - r.work_start))
        );
        assert_eq!(e.phases.prefill + e.phases.decode, e.total());
        assert!(e.phases.prefill.0 > 0 && e.phases.decode.0 > e.phases.prefill.0);
        assert!(!e.flags.split_estimated);
    }
}

#[test]
fn queued_requests_without_timings_use_the_prefill_rate_of_a_request_that_did_not_wait() {
    // The first request arrives alone: its 200 ms to first chunk teaches the prefill rate
    // (every prompt here has the same size). Then three arrive at once on one slot.
    let at = |arrive: u64, work_start: u64, end: u64| Served {
        arrive: arrive * MS,
        work_start: work_start * MS,
        first_chunk: (work_start + 200) * MS,
        end: end * MS,
    };
    let reqs = vec![
        at(0, 0, 400),
        at(1_000, 1_000, 1_900),
        at(1_002, 1_900, 2_500),
        at(1_004, 2_500, 2_900),
    ];
    let got = run_one_slot(&reqs, false);
    assert_shares_match_work(&reqs, &got, 0.02);
    for e in &got[1..] {
        assert_eq!(e.phases.method, SplitMethod::Stream);
    }
}

#[test]
fn without_stream_or_timings_the_split_is_by_time_open() {
    let mut l = ledger();
    l.span_started(1, Nanos(0));
    l.span_started(2, Nanos(50 * MS));
    l.span_ended(1, Nanos(100 * MS), None);
    l.span_ended(2, Nanos(100 * MS), None);
    l.interval(&gpu(0, 100 * MS, 1_500));
    let d: Vec<_> = l.drain_ready().collect();
    assert_eq!(d.len(), 2);
    for (id, e) in d {
        assert_eq!(e.phases.method, SplitMethod::Overlap);
        assert_eq!(e.phases.queue, None);
        assert_eq!(e.energy.gpu.0, if id == 1 { 1_000 } else { 500 });
    }
}

#[test]
fn an_open_non_streamed_request_holds_its_intervals_until_it_ends() {
    let mut l = ledger();
    l.span_started(1, Nanos(0));
    let r = l.interval(&gpu(0, 100 * MS, 1_000));
    // The interval record is final at once; only the split among requests waits.
    assert_eq!(r.attributed, MicroJoules(1_000));
    assert_eq!(l.drain_ready().count(), 0);
    l.span_finished(
        1,
        Nanos(150 * MS),
        WorkHints {
            server: Some(ServerWork {
                prefill: Nanos(20 * MS),
                decode: Nanos(30 * MS),
                prefill_tokens: None,
            }),
            ..WorkHints::default()
        },
    );
    l.interval(&gpu(100 * MS, 200 * MS, 700));
    let d: Vec<_> = l.drain_ready().collect();
    assert_eq!(d.len(), 1);
    // Alone, it gets everything: 1,000 µJ + the 700 µJ interval; work began at 100 ms.
    assert_eq!(d[0].1.energy.gpu.0, 1_700);
    assert_eq!(d[0].1.phases.queue, Some(Nanos(100 * MS)));
}

#[test]
fn a_split_held_past_max_hold_is_made_from_what_is_known_and_flagged() {
    let mut l = ledger();
    l.span_started(1, Nanos(0));
    l.span_started(2, Nanos(0));
    l.span_ended(2, Nanos(50 * MS), None);
    l.interval(&gpu(0, 100 * MS, 1_000));
    let hold = MAX_HOLD.0;
    l.interval(&gpu(100 * MS, 100 * MS + hold, 0));
    let d: Vec<_> = l.drain_ready().collect();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, 2);
    assert!(d[0].1.flags.split_estimated);
}

#[derive(Clone, Debug)]
struct Spec {
    arrive: u64,
    queue: u64,
    prefill: u64,
    decode: u64,
    streamed: bool,
    timings: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..3_000 * MS,
        0..2_000 * MS,
        0..500 * MS,
        1..1_500 * MS,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(arrive, queue, prefill, decode, streamed, timings)| Spec {
            arrive,
            queue,
            prefill,
            decode,
            streamed,
            timings,
        })
}

struct Run {
    got: Vec<RequestEnergy>,
    measured: u64,
    attributed: u64,
    idle: u64,
    /// Per interval: its bounds.
    intervals: Vec<(u64, u64)>,
}

/// Feeds the requests (a chunk at the first chunk only: later ones change nothing) and
/// intervals of `period` whose energy is `power(k)` for the k-th.
fn drive(reqs: &[Spec], period: u64, power: impl Fn(usize) -> u64) -> Run {
    let mut ev: Vec<(u64, u8, usize)> = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let fc = r.arrive + r.queue + r.prefill;
        ev.push((r.arrive, 0, i));
        if r.streamed {
            ev.push((fc, 1, i));
        }
        ev.push((fc + r.decode, 2, i));
    }
    let horizon = ev.iter().map(|e| e.0).max().unwrap() + period;
    let mut t = period;
    while t <= horizon + period {
        ev.push((t, 3, usize::MAX));
        t += period;
    }
    ev.sort_by_key(|e| (e.0, e.1));
    let mut l = ledger();
    let mut run = Run {
        got: vec![RequestEnergy::default(); reqs.len()],
        measured: 0,
        attributed: 0,
        idle: 0,
        intervals: Vec::new(),
    };
    let mut prev = 0;
    for (at, kind, i) in ev {
        match kind {
            0 => l.span_started(i as u64, Nanos(at)),
            1 => l.span_progress(i as u64, Nanos(at)),
            2 => {
                let r = &reqs[i];
                let hints = WorkHints {
                    tokens: Some(10),
                    prompt_tokens: Some(10),
                    bytes_in: 100,
                    server: r.timings.then_some(ServerWork {
                        prefill: Nanos(r.prefill),
                        decode: Nanos(r.decode),
                        prefill_tokens: Some(10),
                    }),
                };
                l.span_finished(i as u64, Nanos(at), hints);
            }
            _ => {
                let r = l.interval(&gpu(prev, at, power(run.intervals.len())));
                assert!(r.is_conserved());
                run.measured += r.measured.0;
                run.attributed += r.attributed.0;
                run.idle += r.idle.0;
                run.intervals.push((prev, at));
                prev = at;
                for (id, e) in l.drain_ready() {
                    run.got[id as usize] = e;
                }
            }
        }
    }
    for (id, e) in l.drain_all() {
        run.got[id as usize] = e;
    }
    assert_eq!(l.held_spans(), 0);
    run
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Σ requests + idle == measured over the whole run (share 1: no `other`), and every
    /// request's phases add up to its energy.
    #[test]
    fn conservation_is_exact_with_progress_and_timings(
        reqs in prop::collection::vec(spec(), 1..12),
        powers in prop::collection::vec(0..5_000_000u64, 1..10),
        period in 20 * MS..300 * MS,
    ) {
        let run = drive(&reqs, period, |k| powers[k % powers.len()]);
        let per_request: u64 = run.got.iter().map(|e| e.total().0).sum();
        prop_assert_eq!(per_request, run.attributed);
        prop_assert_eq!(run.attributed + run.idle, run.measured);
        for e in &run.got {
            prop_assert_eq!(e.phases.prefill.0 + e.phases.decode.0, e.total().0);
        }
    }

    /// Energy in one interval only: a request its timings show queued through that interval,
    /// while another request is known to be working in it, gets nothing.
    #[test]
    fn a_request_queued_through_an_interval_gets_nothing_from_it(
        reqs in prop::collection::vec(spec(), 2..10),
        hot in 0usize..40,
        period in 50 * MS..300 * MS,
    ) {
        let run = drive(&reqs, period, |k| if k == hot { 1_000_000 } else { 0 });
        let Some(&(s, e)) = run.intervals.get(hot) else {
            return Ok(());
        };
        for (j, q) in reqs.iter().enumerate() {
            let work_start = q.arrive + q.queue;
            let queued = q.timings && q.arrive <= s && e <= work_start;
            let someone_works = reqs.iter().enumerate().any(|(o, x)| {
                let ws = x.arrive + x.queue;
                o != j && x.timings && ws < e && s < ws + x.prefill + x.decode
            });
            if queued && someone_works {
                prop_assert_eq!(run.got[j].total().0, 0, "request {} {:?}", j, q);
            }
        }
    }
}

#[test]
fn gpu_idle_is_learned_while_requests_wait_if_the_device_says_it_is_idle() {
    // A busy server always has a request open: without the device's own word, nothing to learn.
    let mut l = Ledger::new(LedgerConfig::default());
    l.span_started(1, Nanos(0));
    for k in 0..MIN_IDLE_SAMPLES as u64 {
        let mut i = gpu(k * 100 * MS, (k + 1) * 100 * MS, 6_000_000);
        i.device_idle = true;
        let r = l.interval(&i);
        assert!(r.is_conserved());
    }
    let r = l.interval(&gpu(500 * MS, 600 * MS, 30_000_000));
    assert_eq!(r.idle_source, IdleSource::Learned);
    // 60 W learned: 6 J of the 30 J interval is idle, 24 J the request's.
    assert_eq!(r.idle_power_uw, 60_000_000);
    assert_eq!(r.attributed, MicroJoules(24_000_000));
}
