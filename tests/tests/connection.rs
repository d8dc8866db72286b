//! The connection's life as the app sees it: state events while the relay goes away and
//! comes back, and one device run twice (two processes) stopping instead of fighting.

use sotto_sdk::store::SqliteStore;
use sotto_sdk::{Client, ClientError, ConnectionState, DisconnectCause, Event, StopCause};
use sotto_tests::faults::back_up;
use sotto_tests::{Device, TempDir, TestRelay, key, options};

fn is_state(e: &Event, f: impl Fn(&ConnectionState) -> bool) -> bool {
    matches!(e, Event::ConnectionState { state } if f(state))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_sees_the_connection_go_offline_and_come_back() {
    let mut relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 91).await;
    alice
        .wait_for(|e| is_state(e, |s| *s == ConnectionState::Connected))
        .await;
    relay.stop().await;
    // Offline, with the time to the next attempt; then attempts that fail.
    alice
        .wait_for(|e| {
            is_state(
                e,
                |s| matches!(s, ConnectionState::Disconnected { cause, .. } if *cause != DisconnectCause::Unreachable),
            )
        })
        .await;
    let e = alice
        .wait_for(|e| {
            is_state(e, |s| {
                matches!(
                    s,
                    ConnectionState::Disconnected {
                        cause: DisconnectCause::Unreachable,
                        ..
                    }
                )
            })
        })
        .await;
    let Event::ConnectionState {
        state: ConnectionState::Disconnected { retry_in_ms, .. },
    } = e
    else {
        unreachable!()
    };
    assert!(retry_in_ms <= 500, "{retry_in_ms}");
    alice
        .wait_for(|e| is_state(e, |s| *s == ConnectionState::Connecting))
        .await;
    relay.restart().await;
    alice
        .wait_for(|e| is_state(e, |s| *s == ConnectionState::Connected))
        .await;
    // `Connected` is still there for existing callers.
    alice.wait_for(|e| matches!(e, Event::Connected)).await;
}

/// Two processes run one device from copies of its store: the relay keeps the newer
/// connection and tells the older one (`REPLACED`). The older stops and says why,
/// instead of taking the socket back (which made both reconnect twice a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_run_twice_stops_the_replaced_one_instead_of_fighting() {
    let relay = TestRelay::start().await;
    let alice = Device::create(&relay, 92).await;
    let bob = Device::create(&relay, 93).await;
    bob.client.add_contact(&alice.client.contact_link()).await.unwrap();
    let offline = alice.restart_offline().await;
    let mut first = offline.online().await;
    first
        .wait_for(|e| is_state(e, |s| *s == ConnectionState::Connected))
        .await;
    // A copy of the store, opened as a second process would.
    let copy = TempDir::new("copy");
    back_up(&first.dir.path().join("client.db"), copy.path());
    let mut second = Device::reopen(copy, first.seed).await;
    second
        .wait_for(|e| is_state(e, |s| *s == ConnectionState::Connected))
        .await;
    first
        .wait_for(|e| {
            is_state(e, |s| {
                *s == ConnectionState::Stopped {
                    cause: StopCause::Superseded,
                }
            })
        })
        .await;
    // The second keeps its connection: messages reach it.
    bob.client.send_text(&second.id(), "still one").await.unwrap();
    assert_eq!(second.receive(1).await[0].text, "still one");
    assert!(
        !second
            .stash
            .iter()
            .any(|e| is_state(e, |s| matches!(s, ConnectionState::Stopped { .. }))),
        "{:?}",
        second.stash
    );
}

/// A second client on the same SQLite store is refused at once with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_on_one_store_is_refused() {
    let relay = TestRelay::start().await;
    let alice = Device::create(&relay, 94).await;
    let path = alice.dir.path().join("client.db");
    let store = SqliteStore::open(&path, &key(94)).await.unwrap();
    let err = Client::open(store, key(94), options(94)).await.unwrap_err();
    assert!(matches!(err, ClientError::DeviceInUse { .. }), "{err:?}");
    assert_eq!(err.code(), "device_in_use");
    assert!(err.is_retryable());
    // Once the first shut down, the store opens.
    let offline = alice.restart_offline().await;
    let mut again = offline.online().await;
    again.wait_for(|e| matches!(e, Event::Connected)).await;
}
