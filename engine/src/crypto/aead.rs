//! The encryption envelope (repo-format.md §4):
//! `nonce (24) || ciphertext || tag (16)`, XChaCha20-Poly1305 with a random
//! 192-bit nonce. Random nonces of that size never collide in practice, so no
//! writer needs nonce bookkeeping or coordination.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

pub(crate) const NONCE_LEN: usize = 24;
pub(crate) const TAG_LEN: usize = 16;

/// Authentication failed: wrong key, or the bytes were altered. Deliberately
/// carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed (data altered or wrong key)")]
pub struct OpenError;

pub(super) fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    seal_owned(key, aad, plaintext.to_vec())
}

/// Seals in place, reusing the plaintext's allocation for the ciphertext.
pub(super) fn seal_owned(key: &[u8; 32], aad: &[u8], mut buf: Vec<u8>) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut buf)
        .expect("XChaCha20-Poly1305 accepts any message shorter than 256 GiB");
    let mut out = Vec::with_capacity(NONCE_LEN + buf.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    out
}

pub(super) fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    let (nonce, ciphertext, tag) = split(sealed)?;
    let mut buf = ciphertext.to_vec();
    decrypt(key, aad, nonce, &mut buf, tag)?;
    Ok(buf)
}

/// Opens `sealed` where it lies, for a caller that owns the bytes and
/// needs them no more: no copy of the ciphertext. Returns the plaintext,
/// which is `sealed` without its nonce and tag.
pub(super) fn open_in_place<'a>(
    key: &[u8; 32],
    aad: &[u8],
    sealed: &'a mut [u8],
) -> Result<&'a mut [u8], OpenError> {
    let (nonce, ciphertext, tag) = split(sealed)?;
    let (nonce, tag) = (*XNonce::from_slice(nonce), *Tag::from_slice(tag));
    let len = ciphertext.len();
    let buf = sealed
        .get_mut(NONCE_LEN..NONCE_LEN + len)
        .ok_or(OpenError)?;
    decrypt(key, aad, &nonce, buf, &tag)?;
    Ok(buf)
}

/// Nonce, ciphertext and tag of a sealed envelope.
type Parts<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn split(sealed: &[u8]) -> Result<Parts<'_>, OpenError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(OpenError);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    Ok((nonce, ciphertext, tag))
}

fn decrypt(
    key: &[u8; 32],
    aad: &[u8],
    nonce: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Result<(), OpenError> {
    XChaCha20Poly1305::new(key.into())
        .decrypt_in_place_detached(XNonce::from_slice(nonce), aad, buf, Tag::from_slice(tag))
        .map_err(|_| OpenError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn open_inverts_seal(data in proptest::collection::vec(any::<u8>(), 0..2048), aad in proptest::collection::vec(any::<u8>(), 0..40)) {
            let key = [7u8; 32];
            let sealed = seal(&key, &aad, &data);
            prop_assert_eq!(sealed.len(), data.len() + NONCE_LEN + TAG_LEN);
            prop_assert_eq!(open(&key, &aad, &sealed).unwrap(), data);
        }

        #[test]
        fn open_in_place_agrees_with_open(data in proptest::collection::vec(any::<u8>(), 0..2048), flip in any::<Option<(prop::sample::Index, u8)>>()) {
            let key = [5u8; 32];
            let mut sealed = seal(&key, b"aad", &data);
            if let Some((pos, bit)) = flip {
                let i = pos.index(sealed.len());
                sealed[i] ^= 1 << (bit % 8);
            }
            let copied = open(&key, b"aad", &sealed);
            let in_place = open_in_place(&key, b"aad", &mut sealed).map(|p| p.to_vec());
            prop_assert_eq!(copied, in_place);
        }

        #[test]
        fn open_rejects_any_flipped_bit(data in proptest::collection::vec(any::<u8>(), 1..256), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let key = [9u8; 32];
            let mut sealed = seal(&key, b"x", &data);
            let i = pos.index(sealed.len());
            sealed[i] ^= 1 << bit;
            prop_assert!(open(&key, b"x", &sealed).is_err());
        }
    }

    #[test]
    fn open_rejects_other_aad_and_short_input() {
        let key = [1u8; 32];
        let sealed = seal(&key, b"a", b"hello");
        assert!(open(&key, b"b", &sealed).is_err());
        assert!(open(&key, b"a", &sealed[..10]).is_err());
    }
}
