//! Secure aggregation (after Bonawitz et al., CCS 2017): the server learns the sum of the
//! nodes' updates and nothing about any one of them.
//!
//! Each node encodes its (example-weighted) update in fixed point modulo 2^64 and adds masks:
//! - a pairwise mask per peer, expanded by ChaCha20 from an X25519 shared secret: node i adds
//!   it for peers j > i and subtracts it for j < i, so the pairwise masks cancel in the sum;
//! - a self mask from a random seed of its own, so an update that arrives after its node was
//!   declared dropped still cannot be unmasked.
//!
//! Both the X25519 secret key and the self-mask seed are Shamir-shared (threshold t) among the
//! round's participants. After the masked inputs are in, the survivors reveal, for each dropped
//! node, shares of its key (so its pairwise masks can be rebuilt and removed) and, for each
//! surviving node, shares of its self-mask seed; never both for one node. With fewer than t
//! survivors the round cannot be unmasked and fails.
//!
//! In this one-machine simulator the shares travel in memory; a deployment would encrypt each
//! share to its recipient over the pairwise key.

use crate::{Error, Result};
use blahaj::{Share, Sharks};
use rand::RngCore;
use rand_chacha::rand_core::SeedableRng;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use x25519_dalek::{PublicKey, StaticSecret};

/// Fixed-point bits after the binary point (2^-24 ≈ 6e-8 resolution).
pub const SCALE_BITS: u32 = 24;

/// Bytes of one Shamir share of a 32-byte secret (x coordinate + 32 bytes).
pub const SHARE_BYTES: u64 = 33;

/// Encodes a value in fixed point modulo 2^64 (two's complement for negatives).
pub fn encode(x: f64) -> u64 {
    (x * (1u64 << SCALE_BITS) as f64).round() as i64 as u64
}

/// Decodes a (summed) fixed-point value.
pub fn decode(v: u64) -> f64 {
    v as i64 as f64 / (1u64 << SCALE_BITS) as f64
}

/// `len` pseudo-random words from a 32-byte seed (ChaCha20).
fn prg(seed: [u8; 32], len: usize) -> Vec<u64> {
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
    (0..len).map(|_| rng.next_u64()).collect()
}

/// The seed of the mask between nodes `a` and `b` in `round`, from their shared secret.
fn pair_seed(shared: &[u8; 32], round: u64, a: usize, b: usize) -> [u8; 32] {
    let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
    let mut h = Sha256::new();
    h.update(b"frugal secagg pair mask");
    h.update(shared);
    h.update(round.to_le_bytes());
    h.update(lo.to_le_bytes());
    h.update(hi.to_le_bytes());
    h.finalize().into()
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b
}

/// One node's secrets for one round.
pub struct Client {
    pub id: usize,
    secret: StaticSecret,
    pub public: PublicKey,
    self_seed: [u8; 32],
}

/// The shares a node deals: for each recipient (by id), a share of its key and of its self seed.
pub struct Dealt {
    pub from: usize,
    pub key_shares: BTreeMap<usize, Vec<u8>>,
    pub seed_shares: BTreeMap<usize, Vec<u8>>,
}

impl Client {
    /// Fresh keys and self seed from the operating system's CSPRNG.
    pub fn new(id: usize) -> Client {
        let secret = StaticSecret::from(random32());
        let public = PublicKey::from(&secret);
        Client {
            id,
            secret,
            public,
            self_seed: random32(),
        }
    }

    /// Shamir-shares the key and the self seed among `recipients` with threshold `t`.
    pub fn deal(&self, recipients: &[usize], t: usize) -> Result<Dealt> {
        if t == 0 || t > recipients.len() || recipients.len() > 255 {
            return Err(Error::Invalid(format!(
                "secure aggregation threshold {t} must be between 1 and the {} participants (at most 255)",
                recipients.len()
            )));
        }
        let sharks = Sharks(t as u8);
        let deal = |secret: &[u8]| -> BTreeMap<usize, Vec<u8>> {
            recipients
                .iter()
                .copied()
                .zip(sharks.dealer(secret))
                .map(|(r, s)| (r, Vec::from(&s)))
                .collect()
        };
        Ok(Dealt {
            from: self.id,
            key_shares: deal(self.secret.as_bytes()),
            seed_shares: deal(&self.self_seed),
        })
    }

