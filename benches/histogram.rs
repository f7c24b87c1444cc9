//! Cost of recording one latency sample in an hdrhistogram, as a core does
//! per request for the admin API's latency histograms.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hdrhistogram::Histogram;

fn record(c: &mut Criterion) {
    // 1 µs to 60 s at 3 significant digits: the admin API's range.
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut sample = 137u64;
    c.bench_function("histogram/record", |b| {
        b.iter(|| {
            sample = (sample * 1_103_515_245 + 12_345) % 50_000 + 1;
            histogram.record(black_box(sample)).expect("in range");
        })
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
