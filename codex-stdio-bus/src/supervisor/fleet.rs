//! The running supervisors, one per live slot, and the order channel to each; plus one deadline
//! task per pool. A reload starts supervisors for new slots and sends orders to existing ones.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::instance::StopOrder;
use super::orders::{Order, Replaced};
use super::{deadlines, supervise, Context, Post};
use crate::router::pool::{Pool, Pools};

/// The running supervisors, one per live slot.
pub(crate) struct Fleet {
    /// What every supervisor shares.
    context: Context,
    /// The pool table in force (read by the escalation check and the deadline tasks).
    pools: Arc<Pools>,
    /// The daemon's stop order, which every task obeys.
    stop: StopOrder,
    /// Where supervisors and deadline tasks run: the daemon's stop waits for it.
    tracker: TaskTracker,
    /// Under a std lock, never held across an await (the runtime has one thread; nothing waits).
    crew: Mutex<Crew>,
}

/// The fleet's mutable part.
#[derive(Default)]
struct Crew {
    /// The order channel of each supervisor started, by (pool index, slot); closed once that
    /// supervisor has ended.
    orders: HashMap<(u32, u32), mpsc::UnboundedSender<Order>>,
    /// The pool indices whose deadline task runs.
    timed: HashSet<u32>,
}

impl Fleet {
    /// A fleet whose supervisors share `context`, see the pool table `pools`, obey `stop`, and
    /// run on `tracker`. Nothing runs until [`Fleet::start`].
    pub(crate) fn new(
        context: Context,
        pools: Arc<Pools>,
        stop: StopOrder,
        tracker: TaskTracker,
    ) -> Self {
        Fleet {
            context,
            pools,
            stop,
            tracker,
            crew: Mutex::default(),
        }
    }

    /// The fleet's mutable part, locked.
    fn crew(&self) -> MutexGuard<'_, Crew> {
        // A panic elsewhere left a plain map behind, still consistent.
        self.crew.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns the supervisor of slot `slot` of `pool` (its workers spawn with `pool.config`);
    /// also the pool's deadline task the first time a pool index is seen. A slot whose
    /// supervisor still runs keeps it (a second one would fight it for the slot): logged, no
    /// effect. `slot` must be below `pool.slots.len()`.
    ///
    /// The receiver is answered once the slot's first worker is ready
    /// ([`Replaced::Ready`](super::Replaced)), or with why it is not (it exited, failed its
    /// readiness probe or could not be spawned first); dropped unanswered if the daemon stops
    /// first or the slot was supervised already.
    pub(crate) fn start(&self, pool: &Arc<Pool>, slot: u32) -> oneshot::Receiver<Replaced> {
        let (ready, first) = oneshot::channel();
        let key = (pool.index, slot);
        let mut crew = self.crew();
        if crew.orders.get(&key).is_some_and(|s| !s.is_closed()) {
            tracing::warn!(pool = %pool.id, slot, "the slot is supervised already; not started again");
            return first;
        }
        let (orders, received) = mpsc::unbounded_channel();
        crew.orders.insert(key, orders);
        let post = Post {
            pool: pool.clone(),
            slot: pool.slots[slot as usize].clone(),
            config: pool.config.clone(),
            orders: received,
            ready,
        };
        self.tracker.spawn(supervise(
            self.context.clone(),
            self.pools.clone(),
            post,
            self.stop.clone(),
        ));
        if crew.timed.insert(pool.index) {
            self.tracker.spawn(deadlines::enforce(
                self.pools.clone(),
                pool.clone(),
                self.context.sink.clone(),
                self.stop.clone(),
            ));
        }
        first
    }