    /// The masked, encoded input: `values` plus the pairwise masks with every peer in `peers`
    /// (id → public key, self excluded) and the self mask.
    pub fn mask(&self, values: &[f64], peers: &BTreeMap<usize, PublicKey>, round: u64) -> Vec<u64> {
        let mut y: Vec<u64> = values.iter().map(|&x| encode(x)).collect();
        let own = prg(self.self_seed, y.len());
        y.iter_mut()
            .zip(&own)
            .for_each(|(a, m)| *a = a.wrapping_add(*m));
        for (&j, pk) in peers {
            if j == self.id {
                continue;
            }
            let shared = self.secret.diffie_hellman(pk);
            let m = prg(pair_seed(shared.as_bytes(), round, self.id, j), y.len());
            for (a, m) in y.iter_mut().zip(&m) {
                *a = if self.id < j {
                    a.wrapping_add(*m)
                } else {
                    a.wrapping_sub(*m)
                };
            }
        }
        y
    }
}

/// What the server holds at the end of a round.
pub struct Collected<'a> {
    /// Masked inputs of the nodes that sent one.
    pub masked: BTreeMap<usize, Vec<u64>>,
    /// Public keys of every participant that started the round.
    pub publics: &'a BTreeMap<usize, PublicKey>,
    /// Every deal of the round.
    pub dealt: &'a [Dealt],
    pub threshold: usize,
    pub round: u64,
}

/// Unmasks the sum of the survivors' inputs. Survivors are the nodes in `masked`; the dropped
/// are the other participants. Returns the decoded sum.
pub fn unmask(c: &Collected) -> Result<Vec<f64>> {
    let survivors: Vec<usize> = c.masked.keys().copied().collect();
    if survivors.len() < c.threshold {
        return Err(Error::Invalid(format!(
            "only {} nodes finished the round, fewer than the secure-aggregation threshold {}; the sum cannot be unmasked",
            survivors.len(),
            c.threshold
        )));
    }
    let len = c.masked.values().next().map_or(0, Vec::len);
    let mut sum = vec![0u64; len];
    for y in c.masked.values() {
        if y.len() != len {
            return Err(Error::Invalid("masked inputs differ in length".into()));
        }
        sum.iter_mut()
            .zip(y)
            .for_each(|(a, b)| *a = a.wrapping_add(*b));
    }
    let sharks = Sharks(c.threshold as u8);
    // The shares that survivors hold of `owner`'s secret (key or seed).
    let recover = |owner: usize, key: bool| -> Result<[u8; 32]> {
        let d = c
            .dealt
            .iter()
            .find(|d| d.from == owner)
            .ok_or_else(|| Error::Invalid(format!("node {owner} dealt no shares")))?;
        let held = if key { &d.key_shares } else { &d.seed_shares };
        let shares: Vec<Share> = survivors
            .iter()
            .filter_map(|s| held.get(s))
            .filter_map(|b| Share::try_from(b.as_slice()).ok())
            .collect();
        let secret = sharks
            .recover(&shares)
            .map_err(|e| Error::Invalid(format!("node {owner}'s secret: {e}")))?;
        secret
            .try_into()
            .map_err(|_| Error::Invalid(format!("node {owner}'s secret has the wrong length")))
    };
    // Survivors' self masks.
    for &s in &survivors {
        let m = prg(recover(s, false)?, len);
        sum.iter_mut()
            .zip(&m)
            .for_each(|(a, b)| *a = a.wrapping_sub(*b));
    }
    // Dropped nodes' pairwise masks with each survivor.
    for (&d, _) in c
        .publics
        .iter()
        .filter(|(id, _)| !c.masked.contains_key(id))
    {
        let secret = StaticSecret::from(recover(d, true)?);
        for &s in &survivors {
            let shared = secret.diffie_hellman(&c.publics[&s]);
            let m = prg(pair_seed(shared.as_bytes(), c.round, d, s), len);
            // Survivor s added the mask if s < d, subtracted it otherwise.
            for (a, m) in sum.iter_mut().zip(&m) {
                *a = if s < d {
                    a.wrapping_sub(*m)
                } else {
                    a.wrapping_add(*m)
                };
            }
        }
    }
    Ok(sum.into_iter().map(decode).collect())
}

