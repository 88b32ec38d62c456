//! The key-value reference model: thousands of random operations on a
//! backend and on a `BTreeMap`, which must agree at every step: every
//! value, every page of every listing, every atomic's answer and the
//! bytes billed. Backends run it from their own tests
//! ([`run`]), each with its own hooks between steps (the embedded one
//! syncs its journal at random points).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};

use super::{CasOutcome, KvError, KvStore, StoreId};

/// xorshift64*: a deterministic sequence, so a failure can be replayed.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub(crate) fn key(rng: &mut Rng) -> String {
    // Few distinct keys under a few prefixes, so operations collide.
    format!(
        "{}/{}",
        ["a", "b", "ab"][rng.below(3) as usize],
        rng.below(40)
    )
}

pub(crate) fn value(rng: &mut Rng) -> Vec<u8> {
    if rng.below(4) == 0 {
        rng.below(100).to_string().into_bytes()
    } else {
        let len = rng.below(24) as usize;
        (0..len).map(|_| rng.below(256) as u8).collect()
    }
}

pub(crate) fn list_model(model: &BTreeMap<String, Vec<u8>>, prefix: &str) -> Vec<String> {
    model
        .keys()
        .filter(|k| k.starts_with(prefix))
        .cloned()
        .collect()
}

/// What each owner of the model run stores: the model's keys and values,
/// and the neighbours' "a/1" (4 bytes each with the value).
pub(crate) fn stored_model(model: &BTreeMap<String, Vec<u8>>) -> HashMap<String, u64> {
    let sum: usize = model.iter().map(|(k, v)| k.len() + v.len()).sum();
    HashMap::from([
        ("owner".to_string(), sum as u64 + 4),
        ("other".to_string(), 4),
    ])
}

/// The store the model runs on, and what it must end with.
pub(crate) const STORE: (&str, &str) = ("owner", "default");

/// Runs `steps` random operations on `kv` and on a model, comparing every
/// answer; `between` runs before each step with the sequence (to sync, to
/// crash, at random points of its own). Neighbouring stores of the same
/// and another owner are written first and checked last: nothing of the
/// run may reach them. Returns the model, for checks after a reopen.
pub(crate) async fn run(
    kv: &dyn KvStore,
    steps: usize,
    mut between: impl FnMut(&mut Rng),
) -> BTreeMap<String, Vec<u8>> {
    let store = StoreId::new(STORE.0, STORE.1);
    let other_store = StoreId::new("owner", "defaults");
    let other_owner = StoreId::new("other", "default");
    kv.set(&other_store, "a/1", b"x".to_vec()).await.unwrap();
    kv.set(&other_owner, "a/1", b"y".to_vec()).await.unwrap();
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for step in 0..steps {
        between(&mut rng);
        let k = key(&mut rng);
        match rng.below(10) {
            0 => assert_eq!(
                kv.get(&store, &k).await.unwrap(),
                model.get(&k).cloned(),
                "step {step} get {k}"
            ),
            1 => {
                let v = value(&mut rng);
                kv.set(&store, &k, v.clone()).await.unwrap();
                model.insert(k, v);
            }
            2 => {
                kv.delete(&store, &k).await.unwrap();
                model.remove(&k);
            }
            3 => assert_eq!(kv.exists(&store, &k).await.unwrap(), model.contains_key(&k)),
            4 => {
                let delta = rng.below(21) as i64 - 10;
                let expected = match model.get(&k) {
                    None => Ok(delta),
                    Some(v) => std::str::from_utf8(v)
                        .ok()
                        .and_then(|t| t.trim().parse::<i64>().ok())
                        .map(|n| n + delta)
                        .ok_or(KvError::NotAnInteger { key: k.clone() }),
                };
                let got = kv.increment(&store, &k, delta).await;
                assert_eq!(got, expected, "step {step} increment {k}");
                if let Ok(n) = got {
                    model.insert(k, n.to_string().into_bytes());
                }
            }
            5 => {
                // Half the time expect the right value, else a guess.
                let expected = if rng.below(2) == 0 {
                    model.get(&k).cloned()
                } else {
                    Some(value(&mut rng))
                };
                let new = value(&mut rng);
                let got = kv
                    .compare_and_swap(&store, &k, expected.clone(), new.clone())
                    .await
                    .unwrap();
                if model.get(&k).cloned() == expected {
                    assert_eq!(got, CasOutcome::Swapped, "step {step}");
                    model.insert(k, new);
                } else {
                    assert_eq!(
                        got,
                        CasOutcome::Mismatch(model.get(&k).cloned()),
                        "step {step}"
                    );
                }
            }
            6 => {
                let entries: Vec<(String, Vec<u8>)> = (0..rng.below(8))
                    .map(|_| (key(&mut rng), value(&mut rng)))
                    .collect();
                kv.set_many(&store, entries.clone()).await.unwrap();
                model.extend(entries);
            }
            7 => {
                let keys: Vec<String> = (0..rng.below(8)).map(|_| key(&mut rng)).collect();
                let got = kv.get_many(&store, keys.clone()).await.unwrap();
                let want: Vec<_> = keys.iter().map(|k| model.get(k).cloned()).collect();
                assert_eq!(got, want, "step {step} get_many");
            }
            8 => {
                let keys: Vec<String> = (0..rng.below(8)).map(|_| key(&mut rng)).collect();
                kv.delete_many(&store, keys.clone()).await.unwrap();
                for k in keys {
                    model.remove(&k);
                }
            }
            _ => {
                // Page through a prefix with a random page size.
                let prefix = ["", "a", "a/", "ab", "b/1", "zz"][rng.below(6) as usize];
                let limit = 1 + rng.below(7) as usize;
                let mut all = Vec::new();
                let mut cursor: Option<String> = None;
                loop {
                    let page = kv
                        .list(&store, prefix, cursor.as_deref(), limit)
                        .await
                        .unwrap();
                    assert!(page.keys.len() <= limit);
                    all.extend(page.keys);
                    match page.cursor {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
                assert_eq!(
                    all,
                    list_model(&model, prefix),
                    "step {step} list {prefix:?}"
                );
                assert_eq!(
                    kv.stored_bytes().await.unwrap(),
                    stored_model(&model),
                    "step {step} stored bytes"
                );
            }
        }
    }
    assert_eq!(
        kv.get(&other_store, "a/1").await.unwrap(),
        Some(b"x".to_vec())
    );
    assert_eq!(
        kv.get(&other_owner, "a/1").await.unwrap(),
        Some(b"y".to_vec())
    );
    model
}