    /// Whether the daemon has ordered every worker to stop (the end of its drain).
    pub(crate) fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Sends `order` to the supervisor of slot `slot` of pool index `pool`; false if none runs
    /// (never started, or ended: retired, stopped, or left empty or failed by its policy).
    pub(crate) fn order(&self, pool: u32, slot: u32, order: Order) -> bool {
        let crew = self.crew();
        crew.orders
            .get(&(pool, slot))
            .is_some_and(|orders| orders.send(order).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use codex_bus_config::{Config, Limits, PoolConfig};
    use codex_bus_protocol::ErrorKind;
    use tokio::sync::{oneshot, watch};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::core::client::Client;
    use crate::core::sink::WorkerSink;
    use crate::core::slot::{Pending, Slot, SlotState};
    use crate::supervisor::{Replaced, REPLACED_DETAIL};

    /// A sink that answers a worker's echoed request lines as replies, and records the failures.
    #[derive(Default)]
    struct Recorder {
        /// (generation, bus id) of every reply taken.
        replies: Mutex<Vec<(u64, u64)>>,
        /// (kind, detail, requests) of every failure.
        failed: Mutex<Vec<(ErrorKind, Option<String>, usize)>>,
    }

    impl WorkerSink for Recorder {
        fn worker_line(&self, slot: &Arc<Slot>, generation: u64, line: &[u8], _: Instant) {
            let value: serde_json::Value = serde_json::from_slice(line).unwrap();
            let id = value["id"].as_u64().unwrap();
            if slot.take_pending(id, generation).is_some() {
                self.replies.lock().unwrap().push((generation, id));
            }
        }

        fn fail(&self, pending: Vec<Pending>, kind: ErrorKind, detail: Option<&str>) {
            let entry = (kind, detail.map(str::to_owned), pending.len());
            self.failed.lock().unwrap().push(entry);
        }

        fn worker_exited(&self, _: &Arc<Slot>) {}
    }

    fn client() -> Arc<Client> {
        Client::for_test(1)
    }

    /// A one-instance pool running `sh -c script`, ready 50 ms after it starts.
    fn pool_config(script: &str) -> PoolConfig {
        let mut config = Config::single_pool("p", "sh", &["-c", script], 1).pools[0].clone();
        config.supervision.ready_grace_ms = 50;
        config
    }

    /// Polls until `slot` is in `state`; panics after 10 s.
    async fn until(slot: &Slot, state: SlotState) {
        let t = Instant::now();
        while slot.state() != state {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{slot:?} never {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A fleet running slot 0 of a one-instance pool, and what a test observes and ends it with.
    struct Running {
        fleet: Fleet,
        pool: Arc<Pool>,
        slot: Arc<Slot>,
        sink: Arc<Recorder>,
        stop: watch::Sender<Option<Instant>>,
        tracker: TaskTracker,
    }

    /// Starts slot 0 of a one-instance pool of `config`.
    fn running(config: PoolConfig) -> Running {
        let pool = Arc::new(Pool::new(0, config, 1 << 20, &Arc::default()));
        let pools = Arc::new(Pools::new(vec![pool.clone()]));
        let sink = Arc::new(Recorder::default());
        let context = Context {
            sink: sink.clone(),
            limits: Limits::default(),
            escalation: CancellationToken::new(),
        };
        let (stop, stop_order) = watch::channel(None);
        let tracker = TaskTracker::new();
        let fleet = Fleet::new(context, pools, stop_order, tracker.clone());
        fleet.start(&pool, 0);
        let slot = pool.slots[0].clone();
        Running {
            fleet,
            pool,
            slot,
            sink,
            stop,
            tracker,
        }
    }

    impl Running {
        /// Orders slot 0 replaced by a worker of `config`, the old one given `within`; returns
        /// where the answer comes.
        fn replace(&self, config: PoolConfig, within: Duration) -> oneshot::Receiver<Replaced> {
            let (done, replaced) = oneshot::channel();
            let config = Arc::new(config);
            assert!(self.fleet.order(
                0,
                0,
                Order::Replace {
                    config,
                    within,
                    done
                }
            ));
            replaced
        }

        /// Orders the daemon's stop, the workers given `grace`, and waits (10 s at most) until
        /// every task ended; `expect` says why they must have.
        async fn stop(&self, grace: Duration, expect: &str) {
            self.stop.send(Some(Instant::now() + grace)).unwrap();
            self.tracker.close();
            tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
                .await
                .expect(expect);
        }
    }

    /// The answer to a replace order, within `secs` seconds.
    async fn answer(replaced: oneshot::Receiver<Replaced>, secs: u64) -> Replaced {
        tokio::time::timeout(Duration::from_secs(secs), replaced)
            .await
            .expect("answered")
            .unwrap()
    }

    #[tokio::test]
    async fn a_roll_replaces_the_worker_keeping_held_work_then_a_retirement_ends_it() {
        // The old worker answers nothing; its replacement echoes each request as its reply.
        let running = running(pool_config("exec sleep 1000"));
        let (fleet, pool, slot, sink) =
            (&running.fleet, &running.pool, &running.slot, &running.sink);
        until(slot, SlotState::Ready).await;
        let client = client();
        let request = br#"{"id":"a","method":"m"}"#;
        slot.enqueue_request(&client, request, 6..9, Instant::now())
            .unwrap();

        let within = Duration::from_millis(200);
        let replaced = running.replace(pool_config("exec cat"), within);
        until(slot, SlotState::Replacing).await;
        slot.enqueue_request(&client, request, 6..9, Instant::now())
            .unwrap();
        let t = Instant::now();
        let replaced = tokio::time::timeout(Duration::from_secs(10), replaced)
            .await
            .expect("the replacement becomes ready")
            .unwrap();
        assert_eq!(replaced, Replaced::Ready);
        assert!(
            t.elapsed() >= within,
            "the old worker had `within` to finish"
        );
        assert_eq!(
            *sink.failed.lock().unwrap(),
            [(ErrorKind::WorkerExited, Some(REPLACED_DETAIL.to_owned()), 1)],
            "the old worker's request failed, the held one did not"
        );
        assert_eq!(
            *sink.replies.lock().unwrap(),
            [(2, 2)],
            "the replacement answered the held request"
        );
        assert_eq!(slot.state(), SlotState::Ready);
        assert_eq!(slot.in_flight(), 0);

        let (done, retired) = oneshot::channel();
        let within = Duration::from_secs(5);
        assert!(fleet.order(0, 0, Order::Retire { within, done }));
        tokio::time::timeout(Duration::from_secs(10), retired)
            .await
            .expect("the retirement ends")
            .unwrap();
        assert_eq!(slot.state(), SlotState::Stopped);
        assert_eq!(slot.pid(), None);
        let (done, _) = oneshot::channel();
        assert!(
            !fleet.order(0, 0, Order::Retire { within, done }),
            "no supervisor runs any more"
        );

        // Started again (the pool grew back, in a new version), the slot takes work again.
        let grown = Arc::new(Pool {
            id: pool.id.clone(),
            index: 0,
            config: Arc::new(pool_config("exec cat")),
            slots: pool.slots.clone(),
            active: 1,
            metrics: crate::metrics::PoolMetrics::new(&pool.id),
        });
        fleet.start(&grown, 0);
        until(slot, SlotState::Ready).await;
        slot.enqueue_request(&client, request, 6..9, Instant::now())
            .unwrap();
        let t = Instant::now();
        while slot.in_flight() > 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "never answered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        running
            .stop(Duration::from_secs(2), "the daemon's stop ends every task")
            .await;
        assert_eq!(slot.state(), SlotState::Stopped);
    }

    #[tokio::test]
    async fn a_replacement_that_exits_before_it_is_ready_fails_the_order_and_is_restarted() {
        let running = running(pool_config("exec cat"));
        until(&running.slot, SlotState::Ready).await;
        let mut config = pool_config("exit 3");
        config.supervision.ready_grace_ms = 5_000;
        let replaced = answer(running.replace(config, Duration::from_secs(5)), 10).await;
        assert_eq!(
            replaced,
            Replaced::Failed("exited: exit status: 3".to_owned())
        );
        // The supervisor goes on restarting it per policy (always).
        until(&running.slot, SlotState::Backoff).await;
        running.stop(Duration::ZERO, "stopped").await;
    }

    /// Replaces a worker that ignores SIGTERM and, once its stdin ends, works 3 s more and then
    /// leaves `finished` behind (as codex-worker finishes its turns); returns whether it did.
    async fn finished_after_input_ended(within: Duration) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let finished = dir.path().join("finished");
        let script = format!(
            "trap '' TERM; cat >/dev/null; sleep 3; touch '{}'",
            finished.display()
        );
        let running = running(pool_config(&script));
        until(&running.slot, SlotState::Ready).await;
        let replaced = answer(running.replace(pool_config("exec cat"), within), 20).await;
        assert_eq!(replaced, Replaced::Ready);
        running.stop(Duration::ZERO, "stopped").await;
        finished.exists()
    }

    #[tokio::test]
    async fn a_replaced_worker_has_the_rest_of_the_bound_after_its_input_ends() {
        // Nothing pending: the worker is stopped at once, but SIGKILL waits for the bound (10 s),
        // not STOP_GRACE (2 s), so the 3 s of work after end of input are done.
        assert!(finished_after_input_ended(Duration::from_secs(10)).await);
    }

    #[tokio::test]
    async fn a_replaced_worker_is_killed_at_the_end_of_the_bound() {
        // A bound of 1 s: SIGKILL STOP_GRACE after SIGTERM, before the 3 s of work end.
        assert!(!finished_after_input_ended(Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn the_daemons_stop_wins_over_a_roll_in_progress() {
        let running = running(pool_config("exec sleep 1000"));
        let slot = &running.slot;
        until(slot, SlotState::Ready).await;
        let client = client();
        let request = br#"{"id":"a","method":"m"}"#;
        slot.enqueue_request(&client, request, 6..9, Instant::now())
            .unwrap();
        let replaced = running.replace(pool_config("exec cat"), Duration::from_secs(60));
        until(slot, SlotState::Replacing).await;
        slot.enqueue_request(&client, request, 6..9, Instant::now())
            .unwrap();
        running
            .stop(
                Duration::from_secs(2),
                "the stop does not wait for the roll",
            )
            .await;
        assert!(replaced.await.is_err(), "the order goes unanswered");
        assert_eq!(slot.state(), SlotState::Stopped);
        assert_eq!(
            *running.sink.failed.lock().unwrap(),
            [(ErrorKind::ShuttingDown, None, 2)],
            "old and held requests are refused alike"
        );
    }

    #[tokio::test]
    async fn a_resting_slot_takes_a_replace_at_once() {
        // A long backoff: only the order can end it in time.
        let mut crashing = pool_config("exit 1");
        crashing.supervision.backoff_initial_ms = 60_000;
        crashing.supervision.backoff_max_ms = 60_000;
        let running = running(crashing);
        until(&running.slot, SlotState::Backoff).await;
        let replaced = running.replace(pool_config("exec cat"), Duration::from_secs(60));
        assert_eq!(answer(replaced, 10).await, Replaced::Ready);
        assert_eq!(running.slot.state(), SlotState::Ready);
        running.stop(Duration::ZERO, "stopped").await;
    }
}