/// One whole round in memory: every participant deals and masks; those in `dropped` leave
/// after dealing and send nothing. Returns the unmasked sum of the others' `inputs`.
pub fn aggregate_round(
    inputs: &BTreeMap<usize, Vec<f64>>,
    dropped: &[usize],
    threshold: usize,
    round: u64,
) -> Result<Vec<f64>> {
    let ids: Vec<usize> = inputs.keys().copied().collect();
    let clients: Vec<Client> = ids.iter().map(|&i| Client::new(i)).collect();
    let publics: BTreeMap<usize, PublicKey> = clients.iter().map(|c| (c.id, c.public)).collect();
    let dealt = clients
        .iter()
        .map(|c| c.deal(&ids, threshold))
        .collect::<Result<Vec<_>>>()?;
    let masked = clients
        .iter()
        .filter(|c| !dropped.contains(&c.id))
        .map(|c| (c.id, c.mask(&inputs[&c.id], &publics, round)))
        .collect();
    unmask(&Collected {
        masked,
        publics: &publics,
        dealt: &dealt,
        threshold,
        round,
    })
}

/// Bytes one node sends in a secure round of `n` participants with `len` values (besides the
/// plain protocol): its public key, its shares to the others, its masked input, and the shares
/// it reveals for the unmasking (one per other participant).
pub fn bytes_sent(n: usize, len: usize) -> u64 {
    let others = n.saturating_sub(1) as u64;
    32 + 2 * SHARE_BYTES * others + 8 * len as u64 + SHARE_BYTES * others
}

/// Bytes one node receives: the others' public keys and its shares of their secrets.
pub fn bytes_received(n: usize) -> u64 {
    let others = n.saturating_sub(1) as u64;
    32 * others + 2 * SHARE_BYTES * others
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(n: usize, len: usize) -> BTreeMap<usize, Vec<f64>> {
        (0..n)
            .map(|i| {
                (
                    i * 3 + 1,
                    (0..len)
                        .map(|k| ((i * 7 + k * 13) % 17) as f64 / 3.0 - 2.5)
                        .collect(),
                )
            })
            .collect()
    }

    fn plain_sum(x: &BTreeMap<usize, Vec<f64>>, skip: &[usize]) -> Vec<f64> {
        let len = x.values().next().unwrap().len();
        let mut s = vec![0.0; len];
        for (id, v) in x {
            if !skip.contains(id) {
                s.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            }
        }
        s
    }

    #[test]
    fn the_unmasked_sum_equals_the_plain_sum_with_and_without_dropouts() {
        let x = inputs(6, 50);
        for dropped in [vec![], vec![4], vec![1, 16]] {
            let s = aggregate_round(&x, &dropped, 3, 7).unwrap();
            let p = plain_sum(&x, &dropped);
            for (a, b) in s.iter().zip(&p) {
                assert!((a - b).abs() < 1e-5, "dropped {dropped:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn a_masked_input_hides_the_update_and_too_few_survivors_fail() {
        let x = inputs(4, 20);
        let ids: Vec<usize> = x.keys().copied().collect();
        let clients: Vec<Client> = ids.iter().map(|&i| Client::new(i)).collect();
        let publics: BTreeMap<usize, PublicKey> =
            clients.iter().map(|c| (c.id, c.public)).collect();
        let y = clients[0].mask(&x[&ids[0]], &publics, 0);
        let decoded: Vec<f64> = y.iter().map(|&v| decode(v)).collect();
        // Masked values look nothing like the input (random over the whole range).
        let close = decoded
            .iter()
            .zip(&x[&ids[0]])
            .filter(|(a, b)| (*a - *b).abs() < 10.0)
            .count();
        assert!(close <= 1, "{decoded:?}");
        let e = aggregate_round(&x, &ids[..2], 3, 0).unwrap_err();
        assert!(e.to_string().contains("threshold 3"), "{e}");
        let e = clients[0].deal(&ids, 5).err().unwrap();
        assert!(e.to_string().contains("threshold 5"), "{e}");
    }

    #[test]
    fn fixed_point_round_trips() {
        for x in [0.0, 1.5, -1.5, 1234.567, -0.000_001] {
            assert!((decode(encode(x)) - x).abs() < 1e-7);
        }
        assert!((decode(encode(-2.0).wrapping_add(encode(3.25))) - 1.25).abs() < 1e-9);
    }
}
