//! Coarse per-core timers for the data path's short, frequent waits.
//!
//! Every request makes waits that nearly always end unfired: the idle
//! wait's "park after 250 ms" and the response head's "watch the client
//! once it is late". A monoio timer would read the clock, be inserted in
//! and removed from monoio's hierarchical wheel, and move a 640-byte entry
//! around for each of them (docs/performance-notes.md has the measured
//! cost). A [`Ticker`] serves such waits from one task per core that ticks
//! every [`TICK`] while any wait is pending: a wait is a slot in a slab and
//! a push onto one of [`WHEEL`] buckets, and ending it early frees the slot.
//! It also offers the time of the last tick, for deadlines that need no
//! better than [`TICK`] precision.
//!
//! A wait of `n` ticks fires between `n` and `n + 1` ticks after it starts
//! (plus the loop's latency). Waits are limited to `WHEEL - 1` ticks; longer
//! ones belong on monoio's timers.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The ticker's resolution.
pub const TICK: Duration = Duration::from_millis(5);

/// Buckets in the wheel: the longest wait is `WHEEL - 1` ticks (315 ms).
pub const WHEEL: usize = 64;

pub struct Ticker {
    started: Instant,
    /// Ticks processed since `started`.
    ticks: Cell<u64>,
    /// `started + ticks * TICK`, or a fresh reading while the ticker sleeps.
    now: Cell<Instant>,
    running: Cell<bool>,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// `(slot, generation)` of each wait, in the bucket of the tick it is
    /// due at; entries whose slot moved on are skipped.
    buckets: Vec<Vec<(u32, u32)>>,
    pending: usize,
    /// The tick task, while it sleeps for want of waits.
    driver: Option<Waker>,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    fired: bool,
    waker: Option<Waker>,
}

impl Ticker {
    pub fn new() -> Rc<Ticker> {
        let started = Instant::now();
        Rc::new(Ticker {
            started,
            ticks: Cell::new(0),
            now: Cell::new(started),
            running: Cell::new(false),
            state: RefCell::new(State {
                buckets: (0..WHEEL).map(|_| Vec::new()).collect(),
                ..State::default()
            }),
        })
    }

    /// The current time to within a tick: the last tick's, while waits are
    /// pending (no clock read), else the clock's.
    pub fn now(&self) -> Instant {
        if !self.running.get() {
            self.now.set(Instant::now());
        }
        self.now.get()
    }

    /// Waits `ticks` ticks (at most `WHEEL - 1`). Nothing is registered
    /// until the first poll; dropping the future ends the wait.
    pub fn wait(&self, ticks: u32) -> Wait<'_> {
        debug_assert!((1..WHEEL as u32).contains(&ticks));
        Wait {
            ticker: self,
            ticks: ticks.clamp(1, WHEEL as u32 - 1),
            slot: None,
        }
    }

    /// Ticks while waits are pending and sleeps otherwise; spawned once per
    /// core, it runs as long as the core's runtime.
    pub async fn drive(self: Rc<Self>) {
        loop {
            if self.state.borrow().pending == 0 {
                self.running.set(false);
                std::future::poll_fn(|cx| {
                    let mut state = self.state.borrow_mut();
                    if state.pending > 0 {
                        Poll::Ready(())
                    } else {
                        state.driver = Some(cx.waker().clone());
                        Poll::Pending
                    }
                })
                .await;
                continue;
            }
            monoio::time::sleep(TICK).await;
            self.advance();
        }
    }

    /// Fires the waits due up to the clock's current tick.
    fn advance(&self) {
        let target = ticks_since(self.started, Instant::now());
        let mut wake = Vec::new();
        while self.ticks.get() < target {
            let tick = self.ticks.get() + 1;
            self.ticks.set(tick);
            let mut state = self.state.borrow_mut();
            let state = &mut *state;
            let bucket = &mut state.buckets[(tick % WHEEL as u64) as usize];
            for (index, generation) in bucket.drain(..) {
                let slot = &mut state.slots[index as usize];
                if slot.generation == generation && !slot.fired {
                    slot.fired = true;
                    wake.extend(slot.waker.take());
                }
            }
        }
        self.now.set(self.tick_time());
        // Woken outside the borrow: a waker may run code that waits again.
        wake.into_iter().for_each(Waker::wake);
    }

    /// When the last processed tick began.
    fn tick_time(&self) -> Instant {
        self.started + Duration::from_nanos(self.ticks.get() * TICK.as_nanos() as u64)
    }

    /// Registers a wait of `ticks` for `waker`; returns its slot.
    fn register(&self, ticks: u32, waker: &Waker) -> (u32, u32) {
        if !self.running.get() {
            // The tick count stood still while nothing waited: catch up so
            // that the new wait is not due in the past.
            self.running.set(true);
            self.ticks.set(ticks_since(self.started, Instant::now()));
            self.now.set(self.tick_time());
        }
        let mut state = self.state.borrow_mut();
        let index = match state.free.pop() {
            Some(index) => index,
            None => {
                state.slots.push(Slot::default());
                state.slots.len() as u32 - 1
            }
        };
        let slot = &mut state.slots[index as usize];
        slot.fired = false;
        slot.waker = Some(waker.clone());
        let key = (index, slot.generation);
        let due = self.ticks.get() + u64::from(ticks) + 1;
        state.buckets[(due % WHEEL as u64) as usize].push(key);
        state.pending += 1;
        if let Some(driver) = state.driver.take() {
            driver.wake();
        }
        key
    }

    fn release(&self, (index, generation): (u32, u32)) {
        let mut state = self.state.borrow_mut();
        let slot = &mut state.slots[index as usize];
        if slot.generation == generation {
            slot.generation = slot.generation.wrapping_add(1);
            slot.waker = None;
            state.free.push(index);
            state.pending -= 1;
        }
    }

    /// Waits registered and not yet ended.
    pub fn pending(&self) -> usize {
        self.state.borrow().pending
    }
}

