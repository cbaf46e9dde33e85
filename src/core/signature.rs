//! The one Ed25519 validity rule herald uses, for single and batch checks alike.
//!
//! # Why this module exists
//!
//! `ed25519_dalek::VerifyingKey::verify` checks the *cofactorless* equation
//! `[S]B = R + [k]A`, and `ed25519_dalek::verify_batch` checks a random linear
//! combination of those equations. The two do not accept the same signatures.
//! A key holder can add a small-order (torsion) point `T` to the nonce
//! commitment `R` and still compute a matching `S`. The single check always
//! rejects such a signature. The batch check accepts it exactly when the
//! random weight given to that signature kills `T`, and that weight depends on
//! everything else in the batch. Two nodes, or a node and an auditor, that
//! chunk the same log into different batches could then reach different
//! verdicts on the same event. For an append-only log that must be replayed
//! and audited, that is a consensus bug.
//!
//! # The rule
//!
//! herald uses *cofactored* verification, following the rules Zcash set out in
//! ZIP-215. A signature `(R_bytes ‖ S_bytes)` on message `M` under the key
//! whose encoding is `A_bytes` is valid if and only if all of these hold:
//!
//! 1. `S_bytes`, read as a little-endian integer, is canonical: `S < L`, where
//!    `L` is the order of the prime-order subgroup. A non-canonical `S` (for
//!    example `S + L`) is rejected: otherwise every signature would have a
//!    second, equally valid encoding.
//! 2. `R_bytes` and `A_bytes` decode to Edwards points. Decoding is whatever
//!    `curve25519_dalek::edwards::CompressedEdwardsY::decompress` accepts.
//!    That includes the non-canonical encodings ZIP-215 also allows: a
//!    `y`-coordinate written as `y + p`, and `x = 0` written with the sign bit
//!    set. Such encodings are not rewritten: the hash below runs over the
//!    bytes exactly as they were received.
//! 3. `A` is not of small order (it is not a "weak key"). herald already
//!    refuses weak keys when it admits a certificate. Checking again here is
//!    defence in depth, because a weak key makes a signature that is valid for
//!    almost any message. ZIP-215 does not have this rule. It is herald's own.
//! 4. With `k = SHA-512(R_bytes ‖ A_bytes ‖ M) mod L`, the cofactored equation
//!    holds: `[8]([S]B − R − [k]A)` is the identity.
//!
//! Multiplying by the cofactor 8 removes any torsion component. The verdict is
//! therefore a property of the prime-order parts of `R` and `A` alone, and no
//! choice of weights can change it.
//!
//! # Batches
//!
//! [`verify_batch`] checks rules 1 to 3 for every member exactly as
//! [`verify_single`] does. It then checks one combined equation:
//! `[8](−(Σ zᵢSᵢ)B + Σ zᵢRᵢ + Σ (zᵢkᵢ)Aᵢ)` is the identity, using 128-bit
//! weights `zᵢ`. Members with the same key `A` contribute one term
//! `(Σ zᵢkᵢ)A`: the same group element, computed with fewer points.
//!
//! * If every member is valid, each term `zᵢ[8](SᵢB − Rᵢ − kᵢAᵢ)` is the
//!   identity, so the batch accepts. No probability is involved.
//! * If member `j` is invalid, `Pⱼ = [8](SⱼB − Rⱼ − kⱼAⱼ)` is a non-identity
//!   point of prime order `L`. For any fixed values of the other weights, at
//!   most one value of `zⱼ` modulo `L` cancels the sum. A 128-bit `zⱼ` hits
//!   it with probability at most 2⁻¹²⁸.
//!
//! So `verify_batch(items)` equals "every item passes `verify_single`", up to
//! that 2⁻¹²⁸ soundness error. The result does not depend on how a log is
//! split into batches.
//!
//! The weights are derived from the inputs, not drawn from an RNG. That keeps
//! this module sans-IO and makes a verdict reproducible bit for bit. Let
//! `h = SHA-512(BATCH_TRANSCRIPT_TAG ‖ n ‖ (Rᵢ ‖ Aᵢ ‖ SHA-512(Rᵢ ‖ Aᵢ ‖ Mᵢ) ‖ Sᵢ) for
//! each i)`, with `n` and `j` below as little-endian `u64`. The weights come
//! four to a hash: `SHA-512(BATCH_WEIGHTS_TAG ‖ h ‖ j)` is cut into four
//! 16-byte quarters, read as little-endian integers, which are `z₄ⱼ` to
//! `z₄ⱼ₊₃` in that order. `h` fixes every input, including the messages,
//! before any weight exists. Forging a batch therefore means searching for
//! inputs whose weights cancel, at 2⁻¹²⁸ per hash evaluation.
//!
//! Every weight is hashed, including `z₀`. Fixing `z₀ = 1` would also be
//! sound, because the lone-bad-member case still gives `P₀ ≠ identity`. But it
//! would save only one 128-bit scalar out of `2n + 1` in the multiscalar
//! multiplication, and one uniform rule is easier to audit.
//!
//! All inputs are public, so variable-time arithmetic is used throughout.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};

