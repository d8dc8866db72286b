//! The relay is blind: after Alice sends sealed messages to Bob over an anonymous
//! connection, nothing in the database names Alice outside her own registration, and no
//! plaintext appears anywhere. Runs on SQLite and on PostgreSQL, reading every row of
//! every table directly with sqlx.

mod common;

use common::relay::*;
use common::*;
use hyper::{Method, StatusCode};
use sotto_crypto::{AccountId, open, seal};
use sotto_proto::{Body, Frame, PushProvider, PushRegistration, Recipient, Send, SendOutcome, SendResult};
use sqlx::{Column, Connection, Row, TypeInfo, ValueRef};

/// One column value as read from the database.
#[derive(Debug)]
enum Value {
    Bytes(Vec<u8>),
    Text(String),
    /// Numbers, booleans, timestamps, NULL: rendered as text where the backend allows.
    Other,
}

struct Table {
    name: String,
    /// Each row: (column name, value).
    rows: Vec<Vec<(String, Value)>>,
}

async fn dump_sqlite(url: &str) -> Vec<Table> {
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let names: Vec<(String,)> = sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let mut tables = Vec::new();
    for (name,) in names {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM \"{name}\"")))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let rows = rows
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        let col = row.columns()[i].name().to_owned();
                        let raw = row.try_get_raw(i).unwrap();
                        let value = if raw.is_null() {
                            Value::Other
                        } else {
                            match raw.type_info().name() {
                                "BLOB" => Value::Bytes(row.get::<Vec<u8>, _>(i)),
                                "TEXT" => Value::Text(row.get::<String, _>(i)),
                                "INTEGER" => Value::Text(row.get::<i64, _>(i).to_string()),
                                _ => Value::Other,
                            }
                        };
                        (col, value)
                    })
                    .collect()
            })
            .collect();
        tables.push(Table { name, rows });
    }
    conn.close().await.unwrap();
    tables
}

async fn dump_postgres(url: &str) -> Vec<Table> {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut tables = Vec::new();
    for (name,) in names {
        let cols: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(&name)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert!(!cols.is_empty(), "table {name} has no columns");
        // bytea as bytes; everything else cast to text so that no value escapes the check.
        let select = cols
            .iter()
            .map(|(c, ty)| {
                if ty == "bytea" {
                    format!("\"{c}\"")
                } else {
                    format!("\"{c}\"::text")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {select} FROM \"{name}\"")))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let rows = rows
            .iter()
            .map(|row| {
                cols.iter()
                    .enumerate()
                    .map(|(i, (c, ty))| {
                        let value = if ty == "bytea" {
                            row.get::<Option<Vec<u8>>, _>(i).map_or(Value::Other, Value::Bytes)
                        } else {
                            row.get::<Option<String>, _>(i).map_or(Value::Other, Value::Text)
                        };
                        (c.clone(), value)
                    })
                    .collect()
            })
            .collect();
        tables.push(Table { name, rows });
    }
    conn.close().await.unwrap();
    tables
}

/// Something that must not appear: its raw byte forms and its text forms (lowercase).
struct Needle {
    what: String,
    raw: Vec<Vec<u8>>,
    text: Vec<String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

impl Needle {
    /// A 32-byte identifier: raw, hex, and base32 (the account-id text form).
    fn id(what: String, bytes: [u8; 32]) -> Self {
        Needle {
            what,
            raw: vec![bytes.to_vec()],
            text: vec![hex(&bytes), AccountId(bytes).to_string()],
        }
    }

    fn plaintext(what: String, p: &[u8]) -> Self {
        Needle {
            what,
            raw: vec![p.to_vec()],
            text: vec![String::from_utf8(p.to_vec()).unwrap().to_lowercase(), hex(p)],
        }
    }

