//! A reference model of a queue backend: a few thousand random operations
//! (send with and without idempotency keys, receive, ack, retry, release, move to a
//! dead-letter queue, redrive, purge) against any [`QueueStore`], each
//! checked against a plain map of what every message should be. Written
//! against the trait, so every backend (embedded now, NATS next) runs the
//! same model.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use super::{MessageState, NewMessage, QueueError, QueueId, QueueStore, Uuid};

/// Leases outlive the test: only the model's operations end them.
const LEASE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq)]
enum Where {
    Waiting,
    InFlight,
    Dead,
    Done(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Expected {
    payload: Vec<u8>,
    attempts: u32,
    last_error: Option<String>,
    at: Where,
}

/// A small deterministic generator: the same seed, the same run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Runs `steps` random operations on `store` and checks each against the
/// model; `owner` must have no messages yet.
pub(crate) async fn run(store: &dyn QueueStore, owner: &str, seed: u64, steps: usize) {
    let (queue, dlq) = (QueueId::new(owner, "jobs"), QueueId::new(owner, "jobs-dlq"));
    let mut rng = Rng(seed | 1);
    let mut model: BTreeMap<Uuid, Expected> = BTreeMap::new();
    let mut keys: BTreeMap<String, Uuid> = BTreeMap::new();
    let in_state = |model: &BTreeMap<Uuid, Expected>, at: &Where| -> Vec<Uuid> {
        model
            .iter()
            .filter(|(_, m)| &m.at == at)
            .map(|(id, _)| *id)
            .collect()
    };
    for step in 0..steps {
        let context = format!("seed {seed}, step {step}");
        match rng.below(10) {
            // Send one to three, some under a key seen before.
            0..=2 => {
                let n = 1 + rng.below(3) as usize;
                let mut batch = Vec::new();
                for i in 0..n {
                    let key = (rng.below(4) == 0).then(|| format!("k{}", rng.below(8)));
                    let payload = format!("{step}-{i}").into_bytes();
                    batch.push(NewMessage {
                        payload,
                        idempotency_key: key,
                    });
                }
                let accepted = store.send(&queue, batch.clone()).await.unwrap();
                assert_eq!(accepted.len(), n, "{context}");
                for (sent, got) in batch.into_iter().zip(accepted) {
                    let first = sent.idempotency_key.as_ref().and_then(|k| keys.get(k));
                    match first {
                        Some(id) => {
                            assert!(got.duplicate, "{context}: a key seen before");
                            assert_eq!(got.id, *id, "{context}: the first id");
                        }
                        None => {
                            assert!(!got.duplicate, "{context}");
                            if let Some(key) = sent.idempotency_key {
                                keys.insert(key, got.id);
                            }
                            let expected = Expected {
                                payload: sent.payload,
                                attempts: 0,
                                last_error: None,
                                at: Where::Waiting,
                            };
                            assert!(model.insert(got.id, expected).is_none(), "{context}");
                        }
                    }
                }
            }
            // Receive: what was waiting, whole, never what was not.
            3..=4 => {
                let max = 1 + rng.below(4) as usize;
                let waiting = in_state(&model, &Where::Waiting);
                let got = store
                    .receive(&queue, max, LEASE, Duration::ZERO)
                    .await
                    .unwrap();
                assert_eq!(got.len(), max.min(waiting.len()), "{context}");
                for message in got {
                    let m = model
                        .get_mut(&message.id)
                        .expect("a message the model knows");
                    assert_eq!(m.at, Where::Waiting, "{context}: leased twice");
                    assert_eq!(message.payload, m.payload, "{context}");
                    assert_eq!(message.attempts, m.attempts, "{context}");
                    assert_eq!(message.last_error, m.last_error, "{context}");
                    m.at = Where::InFlight;
                }
            }
            // End a lease: ack, retry, release (uncounted) or dead-letter.
            5..=7 => {
                let leased = in_state(&model, &Where::InFlight);
                if leased.is_empty() {
                    continue;
                }
                let id = leased[rng.below(leased.len() as u64) as usize];
                let m = model.get_mut(&id).unwrap();
                match rng.below(4) {
                    0 => {
                        let outcome = format!("done at {step}").into_bytes();
                        store.ack(&queue, id, outcome.clone()).await.unwrap();
                        m.at = Where::Done(outcome);
                    }
                    1 => {
                        let error = format!("failed at {step}");
                        store
                            .retry(&queue, id, Duration::ZERO, error.clone())
                            .await
                            .unwrap();
                        (m.at, m.attempts, m.last_error) =
                            (Where::Waiting, m.attempts + 1, Some(error));
                    }
                    2 => {
                        store.release(&queue, id, Duration::ZERO).await.unwrap();
                        m.at = Where::Waiting;
                    }
                    _ => {
                        let error = format!("dead at {step}");
                        store
                            .move_to(&queue, id, &dlq, error.clone())
                            .await
                            .unwrap();
                        (m.at, m.attempts, m.last_error) =
                            (Where::Dead, m.attempts + 1, Some(error));
                    }
                }
            }
            // A lease that is not held cannot end.
            8 => {
                let done: Vec<Uuid> = model
                    .iter()
                    .filter(|(_, m)| matches!(m.at, Where::Done(_) | Where::Waiting))
                    .map(|(id, _)| *id)
                    .collect();
                if let Some(id) = done.first() {
                    let refused = store.ack(&queue, *id, Vec::new()).await;
                    assert!(
                        matches!(refused, Err(QueueError::NotInFlight { .. })),
                        "{context}: {refused:?}"
                    );
                }
            }
            // Redrive the dead letters: back to waiting, attempts reset.
            _ => {
                let dead = in_state(&model, &Where::Dead);
                let moved = store.redrive(&dlq, &queue).await.unwrap();
                assert_eq!(moved, dead.len(), "{context}");
                for id in dead {
                    let m = model.get_mut(&id).unwrap();
                    (m.at, m.attempts) = (Where::Waiting, 0);
                }
            }
        }
        check(store, owner, &queue, &dlq, &model, &context).await;
    }
}

/// Every message is where the model says, and the counts agree.
async fn check(
    store: &dyn QueueStore,
    owner: &str,
    queue: &QueueId,
    dlq: &QueueId,
    model: &BTreeMap<Uuid, Expected>,
    context: &str,
) {
    let count = |at: &Where| model.values().filter(|m| &m.at == at).count() as u64;
    let stats = store.stats(queue).await.unwrap();
    assert_eq!(stats.depth, count(&Where::Waiting), "{context}: depth");
    assert_eq!(
        stats.in_flight,
        count(&Where::InFlight),
        "{context}: in flight"
    );
    assert_eq!(
        store.stats(dlq).await.unwrap().depth,
        count(&Where::Dead),
        "{context}: dead"
    );
    let listed = store.list(dlq, 10_000).await.unwrap();
    assert_eq!(
        listed.len() as u64,
        count(&Where::Dead),
        "{context}: listed"
    );
    for (id, m) in model {
        let state = store.locate(owner, *id).await.unwrap();
        let ok = match (&m.at, &state) {
            (
                Where::Waiting,
                Some(MessageState::Waiting {
                    queue: q, attempts, ..
                }),
            ) => q == queue && *attempts == m.attempts,
            (
                Where::Dead,
                Some(MessageState::Waiting {
                    queue: q, attempts, ..
                }),
            ) => q == dlq && *attempts == m.attempts,
            (Where::InFlight, Some(MessageState::InFlight { attempts, .. })) => {
                *attempts == m.attempts
            }
            (Where::Done(outcome), Some(MessageState::Done { outcome: got })) => outcome == got,
            _ => false,
        };
        assert!(ok, "{context}: {id} should be {:?}, is {state:?}", m.at);
    }
}