fn ticks_since(started: Instant, now: Instant) -> u64 {
    (now.duration_since(started).as_nanos() / TICK.as_nanos()) as u64
}

/// A wait on a [`Ticker`]; see [`Ticker::wait`].
pub struct Wait<'a> {
    ticker: &'a Ticker,
    ticks: u32,
    slot: Option<(u32, u32)>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(key) = self.slot else {
            self.slot = Some(self.ticker.register(self.ticks, cx.waker()));
            return Poll::Pending;
        };
        let mut state = self.ticker.state.borrow_mut();
        let slot = &mut state.slots[key.0 as usize];
        if slot.fired {
            return Poll::Ready(());
        }
        match &slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.slot {
            self.ticker.release(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: Future>(future: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn a_wait_fires_between_its_ticks_and_one_more() {
        run(async {
            let ticker = Ticker::new();
            monoio::spawn(ticker.clone().drive());
            for ticks in [1, 10] {
                let start = Instant::now();
                ticker.wait(ticks).await;
                let waited = start.elapsed();
                assert!(waited >= TICK * ticks, "{ticks} ticks took {waited:?}");
                assert!(
                    waited < TICK * (ticks + 1) + Duration::from_millis(100),
                    "{waited:?}"
                );
            }
            assert_eq!(ticker.pending(), 0);
        });
    }

    #[test]
    fn an_abandoned_wait_frees_its_slot_and_never_fires() {
        run(async {
            let ticker = Ticker::new();
            monoio::spawn(ticker.clone().drive());
            let slow = ticker.wait(20);
            let fast = ticker.wait(2);
            let outcome = monoio::select! {
                _ = slow => "slow",
                _ = fast => "fast",
            };
            assert_eq!(outcome, "fast");
            assert_eq!(ticker.pending(), 0, "the slow wait was released on drop");
            // Its bucket entry is stale: a new wait in the reused slot is not
            // fired by it.
            let start = Instant::now();
            ticker.wait(30).await;
            assert!(start.elapsed() >= TICK * 30);
        });
    }

    #[test]
    fn now_tracks_the_clock_to_within_a_tick() {
        run(async {
            let ticker = Ticker::new();
            monoio::spawn(ticker.clone().drive());
            let idle = ticker.now();
            assert!(Instant::now().duration_since(idle) < TICK);
            let mut wait = std::pin::pin!(ticker.wait(8));
            monoio::select! {
                _ = &mut wait => unreachable!(),
                _ = monoio::time::sleep(TICK * 4) => {}
            }
            let lag = Instant::now().duration_since(ticker.now());
            assert!(lag <= TICK + Duration::from_millis(100), "{lag:?}");
        });
    }
}