    fn found_in(&self, v: &Value) -> bool {
        let (bytes, text) = match v {
            Value::Bytes(b) => (b.clone(), String::from_utf8_lossy(b).to_lowercase()),
            Value::Text(t) => (t.as_bytes().to_vec(), t.to_lowercase()),
            Value::Other => return false,
        };
        self.raw.iter().any(|r| contains(&bytes, r)) || self.text.iter().any(|t| text.contains(t.as_str()))
    }
}

/// Tables whose rows may carry their own account's identifiers: the registration.
const REGISTRATION_TABLES: [&str; 4] = ["accounts", "devices", "prekeys", "push_registrations"];

async fn blindness(url: String, dump: fn(String) -> futures_util::future::BoxFuture<'static, Vec<Table>>) {
    let mut relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(40);
    let alice = account(&mut r, 2);
    let bob = account(&mut r, 2);
    for a in [&alice, &bob] {
        assert_eq!(relay.register(a).await, StatusCode::CREATED);
        for d in &a.devices {
            let up = d.prekeys(&mut r, 1, 3, 2);
            let (status, _) = relay.authed(d, Method::PUT, "/v1/prekeys", up.encode()).await;
            assert_eq!(status, StatusCode::NO_CONTENT);
            let reg = PushRegistration {
                provider: PushProvider::Webhook,
                token: format!("https://push.example/{}", d.id().0).into_bytes(),
            };
            let (status, _) = relay.authed(d, Method::PUT, "/v1/push", reg.encode()).await;
            assert_eq!(status, StatusCode::NO_CONTENT);
        }
    }
    // Alice fetches Bob's bundles, as a sender would before a first message.
    let (status, _) = relay
        .authed(
            &alice.devices[0],
            Method::GET,
            &format!("/v1/accounts/{}/bundles", bob.id()),
            vec![],
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Alice seals known plaintexts to each of Bob's devices and sends them anonymously.
    let plaintexts: Vec<Vec<u8>> = (0..6)
        .map(|i| format!("blindness plaintext {i}: meet me at the old mill at {i} o'clock").into_bytes())
        .collect();
    let sender = &alice.devices[0].device;
    let mut anon = relay.open_anonymous().await;
    for (i, p) in plaintexts.iter().enumerate() {
        let recipients = bob
            .devices
            .iter()
            .map(|d| Recipient {
                account_id: bob.id(),
                device_id: d.id(),
                head: seal(sender, &d.device.identity(), 1, p, &mut r).unwrap(),
            })
            .collect();
        let message_id = i as u64 + 1;
        send(
            &mut anon,
            &Frame::Send(Send {
                message_id,
                access: vec![],
                body: vec![],
                recipients,
            }),
        )
        .await;
        match recv(&mut anon).await {
            Frame::SendResult(SendResult {
                message_id: id,
                outcome: SendOutcome::Stored { .. },
            }) => assert_eq!(id, message_id),
            other => panic!("expected Stored, got {other:?}"),
        }
    }

    // Bob's device 1 receives and opens everything (the envelopes are real) and acks the
    // first half; device 2 stays offline. 3 + 6 envelopes stay stored.
    let mut wb = relay.connect(&bob.devices[0]).await;
    for (i, p) in plaintexts.iter().enumerate() {
        match recv(&mut wb).await {
            Frame::Deliver(d) => {
                assert_eq!(d.seq, i as u64 + 1);
                let opened = open(&bob.devices[0].device, &d.envelope).unwrap();
                assert_eq!(&opened.content, p);
                assert_eq!(opened.sender.account_id, alice.id());
            }
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    assert_eq!(recv(&mut wb).await, Frame::QueueEmpty);
    send(&mut wb, &Frame::Ack { seq: 3 }).await;
    // A frame round trip so that the ack is handled before the relay stops.
    send(&mut wb, &Frame::Ack { seq: 99 }).await;
    assert!(matches!(recv(&mut wb).await, Frame::Error { .. }));
    drop(wb);
    drop(anon);
    relay.stop().await;

    let tables = dump(url).await;
    assert!(!tables.is_empty(), "no tables found: the check would pass vacuously");
    let envelopes = tables
        .iter()
        .find(|t| t.name == "envelopes")
        .expect("an envelopes table");
    assert_eq!(envelopes.rows.len(), 9, "unacked envelopes stored");

    let mut alice_needles = vec![Needle::id("Alice's account id".into(), alice.id().0)];
    for d in &alice.devices {
        let id = d.device.identity();
        alice_needles.push(Needle::id(
            format!("Alice's device {} DSK", d.id().0),
            *id.signing_key.as_bytes(),
        ));
        alice_needles.push(Needle::id(format!("Alice's device {} IK", d.id().0), id.identity_key.0));
    }
    let plain_needles: Vec<Needle> = plaintexts
        .iter()
        .enumerate()
        .map(|(i, p)| Needle::plaintext(format!("plaintext {i}"), p))
        .collect();

    let alice_raw = alice.id().0.to_vec();
    let mut values = 0usize;
    let mut found_in_registration = 0usize;
    for table in &tables {
        for row in &table.rows {
            let owner = row.iter().find(|(c, _)| c == "account_id").map(|(_, v)| v);
            let alice_owned = REGISTRATION_TABLES.contains(&table.name.as_str())
                && matches!(owner, Some(Value::Bytes(b)) if *b == alice_raw);
            for (col, v) in row {
                values += 1;
                for n in &plain_needles {
                    assert!(!n.found_in(v), "{} found in {}.{col}", n.what, table.name);
                }
                for n in &alice_needles {
                    if n.found_in(v) {
                        assert!(
                            alice_owned,
                            "{} found in {}.{col} of a row that is not Alice's registration",
                            n.what, table.name
                        );
                        found_in_registration += 1;
                    }
                }
            }
        }
    }
    assert!(values > 0);
    // The search itself works: Alice's id and keys are where they belong.
    assert!(found_in_registration >= alice_needles.len(), "{found_in_registration}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let url = sqlite_url();
    blindness(url.clone(), |url| Box::pin(async move { dump_sqlite(&url).await })).await;
    remove_sqlite(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    if let Some(url) = postgres_url().await {
        blindness(url, |url| Box::pin(async move { dump_postgres(&url).await })).await;
    }
}
