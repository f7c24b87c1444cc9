//! Cost of what a core records per request for the admin API's latency
//! histograms and response counters (`latency::Recorder`), of its
//! once-a-second rotation, and of the clock reads the data path adds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use percore::balance::StrategyKind;
use percore::latency::Recorder;
use percore::pool::ControlPlane;

fn record(c: &mut Criterion) {
    let (plane, _receivers) = ControlPlane::new(1, StrategyKind::RoundRobin);
    let backends: Vec<_> = (1..=3)
        .map(|port| {
            plane
                .add_backend(&format!("http://127.0.0.1:{}", 9000 + port), 1)
                .expect("valid backend")
                .0
        })
        .collect();
    let recorder = Recorder::new(0, plane.clone());
    // 50 µs to 50 ms, spread over the three backends as round robin would.
    let mut sample = 137u64;
    let mut turn = 0;
    c.bench_function("latency/record_response", |b| {
        b.iter(|| {
            sample = (sample * 1_103_515_245 + 12_345) % 50_000 + 50;
            turn = (turn + 1) % backends.len();
            recorder.record_response(
                black_box(&backends[turn]),
                200,
                Duration::from_micros(sample),
                Duration::from_micros(sample / 2),
            );
        })
    });
    // The three clock reads a relayed request adds (head read, upstream
    // start, response head), and the elapsed at the end.
    c.bench_function("latency/instant_now", |b| {
        b.iter(|| black_box(Instant::now()))
    });
    c.bench_function("latency/rotate_and_collect", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                sample = (sample * 1_103_515_245 + 12_345) % 50_000 + 50;
                turn = (turn + 1) % backends.len();
                let total = Duration::from_micros(sample);
                recorder.record_response(&backends[turn], 200, total, total / 2);
            }
            recorder.rotate(Instant::now());
            plane.latency.collect();
        })
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
