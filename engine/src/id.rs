//! Typed 32-byte identifiers (repo-format.md §3).
//!
//! Blob ids are keyed BLAKE3 of the plaintext; every other id is the unkeyed
//! BLAKE3 of the stored bytes of the object it names. The types keep a pack id
//! from being passed where a blob id is expected.

use std::fmt;
use std::str::FromStr;

macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = 32;

            /// Lowercase hex, 64 characters.
            #[must_use]
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// First 8 hex characters, for display only.
            #[must_use]
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            /// Unkeyed BLAKE3 of `data`: the name of a stored object.
            #[must_use]
            pub fn of_bytes(data: &[u8]) -> Self {
                Self(*blake3::hash(data).as_bytes())
            }

            /// Reads an id from exactly 32 bytes.
            #[must_use]
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                bytes.try_into().ok().map(Self)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = hex::FromHexError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out)?;
                Ok(Self(out))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

define_id!(
    /// Id of a data or tree blob: keyed BLAKE3 of its plaintext.
    BlobId
);
define_id!(
    /// Id of a pack file: BLAKE3 of its stored bytes.
    PackId
);
define_id!(
    /// Id of an index file: BLAKE3 of its stored bytes.
    IndexId
);
define_id!(
    /// Id of a snapshot file: BLAKE3 of its stored bytes.
    SnapshotId
);
define_id!(
    /// Id of a key file: BLAKE3 of its stored bytes.
    KeyId
);
define_id!(
    /// Id of a lock file: random.
    LockId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let id = PackId::of_bytes(b"abc");
        assert_eq!(id.to_hex().parse::<PackId>().unwrap(), id);
        assert_eq!(id.short().len(), 8);
        assert!("zz".parse::<PackId>().is_err());
    }
}