/// Domain tag for the digest that fixes every input of a batch.
pub const BATCH_TRANSCRIPT_TAG: &[u8] = b"herald/v1/batch-transcript\0";
/// Domain tag for the per-member batch weights.
pub const BATCH_WEIGHTS_TAG: &[u8] = b"herald/v1/batch-weights\0";

/// A member that passed the decoding rules (1 to 3), ready for the equation.
struct Decoded {
    r: EdwardsPoint,
    a: EdwardsPoint,
    s: Scalar,
    /// `SHA-512(R_bytes ‖ A_bytes ‖ M)`, before reduction.
    hram: [u8; 64],
}

/// Applies rules 1 to 3 and computes the challenge hash. Returns `None` if
/// the signature is invalid whatever the equation says.
fn decode(key: &VerifyingKey, message: &[u8], signature: &Signature) -> Option<Decoded> {
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(*signature.s_bytes()))?;
    let r = CompressedEdwardsY(*signature.r_bytes()).decompress()?;
    // `VerifyingKey` holds the decompression of exactly the bytes it was built
    // from, and `as_bytes` returns those bytes unchanged.
    let a = key.to_edwards();
    if a.is_small_order() {
        return None;
    }
    let hram: [u8; 64] = Sha512::new()
        .chain_update(signature.r_bytes())
        .chain_update(key.as_bytes())
        .chain_update(message)
        .finalize()
        .into();
    Some(Decoded { r, a, s, hram })
}

/// Cofactored Ed25519 verification of one signature, as set out in the
/// [module documentation](self).
pub fn verify_single(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
    let Some(d) = decode(key, message, signature) else {
        return false;
    };
    let k = Scalar::from_bytes_mod_order_wide(&d.hram);
    // [S]B − [k]A − R
    let check = EdwardsPoint::vartime_double_scalar_mul_basepoint(&-k, &d.a, &d.s) - d.r;
    check.mul_by_cofactor().is_identity()
}

/// Cofactored Ed25519 batch verification, as set out in the
/// [module documentation](self).
///
/// Returns `true` if and only if every item would pass [`verify_single`], up
/// to a 2⁻¹²⁸ soundness error. An empty batch is valid.
pub fn verify_batch(items: &[(VerifyingKey, &[u8], Signature)]) -> bool {
    let mut decoded = Vec::with_capacity(items.len());
    for (key, message, signature) in items {
        match decode(key, message, signature) {
            Some(d) => decoded.push(d),
            None => return false,
        }
    }
    if decoded.is_empty() {
        return true;
    }

    // h fixes every input before any weight is derived. The hram fixes each
    // message, because R and A have a fixed length.
    let mut transcript = Sha512::new();
    transcript.update(BATCH_TRANSCRIPT_TAG);
    transcript.update((items.len() as u64).to_le_bytes());
    for ((key, _, signature), d) in items.iter().zip(&decoded) {
        transcript.update(signature.r_bytes());
        transcript.update(key.as_bytes());
        transcript.update(d.hram);
        transcript.update(signature.s_bytes());
    }
    let h = transcript.finalize();

    let n = decoded.len();
    let mut scalars = Vec::with_capacity(2 * n + 1);
    let mut points = Vec::with_capacity(2 * n + 1);
    let mut b_coefficient = Scalar::ZERO;
    // z_i R_i terms first, then one term per distinct key A, then the
    // basepoint. Items signed by the same key (a feed's events) share one
    // A term: Σ z_i k_i A = (Σ z_i k_i) A, the same group element, so the
    // verdict is unchanged while the multiscalar multiplication has about
    // half as many points.
    let mut keys: Vec<(&[u8; 32], EdwardsPoint, Scalar)> = Vec::new();
    let mut block = [Scalar::ZERO; 4];
    for (i, ((key, _, _), d)) in items.iter().zip(&decoded).enumerate() {
        if i % 4 == 0 {
            block = weight_block(&h, (i / 4) as u64);
        }
        let z = block[i % 4];
        let k = Scalar::from_bytes_mod_order_wide(&d.hram);
        b_coefficient += z * d.s;
        scalars.push(z);
        points.push(d.r);
        let key_bytes = key.as_bytes();
        match keys.iter_mut().find(|(bytes, _, _)| *bytes == key_bytes) {
            Some((_, _, coefficient)) => *coefficient += z * k,
            None => keys.push((key_bytes, d.a, z * k)),
        }
    }
    for (_, a, coefficient) in keys {
        scalars.push(coefficient);
        points.push(a);
    }
    scalars.push(-b_coefficient);
    points.push(ED25519_BASEPOINT_POINT);

    EdwardsPoint::vartime_multiscalar_mul(&scalars, &points)
        .mul_by_cofactor()
        .is_identity()
}

