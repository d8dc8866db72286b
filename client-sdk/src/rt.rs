//! The few runtime services the client needs: spawning its connection task, sleeping,
//! a monotonic clock, wall-clock milliseconds and timeouts. Tokio on native targets;
//! the JavaScript event loop (a browser or node) with the `web` feature on wasm32.
//!
//! Everything else in the client (`tokio::sync` channels and locks, `tokio::select!`)
//! needs no runtime and is the same on both.

use std::future::Future;
use std::time::Duration;

/// A timeout elapsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// `f`'s output, or [`Elapsed`] when it takes longer than `d`.
pub(crate) async fn timeout<F: Future>(d: Duration, f: F) -> Result<F::Output, Elapsed> {
    tokio::select! {
        biased;
        v = f => Ok(v),
        () = sleep(d) => Err(Elapsed),
    }
}

/// `f`'s output, or [`Elapsed`] when `deadline` passes first.
pub(crate) async fn timeout_at<F: Future>(deadline: Instant, f: F) -> Result<F::Output, Elapsed> {
    tokio::select! {
        biased;
        v = f => Ok(v),
        () = sleep_until(deadline) => Err(Elapsed),
    }
}

#[cfg(feature = "native")]
mod imp {
    use std::future::Future;
    use std::time::Duration;

    pub(crate) use tokio::time::Instant;

    pub(crate) async fn sleep(d: Duration) {
        tokio::time::sleep(d).await;
    }

    pub(crate) async fn sleep_until(t: Instant) {
        tokio::time::sleep_until(t).await;
    }

    /// Unix time in milliseconds.
    pub(crate) fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// A spawned task; [`Task::join`] waits for it to end.
    #[derive(Debug)]
    pub(crate) struct Task(tokio::task::JoinHandle<()>);

    impl Task {
        pub(crate) async fn join(self) {
            let _ = self.0.await;
        }
    }

    pub(crate) fn spawn<F: Future<Output = ()> + Send + 'static>(f: F) -> Task {
        Task(tokio::spawn(f))
    }

    /// CPU work started on a thread of the blocking pool ([`off_thread`]).
    #[derive(Debug)]
    pub(crate) struct OffThread<T>(tokio::task::JoinHandle<T>);

    impl<T> OffThread<T> {
        /// Its result; `None` if the work did not finish (it panicked or the runtime is
        /// shutting down): the caller then does it itself.
        pub(crate) async fn join(self) -> Option<T> {
            self.0.await.ok()
        }
    }

    /// Whether [`off_thread`] runs work on another thread.
    pub(crate) const THREADS: bool = true;

    /// Starts `f` on another thread, so the caller's task goes on meanwhile.
    pub(crate) fn off_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> OffThread<T> {
        OffThread(tokio::task::spawn_blocking(f))
    }
}

#[cfg(all(feature = "web", not(feature = "native")))]
mod imp {
    use std::future::Future;
    use std::ops::Add;
    use std::time::Duration;

    use wasm_bindgen::prelude::*;

    #[wasm_bindgen]
    extern "C" {
        /// `performance.now()`: monotonic milliseconds (browsers, workers and node).
        #[wasm_bindgen(js_namespace = performance, js_name = now)]
        fn performance_now() -> f64;
        /// The global `setTimeout` (a number in browsers, an object in node).
        #[wasm_bindgen(js_name = setTimeout)]
        fn set_timeout(handler: &js_sys::Function, ms: i32) -> JsValue;
        /// The global `clearTimeout`.
        #[wasm_bindgen(js_name = clearTimeout)]
        fn clear_timeout(handle: &JsValue);
    }

    /// One `setTimeout`, cleared when dropped: a sleep that lost a race (a timeout, a
    /// `select!`) leaves no timer behind, so node can exit once the client is shut down.
    struct Timer {
        handle: JsValue,
        fired: wasm_bindgen_futures::JsFuture,
    }

    impl Timer {
        fn new(ms: i32) -> Self {
            let mut handle = JsValue::UNDEFINED;
            let promise = js_sys::Promise::new(&mut |resolve, _reject| {
                handle = set_timeout(&resolve, ms);
            });
            Self {
                handle,
                fired: wasm_bindgen_futures::JsFuture::from(promise),
            }
        }
    }

    impl Future for Timer {
        type Output = ();
        fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
            std::pin::Pin::new(&mut self.fired).poll(cx).map(|_| ())
        }
    }

    impl Drop for Timer {
        fn drop(&mut self) {
            // A no-op for a timer that already fired.
            clear_timeout(&self.handle);
        }
    }

    /// A point on the monotonic clock (`performance.now()`), in microseconds.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub(crate) struct Instant(u64);

    impl Instant {
        pub(crate) fn now() -> Self {
            let ms = performance_now();
            // Finite and non-negative by the platform's definition; clamp anyway.
            Self(if ms.is_finite() && ms > 0.0 {
                (ms * 1000.0) as u64
            } else {
                0
            })
        }

        pub(crate) fn elapsed(&self) -> Duration {
            Self::now().saturating_duration_since(*self)
        }

        pub(crate) fn saturating_duration_since(&self, earlier: Self) -> Duration {
            Duration::from_micros(self.0.saturating_sub(earlier.0))
        }
    }

    impl Add<Duration> for Instant {
        type Output = Self;
        fn add(self, d: Duration) -> Self {
            Self(self.0.saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)))
        }
    }

    pub(crate) async fn sleep(d: Duration) {
        // setTimeout takes an i32; longer waits are chained.
        let mut left = d;
        loop {
            let step = left.min(Duration::from_millis(i32::MAX as u64));
            let ms = i32::try_from(step.as_millis()).unwrap_or(i32::MAX);
            Timer::new(ms).await;
            left = left.saturating_sub(step);
            if left.is_zero() {
                return;
            }
        }
    }

    pub(crate) async fn sleep_until(t: Instant) {
        sleep(t.saturating_duration_since(Instant::now())).await;
    }

    /// Unix time in milliseconds (`Date.now()`).
    pub(crate) fn now_ms() -> u64 {
        let ms = js_sys::Date::now();
        if ms.is_finite() && ms > 0.0 { ms as u64 } else { 0 }
    }

    /// A spawned task; [`Task::join`] waits for it to end.
    #[derive(Debug)]
    pub(crate) struct Task(tokio::sync::oneshot::Receiver<()>);

    impl Task {
        pub(crate) async fn join(self) {
            let _ = self.0.await;
        }
    }

    pub(crate) fn spawn<F: Future<Output = ()> + 'static>(f: F) -> Task {
        let (tx, rx) = tokio::sync::oneshot::channel();
        wasm_bindgen_futures::spawn_local(async move {
            f.await;
            let _ = tx.send(());
        });
        Task(rx)
    }

    /// Whether [`off_thread`] runs work on another thread.
    pub(crate) const THREADS: bool = false;

    /// No other thread on the web: nothing is started, and [`OffThread::join`] says so
    /// (the caller does the work itself, in order).
    #[derive(Debug)]
    pub(crate) struct OffThread<T>(std::marker::PhantomData<T>);

    impl<T> OffThread<T> {
        pub(crate) async fn join(self) -> Option<T> {
            None
        }
    }

    pub(crate) fn off_thread<T: 'static>(f: impl FnOnce() -> T + 'static) -> OffThread<T> {
        drop(f);
        OffThread(std::marker::PhantomData)
    }
}

pub(crate) use imp::{Instant, THREADS, Task, now_ms, off_thread, sleep, sleep_until, spawn};
