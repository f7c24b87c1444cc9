//! Backend selection cost per request: `LocalPool::pick` (strategy, health
//! and retry filtering, Rc clone) for 3, 16 and 256 backends.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use percore::balance::StrategyKind;
use percore::pool::{ControlPlane, LocalPool};

fn pool_with(backends: usize, strategy: StrategyKind) -> std::rc::Rc<LocalPool> {
    let (plane, receivers) = ControlPlane::new(1, strategy);
    for i in 0..backends {
        plane
            .add_backend(&format!("http://127.0.0.1:{}", 10_000 + i), 1)
            .expect("valid backend");
    }
    let pool = LocalPool::new(0, plane.round_robin.clone());
    pool.apply(&receivers[0].updates.try_iter().last().expect("snapshot"));
    pool
}

fn selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for &strategy in StrategyKind::all() {
        for backends in [3, 16, 256] {
            let pool = pool_with(backends, strategy);
            let now = Instant::now();
            group.bench_with_input(
                BenchmarkId::new(strategy.name(), backends),
                &backends,
                |b, _| b.iter(|| black_box(pool.pick(black_box(&[]), now))),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, selection);
criterion_main!(benches);