/// The 128-bit weights of members `4j .. 4j + 4`: the four 16-byte,
/// little-endian quarters of `SHA-512(BATCH_WEIGHTS_TAG ‖ h ‖ j)`, in order.
fn weight_block(h: &[u8], j: u64) -> [Scalar; 4] {
    let digest = Sha512::new()
        .chain_update(BATCH_WEIGHTS_TAG)
        .chain_update(h)
        .chain_update(j.to_le_bytes())
        .finalize();
    std::array::from_fn(|q| {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[16 * q..16 * q + 16]);
        Scalar::from(u128::from_le_bytes(bytes))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use ed25519_dalek::{Signer, SigningKey, Verifier};
    use proptest::prelude::*;

    /// The group order L, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    fn key(seed: u64) -> SigningKey {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8] = 0xa5;
        SigningKey::from_bytes(&bytes)
    }

    fn message(seed: u64) -> Vec<u8> {
        let len = (seed % 97) as usize;
        (0..len)
            .map(|j| (seed as u8) ^ (j as u8).wrapping_mul(31))
            .collect()
    }

    /// An honest item: key, message and `SigningKey::sign` signature.
    fn honest(seed: u64) -> (VerifyingKey, Vec<u8>, Signature) {
        let sk = key(seed);
        let m = message(seed);
        let sig = sk.sign(&m);
        (sk.verifying_key(), m, sig)
    }

    fn hash_scalar(parts: &[&[u8]]) -> Scalar {
        let mut h = Sha512::new();
        for p in parts {
            h.update(p);
        }
        Scalar::from_bytes_mod_order_wide(&h.finalize().into())
    }

    /// A signature whose R carries the torsion point `t`. It is built with the
    /// secret scalar: pick r, set R = [r]B + T, k = H(R ‖ A ‖ M), S = r + k·a.
    /// Then [S]B − R − [k]A = −T: valid cofactored, invalid cofactorless.
    fn torsioned(seed: u64, t: EdwardsPoint) -> (VerifyingKey, Vec<u8>, Signature) {
        let sk = key(seed);
        let vk = sk.verifying_key();
        let m = message(seed);
        let r = hash_scalar(&[b"test nonce", &seed.to_le_bytes()]);
        let big_r = (EdwardsPoint::mul_base(&r) + t).compress();
        let k = hash_scalar(&[big_r.as_bytes(), vk.as_bytes(), &m]);
        let s = r + k * sk.to_scalar();
        (
            vk,
            m,
            Signature::from_components(big_r.to_bytes(), s.to_bytes()),
        )
    }

    /// A signature with R given as raw bytes of the point [0]B + T = T, so
    /// S = k·a. Used for non-canonical encodings of small-order points.
    fn with_raw_r(seed: u64, r_bytes: [u8; 32]) -> (VerifyingKey, Vec<u8>, Signature) {
        let sk = key(seed);
        let vk = sk.verifying_key();
        let m = message(seed);
        let k = hash_scalar(&[&r_bytes, vk.as_bytes(), &m]);
        let s = k * sk.to_scalar();
        (vk, m, Signature::from_components(r_bytes, s.to_bytes()))
    }

    fn as_items(
        owned: &[(VerifyingKey, Vec<u8>, Signature)],
    ) -> Vec<(VerifyingKey, &[u8], Signature)> {
        owned
            .iter()
            .map(|(k, m, s)| (*k, m.as_slice(), *s))
            .collect()
    }

    fn all_single(owned: &[(VerifyingKey, Vec<u8>, Signature)]) -> bool {
        owned.iter().all(|(k, m, s)| verify_single(k, m, s))
    }

    /// S + L, as 32 bytes (it fits: S < L < 2^253).
    fn add_l(s: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(s[i]) + u16::from(L[i]) + carry;
            out[i] = v as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0);
        out
    }

    fn with_s(sig: &Signature, s: [u8; 32]) -> Signature {
        Signature::from_components(*sig.r_bytes(), s)
    }

    fn flip(sig: &Signature, byte: usize) -> Signature {
        let mut b = sig.to_bytes();
        b[byte] ^= 0x01;
        Signature::from_bytes(&b)
    }

    #[test]
    fn honest_signatures_pass_single_and_batch() {
        for n in [1u64, 2, 64, 300] {
            let owned: Vec<_> = (0..n).map(|i| honest(1000 * n + i)).collect();
            assert!(all_single(&owned), "single, n = {n}");
            assert!(verify_batch(&as_items(&owned)), "batch, n = {n}");
            // Sanity: the reference cofactorless verifier agrees on honest input.
            for (k, m, s) in &owned {
                assert!(k.verify(m, s).is_ok());
            }
        }
    }

    #[test]
    fn empty_batch_is_valid() {
        assert!(verify_batch(&[]));
    }

    #[test]
    fn flipped_bytes_fail_single_and_batch() {
        let (vk, m, sig) = honest(7);
        let others: Vec<_> = (100..104).map(honest).collect();
        let mut bad = Vec::new();
        // Message.
        for i in 0..m.len().min(8) {
            let mut m2 = m.clone();
            m2[i] ^= 0x80;
            bad.push((vk, m2, sig));
        }
        // Signature: every byte of R and S.
        for byte in 0..64 {
            bad.push((vk, m.clone(), flip(&sig, byte)));
        }
        // Key: a flip that still decodes is a different key.
        for byte in 0..32 {
            let mut kb = vk.to_bytes();
            kb[byte] ^= 0x01;
            if let Ok(k2) = VerifyingKey::from_bytes(&kb) {
                bad.push((k2, m.clone(), sig));
            }
        }
        for item in bad {
            assert!(!verify_single(&item.0, &item.1, &item.2));
            assert!(!verify_batch(&as_items(std::slice::from_ref(&item))));
            let mut owned = others.clone();
            owned.insert(2, item);
            assert!(!verify_batch(&as_items(&owned)));
        }
    }

    #[test]
    fn non_canonical_s_fails_single_and_batch() {
        for seed in 0..16 {
            let (vk, m, sig) = honest(seed);
            let high = with_s(&sig, add_l(sig.s_bytes()));
            // S + L is the same scalar mod L: only the canonicity check stops it.
            assert!(!verify_single(&vk, &m, &high));
            assert!(!verify_batch(&[(vk, m.as_slice(), high)]));
            assert!(vk.verify(&m, &high).is_err());
        }
    }

    #[test]
    fn torsion_in_r_is_accepted_consistently() {
        // EIGHT_TORSION[0] is the identity; the other seven are torsion points.
        let torsion: Vec<EdwardsPoint> = EIGHT_TORSION[1..].to_vec();
        let honest_pool: Vec<_> = (500..540).map(honest).collect();
        let mut dalek_batch_verdicts = std::collections::HashSet::new();
        for (ti, t) in torsion.iter().enumerate() {
            let item = torsioned(ti as u64, *t);
            let (vk, m, sig) = &item;
            assert!(verify_single(vk, m, sig));
            assert!(verify_batch(&as_items(std::slice::from_ref(&item))));
            // The cofactorless reference verifier rejects it: this is exactly
            // the accept-set difference this module removes.
            assert!(vk.verify(m, sig).is_err());

            // 64 different compositions, the item at every kind of position.
            for c in 0..64u64 {
                let size = 1 + (c * 7 + ti as u64) % 12;
                let start = ((c * 13) % 28) as usize;
                let mut owned: Vec<_> = honest_pool[start..start + size as usize].to_vec();
                let pos = (c as usize * 5) % (owned.len() + 1);
                owned.insert(pos, item.clone());
                assert!(verify_batch(&as_items(&owned)), "t = {ti}, composition {c}");

                let (ks, (ms, ss)): (Vec<_>, (Vec<_>, Vec<_>)) = owned
                    .iter()
                    .map(|(k, m, s)| (*k, (m.as_slice(), *s)))
                    .unzip();
                dalek_batch_verdicts.insert(ed25519_dalek::verify_batch(&ms, &ss, &ks).is_ok());
            }
        }
        // ed25519_dalek's batch verifier, by contrast, accepts or rejects the
        // same signature depending on the batch it sits in.
        assert_eq!(dalek_batch_verdicts.len(), 2, "{dalek_batch_verdicts:?}");
    }

    #[test]
    fn several_torsioned_members_in_one_batch_pass() {
        let mut owned: Vec<_> = (0..7)
            .map(|i| torsioned(40 + i, EIGHT_TORSION[1 + i as usize]))
            .collect();
        owned.extend((0..9).map(honest));
        assert!(all_single(&owned));
        assert!(verify_batch(&as_items(&owned)));
    }

    #[test]
    fn non_canonical_r_encodings_are_accepted() {
        // p = 2^255 − 19. Each of these decodes (via `decompress`) to a
        // small-order point through an encoding other than its canonical one.
        let mut identity_y_p_plus_1 = [0xffu8; 32];
        identity_y_p_plus_1[0] = 0xee;
        identity_y_p_plus_1[31] = 0x7f;
        let mut identity_neg_zero = [0u8; 32];
        identity_neg_zero[0] = 1;
        identity_neg_zero[31] = 0x80;
        let mut order4_y_p = [0xffu8; 32];
        order4_y_p[0] = 0xed;
        order4_y_p[31] = 0x7f;
        for (i, r_bytes) in [identity_y_p_plus_1, identity_neg_zero, order4_y_p]
            .into_iter()
            .enumerate()
        {
            let point = CompressedEdwardsY(r_bytes).decompress().expect("decodes");
            assert!(point.is_small_order());
            assert_ne!(point.compress().to_bytes(), r_bytes, "non-canonical");
            let item = with_raw_r(900 + i as u64, r_bytes);
            assert!(verify_single(&item.0, &item.1, &item.2), "encoding {i}");
            let mut owned: Vec<_> = (0..5).map(honest).collect();
            owned.push(item.clone());
            assert!(verify_batch(&as_items(&owned)), "encoding {i}");
            assert!(item.0.verify(&item.1, &item.2).is_err());
        }
    }

    #[test]
    fn undecodable_r_fails() {
        let (vk, m, sig) = honest(3);
        // Find an R encoding that is not a curve point.
        let bad_r = (2u8..=255)
            .map(|y| {
                let mut b = [0u8; 32];
                b[0] = y;
                b
            })
            .find(|b| CompressedEdwardsY(*b).decompress().is_none())
            .expect("some y is not on the curve");
        let bad = Signature::from_components(bad_r, *sig.s_bytes());
        assert!(!verify_single(&vk, &m, &bad));
        assert!(!verify_batch(&[(vk, m.as_slice(), bad)]));
    }

    #[test]
    fn weak_keys_fail() {
        // A = identity: with R = identity and S = 0, every message "verifies"
        // under the bare cofactored equation. The weak-key rule stops it.
        // More generally, for any small-order A, R = identity and S = 0 pass
        // it: [8](0 − 0 − [k]A) = −[k][8]A = identity.
        let id_bytes = CompressedEdwardsY::default().to_bytes(); // canonical identity
        for t in EIGHT_TORSION.iter() {
            let weak = VerifyingKey::from_bytes(&t.compress().to_bytes()).expect("decodes");
            assert!(weak.is_weak());
            let sig = Signature::from_components(id_bytes, [0u8; 32]);
            for m in [&b""[..], b"anything", b"at all"] {
                let k = hash_scalar(&[&id_bytes, weak.as_bytes(), m]);
                let lhs = EdwardsPoint::vartime_double_scalar_mul_basepoint(
                    &-k,
                    &weak.to_edwards(),
                    &Scalar::ZERO,
                );
                assert!(lhs.mul_by_cofactor().is_identity(), "equation alone holds");
                assert!(!verify_single(&weak, m, &sig));
                assert!(!verify_batch(&[(weak, m, sig)]));
                let mut owned: Vec<_> = (0..3).map(honest).collect();
                owned.push((weak, m.to_vec(), sig));
                assert!(!verify_batch(&as_items(&owned)));
            }
        }
    }

    #[test]
    fn one_bad_member_fails_the_batch_but_not_its_neighbours() {
        let mut owned: Vec<_> = (0..32).map(honest).collect();
        let bad_at = 17;
        owned[bad_at].2 = flip(&owned[bad_at].2, 40);
        assert!(!verify_batch(&as_items(&owned)));
        for (i, item) in owned.iter().enumerate() {
            assert_eq!(verify_single(&item.0, &item.1, &item.2), i != bad_at);
            assert_eq!(
                verify_batch(&as_items(std::slice::from_ref(item))),
                i != bad_at
            );
        }
        let good: Vec<_> = owned
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != bad_at)
            .map(|(_, x)| x.clone())
            .collect();
        assert!(verify_batch(&as_items(&good)));
    }

    /// How a proptest member is spoiled (or, for `Torsion`, made unusual but valid).
    #[derive(Debug, Clone, Copy)]
    enum Corruption {
        None,
        MessageBit(u8),
        SignatureBit(u8),
        SPlusL,
        WrongKey,
        WeakKey(u8),
        Torsion(u8),
    }

    fn corruption() -> impl Strategy<Value = Corruption> {
        prop_oneof![
            6 => Just(Corruption::None),
            1 => any::<u8>().prop_map(Corruption::MessageBit),
            1 => any::<u8>().prop_map(Corruption::SignatureBit),
            1 => Just(Corruption::SPlusL),
            1 => Just(Corruption::WrongKey),
            1 => (0u8..8).prop_map(Corruption::WeakKey),
            1 => (1u8..8).prop_map(Corruption::Torsion),
        ]
    }

    fn build(seed: u64, c: Corruption) -> (VerifyingKey, Vec<u8>, Signature) {
        let (vk, mut m, sig) = honest(seed);
        match c {
            Corruption::None => (vk, m, sig),
            Corruption::MessageBit(b) => {
                if m.is_empty() {
                    m.push(b);
                } else {
                    let i = usize::from(b) % m.len();
                    m[i] ^= 1 << (b % 8);
                }
                (vk, m, sig)
            }
            Corruption::SignatureBit(b) => {
                let mut bytes = sig.to_bytes();
                bytes[usize::from(b) % 64] ^= 1 << (b % 8);
                (vk, m, Signature::from_bytes(&bytes))
            }
            Corruption::SPlusL => (vk, m, with_s(&sig, add_l(sig.s_bytes()))),
            Corruption::WrongKey => (key(seed ^ 0xdead_beef).verifying_key(), m, sig),
            Corruption::WeakKey(t) => {
                let weak = EIGHT_TORSION[usize::from(t)].compress().to_bytes();
                (VerifyingKey::from_bytes(&weak).expect("decodes"), m, sig)
            }
            Corruption::Torsion(t) => torsioned(seed, EIGHT_TORSION[usize::from(t)]),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn batch_verdict_equals_all_singles(
            base in any::<u32>(),
            members in prop::collection::vec(corruption(), 0..24),
        ) {
            let owned: Vec<_> = members
                .iter()
                .enumerate()
                .map(|(i, c)| build(u64::from(base) * 64 + i as u64, *c))
                .collect();
            prop_assert_eq!(verify_batch(&as_items(&owned)), all_single(&owned));
        }
    }

    /// An item signed by one of two shared keys (`signer`), spoiled like
    /// [`build`] does, so batches exercise the merged per-key term.
    fn build_shared(signer: u64, seed: u64, c: Corruption) -> (VerifyingKey, Vec<u8>, Signature) {
        let sk = key(signer);
        let vk = sk.verifying_key();
        let mut m = message(seed);
        m.extend_from_slice(&seed.to_le_bytes());
        match c {
            Corruption::Torsion(t) => {
                let r = hash_scalar(&[b"shared nonce", &seed.to_le_bytes()]);
                let big_r = (EdwardsPoint::mul_base(&r) + EIGHT_TORSION[usize::from(t)]).compress();
                let k = hash_scalar(&[big_r.as_bytes(), vk.as_bytes(), &m]);
                let s = r + k * sk.to_scalar();
                (
                    vk,
                    m,
                    Signature::from_components(big_r.to_bytes(), s.to_bytes()),
                )
            }
            Corruption::MessageBit(b) => {
                let sig = sk.sign(&m);
                let i = usize::from(b) % m.len();
                m[i] ^= 1 << (b % 8);
                (vk, m, sig)
            }
            Corruption::SignatureBit(b) => {
                let mut bytes = sk.sign(&m).to_bytes();
                bytes[usize::from(b) % 64] ^= 1 << (b % 8);
                (vk, m, Signature::from_bytes(&bytes))
            }
            Corruption::SPlusL => {
                let sig = sk.sign(&m);
                (vk, m.clone(), with_s(&sig, add_l(sig.s_bytes())))
            }
            Corruption::None | Corruption::WrongKey | Corruption::WeakKey(_) => {
                let sig = sk.sign(&m);
                (vk, m, sig)
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn batch_verdict_equals_all_singles_with_shared_keys(
            base in any::<u32>(),
            members in prop::collection::vec((0u64..2, corruption()), 0..24),
        ) {
            let owned: Vec<_> = members
                .iter()
                .enumerate()
                .map(|(i, (signer, c))| build_shared(*signer, u64::from(base) * 64 + i as u64, *c))
                .collect();
            prop_assert_eq!(verify_batch(&as_items(&owned)), all_single(&owned));
        }
    }

    #[test]
    fn one_bad_signature_among_many_of_one_key_fails_the_batch() {
        let mut owned: Vec<_> = (0..64)
            .map(|i| build_shared(7, i, Corruption::None))
            .collect();
        assert!(verify_batch(&as_items(&owned)));
        owned[40] = build_shared(7, 40, Corruption::SignatureBit(3));
        assert!(!verify_batch(&as_items(&owned)));
        owned[40] = build_shared(7, 40, Corruption::Torsion(3));
        assert!(
            verify_batch(&as_items(&owned)),
            "torsion is valid cofactored"
        );
    }

    /// Times `verify_batch` against `ed25519_dalek::verify_batch` on the same
    /// batches of 256. Run with
    /// `cargo test --lib signature::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing_vs_dalek_verify_batch() {
        use std::time::Instant;
        const BATCH: usize = 256;
        const BATCHES: usize = 16;
        let owned: Vec<_> = (0..(BATCH * BATCHES) as u64).map(honest).collect();
        let ours: Vec<Vec<(VerifyingKey, &[u8], Signature)>> =
            owned.chunks(BATCH).map(as_items).collect();
        type DalekBatch<'a> = (Vec<&'a [u8]>, Vec<Signature>, Vec<VerifyingKey>);
        let theirs: Vec<DalekBatch<'_>> = owned
            .chunks(BATCH)
            .map(|c| {
                (
                    c.iter().map(|x| x.1.as_slice()).collect(),
                    c.iter().map(|x| x.2).collect(),
                    c.iter().map(|x| x.0).collect(),
                )
            })
            .collect();
        let mut best_ours = f64::INFINITY;
        let mut best_theirs = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            for b in &ours {
                assert!(verify_batch(b));
            }
            best_ours = best_ours.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for (m, s, k) in &theirs {
                assert!(ed25519_dalek::verify_batch(m, s, k).is_ok());
            }
            best_theirs = best_theirs.min(t.elapsed().as_secs_f64());
        }
        let n = (BATCH * BATCHES) as f64;
        println!(
            "herald verify_batch: {:.2} µs/sig; ed25519_dalek::verify_batch: {:.2} µs/sig; ratio {:.3}",
            best_ours / n * 1e6,
            best_theirs / n * 1e6,
            best_ours / best_theirs
        );
    }
}
